"""The paper's scale on one GPU, in one command and one JSON: a Llama-3.1-8B-shaped teacher and
Llama-3.2-1B / 3B-shaped students (Hugging Face ``LlamaConfig``, random weights of the real
shapes, built on the device in the target precision), entity tracking with 7 boxes.

Random weights measure what this benchmark is for, time and memory, which do not depend on the
weights' values (no stage stops early on a value); accuracies mean nothing here. Stages, each
timed (``torch.cuda.synchronize`` on CUDA) with its peak GPU memory (reset before each):

1. ``build_*``: building each model and booting it as a bridge;
2. ``sweep_*``: the exact and the screened mean-ablation sweep of the teacher and the 1B student
   (both in ``--dtype``; the trained 1B student is another copy, in float32);
3. ``activation_patching``: ``circuitlens.activation_patch`` against TransformerLens' loop
   (``get_act_patch_attn_head_out_all_pos``, one forward per head), with the max abs difference,
   on the 1B student (``--patch-model teacher``: the loop's 1,024 8B forwards take minutes);
4. ``path_patch_teacher``: one path-patching group on the teacher (receivers' queries at the
   last position, as the task's group B), priced per sender for the whole group;
5. ``teacher_cache``: the teacher cache's weight hash and its fill for a short schedule;
6. ``train_step_*``: seconds per CE + Align step, 8B -> 1B and 8B -> 3B (the median after a
   warm-up; the student in float32 under bf16 autocast, the teacher in bf16);
7. ``quick_pipeline_8b_1b``: ``distill_circuit`` at ``ExperimentConfig.quick``'s settings, the
   float32 student (as ``distill --dtype bfloat16`` loads it: its sweeps run in float32).

The JSON also holds the machine, the commit, the arguments, the targets beside the measured
values, and what a 70B teacher would need under ``device_map="auto"`` (``estimate_70b``).
Every stage runs under what is left of ``--budget-s`` (counted from the script's start; a stage
past it is stopped by SIGALRM and recorded as ``timeout``, later ones as ``skipped``, a stage
that fails as ``error`` with its traceback), and the JSON is rewritten atomically after each
stage, so a killed run keeps what finished.

    python benchmarks/gpu_scale.py                     # CUDA, bf16, 64 prompts, every stage
    python benchmarks/gpu_scale.py --stages sweep_teacher train   # stages named so (and the
                                                       # builds they need)
    python benchmarks/gpu_scale.py --device cpu --dtype float32 --width-scale 1/64 --layers 3 \\
        --n 4 --quick-steps 2 --quick-sweep-n 4 --quick-test-n 4   # tiny, on a CPU (the test)

Results: ``$OUT/gpu_scale.json`` when ``$OUT`` is set, else
``benchmarks/results/gpu_scale_<device>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench_models import results_dir

T_START = time.perf_counter()  # --budget-s counts from here (imports included)
ROOT = Path(__file__).resolve().parents[1]
VOCAB = 128_256  # Llama 3's vocabulary
GIB = 2**30
H200_BYTES = 141 * 10**9  # an H200's memory, where the run is not on one (the 70B estimate)


@dataclass(frozen=True)
class Shape:
    """A Llama's shape: depth, query and K/V heads, widths, tied embeddings."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_mlp: int
    tied: bool
    d_head: int | None = None  # None: d_model / n_heads

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_heads

    def scaled(self, width: Fraction, max_layers: int | None) -> Shape:
        """The shape at ``width`` of its widths and at most ``max_layers`` layers: K/V heads
        scaled (at least 2), query heads keep the GQA group size, d_head even (at least 2)."""
        if width == 1 and max_layers is None:
            return self
        group = self.n_heads // self.n_kv_heads
        kv = max(2, round(self.n_kv_heads * width))
        heads = kv * group
        d_head = max(2, 2 * round(self.d_model * width / heads / 2))
        return Shape(
            n_layers=min(self.n_layers, max_layers or self.n_layers),
            n_heads=heads,
            n_kv_heads=kv,
            d_model=heads * d_head,
            d_mlp=max(8, round(self.d_mlp * width)),
            tied=self.tied,
            d_head=d_head,
        )

    def params(self, vocab: int) -> int:
        """Parameters of a Llama of this shape (RMSNorm weights, no biases)."""
        d, dh = self.d_model, self.head_dim
        attn = d * self.n_heads * dh * 2 + d * self.n_kv_heads * dh * 2  # q, o; k, v
        layer = attn + 3 * d * self.d_mlp + 2 * d
        return vocab * d * (1 if self.tied else 2) + self.n_layers * layer + d

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"d_head": self.head_dim}


#: the real shapes (Hugging Face configs of the Llama 3 family; vocabulary 128,256)
SHAPES = {
    "llama-3.2-1b": Shape(16, 32, 8, 2048, 8192, tied=True),
    "llama-3.2-3b": Shape(28, 24, 8, 3072, 8192, tied=True),
    "llama-3.1-8b": Shape(32, 32, 8, 4096, 14336, tied=False),
    "llama-3.1-70b": Shape(80, 64, 8, 8192, 28672, tied=False),
}
#: targets on one H200 in bf16 at the real shapes and 64 prompts (benchmarks, not asserts)
TARGETS = {
    "sweep_teacher_exact": ("seconds", 120.0),
    "sweep_teacher_screened": ("seconds", 30.0),
    "train_step_8b_1b": ("seconds_per_step", 1.0),
    "quick_pipeline_8b_1b": ("seconds", 600.0),
}
#: the stages in the order they run (``--stages`` picks those whose names start with a prefix)
STAGES = (
    "build_teacher",
    "build_student_1b",
    "build_student_1b_train",
    "build_student_3b_train",
    "sweep_teacher_exact",
    "sweep_teacher_screened",
    "sweep_student_1b_exact",
    "sweep_student_1b_screened",
    "activation_patching",
    "path_patch_teacher",
    "teacher_cache",
    "train_step_8b_1b",
    "train_step_8b_3b",
    "quick_pipeline_8b_1b",
)
#: the models each stage needs (their build stages run when it is asked for)
NEEDS = {
    "sweep_teacher": ("teacher",),
    "sweep_student_1b": ("student_1b",),
    "activation_patching": ("student_1b",),  # or the teacher with --patch-model teacher
    "path_patch_teacher": ("teacher",),
    "teacher_cache": ("teacher", "student_1b_train"),
    "train_step_8b_1b": ("teacher", "student_1b_train"),
    "train_step_8b_3b": ("teacher", "student_3b_train"),
    "quick_pipeline_8b_1b": ("teacher", "student_1b_train"),
}
BUILDS = {
    "teacher": "build_teacher",
    "student_1b": "build_student_1b",
    "student_1b_train": "build_student_1b_train",
    "student_3b_train": "build_student_3b_train",
}


# -- timing and memory ------------------------------------------------------------------------
def _cuda(device: str) -> bool:
    return device.startswith("cuda")


def _sync(device: str) -> None:
    import torch

    if _cuda(device):
        torch.cuda.synchronize()


def _gb(n: float | None) -> float | None:
    return None if n is None else round(n / GIB, 3)


def measure(device: str, fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """``fn()``, its wall time and (on CUDA) the peak GPU memory it reached (the peak counter
    reset first) and the memory allocated before it; None on the CPU."""
    import torch

    before = None
    if _cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if _cuda(device) else None
    return out, {
        "seconds": round(seconds, 4),
        "peak_gpu_gb": _gb(peak),
        "gpu_before_gb": _gb(before),
        "activation_gb": _gb(None if peak is None or before is None else peak - before),
    }


def release(device: str) -> None:
    import torch

    gc.collect()
    if _cuda(device):
        torch.cuda.empty_cache()


class StageTimeout(BaseException):
    """The run's time budget ran out during a stage (a BaseException: no ``except Exception``
    on the way up swallows it)."""


class Skip(Exception):
    """A stage cannot run (what it needs is missing); the message says why."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`StageTimeout` in the main thread after ``seconds`` (SIGALRM)."""

    def fire(signum: int, frame: Any) -> None:
        raise StageTimeout(f"the budget ran out after {seconds:.0f} s of this stage")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- models -----------------------------------------------------------------------------------
def padded_tokenizer(vocab_size: int, directory: Path) -> Any:
    """The zoo's word-level tokenizer (every word of both tasks one token, ``<bos>`` first)
    padded with unused entries to ``vocab_size``, saved to ``directory`` and read back (a
    tokenizer read from a directory boots as a bridge without another round trip)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from circuitlens.models.zoo import zoo_vocabulary

    words = zoo_vocabulary()
    if vocab_size < len(words):
        raise SystemExit(f"--vocab {vocab_size} is below the tasks' {len(words)} words")
    vocab = {w: i for i, w in enumerate(words)}
    vocab |= {f"<unused_{i}>": i for i in range(len(words), vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=131_072,
    )
    fast.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def llama_config(shape: Shape, tokenizer: Any, vocab: int) -> Any:
    """Llama 3.1 / 3.2's config at ``shape`` (RoPE theta 500,000 with the llama3 scaling,
    128k context)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=shape.d_model,
        intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=131_072,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500_000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=shape.tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build(
    shape: Shape, tokenizer: Any, vocab: int, device: str, dtype: Any, seed: int
) -> tuple[Any, dict[str, Any]]:
    """A random-weight Llama of ``shape`` created on ``device`` in ``dtype`` (never through
    CPU float32), booted as a bridge with ``circuitlens.load_model``."""
    import torch
    from transformers import AutoModelForCausalLM

    import circuitlens as cl

    torch.manual_seed(seed)
    config = llama_config(shape, tokenizer, vocab)
    with torch.device(device):
        hf, t_hf = measure(device, lambda: AutoModelForCausalLM.from_config(config, dtype=dtype))
    hf.eval()
    model, t_boot = measure(
        device, lambda: cl.load_model(hf, tokenizer=tokenizer, device=device, dtype=dtype)
    )
    peaks = [t["peak_gpu_gb"] for t in (t_hf, t_boot) if t["peak_gpu_gb"] is not None]
    before = t_hf["gpu_before_gb"]
    peak = max(peaks) if peaks else None
    facts = {
        "shape": shape.to_dict(),
        "vocab": vocab,
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "parameters_formula": shape.params(vocab),
        "parameter_gb": _gb(sum(p.numel() * p.element_size() for p in model.parameters())),
        "seconds": round(t_hf["seconds"] + t_boot["seconds"], 4),
        "hf_build_s": t_hf["seconds"],
        "bridge_boot_s": t_boot["seconds"],
        "peak_gpu_gb": peak,
        "gpu_before_gb": before,
        "activation_gb": None if peak is None or before is None else round(peak - before, 3),
    }
    return model, facts


def random_head_map(student: Any, teacher: Any, budget: float, seed: int) -> Any:
    """A head map of the default budget's size (0.13 of the student's heads), pairs drawn at
    random: the time of a step depends on how many pairs and layers, not on which."""
    import circuitlens as cl

    fs, ft = cl.model_facts(student), cl.model_facts(teacher)
    rng = random.Random(f"gpu_scale:{seed}")
    k = max(1, round(budget * fs.n_total_heads))
    s_heads = rng.sample([(la, h) for la in range(fs.n_layers) for h in range(fs.n_heads)], k)
    t_heads = rng.sample([(la, h) for la in range(ft.n_layers) for h in range(ft.n_heads)], k)
    pairs = [(cl.Head(*s), cl.Head(*t)) for s, t in zip(s_heads, t_heads, strict=True)]
    return cl.HeadMap(pairs, kind="random", config={"budget": budget, "seed": seed})


# -- the run ----------------------------------------------------------------------------------
class Run:
    """The stages' results, the models they share, and the JSON written after each stage."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args, self.out = args, out
        self.t0 = T_START
        self.models: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.stages: dict[str, dict[str, Any]] = {}
        self.facts = machine(args)

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def wanted(self, name: str) -> bool:
        """Asked for by ``--stages``, or the build of a model an asked-for stage needs."""
        if any(name.startswith(p) for p in self.args.stages):
            return True
        needed: set[str] = set()
        for stage in STAGES:
            if not any(stage.startswith(p) for p in self.args.stages):
                continue
            for prefix, models in NEEDS.items():
                if stage.startswith(prefix):
                    teacher = stage == "activation_patching" and self.args.patch_model == "teacher"
                    needed |= {"teacher"} if teacher else set(models)
        return name in {BUILDS[m] for m in needed}

    def stage(self, name: str, fn: Callable[[], dict[str, Any]], also: bool = False) -> None:
        """Run ``fn`` as stage ``name`` (if wanted, or ``also``) under what is left of the
        budget, record its facts or why not, and rewrite the JSON."""
        wanted = also or self.wanted(name)
        left = self.left()
        if not wanted:
            self.stages[name] = {"status": "skipped", "reason": "not in --stages"}
        elif left <= 0:
            self.stages[name] = {"status": "skipped", "reason": "the budget ran out before it"}
        else:
            print(f"[gpu_scale] {name} ({left:.0f} s of the budget left)", file=sys.stderr)
            t0 = time.perf_counter()
            try:
                with deadline(left):
                    facts = fn()
                self.stages[name] = {"status": "ok", **facts}
            except Skip as e:
                self.stages[name] = {"status": "skipped", "reason": str(e)}
            except StageTimeout as e:
                self.stages[name] = {"status": "timeout", "reason": str(e)}
            except Exception as e:  # a failed stage is recorded; the others still run
                self.stages[name] = {
                    "status": "error",
                    "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc()[-4000:],
                }
            self.stages[name]["stage_wall_s"] = round(time.perf_counter() - t0, 3)
            release(self.args.device)  # what the stage built and dropped (trainers, caches)
            print(f"[gpu_scale] {name}: {self.stages[name]['status']}", file=sys.stderr)
        self.write()

    def need(self, *names: str) -> list[Any]:
        missing = [n for n in names if n not in self.models]
        if missing:
            raise Skip(f"needs {', '.join(missing)} (its build stage did not run)")
        return [self.models[n] for n in names]

    def write(self) -> dict[str, Any]:
        from circuitlens.core.io import atomic_write_text

        result = {
            "benchmark": "circuitlens at the paper's scale: random-weight Llama-3 shapes, "
            "8B teacher, 1B and 3B students, entity tracking",
            **self.facts,
            "elapsed_s": round(time.perf_counter() - self.t0, 2),
            "stages": self.stages,
            "targets": targets(self.stages, self.args),
            "estimate_70b": estimate_70b(self.stages, self.facts),
        }
        atomic_write_text(self.out, json.dumps(result, indent=1, default=str))
        return result


def machine(args: argparse.Namespace) -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    def git(*cmd: str) -> str | None:
        try:
            out = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
            return out.stdout.strip() if out.returncode == 0 else None
        except OSError:
            return None

    facts: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": args.commit or git("rev-parse", "HEAD"),
        "worktree_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "args": {k: str(v) if isinstance(v, Fraction) else v for k, v in vars(args).items()},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": version("transformers"),
        "transformer_lens": version("transformer-lens"),
        "device_name": _cpu_name(),
        "gpu_memory_gb": None,
    }
    if _cuda(args.device):
        props = torch.cuda.get_device_properties(torch.device(args.device))
        facts["device_name"] = props.name
        facts["gpu_memory_gb"] = _gb(props.total_memory)
        facts["gpu_memory_bytes"] = props.total_memory
    return facts


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def targets(stages: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """The targets beside the measured values (``met`` only at the real shapes on CUDA in
    bf16 at 64 prompts; elsewhere ``applies`` is false)."""
    real = (
        args.width_scale == 1
        and args.layers is None
        and args.vocab == VOCAB
        and _cuda(args.device)
        and args.dtype == "bfloat16"
        and args.n == 64
    )
    out: dict[str, Any] = {"applies": real, "where": "one H200, bf16, real shapes, 64 prompts"}
    for name, (key, limit) in TARGETS.items():
        got = stages.get(name, {}).get(key)
        out[name] = {
            "target_s": limit,
            "measured_s": got,
            "met": None if got is None or not real else got <= limit,
        }
    return out


def estimate_70b(stages: dict[str, dict[str, Any]], facts: dict[str, Any]) -> dict[str, Any]:
    """What a 70B teacher needs under ``device_map="auto"``, from the measured teacher: its
    parameter bytes at bf16, plus each teacher stage's measured activation memory per prompt
    scaled by width and depth."""
    shape = SHAPES["llama-3.1-70b"]
    params = shape.params(VOCAB)
    weights = params * 2  # bf16
    out: dict[str, Any] = {
        "shape": shape.to_dict(),
        "vocab": VOCAB,
        "parameters": params,
        "parameter_gb_bf16": _gb(weights),
        "arithmetic": (
            "parameters = vocab x d_model x 2 (untied embedding and unembedding) + n_layers x "
            "(d_model x d_head x (2 n_heads + 2 n_kv_heads) [q, o; k, v] + 3 x d_model x d_mlp "
            "[gate, up, down] + 2 x d_model [norms]) + d_model; bytes at bf16 = 2 x parameters. "
            "Activations: each teacher stage's measured activation memory (peak GPU memory "
            "minus what was allocated before it, i.e. above the resident models) divided by "
            "its prompts, times (d_model_70B / d_model_measured) x (n_layers_70B / "
            "n_layers_measured), times the same prompts (an upper bound: a forward's working "
            "set grows with width, only cached activations grow with depth). Needed = bf16 "
            "weights + the largest stage's activations; devices = ceil(needed / one device's "
            "memory), device_map='auto' splitting the layers over them (it spills to CPU RAM "
            "and disk beyond)."
        ),
    }
    teacher = stages.get("build_teacher", {})
    if teacher.get("status") != "ok":
        out["activations"] = "not measured: build_teacher did not run"
        return out
    ms = teacher["shape"]
    ratio = (shape.d_model / ms["d_model"]) * (shape.n_layers / ms["n_layers"])
    measured: dict[str, tuple[int, float | None]] = {}  # stage: (prompts, activation GB)
    for name in ("sweep_teacher_exact", "sweep_teacher_screened", "path_patch_teacher"):
        s = stages.get(name, {})
        if s.get("status") == "ok":
            measured[name] = (s["prompts"], s.get("activation_gb"))
    fill = stages.get("teacher_cache", {})
    if fill.get("status") == "ok":  # the cache runs the teacher one training batch at a time
        measured["teacher_cache"] = (fill["batch_size"], fill["fill"].get("activation_gb"))
    per_stage: dict[str, Any] = {}
    for name, (prompts, act_gb) in measured.items():
        if act_gb is None:
            continue
        per_prompt = act_gb / prompts
        per_stage[name] = {
            "prompts": prompts,
            "measured_activation_gb": act_gb,
            "per_prompt_gb": round(per_prompt, 5),
            "scaled_per_prompt_gb": round(per_prompt * ratio, 5),
            "scaled_activation_gb": round(per_prompt * ratio * prompts, 3),
        }
    out["width_depth_ratio"] = round(ratio, 4)
    out["stages"] = per_stage
    if not per_stage:
        out["activations"] = "not measured: no teacher stage on CUDA finished"
        return out
    act = max(v["scaled_activation_gb"] for v in per_stage.values())
    needed = _gb(weights) + act
    device_bytes = facts.get("gpu_memory_bytes") or H200_BYTES
    out["needed_gb"] = round(needed, 2)
    out["device_memory_gb"] = _gb(device_bytes)
    out["devices_needed"] = math.ceil(needed * GIB / device_bytes)
    out["fits_one_device"] = needed * GIB <= device_bytes
    return out


# -- stages -----------------------------------------------------------------------------------
def run_all(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import torch

    import circuitlens as cl

    dtype = getattr(torch, args.dtype)
    cl.check_device(args.device, dtype)
    # training: a float32 student (master weights) under bf16 autocast, the teacher in bf16
    train_dtype = args.dtype
    student_dtype = torch.float32
    run = Run(args, out)
    run.write()
    tmp = tempfile.TemporaryDirectory(prefix="gpu_scale_tok_")
    tokenizer = padded_tokenizer(args.vocab, Path(tmp.name))
    shapes = {k: v.scaled(args.width_scale, args.layers) for k, v in SHAPES.items()}
    n_test = max(500, args.n, args.quick_sweep_n or 0, args.quick_test_n or 0)
    task = cl.get_task("entity_tracking", n_boxes=args.boxes, seed=0, n_test=n_test)
    dev = args.device

    def build_stage(key: str, shape: str, dt: Any, seed: int) -> Callable[[], dict[str, Any]]:
        def fn() -> dict[str, Any]:
            model, facts = build(shapes[shape], tokenizer, args.vocab, dev, dt, seed)
            run.models[key] = model
            return {"model": shape, **facts}

        return fn

    run.stage("build_teacher", build_stage("teacher", "llama-3.1-8b", dtype, 0))
    same = dtype == student_dtype  # float32: the analysed student is the trained one
    also = same and run.wanted("build_student_1b_train")
    run.stage("build_student_1b", build_stage("student_1b", "llama-3.2-1b", dtype, 1), also)
    if same:
        if "student_1b" in run.models:
            run.models["student_1b_train"] = run.models["student_1b"]
        run.stages["build_student_1b_train"] = {
            "status": run.stages["build_student_1b"]["status"],
            "note": "the same model as build_student_1b (--dtype float32)",
        }
        run.write()
    else:
        run.stage(
            "build_student_1b_train",
            build_stage("student_1b_train", "llama-3.2-1b", student_dtype, 1),
        )
    run.stage(
        "build_student_3b_train", build_stage("student_3b_train", "llama-3.2-3b", student_dtype, 2)
    )

    def sweep_stage(key: str, method: str) -> Callable[[], dict[str, Any]]:
        def fn() -> dict[str, Any]:
            (model,) = run.need(key)
            kw: dict[str, Any] = {"top": args.top} if method == "screened" else {}
            res, m = measure(
                dev,
                lambda: cl.ablation_sweep(
                    model,
                    task,
                    cl.AblationConfig(
                        metric=args.metric,
                        n=args.n,
                        method=method,
                        heads_per_pass=args.heads_per_pass,
                        **kw,
                    ),
                    progress=False,
                ),
            )
            run.extra[f"{key}_{method}"] = res
            f = cl.model_facts(model)
            facts = {
                "model": key,
                "method": method,
                "prompts": args.n,
                "heads": f.n_total_heads,
                "heads_measured": int(res.exact.sum()),
                "heads_per_pass": args.heads_per_pass,
                "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                **m,
            }
            if method == "screened" and f"{key}_exact" in run.extra:
                ex, mask = run.extra[f"{key}_exact"], res.exact
                facts["vs_exact_max_abs_diff"] = float(
                    (res.p_ablated[mask] - ex.p_ablated[mask]).abs().max()
                )
            return facts

        return fn

    run.stage("sweep_teacher_exact", sweep_stage("teacher", "exact"))
    run.stage("sweep_teacher_screened", sweep_stage("teacher", "screened"))
    run.stage("sweep_student_1b_exact", sweep_stage("student_1b", "exact"))
    run.stage("sweep_student_1b_screened", sweep_stage("student_1b", "screened"))
    run.stage("activation_patching", lambda: patching_stage(run, task))
    run.stage("path_patch_teacher", lambda: path_stage(run, task))

    cache = cl.TeacherCache()
    run.stage("teacher_cache", lambda: cache_stage(run, task, cache, train_dtype))
    run.stage(
        "train_step_8b_1b", lambda: train_stage(run, task, cache, "student_1b_train", train_dtype)
    )
    run.stage(
        "train_step_8b_3b", lambda: train_stage(run, task, cache, "student_3b_train", train_dtype)
    )
    run.stage("quick_pipeline_8b_1b", lambda: pipeline_stage(run, task, train_dtype))
    result = run.write()
    tmp.cleanup()
    return result


def patching_stage(run: Run, task: Any) -> dict[str, Any]:
    """Every head's z patched at every position, ours (many heads per pass) against
    TransformerLens' loop (one forward per head, with the clean run's cache), as in
    ``benchmarks/gpu.py --baselines``."""
    import torch
    import transformer_lens.patching as tlp

    import circuitlens as cl

    args, dev = run.args, run.args.device
    key = "teacher" if args.patch_model == "teacher" else "student_1b"
    (model,) = run.need(key)
    batch = task.batch(model, "test", args.n)
    tokens, corrupted = batch.tokens.to(dev), batch.corrupted_tokens.to(dev)
    metric = cl.make_metric("logit_diff", batch)

    def tl_loop() -> Any:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
            return tlp.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric)

    def ours() -> Any:  # the metric reads the last position: logits there only
        return cl.activation_patch(
            model,
            tokens,
            corrupted,
            metric,
            patches_per_pass=args.patches_per_pass,
            progress=False,
            positions=batch.positions["last"],
        )

    mine, m_ours = measure(dev, ours)
    ref, m_tl = measure(dev, tl_loop)
    diff = float((mine.scores.float().cpu() - ref.float().cpu()).abs().max())
    return {
        "model": key,
        "prompts": args.n,
        "heads": cl.model_facts(model).n_total_heads,
        "patches_per_pass": args.patches_per_pass,
        "ours": m_ours,
        "transformer_lens_loop": m_tl,
        "seconds": m_ours["seconds"],
        "speedup_vs_tl": round(m_tl["seconds"] / max(m_ours["seconds"], 1e-9), 2),
        "max_abs_diff_vs_tl": diff,
        "metric": "logit_diff",
        "note": "ours computes logits at the scored (last) position only, TransformerLens' "
        "loop at every position; both patch every head's z at every position",
    }


def path_stage(run: Run, task: Any) -> dict[str, Any]:
    """One path-patching group on the teacher, shaped as the task's group B (senders' outputs
    into the receivers' queries at the last position): ``--path-receivers`` heads at 3/4 of the
    depth, the ``--path-senders`` heads just below them; the whole group (every head below the
    receivers) priced at the measured seconds per sender (the clean and corrupted runs
    included: an upper bound)."""
    import circuitlens as cl

    args, dev = run.args, run.args.device
    (teacher,) = run.need("teacher")
    f = cl.model_facts(teacher)
    if f.n_layers < 2:
        raise Skip("path patching needs at least 2 layers")
    layer = max(1, round(0.75 * f.n_layers))
    receivers = [cl.Head(layer, h) for h in range(min(args.path_receivers, f.n_heads))]
    below = [cl.Head(la, h) for la in range(layer) for h in range(f.n_heads)]
    senders = below[-args.path_senders :]
    batch = task.batch(teacher, "test", args.n)
    res, m = measure(
        dev,
        lambda: cl.path_patch(
            teacher,
            batch,
            senders,
            receivers,
            via="q",
            position="last",
            senders_per_pass=args.senders_per_pass,
            progress=False,
        ),
    )
    per_sender = m["seconds"] / len(senders)
    return {
        "model": "teacher",
        "prompts": args.n,
        "via": "q",
        "position": "last",
        "receivers": [str(h) for h in receivers],
        "senders": len(senders),
        "senders_per_pass": args.senders_per_pass,
        "scores_finite": bool(res.scores.isfinite().all()),
        **m,
        "seconds_per_sender": round(per_sender, 5),
        "whole_group_senders": len(below),
        "whole_group_s_estimate": round(per_sender * len(below), 2),
    }


def cache_stage(run: Run, task: Any, cache: Any, train_dtype: str) -> dict[str, Any]:
    """The teacher cache for a short schedule (``--cache-steps`` batches of 8): the hash of
    the teacher's weights that keys it (once per cache), then the teacher's one pass."""
    import circuitlens as cl

    args, dev = run.args, run.args.device
    teacher, student = run.need("teacher", "student_1b_train")
    head_map = random_head_map(student, teacher, args.budget, args.seed)
    run.extra["head_map_student_1b_train"] = head_map
    _, m_hash = measure(dev, lambda: cache.key(teacher, [], [], [], False))
    cfg = cl.TrainConfig(
        condition="ce+align",
        batch_size=8,
        steps=args.cache_steps,
        dtype=train_dtype,
        eval_every=0,
    )
    trainer, m_init = measure(
        dev, lambda: cl.CircuitTrainer(student, teacher, task, head_map, cfg, teacher_cache=cache)
    )
    out, m_fill = measure(dev, lambda: trainer.teacher_outputs())
    layers = sorted({t.layer for t in head_map.teacher_heads})
    return {
        "pairs": len(head_map),
        "teacher_layers_cached": len(layers),
        "batches": len(out),
        "batch_size": 8,
        "prompts": 8 * len(out),
        "weight_hash": m_hash,
        "trainer_init": m_init,
        "fill": m_fill,
        "seconds": m_fill["seconds"],
        "seconds_per_batch": round(m_fill["seconds"] / max(len(out), 1), 4),
    }


def train_stage(run: Run, task: Any, cache: Any, key: str, train_dtype: str) -> dict[str, Any]:
    """Seconds per CE + Align step (batch 8): ``--train-warmup`` steps, then the median of
    ``--train-steps``, through the trainer's own loop (each step timed around it)."""

    import circuitlens as cl

    args, dev = run.args, run.args.device
    teacher, student = run.need("teacher", key)
    head_map = run.extra.get(f"head_map_{key}") or random_head_map(
        student, teacher, args.budget, args.seed
    )
    steps = args.train_warmup + args.train_steps
    cfg = cl.TrainConfig(
        condition="ce+align", batch_size=8, steps=steps, dtype=train_dtype, eval_every=0
    )
    trainer, m_init = measure(
        dev, lambda: cl.CircuitTrainer(student, teacher, task, head_map, cfg, teacher_cache=cache)
    )
    _, m_fill = measure(dev, lambda: trainer.teacher_outputs())
    times: list[float] = []
    loop = trainer.loop  # the trainer's own loop, each step (loss and update) timed around it

    def timed_loop() -> Any:
        inner = loop()
        starts: list[float] = []

        def loss(batch: Any, k: int) -> Any:
            _sync(dev)
            starts.append(time.perf_counter())
            return inner.loss(batch, k)

        def update(value: Any) -> None:
            inner.update(value)
            _sync(dev)
            times.append(time.perf_counter() - starts[-1])

        return dataclasses.replace(inner, loss=loss, update=update)

    trainer.loop = timed_loop  # type: ignore[method-assign]
    history, m_train = measure(dev, lambda: trainer.train(progress=False))
    timed = times[args.train_warmup :] or times
    losses = [r["loss"] for r in history]
    out = {
        "student": key,
        "condition": "ce+align",
        "batch_size": 8,
        "train_dtype": train_dtype,
        "student_dtype": str(next(student.parameters()).dtype).removeprefix("torch."),
        "teacher_dtype": str(next(teacher.parameters()).dtype).removeprefix("torch."),
        "pairs": len(head_map),
        "param_fraction": round(trainer.fraction.param_fraction, 5),
        "warmup_steps": args.train_warmup,
        "step_seconds": [round(t, 4) for t in times],
        "seconds_per_step": round(statistics.median(timed), 4),
        "losses_finite": all(math.isfinite(v) for v in losses),
        "trainer_init": m_init,
        "teacher_fill": m_fill,
        "train": m_train,
        "peak_gpu_gb": m_train["peak_gpu_gb"],
    }
    return out


def pipeline_stage(run: Run, task: Any, train_dtype: str) -> dict[str, Any]:
    """``distill_circuit`` 8B -> 1B, CE + Align, one seed, at ``ExperimentConfig.quick``'s
    settings (``--quick-*`` override them; circuit discovery is not part of it)."""

    import circuitlens as cl

    args, dev = run.args, run.args.device
    teacher, student = run.need("teacher", "student_1b_train")
    over = {
        "sweep_n": args.quick_sweep_n,
        "test_n": args.quick_test_n,
        "steps": args.quick_steps,
        "eval_n": args.quick_eval_n,
        "cka_eval_n": args.quick_cka_eval_n,
        "batch_size": args.quick_batch_size,
    }
    cfg = cl.ExperimentConfig.quick().distill.with_overrides(
        condition="ce+align",
        dtype=train_dtype,
        **{k: v for k, v in over.items() if v is not None},
    )
    res, m = measure(
        dev,
        lambda: cl.distill_circuit(
            teacher, student, task, config=cfg, progress=False, inplace=True
        ),
    )
    metrics = {k: v for k, v in res.metrics.items() if isinstance(v, int | float)}
    from circuitlens.measure.runtime_estimate import estimate_distill_cost

    estimate = estimate_distill_cost(teacher, student, task, cfg)  # the package's own price
    out = {
        "config": cfg.to_dict(),
        "quick_overrides": {k: v for k, v in over.items() if v is not None},
        **m,
        "distill_seconds": res.metrics.get("seconds"),
        "package_cost_estimate_s": round(estimate.seconds, 2),
        "metrics": metrics,
        "metrics_finite": all(math.isfinite(float(v)) for v in metrics.values()),
    }
    return out


# -- the command ------------------------------------------------------------------------------
def _fraction(text: str) -> Fraction:
    value = Fraction(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a width scale in (0, 1], e.g. 1/64 (got {text})")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--n", type=int, default=64, help="prompts of the sweeps and patching")
    ap.add_argument("--boxes", type=int, default=7)
    ap.add_argument("--metric", default="prob", help="the sweeps' metric")
    ap.add_argument("--heads-per-pass", type=int, default=None, help="None: the package's")
    ap.add_argument("--top", type=float, default=0.15, help="the screened sweep's top share")
    ap.add_argument("--patch-model", default="student", choices=["student", "teacher"])
    ap.add_argument("--patches-per-pass", type=int, default=None, help="None: the package's")
    ap.add_argument("--path-senders", type=int, default=64)
    ap.add_argument("--path-receivers", type=int, default=4)
    ap.add_argument("--senders-per-pass", type=int, default=8)
    ap.add_argument("--budget", type=float, default=0.13, help="the head map's share of heads")
    ap.add_argument("--cache-steps", type=int, default=8, help="the teacher cache's schedule")
    ap.add_argument("--train-warmup", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=3, help="timed steps (the median)")
    ap.add_argument("--quick-steps", type=int, default=None, help="None: the quick settings'")
    ap.add_argument("--quick-sweep-n", type=int, default=None)
    ap.add_argument("--quick-test-n", type=int, default=None)
    ap.add_argument("--quick-eval-n", type=int, default=None)
    ap.add_argument("--quick-cka-eval-n", type=int, default=None)
    ap.add_argument("--quick-batch-size", type=int, default=None)
    ap.add_argument("--width-scale", type=_fraction, default=Fraction(1))
    ap.add_argument("--layers", type=int, default=None, help="at most this many layers")
    ap.add_argument("--vocab", type=int, default=VOCAB)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--stages", nargs="+", default=[""], help="run the stages whose names start so")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--commit", default=None, help="recorded as the commit (default: git rev-parse HEAD)"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.out:
        out = Path(args.out)
    elif os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu_scale.json"
    else:
        out = results_dir() / f"gpu_scale_{args.device.split(':')[0]}.json"
    result = run_all(args, out)
    summary = {
        name: {k: s.get(k) for k in ("status", "seconds", "seconds_per_step", "peak_gpu_gb")}
        for name, s in result["stages"].items()
    }
    print(json.dumps({"out": str(out), "stages": summary}, indent=1))
    return result


if __name__ == "__main__":
    main()
