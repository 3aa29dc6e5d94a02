"""What an experiment runs: tasks, conditions, seeds, models, and the shared trainer options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from circuitlens.analysis.patching.circuits import CircuitConfig
from circuitlens.core.validate import ConfigError, check_fields, check_sequence
from circuitlens.distill.conditions import LABELS, condition_names, get_condition  # noqa: F401 (LABELS re-exported)
from circuitlens.distill.config import DistillConfig, build, read_config_file, refuse_unknown_keys
from circuitlens.experiments.design import DEFAULT_PRIMARY, DesignConfig, parse_contrast

#: every table row an experiment may hold: the untrained models and each registered condition
ALL_CONDITIONS = ("student", "teacher", *condition_names())
#: the default grid's rows (the random-heads controls are asked for by name)
DEFAULT_CONDITIONS = ("student", "teacher", *condition_names(default_only=True))
#: tasks :func:`run_experiment` knows how to build (in the zoo's prompt format)
TASKS = ("entity_tracking", "theory_of_mind")


def _compares_logits(name: str) -> bool:
    return name not in ("student", "teacher") and get_condition(name).compares_logits


def _default_models() -> dict[str, dict[str, str]]:
    return {
        t: {
            "teacher": f"zoo:{t.replace('_', '-')}-teacher",
            "student": f"zoo:{t.replace('_', '-')}-student",
        }
        for t in TASKS
    }


def _check_circuits(circuits: Any, use_circuit: bool) -> dict[str, dict[str, list[str]]]:
    """Given circuits, held as plain head names (``L3H1``), with every problem named."""
    from circuitlens.core.types import Circuit

    if not isinstance(circuits, dict):
        raise ConfigError(
            "ExperimentConfig.circuits must be a table of task -> {group: [heads]} "
            f"(got {type(circuits).__name__})"
        )
    if not use_circuit:
        raise ConfigError(
            "ExperimentConfig.circuits is given but use_circuit is False: set use_circuit=True "
            "to map into the given circuits, or drop circuits"
        )
    out = {}
    for task, groups in circuits.items():
        if task not in TASKS:
            raise ValueError(f"circuits: unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
        if not isinstance(groups, dict) or not any(groups.values()):
            raise ConfigError(
                f"circuits[{task!r}] must be a non-empty table of group -> head names, e.g. "
                '{"A": ["L23H2", "L29H1"]}'
            )
        try:
            out[task] = Circuit({str(g): hs for g, hs in groups.items()}).to_dict()["groups"]
        except (ValueError, TypeError) as e:
            raise ConfigError(f"circuits[{task!r}]: {e}") from e
    return out


def _default_distill() -> DistillConfig:
    return DistillConfig().with_overrides(steps=300, eval_every=25, eval_n=200, eval_cka=True)


@dataclass(frozen=True)
class ExperimentConfig:
    """What :func:`run_experiment` runs (saved as ``config.json``; unknown keys refused).

    Attributes:
        tasks: task names, a subset of :data:`TASKS`.
        conditions: table rows, a subset of :data:`ALL_CONDITIONS` (default
            :data:`DEFAULT_CONDITIONS`: all but the random-heads controls).
        seeds: training seeds (batches; the random map of ``ce+rand``). These three are given
            as lists or tuples (a file gives lists) and held as tuples.
        models: per task, the ``teacher`` and ``student`` specs (anything
            :func:`circuitlens.load_model` accepts as a string).
        task_seed: the seed of the task's prompts (splits fixed across training seeds).
        distill: sweeps, mapping and trainer options shared by every cell
            (:class:`~circuitlens.distill.pipeline.DistillConfig`); each cell sets the condition
            and seed.
        use_circuit: map into the teacher's circuit found by patching (False: any teacher head).
        circuit: the circuit search's options (:class:`CircuitConfig`; ``circuit.n``: its
            prompts).
        random_from: the random control draws teacher heads from ``"all"`` heads or the
            ``"circuit"``, never the student head's aligned partner.
        target_accuracy: validation accuracy for convergence ("steps to CE final"); None: the
            CE condition's mean final validation accuracy.
        format_accuracy: also measure every model and cell in each prompt format the task
            offers (theory of mind: ``plain`` and ``instruction``); False: the card's format
            only (one test pass less per cell).
        circuits: per task, a teacher circuit found before (group -> head names, as
            ``Circuit.to_dict()["groups"]``), used instead of searching (needs
            ``use_circuit``); tasks not named here are searched. The config then carries the
            circuit it mapped into.
        design: the design declared before the run (:class:`DesignConfig`: the primary
            contrasts, Holm-adjusted together, alpha, the effect of interest); a config saved
            without it reads as the default.
    """

    tasks: tuple[str, ...] | list[str] = TASKS
    conditions: tuple[str, ...] | list[str] = DEFAULT_CONDITIONS
    seeds: tuple[int, ...] | list[int] = (0, 1, 2)
    models: dict[str, dict[str, str]] = field(default_factory=_default_models)
    task_seed: int = 0
    distill: DistillConfig = field(default_factory=_default_distill)
    use_circuit: bool = True
    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    random_from: Literal["all", "circuit"] = "all"
    target_accuracy: float | None = None
    format_accuracy: bool = True
    circuits: dict[str, dict[str, list[str]]] | None = None
    design: DesignConfig = field(default_factory=DesignConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", check_sequence(self.tasks, str, "tasks"))
        object.__setattr__(self, "conditions", check_sequence(self.conditions, str, "conditions"))
        object.__setattr__(self, "seeds", check_sequence(self.seeds, int, "seeds"))
        check_fields(self, {"target_accuracy": (0, 1)}, what="ExperimentConfig")
        if not isinstance(self.models, dict):
            raise ConfigError(
                "ExperimentConfig.models must be a table of task -> {teacher, student} "
                f"(got {type(self.models).__name__})"
            )
        for name, cls in (("distill", DistillConfig), ("circuit", CircuitConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(
                    f"ExperimentConfig.{name} must be a {cls.__name__} or a table of its "
                    f"options (got {type(getattr(self, name)).__name__})"
                )
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
            raise ConfigError(
                f"models needs a {{'teacher': ..., 'student': ...}} entry for task(s) {missing}"
            )
        if self.random_from not in ("all", "circuit"):
            raise ValueError(f"random_from must be 'all' or 'circuit' (got {self.random_from!r})")
        if self.circuits is not None:
            object.__setattr__(self, "circuits", _check_circuits(self.circuits, self.use_circuit))
        if not isinstance(self.design, DesignConfig):
            raise ConfigError(f"ExperimentConfig.design must be a DesignConfig or a table of its "
                              f"options (got {type(self.design).__name__})")  # fmt: skip
        for contrast in self.design.primary or ():
            names = parse_contrast(contrast)
            absent = [c for c in names if c not in self.conditions]
            if absent:
                raise ConfigError(
                    f"design.primary: contrast {contrast!r} names {absent}, not among the run's "
                    f"conditions {list(self.conditions)}; add them to conditions or drop the "
                    "contrast"
                )
            untrained = [c for c in names if c in ("student", "teacher")]
            if untrained:
                raise ConfigError(
                    f"design.primary: contrast {contrast!r} names {untrained}, untrained (no "
                    "seeds to compare); contrast trained conditions"
                )

    def primary_contrasts(self) -> tuple[str, ...]:
        """The declared primary family: ``design.primary``, or by default ``"ce+align - ce"``
        when the run has both conditions (else none: the run is exploratory)."""
        if self.design.primary is not None:
            return tuple(self.design.primary)
        return tuple(
            c for c in DEFAULT_PRIMARY if all(x in self.conditions for x in parse_contrast(c))
        )

    @classmethod
    def quick(cls, **overrides: Any) -> ExperimentConfig:
        """A few minutes on 2 CPU cores: one seed, 60 steps, smaller evaluation sets."""
        distill = DistillConfig().with_overrides(
            sweep_n=100, test_n=300, steps=60, eval_every=15, eval_n=150, eval_cka=True
        )
        base = {"seeds": (0,), "distill": distill, "circuit": CircuitConfig(n=50)}
        return cls(**(base | overrides))

    @classmethod
    def real(
        cls, quick: bool = False, teacher: str = "smollm2", **overrides: Any
    ) -> ExperimentConfig:
        """The paper's comparison on real pretrained models (``reproduce --models real``): per
        task, a fine-tuned teacher and the 22-layer SmolLM2 student healed to warm
        (:mod:`circuitlens.models.real`). ``teacher="smollm2"``: the same-family pair (the
        SmolLM2-135M
        teacher the student was pruned from); ``"gemma3"``: the cross-family pair (Gemma-3-270M
        teacher: another tokenizer, 18 x 4 heads of d_head 256), without ``kd``, which cannot
        cross vocabularies. The budget 0.13 trains 26 of the student's 198 heads. Learning rate
        2e-4 (the paper: 2e-5 over ~3,500 steps; we train far fewer), batch 8, prompts in the
        models' card format; the map is one-to-one (26 distinct teacher heads). Neither setting
        runs circuit discovery (path patching of a 270-head teacher is beyond the 2-core
        budget): the map may use any teacher head. ``quick``: one seed, 20 steps, one
        evaluation, smaller sweeps and evaluation sets, the card's prompt format only; the full
        setting: 100 steps, 3 seeds for the same-family pair and 1 for the cross-family one."""
        if teacher not in ("smollm2", "gemma3"):
            raise ValueError(f"teacher must be 'smollm2' or 'gemma3' (got {teacher!r})")
        models = {
            t: {
                "teacher": f"real:{teacher}-{t.replace('_', '-')}-teacher",
                "student": f"real:smollm2-{t.replace('_', '-')}-student",
            }
            for t in TASKS
        }
        # why lr 2e-4, one_to_one and the quick preset's settings: docs/real_models.md
        common = {"lr": 2e-4, "batch_size": 8, "eval_cka": True, "one_to_one": True}
        conditions = DEFAULT_CONDITIONS
        if teacher != "smollm2":  # conditions that compare logits cannot cross vocabularies
            conditions = tuple(c for c in conditions if not _compares_logits(c))
        if quick:
            distill = DistillConfig().with_overrides(
                sweep_n=16, test_n=100, steps=20, eval_every=20, eval_n=50, cka_eval_n=32,
                **common,
            )  # fmt: skip
            base = {
                "seeds": (0,), "circuit": CircuitConfig(n=8), "use_circuit": False,
                "format_accuracy": False,
            }  # fmt: skip
        else:
            distill = DistillConfig().with_overrides(
                sweep_n=32, test_n=200, steps=100, eval_every=25, eval_n=100, cka_eval_n=64,
                **common,
            )  # fmt: skip
            seeds = (0, 1, 2) if teacher == "smollm2" else (0,)
            base = {"seeds": seeds, "circuit": CircuitConfig(n=16), "use_circuit": False}
        base |= {"conditions": conditions}
        return cls(**({"models": models, "distill": distill} | base | overrides))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self) | {"distill": self.distill.to_dict()}
        d["tasks"], d["conditions"], d["seeds"] = (
            list(self.tasks),
            list(self.conditions),
            list(self.seeds),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        """Read :meth:`to_dict`'s output (or a config saved before the circuit search's options
        were composed in: ``circuit_n`` for ``circuit.n``)."""
        refuse_unknown_keys(cls, d, "experiment config", also=("circuit_n",))
        d = dict(d)
        if isinstance(d.get("distill"), dict):
            d["distill"] = DistillConfig.from_dict(d["distill"])
        circuit = d.get("circuit", {})
        if "circuit_n" in d:
            if not isinstance(circuit, dict):
                raise ConfigError("experiment config: circuit_n given beside a ready circuit")
            circuit = {**circuit, "n": d.pop("circuit_n")}
        d["circuit"] = build(CircuitConfig, circuit, "experiment config [circuit]")
        d["design"] = build(DesignConfig, d.get("design", {}), "experiment config [design]")
        if isinstance(d.get("models"), dict):
            d["models"] = _default_models() | d["models"]
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"experiment config: {e}") from e

    @classmethod
    def load(cls, path: str | Path) -> ExperimentConfig:
        """From a ``.toml`` or ``.json`` file (``[distill]`` and ``[distill.train]`` tables)."""
        return cls.from_dict(read_config_file(path))

    def with_overrides(self, **overrides: Any) -> ExperimentConfig:
        """A copy with top-level fields replaced (``circuit_n``: ``circuit.n``); the distill
        config's fields by their flat names (``steps``, ``lam``, ``budget``) go into
        ``distill``."""
        own = {f.name for f in dataclasses.fields(self)} | {"circuit_n"}
        top = {k: v for k, v in overrides.items() if k in own}
        sub = {k: v for k, v in overrides.items() if k not in own}
        d = self.to_dict() | top
        if isinstance(d["distill"], DistillConfig):
            d["distill"] = d["distill"].to_dict()
        if isinstance(d["circuit"], CircuitConfig):
            d["circuit"] = dataclasses.asdict(d["circuit"])
        if isinstance(d["design"], DesignConfig):
            d["design"] = dataclasses.asdict(d["design"])
        if sub:
            d["distill"] = DistillConfig.from_dict(d["distill"]).with_overrides(**sub).to_dict()
        return ExperimentConfig.from_dict(d)
