"""Each condition's loss, recomputed by hand in float64 from the models' own activations, equals
the trainer's value (``CircuitTrainer.losses``)."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from circuitlens import get_task, load_model
from circuitlens.core.hooks import z_name
from circuitlens.core.types import HeadMap
from circuitlens.distill.losses import CONDITIONS, derangement, shuffle_generator, total_loss
from circuitlens.distill.trainer import CircuitTrainer, TrainConfig

TASK = get_task("entity_tracking", n_boxes=3, seed=0, n_val=16, n_test=16)
ALIGN = HeadMap(pairs=[("L1H3", "L2H0"), ("L0H0", "L1H1")])
RAND = HeadMap(pairs=[("L1H3", "L0H2"), ("L0H0", "L2H3")], kind="random")
CFG = TrainConfig(steps=1, batch_size=12, eval_every=0, lam=0.7, seed=3)


@pytest.fixture(scope="module")
def pair(make_llama_dir):
    teacher = load_model(make_llama_dir(seed=1, n_layers=3, n_heads=4, n_kv_heads=2, d_model=32))
    student = load_model(make_llama_dir(seed=2))
    return teacher, student


def _prompts(n: int = 12) -> list:
    return TASK.sample(random.Random(11), n)


def _run(model, prompts):
    from circuitlens.tasks import tokenize_prompts

    batch = tokenize_prompts(model, prompts)
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch.tokens)
    return batch, logits.double().numpy(), cache


def _last(logits: np.ndarray, batch) -> np.ndarray:
    return np.stack([logits[i, int(p)] for i, p in enumerate(batch.positions["last"])])


def _ce(s: np.ndarray, target: np.ndarray) -> float:
    m = s.max(1, keepdims=True)
    lse = np.log(np.exp(s - m).sum(1)) + m[:, 0]
    return float(np.mean(lse - s[np.arange(len(s)), target]))


def _log_softmax(a: np.ndarray) -> np.ndarray:
    m = a.max(1, keepdims=True)
    return a - m - np.log(np.exp(a - m).sum(1, keepdims=True))


def _unbiased_hsic(k: np.ndarray, l: np.ndarray) -> float:
    m = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(m)
    return float(
        (
            np.trace(k @ l)
            + (one @ k @ one) * (one @ l @ one) / ((m - 1) * (m - 2))
            - 2 / (m - 2) * (one @ k @ l @ one)
        )
        / (m * (m - 3))
    )


def _cka(x: np.ndarray, y: np.ndarray) -> float:
    k, l = x @ x.T, y @ y.T
    return _unbiased_hsic(k, l) / np.sqrt(_unbiased_hsic(k, k) * _unbiased_hsic(l, l))


def _rows(cache, batch, head, site: str, model, positions: str) -> np.ndarray:
    z = cache[z_name(head.layer)].double().numpy()  # [batch, pos, head_index, d_head]
    if positions == "tokens":  # every token but the BOS (position 0)
        a = np.concatenate([z[i, 1 : int(p) + 1, head.head] for i, p in
                            enumerate(batch.positions["last"])])  # fmt: skip
    else:
        a = np.stack([z[i, int(p), head.head] for i, p in enumerate(batch.positions["last"])])
    if site == "result":
        a = a @ model.W_O[head.layer, head.head].detach().double().numpy()
    return a


def _by_hand(pair, condition: str, head_map: HeadMap, cfg: TrainConfig, prompts, step: int):
    teacher, student = pair
    sb, s_logits, s_cache = _run(student, prompts)
    tb, t_logits, t_cache = _run(teacher, prompts)
    s, t = _last(s_logits, sb), _last(t_logits, tb)
    ce = _ce(s, t.argmax(1))  # labels: the teacher's top token
    temp = cfg.kd_temperature
    lp_t, lp_s = _log_softmax(t / temp), _log_softmax(s / temp)
    kd = float(np.mean((np.exp(lp_t) * (lp_t - lp_s)).sum(1))) * temp**2
    ckas = []
    for hs, ht in head_map.pairs:
        x = _rows(s_cache, sb, hs, cfg.site, student, cfg.positions)
        y = _rows(t_cache, tb, ht, cfg.site, teacher, cfg.positions)
        if condition == "ce+shuffled":  # whole examples deranged, each keeps its rows
            perm = derangement(len(prompts), shuffle_generator(cfg.seed, step)).numpy()
            r = y.shape[0] // len(prompts)
            y = y.reshape(len(prompts), r, -1)[perm].reshape(len(prompts) * r, -1)
        ckas.append(_cka(x, y))
    align = float(np.mean([1 - c for c in ckas]))  # averaged over pairs, not summed
    lam = cfg.lam
    return {
        "ce": ce,
        "full-ce": ce,
        "ce+align": ce + lam * align,
        "ce+rand": ce + lam * align,
        "ce+shuffled": ce + lam * align,
        "align": lam * align,
        "kd": kd,
        "random-heads": ce,
        "random-heads+align": ce + lam * align,
        # the pairing controls: the same terms; which pairs they align is the map's business
        "ce+rand-all": ce + lam * align,
        "random-heads+rand-all": ce + lam * align,
        "ce+permuted": ce + lam * align,
    }[condition], ckas


@pytest.mark.parametrize("condition", CONDITIONS)
def test_loss_of_each_condition_by_hand(pair, condition: str) -> None:
    teacher, student = pair
    cfg = dataclasses.replace(CFG, condition=condition)
    head_map = RAND if condition == "ce+rand" else ALIGN
    trainer = CircuitTrainer(student, teacher, TASK, head_map, cfg)
    prompts = _prompts()
    with torch.no_grad():
        parts = trainer.losses(prompts, step=5)
    want, ckas = _by_hand(pair, condition, head_map, cfg, prompts, step=5)
    assert float(parts["loss"]) == pytest.approx(want, rel=1e-5, abs=1e-6)
    if "cka" in parts:
        np.testing.assert_allclose(parts["cka"].double().numpy(), ckas, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("site", "positions"), [("result", "last"), ("z", "tokens")])
def test_sites_and_token_rows_by_hand(pair, site: str, positions: str) -> None:
    teacher, student = pair
    cfg = dataclasses.replace(CFG, site=site, positions=positions)
    trainer = CircuitTrainer(student, teacher, TASK, ALIGN, cfg)
    prompts = _prompts()
    with torch.no_grad():
        parts = trainer.losses(prompts)
    want, ckas = _by_hand(pair, "ce+align", ALIGN, cfg, prompts, step=1)
    assert float(parts["loss"]) == pytest.approx(want, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(parts["cka"].double().numpy(), ckas, rtol=1e-4, atol=1e-6)


def test_shuffle_is_a_derangement_and_a_function_of_seed_and_step() -> None:
    for n in (2, 5, 32):
        perm = derangement(n, shuffle_generator(0, 1))
        assert sorted(perm.tolist()) == list(range(n))
        assert (perm != torch.arange(n)).all()
    a = derangement(32, shuffle_generator(4, 9))
    assert torch.equal(a, derangement(32, shuffle_generator(4, 9)))
    assert not torch.equal(a, derangement(32, shuffle_generator(4, 10)))
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, shuffle_generator(0, 0))


def test_total_loss_names_missing_terms() -> None:
    one = torch.tensor(1.0)
    assert float(total_loss("ce+align", 0.5, ce=one, align=one)) == 1.5
    with pytest.raises(ValueError, match="needs the term"):
        total_loss("ce+align", 0.5, ce=one)
    with pytest.raises(ValueError, match="valid: ce"):
        total_loss("bogus", 1.0, ce=one)


def test_config_fields_are_validated(unchecked) -> None:  # the config's own checks
    for field, value, words in (
        ("cka_estimator", "exact", "unknown cka_estimator 'exact'; valid: unbiased, biased"),
        ("site", "resid", "unknown site 'resid'; valid: z, result"),
        ("positions", "all", "unknown positions 'all'; valid: last, circuit, tokens"),
        ("null_perms", 5, "null_perms must be >= 20"),
    ):
        with unchecked(), pytest.raises(ValueError, match=words.replace("(", "\\(")):
            TrainConfig(**{field: value})
