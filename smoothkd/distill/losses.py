"""KD losses on response tokens, comparing teacher and student on the same support.

The teacher is given either densely (log-probs over the whole vocabulary, online mode) or sparsely
(stored top-k log-probs, their token ids and a tail bucket log(1 − Σ p_topk)). In the sparse case the
student is reduced to the same k + 1 outcomes: its own probabilities at those k ids plus its remaining
mass. Renormalising only the teacher while the student stays full-vocabulary is a known silent bug; here
both sides are proper distributions over one support.

The teacher side is the distribution the student is taught (the teacher at the calibration temperature,
as stored, or its logits already divided by it online). The distillation temperature T only shapes the
loss: it divides teacher and student alike (Hinton) and the divergence is scaled by T² so gradient
magnitudes stay comparable across temperatures. Its minimum stays where the student matches the taught
distribution, so T never changes what is taught. On a top-k support both sides are re-tempered on their
k + 1 outcomes, the tail bucket counting as one outcome (mass tail^(1/T), renormalised): the store does not
know how the tail splits, and treating the student's tail the same way keeps the two sides one function of
the same support, so the divergence vanishes exactly when the student's reduced distribution equals the
stored one. (Full-vocabulary tempering would raise each tail token to 1/T instead; at k = V the two agree.)
Divergences (per token, summed over the support):

- `forward_kl`: KL(p‖q) — the paper's loss; it equals the soft cross-entropy −Σ p log q up to the
  teacher's entropy, a constant for the student, so gradients are identical.
- `reverse_kl`: KL(q‖p).
- `jsd`: generalised Jensen–Shannon with weight β: β·KL(p‖m) + (1−β)·KL(q‖m), m = β·p + (1−β)·q.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Σ a·(log a − log b) per row; outcomes where a = 0 contribute nothing (even if b = 0 too)."""
    a = log_a.exp()
    # Mask the inputs, not the product: −inf − −inf would put NaN into the backward pass.
    present = a > 0
    zero = torch.zeros_like(log_a)
    return (a * (torch.where(present, log_a, zero) - torch.where(present, log_b, zero))).sum(-1)


def divergence(teacher_logp: torch.Tensor, student_logp: torch.Tensor, kind: Divergence = "forward_kl",
               beta: float = 0.5) -> torch.Tensor:
    """Per-row divergence between two distributions given as log-probs over the same support."""
    if kind == "forward_kl":
        return _kl(teacher_logp, student_logp)
    if kind == "reverse_kl":
        return _kl(student_logp, teacher_logp)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd beta must be in (0, 1), got {beta}")
        log_m = torch.logaddexp(teacher_logp + math.log(beta), student_logp + math.log(1.0 - beta))
        return beta * _kl(teacher_logp, log_m) + (1.0 - beta) * _kl(student_logp, log_m)
    raise ValueError(f"unknown divergence {kind!r}")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x ≤ 0, stable at both ends.

    x is capped just below 0 so the result (a tail bucket's log-mass) stays finite with a finite gradient;
    a support that covers the whole vocabulary has no tail and does not call this.
    """
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def student_on_support(student_logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary student log-probs reduced to the teacher's top-k ids + a tail bucket: [N, k + 1]."""
    top = student_logp.gather(-1, ids)
    if ids.shape[-1] >= student_logp.shape[-1]:
        tail = torch.full_like(top[..., :1], float("-inf"))
    else:
        tail = log1mexp(torch.logsumexp(top, dim=-1, keepdim=True))
    return torch.cat([top, tail], dim=-1)


def temper(logp: torch.Tensor, temperature: float) -> torch.Tensor:
    """log of p^(1/T) renormalised over the last axis (the outcomes given, whatever they stand for)."""
    return logp if temperature == 1.0 else torch.log_softmax(logp / temperature, dim=-1)


def sparse_kd_loss(student_logits: torch.Tensor, ids: torch.Tensor, teacher_logp: torch.Tensor,
                   teacher_tail: torch.Tensor, temperature: float = 1.0, kind: Divergence = "forward_kl",
                   beta: float = 0.5, student_logp: torch.Tensor | None = None) -> torch.Tensor:
    """Summed divergence over N tokens against stored top-k teacher labels, scaled by T².

    student_logits [N, V]; ids, teacher_logp [N, k] and teacher_tail [N]: the taught distribution as stored.
    Both sides are re-tempered at the distillation temperature T on the k + 1 outcomes (module docstring).
    `student_logp` may pass log_softmax(student_logits) (at T = 1) when the caller already has it.
    """
    if student_logp is None:
        student_logp = torch.log_softmax(student_logits.float(), dim=-1)
    teacher = torch.cat([teacher_logp.float(), teacher_tail.float().unsqueeze(-1)], dim=-1)
    student = student_on_support(student_logp, ids.long())
    if ids.shape[-1] >= student_logp.shape[-1]:
        # No tail: drop the empty bucket, whose −inf on both sides would put NaN into tempering's backward.
        teacher, student = teacher[..., :-1], student[..., :-1]
    return divergence(temper(teacher, temperature), temper(student, temperature), kind,
                      beta).sum() * temperature**2


def dense_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                  kind: Divergence = "forward_kl", beta: float = 0.5, student_logp: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Summed divergence over N tokens against full teacher logits (online mode), scaled by T².

    `teacher_logits` are the taught ones (already divided by the calibration temperature); `student_logp`
    may pass log_softmax(student_logits / T) when the caller already has it.
    """
    teacher = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student = student_logp if student_logp is not None else torch.log_softmax(
        student_logits.float() / temperature, dim=-1)
    return divergence(teacher, student, kind, beta).sum() * temperature**2


def mixed_loss(nll_sum: torch.Tensor, kd_sum: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 − α)·NLL + α·KD. α is the direct weight of the KD term.

    The paper's released code takes a ratio r and trains with r / (1 + r); its "α = 0.1, 1, 10" therefore
    correspond to our α ≈ 0.091, 0.5, 0.909.
    """
    return (1.0 - alpha) * nll_sum + alpha * kd_sum
