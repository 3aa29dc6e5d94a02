"""The training losses of circuit distillation, as pure functions of activations and logits.

Every condition's loss is one of these terms or a sum of them (``circuitlens.distill.trainer`` runs
the model and calls them; the tests recompute each by hand in float64):

- ``ce``: cross-entropy of the student's last-position logits ``s`` with labels ``y``,
  ``mean_i [logsumexp(s_i) - s_i[y_i]]``.
- ``kd``: ``T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T))`` (Hinton et al. 2015).
- ``align``: ``mean_pairs (1 - CKA(X_pair, Y_pair))``, the CKA term *averaged* over the mapped
  pairs (not summed), so lambda means the same at any head budget.
- ``shuffled``: the same alignment term with the teacher's examples deranged within the batch
  (every example paired with another's teacher activation): the content-free control.

``total_loss`` sums a condition's terms (its registry entry, :mod:`circuitlens.distill.conditions`,
names them): ``ce``, ``full-ce``, ``random-heads``: CE; ``ce+align``, ``ce+rand``,
``ce+shuffled``, ``random-heads+align``: CE + lambda * align; ``align``: lambda * align;
``kd``: KD.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitlens.distill.conditions import LABELS, condition_names, get_condition
from circuitlens.measure.cka import cka, permute_examples

#: the conditions registered at import, those with the CKA term (a snapshot for reading; what
#: is valid is the live registry, :func:`~circuitlens.distill.conditions.condition_names`)
CONDITIONS = condition_names()
CKA_CONDITIONS = tuple(n for n in CONDITIONS if get_condition(n).uses_cka)


def cross_entropy(
    logits: Float[Tensor, "batch d_vocab"], target: Int[Tensor, " batch"]
) -> Float[Tensor, ""]:
    """Mean cross-entropy (in float32 at least)."""
    return torch.nn.functional.cross_entropy(logits.float(), target.to(logits.device))


def kd_loss(
    student: Float[Tensor, "batch d_vocab"],
    teacher: Float[Tensor, "batch d_vocab"],
    temperature: float,
) -> Float[Tensor, ""]:
    """``T^2 * mean_i KL(p_t || p_s)`` with both softmaxes at temperature ``T``."""
    t = temperature
    return (
        torch.nn.functional.kl_div(
            (student.float() / t).log_softmax(-1),
            (teacher.float() / t).log_softmax(-1),
            log_target=True,
            reduction="batchmean",
        )
        * t**2
    )


def alignment_loss(
    xs: Float[Tensor, "pair m p1"],
    ys: Float[Tensor, "pair m p2"],
    kernel: str = "linear",
    estimator: str = "unbiased",
) -> tuple[Float[Tensor, ""], Float[Tensor, " pair"]]:
    """``mean_pairs (1 - CKA)``, and the per-pair CKA (differentiable through ``xs``)."""
    value = cka(xs, ys.to(xs.device), kernel=kernel, estimator=estimator)
    return (1 - value).mean(), value


def derangement(n: int, generator: torch.Generator) -> Int[Tensor, " n"]:
    """A random permutation with no fixed point: every example gets another's partner."""
    if n < 2:
        raise ValueError(f"shuffling teacher activations needs at least 2 examples (got {n})")
    p = torch.randperm(n, generator=generator)
    out = torch.empty_like(p)
    out[p] = p.roll(-1)  # p[i] -> p[i+1]: one cycle through all n, no fixed point
    return out


def shuffle_generator(seed: int, step: int) -> torch.Generator:
    """The generator of the ``ce+shuffled`` permutation at one step (resumable: a function of
    the seed and the step only)."""
    return torch.Generator().manual_seed(1_000_003 * (seed + 1) + step)


def shuffled_teacher(
    ys: Float[Tensor, "pair n_examples rows p"], perm: Int[Tensor, " n_examples"]
) -> Float[Tensor, "pair n_examples rows p"]:
    """The teacher's activations with whole examples moved by ``perm`` (rows stay together)."""
    return permute_examples(ys, perm)


def total_loss(
    condition: str,
    lam: float,
    ce: Tensor | None = None,
    align: Tensor | None = None,
    kd: Tensor | None = None,
) -> Tensor:
    """The condition's loss from its terms
    (:meth:`circuitlens.distill.conditions.Condition.loss`)."""
    return get_condition(condition).loss(lam, ce, align, kd)


__all__ = [
    "CKA_CONDITIONS",
    "CONDITIONS",
    "LABELS",
    "alignment_loss",
    "cross_entropy",
    "derangement",
    "kd_loss",
    "shuffle_generator",
    "shuffled_teacher",
    "total_loss",
]
