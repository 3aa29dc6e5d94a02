"""The paper's comparison, conditions x seeds, behind ``circuitlens reproduce``.

For each task: the teacher's circuit (:func:`~circuitlens.patching.circuits.find_circuit`), the
mean-ablation sweeps of teacher and student, and the head map are computed once (the *setup*);
then every trained condition (:data:`circuitlens.training.CONDITIONS`) is run for every seed
from a fresh copy of the student (a *cell*). The untrained ``student`` and the ``teacher`` are
rows of the table too. Per cell: held-out test accuracy, the mapped pairs' mean CKA, the fraction
of heads and parameters trained, and a training curve (validation accuracy and mean CKA at
every evaluation), from which the steps to reach a target accuracy are read.

Everything goes to ``results/<run>/``: ``config.json``; per task ``setup.json``; per cell
``<task>/<condition>/seed<k>/cell.json``, written atomically once the cell is done (a training
checkpoint beside it while it runs), so an interrupted run resumes where it stopped without
redoing finished cells; and the report: ``table.md``, ``table.csv``, ``cells.csv``,
``report.html`` (ablation heatmaps, the circuit, the mapping, the curves).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitlens.ablation import AblationResult
from circuitlens.distill import DistillConfig, refuse_unknown_keys, sweeps
from circuitlens.io import atomic_write_text
from circuitlens.mapping import map_heads, random_map
from circuitlens.models import load_model, model_facts
from circuitlens.patching.circuits import CircuitConfig, find_circuit
from circuitlens.tasks import Task, evaluate
from circuitlens.training import CONDITIONS, CircuitTrainer
from circuitlens.types import Circuit, HeadMap

log = logging.getLogger(__name__)

#: rows of the table: the two untrained references, then the trained conditions
ALL_CONDITIONS = ("student", "teacher", *CONDITIONS)
#: tasks :func:`run_experiment` knows how to build (in the zoo's prompt format)
TASKS = ("entity_tracking", "theory_of_mind")
#: condition names as the paper writes them
LABELS = {
    "student": "student (before training)",
    "teacher": "teacher",
    "ce": "CE",
    "ce+align": "CE + Align CKA",
    "ce+rand": "CE + Rand CKA",
    "align": "Align CKA",
    "kd": "KD",
    "full-ce": "full fine-tuning CE",
}


def _default_models() -> dict[str, dict[str, str]]:
    return {
        t: {
            "teacher": f"zoo:{t.replace('_', '-')}-teacher",
            "student": f"zoo:{t.replace('_', '-')}-student",
        }
        for t in TASKS
    }


def _default_distill() -> DistillConfig:
    return DistillConfig().with_overrides(steps=300, eval_every=25, eval_n=200, eval_cka=True)


@dataclass(frozen=True)
class ExperimentConfig:
    """What :func:`run_experiment` runs (saved as ``config.json``; unknown keys refused).

    Attributes:
        tasks: task names, a subset of :data:`TASKS`.
        conditions: table rows, a subset of :data:`ALL_CONDITIONS`.
        seeds: training seeds (batches; the random map of ``ce+rand``).
        models: per task, the ``teacher`` and ``student`` specs (anything
            :func:`circuitlens.load_model` accepts as a string).
        task_seed: the seed of the task's prompts (splits fixed across training seeds).
        distill: sweeps, mapping and trainer options shared by every cell
            (:class:`~circuitlens.distill.DistillConfig`); each cell sets the condition and seed.
        use_circuit: map into the teacher's circuit found by patching (False: any teacher head).
        circuit_n: prompts for circuit discovery.
        random_from: the random control draws teacher heads from ``"all"`` heads or the
            ``"circuit"``, never the student head's aligned partner.
        target_accuracy: validation accuracy for "steps to target"; None: halfway from the
            untrained student to CE's mean final accuracy.
    """

    tasks: tuple[str, ...] = TASKS
    conditions: tuple[str, ...] = ALL_CONDITIONS
    seeds: tuple[int, ...] = (0, 1, 2)
    models: dict[str, dict[str, str]] = field(default_factory=_default_models)
    task_seed: int = 0
    distill: DistillConfig = field(default_factory=_default_distill)
    use_circuit: bool = True
    circuit_n: int = 100
    random_from: str = "all"
    target_accuracy: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "conditions", tuple(self.conditions))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"unknown task(s) {bad}; valid tasks: {', '.join(TASKS)}")
        bad = [c for c in self.conditions if c not in ALL_CONDITIONS]
        if bad or not self.conditions:
            raise ValueError(
                f"unknown condition(s) {bad}; valid conditions: {', '.join(ALL_CONDITIONS)}"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one (got {self.seeds})")
        missing = [
            t
            for t in self.tasks
            if not isinstance(self.models.get(t), dict)
            or set(self.models[t]) != {"teacher", "student"}
        ]
        if missing:
            raise ValueError(
                f"models needs a {{'teacher': ..., 'student': ...}} entry for task(s) {missing}"
            )
        if self.random_from not in ("all", "circuit"):
            raise ValueError(f"random_from must be 'all' or 'circuit' (got {self.random_from!r})")

    @classmethod
    def quick(cls, **overrides: Any) -> ExperimentConfig:
        """A few minutes on 2 CPU cores: one seed, 60 steps, smaller evaluation sets."""
        distill = DistillConfig().with_overrides(
            sweep_n=100, test_n=300, steps=60, eval_every=15, eval_n=150, eval_cka=True
        )
        return cls(**({"seeds": (0,), "distill": distill, "circuit_n": 50} | overrides))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"], d["conditions"], d["seeds"] = (
            list(self.tasks),
            list(self.conditions),
            list(self.seeds),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        d = dict(d)
        refuse_unknown_keys(cls, d, "experiment config")
        if isinstance(d.get("distill"), dict):
            d["distill"] = DistillConfig.from_dict(d["distill"])
        if "models" in d:
            d["models"] = _default_models() | d["models"]
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> ExperimentConfig:
        """From a ``.toml`` or ``.json`` file (``[distill]`` and ``[distill.train]`` tables)."""
        import tomllib

        path = Path(path)
        text = path.read_text()
        return cls.from_dict(tomllib.loads(text) if path.suffix == ".toml" else json.loads(text))

    def with_overrides(self, **overrides: Any) -> ExperimentConfig:
        """A copy with top-level fields replaced; trainer/distill fields (``steps``, ``lam``)
        go into ``distill``."""
        own = {f.name for f in dataclasses.fields(self)}
        top = {k: v for k, v in overrides.items() if k in own}
        sub = {k: v for k, v in overrides.items() if k not in own}
        d = self.to_dict() | top
        if isinstance(d["distill"], DistillConfig):
            d["distill"] = d["distill"].to_dict()
        if sub:
            d["distill"] = DistillConfig.from_dict(d["distill"]).with_overrides(**sub).to_dict()
        return ExperimentConfig.from_dict(d)


def _task(name: str, seed: int, tokenizers: list[Any], cfg: ExperimentConfig) -> Task:
    from circuitlens.zoo import zoo_task

    d = cfg.distill
    n_test = max(d.test_n, cfg.circuit_n, d.sweep_n)
    return zoo_task(
        name,
        seed=seed,
        n_val=max(d.train.eval_n, 128),
        n_test=n_test,
        tokenizers=tokenizers,
    )


def model_fingerprint(spec: str) -> str:
    """What identifies a model's weights: the sha256 of a zoo model or of a directory's
    ``model.safetensors`` / a ``.gguf`` file; otherwise the spec itself (a hub name)."""
    from circuitlens.zoo import sha256, zoo_path

    if spec.startswith("zoo:"):
        return "sha256:" + sha256(zoo_path(spec[4:]) / "model.safetensors")
    path = Path(spec)
    for f in (path / "model.safetensors", path):
        if f.is_file():
            return "sha256:" + sha256(f)
    return spec


def _check_models(setup: dict[str, Any], cfg: ExperimentConfig, directory: Path) -> None:
    t = setup["task"]
    now = {role: model_fingerprint(cfg.models[t][role]) for role in ("teacher", "student")}
    if setup.get("fingerprints", now) != now:
        changed = [r for r in now if setup["fingerprints"].get(r) != now[r]]
        raise ValueError(
            f"the {' and '.join(changed)} of task {t!r} changed since {directory / t} was "
            f"computed (other weights under the same name); results of two models are never "
            f"mixed: delete {directory / t} to recompute that task, or use --fresh"
        )


def _setup_task(
    task_name: str, cfg: ExperimentConfig, teacher: Any, student: Any, progress: bool
) -> dict[str, Any]:
    """Circuit, sweeps, head map and the untrained references of one task."""
    t0 = time.time()
    d = cfg.distill
    task = _task(task_name, cfg.task_seed, [teacher, student], cfg)
    circuit = None
    note = ""
    if cfg.use_circuit:
        circuit = find_circuit(teacher, task, CircuitConfig(n=cfg.circuit_n), progress=progress)
        if not circuit.heads:
            note = "patching found no circuit heads: the map may use any teacher head"
    t_sweep, s_sweep = sweeps(teacher, student, task, d, progress)
    map_circuit = circuit if circuit is not None and circuit.heads else None
    head_map = map_heads(s_sweep, t_sweep, map_circuit, d.budget, d.one_to_one)
    ft, fs = model_facts(teacher), model_facts(student)
    return {
        "task": task_name,
        "circuit": None if circuit is None else circuit.to_dict(),
        "circuit_note": note,
        "teacher_sweep": t_sweep.to_dict(),
        "student_sweep": s_sweep.to_dict(),
        "head_map": head_map.to_dict(),
        "teacher_accuracy": evaluate(teacher, task, "test", d.test_n),
        "student_accuracy": evaluate(student, task, "test", d.test_n),
        "student_val_accuracy": evaluate(student, task, "val", d.train.eval_n),
        "fingerprints": {
            role: model_fingerprint(cfg.models[task_name][role]) for role in ("teacher", "student")
        },
        "teacher_shape": [ft.n_layers, ft.n_heads, ft.n_kv_heads],
        "student_shape": [fs.n_layers, fs.n_heads, fs.n_kv_heads],
        "seconds": round(time.time() - t0, 1),
    }


def _cell_map(setup: dict[str, Any], condition: str, seed: int, cfg: ExperimentConfig) -> HeadMap:
    head_map = HeadMap.from_dict(setup["head_map"])
    if condition != "ce+rand":
        return head_map
    circuit = None
    if cfg.random_from == "circuit" and setup["circuit"] is not None:
        circuit = Circuit.from_dict(setup["circuit"])
        circuit = circuit if circuit.heads else None
    return random_map(
        AblationResult.from_dict(setup["student_sweep"]),
        AblationResult.from_dict(setup["teacher_sweep"]),
        circuit,
        cfg.distill.budget,
        cfg.distill.one_to_one,
        seed=seed,
        student_heads=head_map.student_heads,
        avoid=head_map,
    )


def _run_cell(
    cell_dir: Path,
    task_name: str,
    condition: str,
    seed: int,
    cfg: ExperimentConfig,
    setup: dict[str, Any],
    teacher: Any,
    progress: bool,
) -> dict[str, Any]:
    t0 = time.time()
    d = cfg.distill
    student = load_model(cfg.models[task_name]["student"])
    task = _task(task_name, cfg.task_seed, [teacher, student], cfg)
    head_map = _cell_map(setup, condition, seed, cfg)
    circuit = Circuit.from_dict(setup["circuit"]) if setup["circuit"] else None
    train_cfg = dataclasses.replace(d.train, condition=condition, seed=seed)
    trainer = CircuitTrainer(
        student, teacher, task, head_map, train_cfg, circuit, cell_dir / "checkpoint"
    )
    resumed = (cell_dir / "checkpoint" / "trainer.pt").exists()
    cka_before = trainer.mean_cka()  # the student is fresh: a checkpoint loads in train()
    history = trainer.train(progress=progress)
    curve = [
        {k: row[k] for k in ("step", "val_accuracy", "val_cka") if k in row}
        for row in history
        if "val_accuracy" in row
    ]
    return {
        "task": task_name,
        "condition": condition,
        "seed": seed,
        "accuracy": evaluate(student, task, "test", d.test_n),
        "mean_cka_before": cka_before,
        "mean_cka_after": trainer.mean_cka(),
        "heads_trained": trainer.fraction.heads,
        "head_fraction": trainer.fraction.head_fraction,
        "param_fraction": trainer.fraction.param_fraction,
        "pairs": [[str(s), str(t)] for s, t in head_map.pairs],
        "steps": trainer.state.step,
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "curve": curve,
        "seconds": round(time.time() - t0, 1),
        "resumed": resumed,
    }


def _json_dump(obj: Any) -> str:
    def fix(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [fix(v) for v in x]
        return x

    return json.dumps(fix(obj), indent=1)


@dataclass
class ExperimentResult:
    """A run's results, read back from its directory (complete or not).

    Attributes:
        directory: ``results/<run>``.
        config: the run's :class:`ExperimentConfig`.
        setups: per task, the setup (circuit, sweeps, head map, untrained accuracies).
        cells: one dict per finished (task, condition, seed) training cell.
    """

    directory: Path
    config: ExperimentConfig
    setups: dict[str, dict[str, Any]]
    cells: list[dict[str, Any]]

    @classmethod
    def load(cls, directory: str | Path) -> ExperimentResult:
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory} holds no experiment (no config.json)")
        cfg = ExperimentConfig.from_dict(json.loads((directory / "config.json").read_text()))
        setups, cells = {}, []
        for t in cfg.tasks:
            f = directory / t / "setup.json"
            if f.is_file():
                setups[t] = json.loads(f.read_text())
            for c in cfg.conditions:
                for s in cfg.seeds:
                    f = directory / t / c / f"seed{s}" / "cell.json"
                    if f.is_file():
                        cells.append(json.loads(f.read_text()))
        return cls(directory, cfg, setups, cells)

    # -- tables ------------------------------------------------------------------------------
    def cells_frame(self) -> Any:
        """One row per (task, condition, seed), the untrained references included."""
        import pandas as pd

        rows = []
        for t, setup in self.setups.items():
            for c, key in (("student", "student_accuracy"), ("teacher", "teacher_accuracy")):
                if c in self.config.conditions:
                    rows.append({"task": t, "condition": c, "seed": None, "accuracy": setup[key]})
        for cell in self.cells:
            rows.append(
                {k: v for k, v in cell.items() if k not in ("curve", "pairs")}
                | {"pairs": " ".join(f"{s}->{t}" for s, t in cell["pairs"])}
                | {"steps_to_target": self.steps_to_target(cell)}
            )
        return pd.DataFrame(rows)

    def target(self, task: str) -> float | None:
        """The validation accuracy "steps to target" asks for (see the config)."""
        if self.config.target_accuracy is not None:
            return self.config.target_accuracy
        setup = self.setups.get(task)
        finals = [
            c["curve"][-1]["val_accuracy"]
            for c in self.cells
            if c["task"] == task and c["condition"] == "ce" and c["curve"]
        ]
        if setup is None or not finals:
            return None
        before = setup["student_val_accuracy"]
        gain = sum(finals) / len(finals) - before
        return before + gain / 2 if gain > 0 else None

    def steps_to_target(self, cell: dict[str, Any]) -> int | None:
        """The first evaluated step whose validation accuracy reaches the target (None: never)."""
        target = self.target(cell["task"])
        if target is None:
            return None
        for row in cell["curve"]:
            if row["val_accuracy"] >= target:
                return int(row["step"])
        return None

    def table(self) -> Any:
        """The paper's table: per task and condition, mean and std over seeds."""
        import pandas as pd

        df = self.cells_frame()
        rows = []
        for t in self.config.tasks:
            ce = df[(df.task == t) & (df.condition == "ce")]["accuracy"]
            for c in self.config.conditions:
                sub = df[(df.task == t) & (df.condition == c)]
                if sub.empty:
                    continue
                acc = sub["accuracy"].astype(float)
                row: dict[str, Any] = {
                    "task": t,
                    "condition": LABELS[c],
                    "accuracy_mean": acc.mean(),
                    "accuracy_std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                    "n_seeds": len(acc),
                    "points_vs_ce": 100 * (acc.mean() - ce.mean()) if len(ce) else float("nan"),
                }
                if c not in ("student", "teacher"):
                    reached = sub["steps_to_target"].dropna()
                    row |= {
                        "head_fraction": sub["head_fraction"].mean(),
                        "param_fraction": sub["param_fraction"].mean(),
                        "cka_before": sub["mean_cka_before"].astype(float).mean(),
                        "cka_after": sub["mean_cka_after"].astype(float).mean(),
                        "steps_to_target": reached.mean() if len(reached) else float("nan"),
                        "reached_target": f"{len(reached)}/{len(sub)}"
                        if self.target(t) is not None
                        else "",
                    }
                rows.append(row)
        return pd.DataFrame(rows)

    def markdown(self) -> str:
        """The table as Markdown, with what each column means."""
        df = self.table()
        if df.empty:
            return "(no finished cells yet)\n"
        show = df.copy()

        def pct(x: Any) -> str:
            return "" if pd_isna(x) else f"{100 * x:.1f}%"

        show["accuracy"] = [
            f"{m:.3f}" + ("" if pd_isna(s) else f" ± {s:.3f}")
            for m, s in zip(df.accuracy_mean, df.accuracy_std, strict=True)
        ]
        show["vs CE (points)"] = ["" if pd_isna(x) else f"{x:+.1f}" for x in df.points_vs_ce]
        cols = ["task", "condition", "accuracy", "n_seeds", "vs CE (points)"]
        if "head_fraction" in df:
            show["heads trained"] = [pct(x) for x in df.head_fraction]
            show["params trained"] = [pct(x) for x in df.param_fraction]
            show["CKA before → after"] = [
                "" if pd_isna(a) and pd_isna(b) else f"{a:.3f} → {b:.3f}"
                for a, b in zip(df.cka_before, df.cka_after, strict=True)
            ]
            show["steps to target"] = [
                "" if pd_isna(r) or not r else ("never" if pd_isna(s) else f"{s:.0f}") + f" ({r})"
                for s, r in zip(df.steps_to_target, df.reached_target, strict=True)
            ]
            cols += ["heads trained", "params trained", "CKA before → after", "steps to target"]
        lines = [show[cols].fillna("").to_markdown(index=False), ""]
        for t in self.config.tasks:
            target = self.target(t)
            if target is not None:
                lines.append(f"- {t}: target validation accuracy {target:.3f}")
        return "\n".join(lines) + "\n"

    def curves(self) -> Any:
        """Long table of the training curves: task, condition, seed, step, val accuracy/CKA
        (step 0 is the untrained student)."""
        import pandas as pd

        rows = []
        for cell in self.cells:
            setup = self.setups[cell["task"]]
            start = {"step": 0, "val_accuracy": setup["student_val_accuracy"]}
            if cell.get("mean_cka_before") is not None:
                start["val_cka"] = cell["mean_cka_before"]
            for row in [start, *cell["curve"]]:
                rows.append(
                    {"task": cell["task"], "condition": cell["condition"], "seed": cell["seed"]}
                    | row
                )
        return pd.DataFrame(rows)

    # -- report ------------------------------------------------------------------------------
    def write_report(self) -> dict[str, Path]:
        """``table.md``, ``table.csv``, ``cells.csv``, ``report.html`` in the run's directory."""
        from circuitlens.plotting import plot_ablation, plot_circuit, plot_training_curves

        out = {
            "table.md": self.directory / "table.md",
            "table.csv": self.directory / "table.csv",
            "cells.csv": self.directory / "cells.csv",
            "report.html": self.directory / "report.html",
        }
        md = self.markdown()
        atomic_write_text(out["table.md"], md)
        atomic_write_text(out["table.csv"], self.table().to_csv(index=False))
        atomic_write_text(out["cells.csv"], self.cells_frame().to_csv(index=False))
        parts = [
            "<h1>circuitlens reproduce</h1>",
            f"<p>run <code>{self.directory}</code>; config in <code>config.json</code></p>",
            self.table().to_html(index=False, float_format=lambda x: f"{x:.3f}"),
        ]
        first = True

        def fig_html(fig: Any) -> str:
            nonlocal first
            html = fig.to_html(full_html=False, include_plotlyjs="inline" if first else False)
            first = False
            return html

        for t, setup in self.setups.items():
            parts.append(f"<h2>{t}</h2>")
            head_map = HeadMap.from_dict(setup["head_map"])
            pairs = ", ".join(
                f"{s} → {tt} (|ΔP_s − ΔP_t| = {d:.3f})"
                for (s, tt), d in zip(head_map.pairs, head_map.distances, strict=True)
            )
            parts.append(f"<p>mapping: {pairs}</p>")
            rand = [
                f"seed {c['seed']}: " + ", ".join(f"{a} → {b}" for a, b in c["pairs"])
                for c in self.cells
                if c["task"] == t and c["condition"] == "ce+rand"
            ]
            if rand:
                parts.append(f"<p>random control: {'; '.join(rand)}</p>")
            if setup["circuit"] is not None:
                circuit = Circuit.from_dict(setup["circuit"])
                meta = {k: circuit.meta.get(k) for k in ("faithfulness", "circuit_accuracy")}
                parts.append(f"<p>circuit: {circuit.groups} {meta} {setup['circuit_note']}</p>")
                if circuit.heads:
                    n_layers, n_heads = setup["teacher_shape"][:2]
                    parts.append(fig_html(plot_circuit(circuit, n_layers, n_heads)))
            parts.append(
                fig_html(
                    plot_ablation(
                        AblationResult.from_dict(setup["teacher_sweep"]),
                        AblationResult.from_dict(setup["student_sweep"]),
                        head_map,
                        title=f"{t}: mean-ablation impact ΔP per head",
                    )
                )
            )
            if any(c["task"] == t for c in self.cells):
                parts.append(fig_html(plot_training_curves(self, t)))
        body = "\n".join(parts)
        html = f"<html><head><meta charset='utf-8'></head><body>{body}</body></html>"
        atomic_write_text(out["report.html"], html)
        return out


def pd_isna(x: Any) -> bool:
    import pandas as pd

    return bool(pd.isna(x))


def _check_directory(directory: Path, cfg: ExperimentConfig, fresh: bool) -> None:
    f = directory / "config.json"
    if fresh and directory.exists():
        shutil.rmtree(directory)
    if f.is_file():
        old = json.loads(f.read_text())
        new = json.loads(_json_dump(cfg.to_dict()))
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(
                f"{directory} holds a run of another config (differs in: {', '.join(diff)}); "
                "results of two configs are never mixed. Pass another output directory, or "
                "--fresh (fresh=True) to delete it and start over."
            )
    atomic_write_text(f, _json_dump(cfg.to_dict()))


def run_experiment(
    config: ExperimentConfig | None = None,
    directory: str | Path = "results/reproduce",
    fresh: bool = False,
    progress: bool = True,
) -> ExperimentResult:
    """Run (or resume) every task x condition x seed of ``config`` into ``directory``.

    Finished cells are kept and skipped; a cell interrupted mid-training resumes from its
    checkpoint. A directory holding another config is refused (``fresh=True`` deletes it).

    Returns:
        The :class:`ExperimentResult`, with its report written.
    """
    import torch
    from tqdm.auto import tqdm

    cfg = config or ExperimentConfig()
    directory = Path(directory)
    _check_directory(directory, cfg, fresh)
    trained = [c for c in cfg.conditions if c in CONDITIONS]
    todo = [
        (t, c, s)
        for t in cfg.tasks
        for s in cfg.seeds
        for c in trained
        if not (directory / t / c / f"seed{s}" / "cell.json").is_file()
    ]
    n_cells = len(cfg.tasks) * len(cfg.seeds) * len(trained)
    bar = tqdm(total=n_cells, initial=n_cells - len(todo), desc="reproduce", disable=not progress)
    for t in cfg.tasks:
        setup_file = directory / t / "setup.json"
        cells = [(c, s) for tt, c, s in todo if tt == t]
        if setup_file.is_file():
            setup = json.loads(setup_file.read_text())
            _check_models(setup, cfg, directory)
            if not cells:
                continue
        teacher = load_model(cfg.models[t]["teacher"])
        if not setup_file.is_file():
            bar.set_description(f"reproduce: {t} circuit and sweeps")
            student = load_model(cfg.models[t]["student"])
            torch.manual_seed(cfg.task_seed)
            setup = _setup_task(t, cfg, teacher, student, progress=False)
            atomic_write_text(setup_file, _json_dump(setup))
        for c, s in cells:
            bar.set_description(f"reproduce: {t} {c} seed {s}")
            cell_dir = directory / t / c / f"seed{s}"
            torch.manual_seed(s)
            cell = _run_cell(cell_dir, t, c, s, cfg, setup, teacher, progress=False)
            atomic_write_text(cell_dir / "cell.json", _json_dump(cell))
            shutil.rmtree(cell_dir / "checkpoint", ignore_errors=True)
            bar.update(1)
    bar.close()
    result = ExperimentResult.load(directory)
    result.write_report()
    return result


__all__ = [
    "ALL_CONDITIONS",
    "LABELS",
    "TASKS",
    "ExperimentConfig",
    "ExperimentResult",
    "run_experiment",
]
