"""TrainConfig takes what the ecosystem passes: a ``torch.dtype`` wherever a precision's name
is accepted, kept as the name (so a config saves, compares and reads back as before)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from circuitlens import DistillConfig, TrainConfig
from circuitlens.core.devices import dtype_name


def test_a_torch_dtype_is_its_name() -> None:
    assert TrainConfig(dtype=torch.bfloat16) == TrainConfig(dtype="bfloat16")
    assert TrainConfig(dtype=torch.bfloat16).dtype == "bfloat16"
    assert TrainConfig(dtype=torch.float32) == TrainConfig()
    assert dataclasses.replace(TrainConfig(), dtype=torch.bfloat16).dtype == "bfloat16"
    assert dtype_name(torch.float16) == "float16" and dtype_name("bfloat16") == "bfloat16"


def test_a_torch_dtype_reaches_the_composed_configs_and_saves_as_text() -> None:
    cfg = DistillConfig().with_overrides(dtype=torch.bfloat16)
    assert cfg.train.dtype == "bfloat16"
    back = DistillConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg == DistillConfig().with_overrides(dtype="bfloat16")


def test_an_unsupported_torch_dtype_is_refused_by_its_name() -> None:
    with pytest.raises(ValueError, match="unknown dtype 'float16'; valid: float32, bfloat16"):
        TrainConfig(dtype=torch.float16)
