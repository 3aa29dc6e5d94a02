from __future__ import annotations

import time

import pytest
import torch

import circuitlens.models.registry as models
from circuitlens import ModelLoadError, get_task, load_model, model_facts
from circuitlens.models.zoo import ZooError


def test_local_dir_gives_bridge_with_facts(make_llama_dir) -> None:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = load_model(make_llama_dir(n_layers=3, n_heads=4, n_kv_heads=2, d_model=32))
    assert isinstance(bridge, TransformerBridge)
    facts = model_facts(bridge)
    assert (facts.n_layers, facts.n_heads, facts.n_kv_heads, facts.d_head, facts.d_model) == (
        3,
        4,
        2,
        8,
        32,
    )
    assert facts.group_size == 2 and facts.n_total_heads == 12
    assert bridge.W_Q.shape == (3, 4, 32, 8) and bridge.W_K.shape == (3, 2, 32, 8)


def test_bridge_logits_equal_hugging_face(make_llama_dir) -> None:
    from transformers import AutoModelForCausalLM

    path = make_llama_dir()
    hf = AutoModelForCausalLM.from_pretrained(path)
    bridge = load_model(path)
    tokens = get_task("entity_tracking", n_boxes=4, n_test=8).batch(bridge, "test").tokens
    with torch.no_grad():
        torch.testing.assert_close(bridge(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
    _, cache = bridge.run_with_cache(tokens)
    assert cache["blocks.1.attn.hook_z"].shape == (8, tokens.shape[1], 4, 8)


def test_ready_models(make_llama_dir, zoo_tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    path = make_llama_dir()
    bridge = load_model(path)
    assert load_model(bridge) is bridge
    hf = AutoModelForCausalLM.from_pretrained(path)
    booted = load_model(hf, tokenizer=zoo_tokenizer)  # a ready HF model with its tokenizer
    assert model_facts(booted) == model_facts(bridge)
    hf2 = AutoModelForCausalLM.from_pretrained(path)
    hf2.config.name_or_path = "not-a-dir"
    with pytest.raises(ModelLoadError, match="needs its tokenizer"):
        load_model(hf2)


def test_device_is_applied_and_recorded(make_llama_dir, monkeypatch) -> None:
    """The bridge records device= in cfg.device but leaves a model it is handed where it is,
    and by default records CUDA where there is one (both seen on a GPU machine: weights on the
    CPU, inputs on CUDA). load_model moves the weights itself and by default records where
    they are."""
    import transformer_lens.model_bridge.sources.transformers.source as source

    monkeypatch.setattr(source, "get_device", lambda: torch.device("cuda"))  # a GPU machine
    path = make_llama_dir()
    assert load_model(path).cfg.device == "cpu"
    moved = load_model(path, device="meta")  # another device, on a machine without a GPU
    assert {p.device.type for p in moved.parameters()} == {"meta"}
    assert torch.device(moved.cfg.device).type == "meta"


def test_legacy_hooked_transformer_is_accepted_as_is() -> None:
    class LegacyHooked:  # the surface circuitlens uses of a HookedTransformer
        cfg = object()
        W_Q = None

        def run_with_hooks(self, *a, **k):
            return None

    legacy = LegacyHooked()
    assert load_model(legacy) is legacy


def test_hub_name_offline_fails_fast_with_advice(monkeypatch) -> None:
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    t0 = time.time()
    with pytest.raises(ModelLoadError, match="local directory .* .gguf"):
        load_model("some-org/some-model-that-is-not-cached")
    assert time.time() - t0 < 5


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (42, "accepted forms"),
        ("", "accepted forms"),
        ("./no/such/dir", "no such file or directory"),
        ("missing.gguf", "no such GGUF file"),
    ],
)
def test_bad_specs(spec, match) -> None:
    with pytest.raises(ModelLoadError, match=match):
        load_model(spec)


def test_file_that_is_not_gguf(tmp_path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        load_model(str(f))


def test_dir_without_config(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_unknown_source_prefix_lists_the_registered_ones() -> None:
    with pytest.raises(ModelLoadError, match=r"'hub:'.*registered: .*zoo:.*accepted forms"):
        load_model("hub:some-model")
    assert {"zoo", "real"} <= set(models.sources())


def test_a_registered_source_is_loaded_by_its_prefix(monkeypatch, tiny_bridge) -> None:
    calls = []

    def load(name, device, dtype):
        calls.append((name, device, dtype))
        return tiny_bridge

    monkeypatch.setattr(models, "_SOURCES", dict(models._SOURCES))
    models.register_source("mine", load, lambda: ["a", "b"], listing="my list")
    assert load_model("mine:a:b", device="cpu") is tiny_bridge
    assert calls == [("a:b", "cpu", torch.float32)]
    assert models.registered_models()[-2:] == ["mine:a", "mine:b"]
    assert '"mine:<name>" (see `my list`)' in models.spec_forms()
    with pytest.raises(ValueError, match="source prefix"):
        models.register_source("x", load, list)


def test_fingerprints_come_from_the_source(monkeypatch, tmp_path) -> None:
    from circuitlens.core.io import sha256_file
    from circuitlens.models.zoo import zoo_path

    monkeypatch.setattr(models, "_SOURCES", dict(models._SOURCES))
    models.register_source("fp", lambda *a: None, list, fingerprint=lambda name: f"id:{name}")
    models.register_source("plain", lambda *a: None, list)
    assert models.model_fingerprint("fp:a") == "id:a"
    assert models.model_fingerprint("plain:a") == "plain:a"  # no fingerprint: the spec itself
    weights = zoo_path("entity-tracking-student") / "model.safetensors"
    assert models.model_fingerprint("zoo:entity-tracking-student") == "sha256:" + sha256_file(
        weights
    )
    f = tmp_path / "m.gguf"
    f.write_bytes(b"abc")  # sha256 of "abc", by hand
    assert models.model_fingerprint(str(f)) == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_unknown_zoo_name_lists_the_zoo() -> None:
    with pytest.raises(ZooError, match="entity-tracking-teacher"):
        load_model("zoo:gpt-5")


def test_damaged_zoo_file_is_refused(tmp_path, monkeypatch, make_llama_dir) -> None:
    import shutil

    import circuitlens.models.zoo.spec as zoo_spec

    src = make_llama_dir()
    dst = tmp_path / "entity-tracking-student"
    shutil.copytree(src, dst)
    (dst / "card.json").write_text('{"sha256": {"model.safetensors": "0000"}}')
    monkeypatch.setattr(zoo_spec, "ZOO_DIR", tmp_path)
    with pytest.raises(ZooError, match="damaged"):
        load_model("zoo:entity-tracking-student")


@pytest.mark.acceptance
def test_real_gguf_smollm2(smollm2_bridge) -> None:
    bridge = smollm2_bridge
    facts = model_facts(bridge)
    assert (facts.n_layers, facts.n_heads, facts.n_kv_heads) == (30, 9, 3)
    task = get_task("entity_tracking", tokenizers=[bridge], n_boxes=3, n_test=4)
    batch = task.batch(bridge, "test")
    with torch.no_grad():
        logits = bridge(batch.tokens)
    assert torch.isfinite(logits).all()


@pytest.mark.integration
def test_device_map_split_with_disk_offload_equals_one_device(tmp_path) -> None:
    """A teacher split by ``device_map`` (here CPU and disk, the split a machine without a GPU
    can make) gives the same logits, head outputs and ablation sweep as the model on one
    device: the hooks see the dispatched layers."""
    from circuitlens import AblationConfig, ablation_sweep

    path = "data/zoo/entity-tracking-teacher"
    plain = load_model(path)
    split = {f"model.layers.{i}": "disk" if i in (1, 2) else "cpu" for i in range(4)}
    split |= {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu"}
    split |= {"lm_head": "cpu"}
    model = load_model(path, device_map=split, offload_folder=tmp_path)
    assert model.original_model.hf_device_map["model.layers.1"] == "disk"
    assert any(p.device.type == "meta" for p in model.original_model.parameters())  # offloaded
    task = get_task("entity_tracking", model=plain, n_test=16)
    tokens = task.batch(plain, "test").tokens
    want, want_cache = plain.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    got, got_cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    assert torch.equal(got, want)
    assert all(torch.equal(got_cache[k], want_cache[k]) for k in want_cache)
    a = ablation_sweep(plain, task, AblationConfig(n=16, n_boot=0), progress=False)
    b = ablation_sweep(model, task, AblationConfig(n=16, n_boot=0), progress=False)
    assert torch.equal(a.p_ablated, b.p_ablated) and a.p_own == b.p_own


def test_device_map_errors_name_the_fix(tmp_path) -> None:
    path = "data/zoo/entity-tracking-teacher"
    with pytest.raises(ModelLoadError, match="exclusive"):
        load_model(path, device="cpu", device_map="auto")
    with pytest.raises(ModelLoadError, match="only apply to a split model"):
        load_model(path, offload_folder=tmp_path)
    with pytest.raises(ModelLoadError, match="pass device= instead"):
        load_model("zoo:entity-tracking-teacher", device_map="auto")
    # the advice works: the same model from its directory loads with the map (on a machine
    # with one CPU and no GPU, "auto" puts it all on the CPU) and runs as the plain one
    model = load_model(path, device_map="auto")
    tokens = torch.tensor([[1, 5, 7, 9, 11]])
    assert torch.equal(model(tokens), load_model(path)(tokens))
