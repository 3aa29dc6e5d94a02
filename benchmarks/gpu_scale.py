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

This script is the command line and the wiring; the stages are functions of
``benchmarks/gpu_stages.py``, the budget, the statuses and the JSON rewrite
``benchmarks/staged.py``'s ``StagedRun``, the machine ``benchmarks/bench_machine.py``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from bench_machine import machine
from bench_models import results_dir
from gpu_stages import (
    SHAPES,
    VOCAB,
    activation_patching,
    at_real_scale,
    build,
    estimate_70b,
    padded_tokenizer,
    path_patch_group,
    quick_pipeline,
    random_head_map,
    release,
    sweep,
    targets,
    teacher_cache_fill,
    train_step,
    wanted,
)
from staged import Facts, StagedRun

T_START = time.perf_counter()  # --budget-s counts from here (imports included)
BENCHMARK = (
    "circuitlens at the paper's scale: random-weight Llama-3 shapes, "
    "8B teacher, 1B and 3B students, entity tracking"
)


def make_run(args: argparse.Namespace, out: Path) -> StagedRun:
    """The run of ``args`` writing ``out``: its budget counted from the script's start, the
    stages ``--stages`` asks for (and the builds they need), the machine and the arguments at
    the top of the JSON, the targets and the 70B estimate at its end."""
    as_json = {k: str(v) if isinstance(v, Fraction) else v for k, v in vars(args).items()}
    facts = machine(args.device, args.commit, as_json)
    real = at_real_scale(args.width_scale, args.layers, args.vocab, args.device, args.dtype, args.n)
    return StagedRun(
        out,
        budget_s=args.budget_s,
        t0=T_START,
        wanted=lambda name: wanted(name, args.stages, args.patch_model),
        header={"benchmark": BENCHMARK, **facts},
        summary=lambda stages: {
            "targets": targets(stages, real),
            "estimate_70b": estimate_70b(stages, facts),
        },
        after=lambda: release(args.device),  # what the stage built and dropped
        label="gpu_scale",
    )


def run_all(args: argparse.Namespace, out: Path) -> Facts:
    """Every stage in its order (:data:`gpu_stages.STAGES`), the JSON rewritten after each;
    the last JSON."""
    import torch

    import circuitlens as cl

    dtype = getattr(torch, args.dtype)
    cl.check_device(args.device, dtype)
    # training: a float32 student (master weights) under bf16 autocast, the teacher in bf16
    train_dtype, student_dtype, dev = args.dtype, torch.float32, args.device
    run = make_run(args, out)
    run.write()
    with tempfile.TemporaryDirectory(prefix="gpu_scale_tok_") as tmp:
        tokenizer = padded_tokenizer(args.vocab, Path(tmp))
        shapes = {k: v.scaled(args.width_scale, args.layers) for k, v in SHAPES.items()}
        n_test = max(500, args.n, args.quick_sweep_n or 0, args.quick_test_n or 0)
        task = cl.get_task("entity_tracking", n_boxes=args.boxes, seed=0, n_test=n_test)

        def build_stage(key: str, shape: str, dt: Any, seed: int) -> Callable[[], Facts]:
            def fn() -> Facts:
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
            status = run.stages["build_student_1b"]["status"]
            note = "the same model as build_student_1b (--dtype float32)"
            run.record("build_student_1b_train", {"status": status, "note": note})
        else:
            run.stage(
                "build_student_1b_train",
                build_stage("student_1b_train", "llama-3.2-1b", student_dtype, 1),
            )
        run.stage(
            "build_student_3b_train",
            build_stage("student_3b_train", "llama-3.2-3b", student_dtype, 2),
        )
        analysis_stages(run, args, task)
        training_stages(run, args, task, train_dtype)
        return run.write()


def analysis_stages(run: StagedRun, args: argparse.Namespace, task: Any) -> None:
    """The sweeps, activation patching and path patching, on the models built."""
    results: dict[str, Any] = {}  # the exact sweeps, for the screened ones to compare with

    def sweep_stage(key: str, method: str) -> Callable[[], Facts]:
        def fn() -> Facts:
            (model,) = run.need(key)
            res, facts = sweep(
                model,
                task,
                method,
                device=args.device,
                n=args.n,
                metric=args.metric,
                heads_per_pass=args.heads_per_pass,
                top=args.top,
                exact=results.get(f"{key}_exact"),
            )
            results[f"{key}_{method}"] = res
            return {"model": key, **facts}

        return fn

    def patching() -> Facts:
        key = "teacher" if args.patch_model == "teacher" else "student_1b"
        (model,) = run.need(key)
        facts = activation_patching(
            model, task, device=args.device, n=args.n, patches_per_pass=args.patches_per_pass
        )
        return {"model": key, **facts}

    def path() -> Facts:
        (teacher,) = run.need("teacher")
        facts = path_patch_group(
            teacher,
            task,
            device=args.device,
            n=args.n,
            receivers=args.path_receivers,
            senders=args.path_senders,
            senders_per_pass=args.senders_per_pass,
        )
        return {"model": "teacher", **facts}

    run.stage("sweep_teacher_exact", sweep_stage("teacher", "exact"))
    run.stage("sweep_teacher_screened", sweep_stage("teacher", "screened"))
    run.stage("sweep_student_1b_exact", sweep_stage("student_1b", "exact"))
    run.stage("sweep_student_1b_screened", sweep_stage("student_1b", "screened"))
    run.stage("activation_patching", patching)
    run.stage("path_patch_teacher", path)


def training_stages(run: StagedRun, args: argparse.Namespace, task: Any, dtype: str) -> None:
    """The teacher cache, the training steps 8B -> 1B and 8B -> 3B, and the quick pipeline, in
    ``dtype`` autocast; the training steps share the cache and (the 1B) its head map."""
    import circuitlens as cl

    cache = cl.TeacherCache()
    head_maps: dict[str, Any] = {}

    def head_map(key: str) -> Any:
        teacher, student = run.need("teacher", key)
        if key not in head_maps:
            head_maps[key] = random_head_map(student, teacher, args.budget, args.seed)
        return head_maps[key]

    def fill() -> Facts:
        teacher, student = run.need("teacher", "student_1b_train")
        return teacher_cache_fill(
            teacher,
            student,
            task,
            cache,
            head_map("student_1b_train"),
            device=args.device,
            steps=args.cache_steps,
            dtype=dtype,
        )

    def step(key: str) -> Callable[[], Facts]:
        def fn() -> Facts:
            teacher, student = run.need("teacher", key)
            facts = train_step(
                teacher,
                student,
                task,
                cache,
                head_map(key),
                device=args.device,
                warmup=args.train_warmup,
                steps=args.train_steps,
                dtype=dtype,
            )
            return {"student": key, **facts}

        return fn

    def pipeline() -> Facts:
        teacher, student = run.need("teacher", "student_1b_train")
        over = {
            "sweep_n": args.quick_sweep_n,
            "test_n": args.quick_test_n,
            "steps": args.quick_steps,
            "eval_n": args.quick_eval_n,
            "cka_eval_n": args.quick_cka_eval_n,
            "batch_size": args.quick_batch_size,
        }
        overrides = {k: v for k, v in over.items() if v is not None}
        return quick_pipeline(
            teacher, student, task, device=args.device, dtype=dtype, overrides=overrides
        )

    run.stage("teacher_cache", fill)
    run.stage("train_step_8b_1b", step("student_1b_train"))
    run.stage("train_step_8b_3b", step("student_3b_train"))
    run.stage("quick_pipeline_8b_1b", pipeline)


# -- the command ------------------------------------------------------------------------------
def _fraction(text: str) -> Fraction:
    """``--width-scale``: a fraction in (0, 1], e.g. ``1/64``."""
    value = Fraction(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a width scale in (0, 1], e.g. 1/64 (got {text})")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``, else ``sys.argv``): every stage's settings, the budget, the
    stages asked for and where the JSON goes."""
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
    """Run the stages asked for, write the JSON (``--out``, ``$OUT/gpu_scale.json``, else
    ``results_dir()/gpu_scale_<device>.json``) and print each stage's status and figures."""
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
