"""Devices are checked before any work (``circuitlens.core.devices.check_device``): each device this
machine or torch build cannot use is refused by name, with the fix, and the entry points
(``load_model``, ``run_experiment``, the CLI's ``reproduce`` and ``distill``) refuse it before
anything loads. The machines are simulated by monkeypatching what torch reports, so every case
runs on a CPU build.
"""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

import circuitlens
import circuitlens.experiments
import circuitlens.models.registry as models
from circuitlens.cli import main
from circuitlens.core.devices import FORMS, DeviceError, check_device, check_device_map
from circuitlens.experiments import ExperimentConfig, run_experiment


def _machine(
    monkeypatch: pytest.MonkeyPatch,
    cuda: str | None = None,
    gpus: int = 0,
    bf16: bool = True,
    mps: bool = False,
) -> None:
    """Make torch report a machine: its build's CUDA version (None: a CPU build), the GPUs
    it sees, whether they do bfloat16, whether MPS is there."""
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def _no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model load (or reproduce run) fails the test: the check must come first."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded (or a run started) before the device check")

    monkeypatch.setattr(models, "_load", boom)
    monkeypatch.setattr(circuitlens, "load_model", boom)
    monkeypatch.setattr(circuitlens.experiments, "run_experiment", boom)


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", "CUDA", "", "cuda:0:1", "tpu"])
def test_malformed_device_names_the_valid_forms(bad: str) -> None:
    with pytest.raises(DeviceError, match="is not a device") as e:
        check_device(bad)
    assert FORMS in str(e.value) and repr(bad) in str(e.value)
    assert "cpu, cuda, cuda:N" in FORMS and "mps" in FORMS


def test_device_error_is_a_value_error() -> None:
    assert issubclass(DeviceError, ValueError)  # the CLI prints ValueErrors as one line


def test_cuda_on_a_cpu_build_says_install_a_cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cuda=None)
    with pytest.raises(DeviceError) as e:
        check_device("cuda")
    msg = str(e.value)
    assert "CPU-only build" in msg and "torch.version.cuda is None" in msg
    assert "--device cpu" in msg
    version = torch.__version__.split("+")[0]
    assert f"pip install torch=={version} --index-url" in msg
    assert "https://download.pytorch.org/whl/cu126" in msg
    with pytest.raises(DeviceError, match="CPU-only build"):
        check_device(torch.device("cuda", 1))


def test_cuda_build_without_a_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cuda="12.6", gpus=0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceError) as e:
        check_device("cuda:0")
    msg = str(e.value)
    assert "CUDA 12.6 build but sees no GPU" in msg and "CPU-only" not in msg
    assert "CUDA_VISIBLE_DEVICES is ''" in msg and "--device cpu" in msg


@pytest.mark.parametrize(("gpus", "valid"), [(2, "0 to 1 (cuda:0 ... cuda:1"), (1, "index is 0")])
def test_cuda_index_past_the_devices_names_the_valid_ones(
    monkeypatch: pytest.MonkeyPatch, gpus: int, valid: str
) -> None:
    _machine(monkeypatch, cuda="12.6", gpus=gpus)
    with pytest.raises(DeviceError) as e:
        check_device("cuda:3")
    msg = str(e.value)
    assert "no CUDA device 3" in msg and f"has {gpus} CUDA device" in msg and valid in msg
    assert check_device(f"cuda:{gpus - 1}") == torch.device("cuda", gpus - 1)
    assert check_device("cuda") == torch.device("cuda")


def test_mps_not_available_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, mps=False)
    with pytest.raises(DeviceError) as e:
        check_device("mps")
    assert "MPS is not available" in str(e.value) and "--device cpu" in str(e.value)
    _machine(monkeypatch, mps=True)
    assert check_device("mps") == torch.device("mps")


def test_bf16_on_a_gpu_without_it_suggests_float16_or_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _machine(monkeypatch, cuda="12.6", gpus=1, bf16=False)
    with pytest.raises(DeviceError) as e:
        check_device("cuda", torch.bfloat16)
    msg = str(e.value)
    assert "does not support bfloat16" in msg
    assert "torch.float16" in msg and "torch.float32" in msg
    assert check_device("cuda", torch.float16) == torch.device("cuda")
    assert check_device("cpu", torch.bfloat16) == torch.device("cpu")  # bf16 runs on the CPU
    _machine(monkeypatch, cuda="12.6", gpus=1, bf16=True)
    assert check_device("cuda:0", torch.bfloat16) == torch.device("cuda", 0)


def test_valid_devices_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cuda=None)  # a CPU build: what must still pass
    assert check_device(None) == torch.device("cpu")
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")
    assert check_device("cpu", torch.bfloat16) == torch.device("cpu")
    assert check_device(None, torch.bfloat16) == torch.device("cpu")
    assert check_device("meta") == torch.device("meta")


def test_device_map_values_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cuda="12.6", gpus=1)
    check_device_map({"a": "cpu", "b": "disk", "c": "meta", "d": "auto", "e": 0, "f": "cuda:0"})
    check_device_map("auto")
    check_device_map("balanced_low_0")
    check_device_map(None)
    with pytest.raises(DeviceError, match=r"device_map\['lm_head'\]: .*no CUDA device 1"):
        check_device_map({"model": "cuda:0", "lm_head": 1})
    with pytest.raises(DeviceError, match="'gpu' is not a device"):
        check_device_map({"model": "gpu"})
    with pytest.raises(DeviceError, match="no CUDA device 2"):
        check_device_map("cuda:2")


def test_load_model_refuses_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cuda=None)
    _no_load(monkeypatch)
    with pytest.raises(DeviceError, match="CPU-only build"):
        models.load_model("zoo:entity-tracking-student", device="cuda")
    with pytest.raises(DeviceError, match=r"device_map\['model.layers.0'\]"):
        models.load_model("data/zoo/entity-tracking-teacher", device_map={"model.layers.0": 0})
    with pytest.raises(DeviceError, match="is not a device"):
        models.load_model("zoo:entity-tracking-student", device="gpu")


def test_load_model_passes_devices_on_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check only validates: None still reaches the loader as None (the source's own
    default), an explicit device as given."""
    _machine(monkeypatch, cuda=None)
    seen: list[tuple[Any, Any]] = []

    def record(spec: Any, tokenizer: Any, device: Any, dtype: Any, device_map: Any, *a: Any) -> Any:
        seen.append((device, device_map))
        return types.SimpleNamespace()

    monkeypatch.setattr(models, "_load", record)
    models.load_model("zoo:x")
    models.load_model("zoo:x", device="cpu", dtype=torch.bfloat16)
    models.load_model("zoo:x", device_map={"a": "cpu", "b": "disk"})
    assert seen == [(None, None), ("cpu", None), (None, {"a": "cpu", "b": "disk"})]


def test_run_experiment_refuses_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    _machine(monkeypatch, cuda=None)
    _no_load(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(DeviceError, match="CPU-only build"):
        run_experiment(ExperimentConfig.quick(), out, progress=False, device="cuda")
    assert not out.exists()  # no run directory made either


def test_cli_reproduce_on_a_cpu_build_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys
) -> None:
    _machine(monkeypatch, cuda=None)
    _no_load(monkeypatch)
    out = tmp_path / "o"
    assert main(["reproduce", "--device", "cuda", "--out", str(out), "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("circuitlens: error: device 'cuda'")
    assert "CPU-only build" in err[0] and "--device cpu" in err[0]
    assert not out.exists()


def test_cli_distill_past_the_gpus_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys
) -> None:
    _machine(monkeypatch, cuda="12.6", gpus=2)
    _no_load(monkeypatch)
    out = tmp_path / "o"
    assert main(["distill", "--device", "cuda:3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("circuitlens: error: device 'cuda:3'")
    assert "has 2 CUDA devices" in err[0] and "cuda:0 ... cuda:1" in err[0]
    assert not out.exists()


def test_bf16_on_a_cpu_without_it_warns_that_it_is_slower(monkeypatch):
    """bf16 on a CPU without native bf16 (no avx512_bf16 / amx_bf16) runs emulated and slower:
    a SlowPrecisionWarning says so and names the fix; with native bf16, on another device or
    in float32 there is no warning."""
    import warnings

    from circuitlens.core import devices

    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_native_bf16", lambda: False)
    with pytest.warns(devices.SlowPrecisionWarning, match="use float32 here"):
        assert devices.warn_slow_precision(cpu, torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not devices.warn_slow_precision(cpu, "float32")
        assert not devices.warn_slow_precision(torch.device("meta"), "bfloat16")
        monkeypatch.setattr(devices, "cpu_native_bf16", lambda: True)
        assert not devices.warn_slow_precision(cpu, "bfloat16")


def test_native_bf16_follows_the_cpu_flags(tmp_path):
    """``cpu_native_bf16`` is True exactly when the cpuinfo text lists a bf16 matrix flag
    (hand-written files, so every platform runs it); without the file it asks oneDNN."""
    from circuitlens.core import devices

    info = tmp_path / "cpuinfo"  # one file per case: the answer is cached per path
    info.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f\n")
    assert devices.cpu_native_bf16(info) is False
    for flag in devices.BF16_CPU_FLAGS:
        info = tmp_path / f"cpuinfo-{flag}"
        info.write_text(f"processor : 0\nflags : fpu avx2 {flag}\n")
        assert devices.cpu_native_bf16(info) is True
    assert isinstance(devices.cpu_native_bf16(tmp_path / "absent"), bool)
