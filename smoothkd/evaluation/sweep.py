"""The α × seed ablation's statistics: each compared arm − SFT per split, over training seeds and examples,
and what it lets the sweep conclude.

Every arm (a KD α, or for an A/A check a second SFT arm) is compared with the SFT baseline trained with the
same seed, on the same examples: a [seeds, examples] table of paired differences per (arm, split, metric),
rows matched by example id, analysed by `seed_example_ci` (seeds and examples crossed; a metric the
evaluation gives only as an aggregate, e.g. a calibration error over tokens, or one compared per model
(`PER_MODEL`), over seeds alone, and says so in `covers`).

Conclusions speak of factual consistency only, from a two-sided test at 1 − confidence (so a "KD helps"
claim is wrong at most (1 − confidence)/2 of the time per cell), never below `MIN_SEEDS` seeds. Across the
arm × split family the p-values are Holm-adjusted, unless `eval.primary` named one cell before the run:
then that cell is tested alone and every other cell is exploratory. Each conclusion says which applied,
and what the sweep could have resolved (`Difference.mde`, at 80 % power) and how many seeds would resolve
the paper's gain (`PAPER_EFFECT`). An `EXPLORATORY` metric is reported with its interval and marked so:
it is in no family and no conclusion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from smoothkd.artifacts import Evaluation
from smoothkd.config import ConfigError, EvalConfig
from smoothkd.evaluation.machine import Machine
from smoothkd.evaluation.seeds import POWER, SEEDS_ONLY, holm, seed_example_ci
from smoothkd.report import PER_EXAMPLE

# (metric, label) in report order; a metric the evaluation does not give (older evaluations have no
# prior-trap rate or student ECE) is left out of the summary rather than reported as missing.
COMPARED = (("factual_consistency", "fact. consist. %"), ("rougeLsum", "ROUGE-Lsum"),
            ("hallucinated_facts_per_summary", "unsupported/summary"), ("prior_trap_rate", "prior-trap rate"),
            ("ece", "student ECE"), ("overconfidence", "overconfidence"),
            ("unsupported_fact_confidence", "unsupported-fact confidence (exploratory)"),
            ("supported_fact_confidence", "supported-fact confidence (exploratory)"))
# Compared over one value per model although the evaluation keeps a per-example column: a summary has a
# value only when it states an unsupported fact, and which summaries do differs by model, so pairing by
# example would compare the examples both models hallucinated on, a selection by the outcome.
PER_MODEL = ("unsupported_fact_confidence", "supported_fact_confidence")
# Reported beside the conclusions, never in them nor in the Holm family: the mechanism's measure on the
# model's own facts, which the sweep was not designed to test. The supported facts' confidence is its
# control: a student less confident about everything states unsupported facts less confidently too.
EXPLORATORY = ("unsupported_fact_confidence", "supported_fact_confidence")
CONSISTENCY = "factual_consistency"
KD_HELPS = "KD reduces hallucination here"
# Below this many seeds the seed-to-seed variance rests on one or two differences: table, no conclusion.
MIN_SEEDS = 3
# The paper's KD − SFT factual-consistency gain, Llama-2-7B on CNNDM (86.3 → 87.7 %): the effect whose
# seed count the sweep reports.
PAPER_EFFECT = 1.4


@dataclass(frozen=True)
class Difference:
    """An arm − SFT for one split and metric: mean over seeds and examples, its CI, every seed's own
    difference, the two-sided p of no difference, the smallest difference resolvable at 80 % power (`mde`)
    and, for factual consistency, the seeds that would resolve `PAPER_EFFECT` (None: no number of seeds
    on these examples). `arm` defaults to the KD name of `alpha`; `exploratory` marks an `EXPLORATORY`
    metric."""

    alpha: float
    split: str
    metric: str
    mean: float
    low: float
    high: float
    per_seed: dict[int, float]
    examples_per_seed: dict[int, int]
    covers: str
    arm: str = ""
    se: float = 0.0
    df: float = 0.0
    p_value: float | None = None
    mde: float | None = None
    seeds_for_paper_effect: int | None = None
    exploratory: bool = False

    def __post_init__(self) -> None:
        if not self.arm:
            object.__setattr__(self, "arm", kd_name(self.alpha))


@dataclass(frozen=True)
class Arm:
    """A compared arm: its name (e.g. `kd_a0.1`, `sft_null`), its α and seed → evaluation."""

    name: str
    alpha: float
    evaluations: dict[int, Evaluation]


@dataclass(frozen=True)
class SweepModel:
    """One trained model of the sweep: its name, α (None: the teacher), seed, MLflow run and, for a KD
    student and the teacher, the teacher's training seed."""

    name: str
    alpha: float | None
    seed: int | None
    path: str
    run_id: str
    cached: bool
    metrics: dict[str, float]
    teacher_seed: int | None = None


@dataclass(frozen=True)
class Baseline:
    """The regime's own check, read before any KD student: the SFT baseline over seeds (per split its
    factual consistency's mean and SD over seeds, and its prior-trap rate's mean) and its held-out
    overconfidence (confidence − accuracy) with a CI over seeds, beside the teacher's consistency."""

    seeds: int
    consistency: dict[str, tuple[float, float]]
    prior_trap_rate: dict[str, float]
    overconfidence: tuple[float, float, float] | None
    teacher_consistency: dict[str, float]


def baseline(sft: dict[int, Evaluation], teacher: Evaluation | None, confidence: float) -> Baseline:
    """`Baseline` of the SFT students in `sft` (seed → evaluation) and the `teacher`'s evaluation."""
    runs = [sft[s] for s in sorted(sft)]
    splits = [split for split in _splits(runs[0]) if f"{split}/{CONSISTENCY}" in runs[0].metrics]

    def values(name: str) -> np.ndarray:
        return np.array([r.metrics[name] for r in runs if name in r.metrics])

    consistency = {}
    for split in splits:
        v = values(f"{split}/{CONSISTENCY}")
        consistency[split] = (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan"))
    traps = {split: float(values(f"{split}/prior_trap_rate").mean()) for split in splits
             if values(f"{split}/prior_trap_rate").size}
    over = values("general/overconfidence")
    interval = None
    if over.size > 1:
        ci = seed_example_ci(over[:, None], confidence)
        interval = (ci.mean, ci.low, ci.high)
    teacher_consistency = {split: teacher.metrics[f"{split}/{CONSISTENCY}"] for split in splits
                           if teacher is not None and f"{split}/{CONSISTENCY}" in teacher.metrics}
    return Baseline(len(runs), consistency, traps, interval, teacher_consistency)


def baseline_lines(b: Baseline, confidence: float) -> list[str]:
    """The regime check as printed lines: teacher vs SFT consistency, SFT spread, overconfidence."""
    lines = []
    for split, (mean, sd) in b.consistency.items():
        teacher = b.teacher_consistency.get(split)
        versus = f"; teacher {teacher:.1f}" if teacher is not None else ""
        trap = b.prior_trap_rate.get(split)
        traps = f", prior-trap rate {trap:.1f} %" if trap is not None else ""
        lines.append(f"SFT baseline {split}: consistency {mean:.1f} % (SD {sd:.1f} over {b.seeds} seeds)"
                     f"{traps}{versus}")
    if b.overconfidence is not None:
        mean, low, high = b.overconfidence
        state = ("overconfident" if low > 0 else "underconfident" if high < 0
                 else "neither over- nor underconfidence resolved")
        lines.append(f"SFT baseline held-out overconfidence {mean:+.4f} ({confidence:.0%} CI {low:+.4f} to "
                     f"{high:+.4f} over {b.seeds} seeds): {state}")
    return lines


@dataclass
class SweepSummary:
    """The sweep's record: what ran (and on which machine), every model, every arm − SFT difference and the
    conclusions."""

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
    machine: Machine | None = None
    baseline: Baseline | None = None
    teacher_seeds: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON form: `differences` and `conclusions` nested as {arm: {split: {metric: ...}}}."""
        nested: dict[str, dict[str, dict]] = {}
        for d in self.differences:
            record = {k: v for k, v in asdict(d).items() if k not in ("alpha", "split", "metric", "arm")}
            nested.setdefault(d.arm, {}).setdefault(d.split, {})[d.metric] = record
        return {**{k: v for k, v in asdict(self).items() if k not in ("differences", "models")},
                "models": [asdict(m) for m in self.models], "differences": nested}


def kd_name(alpha: float) -> str:
    return f"kd_a{alpha:g}"


def _table(arm: dict[int, Evaluation], sft: dict[int, Evaluation], seeds: list[int], split: str, column: str
           ) -> np.ndarray:
    """[seeds, examples] arm − SFT on `column`, examples matched by id across seeds and arms (NaN where a
    model has no value for an example)."""
    columns = [(e.per_example[split]["id"], e.per_example[split][column])
               for s in seeds for e in (arm[s], sft[s])]
    ids = list(dict.fromkeys(i for id_list, _ in columns for i in id_list))
    where = {i: n for n, i in enumerate(ids)}
    values = np.full((len(columns), len(ids)), np.nan)
    for row, (id_list, scores) in enumerate(columns):
        for i, score in zip(id_list, scores, strict=True):
            if score is not None:
                values[row, where[i]] = score
    return values[0::2] - values[1::2]


def _cell_table(arm: dict[int, Evaluation], sft: dict[int, Evaluation], seeds: list[int], split: str,
                metric: str) -> np.ndarray | None:
    """The table to analyse: per example when every model keeps a column for the metric (and it is not
    compared `PER_MODEL`), else one aggregate difference per seed; None when some model lacks the metric."""
    name, column = f"{split}/{metric}", PER_EXAMPLE.get(metric, metric)
    runs = [e for s in seeds for e in (arm[s], sft[s])]
    if any(name not in e.metrics for e in runs):
        return None
    if metric not in PER_MODEL and all(column in e.per_example.get(split, {}) for e in runs):
        return _table(arm, sft, seeds, split, column)
    return np.array([[arm[s].metrics[name] - sft[s].metrics[name]] for s in seeds])


def _splits(evaluation: Evaluation) -> list[str]:
    """The metric prefixes (cnndm, xsum, general, ...) in first-seen order."""
    return list(dict.fromkeys(name.split("/", 1)[0] for name in evaluation.metrics if "/" in name))


def compare_arms(sft: dict[int, Evaluation], arms: list[Arm], e: EvalConfig) -> list[Difference]:
    """Every compared metric the evaluations give, per arm and split: arm − SFT over the SFT seeds.

    A metric with no interval to give is left out: one seed of an aggregate, no example scored by every
    model.
    """
    seeds = sorted(sft)
    differences = []
    for arm in arms:
        missing = sorted(set(seeds) - set(arm.evaluations))
        if missing:
            raise ValueError(f"arm {arm.name} has no evaluation for seed(s) {missing}")
        for split in _splits(sft[seeds[0]]):
            for metric, _ in COMPARED:
                table = _cell_table(arm.evaluations, sft, seeds, split, metric)
                # No interval without two values in every seed's complete examples (e.g. a trap-row metric
                # on a split without trap rows, or an aggregate of one seed).
                if table is None or (~np.isnan(table).any(axis=0)).sum() * len(seeds) < 2:
                    continue
                ci = seed_example_ci(table, e.confidence)
                differences.append(Difference(
                    arm.alpha, split, metric, ci.mean, ci.low, ci.high,
                    per_seed=dict(zip(seeds, ci.seed_means, strict=True)),
                    examples_per_seed=dict.fromkeys(seeds, ci.examples),
                    covers=ci.covers, arm=arm.name, se=ci.se, df=ci.df,
                    p_value=ci.p_value(), mde=ci.detectable(e.confidence),
                    seeds_for_paper_effect=(ci.seeds_to_resolve(PAPER_EFFECT, e.confidence)
                                            if metric == CONSISTENCY else None),
                    exploratory=metric in EXPLORATORY))
    return differences


def kd_minus_sft(evaluations: dict[float, dict[int, Evaluation]], e: EvalConfig) -> list[Difference]:
    """`compare_arms` for the α sweep: `evaluations` maps α (0 = the SFT baseline) to seed to evaluation."""
    arms = [Arm(kd_name(alpha), alpha, evaluations[alpha]) for alpha in sorted(a for a in evaluations if a)]
    return compare_arms(evaluations[0.0], arms, e)


def cell(d: Difference) -> str:
    """The name of a difference's arm × split cell, as `eval.primary` names it: `kd_a0.1/cnndm`."""
    return f"{d.arm}/{d.split}"


def check_primary(primary: str | None, cells: list[str]) -> None:
    """Raise ConfigError unless `primary` is None or one of the arm × split `cells` (e.g. `kd_a0.1/cnndm`):
    call it before training with the cells the sweep will compare."""
    if primary is not None and primary not in cells:
        raise ConfigError(f"eval.primary: {primary!r} is not a compared cell; the sweep compares "
                          f"{', '.join(cells) or 'none'}")


def _power(d: Difference, confidence: float) -> str:
    """What the cell could resolve, and the seeds the paper's gain would need."""
    if d.mde is None:
        return "power unknown (one seed, or no variation measured)"
    need = (f"the paper's +{PAPER_EFFECT:g} needs {d.seeds_for_paper_effect} seeds"
            if d.seeds_for_paper_effect is not None
            else f"no number of seeds resolves the paper's +{PAPER_EFFECT:g} on these "
                 f"{next(iter(d.examples_per_seed.values()))} examples")
    return (f"{POWER:.0%} power to resolve ±{d.mde:.2f} points at the unadjusted {1 - confidence:.3g} level; "
            f"{need}")


def conclusion(consistency: Difference, confidence: float, p: float | None = None,
               adjustment: str = "unadjusted") -> str:
    """What the test of arm − SFT factual consistency supports at level 1 − confidence, two-sided: `KD_HELPS`
    only when `p` (default: the cell's own p, i.e. its CI excludes 0) is below the level and the mean is
    above 0; nothing below `MIN_SEEDS` seeds. `adjustment` says how `p` was obtained."""
    seeds = len(consistency.per_seed)
    shown = (f"{consistency.mean:+.2f} points, {confidence:.0%} CI {consistency.low:+.2f} to "
             f"{consistency.high:+.2f} over {seeds} seed{'s' * (seeds != 1)}")
    p = consistency.p_value if p is None else p
    if seeds < MIN_SEEDS or p is None:
        return (f"no conclusion from this many seeds (at least {MIN_SEEDS} needed to judge seed-to-seed "
                f"variation): factual consistency {shown}")
    level = 1 - confidence
    power = _power(consistency, confidence)
    if p < level:
        verdict = KD_HELPS if consistency.mean > 0 else "KD lowers factual consistency here"
        return f"{verdict}: factual consistency {shown}; {adjustment} p = {p:.3g} < {level:.3g}; {power}"
    return (f"no difference resolved: factual consistency {shown}; {adjustment} p = {p:.3g}, not below "
            f"{level:.3g}; {power}")


def conclusions(differences: list[Difference], confidence: float, primary: str | None = None
                ) -> dict[str, dict[str, str]]:
    """{arm: {split: conclusion}} for every arm and split with a factual-consistency difference.

    Without `primary`, the p-values of the cells with enough seeds are Holm-adjusted over that family;
    with `primary` (`eval.primary`, e.g. `kd_a0.1/cnndm`), that cell is tested alone and the others are
    marked exploratory and conclude nothing. Raises ConfigError when `primary` names no compared cell.
    """
    cells = [d for d in differences if d.metric == CONSISTENCY]
    check_primary(primary, [cell(d) for d in cells])
    family = [d for d in cells if len(d.per_seed) >= MIN_SEEDS and d.p_value is not None]
    adjusted = dict(zip(map(cell, family), holm([d.p_value for d in family]), strict=True))
    out: dict[str, dict[str, str]] = {}
    for d in cells:
        if primary is None:
            how = f"Holm-adjusted over {len(family)} arm × split cells,"
            text = conclusion(d, confidence, adjusted.get(cell(d)), how)
        elif cell(d) == primary:
            text = conclusion(d, confidence, adjustment="the pre-declared primary cell (eval.primary),")
        else:
            text = (f"exploratory (eval.primary is {primary}): factual consistency {d.mean:+.2f} points, "
                    f"{confidence:.0%} CI {d.low:+.2f} to {d.high:+.2f} over {len(d.per_seed)} seeds, "
                    "unadjusted; no conclusion")
        out.setdefault(d.arm, {})[d.split] = text
    return out


def _arm_label(d: Difference) -> str:
    """α for a KD arm, the arm's name for any other (e.g. an A/A arm)."""
    return f"{d.alpha:g}" if d.arm == kd_name(d.alpha) else d.arm


def differences_table(summary: SweepSummary):
    """One row per (split, arm): each compared metric's arm − SFT mean (CI), a seeds-only CI marked †,
    every seed's own consistency difference, and the consistency test's power."""
    from rich.table import Table

    present = [(m, label) for m, label in COMPARED if any(d.metric == m for d in summary.differences)]
    table = Table(title=f"KD − SFT over seeds {', '.join(map(str, summary.seeds))}: mean "
                        f"({summary.confidence:.0%} t-interval over seeds and examples crossed; † over seeds "
                        f"only); conclusions need ≥ {MIN_SEEDS} seeds")
    table.add_column("split")
    table.add_column("α", justify="right")
    for _, label in present:
        table.add_column(label, justify="right", overflow="fold")
    table.add_column("consistency, each seed", justify="right", overflow="fold")
    table.add_column(f"resolvable at {POWER:.0%} power", justify="right")
    table.add_column(f"seeds for +{PAPER_EFFECT:g}", justify="right")
    cells = {(d.split, d.arm, d.metric): d for d in summary.differences}
    splits = list(dict.fromkeys(d.split for d in summary.differences))
    for split in splits:
        arms = list(dict.fromkeys(d.arm for d in summary.differences if d.split == split))
        for i, arm in enumerate(arms):
            row = []
            for metric, _ in present:
                d = cells.get((split, arm, metric))
                row.append("-" if d is None else f"{d.mean:+.2f} ({d.low:+.2f}–{d.high:+.2f})"
                           + ("†" if d.covers == SEEDS_ONLY else ""))
            c = cells.get((split, arm, CONSISTENCY))
            each = ", ".join(f"{v:+.2f}" for v in c.per_seed.values()) if c else "-"
            mde = f"±{c.mde:.2f}" if c and c.mde is not None else "-"
            needed = "-" if c is None or c.mde is None else (
                str(c.seeds_for_paper_effect) if c.seeds_for_paper_effect is not None else "none")
            label = _arm_label(next(d for d in summary.differences if d.split == split and d.arm == arm))
            table.add_row(split, label, *row, each, mde, needed, end_section=i == len(arms) - 1)
    return table
