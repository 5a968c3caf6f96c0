"""The run's results record (metrics with CIs, paired KD − SFT deltas, gate decisions) and its rendering."""

from __future__ import annotations

from typing import Any

from smoothkd.artifacts import EvaluatedModel, GateDecision
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
        deltas[f"{kd.role.removeprefix('student_')} - sft"] = flat
    return deltas


def build_results(teacher: EvaluatedModel, students: list[EvaluatedModel], decisions: list[GateDecision],
                  eval_cfg: EvalConfig) -> dict[str, Any]:
    """One record per model (metrics with CIs, registry version and gate outcome), deltas and decisions."""
    by_candidate = {d.candidate: d for d in decisions}
    models = []
    for s in [teacher, *students]:
        decision = by_candidate.get(s.role.removeprefix("student_"))
        models.append({key: getattr(s, key) for key in ("role", "alpha", "path", "parameters", "cached",
                                                         "train_seconds", "run_id")}
                      | {"metrics": dict(sorted(s.metrics.items())),
                         "version": decision.version if decision else None,
                         "outcome": decision.outcome if decision else None})
    champion = next((d for d in decisions if d.outcome == "champion"), None)
    return {"models": models, "deltas": paired_deltas(students, eval_cfg),
            "decisions": [d.to_dict() for d in decisions],
            "champion": {"name": champion.registered_model, "version": champion.version,
                         "candidate": champion.candidate} if champion else None}


# Marks a number measured by a detector below its AUROC floor; the table's caption says what it means (a
# word in every cell would widen the column until rows wrap on an 80-column console).
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


def _model_label(model: dict) -> str:
    return model["role"].removeprefix("student_") + (CACHED_MARK if model.get("cached") else "")


def _add_caption(table, line: str) -> None:
    if line not in (table.caption or ""):
        table.caption = f"{table.caption}\n{line}" if table.caption else line


def _headline_table(title: str, key: str, groups: list[list[tuple[str, str, dict[str, float]]]]):
    """Rows of (split, name, flat metrics) under the headline columns; a rule after each group. A column
    no row has a value for (e.g. the factual rate when no detector ran) is left out."""
    from rich.table import Table

    rows = [[(split, name, [_cell(metrics, f"{split}/{metric}") for metric, _ in HEADLINE])
             for split, name, metrics in group] for group in groups]
    shown = [j for j in range(len(HEADLINE)) if any(cells[j] != "-" for group in rows for *_, cells in group)]
    table = Table(title=title)
    table.add_column("split")
    table.add_column(key)
    for j in shown:
        # Fold, never truncate: on a narrow terminal a CI wraps onto a second line instead of losing digits.
        table.add_column(HEADLINE[j][1], justify="right", overflow="fold")
    for group in rows:
        for i, (split, name, cells) in enumerate(group):
            table.add_row(split, name, *[cells[j] for j in shown], end_section=i == len(group) - 1)
            if any(cells[j].endswith(UNRELIABLE_MARK) for j in shown):
                _add_caption(table, f"{UNRELIABLE_MARK} unreliable: detector AUROC below "
                                    "eval.detector_min_auroc")
    return table


def results_table(results: dict[str, Any], splits: list[str]):
    """One row per (split, model): headline metrics as mean (95% bootstrap CI)."""
    table = _headline_table("summarisation: mean (95% bootstrap CI)", "model",
                            [[(split, _model_label(m), m["metrics"]) for m in results["models"]]
                             for split in splits])
    if any(m.get("cached") for m in results["models"]):
        _add_caption(table, f"{CACHED_MARK} reused from an earlier run's stage cache")
    return table


def general_table(results: dict[str, Any]):
    """General capability and calibration on the held-out instruction split, per model."""
    from rich.table import Table

    table = Table(title="general capability and calibration (held-out instructions)")
    for column in ("model", "params", "ROUGE-L", "NLL of reference", "ECE", "overconfidence"):
        table.add_column(column, justify="left" if column == "model" else "right", overflow="fold")
    for m in results["models"]:
        metrics = m["metrics"]
        # Calibration errors live around 0.01: three decimals, and no CI (one value over all tokens).
        calibration = [f"{metrics[name]:.3f}" if name in metrics else "-"
                       for name in ("general/ece", "general/overconfidence")]
        table.add_row(_model_label(m), f"{m['parameters'] / 1e6:.2f}M", _cell(metrics, "general/rougeL"),
                      _cell(metrics, "general/nll"), *calibration)
    return table


def deltas_table(results: dict[str, Any], splits: list[str]):
    """KD − SFT per split: paired mean difference (95% CI); positive means KD is higher."""
    return _headline_table("KD − SFT on the same examples: mean (paired 95% bootstrap CI)", "KD student",
                           [[(split, comparison.removesuffix(" - sft"), flat)
                             for comparison, flat in results["deltas"].items()]
                            for split in splits])


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def decisions_table(results: dict[str, Any]):
    """Per candidate: registered version, outcome and the criteria it failed."""
    from rich.table import Table

    table = Table(title="promotion gate")
    for column in ("candidate", "version", "outcome", "failed criteria"):
        table.add_column(column)
    for d in results["decisions"]:
        failed = [f"{c['name']} ({_value(c['value'])} vs {c['threshold']})"
                  for c in d["criteria"] if c["verdict"] != "pass"]
        table.add_row(d["candidate"], str(d["version"]), d["outcome"], "; ".join(failed) or "-")
    return table


def gate_lines(results: dict[str, Any]) -> list[str]:
    """One line per gate the run passed through: data validation, teacher calibration, detectors."""
    gates, lines = results.get("gates", {}), []
    data = gates.get("data")
    if data:
        lines.append(f"data validation: {data['validation.verdict']} ({data['validation.expectations']} "
                     f"expectations, {len(data['validation.warnings'])} warnings)")
    if gates.get("calibration"):
        lines.append(f"teacher {gates['calibration']['message']}")
    for label in ("teacher detector", "student detector"):
        meta = gates.get(label)
        if meta and "auroc" in meta:
            line = (f"{label} (factual rate): held-out AUROC {meta['auroc']:.3f} "
                    f"(CI {meta['auroc_ci_low']:.3f}–{meta['auroc_ci_high']:.3f}) on {meta['n_test']} "
                    f"sentences of {meta['n_test_groups']} rows ({meta['n_factual']} factual / "
                    f"{meta['n_hallucinated']} hallucinated in all)")
            if meta.get("unreliable"):
                line += f"; factual rate UNRELIABLE, left out of the gate: {meta['unreliable']}"
            lines.append(line)
        elif meta is not None:
            lines.append(f"{label} (factual rate): disabled, no factual rate for these models")
    return lines


def metrics_table(metrics: dict[str, float], title: str):
    """Every aggregate metric of one model as mean [CI]."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in sorted(n for n in metrics if not n.endswith(("_ci_low", "_ci_high"))):
        table.add_row(name, _cell(metrics, name))
    return table


def means_by_split(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """{model name (teacher, sft, kd_a0.1, ...): {split: {metric: mean}}} from a results record."""
    models: dict[str, dict[str, dict[str, float]]] = {}
    for model in results["models"]:
        by_split = models.setdefault(model["role"].removeprefix("student_"), {})
        for name, value in model["metrics"].items():
            split, _, metric = name.partition("/")
            if metric and not metric.endswith(("_ci_low", "_ci_high")):
                by_split.setdefault(split, {})[metric] = value
    return models
