"""``load_model("zoo:<name>")``: the zoo registers itself as a model source when imported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from circuitlens.core.io import sha256_file
from circuitlens.models.registry import attach_card, load_dir, register_source
from circuitlens.models.zoo.spec import ZOO, zoo_path


def zoo_card(name: str, path: Path) -> dict[str, Any]:
    """The card of the zoo model in ``path``, with the prompt format of every zoo task."""
    card = json.loads((path / "card.json").read_text())
    # the zoo shares one tokenizer and one prompt format for every task it knows
    card["task_options"] = {spec.task: dict(spec.task_options) for spec in ZOO.values()}
    card.setdefault("source", f"zoo:{name}")
    return card


def load_zoo(name: str, device: str | None = None, dtype: torch.dtype = torch.float32) -> Any:
    """A zoo model (its weights checked against its card) as a bridge carrying its card."""
    path = zoo_path(name)
    return attach_card(load_dir(path, device, dtype), zoo_card(name, path))


register_source(
    "zoo",
    load_zoo,
    lambda: list(ZOO),
    listing="circuitlens zoo list",
    fingerprint=lambda name: "sha256:" + sha256_file(zoo_path(name) / "model.safetensors"),
)
