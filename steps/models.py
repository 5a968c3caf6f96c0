"""Model steps: teacher and student training, factual-rate detectors, and evaluation of every model.

Training and evaluation are separate steps because the factual rate needs a detector fitted on
generations of a model of the evaluated shape (see `smoothkd.stages.prepare_detector`). An evaluation
writes into the MLflow run of the step that trained the model, so each model keeps one run.
"""

from pathlib import Path
from typing import Annotated

import mlflow
from zenml import log_metadata, step
from zenml.logger import get_logger

from smoothkd.config import RunConfig
from smoothkd.errors import DetectorError
from smoothkd.evaluation.detector import load_detector
from smoothkd.io import read_json
from smoothkd.registry.identity import IDENTITY_ARTIFACT
from smoothkd.registry.store import PER_EXAMPLE_ARTIFACT, log_student_model, version_with_weights
from smoothkd.stages import evaluate_model, model_identity, prepare_detector, prepare_teacher, train_student
from smoothkd.tracking import log_metrics, log_training

logger = get_logger(__name__)


@step(experiment_tracker=True)
def teacher(config: dict, dataset_dir: str, tokenizer: str
            ) -> tuple[Annotated[dict, "teacher_summary"], Annotated[str, "teacher_dir"]]:
    """Build or load the teacher and finetune it when configured (cached); log its training."""
    cfg = RunConfig.model_validate(config)
    artifact = prepare_teacher(cfg, dataset_dir, tokenizer)
    log_training({"role": "teacher", **config["teacher"]}, artifact.loss_history)
    log_metadata(metadata={"role": "teacher", "parameters": artifact.parameters, "cached": artifact.cached})
    summary = {**artifact.to_dict(), "alpha": None, "run_id": mlflow.active_run().info.run_id}
    return summary, artifact.path


@step(experiment_tracker=True)
def student(config: dict, dataset_dir: str, tokenizer: str, distill_temperature: float, labels_dir: str,
            teacher_dir: str, alpha: float = 0.0) -> Annotated[dict, "student_summary"]:
    """Train one student, the SFT baseline (α = 0) or a KD student, and log it as an MLflow model.

    `distill_temperature` comes from the teacher calibration gate, so no student trains after a rejection.
    """
    cfg = RunConfig.model_validate(config)
    artifact = train_student(cfg, dataset_dir, tokenizer, alpha=alpha, labels_dir=labels_dir,
                             teacher_path=teacher_dir, temperature=distill_temperature)
    params = {"role": artifact.role, "alpha": alpha, **config["student"]}
    if alpha > 0:
        manifest = read_json(Path(labels_dir) / "manifest.json")
        params |= {"distill": {**config["distill"], "temperature": distill_temperature},
                   "labels": {key: manifest[key] for key in ("key", "bytes_per_token", "top_k",
                                                             "precompute_seconds")}}
    log_training(params, artifact.loss_history)
    log_metadata(metadata={"role": artifact.role, "alpha": alpha, "parameters": artifact.parameters,
                           "cached": artifact.cached})
    # Weights registered by an earlier run (a cached student) are not logged again: the registry has them.
    client, name = mlflow.MlflowClient(), cfg.promotion.registered_model_name
    known = version_with_weights(client, name, model_identity(artifact.path))
    uri = client.get_model_version(name, known).source if known else log_student_model(artifact.path)
    return {**artifact.to_dict(), "alpha": alpha, "run_id": mlflow.active_run().info.run_id, "model_uri": uri}


@step(experiment_tracker=True)
def factual_rate_detector(config: dict, dataset_dir: str, model_summaries: list[dict]
                          ) -> Annotated[str, "detector"]:
    """Fit (or reuse) the lookback-ratio detector on the models' pooled held-out generations.

    Returns the detector's path, or "" when the generations give no hallucinated (or no factual)
    sentence to learn from: the run goes on, and `factual_rate` is left out of those models' metrics.
    """
    cfg = RunConfig.model_validate(config)
    roles = ", ".join(s["role"] for s in model_summaries)
    try:
        path, cached = prepare_detector(cfg, dataset_dir, [s["path"] for s in model_summaries])
    except DetectorError as err:
        logger.warning("factual rate disabled for %s: %s", roles, err)
        mlflow.set_tag("detector", f"disabled: {err}")
        return ""
    detector = load_detector(path)
    stats = {"auroc": detector.auroc, "n_train": detector.n_train, "n_test": detector.n_test,
             "n_factual": detector.n_factual, "n_hallucinated": detector.n_hallucinated}
    mlflow.set_tag("detector.fitted_on", roles)
    log_metrics({f"detector/{k}": v for k, v in stats.items()})
    mlflow.log_artifact(str(path), "detector")
    log_metadata(metadata={**stats, "fitted_on": roles, "path": str(path), "cached": cached})
    logger.info("factual-rate detector (%s): held-out AUROC %.3f on %d sentences", roles, detector.auroc,
                detector.n_test)
    return str(path)


# The tracker gives this step the stack's MLflow server and credentials (and a small run of its own that
# points at the model's run, where everything is logged).
@step(experiment_tracker=True)
def evaluate(config: dict, dataset_dir: str, model_summary: dict, detector: str
             ) -> Annotated[dict, "evaluated_summary"]:
    """Evaluate one model into the MLflow run that trained it: metrics with CIs, per-example scores and
    localization tables (cached by model, data, evaluation config and detector)."""
    cfg = RunConfig.model_validate(config)
    result = evaluate_model(cfg, model_summary["path"], dataset_dir, detector or None)
    client, run_id = mlflow.MlflowClient(), model_summary["run_id"]
    mlflow.set_tag("evaluates_run", run_id)
    log_metrics({**result["metrics"], "parameters": model_summary["parameters"],
                 "train/seconds": model_summary["train_seconds"]}, run_id)
    client.log_dict(run_id, result["per_example"], PER_EXAMPLE_ARTIFACT)
    client.log_dict(run_id, result["identity"], IDENTITY_ARTIFACT)
    client.log_artifacts(run_id, result["dir"], "evaluation")
    log_metadata(metadata={"role": model_summary["role"], "evaluation_dir": result["dir"],
                           **{k: v for k, v in result["metrics"].items() if "_ci_" not in k}})
    return {**model_summary, "metrics": result["metrics"], "per_example": result["per_example"],
            "predictions": result["predictions"], "identity": result["identity"]}
