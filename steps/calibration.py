"""Teacher calibration gate step: measure the teacher, record the verdict, stop the run on a reject."""

from pathlib import Path
from typing import Annotated

import mlflow
from zenml import get_step_context, log_metadata, step
from zenml.logger import get_logger

from smoothkd import stages
from smoothkd.artifacts import CalibrationVerdict
from smoothkd.calibration.gate import GATE_NAME, CalibrationReport
from smoothkd.config import RunConfig, output_root
from smoothkd.errors import TeacherRejectedError
from smoothkd.tracking import flatten, log_metrics, path_name

logger = get_logger(__name__)


def _record(report: CalibrationReport, calibration_config: dict) -> None:
    """Log the verdict, metrics and diagrams to the step's MLflow run and the ZenML step metadata."""
    run = mlflow.active_run()
    mlflow.log_params({f"calibration.{k}": v for k, v in flatten(calibration_config).items()}
                      | {"calibration_temperature": report.temperature})
    log_metrics({f"calibration/{k}": v for k, v in report.metrics.scalars().items()})
    if report.before is not None:
        log_metrics({f"calibration_before_fit/{k}": v for k, v in report.before.scalars().items()})
    mlflow.set_tags({"gate": GATE_NAME, "gate.verdict": report.verdict, "gate.message": report.message()})
    # The pipeline's parent run carries the verdict too, so a rejected run is visible at the top level.
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent:
        mlflow.MlflowClient().set_tag(parent, f"gate.{GATE_NAME}", report.verdict)
    mlflow.log_artifacts(str(Path(report.diagram).parent), "calibration")  # diagrams + calibration.json
    log_metadata(metadata={"gate": GATE_NAME, "verdict": report.verdict, "message": report.message(),
                           "calibration_temperature": report.temperature, "fitted": report.fitted,
                           "diagram": report.diagram, **report.metrics.scalars()})


@step(experiment_tracker=True)
def check_teacher_calibration(config: dict, dataset_dir: str, teacher_dir: str
                              ) -> tuple[Annotated[float, "calibration_temperature"],
                                         Annotated[CalibrationVerdict, "calibration"]]:
    """Judge the teacher's calibration on held-out tokens; return the calibration temperature, the one
    the soft labels are made at (given or fitted; the distillation temperature stays in the config), and
    the verdict (for the report).

    A rejected teacher is recorded first, then stops the run before any label or student is made.
    """
    cfg = RunConfig.model_validate(config)
    out_dir = output_root(cfg) / "runs" / path_name(get_step_context().pipeline_run.name) / "calibration"
    report = stages.check_teacher_calibration(cfg, dataset_dir, teacher_dir, out_dir)
    _record(report, cfg.calibration.model_dump(mode="json"))
    logger.info("%s\nreliability diagram: %s", report.message(), report.diagram)
    if not report.passed:
        raise TeacherRejectedError(report.message())
    return report.temperature, report.record()
