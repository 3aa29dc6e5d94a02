"""The stages of ``gpu_scale.py``, the paper's scale on one GPU: random-weight Llama-3 models of
the real shapes, and the timing and memory of what circuitlens does with them.

Each stage is a function of the models, the task and its settings that returns its facts (a
JSON-ready dict: its seconds, and on CUDA its peak GPU memory, see :func:`measure`), with what
later stages use (:func:`build` the model, :func:`sweep` its result); ``gpu_scale.py`` wires
them into a ``staged.StagedRun`` and the command line. The stages, in their order
(:data:`STAGES`): :func:`build` (each model, booted as a bridge), :func:`sweep` (the exact and
the screened mean-ablation sweep), :func:`activation_patching` (against TransformerLens' loop),
:func:`path_patch_group`, :func:`teacher_cache_fill`, :func:`train_step` and
:func:`quick_pipeline`; then, from their facts, :func:`targets` and :func:`estimate_70b`.
Random weights measure time and memory, which do not depend on the weights' values (no stage
stops early on a value); accuracies mean nothing here.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from staged import Facts, Skip

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


def wanted(name: str, prefixes: Sequence[str], patch_model: str = "student") -> bool:
    """Whether stage ``name`` runs when the stages whose names start with one of ``prefixes``
    are asked for (``--stages``): it is one of them, or the build of a model one of them needs
    (:data:`NEEDS`; ``activation_patching`` needs the teacher where ``patch_model`` is
    "teacher")."""
    if any(name.startswith(p) for p in prefixes):
        return True
    needed: set[str] = set()
    for stage in STAGES:
        if not any(stage.startswith(p) for p in prefixes):
            continue
        for prefix, models in NEEDS.items():
            if stage.startswith(prefix):
                teacher = stage == "activation_patching" and patch_model == "teacher"
                needed |= {"teacher"} if teacher else set(models)
    return name in {BUILDS[m] for m in needed}


# -- timing and memory ------------------------------------------------------------------------
def on_cuda(device: str) -> bool:
    """Whether ``device`` is a CUDA device (where GPU memory is measured)."""
    return device.startswith("cuda")


def sync(device: str) -> None:
    """Wait for ``device``'s queued work (CUDA); nothing on the CPU."""
    import torch

    if on_cuda(device):
        torch.cuda.synchronize()


def gb(n: float | None) -> float | None:
    """``n`` bytes in GiB, to 3 decimals (None stays None)."""
    return None if n is None else round(n / GIB, 3)


def measure(device: str, fn: Callable[[], Any]) -> tuple[Any, Facts]:
    """``fn()``, its wall time and (on CUDA) the peak GPU memory it reached (the peak counter
    reset first) and the memory allocated before it; None on the CPU."""
    import torch

    before = None
    if on_cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if on_cuda(device) else None
    return out, {
        "seconds": round(seconds, 4),
        "peak_gpu_gb": gb(peak),
        "gpu_before_gb": gb(before),
        "activation_gb": gb(None if peak is None or before is None else peak - before),
    }


def release(device: str) -> None:
    """Free what was dropped: collect garbage, and on CUDA return the cached blocks."""
    import torch

    gc.collect()
    if on_cuda(device):
        torch.cuda.empty_cache()


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
) -> tuple[Any, Facts]:
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
        "parameter_gb": gb(sum(p.numel() * p.element_size() for p in model.parameters())),
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


# -- what the stages' facts give ---------------------------------------------------------------
def at_real_scale(
    width_scale: Fraction, layers: int | None, vocab: int, device: str, dtype: str, n: int
) -> bool:
    """Whether a run is where :data:`TARGETS` apply: the real shapes (whole width, every layer,
    Llama 3's vocabulary) on CUDA in bf16 at 64 prompts."""
    return (
        width_scale == 1
        and layers is None
        and vocab == VOCAB
        and on_cuda(device)
        and dtype == "bfloat16"
        and n == 64
    )


def targets(stages: dict[str, Facts], real: bool) -> Facts:
    """The targets beside the measured values (``met`` only where ``real``, see
    :func:`at_real_scale`; elsewhere ``applies`` is false)."""
    out: dict[str, Any] = {"applies": real, "where": "one H200, bf16, real shapes, 64 prompts"}
    for name, (key, limit) in TARGETS.items():
        got = stages.get(name, {}).get(key)
        out[name] = {
            "target_s": limit,
            "measured_s": got,
            "met": None if got is None or not real else got <= limit,
        }
    return out


def estimate_70b(stages: dict[str, Facts], facts: Facts) -> Facts:
    """What a 70B teacher needs under ``device_map="auto"``, from the measured teacher: its
    parameter bytes at bf16, plus each teacher stage's measured activation memory per prompt
    scaled by width and depth, against the memory of the machine ``facts`` describe (its
    ``gpu_memory_bytes``, else an H200's)."""
    shape = SHAPES["llama-3.1-70b"]
    params = shape.params(VOCAB)
    weights = params * 2  # bf16
    out: dict[str, Any] = {
        "shape": shape.to_dict(),
        "vocab": VOCAB,
        "parameters": params,
        "parameter_gb_bf16": gb(weights),
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
    needed = gb(weights) + act
    device_bytes = facts.get("gpu_memory_bytes") or H200_BYTES
    out["needed_gb"] = round(needed, 2)
    out["device_memory_gb"] = gb(device_bytes)
    out["devices_needed"] = math.ceil(needed * GIB / device_bytes)
    out["fits_one_device"] = needed * GIB <= device_bytes
    return out


# -- the stages ------------------------------------------------------------------------------
def dtype_name(model: Any) -> str:
    """The dtype of ``model``'s first parameter, without ``torch.`` (``"bfloat16"``)."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def sweep(
    model: Any,
    task: Any,
    method: str,
    *,
    device: str,
    n: int,
    metric: str,
    heads_per_pass: int | None,
    top: float,
    exact: Any = None,
) -> tuple[Any, Facts]:
    """The ``method`` ("exact" or "screened", keeping the ``top`` share) mean-ablation sweep of
    ``model`` on ``n`` prompts of ``task``, timed: its result and its facts. ``exact``: the
    exact sweep's result, against which a screened sweep's measured heads are compared
    (``vs_exact_max_abs_diff``)."""
    import circuitlens as cl

    kw: dict[str, Any] = {"top": top} if method == "screened" else {}

    def run() -> Any:
        config = cl.AblationConfig(
            metric=metric, n=n, method=method, heads_per_pass=heads_per_pass, **kw
        )
        return cl.ablation_sweep(model, task, config, progress=False)

    res, m = measure(device, run)
    facts = {
        "method": method,
        "prompts": n,
        "heads": cl.model_facts(model).n_total_heads,
        "heads_measured": int(res.exact.sum()),
        "heads_per_pass": heads_per_pass,
        "model_dtype": dtype_name(model),
        **m,
    }
    if method == "screened" and exact is not None:
        mask = res.exact
        diff = (res.p_ablated[mask] - exact.p_ablated[mask]).abs().max()
        facts["vs_exact_max_abs_diff"] = float(diff)
    return res, facts


def activation_patching(
    model: Any, task: Any, *, device: str, n: int, patches_per_pass: int | None
) -> Facts:
    """Every head's z patched at every position on ``n`` prompts, ours (many heads per pass)
    against TransformerLens' loop (``get_act_patch_attn_head_out_all_pos``, one forward per
    head, with the clean run's cache), as in ``benchmarks/gpu.py --baselines``: both timed,
    the speed-up and the largest difference of the scores."""
    import torch
    import transformer_lens.patching as tlp

    import circuitlens as cl

    batch = task.batch(model, "test", n)
    tokens, corrupted = batch.tokens.to(device), batch.corrupted_tokens.to(device)
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
            patches_per_pass=patches_per_pass,
            progress=False,
            positions=batch.positions["last"],
        )

    mine, m_ours = measure(device, ours)
    ref, m_tl = measure(device, tl_loop)
    diff = float((mine.scores.float().cpu() - ref.float().cpu()).abs().max())
    return {
        "prompts": n,
        "heads": cl.model_facts(model).n_total_heads,
        "patches_per_pass": patches_per_pass,
        "ours": m_ours,
        "transformer_lens_loop": m_tl,
        "seconds": m_ours["seconds"],
        "speedup_vs_tl": round(m_tl["seconds"] / max(m_ours["seconds"], 1e-9), 2),
        "max_abs_diff_vs_tl": diff,
        "metric": "logit_diff",
        "note": "ours computes logits at the scored (last) position only, TransformerLens' "
        "loop at every position; both patch every head's z at every position",
    }


def path_patch_group(
    teacher: Any,
    task: Any,
    *,
    device: str,
    n: int,
    receivers: int,
    senders: int,
    senders_per_pass: int,
) -> Facts:
    """One path-patching group on the teacher, shaped as the task's group B (senders' outputs
    into the receivers' queries at the last position) on ``n`` prompts: ``receivers`` heads at
    3/4 of the depth, the ``senders`` heads just below them; the whole group (every head below
    the receivers) priced at the measured seconds per sender (the clean and corrupted runs
    included: an upper bound). :class:`staged.Skip` below 2 layers."""
    import circuitlens as cl

    f = cl.model_facts(teacher)
    if f.n_layers < 2:
        raise Skip("path patching needs at least 2 layers")
    layer = max(1, round(0.75 * f.n_layers))
    into = [cl.Head(layer, h) for h in range(min(receivers, f.n_heads))]
    below = [cl.Head(la, h) for la in range(layer) for h in range(f.n_heads)]
    sent = below[-senders:]
    batch = task.batch(teacher, "test", n)
    res, m = measure(
        device,
        lambda: cl.path_patch(
            teacher,
            batch,
            sent,
            into,
            via="q",
            position="last",
            senders_per_pass=senders_per_pass,
            progress=False,
        ),
    )
    per_sender = m["seconds"] / len(sent)
    return {
        "prompts": n,
        "via": "q",
        "position": "last",
        "receivers": [str(h) for h in into],
        "senders": len(sent),
        "senders_per_pass": senders_per_pass,
        "scores_finite": bool(res.scores.isfinite().all()),
        **m,
        "seconds_per_sender": round(per_sender, 5),
        "whole_group_senders": len(below),
        "whole_group_s_estimate": round(per_sender * len(below), 2),
    }


def teacher_cache_fill(
    teacher: Any,
    student: Any,
    task: Any,
    cache: Any,
    head_map: Any,
    *,
    device: str,
    steps: int,
    dtype: str,
) -> Facts:
    """The teacher cache for a short schedule (``steps`` batches of 8, CE + Align in
    ``dtype``): the hash of the teacher's weights that keys it (once per cache), the trainer's
    set-up, then the teacher's one pass that fills ``cache``."""
    import circuitlens as cl

    _, m_hash = measure(device, lambda: cache.key(teacher, [], [], [], False))
    cfg = cl.TrainConfig(condition="ce+align", batch_size=8, steps=steps, dtype=dtype, eval_every=0)
    trainer, m_init = measure(
        device,
        lambda: cl.CircuitTrainer(
            student, teacher, task, head_map, cfg, run=cl.TrainRun(teacher_cache=cache)
        ),
    )
    out, m_fill = measure(device, lambda: trainer.teacher_outputs())
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


def timed_steps(trainer: Any, device: str) -> list[float]:
    """Wrap ``trainer``'s own loop so that each step (its loss and its update) is timed around
    it: the list the seconds of each step are appended to as it trains."""
    times: list[float] = []
    loop = trainer.loop

    def timed_loop() -> Any:
        inner = loop()
        starts: list[float] = []

        def loss(batch: Any, k: int) -> Any:
            sync(device)
            starts.append(time.perf_counter())
            return inner.loss(batch, k)

        def update(value: Any) -> None:
            inner.update(value)
            sync(device)
            times.append(time.perf_counter() - starts[-1])

        return dataclasses.replace(inner, loss=loss, update=update)

    trainer.loop = timed_loop  # type: ignore[method-assign]
    return times


def train_step(
    teacher: Any,
    student: Any,
    task: Any,
    cache: Any,
    head_map: Any,
    *,
    device: str,
    warmup: int,
    steps: int,
    dtype: str,
) -> Facts:
    """Seconds per CE + Align step (batch 8, ``dtype`` autocast): ``warmup`` steps, then the
    median of ``steps``, through the trainer's own loop (:func:`timed_steps`), the teacher's
    outputs from ``cache``."""
    import circuitlens as cl

    cfg = cl.TrainConfig(
        condition="ce+align", batch_size=8, steps=warmup + steps, dtype=dtype, eval_every=0
    )
    trainer, m_init = measure(
        device,
        lambda: cl.CircuitTrainer(
            student, teacher, task, head_map, cfg, run=cl.TrainRun(teacher_cache=cache)
        ),
    )
    _, m_fill = measure(device, lambda: trainer.teacher_outputs())
    times = timed_steps(trainer, device)
    history, m_train = measure(device, lambda: trainer.train(progress=False))
    timed = times[warmup:] or times
    losses = [r["loss"] for r in history]
    return {
        "condition": "ce+align",
        "batch_size": 8,
        "train_dtype": dtype,
        "student_dtype": dtype_name(student),
        "teacher_dtype": dtype_name(teacher),
        "pairs": len(head_map),
        "param_fraction": round(trainer.fraction.param_fraction, 5),
        "warmup_steps": warmup,
        "step_seconds": [round(t, 4) for t in times],
        "seconds_per_step": round(statistics.median(timed), 4),
        "losses_finite": all(math.isfinite(v) for v in losses),
        "trainer_init": m_init,
        "teacher_fill": m_fill,
        "train": m_train,
        "peak_gpu_gb": m_train["peak_gpu_gb"],
    }


def quick_pipeline(
    teacher: Any, student: Any, task: Any, *, device: str, dtype: str, overrides: Facts
) -> Facts:
    """``distill_circuit`` teacher -> student, CE + Align in ``dtype``, one seed, at
    ``ExperimentConfig.quick``'s settings (``overrides``, e.g. ``{"steps": 2}``, replace
    them; circuit discovery is not part of it), with the package's own cost estimate."""
    import circuitlens as cl
    from circuitlens.measure.runtime_estimate import estimate_distill_cost

    cfg = cl.ExperimentConfig.quick().distill.with_overrides(
        condition="ce+align", dtype=dtype, **overrides
    )
    res, m = measure(
        device,
        lambda: cl.distill_circuit(
            teacher, student, task, config=cfg, run=cl.TrainRun(progress=False), inplace=True
        ),
    )
    metrics = {k: v for k, v in res.metrics.items() if isinstance(v, int | float)}
    estimate = estimate_distill_cost(teacher, student, task, cfg)
    return {
        "config": cfg.to_dict(),
        "quick_overrides": overrides,
        **m,
        "distill_seconds": res.metrics.get("seconds"),
        "package_cost_estimate_s": round(estimate.seconds, 2),
        "metrics": metrics,
        "metrics_finite": all(math.isfinite(float(v)) for v in metrics.values()),
    }
