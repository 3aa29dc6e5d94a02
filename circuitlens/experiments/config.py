"""What an experiment runs: tasks, conditions, seeds, models, and the shared trainer options."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from circuitlens.circuits.find import CircuitConfig
from circuitlens.core.validate import ConfigError, check_fields, check_sequence
from circuitlens.distill.conditions import LABELS, condition_names, get_condition  # noqa: F401 (LABELS re-exported)
from circuitlens.distill.config import DistillConfig, build, read_config_file, refuse_unknown_keys
from circuitlens.experiments.design import DEFAULT_PRIMARY, DesignConfig, parse_contrast

#: the untrained rows every table may hold beside the trained conditions
UNTRAINED = ("student", "teacher")
#: the table rows registered at import (a condition registered later is valid too: the
#: checks read :func:`all_conditions`, the live registry)
ALL_CONDITIONS = (*UNTRAINED, *condition_names())
#: the default grid's rows (the random-heads controls are asked for by name)
DEFAULT_CONDITIONS = (*UNTRAINED, *condition_names(default_only=True))
#: the paper's tasks, with zoo models of their own (the default experiment); any task
#: :func:`circuitlens.tasks.get_task` builds can be an experiment's, with its models named
TASKS = ("entity_tracking", "theory_of_mind")
#: the shipped experiment files (the paper's settings, the IOI example): ``circuitlens run``
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
#: the keys of a task given as a table (``[tasks.NAME]`` in a file) that are not task options
SPEC_KEYS = ("task", "teacher", "student", "options")
#: where the random-heads controls draw their heads (:attr:`ExperimentConfig.random_from`)
RandomFrom = Literal["all", "circuit"]
RANDOM_FROM: tuple[str, ...] = get_args(RandomFrom)


def all_conditions() -> tuple[str, ...]:
    """Every row an experiment may hold now: the untrained models and each condition in the
    registry (``cl.register_condition`` adds to it)."""
    return (*UNTRAINED, *condition_names())


def _task_kinds() -> dict[str, Any]:
    from circuitlens.tasks import TASKS as KINDS  # the live table of task builders

    return KINDS


def _tasks_from_table(d: dict[str, Any]) -> dict[str, Any]:
    """``tasks`` given as a table of name -> spec (``task``, ``teacher``, ``student``, options
    in ``options`` or beside them), as a file writes it, split into the config's ``tasks``,
    ``models`` and ``task_options``."""
    d = dict(d)
    names, models, options = [], dict(d.get("models") or {}), dict(d.get("task_options") or {})
    for name, spec in d["tasks"].items():
        if not isinstance(spec, dict):
            raise ConfigError(
                f"tasks.{name} must be a table (task, teacher, student, options), e.g. "
                '[tasks.ioi] task = "jsonl", teacher = "...", student = "...", '
                'options = {path = "data/tasks/ioi.jsonl"}'
            )
        names.append(name)
        roles = {r: spec[r] for r in ("teacher", "student") if r in spec}
        if roles:
            models[name] = {**models.get(name, {}), **roles}
        extra = spec.get("options", {})
        if not isinstance(extra, dict):
            raise ConfigError(f"tasks.{name}.options must be a table of the task's options")
        opts = {k: v for k, v in spec.items() if k not in SPEC_KEYS} | extra
        if "task" in spec or opts:
            options[name] = {"task": spec.get("task", name), **opts}
    d["tasks"], d["models"], d["task_options"] = names, models, options
    return d


def _default_models() -> dict[str, dict[str, str]]:
    return {
        t: {
            "teacher": f"zoo:{t.replace('_', '-')}-teacher",
            "student": f"zoo:{t.replace('_', '-')}-student",
        }
        for t in TASKS
    }


def _check_circuits(
    circuits: Any, use_circuit: bool, tasks: tuple[str, ...]
) -> dict[str, dict[str, list[str]]]:
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
        if task not in tasks:
            raise ValueError(
                f"circuits: unknown task {task!r}; the experiment's tasks: {', '.join(tasks)}"
            )
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
        tasks: the experiment's task names (keys of its run directory and tables). A name
            is its own task (``get_task(name)``) unless ``task_options`` names another; a
            file may also give ``tasks`` as a table of name -> ``{task, teacher, student,
            options}`` (``[tasks.ioi]``), read into ``tasks``, ``models`` and
            ``task_options``.
        conditions: table rows: ``student``, ``teacher`` and conditions of the registry
            (:func:`all_conditions`; default :data:`DEFAULT_CONDITIONS`: all but the controls).
        seeds: training seeds (batches; the random map of ``ce+rand``). These three are given
            as lists or tuples (a file gives lists) and held as tuples.
        models: per task, the ``teacher`` and ``student`` specs (anything
            :func:`circuitlens.load_model` accepts as a string; the zoo's for the paper's
            tasks by default).
        task_options: per task name, the task to build (``"task"``: a key of
            :data:`circuitlens.tasks.TASKS`, default the name itself) and its options
            (``path`` of a JSONL file, ``n_boxes``, ...); the seed and split sizes come from
            the experiment.
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
    random_from: RandomFrom = "all"
    target_accuracy: float | None = None
    format_accuracy: bool = True
    circuits: dict[str, dict[str, list[str]]] | None = None
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)
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
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"tasks must be distinct and at least one (got {self.tasks})")
        self._check_task_options()
        valid = all_conditions()
        bad = [c for c in self.conditions if c not in valid]
        if bad or not self.conditions:
            raise ValueError(
                f"unknown condition(s) {bad}; valid conditions: {', '.join(valid)} "
                "(or one added with circuitlens.register_condition)"
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
                f"models needs a {{'teacher': ..., 'student': ...}} entry for task(s) {missing} "
                "(in a file: teacher = ... and student = ... under [tasks.NAME] or [models.NAME])"
            )
        if self.random_from not in RANDOM_FROM:
            raise ValueError(f"random_from must be 'all' or 'circuit' (got {self.random_from!r})")
        if self.circuits is not None:
            object.__setattr__(
                self, "circuits", _check_circuits(self.circuits, self.use_circuit, self.tasks)
            )
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

    def _check_task_options(self) -> None:
        """Each task names a task type of the live registry, with options that build it."""
        if not isinstance(self.task_options, dict):
            raise ConfigError(
                "ExperimentConfig.task_options must be a table of task name -> options "
                f"(got {type(self.task_options).__name__})"
            )
        extra = sorted(set(self.task_options) - set(self.tasks))
        if extra:
            raise ConfigError(
                f"task_options names task(s) {extra} that are not among tasks {list(self.tasks)}"
            )
        kinds = _task_kinds()
        for name in self.tasks:
            kind, options = self.task_spec(name)
            if kind not in kinds:
                raise ConfigError(
                    f"task {name!r}: unknown task type {kind!r}; valid: {', '.join(kinds)} (set "
                    f'task_options["{name}"]["task"], or task = ... under [tasks.{name}])'
                )
            reserved = sorted({"seed", "tokenizers"} & set(options))
            if reserved:
                raise ConfigError(
                    f"task {name!r}: {reserved} are set by the experiment (task_seed, the "
                    "models' tokenizers): drop them from the task's options"
                )
            if kind == "jsonl" and "path" not in options:
                raise ConfigError(
                    f"task {name!r} is a JSONL task without a file: give its path, e.g. "
                    f'options = {{path = "data/tasks/ioi.jsonl"}} under [tasks.{name}]'
                )

    def task_spec(self, name: str) -> tuple[str, dict[str, Any]]:
        """The task type of task ``name`` (a key of :data:`circuitlens.tasks.TASKS`) and its
        options."""
        options = dict(self.task_options.get(name, {}))
        return options.pop("task", name), options

    @classmethod
    def quick(cls, **overrides: Any) -> ExperimentConfig:
        """A few minutes on 2 CPU cores: one seed, 60 steps, smaller evaluation sets
        (``configs/paper-zoo-quick.toml``); ``overrides`` as :meth:`with_overrides` takes
        them."""
        return cls.preset("paper-zoo-quick", **overrides)

    @classmethod
    def real(
        cls, quick: bool = False, teacher: str = "smollm2", **overrides: Any
    ) -> ExperimentConfig:
        """The paper's comparison on real pretrained models (``reproduce --models real``): per
        task, a fine-tuned teacher and the 22-layer SmolLM2 student healed to warm
        (:mod:`circuitlens.models.real`). ``teacher="smollm2"``: the same-family pair
        (``configs/paper-real.toml``); ``"gemma3"``: the cross-family pair
        (``configs/paper-real-gemma3.toml``: another tokenizer, without ``kd``). ``quick``:
        the ``-quick`` file of the pair (one seed, 20 steps). The files say why each setting."""
        if teacher not in ("smollm2", "gemma3"):
            raise ValueError(f"teacher must be 'smollm2' or 'gemma3' (got {teacher!r})")
        name = "paper-real" + ("-gemma3" if teacher == "gemma3" else "") + ("-quick" * quick)
        return cls.preset(name, **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ExperimentConfig:
        """A config file shipped in ``configs/`` by its name (``"paper-real-quick"``), with
        ``overrides`` (:meth:`with_overrides`)."""
        f = CONFIGS_DIR / f"{name}.toml"
        if not f.is_file():
            have = sorted(p.stem for p in CONFIGS_DIR.glob("*.toml"))
            raise ConfigError(f"no config {name!r} in {CONFIGS_DIR}; shipped: {', '.join(have)}")
        cfg = cls.load(f)
        return cfg.with_overrides(**overrides) if overrides else cfg

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
        if isinstance(d.get("tasks"), dict):
            d = _tasks_from_table(d)
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
        """From a ``.toml`` or ``.json`` file (``[distill]`` and ``[distill.train]`` tables).
        A task's relative ``path`` or ``plan`` (a JSONL file) is relative to the config file,
        as the file writes it, and held relative to the working directory."""
        d = read_config_file(path)
        if isinstance(d.get("tasks"), dict):
            d = _tasks_from_table(d)
        base = Path(path).resolve().parent
        for options in (d.get("task_options") or {}).values():
            if not isinstance(options, dict):
                continue
            for key in ("path", "plan"):
                if isinstance(options.get(key), str) and not Path(options[key]).is_absolute():
                    options[key] = os.path.relpath(base / options[key])
        return cls.from_dict(d)

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
