"""Sampled teacher labels: a sparse label whose KD gradient is, in expectation, the full-distribution one.

Per response token, S tokens are drawn with replacement from p = softmax(t / T). The pipeline draws from
the taught distribution (the teacher at its calibration temperature) and, since draws cannot be re-
tempered later, runs them at distill.temperature 1 (the config refuses another); T here is for callers
that draw from a tempered teacher themselves. The stored label is the S draws themselves, sorted (a token
drawn c times appears c times, so the ids carry the counts; no values are stored). The loss is the
student's cross-entropy against the draws' empirical distribution, with the student normalised over the
whole vocabulary:

    L̂ = −T² · Σ_s w_s · log q(x_s),   q = softmax(z / T),   w_s = 1 / S.

Over the draws, E[L̂] = −T² · Σ_v p_v log q_v: forward KL(p‖q) plus the teacher's entropy, a constant for
the student. Its gradient with respect to the student's logits, T · (q − counts / S), therefore has the
expectation T · (q − p), exactly the dense forward-KL gradient; stored top-k labels with a tail bucket are
deterministic and keep their bias (the tail mass goes where the student, not the teacher, puts it). The
loss value is the cross-entropy estimate, so it sits above a KL by the teacher's entropy.

Only forward KL: reverse KL and JSD weigh the teacher's log-probabilities by the student's own
probabilities over every token, which no sample of the teacher estimates without bias.

Size: S ids per token, bit-packed like top-k ids: S · ⌈log2 V⌉ / 8 bytes (24 draws at V = 1,024: 30 B;
compact top-16 with its values and tail: 37 B).
A shard's draws come from a generator seeded by the store key, the shard and the batch, so recomputing a
shard (a resumed precompute) draws the same tokens for the same batch size.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def draw(logp: torch.Tensor, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """S draws per row of teacher log-probs [n, V]: (sorted ids [n, S], log p of each distinct id [n, S]).

    The second tensor is −inf on repeats, so its exp() sums to the teacher mass the draws covered.
    """
    generator = torch.Generator(device=logp.device).manual_seed(seed)
    ids = torch.multinomial(logp.exp(), samples, replacement=True, generator=generator).sort(dim=-1).values
    first = torch.ones_like(ids, dtype=torch.bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    covered = torch.where(first, logp.gather(-1, ids), torch.full_like(ids, float("-inf"), dtype=logp.dtype))
    return ids.cpu(), covered.cpu()


def decode(ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [n, S], log-weights [n, S], tail [n]) in the shape top-k labels are served in.

    Each draw weighs 1 / S; there is no tail bucket (−inf), as the loss normalises over the vocabulary.
    """
    ids = torch.from_numpy(ids.astype(np.int64))
    return ids, torch.full(ids.shape, -math.log(ids.shape[-1])), torch.full(ids.shape[:-1], float("-inf"))


def sampled_kd_loss(student_logits: torch.Tensor, ids: torch.Tensor, log_weights: torch.Tensor,
                    temperature: float = 1.0, student_logp: torch.Tensor | None = None) -> torch.Tensor:
    """Summed sampled forward-KL estimate over N tokens (cross-entropy form), scaled by T².

    student_logits [N, V]; ids, log_weights [N, S] (the draws and their weights, Σ_s w = 1 per token).
    `student_logp` may pass log_softmax(student_logits / T) when the caller already has it.
    """
    if student_logp is None:
        student_logp = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    picked = student_logp.gather(-1, ids.long())
    return -(log_weights.float().exp() * picked).sum() * temperature**2
