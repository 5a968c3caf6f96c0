"""Percentile-bootstrap confidence intervals for per-example metrics, single and paired (numpy, vectorised).

Resamples are drawn in blocks so memory stays bounded (about `_BLOCK_ELEMENTS` indices at a time) for any
number of examples. The reported mean is the sample mean; the bounds are percentiles of the resampled means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_BLOCK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class CI:
    """A sample mean and its confidence interval."""

    mean: float
    low: float
    high: float


def _as_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise ValueError("bootstrap needs at least one value")
    if not np.isfinite(array).all():
        raise ValueError("bootstrap values must be finite")
    return array


def _resampled_means(x: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = x.size
    per_block = max(1, _BLOCK_ELEMENTS // n)
    means = [x[rng.integers(0, n, size=(min(per_block, n_resamples - done), n))].mean(axis=1)
             for done in range(0, n_resamples, per_block)]
    return np.concatenate(means)


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 10) -> CI:
    """Mean of `values` with its percentile-bootstrap CI at `confidence` (same seed, same interval)."""
    x = _as_array(values)
    means = _resampled_means(x, n_resamples, seed)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return CI(float(x.mean()), float(low), float(high))


def paired_bootstrap_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                        n_resamples: int = 1000, confidence: float = 0.95, seed: int = 10) -> CI:
    """CI of mean(a − b) over the same examples: each resample draws one index set for both systems."""
    x, y = _as_array(a), _as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"paired bootstrap needs equal lengths, got {x.size} and {y.size}")
    return bootstrap_ci(x - y, n_resamples, confidence, seed)


def ci_metrics(name: str, values: Sequence[float] | np.ndarray, n_resamples: int = 1000,
               confidence: float = 0.95, seed: int = 10) -> dict[str, float]:
    """Flat metrics `{name: mean, name_ci_low: ..., name_ci_high: ...}`, e.g. `cnndm/factual_consistency`."""
    ci = bootstrap_ci(values, n_resamples, confidence, seed)
    return {name: ci.mean, f"{name}_ci_low": ci.low, f"{name}_ci_high": ci.high}

