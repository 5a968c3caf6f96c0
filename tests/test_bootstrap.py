"""Intervals: bootstrap CIs (reproducibility, coverage, pairing); the seeds × examples t-interval against hand
computations, scipy and a simulation of the null; Holm; power; and ROUGE against `rouge_score` directly."""

import numpy as np
import pytest
from rouge_score import rouge_scorer
from scipy import stats

from smoothkd.evaluation import bootstrap
from smoothkd.evaluation.bootstrap import CI, bootstrap_ci, ci_metrics, paired_bootstrap_ci
from smoothkd.evaluation.rouge import rouge, rouge_per_example
from smoothkd.evaluation.seeds import EXAMPLES_ONLY, SEEDS_AND_EXAMPLES, SEEDS_ONLY, holm, seed_example_ci


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


# ---- seeds × examples ----


def test_seed_example_interval_by_hand():
    # Seed means 1, 3, 5 (s² = 4, seed term 4/3); example means 2, 4 around 3, so MS_example = 3·2/1 = 6;
    # no residual (MS_residual = 0): example term σ²_b/N = (6/3)/2 = 1. V = 7/3; Satterthwaite df =
    # (7/3)² / ((4/3)²/2 + 6²/(3·2)²/1) = 49/17.
    ci = seed_example_ci([[0.0, 2.0], [2.0, 4.0], [4.0, 6.0]], confidence=0.95)
    half = stats.t.ppf(0.975, 49 / 17) * np.sqrt(7 / 3)
    assert (ci.mean, ci.se, ci.df) == pytest.approx((3.0, np.sqrt(7 / 3), 49 / 17))
    assert (ci.low, ci.high) == pytest.approx((3.0 - half, 3.0 + half))
    assert ci.p_value() == pytest.approx(2 * stats.t.sf(3.0 / np.sqrt(7 / 3), 49 / 17))
    assert ci.seed_means == (1.0, 3.0, 5.0) and ci.examples == 2 and ci.covers == SEEDS_AND_EXAMPLES


def test_one_value_per_seed_and_one_seed_are_plain_t_intervals():
    values = np.array([1.0, 2.5, 4.0, -0.5])
    expected = stats.ttest_1samp(values, 0.0)
    aggregate = seed_example_ci(values[:, None], confidence=0.9)
    interval = expected.confidence_interval(0.9)
    assert (aggregate.low, aggregate.high) == pytest.approx((interval.low, interval.high))
    assert aggregate.p_value() == pytest.approx(expected.pvalue) and aggregate.covers == SEEDS_ONLY
    one_seed = seed_example_ci(values[None, :], confidence=0.9)
    assert (one_seed.low, one_seed.high) == pytest.approx((interval.low, interval.high))
    assert one_seed.covers == EXAMPLES_ONLY
    assert one_seed.detectable(0.9) is None and one_seed.seeds_to_resolve(1.0, 0.9) is None


def test_seeds_that_agree_do_not_hide_the_shared_example_noise():
    # Three seeds with the same per-example differences: a t-interval on the per-seed means has width 0,
    # but the examples are a sample too.
    row = np.random.default_rng(4).normal(1.0, 10.0, 50)
    ci = seed_example_ci(np.stack([row, row, row]))
    expected = stats.ttest_1samp(row, 0.0).confidence_interval(0.95)
    assert (ci.low, ci.high) == pytest.approx((expected.low, expected.high), rel=1e-6)


def test_missing_values_drop_the_example_from_every_seed():
    table = np.array([[1.0, 2.0, 9.0, 4.0], [2.0, 3.0, np.nan, 1.0], [0.0, 5.0, 7.0, 2.0]])
    assert seed_example_ci(table) == seed_example_ci(table[:, [0, 1, 3]])
    assert seed_example_ci(table).examples == 3
    with pytest.raises(ValueError, match="every seed"):
        seed_example_ci([[np.nan, 1.0], [2.0, np.nan]])
    with pytest.raises(ValueError, match="finite"):
        seed_example_ci([[np.inf, 1.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="one seed and one value"):
        seed_example_ci([[1.0]])
    identical = seed_example_ci(np.zeros((3, 5)))  # identical arms: nothing to see, no power to judge
    assert identical.p_value() == 1.0 and identical.detectable(0.95) is None
    assert identical.seeds_to_resolve(1.4, 0.95) is None


def _noise(kind: str, rng: np.random.Generator, seeds: int, examples: int) -> np.ndarray:
    """Paired differences with no effect: seed + shared example + residual terms."""
    if kind == "seed":
        seed, example, residual = rng.normal(0, 4, seeds), rng.normal(0, 3, examples), 20.0
    elif kind == "example":
        seed, example, residual = rng.normal(0, 0.2, seeds), rng.normal(0, 25, examples), 5.0
    else:  # heavy tails: t with 3 df at every level
        seed, example, residual = 2 * rng.standard_t(3, seeds), 10 * rng.standard_t(3, examples), None
    noise = (20 * rng.standard_t(3, (seeds, examples)) if residual is None
             else residual * rng.standard_normal((seeds, examples)))
    return seed[:, None] + example[None, :] + noise


@pytest.mark.parametrize("kind", ["seed", "example", "heavy"])
@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_false_kd_helps_rate_and_coverage_in_simulation(kind, seeds):
    # 1000 null tables: at a true rate of 2.5 % the Monte Carlo SE is 0.5 points, so the 5 % bound sits
    # 5 SE above nominal; 500 tables with a +2 effect: coverage SE ≈ 1 point at 95 %, the 90 % bound 5 SE
    # below. A t-interval on per-seed means alone fails the "example" rows (measured: 31-43 % false
    # "KD helps"), the earlier hierarchical bootstrap the "seed" and "example" rows at 3 and 5 seeds.
    rng = np.random.default_rng(100 * seeds + len(kind))
    false = sum(seed_example_ci(_noise(kind, rng, seeds, 100)).low > 0 for _ in range(1000))
    assert false / 1000 <= 0.05
    effect = 2.0
    covered = 0
    for _ in range(500):
        ci = seed_example_ci(effect + _noise(kind, rng, seeds, 100))
        covered += ci.low <= effect <= ci.high
    assert covered / 500 >= 0.90


def test_aggregate_metric_false_rate_in_simulation():
    # One heavy-tailed value per seed (e.g. an ECE difference): the seed-level t-interval; SE as above.
    rng = np.random.default_rng(7)
    for seeds in (3, 5, 10):
        false = sum(seed_example_ci(rng.standard_t(3, (seeds, 1))).low > 0 for _ in range(1000))
        assert false / 1000 <= 0.05


def test_holm_by_hand():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04; then running maxima.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_detectable_difference_has_the_stated_power():
    # Ten seeds, one value each: the exact power of the t-test at the reported difference (noncentral t)
    # is 80 %; a z-based or one-sided formula would miss it by several points.
    values = np.random.default_rng(5).normal(0, 2, (10, 1))
    ci = seed_example_ci(values)
    mde = ci.detectable(0.95)
    critical = stats.t.ppf(0.975, 9)
    power = stats.nct.sf(critical, 9, mde / ci.se) + stats.nct.cdf(-critical, 9, mde / ci.se)
    assert power == pytest.approx(0.80, abs=0.02)
    # The seeds to resolve an effect: the first count whose projected detectable difference reaches it.
    sd = values.std(ddof=1)
    needed = ci.seeds_to_resolve(1.0, 0.95)

    def resolvable(n):
        return (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / np.sqrt(n)

    assert resolvable(needed) <= 1.0 < resolvable(needed - 1)


def test_no_number_of_seeds_beats_the_shared_example_noise():
    rng = np.random.default_rng(6)
    row = rng.normal(0, 30, 40)  # σ_b/√N ≈ 4.7 points: 80 % power needs ≥ 2.8 × that, whatever S
    table = row[None, :] + rng.normal(0, 0.5, (4, 1)) + rng.normal(0, 1, (4, 40))
    ci = seed_example_ci(table)
    assert ci.seeds_to_resolve(1.4, 0.95) is None
    assert ci.seeds_to_resolve(3 * ci.detectable(0.95), 0.95) <= 4


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
