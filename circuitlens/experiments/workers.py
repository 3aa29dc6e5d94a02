"""Worker processes of a run: the tasks in parallel on a few CPU cores, each worker dying
with its run and recorded in the run directory's lock."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from circuitlens.core.rundir import die_with_parent, record_workers
from circuitlens.experiments.config import ExperimentConfig


def auto_jobs(tasks: int, device: str | None = None) -> int:
    """Worker processes for ``jobs="auto"``: on the CPU one per task, at most one per torch
    thread (on 2 cores two 1-thread processes train 1.27x faster than one 2-thread process:
    much of a step is small operations and Python); on an accelerator 1."""
    import torch

    if device is not None and torch.device(device).type != "cpu":
        return 1
    return max(1, min(tasks, torch.get_num_threads()))


def run_parallel(
    run_task: Callable[..., None],
    cfg: ExperimentConfig,
    directory: Path,
    todo: list[tuple[str, str, int]],
    progress: bool,
    device: str | None,
    jobs: int,
) -> None:
    """The tasks of ``cfg`` with cells in ``todo`` in ``jobs`` worker processes, each running
    ``run_task`` (the runner's: one task's setup and cells) (the tasks are independent: their
    own models, setup, cells and teacher cache), the CPU threads shared out among them. On a
    few CPU cores this beats one process using them all: much of a step is small operations
    and Python that one thread runs as fast as two.

    The workers die with this process (:func:`~circuitlens.core.rundir.die_with_parent`: a
    ``kill -9`` of the run leaves none writing), are recorded in the directory's lock (a second
    run is refused while one lives), and are stopped when this process is interrupted (their
    cells resume from their checkpoints)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    import torch

    busy = [t for t in cfg.tasks if any(tt == t for tt, _, _ in todo)]
    jobs = min(jobs, len(busy))
    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    before = {p.pid for p in multiprocessing.active_children()}
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),)
    )
    workers: list[Any] = []
    try:
        futures = [
            pool.submit(
                _task_worker, run_task, t, cfg, str(directory), todo, progress, device, threads, i
            )
            for i, t in enumerate(busy)
        ]
        workers = [p for p in multiprocessing.active_children() if p.pid not in before]
        record_workers(directory, [p.pid for p in workers if p.pid is not None])
        for f in futures:
            f.result()  # a worker's exception is raised here
    except BaseException as e:
        if isinstance(e, Exception):  # one task failed: the others finish theirs
            pool.shutdown()
            raise
        for p in workers:  # Ctrl-C: no worker goes on writing
            p.kill()
        pool.shutdown(cancel_futures=True)  # the pool sees them gone: quick, and tidy
        raise
    pool.shutdown()


def _worker_init(parent: int) -> None:
    """A worker's start: it dies with ``parent`` (the run), and its progress bars lock with a
    thread lock (tqdm's default is a multiprocessing lock, which a spawned worker cannot share
    anyway and which a stopped worker leaves to the resource tracker as a "leaked semaphore")."""
    import threading

    from tqdm.auto import tqdm

    die_with_parent(parent)
    tqdm.set_lock(threading.RLock())


def _task_worker(
    run_task: Callable[..., None],
    t: str,
    cfg: ExperimentConfig,
    directory: str,
    todo: list[tuple[str, str, int]],
    progress: bool,
    device: str | None,
    threads: int,
    position: int,
) -> None:
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(threads)
    n = len([1 for tt, _, _ in todo if tt == t])
    bar = tqdm(total=n, desc=f"reproduce {t}", position=position, disable=not progress)
    run_task(t, cfg, Path(directory), todo, bar, device)
    bar.close()
