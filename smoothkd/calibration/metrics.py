"""Calibration metrics streamed over batches of next-token logits.

Each batch contributes sufficient statistics (per-bin counts and sums, summed NLL and Brier) plus one
(confidence, correct) pair per token for the equal-mass bins, so memory grows with tokens, never with
tokens × vocabulary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class CalibrationMetrics:
    """Top-label calibration of next-token predictions, plus the per-bin data of the reliability diagram."""

    ece: float
    adaptive_ece: float
    brier: float
    nll: float
    accuracy: float
    confidence: float
    overconfidence: float
    n_tokens: int
    temperature: float
    bin_counts: list[int]
    bin_accuracy: list[float]
    bin_confidence: list[float]

    def scalars(self) -> dict[str, float]:
        """The headline numbers (no per-bin lists), e.g. for MLflow metrics."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("bin_")}


def widen(logits: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16 softmax is too coarse for ECE); float64 input stays float64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class CalibrationAccumulator:
    """Accumulates calibration statistics of `softmax(logits / temperature)` over batches of tokens."""

    def __init__(self, n_bins: int = 15, temperature: float = 1.0) -> None:
        self.n_bins = n_bins
        self.temperature = temperature
        self.counts = torch.zeros(n_bins, dtype=torch.float64)
        self.conf_sums = torch.zeros(n_bins, dtype=torch.float64)
        self.correct_sums = torch.zeros(n_bins, dtype=torch.float64)
        self.nll_sum = 0.0
        self.brier_sum = 0.0
        self.n_tokens = 0
        self._confidences: list[torch.Tensor] = []
        self._correct: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add `logits` (tokens × vocab) whose true next tokens are `targets` (tokens,)."""
        if targets.numel() == 0:
            return
        log_probs = torch.log_softmax(widen(logits) / self.temperature, dim=-1)
        targets = targets.to(log_probs.device)
        probs = log_probs.exp()
        log_p_true = log_probs.gather(-1, targets[:, None]).squeeze(-1)
        confidence, predicted = probs.max(dim=-1)
        correct = (predicted == targets).to(torch.float64).cpu()
        confidence = confidence.to(torch.float64).cpu()
        # Brier over the full vocabulary: sum_j (p_j - onehot_j)^2 = sum_j p_j^2 - 2 p_y + 1.
        brier = (probs * probs).sum(-1) - 2 * log_p_true.exp() + 1
        self.nll_sum += float(-log_p_true.double().sum())
        self.brier_sum += float(brier.double().sum())
        self.n_tokens += targets.numel()
        bins = (confidence * self.n_bins).long().clamp_(0, self.n_bins - 1)
        self.counts += torch.bincount(bins, minlength=self.n_bins).double()
        self.conf_sums.index_add_(0, bins, confidence)
        self.correct_sums.index_add_(0, bins, correct)
        self._confidences.append(confidence)
        self._correct.append(correct.bool())

    def compute(self) -> CalibrationMetrics:
        """Metrics over every token seen so far; none is an error (its zeros would read as perfect)."""
        if self.n_tokens == 0:
            raise ValueError("calibration metrics of no token: callers check that their data has responses")
        n = self.n_tokens
        filled = self.counts.clamp(min=1)
        bin_acc = self.correct_sums / filled
        bin_conf = self.conf_sums / filled
        ece = float((self.counts / n * (bin_acc - bin_conf).abs()).sum())
        accuracy = float(self.correct_sums.sum()) / n
        confidence = float(self.conf_sums.sum()) / n
        return CalibrationMetrics(
            ece=ece, adaptive_ece=self._adaptive_ece(), brier=self.brier_sum / n, nll=self.nll_sum / n,
            accuracy=accuracy, confidence=confidence, overconfidence=confidence - accuracy,
            n_tokens=self.n_tokens, temperature=self.temperature,
            bin_counts=[int(c) for c in self.counts], bin_accuracy=bin_acc.tolist(),
            bin_confidence=bin_conf.tolist(),
        )

    def _adaptive_ece(self) -> float:
        """ECE over equal-mass bins: tokens sorted by confidence, cut into n_bins near-equal groups."""
        conf = torch.cat(self._confidences)
        correct = torch.cat(self._correct).double()
        order = torch.sort(conf, stable=True).indices
        total = 0.0
        for idx in torch.tensor_split(order, min(self.n_bins, len(order))):
            total += len(idx) * abs(float(correct[idx].mean() - conf[idx].mean()))
        return total / len(order)
