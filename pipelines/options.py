"""The options a pipeline gives each step it invokes: resources and step operator from the config's
`orchestration` section (a dynamic pipeline's steps are configured as they are invoked: a run
configuration's per-step entries do not reach them), and the names those entries may use, checked before a
run."""

from collections.abc import Callable

from zenml.steps import BaseStep

from smoothkd.config import ConfigError, RunConfig
from steps.tracking import record_failure


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


Configure = Callable[..., BaseStep]


def configurer(cfg: RunConfig) -> Configure:
    """`configure(step, invocation, step_name=None, **defaults)` for a pipeline of `cfg`: the step with its
    resources as `configured` gives them, and the failure hook that records where and why
    a run stopped. Each step carries the hook: a dynamic pipeline's own runs once for the run, outside any
    step, where there is no step's MLflow run to mark."""

    def configure(step: BaseStep, invocation: str, step_name: str | None = None, **defaults) -> BaseStep:
        options = configured(cfg, step, invocation, step_name, **defaults)
        return options.with_options(on_failure=record_failure)

    return configure
