"""Model steps: teacher preparation and student training, each evaluated in its own MLflow run."""

from pathlib import Path
from typing import Annotated

from zenml import get_step_context, log_metadata, step

from smoothkd.config import RunConfig
from smoothkd.io import read_json
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
def teacher(config: dict, dataset_dir: str, tokenizer: str
            ) -> tuple[Annotated[dict, "teacher_summary"], Annotated[str, "teacher_dir"]]:
    """Build or load the teacher, finetune it when configured (cached), evaluate it."""
    cfg = RunConfig.model_validate(config)
    artifact = prepare_teacher(cfg, dataset_dir, tokenizer)
    summary = _evaluate_and_log(cfg, artifact, dataset_dir, {"role": "teacher", **config["teacher"]})
    return summary, artifact.path


@step(experiment_tracker=True)
def student(config: dict, dataset_dir: str, tokenizer: str, distill_temperature: float, labels_dir: str,
            teacher_dir: str, alpha: float = 0.0) -> Annotated[dict, "student_summary"]:
    """Train one student, the SFT baseline (α = 0) or a KD student, and evaluate it.

    `distill_temperature` comes from the teacher calibration gate, so no student trains after a rejection.
    """
    cfg = RunConfig.model_validate(config)
    run_dir = Path(output_root(cfg)) / "runs" / get_step_context().pipeline_run.name
    artifact = train_student(cfg, dataset_dir, tokenizer, run_dir, alpha=alpha, labels_dir=labels_dir,
                             teacher_path=teacher_dir, temperature=distill_temperature)
    params = {"role": artifact.role, "alpha": alpha, **config["student"]}
    if alpha > 0:
        manifest = read_json(Path(labels_dir) / "manifest.json")
        params |= {"distill": {**config["distill"], "temperature": distill_temperature},
                   "labels": {key: manifest[key] for key in ("key", "bytes_per_token", "top_k",
                                                             "precompute_seconds")}}
    return _evaluate_and_log(cfg, artifact, dataset_dir, params)
