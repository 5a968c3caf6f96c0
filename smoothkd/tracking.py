"""MLflow logging helpers used inside steps (plain `mlflow` calls on the active run)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` → `{"a.b": 1}`; lists become their string form."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def ensure_experiment(uri: str, name: str, artifact_root: str | Path) -> str:
    """Create the experiment with artifacts under `artifact_root` (not the caller's cwd) if missing."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = Path(artifact_root).resolve()
    location.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(name, artifact_location=location.as_uri())


def log_training(params: dict[str, Any], loss_history: list | None, prefix: str = "train") -> None:
    """Log flat params and the loss curve (one point per logging step) to the active run."""
    mlflow.log_params({k: str(v)[:500] for k, v in flatten(params).items()})
    for step, loss in loss_history or []:
        mlflow.log_metric(f"{prefix}/loss", loss, step=int(step))


def log_metrics(metrics: dict[str, float], run_id: str | None = None) -> None:
    """Log to the active run, or to run `run_id` (a model's run, written from another step)."""
    clean = {k.replace("@", "_"): float(v) for k, v in metrics.items()}
    if run_id is None:
        mlflow.log_metrics(clean)
    else:
        mlflow.MlflowClient().log_batch(run_id, metrics=[Metric(k, v, int(time.time() * 1000), 0)
                                                         for k, v in clean.items()])


def latest_results(uri: str, experiment_name: str) -> tuple[str, dict] | None:
    """(pipeline run name, results record) of the newest finished `distill` run in the experiment: the
    `results.json` its report step logged. None when no run got that far."""
    import json
    import tempfile

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    # The report step is the pipeline's last: its run exists only for a run that reached the end.
    runs = client.search_runs([experiment.experiment_id],
                              "attributes.run_name = 'report' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    report = runs[0]
    parent = report.data.tags.get("mlflow.parentRunId")
    name = client.get_run(parent).info.run_name if parent else report.info.run_name
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(report.info.run_id, "results.json", tmp)
        return name, json.loads(Path(path).read_text(encoding="utf-8"))
