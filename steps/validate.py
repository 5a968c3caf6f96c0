"""Validation step: every split checked with Great Expectations before the tokenizer, teacher or students."""

from typing import Annotated

from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from smoothkd.artifacts import DataValidation
from smoothkd.config import RunConfig, output_root
from smoothkd.stages import validate_dataset
from smoothkd.tracking import path_name
from smoothkd.validation.report import log_to_mlflow

logger = get_logger(__name__)


@step(experiment_tracker=True)
def validate_data(config: dict, dataset_dir: str) -> tuple[Annotated[str, "validated_dataset_dir"],
                                                           Annotated[DataValidation, "validation"]]:
    """Validate the dataset, record the verdict and Data Docs, and stop the run on a stopping failure;
    hand on the dataset and the verdict (for the report)."""
    cfg = RunConfig.model_validate(config)
    docs_dir = output_root(cfg) / "data_docs" / path_name(get_step_context().pipeline_run.name)
    report = validate_dataset(cfg, dataset_dir, docs_dir)
    # Recorded before raising, so a failed run still carries its verdict and Data Docs.
    log_to_mlflow(report)
    log_metadata(metadata=report.metadata())
    logger.info("Data Docs: %s", report.docs_index)
    if report.warnings:
        logger.warning(report.message())
    report.raise_for_failures()
    return dataset_dir, report.record()
