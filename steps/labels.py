"""Label step: the teacher's top-k soft labels, precomputed once and reused while inputs are unchanged."""

from typing import Annotated

import mlflow
from zenml import log_metadata, step

from smoothkd import stages
from smoothkd.config import RunConfig
from smoothkd.distill.labels import PrecomputeResult
from smoothkd.tracking import log_metrics


@step(experiment_tracker=True)
def precompute_labels(config: dict, dataset_dir: str, tokenizer: str, teacher_dir: str,
                      calibration_temperature: float) -> Annotated[PrecomputeResult, "label_store"]:
    """Run the teacher over the training split once (skipped when an identical store exists), at the
    calibration temperature the gate passed."""
    cfg = RunConfig.model_validate(config)
    result = stages.precompute_labels(cfg, dataset_dir, tokenizer, teacher_dir, calibration_temperature)
    mlflow.log_params({"labels.key": result.key, "labels.top_k": cfg.distill.top_k,
                       "labels.calibration_temperature": calibration_temperature,
                       "labels.encoding": cfg.distill.encoding})
    log_metrics({"labels/bytes_per_token": result.bytes_per_token, "labels/tokens": result.tokens,
                 "labels/teacher_forward_passes": result.teacher_forward_passes,
                 "labels/precompute_seconds": result.seconds, "labels/topk_mass": result.topk_mass})
    log_metadata(metadata=result.to_dict())
    return result
