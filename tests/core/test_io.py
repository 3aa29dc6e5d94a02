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
