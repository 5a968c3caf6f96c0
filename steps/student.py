"""Student step: one trained student (the SFT baseline or a KD student) logged as an MLflow model."""

from pathlib import Path
from typing import Annotated

import mlflow
from zenml import log_metadata, step

from smoothkd.artifacts import ModelArtifact, ModelSummary
from smoothkd.config import RunConfig
from smoothkd.distill.labels import PrecomputeResult
from smoothkd.io import read_json
from smoothkd.modeling.identity import model_identity
from smoothkd.registry.serving import GenerationSettings
from smoothkd.registry.store import log_student_model, logged_model_id, version_with_weights
from smoothkd.tracking import log_training


@step(experiment_tracker=True)
def student(config: dict, artifact: ModelArtifact, calibration_temperature: float,
            label_store: PrecomputeResult, alpha: float = 0.0) -> Annotated[ModelSummary, "student_summary"]:
    """Log one trained student (the SFT baseline, α = 0, or a KD student; `train_student`), its training
    and the model, in its own MLflow run."""
    cfg = RunConfig.model_validate(config)
    params = {"role": artifact.role, "alpha": alpha, **cfg.student.model_dump(mode="json")}
    if alpha > 0:
        manifest = read_json(Path(label_store.path) / "manifest.json")
        params |= {"distill": cfg.distill.model_dump(mode="json"),
                   "calibration_temperature": calibration_temperature,
                   "labels": {key: manifest[key] for key in ("key", "bytes_per_token", "top_k",
                                                             "precompute_seconds")}}
    log_training(params, artifact.loss_history)
    log_metadata(metadata={"role": artifact.role, "alpha": alpha, "parameters": artifact.parameters,
                           "cached": artifact.cached})
    # Weights registered by an earlier run (a cached student) are not logged again: the registry has them.
    client, name = mlflow.MlflowClient(), cfg.promotion.registered_model_name
    known = version_with_weights(client, name, model_identity(artifact.path))
    if known:
        uri = client.get_model_version(name, known).source
        model_id = logged_model_id(uri)  # sqlite and Postgres registries keep no model id on a version
    else:
        logged = log_student_model(artifact.path, GenerationSettings.of(cfg.eval, cfg.student.train))
        uri, model_id = logged.model_uri, logged.model_id
    return ModelSummary(**artifact.to_dict(), alpha=alpha, run_id=mlflow.active_run().info.run_id,
                        model_uri=uri, model_id=model_id)
