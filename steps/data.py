"""Data step: load (or generate) every split into one content-addressed dataset directory; the first step,
so it gives the pipeline's run its params, the resolved config."""

from pathlib import Path
from typing import Annotated

import mlflow
from zenml import step

from smoothkd.config import RunConfig
from smoothkd.io import read_json
from smoothkd.stages import prepare_data
from smoothkd.tracking import log_params
from steps.tracking import ON_PIPELINE_RUN


@step(experiment_tracker=True, settings=ON_PIPELINE_RUN)
def load_data(config: dict) -> Annotated[str, "dataset_dir"]:
    """Log the resolved config (flat keys) to the pipeline's run, then load (or generate) every split
    into one content-addressed dataset directory and log its key and row counts."""
    cfg = RunConfig.model_validate(config)
    # First, so a run the data stops still shows its config. The image's environment may hold tokens.
    log_params(cfg.model_dump(mode="json"), hidden=("orchestration.docker.environment.",))
    dataset_dir = prepare_data(cfg)
    manifest = read_json(Path(dataset_dir) / "manifest.json")
    mlflow.set_tags({"smoothkd.dataset": manifest["key"]}
                    | {f"smoothkd.dataset.rows.{split}": str(n) for split, n in manifest["counts"].items()})
    return str(dataset_dir)
