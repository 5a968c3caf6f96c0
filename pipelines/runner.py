"""Run the `distill` pipeline for a RunConfig on its stack and return its results record."""

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


def step_configuration(cfg: RunConfig, invocation: str, step_name: str, **defaults) -> dict:
    """ZenML step options for one invocation: its `orchestration.resources` entry (its own, else its step
    name's, over `defaults` such as a cpu_count) as ResourceSettings, and the step operator if it is named."""
    from zenml.config import ResourceSettings

    orch = cfg.orchestration
    # An invocation's own entry wins over its step's.
    resources = orch.resources.get(invocation) or orch.resources.get(step_name)
    configuration: dict = {}
    if resources is not None or defaults:
        given = resources.model_dump(exclude_none=True) if resources is not None else {}
        configuration["settings"] = {"resources": ResourceSettings(**{**defaults, **given})}
    if orch.step_operator and {invocation, step_name} & set(orch.step_operator.steps):
        configuration["step_operator"] = orch.step_operator.name
    return configuration


def configured(cfg: RunConfig, step, invocation: str, step_name: str | None = None, **defaults):
    """`step` with its options for an invocation of a dynamic pipeline, which a run configuration's
    per-invocation entries do not reach: on a remote stack its `orchestration` entry (its own, else that of
    `step_name`, the name `smoothkd run`'s pipeline gives such a step) over `defaults`; locally `defaults`."""
    from zenml.config import ResourceSettings

    if cfg.orchestration.stack != "local":
        return step.with_options(**step_configuration(cfg, invocation, step_name or step.name, **defaults))
    return step.with_options(settings={"resources": ResourceSettings(**defaults)}) if defaults else step


def check_step_names(cfg: RunConfig, steps: dict[str, str]) -> None:
    """ConfigError, before the run, for an `orchestration` entry (resources, step operator) that names none
    of `steps` (invocation id → step name, e.g. `pipelines.distill.distill_steps`); either name serves."""
    orch = cfg.orchestration
    named = set(orch.resources) | (set(orch.step_operator.steps) if orch.step_operator else set())
    unknown = sorted(named - set(steps) - set(steps.values()))
    if unknown:
        raise ConfigError(f"orchestration: unknown step {', '.join(unknown)} (steps: "
                          f"{', '.join(sorted(set(steps.values())))})")


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

    check_step_names(cfg, distill_steps(cfg))
    uri, settings, options = prepare_stack(cfg)
    from smoothkd.tracking import kd_label, run_name

    local = cfg.orchestration.stack == "local"
    if cfg.promotion.enabled:  # a store without a promotion lock fails now, not after training
        from smoothkd.registry.store import promotion_lock

        promotion_lock(uri, cfg.promotion.registered_model_name, cfg.promotion.lock_uri)
    name = run_name(cfg.name, kd_label(cfg.distill.alphas))
    start = time.perf_counter()
    run = distill.with_options(settings=settings, run_name=name, **options)(
        config=cfg.model_dump(mode="json"))
    seconds = time.perf_counter() - start
    if not local:
        run = finished_run(run, cfg.orchestration.stack, "report")
    results = run.steps["report"].outputs["results"][0].load()
    return replace(results, run_name=name, pipeline_seconds=seconds, tracking_uri=uri)


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
