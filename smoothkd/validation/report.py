"""The outcome of a data validation: one line per expectation, a verdict, and the error that stops a run.

Kept free of Great Expectations so the CLI and the error path import it cheaply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smoothkd.artifacts import DataValidation
from smoothkd.errors import DataValidationError

MAX_EXAMPLES = 3  # offending row ids quoted per failed expectation


@dataclass
class Outcome:
    """One expectation's result: its name (`split.column.check`), severity, verdict and what was seen."""

    name: str
    split: str
    check: str
    expectation: str
    severity: str  # "stop" or "warn"
    success: bool
    observed: str
    row_ids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        ids = f", e.g. {', '.join(self.row_ids[:MAX_EXAMPLES])}" if self.row_ids else ""
        return f"{self.name} ({self.observed}{ids})"


@dataclass
class ValidationReport:
    """Every expectation's outcome, how tokens were counted and where the Data Docs site is."""

    outcomes: list[Outcome]
    docs_index: str
    tokens: str
    rows: dict[str, int]
    seconds: float = 0.0

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "stop"]

    @property
    def warnings(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success and o.severity == "warn"]

    @property
    def verdict(self) -> str:
        """`fail` (a stopping expectation failed), `warn` (only warnings failed) or `pass`."""
        return "fail" if self.failures else "warn" if self.warnings else "pass"

    def message(self) -> str:
        """One line: the verdict, each failed expectation with its observed value and example rows."""
        if self.verdict == "pass":
            return f"data validation passed ({len(self.outcomes)} expectations); Data Docs: {self.docs_index}"
        parts = []
        if self.failures:
            parts.append(f"{len(self.failures)} stopping: " + "; ".join(o.summary() for o in self.failures))
        if self.warnings:
            parts.append(f"{len(self.warnings)} warning: " + "; ".join(o.summary() for o in self.warnings))
        word = "failed" if self.failures else "passed with warnings"
        return f"data validation {word}: {' | '.join(parts)}; Data Docs: {self.docs_index}"

    def raise_for_failures(self) -> None:
        """Raise DataValidationError when a stopping expectation failed."""
        if self.failures:
            raise DataValidationError(self.message())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}

    def record(self) -> DataValidation:
        """The verdict as the validation step hands it on to the report."""
        return DataValidation(self.verdict, len(self.outcomes), [o.name for o in self.failures],
                              [o.name for o in self.warnings], self.tokens, self.docs_index)

    def metadata(self) -> dict[str, Any]:
        """Flat, JSON-friendly summary for run metadata (ZenML) and tags: the record's fields, prefixed."""
        return {f"validation.{key}": value for key, value in asdict(self.record()).items()}


def log_to_mlflow(report: ValidationReport) -> None:
    """Record verdict (tags), counts (metrics), report and Data Docs site (artifacts) on the active run."""
    import mlflow

    from smoothkd.tracking import log_metrics

    mlflow.set_tags({
        "validation.verdict": report.verdict,
        "validation.failed": ",".join(o.name for o in report.failures)[:5000],
        "validation.warnings": ",".join(o.name for o in report.warnings)[:5000],
        "validation.tokens": report.tokens[:5000],
    })
    log_metrics({
        "validation/expectations": len(report.outcomes),
        "validation/failed": len(report.failures),
        "validation/warnings": len(report.warnings),
        "validation/seconds": report.seconds,
        **{f"validation/rows/{split}": n for split, n in report.rows.items()},
    })
    mlflow.log_dict(report.to_dict(), "validation/report.json")
    mlflow.log_artifacts(str(Path(report.docs_index).parent), "validation/data_docs")


def validation_table(report: ValidationReport):
    """A rich table: one row per expectation with its severity, verdict, observed value and example rows."""
    from rich.table import Table

    table = Table(title=f"data validation: {report.verdict} (tokens: {report.tokens})")
    # Names stay whole (they are what to grep for and what `validation.severity` refers to); the rest wraps.
    widest = max((len(o.name) for o in report.outcomes), default=0)
    table.add_column("expectation", no_wrap=True, min_width=widest)
    for column in ("severity", "result", "observed", "rows"):
        table.add_column(column)
    styles = {"pass": "green", "warn": "yellow", "FAIL": "red"}
    for o in report.outcomes:
        result = "pass" if o.success else "warn" if o.severity == "warn" else "FAIL"
        table.add_row(o.name, o.severity, f"[{styles[result]}]{result}[/]", o.observed, ", ".join(o.row_ids))
    return table
