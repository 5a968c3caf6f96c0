"""Run the `distill` pipeline for a RunConfig on its stack and return its results record."""

import contextlib
import os
import time
from dataclasses import replace
from pathlib import Path

from smoothkd.artifacts import Results
from smoothkd.config import ConfigError, RunConfig, output_root, tracking_uri

# The repository root: smoothkd/, pipelines/ and steps/ are packages under it.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def configure_zenml_env(cfg: RunConfig, stack: str | None = None) -> None:
    """The local stack keeps ZenML's state beside the run's outputs (unless the user points elsewhere);
    other stacks use the user's ZenML configuration, where `zenml login` connected a server. Analytics off.
    """
    if (stack or cfg.orchestration.stack) == "local":
        os.environ.setdefault("ZENML_CONFIG_PATH", str(output_root(cfg) / "zenml"))
    os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
    from zenml.constants import ENV_ZENML_CUSTOM_SOURCE_ROOT
    from zenml.utils import source_utils

    # ZenML names step and artifact classes by their module under its source root, which it otherwise
    # guesses from the entry point: under `python -m smoothkd.cli` it was smoothkd/, so a gate decision
    # was stored as `artifacts.GateDecision`, loaded as a second class beside `smoothkd.artifacts`'s, and
    # the report step refused it. The source root is also the code a remote orchestrator's image carries.
    if not os.environ.get(ENV_ZENML_CUSTOM_SOURCE_ROOT):
        source_utils.set_custom_source_root(str(PROJECT_ROOT))


def docker_settings(cfg: RunConfig):
    """ZenML DockerSettings for the run's image."""
    from zenml.config import DockerSettings

    docker = cfg.orchestration.docker
    # ZenML reads .dockerignore from the context root: the repository's keeps .venv and run outputs out.
    built = docker.dockerfile is not None
    return DockerSettings(
        dockerfile=docker.dockerfile, build_context_root=docker.build_context_root if built else None,
        parent_image=None if built else docker.parent_image, skip_build=docker.skip_build,
        user=docker.user, requirements=docker.requirements or None, apt_packages=docker.apt_packages,
        environment=docker.environment,
    )


def prepare_stack(cfg: RunConfig) -> tuple[str, dict, dict]:
    """Before a pipeline runs: the preflight (local stack), ZenML's environment, the stack registered or
    activated, the MLflow experiment. Returns (MLflow store, pipeline settings, run options).

    On the local stack every model reference and compatibility check runs first, in seconds; a remote
    stack's paths live on its machines, so its tokenizer step checks them there (still before training).
    """
    if cfg.orchestration.stack == "local":
        from smoothkd.stages import preflight_models

        preflight_models(cfg)
    configure_zenml_env(cfg)
    from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import (
        MLFlowExperimentTrackerSettings,
    )

    from pipelines.stack import ensure_local_stack, use_stack
    from smoothkd.tracking import ensure_experiment  # mlflow: not for `stack up`

    settings = {"experiment_tracker": MLFlowExperimentTrackerSettings(
        experiment_name=cfg.tracking.experiment_name, nested=True)}
    if cfg.orchestration.stack == "local":
        uri = tracking_uri(cfg)
        ensure_experiment(uri, cfg.tracking.experiment_name, output_root(cfg) / "mlartifacts")
        ensure_local_stack(uri)
        return uri, settings, {}
    stack = cfg.orchestration.stack
    uri = use_stack(stack)  # the server decides where artifacts go
    if cfg.tracking.tracking_uri not in (None, uri):
        raise ConfigError(f"tracking.tracking_uri {cfg.tracking.tracking_uri} is not stack {stack}'s "
                          f"MLflow server ({uri}): unset it or make them agree")
    settings["docker"] = docker_settings(cfg)
    return uri, settings, {"secrets": cfg.orchestration.secrets or None}


def run_distill(cfg: RunConfig) -> Results:
    """Prepare the stack, run the pipeline, and load the report step's results."""
    from pipelines.distill import distill, distill_steps
    from pipelines.options import check_step_names

    check_step_names(cfg, distill_steps(cfg))
    uri, settings, options = prepare_stack(cfg)
    from smoothkd.tracking import kd_label, run_name

    local = cfg.orchestration.stack == "local"
    if cfg.promotion.enabled:  # a store without a promotion lock fails now, not after training
        from smoothkd.registry.store import promotion_lock

        promotion_lock(uri, cfg.promotion.registered_model_name, cfg.promotion.lock_uri)
    name = run_name(cfg.name, kd_label(cfg.distill.alphas))
    start = time.perf_counter()
    try:
        run = distill.with_options(settings=settings, run_name=name, **options)(
            config=cfg.model_dump(mode="json"))
    except Exception as err:
        cause = step_error(err)
        if local:  # a remote run's failure is the orchestrator's to report
            with contextlib.suppress(Exception):  # an annotation: it never masks the run's own error
                mark_failed_step(uri, cfg.tracking.experiment_name, name, cause)
        raise cause from cause.__cause__  # keeps what the step's exception carried (a worker's traceback)
    seconds = time.perf_counter() - start
    if not local:
        run = finished_run(run, cfg.orchestration.stack, "report")
    results = run.steps["report"].outputs["results"][0].load()
    return replace(results, run_name=name, pipeline_seconds=seconds, tracking_uri=uri)


def step_error(error: BaseException) -> BaseException:
    """The failing step's own exception (a DataValidationError, a NonFiniteLossError), which a dynamic
    pipeline wraps in a StepExecutionException for a step it did not wait for: what `run_distill` and
    `run_sweep` raise and the stop tags name. (The CLI's one line finds it through the chain either way.)"""
    from zenml.exceptions import StepExecutionException

    while isinstance(error, StepExecutionException) and error.original_exception is not None:
        error = error.original_exception
    return error


def mark_failed_step(uri: str, experiment_name: str, run_name: str, error: BaseException) -> None:
    """After pipeline run `run_name` failed: its MLflow run says at which step and why, also where the
    failing step logs to no run of its own (a student's training, in a worker)."""
    from zenml.client import Client

    from smoothkd.tracking import mark_stopped_run

    steps = Client().get_pipeline_run(run_name).steps
    failed = [name for name, step in steps.items() if step.status.value == "failed"]
    if failed:
        mark_stopped_run(uri, experiment_name, run_name, failed[0], error)


def finished_run(run, stack: str, last_step: str):
    """The run as the server sees it now; a remote run that did not complete (through `last_step`) is a
    one-line error."""
    from zenml.client import Client

    from smoothkd.errors import StackError

    run = Client().get_pipeline_run(run.id)
    if last_step not in run.steps or run.status.value != "completed":
        raise StackError(f"run {run.name} is {run.status.value} on stack {stack}: follow it with "
                         f"`zenml pipeline runs get {run.id}`; results land in MLflow")
    return run
