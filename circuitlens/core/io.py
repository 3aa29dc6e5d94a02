"""Atomic writes: a reader (or a resumed run) never sees half a file.

Each write goes to a temporary file with a unique name in the target's directory (two writers
of the same path never share one), is flushed and ``fsync``-ed (so a crash after the rename
cannot leave an empty file behind it), then renamed over the target with ``os.replace``. An
``OSError`` on the way (a full disk, a read-only directory) names the target, not the
temporary file, and :func:`os_error_line` says it in one line with the fix.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def json_ready(obj: Any) -> Any:
    """``obj`` (dicts, lists, tuples, scalars) with every non-finite float replaced by None,
    tuples as lists: what strict JSON (no ``NaN`` token) holds, so that a record's
    ``to_dict`` equals the dict read back from its file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    """``obj`` as strict JSON text (a non-finite float as null, :func:`json_ready`), indented by
    one space: how run directories write their records (``config.json``, ``setup.json``,
    ``cell.json``)."""
    return json.dumps(json_ready(obj), indent=1)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    # the rename itself is durable only once the directory entry is on disk (POSIX)
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _writing(path: Path, e: OSError) -> OSError:
    """``e`` (its errno, its kind: ``PermissionError``, ...) naming ``path``, tagged as a write."""
    if e.errno is None:
        return e
    out = OSError(e.errno, e.strerror, str(path))
    out.circuitlens_action = "writing"  # type: ignore[attr-defined]
    return out


@contextlib.contextmanager
def _atomic(path: Path, mode: str) -> Iterator[IO[Any]]:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _writing(path, e) from e
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result file is as readable
        # as one written with open()
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _writing(path, e) from e
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a unique temporary file and an atomic rename."""
    with _atomic(Path(path), "w") as f:
        f.write(text)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a unique temporary file and an atomic rename."""
    with _atomic(Path(path), "wb") as f:
        f.write(data)


def atomic_write_with(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a unique temporary binary file, then rename it onto ``path``."""
    with _atomic(Path(path), "wb") as f:
        write(f)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a unique temporary file and an atomic rename."""
    import torch

    atomic_write_with(Path(path), lambda f: torch.save(obj, f))


#: what to do about an OS failure, by errno
_FIXES = {
    errno.ENOSPC: "Free some space (or pass another --out) and run the same command again: "
    "what was finished is kept",
    errno.EACCES: "Make it writable, or pass another --out",
    errno.EPERM: "Make it writable, or pass another --out",
    errno.EROFS: "The file system is read-only: pass another --out",
    errno.ENOTDIR: "A part of the path is a file, not a directory: pass another --out",
    errno.EISDIR: "A directory is in the way: move it, or pass another --out",
    errno.ENOENT: "Check the path (a directory removed while the run was writing?)",
}
if hasattr(errno, "EDQUOT"):
    _FIXES[errno.EDQUOT] = _FIXES[errno.ENOSPC]


def os_error_line(e: OSError) -> str:
    """One line for an OS failure: what failed, on which path, why, and the fix
    (``writing results/x/metrics.json failed: No space left on device. Free some space ...``)."""
    action = getattr(e, "circuitlens_action", None) or "accessing"
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    what = f"{action} {paths} failed" if paths else f"{action} a file failed"
    fix = _FIXES.get(e.errno or -1, "Check the disk and the path, then run the same command again")
    return f"{what}: {e.strerror or e}. {fix}"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
