"""Report step: the run's results record, paired KD − SFT deltas and charts, logged to the pipeline's run."""

import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
from zenml import log_metadata, step

from smoothkd.artifacts import EvaluatedModel, GateDecision
from smoothkd.charts import comparison_chart, loss_curves_chart
from smoothkd.config import RunConfig
from smoothkd.report import build_results
from smoothkd.tracking import log_metrics


@step(experiment_tracker=True)
def report(config: dict, teacher_summary: EvaluatedModel, student_summaries: list[EvaluatedModel],
           gate_decisions: list[GateDecision]) -> Annotated[dict, "results"]:
    """Collect per-model metrics, KD − SFT deltas and gate decisions; draw the comparison and loss charts."""
    cfg = RunConfig.model_validate(config)
    results = build_results(teacher_summary, student_summaries, gate_decisions, cfg.eval)
    mlflow.log_dict(results, "results.json")
    for comparison, flat in results["deltas"].items():
        log_metrics({f"delta/{comparison.replace(' ', '')}/{name}": v for name, v in flat.items()})
    log_metadata(metadata={"deltas": results["deltas"], "champion": results["champion"] or "none"})
    # The pictures belong to the pipeline's own run (the parent), where a reader of the run starts.
    run = mlflow.active_run()
    target = run.data.tags.get("mlflow.parentRunId", run.info.run_id)
    curves = {s.role: s.loss_history or [] for s in [teacher_summary, *student_summaries]}
    with tempfile.TemporaryDirectory() as tmp:
        comparison_chart(results["models"], cfg.eval.splits, Path(tmp) / "sft_vs_kd.png")
        loss_curves_chart(curves, Path(tmp) / "loss_curves.png")
        mlflow.MlflowClient().log_artifacts(target, tmp, "charts")
    return results
