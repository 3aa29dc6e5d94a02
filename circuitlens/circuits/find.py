"""Finding a task's circuit of heads, and measuring its faithfulness.

A task with a circuit plan (its ``circuit_plan``: :class:`~circuitlens.core.types.PlanStep` steps,
rules in :mod:`circuitlens.tasks.plan`) gets path patching along the plan on clean/corrupted
prompts: the first step's group is the senders with the largest direct effect on the logits,
each later step's group the senders (every head below the receivers, in no other group) with
the largest effect through the receiving group's ``q``, ``k`` or ``v`` at the step's position.
Entity tracking's plan (Prakash et al., ICLR 2024):

- **A** value fetchers: senders with the largest direct effect on the logits (last token);
- **B** position transmitters: senders into A's queries at the last token;
- **C** position detectors: senders into B's values at the query-label token;
- **D** structure readers: senders into C's values at the earlier occurrence of the query label.

- **E** (ours): senders into A's keys and values at the queried label's earlier occurrence, the
  slot where a tiny model's A head reads the object.

Each group keeps its ``top_k`` senders with the most negative score below ``-min_effect``. When
the groups alone keep less than ``complete_to`` of the full model's accuracy, **S** (support)
heads are added by mean-ablation impact until they do (at most ``max_support``). Then
minimality pruning drops, one at a time (weakest first), every head whose mean ablation changes
the circuit's accuracy by at most ``prune_tol``. A JSONL task with a plan file (the IOI example,
``data/tasks/ioi.jsonl``: name movers, S-inhibition, induction, previous-token heads after Wang
et al. 2022) is searched the same way. Tasks without a plan (theory of mind, JSONL tasks without
one) get a single group from activation patching of ``z``: heads whose patching recovers at
least ``threshold`` of the clean-corrupted metric gap.

Faithfulness: task accuracy with every head *outside* the circuit mean-ablated (task ablation
prompts as the reference), against the full model.

Prompts: the search (patching, support heads, pruning) reads the task's ``probe`` split, the
prompts that choose; the faithfulness it reports is scored on the held-out ``test`` split
(``meta["faithfulness_split"]`` and ``meta["faithfulness_n"]`` say which prompts), never on
the prompts that chose the heads.

A search on a real model takes an hour or more on a CPU: with ``checkpoint_dir`` every finished
stage (each path-patching group, the activation patching, the support sweep) is kept in
``find_circuit.json`` there (written atomically), and a search started again with the same model
weights, prompts and config resumes after the last finished stage, with the same result as one
uninterrupted search (stages read back bit for bit). A file from another search is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from circuitlens.ablation.means import mean_ablated
from circuitlens.ablation.screening import auto_method
from circuitlens.circuits.activation import activation_patch
from circuitlens.circuits.attribution import ScreenedPatch, screened_activation_patch
from circuitlens.circuits.evaluation import ablation_means
from circuitlens.circuits.path import PathPatchingConfig, PathPatchingResult, path_patch
from circuitlens.core.io import atomic_write_text
from circuitlens.core.types import Circuit, Head, Model, PlanStep, parse_heads
from circuitlens.core.validate import check_fields
from circuitlens.models.registry import model_facts
from circuitlens.tasks import PromptBatch, Task, make_metric
from circuitlens.tasks.metrics import accuracy, logits_at
from circuitlens.tasks.plan import SUPPORT_GROUP, check_plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CircuitConfig:
    """Options of :func:`find_circuit`.

    Attributes:
        n: prompts of the ``probe`` split that the search reads (patching, support heads,
            pruning), and at most as many ``test`` prompts for the reported faithfulness.
        top_k: heads kept per group (entity tracking).
        min_effect: a sender must lower the answer probability by more than this (relative).
        prune_tol: minimality pruning drops heads whose removal costs at most this accuracy.
        threshold: activation patching (other tasks): fraction of the metric gap recovered.
        complete_to: add support heads until the circuit keeps this share of the accuracy
            (0 disables).
        max_support: the most support heads added.
        method: other tasks' activation patching: ``"exact"``, ``"screened"`` (AtP estimates,
            heads that may pass ``threshold`` patched exactly) or ``"auto"`` (exact for now:
            :func:`circuitlens.ablation.screening.auto_method`).
    """

    n: int = 100
    top_k: int = 3
    min_effect: float = 0.02
    prune_tol: float = 0.01
    threshold: float = 0.1
    complete_to: float = 0.8
    max_support: int = 8
    method: str = "auto"

    def __post_init__(self) -> None:
        check_fields(
            self,
            # min_effect, prune_tol and threshold may be negative (keep every head)
            {"n": (1, None), "top_k": (1, None), "complete_to": (0, 1), "max_support": (0, None)},
        )


class CircuitStageError(ValueError):
    """A checkpoint directory holds another circuit search's stages."""


class _Stages:
    """The finished stages of one search, kept in ``find_circuit.json`` (None: kept nowhere)."""

    def __init__(self, directory: str | Path | None, model: Model, batch: Any, cfg: Any) -> None:
        self.path = None if directory is None else Path(directory) / "find_circuit.json"
        self.done: dict[str, Any] = {}
        self.key = ""
        if self.path is None:
            return
        h = hashlib.sha256()
        for name, t in sorted(model.state_dict().items()):  # the weights the search reads
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        for t in (batch.tokens, batch.corrupted_tokens):  # the prompts
            h.update(t.cpu().contiguous().numpy().tobytes())
        h.update(json.dumps(asdict(cfg), sort_keys=True).encode())
        self.key = h.hexdigest()
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get("fingerprint") != self.key:
                raise CircuitStageError(
                    f"{self.path} holds the stages of another circuit search (other weights, "
                    "prompts or config): pass another checkpoint_dir, or delete the file to "
                    "search afresh"
                )
            self.done = saved["stages"]
            log.info("find_circuit: resuming after %d finished stage(s)", len(self.done))

    def run(
        self,
        name: str,
        compute: Callable[[], Any],
        encode: Callable[[Any], Any],
        decode: Callable[[Any], Any],
    ) -> Any:
        """The stage's result: read back when finished before, else computed and kept."""
        if name in self.done:
            return decode(self.done[name])
        value = compute()
        if self.path is not None:
            self.done[name] = encode(value)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            doc = {"fingerprint": self.key, "stages": self.done}
            atomic_write_text(self.path, json.dumps(doc))
        return value


def _path_to_dict(r: PathPatchingResult) -> dict[str, Any]:
    return {
        "senders": [str(h) for h in r.senders],
        "scores": r.scores.tolist(),
        "receivers": [str(h) for h in r.receivers],
        "via": r.via,
        "position": r.position,
    }


def _path_from_dict(d: dict[str, Any]) -> PathPatchingResult:
    return PathPatchingResult(
        senders=parse_heads(d["senders"]),
        scores=torch.tensor(d["scores"], dtype=torch.float32),
        receivers=parse_heads(d["receivers"]),
        via=d["via"],
        position=d["position"],
    )


def _recovered_to_dict(r: tuple[torch.Tensor, torch.Tensor | None]) -> dict[str, Any]:
    return {"recovered": r[0].tolist(), "exact": None if r[1] is None else r[1].tolist()}


def _recovered_from_dict(d: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    exact = None if d["exact"] is None else torch.tensor(d["exact"], dtype=torch.bool)
    return torch.tensor(d["recovered"], dtype=torch.float32), exact


def _all_heads(model: Model) -> list[Head]:
    f = model_facts(model)
    return [Head(layer, h) for layer in range(f.n_layers) for h in range(f.n_heads)]


def _keep(result: Any, top_k: int, min_effect: float) -> list[Head]:
    order = torch.argsort(result.scores, stable=True).tolist()
    return [result.senders[i] for i in order[:top_k] if result.scores[i] < -min_effect]


@torch.no_grad()
def circuit_accuracy(
    model: Model,
    task: Task,
    heads: list[Head],
    n: int = 100,
    split: str = "test",
    means: torch.Tensor | None = None,
) -> float:
    """Accuracy with every head outside ``heads`` mean-ablated (task ablation prompts).
    ``means``: the heads' means over those prompts, when already computed (the search for a
    circuit measures many head sets on the same prompts)."""
    batch = task.batch(model, split, n)
    if means is None:
        means = ablation_means(model, task, split, n)
    keep = set(heads)
    outside = [h for h in _all_heads(model) if h not in keep]
    with mean_ablated(model, outside, means):
        return float(accuracy(logits_at(model, batch.tokens, batch.positions["last"]), batch))


def faithfulness(model: Model, task: Task, circuit: Circuit, n: int = 100) -> dict[str, float]:
    """Circuit-only accuracy, full-model accuracy, and their ratio, on the first ``n`` prompts
    of the held-out ``test`` split."""
    batch = task.batch(model, "test", n)
    with torch.no_grad():
        full = float(accuracy(logits_at(model, batch.tokens, batch.positions["last"]), batch))
    alone = circuit_accuracy(model, task, circuit.heads, n, "test")
    return {
        "full_accuracy": full,
        "circuit_accuracy": alone,
        "faithfulness": alone / full if full > 0 else float("nan"),
    }


def _prune(
    model: Model, task: Task, groups: dict[str, list[Head]], cfg: CircuitConfig
) -> dict[str, list[Head]]:
    heads = [h for hs in groups.values() for h in hs]
    means = ablation_means(model, task, "probe", cfg.n)
    base = circuit_accuracy(model, task, heads, cfg.n, "probe", means=means)
    for h in reversed(list(dict.fromkeys(heads))):  # the weakest (last kept) first
        rest = [x for x in heads if x != h]
        if not rest:
            break
        acc = circuit_accuracy(model, task, rest, cfg.n, "probe", means=means)
        if base - acc <= cfg.prune_tol:
            log.info("pruned %s: circuit accuracy %.3f -> %.3f", h, base, acc)
            heads, base = rest, acc
    return {g: [h for h in hs if h in heads] for g, hs in groups.items()}


def _complete(
    model: Model,
    task: Task,
    groups: dict[str, list[Head]],
    cfg: CircuitConfig,
    stages: _Stages,
) -> list[Head]:
    """Support heads: add heads by mean-ablation impact until the circuit alone keeps
    ``complete_to`` of the full model's accuracy (or ``max_support`` heads are added)."""
    from circuitlens.ablation.config import AblationConfig
    from circuitlens.ablation.result import AblationResult
    from circuitlens.ablation.sweep import ablation_sweep

    batch = task.batch(model, "probe", cfg.n)
    with torch.no_grad():
        full = float(accuracy(logits_at(model, batch.tokens, batch.positions["last"]), batch))
    heads = [h for hs in groups.values() for h in hs]
    sweep = stages.run(
        "support:sweep",
        # accuracy: the completion criterion below is the circuit's accuracy
        lambda: ablation_sweep(
            model, task, AblationConfig(metric="accuracy", split="probe", n=cfg.n), progress=False
        ),
        lambda r: r.to_dict(),
        AblationResult.from_dict,
    )
    # measured heads only (a screened sweep, on a large model, estimates the rest)
    order = sorted(sweep.exact_heads, key=lambda h: (-float(sweep.delta[h.layer, h.head]), h))
    support: list[Head] = []
    means = ablation_means(model, task, "probe", cfg.n)
    for h in order:
        if circuit_accuracy(model, task, heads + support, cfg.n, "probe", means=means) >= (
            cfg.complete_to * full
        ):
            break
        if h not in heads and len(support) < cfg.max_support:
            support.append(h)
    return support


@dataclass(frozen=True)
class _Groups:
    """What one search algorithm found: groups of heads, the position of each, its scores."""

    groups: dict[str, list[Head]]
    positions: dict[str, str]
    scores: dict[str, Any]
    method: str


def _plan_step(
    model: Model,
    batch: PromptBatch,
    step: PlanStep,
    groups: dict[str, list[Head]],
    stages: _Stages,
    progress: bool,
) -> PathPatchingResult | None:
    """Path patching of every head below the step's receivers into their ``via`` input (None
    when the receiving group is empty or starts at layer 0)."""
    receivers = groups[step.into] if step.into is not None else []
    if not receivers:
        return None
    start = min(h.layer for h in receivers)
    senders = [h for h in _all_heads(model) if h.layer < start]
    if not senders:
        return None
    return stages.run(
        f"{step.group}:{step.via}:{step.position}",
        lambda: path_patch(
            model,
            batch,
            senders,
            receivers,
            PathPatchingConfig(via=step.via, position=step.position),
            progress=progress,
        ),
        _path_to_dict,
        _path_from_dict,
    )


def _path_patching(
    model: Model,
    task: Task,
    batch: PromptBatch,
    plan: tuple[PlanStep, ...],
    cfg: CircuitConfig,
    stages: _Stages,
    progress: bool,
) -> _Groups:
    """The plan's groups by path patching: the first step's senders into the logits, each
    later step's senders (heads below its receivers, in no other group) into the receivers'
    ``via`` input at the step's position; each group keeps its ``top_k`` strongest."""
    first, *later = plan
    a = stages.run(
        f"{first.group}:logits:{first.position}",
        lambda: path_patch(
            model,
            batch,
            _all_heads(model),
            config=PathPatchingConfig(via="logits", position=first.position),
            progress=progress,
        ),
        _path_to_dict,
        _path_from_dict,
    )
    groups = {first.group: _keep(a, cfg.top_k, cfg.min_effect)}
    scores: dict[str, Any] = {first.group: a.scores.tolist()}
    for step in later:
        res = _plan_step(model, batch, step, groups, stages, progress)
        if res is None:
            groups[step.group] = []
            continue
        taken = {h for g, hs in groups.items() if g != step.group for h in hs}
        found = [h for h in _keep(res, cfg.top_k + len(taken), cfg.min_effect) if h not in taken]
        groups[step.group] = list(dict.fromkeys(groups.get(step.group, []) + found[: cfg.top_k]))
        scores[f"{step.group}:{step.via}"] = dict(
            zip(map(str, res.senders), res.scores.tolist(), strict=True)
        )
    positions = {step.group: step.position for step in plan}
    method = f"path patching ({task.name}'s plan: groups {' '.join(positions)}; plus support)"
    return _Groups(groups, positions, scores, method)


def _activation_patching(
    model: Model, batch: PromptBatch, cfg: CircuitConfig, stages: _Stages, progress: bool
) -> _Groups:
    """One group, ``heads``: every head whose ``z`` patched from the clean run into the
    corrupted one recovers more than ``threshold`` of the logit-difference gap (at ``last``)."""
    metric = make_metric("logit_diff", batch)
    screened = cfg.method == "screened" or (
        cfg.method == "auto" and auto_method(model_facts(model).n_total_heads) == "screened"
    )

    def patch() -> tuple[torch.Tensor, torch.Tensor | None]:
        if screened:
            res = screened_activation_patch(
                model,
                batch.tokens,
                batch.corrupted_tokens,
                metric,
                ScreenedPatch(min_recovered=cfg.threshold),
                positions=batch.positions["last"],
                progress=progress,
            )
        else:
            res = activation_patch(
                model,
                batch.tokens,
                batch.corrupted_tokens,
                metric,
                progress=progress,
                positions=batch.positions["last"],
            )
        gap = res.clean_score - res.corrupted_score
        return (res.scores - res.corrupted_score) / (gap if gap != 0 else 1.0), res.exact

    name = f"heads:z:{'screened' if screened else 'exact'}"
    recovered, exact = stages.run(name, patch, _recovered_to_dict, _recovered_from_dict)
    chosen = recovered > cfg.threshold
    if exact is not None:
        chosen &= exact  # measured heads only
    groups = {"heads": [Head(layer, h) for layer, h in chosen.nonzero().tolist()]}
    scores = {"recovered": recovered.tolist()}
    return _Groups(groups, {"heads": "last"}, scores, "activation patching of z")


def find_circuit(
    model: Model,
    task: Task,
    config: CircuitConfig | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
) -> Circuit:
    """The task's circuit in ``model`` (see the module docstring), with its faithfulness.

    A task with a ``circuit_plan`` (entity tracking; a JSONL task with a plan file) gets path
    patching along the plan, any other task activation patching; then support heads (group
    ``S``) and minimality pruning. ``checkpoint_dir``: keep every finished stage there, and
    resume after them when the same search (weights, prompts, config) is started again.

    Returns:
        :class:`Circuit`: group name -> heads (after pruning), the position of each group, and
        ``meta``: the method, config, scores, the groups before pruning, and the faithfulness.

    Raises:
        CircuitStageError: ``checkpoint_dir`` holds another search's stages.
        ValueError: the task's prompts lack ``corrupted`` or ``ablation`` counterparts.
        PlanError: the task's plan breaks a rule of :mod:`circuitlens.tasks.plan`.
    """
    cfg = config or CircuitConfig()
    batch = task.batch(model, "probe", cfg.n)
    lacking = [k for k in ("corrupted", "ablation") if getattr(batch, f"{k}_tokens") is None]
    if lacking:
        raise ValueError(
            f"find_circuit patches from corrupted prompts and mean-ablates over ablation "
            f"prompts, and task {task.name!r} has no {' and no '.join(lacking)} prompts: give "
            f"every prompt {' and '.join(repr(k) for k in lacking)} (a JSONL line's keys)"
        )
    stages = _Stages(checkpoint_dir, model, batch, cfg)
    plan = getattr(task, "circuit_plan", None)
    if plan:
        steps = check_plan(plan, list(batch.positions), f"{task.name}'s circuit plan")
        found = _path_patching(model, task, batch, steps, cfg, stages, progress)
    else:
        found = _activation_patching(model, batch, cfg, stages, progress)
    groups, positions = dict(found.groups), dict(found.positions)
    if cfg.complete_to > 0 and any(groups.values()):
        groups[SUPPORT_GROUP] = _complete(model, task, groups, cfg, stages)
        positions[SUPPORT_GROUP] = "last"
    pruned = _prune(model, task, groups, cfg) if any(groups.values()) else groups
    circuit = Circuit(
        groups=pruned,
        positions=positions,
        meta={
            "method": found.method,
            "config": asdict(cfg),
            "scores": found.scores,
            "before_pruning": {g: [str(h) for h in hs] for g, hs in groups.items()},
        },
    )
    n_test = min(cfg.n, len(task.split("test")))
    if circuit.heads and n_test:
        circuit.meta.update(faithfulness(model, task, circuit, n_test))
        circuit.meta.update(faithfulness_split="test", faithfulness_n=n_test)
    elif circuit.heads:
        log.warning("find_circuit: the task has no test prompts; no faithfulness reported")
    return circuit
