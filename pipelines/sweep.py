"""The α × seed ablation as a ZenML pipeline: the front half once (the `distill` pipeline's own steps,
`pipelines.distill.front_half`), then one training and one evaluation step per (arm, seed) and the
teacher's evaluation, then one analysis step: KD − SFT per α and split over seeds
(`smoothkd.evaluation.sweep`), `sweep.json`, the chart and the MLflow parent run with a child per model in
the experiment `<tracking.experiment_name>-sweeps`.

A dynamic pipeline: the fan-out is known only at the command line, and `step.submit` runs the student steps
concurrently, on the local orchestrator in threads of this process. Each thread's model trains and evaluates
in one of `sweep.workers` spawned processes with the training's fixed intra-op thread count
(`stages.in_worker`; evaluations first, so models finish one by one), so a model's weights do not depend on
the schedule and its content key is the one `smoothkd run` gives the same-seed student: either reuses the
other's. Each student step carries its own ResourceSettings (its thread count as CPUs, or the config's
`orchestration.resources` for `student` and `evaluate`; the front half's steps get theirs by their own
names), so on a kubernetes or skypilot stack every student is its own pod or job. Every artifact is content-
addressed by the stages, so a sweep killed midway resumes with what it finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from zenml import pipeline
from zenml.enums import ExecutionMode

from pipelines.distill import TeacherHalf, front_half, teacher_half
from pipelines.options import configurer
from smoothkd.config import RunConfig, apply_overrides
from smoothkd.data.dataset import uses_embedded
from smoothkd.distill.runtime import parallel_trainings
from smoothkd.evaluation.sweep import SweepSummary, check_primary
from smoothkd.stages import student_name
from steps.sweep import (
    LISTENERS,
    SUMMARY_FILE,
    SWEEP_TAG,
    analyse_sweep,
    evaluate_sweep_model,
)
from steps.train_student import train_student

THREADS_ENV = "ZENML_DYNAMIC_PIPELINE_WORKER_COUNT"


@dataclass(frozen=True)
class Arm:
    """One arm of the sweep: a kind of student trained once per seed. `alpha` weighs the KD term (0: SFT);
    the student of seed s trains from seed s + `seed_offset` (an arm with its own seed stream, e.g. a
    second SFT arm for an A/A comparison) and is paired with the baseline's student of seed s."""

    name: str
    alpha: float
    seed_offset: int = 0

    def model(self, seed: int) -> str:
        """The name of this arm's student of (pairing) seed `seed`, in step ids, progress and MLflow."""
        return f"{self.name}_s{seed}"


def sweep_arms(kd_alphas: list[float]) -> list[Arm]:
    """The SFT baseline, then one KD arm per α > 0 (ascending, once each)."""
    return [Arm(student_name(0.0), 0.0), *(Arm(student_name(a), a) for a in sorted(set(kd_alphas) - {0}))]


# The A/A check's second SFT arm trains from seeds this far from the baseline's, so no seed is shared.
NULL_ARM, NULL_SEED_OFFSET = "sft_null", 1000


def null_arms() -> list[Arm]:
    """The A/A check (`--null`): the SFT baseline and, in place of the KD arms, a second SFT arm from its own
    seed stream, analysed exactly as a KD arm: it must resolve no difference."""
    return [Arm(student_name(0.0), 0.0), Arm(NULL_ARM, 0.0, NULL_SEED_OFFSET)]


def sweep_config(cfg: RunConfig) -> RunConfig:
    """The config the sweep runs: on the embedded corpus, evaluation splits of at least `sweep.eval_rows`
    rows (the demo itself may score fewer). Models are keyed by the training splits alone
    (`data.dataset.training_key`), so the teacher and students of a `smoothkd run` are reused."""
    embedded = cfg.data.embedded
    if not uses_embedded(cfg.data):
        return cfg
    rows = cfg.sweep.eval_rows
    sizes = {"n_cnndm": max(embedded.n_cnndm, rows), "n_xsum": max(embedded.n_xsum, rows)}
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={
        "embedded": embedded.model_copy(update=sizes)})})


def sweep_seeds(cfg: RunConfig, n: int) -> list[int]:
    """The student training seeds: the config's `student.train.seed` and the next n − 1, so seed one is
    the student `smoothkd run` trains (and its cache is reused)."""
    return [cfg.student.train.seed + i for i in range(n)]


# Fail fast stops the sweep at the first failing step, whose own exception `run_sweep` raises, so the CLI
# reports a known input problem (a rejected teacher, invalid data) as one line.
@pipeline(dynamic=True, enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST)
def sweep(config: dict, name: str, seeds: list[int], arms: list[dict], started: float,
          teacher_seeds: list[int] | None = None) -> None:
    """The front half, every (arm, seed) student trained and evaluated concurrently, the analysis.

    With several `teacher_seeds` (the first is the config's), each further teacher trains, passes its own
    calibration gate and labels the data; the KD students of the i-th seed learn from teacher i mod K, so
    the seed-level interval covers teachers too. SFT students have no teacher."""
    cfg = RunConfig.model_validate(config)

    configure = configurer(cfg)
    front = front_half(config, configure)
    teachers = [TeacherHalf(front.teacher_summary, front.teacher_dir, front.calibration_temperature,
                            front.calibration, front.label_store)]
    for teacher_seed in (teacher_seeds or [])[1:]:
        seeded = apply_overrides(config, [f"teacher.train.seed={teacher_seed}"])
        teachers.append(teacher_half(seeded, front.dataset_dir, front.tokenizer, configure,
                                     suffix=f"_t{teacher_seed}"))
    # Every student its own ResourceSettings (a pod or job each on a cluster stack): `student` and `evaluate`
    # entries as `smoothkd run` reads them, at least the training's fixed threads.
    threads = cfg.student.train.threads
    train = configure(train_student, "train_student", "student", cpu_count=threads)
    evaluate = configure(evaluate_sweep_model, "evaluate_sweep_model", "evaluate", cpu_count=threads)
    evaluations = [evaluate.submit(config, front.dataset_dir, front.teacher_summary, "teacher",
                                   id="evaluate_teacher")]
    students = []
    for i, seed in enumerate(seeds):
        t = teachers[i % len(teachers)]
        for arm in [Arm(**fields) for fields in arms]:
            student = train.submit(config, front.dataset_dir, front.tokenizer, t.calibration_temperature,
                                   t.label_store, t.teacher_dir, arm.alpha, seed + arm.seed_offset,
                                   id=f"train_{arm.model(seed)}")
            students.append(student)
            evaluations.append(evaluate.submit(config, front.dataset_dir, student, arm.model(seed),
                                               id=f"evaluate_{arm.model(seed)}"))
    configure(analyse_sweep, "analyse_sweep")(config, name, seeds, arms, front.teacher_summary, students,
                                              evaluations, front.calibration_temperature, front.label_store,
                                              started, teacher_seeds)


def time_left(seconds: list[float], workers: int, finished: int, total: int) -> str:
    """An estimate of the time the remaining models take: the mean of `seconds` (each model trained in
    this sweep: its training plus its evaluation) over the `workers` that train side by side. A cached model
    finishes at once and says nothing of the pace. Not the time between finishes: models trained side by
    side finish together, seconds apart. Remaining models that turn out cached make it an overestimate."""
    if finished == total:
        return "done"
    if not seconds:
        return "time left: after the first trained model"
    left = sum(seconds) / len(seconds) / workers * (total - finished)
    return f"~{left / 60:.1f} min left" if left >= 90 else f"~{left:.0f} s left"


def _headline(metrics: dict[str, float], splits: list[str]) -> str:
    return ", ".join(f"{split} consistency {metrics[f'{split}/factual_consistency']:.1f}%"
                     for split in splits if f"{split}/factual_consistency" in metrics)


def progress_printer(cfg: RunConfig, total: int, echo: Callable[[str], None]):
    """A listener that prints one line per evaluated model: how it came, its headline, the time left."""
    lock, finished, trained = threading.Lock(), [0], []
    workers = parallel_trainings(cfg.sweep.workers, cfg.device)

    def heard(name: str, model, evaluation, seconds: float) -> None:
        with lock:  # steps finish in several threads at once
            finished[0] += 1
            if not model.cached:
                trained.append(model.train_seconds + seconds)
            how = "cached" if model.cached else f"trained in {model.train_seconds:.1f} s"
            left = time_left(trained, workers, finished[0], total)
            echo(f"[{finished[0]}/{total}] {name}: {how}, evaluated in {seconds:.1f} s; "
                 f"{_headline(evaluation.metrics, cfg.eval.splits)}; {left}")

    return heard


@contextlib.contextmanager
def step_threads(steps: int) -> Iterator[None]:
    """At least `steps` threads for the dynamic pipeline's concurrent steps while it runs (ZenML's default
    is 10). A step waits for a thread in the order it became ready: with fewer threads than steps, every
    training submitted first holds or awaits one, and each evaluation, ready only once its training is
    done, waits behind all of them, so no model would finish until the last training had. The worker
    pool, not these threads, bounds how many models train at once."""
    previous = os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = str(max(steps, int(previous or 0)))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(THREADS_ENV)
        else:
            os.environ[THREADS_ENV] = previous


def run_sweep(cfg: RunConfig, n_seeds: int, arms: list[Arm], echo: Callable[[str], None] = print,
              teachers: int = 1) -> SweepSummary:
    """Run the sweep pipeline for every arm over `n_seeds` seeds on the config's stack and return its
    summary. The first arm is the baseline, the others are compared with it (by name). With `teachers`
    > 1, the KD students learn from that many teachers (`teacher.train.seed` and the next ones), in turn.

    Raises, as `smoothkd run` would, before any student trains: on a bad model reference (in seconds, before
    any data or teacher, on the local stack), DataValidationError, TeacherRejectedError.
    """
    from pipelines.distill import distill_steps
    from pipelines.options import check_step_names
    from pipelines.runner import finished_run, prepare_stack, step_error
    from smoothkd.tracking import kd_label, run_name

    started = time.time()
    cfg = sweep_config(cfg)
    check_primary(cfg.eval.primary, [f"{arm.name}/{split}" for arm in arms[1:] for split in cfg.eval.splits])
    check_step_names(cfg, distill_steps(cfg))  # its `orchestration` entries name steps as `smoothkd run` does
    _, settings, options = prepare_stack(cfg)
    seeds = sweep_seeds(cfg, n_seeds)
    teacher_seeds = [cfg.teacher.train.seed + j for j in range(teachers)]
    compared = kd_label([a.alpha for a in arms if a.alpha]) if any(a.alpha for a in arms) else "A/A"
    name = run_name("sweep", cfg.name, compared, f"{n_seeds} seeds")
    models = 1 + n_seeds * len(arms)
    listener = progress_printer(cfg, models, echo)
    LISTENERS.append(listener)
    try:
        with step_threads(2 * models):
            run = sweep.with_options(settings=settings, run_name=name, **options)(
                config=cfg.model_dump(mode="json"), name=name, seeds=seeds, arms=[asdict(a) for a in arms],
                started=started, teacher_seeds=teacher_seeds)
    except Exception as err:
        cause = step_error(err)
        raise cause from cause.__cause__  # keeps what the step's exception carried (a worker's traceback)
    finally:
        LISTENERS.remove(listener)
    if cfg.orchestration.stack != "local":
        run = finished_run(run, cfg.orchestration.stack, "analyse_sweep")
    return run.steps["analyse_sweep"].outputs["sweep_summary"][0].load()


def latest_sweep(uri: str, experiment_name: str) -> dict | None:
    """The summary (`sweep.json`) of the newest finished sweep in the experiment `<experiment_name>-sweeps`
    of the MLflow store `uri`; None when no sweep finished there."""
    import mlflow

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
