"""The run's results record (metrics with CIs, paired KD − SFT deltas, gate decisions) and its rendering."""

from __future__ import annotations

from dataclasses import dataclass, field

from smoothkd.artifacts import (
    Champion,
    DetectorFit,
    EvaluatedModel,
    GateDecision,
    Gates,
    ModelResult,
    Results,
    model_label,
)
from smoothkd.config import UNRELIABLE_SUFFIX, EvalConfig
from smoothkd.registry.gate import Candidate, paired_difference

HEADLINE = (("rougeLsum", "ROUGE-Lsum"), ("factual_consistency", "fact. consist. %"),
            ("factual_rate", "factual rate %"), ("hallucinated_facts_per_summary", "halluc./summary"),
            ("prior_trap_rate", "prior trap %"))
# Per-example column behind each headline metric (the aggregate's name differs for hallucinated facts).
PER_EXAMPLE = {"hallucinated_facts_per_summary": "hallucinated_facts"}


def paired_deltas(students: list[EvaluatedModel], eval_cfg: EvalConfig) -> dict[str, dict[str, float]]:
    """For each KD student, KD − SFT on every split's headline metrics: mean and paired bootstrap CI."""
    sft = next((s for s in students if s.alpha == 0), None)
    if sft is None:
        return {}
    deltas: dict[str, dict[str, float]] = {}
    for kd in (s for s in students if s.alpha):
        flat: dict[str, float] = {}
        for split in eval_cfg.splits:
            for metric, _ in HEADLINE:
                column = PER_EXAMPLE.get(metric, metric)
                ci = paired_difference(Candidate.from_summary(kd), Candidate.from_summary(sft), split, column,
                                       eval_cfg)
                if ci is not None:
                    name = f"{split}/{metric}"
                    flat |= {name: ci.mean, f"{name}_ci_low": ci.low, f"{name}_ci_high": ci.high}
        deltas[f"{model_label(kd.role)} - sft"] = flat
    return deltas


def build_results(teacher: EvaluatedModel, students: list[EvaluatedModel], decisions: list[GateDecision],
                  gates: Gates, eval_cfg: EvalConfig) -> Results:
    """One record per model (metrics with CIs, registry version and gate outcome), deltas, the gates'
    verdicts and the decisions."""
    by_candidate = {d.candidate: d for d in decisions}
    models = []
    for s in [teacher, *students]:
        decision = by_candidate.get(model_label(s.role))
        models.append(ModelResult(role=s.role, alpha=s.alpha, path=s.path, parameters=s.parameters,
                                  metrics=dict(sorted(s.metrics.items())), cached=s.cached,
                                  train_seconds=s.train_seconds, run_id=s.run_id,
                                  version=decision.version if decision else None,
                                  outcome=decision.outcome if decision else None))
    champion = next((d for d in decisions if d.outcome == "champion"), None)
    return Results(models=models, deltas=paired_deltas(students, eval_cfg), decisions=decisions,
                   champion=Champion(champion.registered_model, champion.version, champion.candidate)
                   if champion else None, gates=gates)


# Marks a number measured by a detector below its AUROC floor; the table's caption says what it means (a
# word in every cell would widen the column until rows wrap on the console).
UNRELIABLE_MARK = "†"


def _cell(metrics: dict[str, float], name: str) -> str:
    """`mean (low–high)`, marked when measured by an unreliable detector, or `-` for a metric the model
    does not have."""
    if name not in metrics:
        unreliable = f"{name}{UNRELIABLE_SUFFIX}"
        return f"{_cell(metrics, unreliable)}{UNRELIABLE_MARK}" if unreliable in metrics else "-"
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    digits = 2 if abs(metrics[name]) < 10 else 1
    ci = f" ({low:.{digits}f}–{high:.{digits}f})" if low is not None and high is not None else ""
    return f"{metrics[name]:.{digits}f}{ci}"


# Marks a model reused from the stage cache (a word would widen the model column until rows wrap).
CACHED_MARK = "*"


def _model_label(model: ModelResult) -> str:
    return model.name + (CACHED_MARK if model.cached else "")


@dataclass
class Grid:
    """A table before it is drawn: as a rich table on the console, as markdown in the run's MLflow note."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    ends: set[int] = field(default_factory=set)  # rows that close a section (a rule after them)
    text_columns: int = 1  # the leading columns that hold words (left-aligned); numbers after them
    caption: list[str] = field(default_factory=list)  # what the marks in the cells mean, one line each

    def explain(self, line: str) -> None:
        """Add a caption line, once."""
        if line not in self.caption:
            self.caption.append(line)

    def rich(self):
        """The grid as a rich Table; cells fold, never truncate (a narrow terminal wraps a CI)."""
        from rich.table import Table

        table = Table(title=self.title, caption="\n".join(self.caption) or None)
        for i, column in enumerate(self.columns):
            table.add_column(column, justify="left" if i < self.text_columns else "right", overflow="fold")
        for i, row in enumerate(self.rows):
            table.add_row(*row, end_section=i in self.ends)
        return table

    def markdown(self) -> str:
        """The grid as a GitHub-flavoured markdown table under its title in bold, its caption below."""
        def text(cell: str) -> str:  # a bare `*` (the cached mark) would start emphasis or a list
            return cell.replace("|", "\\|").replace("*", "\\*")

        def line(cells):
            return "| " + " | ".join(map(text, cells)) + " |"

        align = [":--" if i < self.text_columns else "--:" for i in range(len(self.columns))]
        lines = [f"**{self.title}**", "", line(self.columns), line(align), *map(line, self.rows)]
        if self.caption:  # one paragraph, a line break (two trailing spaces) between its lines
            lines += ["", "  \n".join(map(text, self.caption))]
        return "\n".join(lines)


def _headline_grid(title: str, key: str, groups: list[list[tuple[str, str, dict[str, float]]]]) -> Grid:
    """Rows of (split, name, flat metrics) under the headline columns; a section per group. A column no
    row has a value for (e.g. the factual rate when no detector ran) is left out."""
    rows = [[(split, name, [_cell(metrics, f"{split}/{metric}") for metric, _ in HEADLINE])
             for split, name, metrics in group] for group in groups]
    shown = [j for j in range(len(HEADLINE)) if any(cells[j] != "-" for group in rows for *_, cells in group)]
    grid = Grid(title, ["split", key, *(HEADLINE[j][1] for j in shown)], text_columns=2)
    for group in rows:
        for split, name, cells in group:
            grid.rows.append([split, name, *(cells[j] for j in shown)])
            if any(cells[j].endswith(UNRELIABLE_MARK) for j in shown):
                grid.explain(f"{UNRELIABLE_MARK} unreliable: detector AUROC below eval.detector_min_auroc")
        grid.ends.add(len(grid.rows) - 1)
    return grid


def results_grid(models: list[ModelResult], splits: list[str]) -> Grid:
    """One row per (split, model): headline metrics as mean (95% bootstrap CI)."""
    grid = _headline_grid("summarisation: mean (95% bootstrap CI)", "model",
                          [[(split, _model_label(m), m.metrics) for m in models] for split in splits])
    if any(m.cached for m in models):
        grid.explain(f"{CACHED_MARK} reused from an earlier run's stage cache")
    return grid


def general_grid(models: list[ModelResult]) -> Grid:
    """General capability and calibration on the held-out instruction split, per model."""
    grid = Grid("general capability and calibration (held-out instructions)",
                ["model", "params", "ROUGE-L", "NLL of reference", "ECE", "overconfidence"])
    for m in models:
        metrics = m.metrics
        # Calibration errors live around 0.01: three decimals, and no CI (one value over all tokens).
        calibration = [f"{metrics[name]:.3f}" if name in metrics else "-"
                       for name in ("general/ece", "general/overconfidence")]
        grid.rows.append([_model_label(m), f"{m.parameters / 1e6:.2f}M", _cell(metrics, "general/rougeL"),
                          _cell(metrics, "general/nll"), *calibration])
    return grid


def deltas_grid(deltas: dict[str, dict[str, float]], splits: list[str]) -> Grid:
    """KD − SFT per split: paired mean difference (95% CI); positive means KD is higher."""
    return _headline_grid("KD − SFT on the same examples: mean (paired 95% bootstrap CI)", "KD student",
                          [[(split, comparison.removesuffix(" - sft"), flat)
                            for comparison, flat in deltas.items()]
                           for split in splits])


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def decisions_grid(decisions: list[GateDecision]) -> Grid:
    """Per candidate: registered version, outcome and the criteria it failed."""
    grid = Grid("promotion gate", ["candidate", "version", "outcome", "failed criteria"], text_columns=4)
    for d in decisions:
        failed = [f"{c['name']} ({_value(c['value'])} vs {c['threshold']})"
                  for c in d.criteria if c["verdict"] != "pass"]
        grid.rows.append([d.candidate, str(d.version), d.outcome, "; ".join(failed) or "-"])
    return grid


def champion_text(champion: Champion | None) -> str:
    """`smoothkd-student v3 (sft)`, or that this run promoted no candidate."""
    return (f"{champion.name} v{champion.version} ({champion.candidate})" if champion
            else "unchanged (no candidate of this run was promoted)")


def _detector_line(label: str, fit: DetectorFit) -> str:
    """What a factual-rate detector's held-out test says of it, or why none was fitted."""
    if fit.disabled:
        return f"{label} (factual rate): disabled, no factual rate for these models ({fit.disabled})"
    line = (f"{label} (factual rate): held-out AUROC {fit.auroc:.3f} (CI {fit.auroc_ci_low:.3f}–"
            f"{fit.auroc_ci_high:.3f}) on {fit.n_test} sentences of {fit.n_test_groups} rows "
            f"({fit.n_factual} factual / {fit.n_hallucinated} hallucinated in all)")
    if fit.unreliable:
        line += f"; factual rate UNRELIABLE, left out of the gate: {fit.unreliable}"
    return line


def gate_lines(gates: Gates) -> list[str]:
    """One line per gate the run passed through: data validation, teacher calibration, detectors."""
    lines = []
    if gates.data:
        lines.append(f"data validation: {gates.data.verdict} ({gates.data.expectations} expectations, "
                     f"{len(gates.data.warnings)} warnings)")
    if gates.calibration:
        lines.append(f"teacher {gates.calibration.message}")
    detectors = {"teacher detector": gates.teacher_detector, "student detector": gates.student_detector}
    lines += [_detector_line(label, fit) for label, fit in detectors.items() if fit]
    return lines


def metrics_grid(metrics: dict[str, float], title: str) -> Grid:
    """Every aggregate metric of one model as mean (CI)."""
    return Grid(title, ["metric", "value"],
                [[name, _cell(metrics, name)] for name in sorted(metrics)
                 if not name.endswith(("_ci_low", "_ci_high"))])


def means_by_split(models: list[ModelResult]) -> dict[str, dict[str, dict[str, float]]]:
    """{model name (teacher, sft, kd_a0.1, ...): {split: {metric: mean}}} from a results record's models."""
    means: dict[str, dict[str, dict[str, float]]] = {}
    for model in models:
        by_split = means.setdefault(model.name, {})
        for name, value in model.metrics.items():
            split, _, metric = name.partition("/")
            if metric and not metric.endswith(("_ci_low", "_ci_high")):
                by_split.setdefault(split, {})[metric] = value
    return means


# General capability and calibration: one value per model, no split.
GENERAL = ("general/rougeL", "general/nll", "general/ece", "general/overconfidence")


def headline_metrics(models: list[ModelResult]) -> dict[str, float]:
    """`teacher/cnndm/factual_consistency`, `sft/general/nll`, ...: each model's headline means per split
    and its general capability, flat, for the pipeline's own run."""
    headline = {metric for metric, _ in HEADLINE}
    return {f"{model}/{split}/{metric}": value
            for model, by_split in means_by_split(models).items()
            for split, metrics in by_split.items() for metric, value in metrics.items()
            if metric in headline or f"{split}/{metric}" in GENERAL}


def run_note(results: Results, splits: list[str], links: list[str], images: list[tuple[str, str]],
             max_chars: int) -> str:
    """The pipeline run's description (markdown): the champion, the gates, the summary, general, KD − SFT
    and promotion tables, then `links` (one bullet each) and `images` (alt text, source), cut to
    `max_chars` with a pointer to the whole record."""
    parts = [f"**champion: {champion_text(results.champion)}**",
             "\n".join(f"- {line}" for line in gate_lines(results.gates)),
             results_grid(results.models, splits).markdown(), general_grid(results.models).markdown()]
    if results.deltas:
        parts.append(deltas_grid(results.deltas, splits).markdown())
    if results.decisions:
        parts.append(decisions_grid(results.decisions).markdown())
    if links:
        parts.append("**charts and evidence**\n\n" + "\n".join(f"- {link}" for link in links))
    parts += [f"![{alt}]({source})" for alt, source in images]
    note = "\n\n".join(part for part in parts if part)
    cut = "\n\n… (cut at MLflow's tag limit: the whole record is the run's results.json)"
    return note if len(note) <= max_chars else note[: max_chars - len(cut)] + cut
