"""The `distill` pipeline: data → validation → tokenizer → teacher → calibration gate → soft labels
→ students (SFT baseline and one KD student per α) → factual-rate detectors → evaluation of every model
→ registration and promotion gate → report. Wiring only."""

from collections.abc import Callable
from typing import Any, NamedTuple

from zenml import pipeline
from zenml.enums import ExecutionMode
from zenml.steps import BaseStep

from smoothkd.config import RunConfig
from smoothkd.stages import student_name
from steps.calibration import check_teacher_calibration
from steps.data import load_data
from steps.detector import factual_rate_detector
from steps.evaluate import evaluate
from steps.labels import precompute_labels
from steps.registry import register_students
from steps.report import report
from steps.student import student
from steps.teacher import teacher
from steps.tokenizer import build_tokenizer
from steps.tracking import record_failure
from steps.validate import validate_data


class Front(NamedTuple):
    """The front half's outputs inside a pipeline definition (step artifacts, wired by ZenML)."""

    dataset_dir: Any
    tokenizer: Any
    teacher_summary: Any
    teacher_dir: Any
    calibration_temperature: Any
    label_store: Any
    validation: Any  # the gates' typed verdicts, for the report
    calibration: Any


class TeacherHalf(NamedTuple):
    """One teacher's part of the front half inside a pipeline definition (step artifacts)."""

    teacher_summary: Any
    teacher_dir: Any
    calibration_temperature: Any
    calibration: Any
    label_store: Any


def _as_defined(step: BaseStep, invocation: str) -> BaseStep:
    """A step as its definition configures it (a static pipeline's run configuration adds the rest)."""
    return step


def _invoke(step: BaseStep, configure: Callable[[BaseStep, str], BaseStep], suffix: str, *args):
    """`step(*args)` as invocation `<step name><suffix>`, with the options `configure` gives it."""
    invocation = f"{step.name}{suffix}"
    return configure(step, invocation)(*args, **({"id": invocation} if suffix else {}))


def teacher_half(config: dict, dataset_dir, tokenizer, suffix: str = "",
                 configure: Callable[[BaseStep, str], BaseStep] = _as_defined) -> TeacherHalf:
    """teacher → calibration gate → labels, for a pipeline definition; `suffix` names the steps of a
    second teacher (the sweep's `--teacher-seeds`); `configure(step, invocation id)` gives each step its
    options (a dynamic pipeline's resources)."""
    teacher_summary, teacher_dir = _invoke(teacher, configure, suffix, config, dataset_dir, tokenizer)
    calibration_temperature, calibration = _invoke(check_teacher_calibration, configure, suffix, config,
                                                   dataset_dir, teacher_dir)
    label_store = _invoke(precompute_labels, configure, suffix, config, dataset_dir, tokenizer, teacher_dir,
                          calibration_temperature)
    return TeacherHalf(teacher_summary, teacher_dir, calibration_temperature, calibration, label_store)


def front_half(config: dict, configure: Callable[[BaseStep, str], BaseStep] = _as_defined) -> Front:
    """The steps of `smoothkd.stages.front_half`, for a pipeline definition: data → validation → tokenizer
    (and model checks) → teacher → calibration gate → labels. The runner's preflight comes before;
    `configure` as in `teacher_half`."""
    # Everything downstream consumes the validated dataset: a stopping failure ends the run here.
    dataset_dir, validation = _invoke(validate_data, configure, "", config,
                                      _invoke(load_data, configure, "", config))
    tokenizer = _invoke(build_tokenizer, configure, "", config, dataset_dir)
    t = teacher_half(config, dataset_dir, tokenizer, configure=configure)
    return Front(dataset_dir, tokenizer, t.teacher_summary, t.teacher_dir, t.calibration_temperature,
                 t.label_store, validation, t.calibration)


# Fail fast re-raises the failing step's own exception (not a generic RuntimeError), so the CLI can report
# a known input problem (e.g. DataValidationError) as one line. The failure hook runs in every step, so the
# MLflow runs of whichever step stops the run say where and why.
@pipeline(enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST, on_failure=record_failure)
def distill(config: dict) -> None:
    """Run the whole flow for one validated RunConfig (passed as a plain dict)."""
    (dataset_dir, tokenizer, teacher_summary, teacher_dir, calibration_temperature, label_store, validation,
     calibration) = front_half(config)
    students = {
        alpha: student(config, dataset_dir, tokenizer, calibration_temperature, label_store, teacher_dir,
                       alpha=alpha, id=f"student_{student_name(alpha)}")
        for alpha in [0.0, *RunConfig.model_validate(config).distill.alphas]
    }
    # Lookback features are per (layer, head): the teacher gets its own detector, the students share one
    # fitted on all students' held-out generations.
    teacher_detector = factual_rate_detector(config, dataset_dir, [teacher_summary], id="detector_teacher",
                                             after=[calibration_temperature])
    student_detector = factual_rate_detector(config, dataset_dir, list(students.values()),
                                             id="detector_student")
    evaluated_teacher = evaluate(config, dataset_dir, teacher_summary, teacher_detector,
                                 id="evaluate_teacher")
    evaluated_students = [
        evaluate(config, dataset_dir, summary, student_detector, id=f"evaluate_{student_name(alpha)}")
        for alpha, summary in students.items()
    ]
    # Registration comes after every gate and evaluation: a run that failed earlier registers nothing.
    gate_decisions = register_students(config, teacher_summary, evaluated_students)
    report(config, evaluated_teacher, evaluated_students, gate_decisions, validation, calibration,
           teacher_detector, student_detector)
