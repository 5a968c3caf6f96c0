"""Bootstrap CIs (reproducibility, coverage, pairing) and ROUGE against `rouge_score` called directly."""

import numpy as np
import pytest
from rouge_score import rouge_scorer

from smoothkd.evaluation import bootstrap
from smoothkd.evaluation.bootstrap import CI, bootstrap_ci, ci_metrics, paired_bootstrap_ci
from smoothkd.evaluation.rouge import rouge, rouge_per_example


def test_same_seed_same_interval_other_seed_other_interval():
    values = np.random.default_rng(0).normal(50, 10, size=200)
    first = bootstrap_ci(values, n_resamples=500, seed=3)
    assert bootstrap_ci(values, n_resamples=500, seed=3) == first
    other = bootstrap_ci(values, n_resamples=500, seed=4)
    assert (other.low, other.high) != (first.low, first.high)
    assert other.mean == first.mean == pytest.approx(values.mean())
    assert first.low < first.mean < first.high
    # Wider confidence, wider interval; the half-width is close to 1.96 standard errors.
    wide = bootstrap_ci(values, n_resamples=500, confidence=0.99, seed=3)
    assert wide.low < first.low and wide.high > first.high
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert (first.high - first.low) / 2 == pytest.approx(1.96 * se, rel=0.15)


def test_intervals_cover_the_true_mean_at_the_nominal_rate():
    rng = np.random.default_rng(12)
    covered = 0
    for trial in range(100):
        sample = rng.exponential(scale=2.0, size=80)  # skewed, true mean 2.0
        ci = bootstrap_ci(sample, n_resamples=1000, confidence=0.95, seed=trial)
        covered += ci.low <= 2.0 <= ci.high
    assert covered >= 90


def test_blocked_resampling_matches_one_block(monkeypatch):
    values = np.arange(30, dtype=float)
    whole = bootstrap_ci(values, n_resamples=257, seed=5)
    monkeypatch.setattr(bootstrap, "_BLOCK_ELEMENTS", 30 * 16)  # 16 resamples per block
    assert bootstrap_ci(values, n_resamples=257, seed=5) == whole


def test_paired_bootstrap_resamples_the_same_examples():
    rng = np.random.default_rng(1)
    difficulty = rng.normal(0, 20, size=300)  # shared per-example variation dominates each system
    a = difficulty + 1.0 + rng.normal(0, 1, size=300)
    b = difficulty + rng.normal(0, 1, size=300)
    paired = paired_bootstrap_ci(a, b, seed=2)
    assert paired.mean == pytest.approx(np.mean(a - b))
    assert 0 < paired.low < paired.mean < paired.high  # the shared variation cancels
    # Resampling the systems independently would not see that: its interval straddles zero.
    independent = bootstrap_ci(a, seed=2).low - bootstrap_ci(b, seed=3).high
    assert independent < 0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap_ci([1.0, 2.0], [1.0])


def test_ci_metrics_flat_names_and_degenerate_inputs():
    metrics = ci_metrics("cnndm/factual_consistency", [80.0, 90.0, 100.0], seed=1)
    assert set(metrics) == {"cnndm/factual_consistency", "cnndm/factual_consistency_ci_low",
                            "cnndm/factual_consistency_ci_high"}
    assert metrics["cnndm/factual_consistency"] == pytest.approx(90.0)
    assert 80.0 <= metrics["cnndm/factual_consistency_ci_low"] <= 90.0 <= metrics[
        "cnndm/factual_consistency_ci_high"] <= 100.0
    assert bootstrap_ci([7.0]) == CI(7.0, 7.0, 7.0)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])


PAIRS = [
    ("the cat sat on the mat", "the cat sat"),
    ("The bank employs 800 people.\nAda Quinn was named chief executive.",
     "Ada Quinn was named chief executive and the bank employs 800 people."),
    ("Revenue rose 12 percent in Lisbon.", "Oslo sales fell."),
    ("Northwind Bank agreed to buy Acme Robotics for 3.5 million euros.",
     "Northwind Bank will buy Acme Robotics in a deal worth 3.5 million euros."),
]


def test_rouge_matches_rouge_score_directly():
    references, predictions = zip(*PAIRS, strict=True)
    ours = rouge_per_example(list(predictions), list(references))
    scorer = rouge_scorer.RougeScorer(["rougeL", "rougeLsum"], use_stemmer=False)
    for i, (reference, prediction) in enumerate(PAIRS):
        direct = scorer.score(reference, prediction)
        assert ours["rougeL"][i] == pytest.approx(100 * direct["rougeL"].fmeasure)
        assert ours["rougeLsum"][i] == pytest.approx(100 * direct["rougeLsum"].fmeasure)
    # By hand: LCS("the cat sat", "the cat sat on the mat") = 3, P = 1, R = 1/2, F1 = 2/3.
    assert ours["rougeL"][0] == pytest.approx(200 / 3)
    # rougeLsum takes the union LCS over the reference's newline-split sentences, so sentence order does
    # not matter: every reference token is matched (R = 1), while rougeL's single LCS misses one sentence.
    assert ours["rougeLsum"][1] == pytest.approx(100 * 2 * (11 / 12) / (1 + 11 / 12))
    assert ours["rougeL"][1] < 60
    assert ours["rougeL"][2] == 0.0
    means = rouge(list(predictions), list(references))
    assert means["rougeL"] == pytest.approx(np.mean(ours["rougeL"]))
