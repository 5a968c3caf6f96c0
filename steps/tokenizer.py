"""Tokenizer step: the tokenizer shared by teacher and students."""

from typing import Annotated

import mlflow
from zenml import log_metadata, step

from smoothkd.config import RunConfig
from smoothkd.stages import check_models, prepare_tokenizer
from steps.tracking import ON_PIPELINE_RUN


@step(experiment_tracker=True, settings=ON_PIPELINE_RUN)
def build_tokenizer(config: dict, dataset_dir: str) -> Annotated[str, "tokenizer"]:
    """The tokenizer shared by teacher and students (path or hub id), checked against both models' configs
    here, before the teacher trains; both recorded on the pipeline's run."""
    cfg = RunConfig.model_validate(config)
    tokenizer = prepare_tokenizer(cfg, dataset_dir)
    compatibility = check_models(cfg, tokenizer).describe()
    mlflow.set_tags({"smoothkd.tokenizer": str(tokenizer), "smoothkd.compatibility": compatibility[:5000]})
    log_metadata(metadata={"compatibility": compatibility})
    return str(tokenizer)
