"""A run directory's config: the config a run was made with (``config.json``), compared with
the config of a run that resumes it; another selection of cells of the same config extends
it, another config is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from circuitlens.core.io import atomic_write_text, json_text
from circuitlens.core.rundir import read_json
from circuitlens.experiments.config import ExperimentConfig


def _saved_config(f: Path) -> dict[str, Any]:
    """A run's saved ``config.json``, with the fields added since it was written at their
    defaults (a run made before a field existed ran as its default says)."""
    saved = read_json(f, "the run's config")
    try:
        return json.loads(json_text(ExperimentConfig.from_dict(saved).to_dict()))
    except (ValueError, TypeError):  # not a config this version reads: compared as it is
        return saved


def same_config(directory: Path, cfg: ExperimentConfig) -> bool:
    """Whether ``directory`` holds a run of ``cfg`` made before run markers existed."""
    f = directory / "config.json"
    try:
        return _saved_config(f) == json.loads(json_text(cfg.to_dict()))
    except (OSError, ValueError):
        return False


#: what a run selects (which cells), not how a cell is computed: a run directory takes other
#: selections of the same config, and its table shows every cell selected so far
SELECTION = ("tasks", "conditions", "seeds")


def _merged_selection(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    from circuitlens.experiments.config import TASKS, all_conditions

    order = {"conditions": list(all_conditions())}
    out = dict(new)
    for k in SELECTION:
        union = list(dict.fromkeys([*old[k], *new[k]]))
        known = order.get(k)
        if k == "tasks":  # the paper's in their order, then the others as first run
            out[k] = sorted(union, key=lambda t: TASKS.index(t) if t in TASKS else len(TASKS))
        else:
            out[k] = sorted(union, key=known.index) if known else sorted(union)
    return out


def check_directory(directory: Path, cfg: ExperimentConfig) -> None:
    """Refuse a directory holding a run of another config; another selection of cells
    (tasks, conditions, seeds) of the same config extends it (``config.json`` then records
    the union, so the table shows every cell computed)."""
    f = directory / "config.json"
    text = json_text(cfg.to_dict())
    if f.is_file():
        old, new = _saved_config(f), json.loads(text)
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if set(diff) <= set(SELECTION):
                atomic_write_text(f, json_text(_merged_selection(old, new)))
                return
            raise ValueError(
                f"{directory} holds a run of another config (differs in: {', '.join(diff)}); "
                "results of two configs are never mixed. Pass another output directory, or "
                "--fresh (fresh=True) to delete it and start over."
            )
    atomic_write_text(f, text)
