"""Tokenizer step: the tokenizer shared by teacher and students."""

from typing import Annotated

from zenml import log_metadata, step

from smoothkd.config import RunConfig
from smoothkd.modeling.compat import check_run_models
from smoothkd.stages import prepare_tokenizer


@step
def build_tokenizer(config: dict, dataset_dir: str) -> Annotated[str, "tokenizer"]:
    """The tokenizer shared by teacher and students (path or hub id), checked against both models' configs
    here, before the teacher trains."""
    cfg = RunConfig.model_validate(config)
    tokenizer = prepare_tokenizer(cfg, dataset_dir)
    compatibility = check_run_models(tokenizer, tokenizer_cfg=cfg.tokenizer, teacher=cfg.teacher,
                                     student=cfg.student, eval_cfg=cfg.eval)
    log_metadata(metadata={"compatibility": compatibility.describe()})
    return str(tokenizer)
