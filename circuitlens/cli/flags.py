"""The options of the ``circuitlens`` command: one table (:data:`FLAGS`), each option declared
once for every command that takes it, with the config field it sets; the parser's options
(:func:`add_flags`) and the fields a command line set (:func:`given_fields`) are read from it."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def parse_value(text: str) -> Any:
    """A command-line value as JSON where it reads as JSON (numbers, true/false, lists), else
    the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _jobs(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number >= 1 or 'auto' (got {text!r})")
    return value


def _values(text: str) -> list[float | int]:
    """``--lam 0.1,0.3,1,3``: the values of a curve (a whole number stays an int: a budget of
    26 heads, not a fraction)."""
    values = [parse_value(v.strip()) for v in text.split(",") if v.strip()]
    if not values or any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        raise argparse.ArgumentTypeError(f"comma-separated numbers, e.g. 0.1,0.3,1 (got {text!r})")
    return values


@dataclass(frozen=True)
class DistillRun:
    """What ``circuitlens distill`` runs where neither its flags (``--teacher``, ``--student``,
    ``--task``) nor its ``--config`` file (the run keys,
    :data:`~circuitlens.distill.config.RUN_KEYS`) name it.

    Attributes:
        teacher: the teacher's model spec (anything :func:`circuitlens.load_model` reads).
        student: the student's model spec.
        task: the task's name (:func:`circuitlens.get_task`).
    """

    teacher: str = "zoo:entity-tracking-teacher"
    student: str = "zoo:entity-tracking-student"
    task: str = "entity_tracking"


#: the models ``reproduce --models`` runs (docs/real_models.md)
ModelSet = Literal["zoo", "real", "real-gemma3"]
MODEL_SETS: tuple[str, ...] = get_args(ModelSet)
#: the commands that run an experiment file, and with ``distill`` every command that trains
EXPERIMENTS = ("reproduce", "run")
RUNS = ("distill", *EXPERIMENTS)


@dataclass(frozen=True)
class Flag:
    """One option of the command line, declared once for every command that takes it.

    A flag with a ``field`` sets that config field: its type and choices come from the field's
    annotation (a ``Literal`` gives the choices), the ``{default}`` of its help is the field's
    default, and it is None in the parsed namespace unless given, so that a flag left out
    leaves the config as it is (a file's value, else the dataclass default;
    :func:`given_fields`). A flag without a field is an option of the run itself (where, how,
    what to print), read by its command.

    Attributes:
        name: the option, e.g. ``"--sweep-n"``.
        commands: the commands that take it, a nested one by its path (``"zoo train"``).
        help: its help; ``{default}`` and ``{choices}`` are filled in (the field's default,
            else ``default``; the choices, else what ``names`` lists).
        field: ``"PART.NAME"``, field NAME of the class :func:`config_classes` gives PART
            (``"train.steps"``: ``TrainConfig.steps``); None: no config field.
        type, nargs, action, metavar, dest: as :meth:`argparse.ArgumentParser.add_argument`
            takes them; a field's type, nargs and choices come from its annotation unless the
            flag gives them.
        default: the value of a flag without a field when it is not given.
        choices: the valid values of a flag without a field.
        names: the valid values of a field whose registry can grow (a condition, a map
            method): listed as the help's ``{choices}``, checked by the config, not argparse.
        curve: the flag takes comma-separated values on the experiment commands
            (:data:`EXPERIMENTS`), several of them a curve of runs; the help's example of them.
    """

    name: str
    commands: tuple[str, ...]
    help: str
    field: str | None = None
    type: Callable[[str], Any] | None = None
    nargs: str | None = None
    action: str | None = None
    metavar: str | None = None
    dest: str | None = None
    default: Any = None
    choices: tuple[str, ...] | None = None
    names: Callable[[], tuple[str, ...]] | None = None
    curve: str | None = None

    def __post_init__(self) -> None:
        if self.field is not None and (self.default is not None or self.choices is not None):
            raise ValueError(
                f"{self.name}: a flag that sets {self.field} takes its default and choices "
                "from the field's dataclass, not its own"
            )

    @property
    def attr(self) -> str:
        """The flag's attribute in the parsed namespace (``--sweep-n``: ``sweep_n``)."""
        return self.dest or self.name.lstrip("-").replace("-", "_")

    @property
    def key(self) -> str:
        """The name of the flag's field in ``with_overrides``: a DistillConfig part's field by
        its flat name (:data:`~circuitlens.distill.config.FLAT_KEYS`: ``sweep.n`` is
        ``sweep_n``), any other by its own (``train.steps`` is ``steps``)."""
        from circuitlens.distill.config import FLAT_KEYS

        if self.field is None:
            raise ValueError(f"{self.name} sets no config field")
        part, _, name = self.field.partition(".")
        return {where: flat for flat, where in FLAT_KEYS.items()}.get((part, name), name)


def _map_methods() -> tuple[str, ...]:
    from circuitlens.distill.config import CORRESPONDENCE_METHODS

    return tuple(CORRESPONDENCE_METHODS)


def _conditions() -> tuple[str, ...]:
    from circuitlens.distill.conditions import condition_names

    return condition_names()


_FRESH_HELP = (
    "delete the {} directory first (only one a circuitlens run made, and only if it holds "
    "nothing but what runs write: a file of yours there is named, kept)"
)

#: every option of every command, each declared once (``--version`` and ``-v`` aside, the
#: program's own); a name on several entries is several options, of disjoint commands
FLAGS: tuple[Flag, ...] = (
    # what runs
    Flag("--quick", ("reproduce",), "one seed, fewer steps and prompts: a few minutes on the "
         "zoo, <= 20 on --models real", action="store_true"),
    Flag("--config", ("reproduce",), "a .toml/.json ExperimentConfig (as `circuitlens run`)"),
    Flag("--config", ("distill",), "a .toml/.json DistillConfig (may name teacher, student, "
         "task at the top level)"),
    Flag("--models", ("reproduce",), "zoo: the embedded tiny models; real: SmolLM2-135M "
         "teachers and pruned students; real-gemma3: Gemma-3-270M teachers, the same students "
         "(docs/real_models.md; default {default})", choices=MODEL_SETS, default="zoo"),
    Flag("--teacher", ("distill",), "model spec (default {default})", field="run.teacher"),
    Flag("--student", ("distill",), "model spec (default {default})", field="run.student"),
    Flag("--task", ("distill",), "task name (default {default})", field="run.task"),
    Flag("--task-option", ("distill",), "a task option (repeatable): --task-option n_boxes=3 "
         "--task-option seed=1; the prompt format on the models' cards is used unless "
         "overridden", action="append", metavar="KEY=VALUE"),
    Flag("--tasks", EXPERIMENTS, "a subset of the tasks", field="experiment.tasks"),
    Flag("--conditions", EXPERIMENTS, "a subset of the conditions",
         field="experiment.conditions"),
    Flag("--seeds", EXPERIMENTS, "training seeds", field="experiment.seeds"),
    Flag("--circuit", EXPERIMENTS, "map into a teacher circuit found before (a Circuit.save "
         "file) instead of searching, e.g. entity_tracking=circuit.json", nargs="+",
         metavar="TASK=FILE"),
    # the options of a run
    Flag("--steps", RUNS, "training steps (reproduce, run: of each cell)",
         field="train.steps"),
    Flag("--sweep-n", ("distill",), "prompts per ablation sweep (default {default})",
         field="sweep.n"),
    Flag("--test-n", ("distill",), "test prompts for the before/after accuracy (default "
         "{default})", field="distill.test_n"),
    Flag("--condition", ("distill",), "training condition: {choices} (default {default})",
         field="train.condition", names=_conditions),
    Flag("--lam", RUNS, "the weight of the CKA term", field="train.lam", curve="0.1,0.3,1,3"),
    Flag("--budget", RUNS, "student heads: a fraction or a count", field="map.budget",
         type=parse_value, curve="0.05,0.13,0.25"),
    Flag("--map-method", RUNS, "how student heads find teacher partners (a correspondence "
         "method: {choices}; default {default}, the paper's)", field="map.method",
         names=_map_methods),
    Flag("--seed", ("distill",), "training seed (default {default})", field="train.seed"),
    Flag("--dtype", ("distill",), "training precision: bfloat16 trains the student under bf16 "
         "autocast (float32 master weights, float32 CKA) and loads the teacher in bf16 "
         "(default {default})", field="train.dtype"),
    Flag("--set", EXPERIMENTS, "override an option of the config (repeat the flag for more): "
         "a field (task_seed=1), a distill option by its flat name (sweep_n=8, budget=10, "
         "test_n=50) or a trainer option (lr=1e-4, eval_n=20)", action="append",
         metavar="KEY=VALUE"),
    # where and how
    Flag("--out", ("reproduce",), "results directory (default results/reproduce[-quick])"),
    Flag("--out", ("run",), "results directory (default results/<config name>)"),
    Flag("--out", ("distill",), "output directory (default {default})",
         default="results/distill"),
    Flag("--device", RUNS, "where the models run: cpu (default), cuda, cuda:N, mps; checked "
         "before anything loads (a CPU build of torch has no cuda)"),
    Flag("--threads", (*RUNS, "real build"), "torch CPU threads (default: every core)",
         type=int),
    Flag("--jobs", EXPERIMENTS, "worker processes, one task each, sharing the --threads out "
         "among them (default {default}: on the CPU one per task, at most one per thread; on "
         "2 CPU cores two train ~1.27x faster than one; results are those of that many threads "
         "per process, so give --jobs 1 to match a one-process run bit for bit)", type=_jobs,
         default="auto"),
    Flag("--fresh", EXPERIMENTS, _FRESH_HELP.format("results"), action="store_true"),
    Flag("--fresh", ("distill",), _FRESH_HELP.format("output"), action="store_true"),
    Flag("--no-progress", RUNS, "no progress bars", action="store_true"),
    Flag("--no-circuit-only", EXPERIMENTS, "skip each cell's circuit-only accuracy (every "
         "student head outside the map mean-ablated; None in the cell): no other measure "
         "changes, and a cell takes about a third less time on the real pairs",
         action="store_true"),
    Flag("--save-model", ("distill",), "also write the whole trained student (save_pretrained) "
         "beside the result's delta", action="store_true"),
    # demo, zoo train, real build
    Flag("--n", ("demo",), "test prompts per task (default {default})", type=int, default=500),
    Flag("--seed", ("demo",), "task seed (default {default})", type=int, default=0),
    Flag("--steps", ("zoo train",), "override the recipe's step budget", type=int),
    Flag("--out", ("zoo train",), "output directory (default data/zoo/NAME)"),
    Flag("--out", ("real build",), "output directory (default data/real/NAME)"),
    Flag("--fresh", ("zoo train",), "ignore checkpoints in runs/zoo/NAME", action="store_true"),
    Flag("--fresh", ("real build",), "ignore the checkpoint in OUT/build", action="store_true"),
    Flag("--continue-shipped", ("zoo train",), "start from the shipped weights (train a "
         "shipped model further; use with --steps beyond its card's steps)",
         action="store_true"),
    # plan
    Flag("--effect", ("plan",), "mean paired difference to detect, in accuracy (e.g. 0.03; "
         "--from: the run's design.effect)", field="design.effect"),
    Flag("--sd", ("plan",), "sd of the per-seed paired differences (--from: measured)",
         type=float),
    Flag("--contrasts", ("plan",), "primary contrasts, Holm-adjusted together (default 1; "
         "--from: the run's declared family)", type=int),
    Flag("--alpha", ("plan",), "familywise level (default {default}; --from: the run's "
         "design.alpha)", field="design.alpha"),
    Flag("--power", ("plan",), "wanted power (default {default}; --from: the run's "
         "design.power)", field="design.power"),
    Flag("--from", ("plan",), "a finished run directory (cells in "
         "TASK/CONDITION/seedS/cell.json)", dest="run", metavar="RUN_DIR"),
    Flag("--max-seeds", ("plan",), "most seeds considered (default {default})", type=int,
         default=20),
    Flag("--sims", ("plan",), "simulated samples per n (default {default})", type=int,
         default=4000),
)  # fmt: skip


def flags_of(command: str) -> tuple[Flag, ...]:
    """The entries of :data:`FLAGS` that ``command`` takes (``"zoo train"``: a nested one)."""
    return tuple(f for f in FLAGS if command in f.commands)


def config_classes() -> dict[str, type]:
    """The config classes flags set, by the PART of :attr:`Flag.field`: a DistillConfig's parts
    (``sweep``, ``map``, ``train``), ``distill`` (DistillConfig), ``run`` (:class:`DistillRun`),
    ``experiment`` (ExperimentConfig) and ``design`` (DesignConfig)."""
    from circuitlens.distill.config import PARTS, DistillConfig
    from circuitlens.experiments import ExperimentConfig
    from circuitlens.experiments.design import DesignConfig

    return {
        **PARTS,
        "distill": DistillConfig,
        "run": DistillRun,
        "experiment": ExperimentConfig,
        "design": DesignConfig,
    }


def config_field(flag: Flag) -> tuple[type, dataclasses.Field]:
    """The config class of ``flag``'s field, and the field."""
    part, _, name = (flag.field or "").partition(".")
    classes = config_classes()
    if part not in classes:
        raise ValueError(f"{flag.name}: no config part {part!r}; parts: {', '.join(classes)}")
    fields = {f.name: f for f in dataclasses.fields(classes[part])}
    if name not in fields:
        raise ValueError(f"{flag.name}: {classes[part].__name__} has no field {name!r}")
    return classes[part], fields[name]


def field_default(flag: Flag) -> Any:
    """The default of ``flag``'s config field, as its dataclass declares it."""
    _, f = config_field(flag)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _from_annotation(hint: Any) -> dict[str, Any]:
    """argparse's ``choices``, ``type`` and ``nargs`` for a field annotated ``hint``: a
    ``Literal``'s values as the choices (``DType | torch.dtype``: the Literal's), ``int``,
    ``float`` or ``str`` as the type (``int | None``: ``int``), a tuple or list of one of them as
    one or more values; ``{}`` for any other annotation (the flag gives its type)."""
    members = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    members = tuple(m for m in members if m is not type(None))
    for m in members:
        if get_origin(m) is Literal:
            return {"choices": get_args(m)}
    if len(members) == 1 and members[0] in (int, float, str):
        return {"type": members[0]}
    if get_origin(members[0]) in (tuple, list) and get_args(members[0])[0] in (int, float, str):
        return {"type": get_args(members[0])[0], "nargs": "+"}
    return {}


def argparse_options(flag: Flag, command: str) -> dict[str, Any]:
    """What :meth:`argparse.ArgumentParser.add_argument` takes for ``flag`` on ``command``:
    the flag's own options over those of its field's annotation, a curve flag's comma-separated
    values on an experiment command, and the help with its default and choices filled in."""
    options: dict[str, Any] = {}
    shown = flag.default
    if flag.field is not None:
        cls, f = config_field(flag)
        options = _from_annotation(get_type_hints(cls)[f.name])
        shown = field_default(flag)
    own = {
        "type": flag.type,
        "nargs": flag.nargs,
        "action": flag.action,
        "metavar": flag.metavar,
        "dest": flag.dest,
        "default": flag.default,
        "choices": flag.choices,
    }
    options |= {k: v for k, v in own.items() if v is not None}
    if flag.field is not None and not {"type", "choices"} & set(options):
        raise ValueError(f"{flag.name}: {flag.field}'s annotation names no type: give the flag's")
    text = flag.help
    if flag.curve and command in EXPERIMENTS:
        options["type"] = _values
        text += f"; several ({flag.curve}): a curve, one run per value under --out"
    listed = options.get("choices") or (flag.names() if flag.names else ())
    options["help"] = text.format(default=shown, choices=", ".join(listed))
    return options


def add_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """Add ``command``'s options (:func:`flags_of`) to its parser."""
    for flag in flags_of(command):
        parser.add_argument(flag.name, **argparse_options(flag, command))


def given_fields(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The config fields the command line of ``command`` set, by :attr:`Flag.key`, in the
    table's order: a flag left out is None in ``args`` and sets none."""
    values = {f: getattr(args, f.attr) for f in flags_of(command) if f.field is not None}
    return {f.key: v for f, v in values.items() if v is not None}
