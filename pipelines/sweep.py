"""The α × seed ablation: the teacher and its labels once, then every (arm, seed) student, each evaluated,
and KD − SFT per α and split over seeds (`smoothkd.evaluation.sweep`).

The front half is `smoothkd.stages.front_half`, the stages the `distill` pipeline runs as steps (preflight
first, so a bad model reference stops the sweep in seconds). The models then train and evaluate in
`sweep.workers` spawned processes at once, each with its training section's fixed intra-op thread count,
so a student's weights do not depend on the schedule and its content key is the one `smoothkd run` gives
the same-seed student: either reuses the other's. Every artifact is content-addressed by the stages, so a
sweep killed midway resumes with what it finished. MLflow gets one parent run with a child per model in
the experiment `<tracking.experiment_name>-sweeps`; the JSON summary and the chart go to
`<output_dir>/sweeps/<run name>/` and to the parent run.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
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
from smoothkd.stages import evaluate_model, front_half, student_name, train_student
from smoothkd.tracking import ensure_experiment, kd_label, log_metrics, log_training, path_name, run_name

SUMMARY_FILE, CHART_FILE = "sweep.json", "sweep.png"
SWEEP_TAG = "smoothkd.sweep"


@dataclass(frozen=True)
class Arm:
    """One arm of the sweep: a kind of student trained once per seed. `alpha` weighs the KD term (0: SFT);
    the student of seed s trains from seed s + `seed_offset` (an arm with its own seed stream, e.g. a
    second SFT arm for an A/A comparison) and is paired with the baseline's student of seed s."""

    name: str
    alpha: float
    seed_offset: int = 0

    def model(self, seed: int) -> str:
        """The name of this arm's student of (pairing) seed `seed`, in progress lines and MLflow runs."""
        return f"{self.name}_s{seed}"


def sweep_arms(kd_alphas: list[float]) -> list[Arm]:
    """The SFT baseline, then one KD arm per α > 0 (ascending, once each)."""
    return [Arm(student_name(0.0), 0.0), *(Arm(student_name(a), a) for a in sorted(set(kd_alphas) - {0}))]


def sweep_seeds(cfg: RunConfig, n: int) -> list[int]:
    """The student training seeds: the config's `student.train.seed` and the next n − 1, so seed one is
    the student `smoothkd run` trains (and its cache is reused)."""
    return [cfg.student.train.seed + i for i in range(n)]


def with_student_seed(cfg: RunConfig, seed: int) -> RunConfig:
    """`cfg` with the student's training seed (its initialisation and data order) set to `seed`."""
    raw = apply_overrides(cfg.model_dump(mode="json"), [f"student.train.seed={seed}"])
    return RunConfig.model_validate(raw)


@dataclass(frozen=True)
class StudentInputs:
    """What every student of the sweep is trained from: the front half's results, as plain values."""

    data_dir: str
    tokenizer: str
    labels_dir: str
    teacher_path: str
    temperature: float


@dataclass(frozen=True)
class Job:
    """One model for a worker: a student (its arm and pairing seed) to train and evaluate, or the teacher
    (`teacher` given, `arm` None) to evaluate."""

    name: str
    arm: Arm | None = None
    seed: int | None = None
    teacher: ModelArtifact | None = None


@dataclass(frozen=True)
class Finished:
    """A job's results: the model, its evaluation and how long the evaluation took."""

    job: Job
    artifact: ModelArtifact
    evaluation: Evaluation
    eval_seconds: float


def run_job(config: dict, inputs: StudentInputs, job: Job) -> Finished:
    """Train (or reuse) the job's student, or take the teacher, and evaluate it (or reuse its evaluation)."""
    cfg = RunConfig.model_validate(config)
    if job.arm is None:
        artifact = job.teacher
    else:
        cfg = with_student_seed(cfg, job.seed + job.arm.seed_offset)
        artifact = train_student(cfg, inputs.data_dir, inputs.tokenizer, job.arm.alpha, inputs.labels_dir,
                                 inputs.teacher_path, inputs.temperature)
    began = time.perf_counter()
    evaluation = evaluate_model(cfg, artifact.path, inputs.data_dir, progress=False, label=job.name)
    return Finished(job, artifact, evaluation, time.perf_counter() - began)


def start_worker(threads: int) -> None:
    """A worker's fixed intra-op thread count (training sets its own section's again)."""
    import torch

    torch.set_num_threads(threads)


@contextlib.contextmanager
def _worker_environment() -> Iterator[None]:
    """While workers start: no progress bars (several processes' bars would interleave on one console) and
    no library chatter below errors; the parent's environment is restored after."""
    quiet = {"TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    previous = {key: os.environ.get(key) for key in quiet}
    os.environ.update(quiet)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


def run_jobs(cfg: RunConfig, inputs: StudentInputs, jobs: list[Job], done: Callable[[Finished], None]
             ) -> None:
    """Run `jobs` on `sweep.workers` spawned processes (started fresh: no torch thread pool forked), calling
    `done` in this process as each finishes. A failing job cancels those not started and is raised."""
    context = multiprocessing.get_context("spawn")
    config = cfg.model_dump(mode="json")
    pool = ProcessPoolExecutor(cfg.sweep.workers, mp_context=context, initializer=start_worker,
                               initargs=(cfg.student.train.threads,))
    try:
        with _worker_environment():
            futures = [pool.submit(run_job, config, inputs, job) for job in jobs]
        for future in as_completed(futures):
            done(future.result())
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


def time_left(finished: int, total: int, seconds: float) -> str:
    """An estimate of the time the remaining models take, from the pace so far."""
    left = seconds / finished * (total - finished)
    return f"~{left / 60:.1f} min left" if left >= 90 else f"~{left:.0f} s left"


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
                      "seed": "" if seed is None else seed, "path": artifact.path, "cached": artifact.cached,
                      "runtime": artifact.runtime or {}},
                     artifact.loss_history)
        log_metrics({**evaluation.metrics, "parameters": artifact.parameters,
                     "train/seconds": artifact.train_seconds})
        mlflow.log_dict(evaluation.per_example, PER_EXAMPLE_ARTIFACT)
        return run.info.run_id


def _headline(evaluation: Evaluation, splits: list[str]) -> str:
    return ", ".join(f"{split} consistency {evaluation.metrics[f'{split}/factual_consistency']:.1f}%"
                     for split in splits if f"{split}/factual_consistency" in evaluation.metrics)


def run_sweep(cfg: RunConfig, n_seeds: int, arms: list[Arm], echo: Callable[[str], None] = print
              ) -> SweepSummary:
    """Train and evaluate every arm's student for each of `n_seeds` seeds after the front half (every stage
    reused when cached), and compare each KD arm with the SFT baseline (`kd_minus_sft` keys arms by α: one
    arm per α).

    Raises, as `smoothkd run` would, before any student trains: on a bad model reference (in seconds, before
    any data or teacher), DataValidationError, TeacherRejectedError.
    """
    start = time.perf_counter()
    seeds = sweep_seeds(cfg, n_seeds)
    kd_alphas = [arm.alpha for arm in arms if arm.alpha]
    sweep_name = run_name("sweep", cfg.name, kd_label(kd_alphas), f"{n_seeds} seeds")
    out_dir = output_root(cfg) / "sweeps" / path_name(sweep_name)

    def heard(teacher: ModelArtifact) -> None:
        trained = "cached" if teacher.cached else f"trained in {teacher.train_seconds:.1f} s"
        echo(f"teacher: {trained} ({teacher.path})")

    front = front_half(cfg, out_dir / "calibration", output_root(cfg) / "data_docs" / path_name(sweep_name),
                       on_teacher=heard)
    gate, teacher, labels = front.gate, front.teacher, front.labels
    if not gate.passed:
        raise TeacherRejectedError(gate.message())
    echo(f"teacher {gate.message()}; labels {labels.path}")
    inputs = StudentInputs(str(front.data_dir), str(front.tokenizer), labels.path, teacher.path,
                           gate.temperature)

    uri = tracking_uri(cfg)
    experiment = ensure_experiment(uri, f"{cfg.tracking.experiment_name}-sweeps",
                                   output_root(cfg) / "mlartifacts")
    jobs = [Job("teacher", teacher=teacher),
            *(Job(arm.model(seed), arm, seed) for seed in seeds for arm in arms)]
    finished: list[tuple[int, SweepModel]] = []
    evaluations: dict[float, dict[int, Evaluation]] = {arm.alpha: {} for arm in arms}
    with _tracking(uri), mlflow.start_run(experiment_id=experiment, run_name=sweep_name) as parent:
        mlflow.set_tag(SWEEP_TAG, "true")
        mlflow.log_params({"config": cfg.name, "seeds": ",".join(map(str, seeds)),
                           "alphas": ",".join(f"{arm.alpha:g}" for arm in arms), "teacher": teacher.path,
                           "labels": labels.path, "teacher_temperature": gate.temperature,
                           "workers": cfg.sweep.workers, "threads": cfg.student.train.threads})
        began = time.perf_counter()

        def done(result: Finished) -> None:
            job, artifact, evaluation = result.job, result.artifact, result.evaluation
            alpha = None if job.arm is None else job.arm.alpha
            if job.arm is not None:
                evaluations[job.arm.alpha][job.seed] = evaluation
            run_id = _log_model(experiment, job.name, artifact, alpha, job.seed, evaluation)
            finished.append((jobs.index(job), SweepModel(
                job.name, alpha, job.seed, artifact.path, run_id, artifact.cached,
                {k: v for k, v in evaluation.metrics.items() if "_ci_" not in k})))
            trained = "cached" if artifact.cached else f"trained in {artifact.train_seconds:.1f} s"
            left = time_left(len(finished), len(jobs), time.perf_counter() - began)
            echo(f"[{len(finished)}/{len(jobs)}] {job.name}: {trained}, evaluated in "
                 f"{result.eval_seconds:.1f} s; {_headline(evaluation, cfg.eval.splits)}; {left}")

        run_jobs(cfg, inputs, jobs, done)
        models = [model for _, model in sorted(finished, key=lambda pair: pair[0])]
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


def latest_sweep(uri: str, experiment_name: str) -> dict | None:
    """The summary (`sweep.json`) of the newest finished sweep in the experiment `<experiment_name>-sweeps`
    of the MLflow store `uri`; None when no sweep finished there."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(f"{experiment_name}-sweeps")
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`{SWEEP_TAG}` = 'true' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(runs[0].info.run_id, f"sweep/{SUMMARY_FILE}", tmp)
        return json.loads(Path(path).read_text(encoding="utf-8"))
