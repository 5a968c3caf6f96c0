"""Data step: load (or generate) every split into one content-addressed dataset directory."""

from typing import Annotated

from zenml import step

from smoothkd.config import RunConfig
from smoothkd.stages import prepare_data


@step
def load_data(config: dict) -> Annotated[str, "dataset_dir"]:
    """Load (or generate) every split into one content-addressed dataset directory."""
    return str(prepare_data(RunConfig.model_validate(config)))
