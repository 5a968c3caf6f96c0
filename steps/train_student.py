"""Training step: one student trained (or reused) in one of the run's worker processes, with its training's
fixed thread count (`stages.train_student(isolated=True)`), so students submitted together train side by
side and a student's weights do not depend on which worker trained it. No MLflow here: several of these
run at once in one process, and the MLflow experiment tracker's per-step set-up is not safe for that (its
clean-up resets the process-wide tracking URI); `student` logs the trained model."""

from typing import Annotated

from zenml import step

from smoothkd import stages
from smoothkd.artifacts import ModelArtifact
from smoothkd.config import RunConfig
from smoothkd.distill.labels import PrecomputeResult


@step
def train_student(config: dict, dataset_dir: str, tokenizer: str, calibration_temperature: float,
                  label_store: PrecomputeResult, teacher_dir: str, alpha: float, seed: int
                  ) -> Annotated[ModelArtifact, "student"]:
    """Train (or reuse) the student of weight `alpha` (0: SFT) from training seed `seed`.

    `calibration_temperature` comes from the teacher calibration gate, so no student trains after a
    rejection.
    """
    cfg = stages.with_student_seed(RunConfig.model_validate(config), seed)
    return stages.train_student(cfg, dataset_dir, tokenizer, alpha, label_store.path, teacher_dir,
                                calibration_temperature, isolated=True)
