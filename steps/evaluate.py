"""Evaluation step: one model evaluated into the MLflow run of the step that trained it, so each model
keeps one run."""

from dataclasses import asdict
from typing import Annotated

import mlflow
from zenml import log_metadata, step

from smoothkd.artifacts import DetectorFit, EvaluatedModel, ModelSummary, model_label
from smoothkd.config import RunConfig
from smoothkd.registry.identity import IDENTITY_ARTIFACT
from smoothkd.registry.store import PER_EXAMPLE_ARTIFACT
from smoothkd.stages import evaluate_model
from smoothkd.tracking import log_metrics
from steps.tracking import ON_PIPELINE_RUN


# The tracker gives this step the stack's MLflow server and credentials; everything it measures is
# logged to the model's run, so it opens no run of its own.
@step(experiment_tracker=True, settings=ON_PIPELINE_RUN)
def evaluate(config: dict, dataset_dir: str, model_summary: ModelSummary, detector: DetectorFit
             ) -> Annotated[EvaluatedModel, "evaluated_summary"]:
    """Evaluate one model into the MLflow run that trained it: metrics with CIs, per-example scores and
    localization tables (cached by model, data, evaluation config and detector)."""
    cfg = RunConfig.model_validate(config)
    result = evaluate_model(cfg, model_summary.path, dataset_dir, detector.path or None,
                            label=model_label(model_summary.role))
    client, run_id = mlflow.MlflowClient(), model_summary.run_id
    if detector.path:
        unreliable = result.factual_rate_unreliable
        client.set_tag(run_id, "factual_rate", f"unreliable: {unreliable}" if unreliable else "reliable")
    # Linked to the student's LoggedModel too: its model page shows the metrics the gate judges.
    log_metrics({**result.metrics, "parameters": model_summary.parameters,
                 "train/seconds": model_summary.train_seconds}, run_id, model_summary.model_id)
    client.log_dict(run_id, result.per_example, PER_EXAMPLE_ARTIFACT)
    client.log_dict(run_id, result.identity, IDENTITY_ARTIFACT)
    client.log_artifacts(run_id, result.dir, "evaluation")
    log_metadata(metadata={"role": model_summary.role, "evaluation_dir": result.dir,
                           **{k: v for k, v in result.metrics.items() if "_ci_" not in k}})
    return EvaluatedModel(**asdict(model_summary), metrics=result.metrics, per_example=result.per_example,
                          predictions=result.predictions, identity=result.identity)
