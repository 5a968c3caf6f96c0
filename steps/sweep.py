"""Sweep steps (the students train in `steps.train_student`): one model evaluated in a worker process with
the training's fixed thread count (`stages.in_worker`), and the analysis that compares every arm with the
baseline over seeds and records the sweep: `sweep.json`, the chart, an MLflow parent run with a child per
model."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import mlflow
from zenml import get_step_context, step

from smoothkd import stages
from smoothkd.artifacts import Evaluation, ModelArtifact
from smoothkd.charts import sweep_chart
from smoothkd.config import RunConfig, output_root, tracking_uri
from smoothkd.distill.labels import PrecomputeResult
from smoothkd.distill.runtime import parallel_trainings
from smoothkd.evaluation.machine import machine
from smoothkd.evaluation.sweep import (
    COMPARED,
    Arm,
    SweepModel,
    SweepSummary,
    baseline,
    compare_arms,
    conclusions,
)
from smoothkd.io import write_json
from smoothkd.registry.store import PER_EXAMPLE_ARTIFACT
from smoothkd.tracking import ensure_experiment, log_metrics, log_training, path_name

SUMMARY_FILE, CHART_FILE = "sweep.json", "sweep.png"
SWEEP_TAG = "smoothkd.sweep"

# Who hears of each evaluated model while a sweep runs in this process (the local orchestrator runs its
# steps in threads here): the runner's progress line. A remote step runs elsewhere and tells no one here.
LISTENERS: list[Callable[[str, ModelArtifact, Evaluation, float], None]] = []


@step
def evaluate_sweep_model(config: dict, dataset_dir: str, model: ModelArtifact, name: str
                         ) -> Annotated[Evaluation, "evaluation"]:
    """Evaluate (or reuse the evaluation of) one model of the sweep, named `name` in its tables."""
    cfg = RunConfig.model_validate(config)
    # Ahead of any training still waiting for a worker: models finish one by one, not all at the end.
    evaluation, seconds = stages.in_worker(cfg, stages.evaluate_model, cfg, model.path, dataset_dir, None,
                                           False, name, priority=0)
    for listener in LISTENERS:
        listener(name, model, evaluation, seconds)
    return evaluation


@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """Point the fluent MLflow API at `uri` for the analysis, and back where it was afterwards."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _log_model(experiment: str, model: SweepModel, artifact: ModelArtifact, evaluation: Evaluation) -> str:
    """One child run: what trained the model, its loss curve, evaluation metrics, per-example scores."""
    # A nested run lands in the active experiment, not its parent's, unless told.
    with mlflow.start_run(experiment_id=experiment, run_name=model.name, nested=True) as run:
        log_training({"role": artifact.role, "alpha": "" if model.alpha is None else model.alpha,
                      "seed": "" if model.seed is None else model.seed, "path": artifact.path,
                      "cached": artifact.cached, "runtime": artifact.runtime or {}}, artifact.loss_history)
        log_metrics({**evaluation.metrics, "parameters": artifact.parameters,
                     "train/seconds": artifact.train_seconds})
        mlflow.log_dict(evaluation.per_example, PER_EXAMPLE_ARTIFACT)
        return run.info.run_id


@step
def analyse_sweep(config: dict, sweep_name: str, seeds: list[int], arms: list[dict], teacher: ModelArtifact,
                  students: list[ModelArtifact], evaluations: list[Evaluation],
                  calibration_temperature: float, label_store: PrecomputeResult, started: float,
                  teacher_seeds: list[int] | None = None) -> Annotated[SweepSummary, "sweep_summary"]:
    """Every arm − the baseline (the first arm) per split over seeds, the baseline's own check and the
    conclusions, recorded as the sweep's MLflow parent run `sweep_name` (a child per model, in
    `<experiment>-sweeps`), `sweep.json` and the chart under
    `<output_dir>/sweeps/<sweep name>/`. `students` are in seed-major, arm-minor order; `evaluations` are the
    teacher's, then the students' in that order. `started`: when the sweep began (epoch seconds);
    `teacher_seeds`: the teachers the KD students of the i-th seed learnt from, in turn (the first's labels
    and temperature are the ones given)."""
    cfg = RunConfig.model_validate(config)
    kd_alphas = [arm["alpha"] for arm in arms if arm["alpha"]]
    out_dir = output_root(cfg) / "sweeps" / path_name(sweep_name)
    uri = tracking_uri(cfg)
    experiment = ensure_experiment(uri, f"{cfg.tracking.experiment_name}-sweeps",
                                   output_root(cfg) / "mlartifacts")
    keyed = [(arm, seed) for seed in seeds for arm in arms]
    by_arm: dict[str, dict[int, Evaluation]] = {arm["name"]: {} for arm in arms}
    for (arm, seed), evaluation in zip(keyed, evaluations[1:], strict=True):
        by_arm[arm["name"]][seed] = evaluation
    sft = by_arm[arms[0]["name"]]
    with _tracking(uri), mlflow.start_run(experiment_id=experiment, run_name=sweep_name) as parent:
        mlflow.set_tags({SWEEP_TAG: "true", "smoothkd.zenml_run": get_step_context().pipeline_run.name})
        mlflow.log_params({"config": cfg.name, "seeds": ",".join(map(str, seeds)),
                           "alphas": ",".join(f"{arm['alpha']:g}" for arm in arms), "teacher": teacher.path,
                           "labels": label_store.path, "teacher_temperature": calibration_temperature,
                           "workers": parallel_trainings(cfg.sweep.workers, cfg.device),
                           "threads": cfg.student.train.threads})
        models = []
        teacher_seeds = teacher_seeds or [cfg.teacher.train.seed]
        taught_by = {seed: teacher_seeds[i % len(teacher_seeds)] for i, seed in enumerate(seeds)}
        named = [("teacher", None, None, teacher, teacher_seeds[0]),
                 *((f"{arm['name']}_s{seed}", arm["alpha"], seed, student,
                    taught_by[seed] if arm["alpha"] else None)
                   for (arm, seed), student in zip(keyed, students, strict=True))]
        for (name, alpha, seed, artifact, teacher_seed), evaluation in zip(named, evaluations, strict=True):
            model = SweepModel(name, alpha, seed, artifact.path, "", artifact.cached,
                               {k: v for k, v in evaluation.metrics.items() if "_ci_" not in k}, teacher_seed)
            models.append(SweepModel(**{**asdict(model), "run_id": _log_model(experiment, model, artifact,
                                                                               evaluation)}))
        differences = compare_arms(sft, [Arm(arm["name"], arm["alpha"], by_arm[arm["name"]])
                                         for arm in arms[1:]], cfg.eval)
        summary = SweepSummary(
            config=cfg.name, run_name=sweep_name, run_id=parent.info.run_id, seeds=seeds, alphas=kd_alphas,
            confidence=cfg.eval.confidence, teacher_temperature=calibration_temperature, models=models,
            teacher_seeds=teacher_seeds,
            differences=differences,
            conclusions=conclusions(differences, cfg.eval.confidence, cfg.eval.primary),
            chart=str(out_dir / CHART_FILE), summary_file=str(out_dir / SUMMARY_FILE),
            machine=machine(cfg.student.train.threads),
            baseline=baseline(sft, evaluations[0], cfg.eval.confidence))
        for d in differences:
            name = f"delta/{d.arm}/{d.split}/{d.metric}"
            log_metrics({name: d.mean, f"{name}_ci_low": d.low, f"{name}_ci_high": d.high})
        for kd, per_split in summary.conclusions.items():
            mlflow.set_tags({f"conclusion.{kd}.{split}": text for split, text in per_split.items()})
        summary.seconds = time.time() - started
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
