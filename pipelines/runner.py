"""Run the `distill` pipeline for a RunConfig on the local stack and return its results record."""

import os
import time

from smoothkd.config import RunConfig
from smoothkd.stages import output_root, tracking_uri
from smoothkd.tracking import ensure_experiment


def configure_zenml_env(cfg: RunConfig) -> None:
    """Keep ZenML's state beside the run's outputs unless the user points elsewhere; analytics off."""
    os.environ.setdefault("ZENML_CONFIG_PATH", str(output_root(cfg) / "zenml"))
    os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")


def run_distill(cfg: RunConfig) -> dict:
    """Register the stack if needed, run the pipeline, and load the report step's results."""
    configure_zenml_env(cfg)
    from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import (
        MLFlowExperimentTrackerSettings,
    )

    from pipelines.distill import distill
    from pipelines.stack import ensure_local_stack

    uri = tracking_uri(cfg)
    ensure_experiment(uri, cfg.tracking.experiment_name, output_root(cfg) / "mlartifacts")
    ensure_local_stack(uri)
    settings = {"experiment_tracker": MLFlowExperimentTrackerSettings(
        experiment_name=cfg.tracking.experiment_name, nested=True)}
    run_name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    start = time.perf_counter()
    run = distill.with_options(settings=settings, run_name=run_name)(config=cfg.model_dump(mode="json"))
    seconds = time.perf_counter() - start
    results = run.steps["report"].outputs["results"][0].load()
    return {**results, "run_name": run_name, "pipeline_seconds": seconds, "tracking_uri": uri}
