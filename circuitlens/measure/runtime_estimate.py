"""What a run will cost, said before it starts.

The estimate counts the prompts each model runs forward (sweeps, training, evaluations) from
the options, and prices them with one timed forward pass of each model on real task prompts on
this machine (a backward pass counted as two forwards). It is a guide (within a factor of
about two), not a promise: the progress bars refine it as the work runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from circuitlens.core.types import Model

log = logging.getLogger(__name__)


@dataclass
class Cost:
    """An estimate of a run's work.

    Attributes:
        what: the run, for messages.
        prompt_passes: per model, prompts run forward (a backward counted as two).
        seconds: the estimated wall time on this machine.
        flops: estimated floating-point operations (2 x parameters x tokens per forward).
        parts: the estimated seconds of each stage.
    """

    what: str
    prompt_passes: dict[str, float]
    seconds: float
    flops: float
    parts: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        passes = ", ".join(f"{k} {v:,.0f}" for k, v in self.prompt_passes.items())
        parts = ", ".join(f"{k} {_duration(v)}" for k, v in self.parts.items())
        return (
            f"{self.what}: expected about {_duration(self.seconds)} on this machine "
            f"({parts}; prompt passes: {passes}; {self.flops / 1e12:.2g} TFLOP)"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _n_params(model: Model) -> int:
    try:
        return sum(p.numel() for p in model.parameters())
    except AttributeError:
        return 0


@torch.no_grad()
def seconds_per_prompt(model: Model, task: Any, n: int = 16) -> tuple[float, int]:
    """Time one forward pass of ``model`` on ``n`` of the task's test prompts; return seconds
    per prompt and tokens per prompt."""
    from circuitlens.tasks.metrics import model_device, model_logits

    split = "test" if task.split("test") else "train"
    prompts = task.split(split)[:n]
    batch = task.batch(model, split, len(prompts)).to(model_device(model))
    model_logits(model, batch.tokens[:2])  # warm-up (first-call overheads)
    t0 = time.perf_counter()
    model_logits(model, batch.tokens)
    return (time.perf_counter() - t0) / len(prompts), int(batch.tokens.shape[1])


def sweep_passes(
    n_heads: int, n_layers: int, n: int, top: int | None = None, method: str = "auto"
) -> float:
    """Prompt passes of one mean-ablation sweep on ``n`` prompts (``method`` as
    :func:`circuitlens.ablation_sweep` takes it).

    An exact sweep (what ``"auto"`` is for ``n_heads``:
    :func:`circuitlens.ablation.screening.auto_method`)
    ablates every head. A screened sweep
    costs one forward and one backward pass for the estimates (three passes), then at least
    the ``top`` heads it must settle and their margin exactly (``top``: the heads asked for,
    by default :data:`~circuitlens.ablation.screening.SCREEN_TOP` of them); it measures more when
    the
    estimates leave the top unsettled.
    """
    from circuitlens.ablation.screening import SCREEN_TOP, auto_method, default_margin, top_count

    # each head's pass starts at its layer: on average (L + 1) / 2L of a full forward
    per_head = n * (n_layers + 1) / (2 * n_layers)
    means = 3 * n  # the reference prompts' means and the unablated scores
    if (auto_method(n_heads) if method == "auto" else method) == "exact":
        return n_heads * per_head + means
    k = top if top is not None else top_count(SCREEN_TOP, n_heads)
    measured = min(n_heads, k + default_margin(k, n_heads))
    return 3 * n + measured * per_head + means


def _ablation_passes(model: Model, n: int, budget: float | int | None = None) -> float:
    """A sweep's passes on ``model``; ``budget``: the mapping's (a student's screened sweep
    settles at least the budget's heads)."""
    from circuitlens.ablation.screening import SCREEN_TOP, top_count
    from circuitlens.mapping.map import budget_count
    from circuitlens.models.registry import model_facts

    f = model_facts(model)
    top = None
    if budget is not None:
        top = max(top_count(SCREEN_TOP, f.n_total_heads), budget_count(budget, f.n_total_heads))
    return sweep_passes(f.n_total_heads, f.n_layers, n, top)


def estimate_distill_cost(teacher: Model, student: Model, task: Any, cfg: Any) -> Cost:
    """The cost of :func:`circuitlens.distill_circuit` with config ``cfg`` (a DistillConfig)."""
    tcfg = cfg.train
    t_sec, t_tok = seconds_per_prompt(teacher, task)
    s_sec, s_tok = seconds_per_prompt(student, task)
    n_evals = (tcfg.steps // tcfg.eval_every + 1) if tcfg.eval_every else 0
    cka_n = getattr(tcfg, "cka_eval_n", 128)  # held-out prompts of each reported CKA
    teacher_p = {
        "sweeps": _ablation_passes(teacher, cfg.sweep.n),
        "training": tcfg.steps * tcfg.batch_size,
        "evaluation": cfg.test_n + 2 * cka_n + (n_evals * cka_n if tcfg.eval_cka else 0),
    }
    student_p = {
        "sweeps": _ablation_passes(student, cfg.sweep.n, cfg.map.budget) + cfg.sweep.n,
        "training": 3 * tcfg.steps * tcfg.batch_size,
        "evaluation": 2 * cfg.test_n
        + n_evals * tcfg.eval_n
        + 2 * cka_n
        + (n_evals * cka_n if tcfg.eval_cka else 0),
    }
    parts = {k: teacher_p[k] * t_sec + student_p[k] * s_sec for k in teacher_p}
    flops = 2 * (
        _n_params(teacher) * t_tok * sum(teacher_p.values())
        + _n_params(student) * s_tok * sum(student_p.values())
    )
    return Cost(
        what=f"distill ({tcfg.condition}, {tcfg.steps} steps)",
        prompt_passes={"teacher": sum(teacher_p.values()), "student": sum(student_p.values())},
        seconds=sum(parts.values()),
        flops=flops,
        parts=parts,
    )


def report_cost(cost: Cost, progress: bool = True) -> None:
    """Log the estimate, and show it above the progress bars when they are on."""
    log.info("%s", cost)
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(str(cost))


def estimate_experiment_cost(
    teacher: Model, student: Model, task: Any, cfg: Any, n_cells: int, setup: bool = True
) -> Cost:
    """The cost of one task of :func:`circuitlens.run_experiment` (an ExperimentConfig ``cfg``):
    its setup (circuit discovery, sweeps) when ``setup``, and ``n_cells`` training cells."""
    one = estimate_distill_cost(teacher, student, task, cfg.distill)
    t_sec, _ = seconds_per_prompt(teacher, task)
    parts: dict[str, float] = {}
    if setup:
        from circuitlens.models.registry import model_facts

        # path patching: about two passes of the circuit prompts per teacher head
        circuit = 2 * model_facts(teacher).n_total_heads * cfg.circuit.n * t_sec
        parts["setup"] = one.parts["sweeps"] + (circuit if cfg.use_circuit else 0.0)
    cell = one.parts["training"] + one.parts["evaluation"]
    parts[f"{n_cells} cells"] = n_cells * cell
    return Cost(
        what=f"reproduce {getattr(task, 'name', 'task')} ({n_cells} cells to run)",
        prompt_passes={k: v * (n_cells + 1) for k, v in one.prompt_passes.items()},
        seconds=sum(parts.values()),
        flops=one.flops * (n_cells + 1),
        parts=parts,
    )
