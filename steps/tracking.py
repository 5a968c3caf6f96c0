"""What the steps share about MLflow (no step here): the settings of the steps that log straight to the
pipeline's own run, and the failure hook that records where and why a run stopped."""

from zenml import get_step_context
from zenml.integrations.mlflow.flavors.mlflow_experiment_tracker_flavor import MLFlowExperimentTrackerSettings

from smoothkd.tracking import record_stop

# For steps whose results belong to the pipeline's run or to another step's (the data and config, the
# evaluations, the registry, the report): no child run of their own, which would hold nothing.
ON_PIPELINE_RUN = {"experiment_tracker": MLFlowExperimentTrackerSettings(nested=False)}


def record_failure(exception: BaseException) -> None:
    """ZenML failure hook of every step: the failing step's run and the pipeline's run get its name and
    the one-line error as tags and note, a gate's refusal reading as a rejection."""
    record_stop(get_step_context().step_run.name, exception)
