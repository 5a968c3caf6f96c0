"""The α × seed ablation: the teacher and its labels once, then every (α, seed) student, each evaluated,
and KD − SFT per α and split over seeds (`smoothkd.evaluation.sweep`).

A loop over the stages in this process, not a ZenML pipeline: the sweep is an experiment that registers
nothing and promotes nothing, its fan-out (α × seed) is known only at the command line, and every
expensive artifact is already content-addressed by the stages, so a rerun (or the models a `smoothkd run`
of the same config trained) is reused without an orchestrator's step cache. Stages that launch several
processes (`train.num_processes > 1`) still do. MLflow gets one parent run with a child per model in the
experiment `<tracking.experiment_name>-sweeps`; the JSON summary and the chart go to
`<output_dir>/sweeps/<run name>/` and to the parent run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import mlflow

from smoothkd.artifacts import Evaluation, ModelArtifact
from smoothkd.charts import sweep_chart
from smoothkd.config import RunConfig, apply_overrides, output_root, tracking_uri
from smoothkd.errors import TeacherRejectedError
from smoothkd.evaluation.sweep import (
    COMPARED,
    SweepModel,
    SweepSummary,
    conclusions,
    kd_minus_sft,
    kd_name,
)
from smoothkd.io import write_json
from smoothkd.registry.store import PER_EXAMPLE_ARTIFACT
from smoothkd.stages import (
    check_teacher,
    evaluate_model,
    prepare_data,
    prepare_teacher,
    prepare_tokenizer,
    student_name,
    teacher_labels,
    train_student,
    validate_dataset,
)
from smoothkd.tracking import ensure_experiment, kd_label, log_metrics, log_training, path_name, run_name

SUMMARY_FILE, CHART_FILE = "sweep.json", "sweep.png"


def sweep_seeds(cfg: RunConfig, n: int) -> list[int]:
    """The student training seeds: the config's `student.train.seed` and the next n − 1, so seed one is
    the student `smoothkd run` trains (and its cache is reused)."""
    return [cfg.student.train.seed + i for i in range(n)]


def with_student_seed(cfg: RunConfig, seed: int) -> RunConfig:
    """`cfg` with the student's training seed (its initialisation and data order) set to `seed`."""
    raw = apply_overrides(cfg.model_dump(mode="json"), [f"student.train.seed={seed}"])
    return RunConfig.model_validate(raw)


@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """Point the fluent MLflow API at `uri` for the sweep, and back where it was afterwards."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _log_model(experiment: str, name: str, artifact: ModelArtifact, alpha: float | None, seed: int | None,
               evaluation: Evaluation) -> str:
    """One child run: what trained the model, its loss curve, evaluation metrics, per-example scores."""
    # A nested run lands in the active experiment, not its parent's, unless told.
    with mlflow.start_run(experiment_id=experiment, run_name=name, nested=True) as run:
        log_training({"role": artifact.role, "alpha": "" if alpha is None else alpha,
                      "seed": "" if seed is None else seed, "path": artifact.path, "cached": artifact.cached},
                     artifact.loss_history)
        log_metrics({**evaluation.metrics, "parameters": artifact.parameters,
                     "train/seconds": artifact.train_seconds})
        mlflow.log_dict(evaluation.per_example, PER_EXAMPLE_ARTIFACT)
        return run.info.run_id


def _headline(evaluation: Evaluation, splits: list[str]) -> str:
    return ", ".join(f"{split} consistency {evaluation.metrics[f'{split}/factual_consistency']:.1f}%"
                     for split in splits if f"{split}/factual_consistency" in evaluation.metrics)


def run_sweep(cfg: RunConfig, n_seeds: int, alphas: list[float], echo: Callable[[str], None] = print
              ) -> SweepSummary:
    """Train and evaluate the SFT baseline and a KD student per α in `alphas` for each of `n_seeds` seeds,
    after the data gate, the teacher and its calibration gate and labels (each reused when cached).

    Raises DataValidationError or TeacherRejectedError, as `smoothkd run` would, before any student trains.
    """
    start = time.perf_counter()
    seeds = sweep_seeds(cfg, n_seeds)
    kd_alphas = sorted({a for a in alphas if a})
    sweep_name = run_name("sweep", cfg.name, kd_label(kd_alphas), f"{n_seeds} seeds")
    out_dir = output_root(cfg) / "sweeps" / path_name(sweep_name)

    data_dir = prepare_data(cfg)
    docs_dir = output_root(cfg) / "data_docs" / path_name(sweep_name)
    validate_dataset(cfg, data_dir, docs_dir).raise_for_failures()
    tokenizer = prepare_tokenizer(cfg, data_dir)
    teacher = prepare_teacher(cfg, data_dir, tokenizer)
    trained = "cached" if teacher.cached else f"trained in {teacher.train_seconds:.1f} s"
    echo(f"teacher: {trained} ({teacher.path})")
    gate = check_teacher(cfg, data_dir, teacher.path, out_dir / "calibration")
    if not gate.passed:
        raise TeacherRejectedError(gate.message())
    labels = teacher_labels(cfg, data_dir, tokenizer, teacher.path, gate.temperature, progress=False)
    echo(f"teacher {gate.message()}; labels {labels.path}")

    uri = tracking_uri(cfg)
    experiment = ensure_experiment(uri, f"{cfg.tracking.experiment_name}-sweeps",
                                   output_root(cfg) / "mlartifacts")
    models: list[SweepModel] = []
    evaluations: dict[float, dict[int, Evaluation]] = {a: {} for a in [0.0, *kd_alphas]}
    total = 1 + len(seeds) * len(evaluations)
    with _tracking(uri), mlflow.start_run(experiment_id=experiment, run_name=sweep_name) as parent:
        mlflow.set_tag("smoothkd.sweep", "true")
        mlflow.log_params({"config": cfg.name, "seeds": ",".join(map(str, seeds)),
                           "alphas": ",".join(f"{a:g}" for a in evaluations), "teacher": teacher.path,
                           "labels": labels.path, "teacher_temperature": gate.temperature})

        def done(name: str, artifact: ModelArtifact, alpha: float | None, seed: int | None,
                 evaluation: Evaluation, seconds: float) -> None:
            run_id = _log_model(experiment, name, artifact, alpha, seed, evaluation)
            models.append(SweepModel(name, alpha, seed, artifact.path, run_id, artifact.cached,
                                     {k: v for k, v in evaluation.metrics.items() if "_ci_" not in k}))
            trained = "cached" if artifact.cached else f"trained in {artifact.train_seconds:.1f} s"
            echo(f"[{len(models)}/{total}] {name}: {trained}, evaluated in {seconds:.1f} s; "
                 f"{_headline(evaluation, cfg.eval.splits)}")

        began = time.perf_counter()
        done("teacher", teacher, None, None,
             evaluate_model(cfg, teacher.path, data_dir, progress=False, label="teacher"),
             time.perf_counter() - began)
        for seed in seeds:
            seeded = with_student_seed(cfg, seed)
            for alpha in evaluations:
                student = train_student(seeded, data_dir, tokenizer, alpha, labels.path, teacher.path,
                                        gate.temperature)
                began = time.perf_counter()
                model = f"{student_name(alpha)}_s{seed}"
                evaluation = evaluate_model(seeded, student.path, data_dir, progress=False, label=model)
                evaluations[alpha][seed] = evaluation
                done(model, student, alpha, seed, evaluation, time.perf_counter() - began)

        differences = kd_minus_sft(evaluations, cfg.eval)
        summary = SweepSummary(
            config=cfg.name, run_name=sweep_name, run_id=parent.info.run_id, seeds=seeds, alphas=kd_alphas,
            confidence=cfg.eval.confidence, teacher_temperature=gate.temperature, models=models,
            differences=differences, conclusions=conclusions(differences, cfg.eval.confidence),
            chart=str(out_dir / CHART_FILE), summary_file=str(out_dir / SUMMARY_FILE))
        for d in differences:
            name = f"delta/{kd_name(d.alpha)}/{d.split}/{d.metric}"
            log_metrics({name: d.mean, f"{name}_ci_low": d.low, f"{name}_ci_high": d.high})
        for kd, per_split in summary.conclusions.items():
            mlflow.set_tags({f"conclusion.{kd}.{split}": text for split, text in per_split.items()})
        summary.seconds = time.perf_counter() - start
        # The chart first, the summary last (each written then renamed): a sweep.json means a whole sweep.
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            drawn = sweep_chart([asdict(d) for d in differences], dict(COMPARED), cfg.eval.confidence,
                                Path(tmp) / CHART_FILE)
            os.replace(drawn, out_dir / CHART_FILE)
        write_json(out_dir / SUMMARY_FILE, summary.to_dict())
        for file in (CHART_FILE, SUMMARY_FILE):
            mlflow.log_artifact(str(out_dir / file), "sweep")
    return summary
