"""How confidently a model states the facts of its summaries, apart for facts its source supports and not.

The paper's mechanism is that one-hot labels make a student overconfident, and an overconfident student
states what its input does not support. Held-out calibration (`general/ece`, `general/overconfidence`)
measures the first half on reference tokens; this measures it where the hallucinations are: on the
facts the model itself wrote. A student that invents an entity with probability 0.9 is "confidently
wrong"; a calibrated one should hesitate where its source gives it nothing to copy.

A fact's confidence is the probability the model gave, at the step that chose it, to the generated token
covering the fact's first character (its first mention): that token decides which entity, number or date
is stated, and the rest of a multi-token fact is a near-deterministic completion. Per summary, the mean
over its unsupported facts and the mean over its supported ones, each None when it has no such fact.
"""

from __future__ import annotations

import numpy as np

from smoothkd.evaluation.facts import Fact, FactCheck
from smoothkd.evaluation.lookback import span_tokens


def fact_confidence(fact: Fact, offsets: list[tuple[int, int]], probs: np.ndarray) -> float | None:
    """The probability of the first token covering `fact`'s first character; None when no token does.

    `offsets` are the tokens' character spans in the summary (`lookback.token_offsets`) and `probs` their
    probabilities (`generation.Generation.probs`).
    """
    start = fact.spans[0][0]
    first, last = span_tokens(offsets, start, start + 1)
    return float(probs[first]) if last > first else None


def _mean_confidence(facts: list[Fact], offsets: list[tuple[int, int]], probs: np.ndarray) -> float | None:
    values = [c for c in (fact_confidence(f, offsets, probs) for f in facts) if c is not None]
    return float(np.mean(values)) if values else None


def fact_confidences(check: FactCheck, offsets: list[tuple[int, int]], probs: np.ndarray
                     ) -> tuple[float | None, float | None]:
    """(mean confidence of the unsupported facts, of the supported ones) of one summary's `check`."""
    supported = [f for f in check.facts if f.supported]
    return _mean_confidence(check.unsupported, offsets, probs), _mean_confidence(supported, offsets, probs)
