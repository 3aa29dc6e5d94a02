"""Running an experiment: the per-task setup, the cells, resumption, refusal to mix."""

from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from circuitlens.circuits.evaluation import format_accuracy, format_tasks
from circuitlens.circuits.find import find_circuit
from circuitlens.core.devices import check_device
from circuitlens.core.io import atomic_write_text, json_text
from circuitlens.core.progress import heartbeat
from circuitlens.core.rundir import run_directory
from circuitlens.core.types import Circuit, HeadMap, Model
from circuitlens.distill.conditions import get_condition
from circuitlens.distill.pipeline import (
    BeforeTraining,
    SetupRecord,
    prepare,
    train_condition,
    with_map_features,
)
from circuitlens.distill.setup import Setup, read_setup
from circuitlens.distill.teacher_cache import TeacherCache
from circuitlens.distill.train_config import FIRST_SEED, TrainRun
from circuitlens.distill.trainer import CircuitTrainer
from circuitlens.experiments.cell import Cell
from circuitlens.experiments.config import UNTRAINED, ExperimentConfig
from circuitlens.experiments.design import warn_design
from circuitlens.experiments.lr_choice import (
    LR_FILE,
    LRChoice,
    lr_key,
    pilot_choice,
    read_choices,
    write_choices,
)
from circuitlens.experiments.result import ExperimentResult
from circuitlens.experiments.run_config import check_directory, same_config
from circuitlens.experiments.workers import auto_jobs, run_parallel  # noqa: F401 (auto_jobs)
from circuitlens.mapping.map import budget_count, require_one_to_one
from circuitlens.measure.runtime_estimate import Cost, estimate_experiment_cost, report_cost
from circuitlens.models.registry import load_model, model_facts, model_fingerprint
from circuitlens.tasks import Task, TaskFormatWarning, get_task, require_compatible_tokenizers


def _task(name: str, seed: int, tokenizers: list[Any], cfg: ExperimentConfig, **fmt: Any) -> Task:
    """The experiment's task ``name`` (its type and options: ``cfg.task_spec``) in the prompt
    format on the models' cards (the zoo's: theory of mind without the instruction block),
    with words that are single tokens for both; ``fmt`` builds it in another format on purpose
    (the per-format accuracies), without the override warning. The split sizes the experiment
    needs are passed to a task that takes them (a JSONL task's splits are its file's). The
    task carries the experiment's name for it (``task.name``), which keys its results."""
    d = cfg.distill
    kind, options = cfg.task_spec(name)
    sizes = {
        "n_val": max(d.train.eval_n, d.train.cka_eval_n),
        "n_test": d.test_n,
        # what chooses (the circuit search, the sweeps, the map) reads probe, never test
        "n_probe": max(cfg.circuit.n, d.sweep.n or 0),
    }
    with warnings.catch_warnings():
        if fmt:
            warnings.simplefilter("ignore", TaskFormatWarning)
        build = lambda **more: get_task(  # noqa: E731
            kind, seed=seed, tokenizers=tokenizers, **options, **fmt, **more
        )
        task = build()
        takes = {f.name for f in dataclasses.fields(task.config)}
        sized = {k: v for k, v in sizes.items() if k in takes and k not in options}
        if sized:
            task = build(**sized)
    if task.name != name:
        task.split("train")  # the prompts are drawn (seeded by the type's name) before renaming
        task.name = name
    return task


def experiment_task(cfg: ExperimentConfig, name: str, models: list[Any]) -> Task:
    """Task ``name`` of experiment ``cfg`` exactly as its run builds it (its type, options,
    ``task_seed`` and the split sizes the run needs, so the same prompts fall in each split),
    with words that are single tokens for every one of ``models``."""
    return _task(name, cfg.task_seed, models, cfg)


def _formats(task: Task, cfg: ExperimentConfig, tokenizers: list[Any]) -> dict[str, Task]:
    """The task in every prompt format it offers (the same seed: the same stories); none
    when the config measures the card's format only."""
    if not cfg.format_accuracy:
        return {}
    return format_tasks(task, lambda **fmt: _task(task.name, cfg.task_seed, tokenizers, cfg, **fmt))


def _fingerprints(cfg: ExperimentConfig, task_name: str) -> dict[str, str]:
    return {role: model_fingerprint(spec) for role, spec in cfg.models[task_name].items()}


def _check_models(setup: Setup, cfg: ExperimentConfig, directory: Path) -> None:
    t = setup.task
    now = _fingerprints(cfg, t)
    if setup.fingerprints and setup.fingerprints != now:  # empty: not recorded
        changed = [r for r in now if setup.fingerprints.get(r) != now[r]]
        raise ValueError(
            f"the {' and '.join(changed)} of task {t!r} changed since {directory / t} was "
            f"computed (other weights under the same name); results of two models are never "
            f"mixed: delete {directory / t} to recompute that task, or use --fresh"
        )


def _given_circuit(
    cfg: ExperimentConfig, task: str, groups: dict[str, list[str]], teacher: Model, student: Model
) -> Circuit:
    """A circuit found before (the config carries it), checked against the models before any
    work: every head in the teacher, and enough heads for a one-to-one map of the budget."""
    circuit = Circuit(groups, meta={"method": "given in the config (ExperimentConfig.circuits)"})
    where = f"ExperimentConfig.circuits[{task!r}]"
    try:
        for h in circuit.heads:
            h.check(teacher.cfg.n_layers, teacher.cfg.n_heads)
    except ValueError as e:
        raise ValueError(
            f"{where} does not fit the teacher {cfg.models[task]['teacher']}: {e}"
        ) from e
    if cfg.distill.map.one_to_one:  # map_heads would refuse it too, but only after the sweeps
        fs = model_facts(student)
        k = budget_count(cfg.distill.map.budget, fs.n_layers * fs.n_heads)
        require_one_to_one(len(circuit.heads), k, where)
    return circuit


def _circuit(
    task: Task,
    cfg: ExperimentConfig,
    teacher: Model,
    student: Model,
    progress: bool,
    circuit_dir: Path | None,
) -> tuple[Circuit | None, str]:
    """The task's circuit (given in the config, found by patching, or none) and its note."""
    given = (cfg.circuits or {}).get(task.name)
    if given is not None:
        return _given_circuit(cfg, task.name, given, teacher, student), ""
    if not cfg.use_circuit:
        return None, ""
    circuit = find_circuit(
        teacher, task, cfg.circuit, progress=progress,
        checkpoint_dir=circuit_dir,
    )  # fmt: skip
    if not circuit.heads:
        return circuit, "patching found no circuit heads: the map may use any teacher head"
    return circuit, ""


def _setup_task(
    task: Task,
    cfg: ExperimentConfig,
    teacher: Model,
    student: Model,
    progress: bool,
    formats: dict[str, Task],
    circuit_dir: Path | None = None,
    sweeps_dir: Path | None = None,
) -> Setup:
    """The circuit, then :func:`circuitlens.distill.pipeline.prepare` (sweeps, head map, untrained
    references, the accuracy per prompt format) of one task (``circuit_dir``: where the
    circuit search keeps its finished stages, to resume after an interruption; ``sweeps_dir``:
    where the sweeps are kept, so that a run that differs only in what the sweeps do not read,
    a budget sweep's points, reuses them)."""
    t0 = time.time()
    circuit, note = _circuit(task, cfg, teacher, student, progress, circuit_dir)
    record = SetupRecord(sweeps_dir, formats, _fingerprints(cfg, task.name), note)
    setup = prepare(teacher, student, task, cfg.distill, circuit, progress, record)
    return dataclasses.replace(setup, seconds=round(time.time() - t0, 1))


def _cell_map(setup: Setup, condition: str, seed: int, cfg: ExperimentConfig) -> HeadMap:
    """The pairs of one cell: the setup's map, or the condition's control drawn with the
    cell's seed (:meth:`~circuitlens.distill.setup.Setup.condition_map`)."""
    return setup.condition_map(condition, seed, random_from_circuit=cfg.random_from == "circuit")


def _cell_train_config(cfg: ExperimentConfig, condition: str, seed: int, lr: float | None) -> Any:
    """The trainer's options of one cell (or of a grid point: the same, at its lr)."""
    lrs = {} if lr is None else {"lr": lr}
    return dataclasses.replace(cfg.distill.train, condition=condition, seed=seed, **lrs)


def _lr_trial(
    trial_dir: Path,
    task: Task,
    condition: str,
    lr: float,
    seed: int,
    cfg: ExperimentConfig,
    setup: Setup,
    teacher: Model,
    student: Model,
    teacher_cache: TeacherCache | None,
) -> tuple[float, int]:
    """Train the untrained ``student`` in place as ``condition``'s cell of ``seed`` at ``lr``
    (resumable from ``trial_dir/checkpoint``); its validation accuracy at its kept step (NaN:
    no evaluation) and the kept step. Reads the validation split only."""
    head_map = _cell_map(setup, condition, seed, cfg)
    trainer = CircuitTrainer(
        student, teacher, task, head_map, _cell_train_config(cfg, condition, seed, lr),
        setup.circuit, TrainRun(trial_dir / "checkpoint", teacher_cache),
    )  # fmt: skip
    history = trainer.train(progress=False)
    kept = trainer.kept_step
    vals = [r["val_accuracy"] for r in history if r["step"] == kept and "val_accuracy" in r]
    return (vals[0] if vals else float("nan")), kept


def _choose_lrs(
    t: str,
    cfg: ExperimentConfig,
    directory: Path,
    conditions: list[str],
    trial: Any,
) -> dict[str, float]:
    """Each of ``conditions``' learning rate on task ``t``
    (:mod:`circuitlens.experiments.lr_choice`): none without ``lr_grid`` (the config's
    ``lr``); else the finished choice in ``<t>/lr.json``, or the grid points still missing
    trained now (``trial(condition, lr, seed) -> (val accuracy, kept step)``), each written to
    ``lr.json`` as soon as it is measured, or a pilot run's choice (``lr_from``)."""
    train = cfg.distill.train
    if train.lr_grid is None:
        return {}
    f = directory / t / LR_FILE
    choices = read_choices(f)
    grid = tuple(sorted(train.lr_grid))
    out: dict[str, float] = {}
    for c in conditions:
        choice = choices.get(c)
        if choice is None or choice.grid != grid:
            if train.lr_from != FIRST_SEED:
                choice = pilot_choice(train.lr_from, t, c, grid)
            else:  # the first seed of the config: a later selection of seeds keeps the choice
                choice = LRChoice(c, grid, cfg.seeds[0])
            choices[c] = choice
            write_choices(f, choices)
        for g in choice.missing():
            choice = choice.with_point(g, *trial(c, g, choice.seed))
            choices[c] = choice
            write_choices(f, choices)
        assert choice.lr is not None
        out[c] = choice.lr
    return out


def _lr_trials_left(t: str, cfg: ExperimentConfig, directory: Path, conditions: list[str]) -> int:
    """Grid points still to train for ``conditions`` on task ``t`` (for the cost estimate)."""
    train = cfg.distill.train
    if train.lr_grid is None or train.lr_from != FIRST_SEED:
        return 0
    choices = read_choices(directory / t / LR_FILE)
    grid = tuple(sorted(train.lr_grid))
    left = 0
    for c in conditions:
        choice = choices.get(c)
        left += len(grid) if choice is None or choice.grid != grid else len(choice.missing())
    return left


def _run_cell(
    cell_dir: Path,
    task: Task,
    condition: str,
    seed: int,
    cfg: ExperimentConfig,
    setup: Setup,
    teacher: Model,
    progress: bool,
    formats: dict[str, Task] | None = None,
    student: Model = None,
    teacher_cache: TeacherCache | None = None,
    befores: dict[tuple[str, ...], Any] | None = None,
    lr: float | None = None,
    circuit_only: bool = True,
) -> Cell:
    """Train and measure one cell. ``student``: the untrained student to train in place
    (default: loaded afresh); ``teacher_cache``: the teacher's outputs shared by the cells;
    ``befores``: the untrained student's held-out CKA per map, shared by the cells (filled
    here). The cell's ``mechanism``: each trained head ablated again after training, beside its
    teacher partner (:mod:`circuitlens.measure.mechanism`, against the setup's untrained
    sweeps). ``lr``: the condition's learning rate (chosen on the grid; None: the config's).
    ``circuit_only``: also measure the circuit-only accuracy (:class:`TrainRun`)."""
    t0 = time.time()
    d = cfg.distill
    if student is None:
        student = load_model(cfg.models[task.name]["student"])
    head_map = _cell_map(setup, condition, seed, cfg)
    train_cfg = _cell_train_config(cfg, condition, seed, lr)
    pairs = tuple(f"{s}>{t}" for s, t in head_map.pairs)
    before = None if befores is None else befores.get(pairs)
    run = TrainRun(
        cell_dir / "checkpoint", teacher_cache, progress=progress, circuit_only=circuit_only
    )
    done = train_condition(
        teacher, student, task, head_map, dataclasses.replace(d, train=train_cfg), run,
        BeforeTraining(setup.circuit, before, setup.student_sweep, setup.teacher_sweep),
    )  # fmt: skip
    assert done.mechanism is not None  # the sweeps were passed
    if befores is not None:
        befores[pairs] = done.cka_before
    formats = {"default": task} if formats is None else formats
    measured = format_accuracy(student, formats, d.test_n, (task, done.accuracy))
    return Cell.from_condition(task.name, done, measured, round(time.time() - t0, 1))


def _weights(model: Model) -> dict[str, Any]:
    """A copy of every parameter and buffer of ``model``."""
    out = {f"p:{n}": p.detach().clone() for n, p in model.named_parameters()}
    out |= {f"b:{n}": b.detach().clone() for n, b in model.named_buffers()}
    return out


def _restore(model: Model, weights: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(weights[f"p:{n}"])
        for n, b in model.named_buffers():
            b.copy_(weights[f"b:{n}"])


def run_experiment(
    config: ExperimentConfig | None = None,
    directory: str | Path = "results/reproduce",
    fresh: bool = False,
    progress: bool = True,
    device: str | None = None,
    jobs: int | str = 1,
    circuit_only: bool = True,
) -> ExperimentResult:
    """Run (or resume) every task x condition x seed of ``config`` into ``directory``.

    ``device`` (e.g. ``"cuda"``) is where the models go (default: the loader's, the CPU).
    ``jobs``: run the tasks in this many worker processes, the torch CPU threads shared out
    among them (faster on a few CPU cores; the results are those of a run with that many
    threads per process); ``"auto"`` (the CLI's default): on the CPU one per task with work
    left, at most one per torch thread; elsewhere 1.

    Finished cells are kept and skipped; a cell interrupted mid-training resumes from its
    checkpoint. ``circuit_only=False`` skips each cell's circuit-only accuracy (its
    ``circuit_accuracy`` is None; no other measure changes: a third of a cell's time on the
    real pairs). A directory holding another config is refused (``fresh=True`` deletes it, and
    only a directory that carries the run marker: see :mod:`circuitlens.core.rundir`). While the run
    writes, it holds the directory's lock: a second run on it is refused.

    Returns:
        The :class:`ExperimentResult`, with its tables written (``table.md``, ``table.csv``,
        ...); :func:`circuitlens.report.page.write_report` makes the HTML page from it.

    Raises:
        RunDirectoryError: ``directory`` is not a run's (``fresh`` refuses to delete it) or
            another live run holds it (:class:`~circuitlens.core.rundir.RunLockedError`).
        TokenizerMismatchError: a task's teacher and student tokenize differently.
        DeviceError: ``device`` cannot be used here (checked before any work: see
            :func:`circuitlens.core.devices.check_device`).
    """
    check_device(device)  # before any work: a run on a device there is not fails at once
    cfg = config or ExperimentConfig()
    warn_design(cfg)  # before any work: a design that cannot reject is exploratory
    if jobs != "auto" and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a whole number >= 1 or 'auto' (got {jobs!r})")
    directory = Path(directory)
    adopt = lambda d: same_config(d, cfg)  # noqa: E731
    with run_directory(directory, fresh=fresh, kind="reproduce", adopt=adopt):
        check_directory(directory, cfg)
        return _run(cfg, directory, progress, device, jobs, circuit_only)


def _preflight(
    cfg: ExperimentConfig,
    directory: Path,
    todo: list[tuple[str, str, int]],
    progress: bool,
    device: str | None = None,
) -> None:
    """Before any work, for every task with work left: the models are those of its saved
    setup, teacher and student tokenize alike, and what the whole run will cost (said once).
    Each task's pair is loaded and freed in turn (peak memory: one pair)."""
    import gc

    costs: list[Cost] = []
    parts: dict[str, float] = {}
    for t in cfg.tasks:
        setup_file = directory / t / "setup.json"
        cells = [(c, s) for tt, c, s in todo if tt == t]
        if setup_file.is_file():
            _check_models(read_setup(setup_file, t), cfg, directory)
        if not cells and setup_file.is_file():
            continue
        teacher = load_model(cfg.models[t]["teacher"], device=device)
        student = load_model(cfg.models[t]["student"], device=device)
        task = _task(t, cfg.task_seed, [teacher, student], cfg)
        require_compatible_tokenizers(
            teacher,
            student,
            task,
            [c for c, _ in cells],
            cfg.distill.train.positions,
        )
        trials = _lr_trials_left(t, cfg, directory, list(dict.fromkeys(c for c, _ in cells)))
        cost = estimate_experiment_cost(
            teacher, student, task, cfg, len(cells) + trials, setup=not setup_file.is_file()
        )
        costs.append(cost)
        parts[t] = cost.seconds
        del teacher, student, task
        gc.collect()
    if costs:
        total = Cost(
            what=f"reproduce ({len(todo)} cells to run)",
            prompt_passes={
                k: sum(c.prompt_passes.get(k, 0.0) for c in costs) for k in costs[0].prompt_passes
            },
            seconds=sum(c.seconds for c in costs),
            flops=sum(c.flops for c in costs),
            parts=parts,
        )
        report_cost(total, progress)


def _run(
    cfg: ExperimentConfig,
    directory: Path,
    progress: bool,
    device: str | None = None,
    jobs: int | str = 1,
    circuit_only: bool = True,
) -> ExperimentResult:
    import functools

    from tqdm.auto import tqdm

    trained = [c for c in cfg.conditions if c not in UNTRAINED]  # the live registry's
    todo = [
        (t, c, s)
        for t in cfg.tasks
        for s in cfg.seeds
        for c in trained
        if not (directory / t / c / f"seed{s}" / "cell.json").is_file()
    ]
    n_cells = len(cfg.tasks) * len(cfg.seeds) * len(trained)
    _preflight(cfg, directory, todo, progress, device)
    busy = [t for t in cfg.tasks if any(tt == t for tt, _, _ in todo)]
    if jobs == "auto":
        jobs = auto_jobs(len(busy), device)
    run_task = functools.partial(_run_task, circuit_only=circuit_only)  # picklable: workers
    if jobs > 1 and len(busy) > 1:
        run_parallel(run_task, cfg, directory, todo, progress, device, jobs)
    else:
        bar = tqdm(
            total=n_cells, initial=n_cells - len(todo), desc="reproduce", disable=not progress
        )
        for t in cfg.tasks:
            run_task(t, cfg, directory, todo, bar, device)
        bar.close()
    result = ExperimentResult.load(directory)
    result.write_tables()
    return result


def _run_task(
    t: str,
    cfg: ExperimentConfig,
    directory: Path,
    todo: list[tuple[str, str, int]],
    bar: Any,
    device: str | None,
    circuit_only: bool = True,
) -> None:
    """One task's setup (unless saved) and its cells still to run."""
    import torch

    setup_file = directory / t / "setup.json"
    cells = [(c, s) for tt, c, s in todo if tt == t]
    if setup_file.is_file():
        setup = read_setup(setup_file, t)
        _check_models(setup, cfg, directory)
        if not cells:
            return
    teacher = load_model(cfg.models[t]["teacher"], device=device)
    student = load_model(cfg.models[t]["student"], device=device)  # untrained
    task = _task(t, cfg.task_seed, [teacher, student], cfg)  # one task for every cell
    formats = _formats(task, cfg, [teacher, student])
    if not setup_file.is_file():
        bar.set_description(f"reproduce: {t} circuit and sweeps")
        torch.manual_seed(cfg.task_seed)
        with heartbeat(bar):
            setup = _setup_task(
                task,
                cfg,
                teacher,
                student,
                False,
                formats,
                circuit_dir=directory / t / "circuit",
                sweeps_dir=directory / t,
            )
        atomic_write_text(setup_file, json_text(setup.to_dict()))
        # the cells read the setup as a resumed run does: from its file
        setup = read_setup(setup_file, t)
    if any(get_condition(c).heads == "random" for c, _ in cells):  # their partners: the method's
        setup = with_map_features(setup, teacher, student, task)
    # one student in memory, put back to its untrained weights before each cell (what a
    # fresh load gives, bit for bit, without loading it again); one teacher cache per task
    untrained = _weights(student)
    cache = TeacherCache(directory / t / "teacher-cache")
    # every pending condition of a seed reads the same batches: one teacher pass computes
    # what they all read (the random map's layers, kd's logits)
    expected: dict[int, tuple[set[int], bool]] = {}
    befores: dict[tuple[str, ...], Any] = {}  # the untrained student's CKA per map
    lrs = _task_lrs(t, cfg, directory, cells, task, setup, teacher, student, untrained, cache, bar)
    for c, s in cells:
        if s not in expected:
            pending = [cc for cc, ss in cells if ss == s]
            maps = [_cell_map(setup, cc, s, cfg) for cc in pending]
            logits = any(get_condition(cc).compares_logits for cc in pending)
            expected[s] = ({h.layer for m in maps for _, h in m.pairs}, logits)
        cache.expect(*expected[s])
        bar.set_description(f"reproduce: {t} {c} seed {s}")
        cell_dir = directory / t / c / f"seed{s}"
        _restore(student, untrained)
        torch.manual_seed(s)
        with heartbeat(bar):
            cell = _run_cell(
                cell_dir, task, c, s, cfg, setup, teacher, False, formats, student, cache,
                befores, lrs.get(c), circuit_only,
            )  # fmt: skip
        atomic_write_text(cell_dir / "cell.json", json_text(cell.to_dict()))
        shutil.rmtree(cell_dir / "checkpoint", ignore_errors=True)
        bar.update(1)
    shutil.rmtree(directory / t / "teacher-cache", ignore_errors=True)  # the task is done


def _task_lrs(
    t: str,
    cfg: ExperimentConfig,
    directory: Path,
    cells: list[tuple[str, int]],
    task: Task,
    setup: Setup,
    teacher: Model,
    student: Model,
    untrained: dict[str, Any],
    cache: TeacherCache,
    bar: Any,
) -> dict[str, float]:
    """The learning rate of each condition with ``cells`` to run (:func:`_choose_lrs`; none
    without ``lr_grid``). Each grid point trains the untrained student as that condition's cell
    of the choice's seed would, in ``<t>/lr-grid/<condition>/<lr>/`` (resumable); the chosen
    point's finished checkpoint becomes that seed's cell's, so the cell is not trained twice
    (it resumes at its end: the same weights, by the checkpoint's guarantee)."""
    import torch

    conditions = list(dict.fromkeys(c for c, _ in cells))
    grid_dir = directory / t / "lr-grid"

    def trial(c: str, lr: float, seed: int) -> tuple[float, int]:
        pending = {cc for cc, ss in cells if ss == seed} | set(conditions)
        maps = [_cell_map(setup, cc, seed, cfg) for cc in sorted(pending)]
        logits = any(get_condition(cc).compares_logits for cc in pending)
        cache.expect({h.layer for m in maps for _, h in m.pairs}, logits)
        bar.set_description(f"reproduce: {t} {c} seed {seed} lr {lr:g} (choosing the lr)")
        _restore(student, untrained)
        torch.manual_seed(seed)
        with heartbeat(bar):
            return _lr_trial(
                grid_dir / c / lr_key(lr), task, c, lr, seed, cfg, setup, teacher, student, cache
            )

    lrs = _choose_lrs(t, cfg, directory, conditions, trial)
    choices = read_choices(directory / t / LR_FILE)
    for c, lr in lrs.items():
        kept = grid_dir / c / lr_key(lr) / "checkpoint"
        cell_ckpt = directory / t / c / f"seed{choices[c].seed}" / "checkpoint"
        if (c, choices[c].seed) in cells and kept.is_dir() and not cell_ckpt.exists():
            cell_ckpt.parent.mkdir(parents=True, exist_ok=True)
            kept.rename(cell_ckpt)
    shutil.rmtree(grid_dir, ignore_errors=True)  # every choice is made and recorded
    return lrs
