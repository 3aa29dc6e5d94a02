"""Output directories of runs: a marker that says "circuitlens made this", and a lock.

A run directory carries the marker file :data:`MARKER` from the moment a run first writes to
it. Only such a directory is ever deleted (``--fresh``): a directory that holds anything else
is the user's, and is refused with the reason. While a run writes to a directory it holds the
lock file :data:`LOCK` with its process id; a second run on the same directory is refused,
naming that process. A lock whose process is gone (a run that was killed) is stale and is
taken over. Every JSON file a run reads back from its directory goes through :func:`read_json`:
one that does not parse (a run killed mid-write by something other than circuitlens, a disk
that filled up, a hand edit) is a :class:`RunFileError` naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from circuitlens.core.io import atomic_write_text

MARKER = ".circuitlens-run"
LOCK = ".circuitlens-lock"


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
        RunDirectoryError: ``directory`` is a file, or a non-empty directory without the
            marker (it is not a circuitlens run: nothing in it is deleted or mixed in).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise RunDirectoryError(
            f"the output {str(directory)!r} is a file, not a directory: pass another --out"
        )
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
    shutil.rmtree(directory)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM  # exists, owned by someone else
    return True


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _live_owner(path: Path) -> int | None:
    info = _read_lock(path)
    if not info:
        return None
    pid = int(info.get("pid", -1))
    if info.get("host") not in (None, socket.gethostname()):
        return pid  # another machine's process: cannot check it, assume alive
    return pid if _pid_alive(pid) else None


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
