"""Model steps: teacher preparation and student training, each evaluated in its own MLflow run."""

from pathlib import Path
from typing import Annotated

from zenml import get_step_context, log_metadata, step

from smoothkd.config import RunConfig
from smoothkd.stages import ModelArtifact, evaluate_model, output_root, prepare_teacher, train_student
from smoothkd.tracking import log_metrics, log_training


def _evaluate_and_log(cfg: RunConfig, artifact: ModelArtifact, dataset_dir: str, params: dict) -> dict:
    log_training(params, artifact.loss_history)
    result = evaluate_model(cfg, artifact.path, dataset_dir)
    log_metrics({**result["metrics"], "parameters": artifact.parameters,
                 "train/seconds": artifact.train_seconds})
    summary = {**artifact.to_dict(), "metrics": result["metrics"], "predictions": result["predictions"]}
    summary.pop("loss_history")
    log_metadata(metadata={"role": artifact.role, "parameters": artifact.parameters,
                           "cached": artifact.cached, **result["metrics"]})
    return summary


@step(experiment_tracker=True)
def teacher(config: dict, dataset_dir: str, tokenizer: str) -> Annotated[dict, "teacher_summary"]:
    """Build or load the teacher, finetune it when configured (cached), evaluate it."""
    cfg = RunConfig.model_validate(config)
    artifact = prepare_teacher(cfg, dataset_dir, tokenizer)
    return _evaluate_and_log(cfg, artifact, dataset_dir, {"role": "teacher", **config["teacher"]})


@step(experiment_tracker=True)
def student(config: dict, dataset_dir: str, tokenizer: str, name: str = "sft"
            ) -> Annotated[dict, "student_summary"]:
    """Train one student (the SFT baseline) and evaluate it."""
    cfg = RunConfig.model_validate(config)
    run_dir = Path(output_root(cfg)) / "runs" / get_step_context().pipeline_run.name
    artifact = train_student(cfg, dataset_dir, tokenizer, run_dir, name)
    return _evaluate_and_log(cfg, artifact, dataset_dir, {"role": f"student_{name}", **config["student"]})
