"""What a benchmark's timings ran on: one machine description for the benchmarks to share.

A timing means little without the machine, the software and the commit that produced it;
:func:`machine` records them in one dictionary, written beside the timings (``gpu_scale.py``
puts it at the top of its JSON). Siblings import it as ``from bench_machine import machine``.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

#: the repository, whose commit a result records
ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None where it is not installed."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def git(*cmd: str) -> str | None:
    """``git CMD`` in the repository: its stripped output, or None where git fails or is
    missing."""
    try:
        out = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``, else "cpu"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def machine(
    device: str, commit: str | None = None, args: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The machine a run on ``device`` times: the date, the commit (``commit``, else ``git
    rev-parse HEAD``) and whether tracked files differ from it, the run's ``args`` (when given),
    the platform, Python, the CPU count, the versions of torch, CUDA, transformers and
    TransformerLens, and the device's name: the CPU's, or on CUDA the GPU's with its memory
    (``gpu_memory_gb`` in GiB, ``gpu_memory_bytes``; ``gpu_memory_gb`` is None on the CPU)."""
    import torch

    facts: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": commit or git("rev-parse", "HEAD"),
        "worktree_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }
    if args is not None:
        facts["args"] = args
    facts |= {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": package_version("transformers"),
        "transformer_lens": package_version("transformer-lens"),
        "device_name": cpu_name(),
        "gpu_memory_gb": None,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        facts["device_name"] = props.name
        facts["gpu_memory_gb"] = round(props.total_memory / GIB, 3)
        facts["gpu_memory_bytes"] = props.total_memory
    return facts
