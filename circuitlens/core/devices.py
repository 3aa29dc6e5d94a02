"""Devices checked before any work: a device this machine or this torch build cannot use is
refused at once, by name, with what to pass or install instead.

Without the check, ``circuitlens reproduce --device cuda`` on a CPU build of torch ends minutes
in, in a traceback from inside torch (``Torch not compiled with CUDA enabled``). Every entry
point that takes a device (:func:`circuitlens.load_model`, ``run_experiment``, the CLI's
``reproduce`` and ``distill``) calls :func:`check_device` first; :class:`DeviceError` is a
``ValueError``, so the CLI prints it as one ``circuitlens: error: ...`` line.

>>> check_device("cpu")
device(type='cpu')
>>> check_device(None)  # the loaders' default
device(type='cpu')
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

#: the device strings accepted: ``meta`` holds no storage (shapes only, for tests and copies)
FORMS = "cpu, cuda, cuda:N (N a GPU index: cuda:0, cuda:1, ...), mps, or meta"

_FORM = re.compile(r"(cpu|mps|meta)(:0)?|cuda(:\d+)?")

#: ``device_map`` values that name no accelerator (``"disk"`` needs ``offload_folder``)
_UNCHECKED_MAP_VALUES = frozenset({"cpu", "disk", "meta", "auto"})

#: ``device_map`` strings that are accelerate's placement strategies, not devices
_STRATEGIES = frozenset({"auto", "balanced", "balanced_low_0", "sequential"})


class DeviceError(ValueError):
    """A device (or a dtype on it) that cannot be used here; the message says what to pass or
    install instead."""


def dtype_name(dtype: str | torch.dtype) -> str:
    """A precision as the configs write it: ``torch.bfloat16`` is ``"bfloat16"``, a string is
    itself (the config that takes it checks the name).

    >>> dtype_name(torch.bfloat16), dtype_name("float32")
    ('bfloat16', 'float32')
    """
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return dtype


def _pip_version() -> str:
    """The installed torch's version as pip names it (``2.6.0`` of ``2.6.0+cpu``)."""
    return torch.__version__.split("+")[0]


def _no_cuda(name: str) -> DeviceError:
    if torch.version.cuda is None:
        return DeviceError(
            f"device {name!r}: this torch build ({torch.__version__}) has no CUDA: it is a "
            "CPU-only build (torch.version.cuda is None). Pass --device cpu (device='cpu' in "
            "Python), or install a CUDA build of torch, e.g. "
            f"pip install torch=={_pip_version()} --index-url "
            "https://download.pytorch.org/whl/cu126"
        )
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    env = f"; CUDA_VISIBLE_DEVICES is {hidden!r}" if hidden is not None else ""
    return DeviceError(
        f"device {name!r}: this torch build ({torch.__version__}) is a CUDA {torch.version.cuda} "
        "build but sees no GPU (torch.cuda.is_available() is False: no GPU on this machine, "
        f"its NVIDIA driver missing or too old for CUDA {torch.version.cuda}, or hidden{env}). "
        "Pass --device cpu (device='cpu' in Python), or run where nvidia-smi lists a GPU"
    )


def _no_mps(name: str) -> DeviceError:
    why = (
        "this torch build has MPS but this machine cannot use it (it needs macOS 12.3+ on "
        "Apple silicon)"
        if torch.backends.mps.is_built()
        else "this torch build has no MPS support (MPS is the Apple-silicon GPU of torch's "
        "macOS builds)"
    )
    return DeviceError(
        f"device {name!r}: MPS is not available: {why}. Pass --device cpu (device='cpu' in "
        "Python), or --device cuda where there is an NVIDIA GPU"
    )


def _bad_index(name: str, index: int) -> DeviceError:
    n = torch.cuda.device_count()
    valid = (
        "the valid index is 0 (cuda:0, or cuda)"
        if n == 1
        else f"the valid indices are 0 to {n - 1} (cuda:0 ... cuda:{n - 1}, or cuda for the "
        "current one)"
    )
    return DeviceError(
        f"device {name!r}: there is no CUDA device {index}: this machine has {n} CUDA "
        f"device{'s' if n != 1 else ''}, so {valid}"
    )


def _parse(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        if device.type not in ("cpu", "cuda", "mps", "meta"):
            raise DeviceError(f"device {str(device)!r} is not supported here; use one of {FORMS}")
        return device
    if not isinstance(device, str) or _FORM.fullmatch(device) is None:
        raise DeviceError(f"{device!r} is not a device: pass one of {FORMS}")
    return torch.device(device)


def check_device(
    device: str | torch.device | None, dtype: torch.dtype | None = None
) -> torch.device:
    """The device ``device`` names, checked usable here (and ``dtype`` usable on it).

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"meta"``, a
            ``torch.device``, or None (the CPU, the loaders' default).
        dtype: the precision the weights will take there; only ``torch.bfloat16`` on a CUDA
            device is checked (it needs a GPU that supports it; on the CPU it runs).

    Returns:
        The ``torch.device``.

    Raises:
        DeviceError: a malformed device (``"gpu"``, ``"cuda:x"``: the message names the valid
            forms); CUDA asked of a torch build without it (a CPU-only build: install a CUDA
            build) or of one that sees no GPU; a CUDA index past the devices there are; MPS
            where it is not available; bfloat16 on a GPU without it (use float16 or float32).
    """
    if device is None:
        return torch.device("cpu")
    dev = _parse(device)
    name = str(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise _no_cuda(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise _bad_index(name, dev.index)
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise DeviceError(
                f"dtype torch.bfloat16 on device {name!r}: this GPU does not support bfloat16 "
                "(torch.cuda.is_bf16_supported() is False; it needs compute capability 8.0, "
                "Ampere, or newer): pass dtype=torch.float16 or dtype=torch.float32"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise _no_mps(name)
    return dev


class SlowPrecisionWarning(UserWarning):
    """bfloat16 asked of a CPU that has no bf16 matrix instructions: it runs, emulated, and
    slower than float32 (measured: ``benchmarks/results/precision.json``)."""


#: the CPU flags (``/proc/cpuinfo``) of native bf16 matrix arithmetic: AVX-512 BF16, AMX
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_native_bf16(info: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX-512 BF16 or AMX, read
    from ``info``, ``/proc/cpuinfo``; where there is none, oneDNN's own check): only then is
    bf16 faster than float32 on it. Without them torch emulates bf16 and a forward runs
    several times slower (6.4x on the AVX2 CPU of ``benchmarks/results/precision.json``)."""
    if info.is_file():
        flags = set(info.read_text(errors="replace").split())
        return any(f in flags for f in BF16_CPU_FLAGS)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warn_slow_precision(device: torch.device, dtype: torch.dtype | str | None) -> bool:
    """Warn (:class:`SlowPrecisionWarning`) when ``dtype`` is bfloat16 on a CPU without native
    bf16, where it is slower than float32, not faster; return whether it warned."""
    if str(dtype).removeprefix("torch.") != "bfloat16" or device.type != "cpu":
        return False
    if cpu_native_bf16():
        return False
    warnings.warn(
        "bfloat16 on this CPU runs emulated (no avx512_bf16 or amx_bf16 in /proc/cpuinfo): "
        "slower than float32, not faster (6.4x per forward on an AVX2 CPU, "
        "benchmarks/results/precision.json); use float32 here, bfloat16 on a CPU or GPU "
        "that has it",
        SlowPrecisionWarning,
        stacklevel=3,
    )
    return True


def check_device_map(
    device_map: str | dict[str, Any] | None, dtype: torch.dtype | None = None
) -> None:
    """Check every device a ``from_pretrained``-style ``device_map`` names (see
    :func:`check_device`): a dict's values (an int is that CUDA index; ``"cpu"``, ``"disk"``,
    ``"meta"`` and ``"auto"`` are not checked), or a string that is a device rather than one of
    accelerate's strategies (``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``).

    Raises:
        DeviceError: a device named that cannot be used here.
    """
    if device_map is None:
        return
    if isinstance(device_map, str):
        if device_map not in _STRATEGIES:
            check_device(device_map, dtype)
        return
    for module, value in device_map.items():
        if isinstance(value, str) and value in _UNCHECKED_MAP_VALUES:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            value = f"cuda:{value}"
        if not isinstance(value, str | torch.device):
            raise DeviceError(
                f"device_map[{module!r}]: {value!r} is not a device: pass one of {FORMS}, a CUDA "
                "index (0, 1, ...) or 'disk'"
            )
        try:
            check_device(value, dtype)
        except DeviceError as e:
            raise DeviceError(f"device_map[{module!r}]: {e}") from e
