"""Output directories of runs: a marker that says "circuitlens made this", and a lock.

A run directory carries the marker file :data:`MARKER` from the moment a run first writes to
it. Only such a directory is ever emptied (``--fresh``), and only of what runs write there
(:data:`RUN_ENTRIES`, the task directories its ``config.json`` names, sub-runs carrying the
marker): a file of the user's in it (notes, a plot) makes ``--fresh`` refuse, naming it, and
nothing is deleted. A directory without the marker that holds anything is the user's, and is
refused with the reason. The output must be a directory this process can write to, checked
before any work (:func:`check_writable_directory`).

While a run writes to a directory it holds the lock file :data:`LOCK` with its process id and
those of its worker processes (:func:`record_workers`); a second run on the same directory is
refused, naming the process. A lock whose processes are all gone (a run that was killed) is
stale and is taken over. Workers started with :func:`die_with_parent` exit when their parent
does (a killed run leaves none behind writing into the directory). Every JSON file a run reads
back from its directory goes through :func:`read_json`: one that does not parse (a run killed
mid-write by something other than circuitlens, a disk that filled up, a hand edit) is a
:class:`RunFileError` naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from circuitlens.core.io import atomic_write_text

MARKER = ".circuitlens-run"
LOCK = ".circuitlens-lock"
#: what runs write at the top of their directory (``fnmatch`` patterns), beside the task
#: directories that ``config.json`` names and sub-runs that carry the marker: all that
#: ``--fresh`` deletes (a command that writes another name adds it here)
RUN_ENTRIES = (
    MARKER, LOCK, "config.json", "table.md", "table.csv", "cells.csv", "comparisons.csv",
    "mcnemar.csv", "cka.csv", "report.html", "plotly.min.js", "sweep.md", "sweep.html",
    "checkpoints", "result", "result.partial", "result.old",  # distill
    ".*.tmp", ".result.*", ".circuitlens-probe.*",  # temporary files of atomic writes
)  # fmt: skip


class RunDirectoryError(ValueError):
    """An output directory that circuitlens will not write to or delete; the message says why
    and what to do."""


class RunLockedError(RunDirectoryError):
    """Another live run is writing to the same output directory."""


class RunFileError(RunDirectoryError):
    """A file of a run directory that does not read back (not JSON, or not what it should
    hold); the message names the file, what is wrong with it and the fix."""

    def __init__(self, path: Path, what: str, problem: str) -> None:
        self.path = path
        super().__init__(
            f"{what} {str(path)!r} is damaged ({problem}): delete it to recompute that step "
            "(the rest of the run is kept), or rerun with --fresh to start over"
        )


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """Read a JSON object that a run wrote into its directory.

    Args:
        path: the file (``config.json``, ``setup.json``, ``cell.json``, ...).
        what: what the file is, for the message (``"the run's config"``).

    Returns:
        The object.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RunFileError: it is not UTF-8 JSON, or not a JSON object (half written, damaged).
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise RunFileError(path, what, f"not UTF-8 text: {e}") from e
    except json.JSONDecodeError as e:
        raise RunFileError(path, what, f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise RunFileError(path, what, f"not a JSON object: it holds a {type(value).__name__}")
    return value


def is_run_directory(directory: str | Path) -> bool:
    """Whether ``directory`` carries the run marker (circuitlens made it)."""
    return (Path(directory) / MARKER).is_file()


def _foreign_entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in (MARKER, LOCK))


def _run_tasks(directory: Path) -> set[str]:
    """The task names a run's ``config.json`` lists (its task directories)."""
    try:
        tasks = json.loads((directory / "config.json").read_text(encoding="utf-8"))["tasks"]
        return {t for t in tasks if isinstance(t, str)}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _not_the_runs(directory: Path) -> list[str]:
    """The entries of a marked run directory that no run wrote (:data:`RUN_ENTRIES`)."""
    tasks = _run_tasks(directory)
    return sorted(
        p.name
        for p in directory.iterdir()
        if not any(fnmatch.fnmatchcase(p.name, pat) for pat in RUN_ENTRIES)
        and not (p.is_dir() and (p.name in tasks or is_run_directory(p)))
    )


def check_writable_directory(directory: str | Path, what: str = "--out") -> None:
    """Check that ``directory`` is (or can be made) a directory this process writes into.

    Raises:
        RunDirectoryError: a part of the path is a file, or the directory (or its nearest
            existing parent) is not writable: one line naming it and the fix.
    """
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        if probe.is_symlink():  # a dangling link: mkdir would fail on it
            break
        probe = probe.parent
    if not probe.is_dir():
        which = "is" if probe == directory else f"is under {str(probe)!r}, which is"
        raise RunDirectoryError(
            f"{what} {str(directory)!r} {which} a file, not a directory: pass another {what}"
        )
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".circuitlens-probe.")
    except OSError as e:
        raise RunDirectoryError(
            f"{what} {str(directory)!r}: cannot write into {str(probe)!r} ({e.strerror or e}): "
            f"make it writable or pass another {what}"
        ) from None
    os.close(fd)
    os.unlink(tmp)


def prepare_run_directory(
    directory: str | Path,
    fresh: bool = False,
    kind: str = "run",
    adopt: Callable[[Path], bool] | None = None,
) -> Path:
    """Make ``directory`` ready for a run: create it with the marker, or check that it is one.

    Args:
        directory: the output directory.
        fresh: delete it first; allowed only for a directory carrying the marker.
        kind: a word for messages and the marker (``"reproduce"``, ``"distill"``).
        adopt: says whether an unmarked directory is a run made before markers existed, to be
            resumed (it gets the marker; it is still never deleted unmarked).

    Raises:
        RunDirectoryError: ``directory`` is a file or not writable, a non-empty directory
            without the marker (it is not a circuitlens run: nothing in it is deleted or mixed
            in), or (``fresh``) a run directory holding files no run wrote (nothing deleted).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RunDirectoryError(
            f"the output {str(directory)!r} is a file, not a directory: pass another --out"
        )
    check_writable_directory(directory)
    if directory.is_dir():
        foreign = _foreign_entries(directory)
        marked = is_run_directory(directory)
        resumable = not fresh and adopt is not None and bool(foreign) and adopt(directory)
        if foreign and not marked and not resumable:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            action = "delete" if fresh else "write into"
            raise RunDirectoryError(
                f"refusing to {action} {str(directory)!r}: it holds files ({shown}) but no "
                f"{MARKER} marker, so circuitlens did not make it and they may be yours. Pass "
                "an output directory that is new or empty, or remove this one yourself if "
                "nothing in it is needed."
            )
        if fresh and marked:
            _remove_run_directory(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not is_run_directory(directory):
        info = {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(directory / MARKER, json.dumps(info) + "\n")
    return directory


def _remove_run_directory(directory: Path) -> None:
    # a live run's lock survives --fresh: the other run would lose its files under it
    owner = _live_owner(directory / LOCK)
    if owner is not None and owner != os.getpid():
        raise RunLockedError(_locked_message(directory, owner))
    foreign = _not_the_runs(directory)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        shown = ", ".join(foreign[:5]) + more
        raise RunDirectoryError(
            f"refusing to --fresh {str(directory)!r}: besides a run's files it holds {shown}, "
            "which no circuitlens run writes, so they may be yours; nothing was deleted. Move "
            "them out of it (or delete them yourself) and run the same command again."
        )
    shutil.rmtree(directory)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM  # exists, owned by someone else
    try:  # a zombie (dead, not yet reaped by whoever adopted it) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _live_owner(path: Path) -> int | None:
    """The lock's live process: its run, or else a worker of it still writing; None: stale."""
    info = _read_lock(path)
    if not info:
        return None
    pid = int(info.get("pid", -1))
    if info.get("host") not in (None, socket.gethostname()):
        return pid  # another machine's process: cannot check it, assume alive
    for p in [pid, *info.get("workers", [])]:
        if _pid_alive(int(p)):
            return int(p)
    return None


def record_workers(directory: str | Path, pids: list[int]) -> None:
    """Add worker processes to the lock this process holds on ``directory``: the lock stays
    live while any of them does (a killed run's workers are never joined by a second run)."""
    path = Path(directory) / LOCK
    info = _read_lock(path)
    if info is None or info.get("pid") != os.getpid():
        return  # not ours (a run_lock-less caller): nothing to record
    info["workers"] = sorted(set(info.get("workers", [])) | set(pids))
    atomic_write_text(path, json.dumps(info))


def die_with_parent(parent: int, interval: float = 0.25) -> None:
    """Make this (worker) process exit as soon as process ``parent`` is gone.

    Meant as a process pool's ``initializer`` with the parent's ``os.getpid()``: on Linux the
    kernel kills the worker with its parent (``PR_SET_PDEATHSIG``); everywhere, a daemon
    thread checks every ``interval`` seconds that the worker's parent is still ``parent``
    (an orphan is adopted by another process) and ends the worker with ``os._exit``. A
    ``kill -9`` of a run thus leaves no worker writing into its directory. Ctrl-C is left to
    the parent (which stops the workers): a worker ignores SIGINT.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # best effort: the thread below covers the rest
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # gone before the above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _locked_message(directory: Path, pid: int) -> str:
    return (
        f"{str(directory)!r} is in use by another circuitlens run (process {pid}, lock file "
        f"{directory / LOCK}). Wait for it to finish or stop it, or pass another output "
        "directory. If that process is gone, delete the lock file."
    )


@contextlib.contextmanager
def run_lock(directory: str | Path) -> Iterator[Path]:
    """Hold the directory's lock file (this process's id in it) for the ``with``.

    Raises:
        RunLockedError: another live process holds it. A lock left by a dead process is
            taken over.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _live_owner(path)
            if owner is not None and owner != os.getpid():
                raise RunLockedError(_locked_message(directory, owner)) from None
            # stale (its process is gone) or our own: take it over; re-create exclusively so
            # that of two runs taking over at once only one wins
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        break
    else:
        raise RunLockedError(f"could not take the lock {path}; another run keeps taking it")
    try:
        yield directory
    finally:
        info = _read_lock(path)
        if info is not None and info.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@contextlib.contextmanager
def run_directory(
    directory: str | Path,
    fresh: bool = False,
    kind: str = "run",
    adopt: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """:func:`prepare_run_directory` then :func:`run_lock`, checked before any work: the lock
    is taken first (a second run is refused even before ``fresh`` deletes anything)."""
    directory = Path(directory)
    if directory.is_dir():
        owner = _live_owner(directory / LOCK)
        if owner is not None and owner != os.getpid():
            raise RunLockedError(_locked_message(directory, owner))
    prepare_run_directory(directory, fresh=fresh, kind=kind, adopt=adopt)
    with run_lock(directory) as d:
        yield d
