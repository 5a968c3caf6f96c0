"""The α × seed ablation's statistics: KD − SFT per α and split, over training seeds, and its conclusion.

Every KD student is compared with the SFT baseline trained with the same seed, on the same examples
(paired by example id). The mean is taken over seeds of each seed's mean paired difference; its interval
is a hierarchical bootstrap (seeds, then examples within each seed), so it covers both the variation a new
training seed brings and the variation of the evaluation examples. A metric the evaluation gives only as
an aggregate (no per-example column, e.g. a calibration error over tokens) gets an interval over seeds
alone, and says so in `covers`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from smoothkd.artifacts import Evaluation
from smoothkd.config import EvalConfig
from smoothkd.evaluation.bootstrap import hierarchical_bootstrap_ci
from smoothkd.report import PER_EXAMPLE

# (metric, label) in report order; a metric the evaluation does not give (older evaluations have no
# prior-trap rate or student ECE) is left out of the summary rather than reported as missing.
COMPARED = (("factual_consistency", "fact. consist. %"), ("rougeLsum", "ROUGE-Lsum"),
            ("hallucinated_facts_per_summary", "unsupported/summary"), ("prior_trap_rate", "prior-trap rate"),
            ("ece", "student ECE"))
CONSISTENCY = "factual_consistency"
KD_HELPS = "KD reduces hallucination here"
SEEDS_AND_EXAMPLES, SEEDS_ONLY = "seeds and examples", "seeds"


@dataclass(frozen=True)
class Difference:
    """KD − SFT for one α, split and metric: mean over seeds, its CI, and every seed's own difference."""

    alpha: float
    split: str
    metric: str
    mean: float
    low: float
    high: float
    per_seed: dict[int, float]
    examples_per_seed: dict[int, int]
    covers: str


@dataclass(frozen=True)
class SweepModel:
    """One trained model of the sweep: its name, α (None: the teacher), seed and MLflow run."""

    name: str
    alpha: float | None
    seed: int | None
    path: str
    run_id: str
    cached: bool
    metrics: dict[str, float]


@dataclass
class SweepSummary:
    """The sweep's record: what ran, every model, every KD − SFT difference and the conclusions."""

    config: str
    run_name: str
    run_id: str
    seeds: list[int]
    alphas: list[float]
    confidence: float
    teacher_temperature: float
    models: list[SweepModel]
    differences: list[Difference]
    conclusions: dict[str, dict[str, str]] = field(default_factory=dict)
    chart: str = ""
    summary_file: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON form: `differences` and `conclusions` nested as {kd_a<α>: {split: {metric: ...}}}."""
        nested: dict[str, dict[str, dict]] = {}
        for d in self.differences:
            record = {k: v for k, v in asdict(d).items() if k not in ("alpha", "split", "metric")}
            nested.setdefault(kd_name(d.alpha), {}).setdefault(d.split, {})[d.metric] = record
        return {**{k: v for k, v in asdict(self).items() if k not in ("differences", "models")},
                "models": [asdict(m) for m in self.models], "differences": nested}


def kd_name(alpha: float) -> str:
    return f"kd_a{alpha:g}"


def _paired(kd: dict[str, list], sft: dict[str, list], column: str) -> list[float]:
    """Per-example KD − SFT over the ids both have a value for."""
    index = {i: n for n, i in enumerate(sft["id"])}
    return [x - sft[column][index[i]] for i, x in zip(kd["id"], kd[column], strict=True)
            if i in index and x is not None and sft[column][index[i]] is not None]


def _groups(kd: dict[int, Evaluation], sft: dict[int, Evaluation], split: str, metric: str
            ) -> tuple[dict[int, list[float]], str] | None:
    """Per seed, the values whose mean is that seed's difference (per-example when the evaluation keeps a
    column for the metric, else the one aggregate difference); None when some seed lacks the metric."""
    name, column = f"{split}/{metric}", PER_EXAMPLE.get(metric, metric)
    runs = [kd[s] for s in kd] + [sft[s] for s in kd]
    if any(name not in e.metrics for e in runs):
        return None
    if all(column in e.per_example.get(split, {}) for e in runs):
        groups = {s: _paired(kd[s].per_example[split], sft[s].per_example[split], column) for s in kd}
        return (groups, SEEDS_AND_EXAMPLES) if all(groups.values()) else None
    return {s: [kd[s].metrics[name] - sft[s].metrics[name]] for s in kd}, SEEDS_ONLY


def _splits(evaluation: Evaluation) -> list[str]:
    """The metric prefixes (cnndm, xsum, general, ...) in first-seen order."""
    return list(dict.fromkeys(name.split("/", 1)[0] for name in evaluation.metrics if "/" in name))


def kd_minus_sft(evaluations: dict[float, dict[int, Evaluation]], e: EvalConfig) -> list[Difference]:
    """Every compared metric the evaluations give, per KD α and split: KD − SFT over the same seeds.

    `evaluations` maps α (0 = the SFT baseline) to seed to that student's evaluation.
    """
    sft = evaluations[0.0]
    seeds = sorted(sft)
    differences = []
    for alpha in sorted(a for a in evaluations if a):
        kd = {s: evaluations[alpha][s] for s in seeds}
        for split in _splits(sft[seeds[0]]):
            for metric, _ in COMPARED:
                found = _groups(kd, sft, split, metric)
                if found is None:
                    continue
                groups, covers = found
                ci = hierarchical_bootstrap_ci([groups[s] for s in seeds], e.bootstrap_samples, e.confidence,
                                               e.bootstrap_seed)
                differences.append(Difference(
                    alpha, split, metric, ci.mean, ci.low, ci.high,
                    per_seed={s: sum(groups[s]) / len(groups[s]) for s in seeds},
                    examples_per_seed={s: len(groups[s]) for s in seeds}, covers=covers))
    return differences


def conclusion(consistency: Difference, confidence: float) -> str:
    """What the CI of KD − SFT factual consistency supports: `KD_HELPS` only when it lies above 0."""
    shown = (f"{consistency.mean:+.2f} points, {confidence:.0%} CI {consistency.low:+.2f} to "
             f"{consistency.high:+.2f} over {len(consistency.per_seed)} seeds")
    if consistency.low > 0:
        return f"{KD_HELPS}: factual consistency {shown}"
    if consistency.high < 0:
        return f"KD lowers factual consistency here: {shown}"
    return f"no difference resolved: the CI of factual consistency ({shown}) includes 0"


def conclusions(differences: list[Difference], confidence: float) -> dict[str, dict[str, str]]:
    """{kd_a<α>: {split: conclusion}} for every α and split with a factual-consistency difference."""
    out: dict[str, dict[str, str]] = {}
    for d in differences:
        if d.metric == CONSISTENCY:
            out.setdefault(kd_name(d.alpha), {})[d.split] = conclusion(d, confidence)
    return out


def differences_table(summary: SweepSummary):
    """One row per (split, α): each compared metric's KD − SFT mean (CI), a seeds-only CI marked †, and
    every seed's own consistency difference."""
    from rich.table import Table

    present = [(m, label) for m, label in COMPARED if any(d.metric == m for d in summary.differences)]
    table = Table(title=f"KD − SFT over seeds {', '.join(map(str, summary.seeds))}: mean "
                        f"({summary.confidence:.0%} CI over seeds and examples; † over seeds only)")
    table.add_column("split")
    table.add_column("α", justify="right")
    for _, label in present:
        table.add_column(label, justify="right", overflow="fold")
    table.add_column("consistency, each seed", justify="right", overflow="fold")
    cells = {(d.split, d.alpha, d.metric): d for d in summary.differences}
    splits = list(dict.fromkeys(d.split for d in summary.differences))
    for split in splits:
        alphas = sorted({d.alpha for d in summary.differences if d.split == split})
        for i, alpha in enumerate(alphas):
            row = []
            for metric, _ in present:
                d = cells.get((split, alpha, metric))
                row.append("-" if d is None else f"{d.mean:+.2f} ({d.low:+.2f}–{d.high:+.2f})"
                           + ("†" if d.covers == SEEDS_ONLY else ""))
            consistency = cells.get((split, alpha, CONSISTENCY))
            each = ", ".join(f"{v:+.2f}" for v in consistency.per_seed.values()) if consistency else "-"
            table.add_row(split, f"{alpha:g}", *row, each, end_section=i == len(alphas) - 1)
    return table
