"""Teacher step: build or load the teacher, finetune it when configured (cached), log its training."""

from typing import Annotated

import mlflow
from zenml import log_metadata, step

from smoothkd.artifacts import ModelSummary
from smoothkd.config import RunConfig
from smoothkd.stages import prepare_teacher
from smoothkd.tracking import log_training


@step(experiment_tracker=True)
def teacher(config: dict, dataset_dir: str, tokenizer: str
            ) -> tuple[Annotated[ModelSummary, "teacher_summary"], Annotated[str, "teacher_dir"]]:
    """Build or load the teacher and finetune it when configured (cached); log its training."""
    cfg = RunConfig.model_validate(config)
    artifact = prepare_teacher(cfg, dataset_dir, tokenizer)
    log_training({"role": "teacher", **cfg.teacher.model_dump(mode="json")}, artifact.loss_history)
    log_metadata(metadata={"role": "teacher", "parameters": artifact.parameters, "cached": artifact.cached})
    summary = ModelSummary(**artifact.to_dict(), alpha=None, run_id=mlflow.active_run().info.run_id)
    return summary, artifact.path
