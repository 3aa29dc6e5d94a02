"""Atomic writes: fsync-ed, through a unique temporary file, never half a file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from circuitlens.core import io


def test_text_is_written_synced_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(io.os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    path = tmp_path / "sub" / "a.json"
    io.atomic_write_text(path, "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    assert len(synced) >= 1  # the file (and its directory)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]
    mode = path.stat().st_mode & 0o777
    assert mode == 0o666 & ~io._umask()  # as open() would make it (mkstemp makes 0600)


def test_concurrent_writers_use_their_own_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "shared.txt"
    texts = [str(i) * 20_000 for i in range(8)]
    errors: list[BaseException] = []

    def write(t: str) -> None:
        try:
            for _ in range(5):
                io.atomic_write_text(path, t)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert path.read_text() in texts  # one whole text, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["shared.txt"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    io.atomic_torch_save({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):  # noqa: ANN204
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        io.atomic_torch_save({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_an_os_failure_names_the_target_not_the_temporary(tmp_path: Path, monkeypatch) -> None:
    """A full disk mid-write: the error is the OS's (errno, kind), naming the file written,
    and nothing half-written is left behind."""

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    path = tmp_path / "checkpoints" / "trainer.pt"
    with pytest.raises(OSError) as e:
        io.atomic_torch_save({"step": 3}, path)
    assert e.value.errno == 28 and e.value.filename == str(path)
    assert sorted(p.name for p in path.parent.iterdir()) == []
    line = io.os_error_line(e.value)
    assert line == (
        f"writing {path} failed: No space left on device. Free some space (or pass another "
        "--out) and run the same command again: what was finished is kept"
    )
    monkeypatch.undo()

    def denied(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / ".a.json.x1y2.tmp"))

    monkeypatch.setattr(io.tempfile, "mkstemp", denied)
    with pytest.raises(PermissionError) as e:  # still a PermissionError, named by its target
        io.atomic_write_text(tmp_path / "a.json", "{}")
    assert e.value.filename == str(tmp_path / "a.json") and ".tmp" not in str(e.value)
    assert "Make it writable" in io.os_error_line(e.value)
