"""The local ZenML stack `make demo` runs on: default orchestrator and artifact store + MLflow tracker."""

from zenml.client import Client
from zenml.enums import StackComponentType

STACK_NAME = "smoothkd-local"
TRACKER_NAME = "smoothkd-mlflow"


def ensure_local_stack(tracking_uri: str) -> str:
    """Register (once) and activate the local stack whose MLflow tracker writes to `tracking_uri`."""
    client = Client()
    tracker_cfg = {"tracking_uri": tracking_uri}
    moved = False
    try:
        tracker = client.get_stack_component(StackComponentType.EXPERIMENT_TRACKER, TRACKER_NAME)
        if tracker.configuration.get("tracking_uri") != tracking_uri:
            client.update_stack_component(TRACKER_NAME, StackComponentType.EXPERIMENT_TRACKER,
                                          configuration=tracker_cfg)
            moved = True
    except KeyError:
        client.create_stack_component(TRACKER_NAME, "mlflow", StackComponentType.EXPERIMENT_TRACKER,
                                      tracker_cfg)
    try:
        client.get_stack(STACK_NAME)
    except KeyError:
        client.create_stack(STACK_NAME, components={
            StackComponentType.ORCHESTRATOR: "default",
            StackComponentType.ARTIFACT_STORE: "default",
            StackComponentType.EXPERIMENT_TRACKER: TRACKER_NAME,
        })
    if moved:
        # ZenML caches a built stack by the stack's own update time, which a component update leaves
        # alone: touch the stack, or a second run in this process logs to the previous tracking URI.
        client.update_stack(STACK_NAME,
                            component_updates={StackComponentType.EXPERIMENT_TRACKER: [TRACKER_NAME]})
    if client.active_stack_model.name != STACK_NAME:
        client.activate_stack(STACK_NAME)
    return STACK_NAME
