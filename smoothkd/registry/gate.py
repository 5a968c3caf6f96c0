"""The promotion gate: every criterion judged on its own, with value, threshold and verdict on record.

A pure function of the candidates' metrics and per-example scores, so the same judgement runs in the
pipeline, in `smoothkd promote` and in tests. Comparisons with another model (the champion, the SFT
baseline) are paired: both models' per-example scores on the same example ids, bootstrapped together, and
only when both evaluations have one identity (`smoothkd.registry.identity`): the same rows, scorers,
settings and scoring code. A comparison without it fails, naming what differs.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from smoothkd.artifacts import EvaluatedModel, model_label
from smoothkd.config import UNRELIABLE_SUFFIX, EvalConfig, PromotionConfig
from smoothkd.registry.identity import EvalIdentity

PASS, FAIL = "pass", "fail"


@dataclass
class Candidate:
    """One evaluated model: flat metrics and, per split, per-example scores in `id` order, with the
    identity of the evaluation that produced them (None: unknown, comparable with nothing)."""

    name: str
    alpha: float
    metrics: dict[str, float]
    per_example: dict[str, dict[str, list]] = field(default_factory=dict)
    version: str | None = None
    identity: EvalIdentity | None = None

    @classmethod
    def from_summary(cls, summary: EvaluatedModel) -> Candidate:
        """The candidate an evaluated model summary (a pipeline step's output) describes."""
        return cls(model_label(summary.role), summary.alpha or 0.0, summary.metrics,
                   summary.per_example, identity=EvalIdentity.from_dict(summary.identity))

    def differences(self, other: Candidate, splits: list[str], metrics: list[str]) -> list[str]:
        """What keeps this evaluation from being paired with `other`'s on these splits and metrics."""
        if self.identity is None:
            return ["no recorded evaluation identity"]
        found = [d for split in splits for metric in metrics
                 for d in self.identity.differences(other.identity, split, metric)]
        return list(dict.fromkeys(found))


@dataclass
class ChampionEvaluation:
    """Which evaluation of the champion a decision was judged on: its own from the registry (`registry`),
    or a fresh one on the candidate's rows with its scorers (`re-evaluated`), and why."""

    version: str
    source: str
    differences: list[str] = field(default_factory=list)
    error: str = ""


def new_decision_id() -> str:
    """Unique and sortable by time: names the decision's immutable record files."""
    now = time.time()
    stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}.{int(now % 1 * 1e6):06d}Z"
    return f"{stamp}-{uuid.uuid4().hex[:12]}"


@dataclass
class Criterion:
    name: str
    value: float | None
    threshold: float | None
    verdict: str
    detail: str = ""


@dataclass
class Decision:
    candidate: str
    criteria: list[Criterion]
    primary_metric: str
    primary_value: float | None
    version: str | None = None
    champion: str | None = None  # the champion version judged against (None: there was none)
    champion_evaluation: ChampionEvaluation | None = None
    decision_id: str = field(default_factory=new_decision_id)
    primary_splits: list[str] = field(default_factory=list)  # the splits the primary value is the mean of

    @property
    def passed(self) -> bool:
        return all(c.verdict == PASS for c in self.criteria)

    @property
    def failed_criteria(self) -> list[str]:
        return [c.name for c in self.criteria if c.verdict != PASS]

    def to_record(self, **extra: Any) -> dict[str, Any]:
        """The JSON decision record: every criterion with its value, threshold and verdict."""
        return {"decision_id": self.decision_id, "candidate": self.candidate, "version": self.version,
                "passed": self.passed, "primary_metric": self.primary_metric,
                "primary_value": self.primary_value, "primary_splits": self.primary_splits,
                "champion_judged": self.champion,
                "champion_evaluation": asdict(self.champion_evaluation) if self.champion_evaluation else None,
                "criteria": [asdict(c) for c in self.criteria], **extra}


def primary_splits(primary: str, splits: list[str]) -> list[str]:
    """The splits whose mean `primary` is: none for a full metric name, every evaluation split for a bare
    one."""
    return [] if "/" in primary else list(splits)


def primary_value(metrics: dict[str, float], primary: str, splits: list[str]) -> float | None:
    """`primary` as a full metric name, or a bare name averaged over the evaluation splits."""
    if "/" in primary:
        return metrics.get(primary)
    values = [metrics.get(f"{split}/{primary}") for split in splits]
    return None if any(v is None for v in values) else sum(values) / len(values)


def describe_gate(promotion: PromotionConfig, splits: list[str]) -> str:
    """What the gate asks of a candidate and how the champion is chosen, in words (markdown)."""
    over = primary_splits(promotion.primary_metric, splits)
    primary = f"`{promotion.primary_metric}`" + (f" (mean over {', '.join(over)})" if over else "")
    asks = [f"ROUGE-Lsum above 0 on each of {', '.join(splits)}"]
    for split, floors in sorted(promotion.splits.items()):
        if floors.min_factual_consistency is not None:
            asks.append(f"{split} factual consistency ≥ {floors.min_factual_consistency:g} %")
        if floors.min_rougeLsum is not None:
            asks.append(f"{split} ROUGE-Lsum ≥ {floors.min_rougeLsum:g}")
    asks.append(f"no regression against the champion on {', '.join(promotion.regression_metrics)} beyond "
                f"{promotion.max_regression:g} points (paired bootstrap CI on the same examples)")
    if promotion.kd_not_worse_than_sft:
        asks.append("a KD student not worse than the SFT baseline on factual consistency")
    if promotion.min_general_rougeL is not None:
        asks.append(f"general ROUGE-L ≥ {promotion.min_general_rougeL:g}")
    if promotion.max_general_nll is not None:
        asks.append(f"general NLL ≤ {promotion.max_general_nll:g}")
    if promotion.max_ece is not None:
        asks.append(f"held-out ECE ≤ {promotion.max_ece:g}")
    if promotion.max_overconfidence is not None:
        asks.append(f"held-out overconfidence (confidence − accuracy) ≤ {promotion.max_overconfidence:g}")
    return (f"Alias `champion`: of a run's candidates passing the promotion gate, the one with the highest "
            f"{primary}. The gate asks for " + "; ".join(asks) + ".")


def _floor(name: str, value: float | None, threshold: float, at_least: bool = True) -> Criterion:
    if value is None:
        return Criterion(name, None, threshold, FAIL, "metric missing")
    ok = value >= threshold if at_least else value <= threshold
    return Criterion(name, value, threshold, PASS if ok else FAIL, ">=" if at_least else "<=")


def paired_difference(a: Candidate, b: Candidate, split: str, metric: str, eval_cfg: EvalConfig):
    """Bootstrap CI of mean(a − b) over the example ids both evaluated on `split`, or None if none shared."""
    from smoothkd.evaluation.bootstrap import paired_bootstrap_ci

    rows_a, rows_b = a.per_example.get(split, {}), b.per_example.get(split, {})
    if metric not in rows_a or metric not in rows_b:
        return None
    index_b = {i: n for n, i in enumerate(rows_b.get("id", []))}
    pairs = [(x, rows_b[metric][index_b[i]])
             for i, x in zip(rows_a.get("id", []), rows_a[metric], strict=True) if i in index_b]
    # An example can lack a value (e.g. no factual rate for an empty summary): pair only complete ones.
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    if not pairs:
        return None
    return paired_bootstrap_ci([x for x, _ in pairs], [y for _, y in pairs], eval_cfg.bootstrap_samples,
                               eval_cfg.confidence, eval_cfg.bootstrap_seed)


def _paired(name: str, a: Candidate, b: Candidate, split: str, metric: str, eval_cfg: EvalConfig,
            tolerance: float) -> Criterion:
    """The paired comparison of `a` with `b`, or a failure naming why their evaluations do not pair."""
    differences = a.differences(b, [split], [metric])
    if differences:
        return Criterion(name, None, -tolerance, FAIL, "not comparable: " + ", ".join(differences))
    return _comparison(name, paired_difference(a, b, split, metric, eval_cfg), tolerance)


def _comparison(name: str, ci, tolerance: float) -> Criterion:
    """Refuse a difference that is both beyond the tolerance on average and below zero with confidence.

    A plain "CI lower bound above −tolerance" (non-inferiority) would refuse the champion itself on a
    100-example split, whose paired CIs are several points wide; this rule refuses only regressions the
    data actually show.
    """
    if ci is None:
        return Criterion(name, None, -tolerance, FAIL, "no shared evaluation examples to compare on")
    worse = ci.high < 0 and ci.mean < -tolerance
    return Criterion(name, ci.mean, -tolerance, FAIL if worse else PASS,
                     f"paired CI [{ci.low:.2f}, {ci.high:.2f}]")


def judge(candidate: Candidate, promotion: PromotionConfig, eval_cfg: EvalConfig,
          champion: Candidate | None = None, sft: Candidate | None = None) -> Decision:
    """Judge one candidate against the configured floors, the current champion and the SFT baseline."""
    criteria: list[Criterion] = []
    m = candidate.metrics
    for split, floors in sorted(promotion.splits.items()):
        if floors.min_factual_consistency is not None:
            name = f"{split}/factual_consistency"
            criteria.append(_floor(name, m.get(name), floors.min_factual_consistency))
        if floors.min_rougeLsum is not None:
            name = f"{split}/rougeLsum"
            criteria.append(_floor(name, m.get(name), floors.min_rougeLsum))
    for split in eval_cfg.splits:
        # Whatever the floors: a student whose summaries share no word with any reference says nothing,
        # and must not win on a consistency score that an empty summary cannot contradict. (The name is
        # recorded as an MLflow tag key, hence no ">".)
        name = f"{split}/rougeLsum"
        value = m.get(name)
        criteria.append(Criterion(f"{name} above 0", value, 0.0, PASS if value else FAIL,
                                  "metric missing" if value is None else ">"))
    if champion is not None and champion.version != candidate.version:
        for split in eval_cfg.splits:
            for metric in promotion.regression_metrics:
                # A rate from a detector below its AUROC floor judges nothing (smoothkd.config).
                if any(f"{split}/{metric}{UNRELIABLE_SUFFIX}" in c.metrics for c in (candidate, champion)):
                    continue
                criteria.append(_paired(f"{split}/{metric} vs champion v{champion.version}", candidate,
                                        champion, split, metric, eval_cfg, promotion.max_regression))
    if promotion.kd_not_worse_than_sft and sft is not None and candidate.alpha > 0:
        for split in eval_cfg.splits:
            criteria.append(_paired(f"{split}/factual_consistency vs sft", candidate, sft, split,
                                    "factual_consistency", eval_cfg, 0.0))
    if promotion.min_general_rougeL is not None:
        criteria.append(_floor("general/rougeL", m.get("general/rougeL"), promotion.min_general_rougeL))
    # Ceilings, the held-out calibration among them: a KD student can be more overconfident than its SFT
    # baseline, which no faithfulness score shows.
    for name, ceiling in (("general/nll", promotion.max_general_nll), ("general/ece", promotion.max_ece),
                          ("general/overconfidence", promotion.max_overconfidence)):
        if ceiling is not None:
            criteria.append(_floor(name, m.get(name), ceiling, at_least=False))
    return Decision(candidate.name, criteria, promotion.primary_metric,
                    primary_value(m, promotion.primary_metric, eval_cfg.splits), candidate.version,
                    champion.version if champion is not None else None,
                    primary_splits=primary_splits(promotion.primary_metric, eval_cfg.splits))


def best_passing(decisions: list[Decision]) -> Decision | None:
    """The passing decision with the highest primary value (first wins a tie), or None."""
    passing = [d for d in decisions if d.passed and d.primary_value is not None]
    return max(passing, key=lambda d: d.primary_value, default=None)
