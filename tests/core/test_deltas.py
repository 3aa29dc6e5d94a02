"""Weight deltas: the trained entries saved small and put back bit for bit."""

from __future__ import annotations

import pytest
import torch

from circuitlens import load_model
from circuitlens.core.deltas import (
    DeltaError,
    apply_delta,
    delta_bytes,
    frozen_hash,
    hf_name,
    load_delta,
    model_delta,
    named_parameters,
    save_delta,
)
from circuitlens.distill.masks import head_parameter_masks


class Tiny(torch.nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(4, 3, generator=g))
        self.v = torch.nn.Parameter(torch.randn(5, generator=g))
        self.tied = self.w  # a second name for the same tensor, as tied embeddings are
        self.register_buffer("buf", torch.arange(3.0))


def test_product_and_general_masks_round_trip(tmp_path) -> None:
    model = Tiny(0)
    rows = torch.zeros(4, 3, dtype=torch.bool)
    rows[1:3] = True  # a product: rows 1-2, every column
    odd = torch.tensor([True, False, True, False, False])  # 1-D: a product too
    general = torch.eye(4, 3, dtype=torch.bool)  # a diagonal: not a product of index sets
    for mask_w in (rows, general):
        delta = model_delta(model, {"w": mask_w, "v": odd})
        # values in mask order (row-major), as p[mask] gives them
        torch.testing.assert_close(delta.entries["w"][1], model.w.detach()[mask_w])
        save_delta(tmp_path / "d.safetensors", delta)
        back = load_delta(tmp_path / "d.safetensors")
        other = Tiny(0)
        with torch.no_grad():
            other.w[mask_w] = 0.0
            other.v[odd] = 7.0
        apply_delta(other, back)
        assert torch.equal(other.w, model.w) and torch.equal(other.v, model.v)
        assert back.n_values == int(mask_w.sum() + odd.sum())


def test_product_masks_are_stored_as_blocks() -> None:
    from safetensors.torch import load

    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[:, 1] = True
    stored = load(delta_bytes(model_delta(Tiny(0), {"w": mask})))
    assert sorted(stored) == ["w::block", "w::i0", "w::i1", "w::shape"]
    assert stored["w::block"].shape == (4, 1) and stored["w::i1"].tolist() == [1]
    diag = load(delta_bytes(model_delta(Tiny(0), {"w": torch.eye(4, 3, dtype=torch.bool)})))
    assert sorted(diag) == ["w::mask", "w::values"]


def test_frozen_hash_ignores_trained_entries_only() -> None:
    a, b = Tiny(0), Tiny(0)
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[0] = True
    with torch.no_grad():
        b.w[0] += 1.0  # a trained entry: same hash
    assert frozen_hash(a, {"w": mask}) == frozen_hash(b, {"w": mask})
    with torch.no_grad():
        b.w[1, 0] += 1.0  # a frozen entry: another hash
    assert frozen_hash(a, {"w": mask}) != frozen_hash(b, {"w": mask})
    with torch.no_grad():
        b.w[1, 0] -= 1.0
        b.buf[0] = 9.0  # buffers count
    assert frozen_hash(a, {"w": mask}) != frozen_hash(b, {"w": mask})


def test_a_delta_refuses_another_base() -> None:
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[0] = True
    delta = model_delta(Tiny(0), {"w": mask}, {"base_spec": "tiny:0"})
    with pytest.raises(DeltaError, match="tiny:0"):
        apply_delta(Tiny(1), delta)
    with pytest.raises(DeltaError, match="lacks"):
        apply_delta(torch.nn.Linear(2, 2), delta)
    with pytest.raises(DeltaError, match="lacks"):
        model_delta(Tiny(0), {"nope": mask})


def test_bridge_head_delta_on_tied_embeddings(make_llama_dir, tmp_path) -> None:
    trained = load_model(make_llama_dir(seed=3, tie=True))
    sd = trained.state_dict()
    assert sd["embed.weight"].data_ptr() == sd["unembed.weight"].data_ptr()
    masks = head_parameter_masks(trained, ["L0H1", "L1H3"])
    with torch.no_grad():
        for n, p in trained.named_parameters():
            if n in masks:
                p[masks[n]] += 0.5
    save_delta(tmp_path / "d.safetensors", model_delta(trained, masks))
    fresh = load_model(make_llama_dir(seed=3, tie=True))
    apply_delta(fresh, load_delta(tmp_path / "d.safetensors"))
    for (n, p), (_, q) in zip(fresh.named_parameters(), trained.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    names = set(named_parameters(fresh))
    assert "model.layers.0.self_attn.q_proj.weight" in names  # Hugging Face names
    assert all(hf_name(n) in names for n in masks)
    # the trained entries (2 heads of 8; q, k, v, o slices), not the model
    from safetensors.torch import load_file

    stored = load_file(tmp_path / "d.safetensors")
    n_trained = sum(int(m.sum()) for m in masks.values())
    assert sum(t.numel() for k, t in stored.items() if k.endswith("::block")) == n_trained
    total = sum(p.numel() for p in fresh.parameters())
    assert (tmp_path / "d.safetensors").stat().st_size < 0.2 * 4 * total


def _legacy_bytes(delta, edit=None) -> bytes:
    """A delta as written before checksums (``edit`` changes its tensors first)."""
    from safetensors.torch import load, save

    from circuitlens.core.deltas import CHECKSUMS

    raw = delta_bytes(delta)
    tensors = load(raw)
    meta = dict(delta.meta) | {"names": '["w"]'}
    meta.pop(CHECKSUMS, None)
    if edit:
        edit(tensors)
    return save(tensors, metadata=meta)


def test_a_damaged_delta_is_a_named_error_never_another_model(tmp_path, caplog, flip) -> None:
    from circuitlens.core.deltas import DeltaIntegrityError

    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[1:3] = True
    delta = model_delta(Tiny(0), {"w": mask})
    f = tmp_path / "d.safetensors"
    for tensor in ("w::block", "w::i0"):
        save_delta(f, delta)
        flip(f, tensor, n=4)
        with pytest.raises(DeltaIntegrityError, match=rf"d\.safetensors is damaged.*{tensor}"):
            load_delta(f)
    # written before checksums: still loads (a note logged), its indices checked all the same
    f.write_bytes(_legacy_bytes(delta))
    with caplog.at_level("INFO", logger="circuitlens.core.deltas"):
        back = load_delta(f)
    assert "before deltas carried checksums" in caplog.text
    assert torch.equal(back.entries["w"][0], mask)
    assert torch.equal(back.entries["w"][1], delta.entries["w"][1])

    def out_of_range(t: dict) -> None:
        t["w::i0"][0] = -4294967292  # the flipped index

    f.write_bytes(_legacy_bytes(delta, out_of_range))
    with pytest.raises(DeltaIntegrityError, match=r"index 0 holds -4294967292\.\.2, out of 0\.\.3"):
        load_delta(f)

    def unsorted(t: dict) -> None:
        t["w::i0"][:] = torch.tensor([2, 1])

    f.write_bytes(_legacy_bytes(delta, unsorted))
    with pytest.raises(DeltaIntegrityError, match="not strictly increasing"):
        load_delta(f)


def test_every_tensor_and_the_metadata_carry_a_checksum(tmp_path) -> None:
    import json

    from safetensors import safe_open
    from safetensors.torch import load

    from circuitlens.core.deltas import CHECKSUMS, tensor_sha256

    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[0] = True
    raw = delta_bytes(model_delta(Tiny(0), {"w": mask, "v": torch.ones(5, dtype=torch.bool)}))
    tensors = load(raw)
    path = tmp_path / "d.safetensors"
    path.write_bytes(raw)
    with safe_open(str(path), framework="pt") as f:
        sums = json.loads(f.metadata()[CHECKSUMS])
    assert set(sums) == set(tensors) | {"__metadata__"}
    assert all(sums[k] == tensor_sha256(t) for k, t in tensors.items())
    # the checksum sees dtype and shape too, not the bytes only
    assert tensor_sha256(torch.zeros(2, 3)) != tensor_sha256(torch.zeros(3, 2))
    assert tensor_sha256(torch.zeros(2, dtype=torch.int32)) != tensor_sha256(torch.zeros(1))
