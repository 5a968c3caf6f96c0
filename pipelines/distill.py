"""The `distill` pipeline: data → validation → tokenizer → teacher → calibration gate → soft labels
→ students (SFT baseline and one KD student per α) → factual-rate detectors → evaluation of every model
→ registration and promotion gate → report. Wiring only."""

from typing import Any, NamedTuple

from zenml import pipeline
from zenml.enums import ExecutionMode
from zenml.steps import BaseStep

from pipelines.options import Configure, configurer
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
from steps.train_student import train_student
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


def _invoke(step: BaseStep, configure: Configure, invocation: str, *args):
    """`step(*args)` as invocation `invocation`, with the options `configure` gives it."""
    return configure(step, invocation)(*args, id=invocation)


def teacher_half(config: dict, dataset_dir, tokenizer, configure: Configure, suffix: str = ""
                 ) -> TeacherHalf:
    """teacher → calibration gate → labels, for a pipeline definition; `suffix` names the steps of a
    second teacher (the sweep's `--teacher-seeds`); `configure(step, invocation id)` gives each step its
    options (resources on a cluster stack)."""
    teacher_summary, teacher_dir = _invoke(teacher, configure, f"teacher{suffix}", config, dataset_dir,
                                           tokenizer)
    calibration_temperature, calibration = _invoke(check_teacher_calibration, configure,
                                                   f"check_teacher_calibration{suffix}", config, dataset_dir,
                                                   teacher_dir)
    label_store = _invoke(precompute_labels, configure, f"precompute_labels{suffix}", config, dataset_dir,
                          tokenizer, teacher_dir, calibration_temperature)
    return TeacherHalf(teacher_summary, teacher_dir, calibration_temperature, calibration, label_store)


def front_half(config: dict, configure: Configure) -> Front:
    """The steps of `smoothkd.stages.front_half`, for a pipeline definition: data → validation → tokenizer
    (and model checks) → teacher → calibration gate → labels. The runner's preflight comes before;
    `configure` as in `teacher_half`."""
    # Everything downstream consumes the validated dataset: a stopping failure ends the run here.
    dataset_dir, validation = _invoke(validate_data, configure, "validate_data", config,
                                      _invoke(load_data, configure, "load_data", config))
    tokenizer = _invoke(build_tokenizer, configure, "build_tokenizer", config, dataset_dir)
    t = teacher_half(config, dataset_dir, tokenizer, configure)
    return Front(dataset_dir, tokenizer, t.teacher_summary, t.teacher_dir, t.calibration_temperature,
                 t.label_store, validation, t.calibration)


def distill_steps(cfg: RunConfig) -> dict[str, str]:
    """Invocation id → the name `orchestration` entries use for it, of every step `distill` runs for
    `cfg`: a dynamic pipeline's steps exist only once it runs, so the entries are checked against these
    before it does. A student's training step (`train_sft`) goes by `student`, as in the sweep."""
    models = [student_name(alpha) for alpha in [0.0, *cfg.distill.alphas]]
    front = [load_data, validate_data, build_tokenizer, teacher, check_teacher_calibration, precompute_labels]
    return {
        **{step.name: step.name for step in front},
        **{f"train_{m}": student.name for m in models}, **{f"student_{m}": student.name for m in models},
        "detector_teacher": factual_rate_detector.name, "detector_student": factual_rate_detector.name,
        **{f"evaluate_{m}": evaluate.name for m in ["teacher", *models]},
        register_students.name: register_students.name, report.name: report.name,
    }


# Dynamic: the students' trainings are submitted together and train side by side, each in one of the run's
# worker processes with its training's fixed threads (`steps.train_student`; as many at once as
# `sweep.workers`: two on a two-core CPU, one on a GPU) while this process evaluates the teacher; on a
# cluster stack each training is its own pod or job. Each trained student is then logged in its own MLflow
# run by `student`, one at a time. Fail fast stops the run at the first failing step; the runner raises
# that step's own exception (`runner.step_error`), e.g. a DataValidationError, which the CLI reports as
# one line. Every step carries the failure hook (`configurer`), so the MLflow runs of whichever step stops
# the run say where and why (the runner marks the pipeline's run when the step that failed has none).
@pipeline(dynamic=True, enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST)
def distill(config: dict) -> None:
    """Run the whole flow for one validated RunConfig (passed as a plain dict)."""
    cfg = RunConfig.model_validate(config)
    configure = configurer(cfg)
    front = front_half(config, configure)
    alphas = [0.0, *cfg.distill.alphas]
    # After the calibration gate: no student trains once the teacher is rejected. A student's entries in
    # `orchestration` (`student`, `student_sft`) are its training's.
    trained = {
        alpha: configure(train_student, f"student_{student_name(alpha)}", student.name,
                         cpu_count=cfg.student.train.threads).submit(
            config, front.dataset_dir, front.tokenizer, front.calibration_temperature, front.label_store,
            front.teacher_dir, alpha, cfg.student.train.seed, id=f"train_{student_name(alpha)}")
        for alpha in alphas
    }
    # Lookback features are per (layer, head): the teacher gets its own detector, the students share one
    # fitted on all students' held-out generations. The teacher's are made while the students train.
    teacher_detector = _invoke(factual_rate_detector, configure, "detector_teacher", config,
                               front.dataset_dir, [front.teacher_summary])
    evaluated_teacher = _invoke(evaluate, configure, "evaluate_teacher", config, front.dataset_dir,
                                front.teacher_summary, teacher_detector)
    logged = student.with_options(on_failure=record_failure)  # no resources: it logs what trained
    students = {alpha: logged(config, trained[alpha], front.calibration_temperature, front.label_store, alpha,
                              id=f"student_{student_name(alpha)}")
                for alpha in alphas}
    student_detector = _invoke(factual_rate_detector, configure, "detector_student", config,
                               front.dataset_dir, list(students.values()))
    evaluated_students = [
        _invoke(evaluate, configure, f"evaluate_{student_name(alpha)}", config, front.dataset_dir, summary,
                student_detector)
        for alpha, summary in students.items()
    ]
    # Registration comes after every gate and evaluation: a run that failed earlier registers nothing.
    gate_decisions = _invoke(register_students, configure, "register_students", config,
                             front.teacher_summary, evaluated_students)
    _invoke(report, configure, "report", config, evaluated_teacher, evaluated_students, gate_decisions,
            front.validation, front.calibration, teacher_detector, student_detector)
