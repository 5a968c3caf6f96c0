"""Tokenizer step: the tokenizer shared by teacher and students."""

from typing import Annotated

from zenml import step

from smoothkd.config import RunConfig
from smoothkd.stages import prepare_tokenizer


@step
def build_tokenizer(config: dict, dataset_dir: str) -> Annotated[str, "tokenizer"]:
    """The tokenizer shared by teacher and students (path or hub id)."""
    return str(prepare_tokenizer(RunConfig.model_validate(config), dataset_dir))
