"""Report step: one results record for the run, logged to the parent MLflow run."""

from typing import Annotated

import mlflow
from zenml import step

from smoothkd.report import build_results


@step(experiment_tracker=True)
def report(config: dict, teacher_summary: dict, student_summaries: list[dict]) -> Annotated[dict, "results"]:
    """Collect per-model metrics into one results record."""
    results = build_results([teacher_summary, *student_summaries])
    mlflow.log_dict(results, "results.json")
    return results
