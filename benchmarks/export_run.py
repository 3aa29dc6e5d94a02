"""Keep a reproduce run in git, and put it back: ``results/`` is not committed, but a long run
on real models (hours on 2 cores) must survive the machine it ran on and be resumed later.

    python benchmarks/export_run.py results/reproduce-real reproduce-real
        -> benchmarks/results/reproduce-real.json (config, setups, finished cells, the table,
           timings, machine facts) and benchmarks/results/reproduce-real-report.html, with the
           plotly.js it loads (benchmarks/results/plotly.min.js, one copy for every report);
           ``--report table``: no page, ``--report none``: the cells alone (a design still
           running: no test-set summary before its last cell)
    python benchmarks/export_run.py --restore reproduce-real results/reproduce-real
        -> the run directory again (config, setups, cells, run marker): ``circuitlens
           reproduce`` with the same config then computes only the cells still missing.

Each task's learning-rate choices (``lr.json``: the grid points measured so far) are kept.
Checkpoints of unfinished cells and the teacher cache are not kept (they are recomputed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

from circuitlens.core.io import atomic_write_text
from circuitlens.core.rundir import MARKER
from circuitlens.distill.setup import Setup
from circuitlens.experiments import ExperimentConfig, ExperimentResult
from circuitlens.experiments.cell import Cell
from circuitlens.experiments.lr_choice import LR_FILE
from circuitlens.report.page import write_plotly_js, write_report

OUT = Path(__file__).resolve().parent / "results"


REPORTS = ("html", "table", "none")


def export(directory: Path, name: str, report: str = "html") -> Path:
    """The run as ``benchmarks/results/NAME.json``. ``report``: ``"html"``, with its table
    (``table_md``) and a copy of its report page (``NAME-report.html``, ~50 kB, loading
    ``plotly.min.js`` beside it, which every exported report shares: written only when absent
    or another plotly's); ``"table"``, with the table (the page stays in the run directory);
    ``"none"``, the cells alone, no table nor page written anywhere: for a design still
    running, whose test numbers are shown at its last cell (a stale ``NAME-report.html`` is
    removed). Both are rebuilt from the JSON: ``--restore``, then ``circuitlens.write_report``."""
    if report not in REPORTS:
        raise ValueError(f"report={report!r}: use one of {', '.join(REPORTS)}")
    result = ExperimentResult.load(directory)
    cells = sorted(result.cells, key=lambda c: (c.task, c.condition, c.seed))
    doc = {
        "benchmark": "reproduce run",
        "config": json.loads((directory / "config.json").read_text()),
        "setups": {t: s.to_dict() for t, s in result.setups.items()},
        # each condition's learning-rate choice and its grid points (a restore resumes them)
        "lr_choices": {
            t: json.loads((directory / t / LR_FILE).read_text())
            for t in result.setups
            if (directory / t / LR_FILE).is_file()
        },
        "cells": [c.to_dict() for c in cells],
        "setup_seconds": {t: s.seconds for t, s in result.setups.items()},
        "cell_seconds": {f"{c.task}/{c.condition}/seed{c.seed}": c.seconds for c in cells},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },
        "exported": time.strftime("%Y-%m-%d %H:%M"),
    }
    if report != "none":
        doc["table_md"] = result.markdown()
    path = OUT / f"{name}.json"
    atomic_write_text(path, json.dumps(doc, indent=1))
    page = OUT / f"{name}-report.html"
    if report == "none":
        page.unlink(missing_ok=True)
        return path
    result.write_tables()  # the run directory's tables and report page, as a finished run's
    written = write_report(result)
    if report == "html":
        write_plotly_js(OUT)  # the page loads it by its relative name
        shutil.copyfile(written, page)
    return path


def load(name: str, directory: Path = OUT) -> tuple[dict, ExperimentResult]:
    """An exported run ``directory/NAME.json`` and its result (its config, design included,
    its setups and cells), read without a run directory."""
    doc = json.loads((directory / f"{name}.json").read_text())
    result = ExperimentResult(
        directory, ExperimentConfig.from_dict(doc["config"]),
        {t: Setup.from_dict(s) for t, s in doc["setups"].items()},
        [Cell.from_dict(c) for c in doc["cells"]],
    )  # fmt: skip
    return doc, result


def restore(name: str, directory: Path) -> None:
    doc = json.loads((OUT / f"{name}.json").read_text())
    if directory.exists() and any(directory.iterdir()):
        raise SystemExit(f"{directory} is not empty: restore into a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / MARKER, json.dumps({"kind": "reproduce", "restored": name}))
    atomic_write_text(directory / "config.json", json.dumps(doc["config"], indent=1))
    for task, setup in doc["setups"].items():  # each read as a setup: a damaged one fails here
        text = json.dumps(Setup.from_dict(setup).to_dict(), indent=1)
        atomic_write_text(directory / task / "setup.json", text)
    for task, choices in doc.get("lr_choices", {}).items():
        atomic_write_text(directory / task / LR_FILE, json.dumps(choices, indent=1))
    for c in map(Cell.from_dict, doc["cells"]):
        cell = directory / c.task / c.condition / f"seed{c.seed}" / "cell.json"
        atomic_write_text(cell, json.dumps(c.to_dict(), indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--restore", action="store_true", help="NAME DIR: rebuild the run directory")
    ap.add_argument(
        "--report", choices=REPORTS, default="html",
        help="what is kept beside the cells: the table and report page (html), the table, none",
    )  # fmt: skip
    ap.add_argument("a")
    ap.add_argument("b")
    args = ap.parse_args()
    if args.restore:
        restore(args.a, Path(args.b))
        print(f"restored {args.a} into {args.b}")
    else:
        print(export(Path(args.a), args.b, args.report))


if __name__ == "__main__":
    main()
