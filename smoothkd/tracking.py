"""MLflow logging helpers used inside steps (plain `mlflow` calls on the active run), the runs' names, and
what a run records when a step stops it."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mlflow
from mlflow.entities import Metric, RunTag

from smoothkd.artifacts import Results
from smoothkd.errors import GATE_REJECTIONS, USER_ERRORS, one_line

# The markdown description the MLflow UI shows on a run's page.
NOTE_TAG = "mlflow.note.content"
PARENT_TAG = "mlflow.parentRunId"
# How a pipeline run ended (`completed`, `rejected` by a gate, `failed`), and where and why it stopped.
OUTCOME_TAG, STOPPED_AT_TAG, ERROR_TAG = "smoothkd.outcome", "smoothkd.stopped_at", "smoothkd.error"
# Set by the report step on the pipeline's run, naming its results record: only a run that got that far.
RESULTS_TAG, RESULTS_ARTIFACT = "smoothkd.results", "results.json"
MAX_TAG_CHARS = 8000  # MLflow's limit on a tag value; longer ones are cut
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+):[^@/\s]+@")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` → `{"a.b": 1}`; lists become their string form."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def ensure_experiment(uri: str, name: str, artifact_root: str | Path) -> str:
    """Create the experiment with artifacts under `artifact_root` (not the caller's cwd) if missing."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = Path(artifact_root).resolve()
    location.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(name, artifact_location=location.as_uri())


def log_params(params: dict[str, Any], hidden: tuple[str, ...] = ()) -> None:
    """Log a nested dict to the active run as flat params (`a.b`), each value cut to 500 characters.

    Params are readable by everyone with the store: a URL's password is masked, and so is every value
    under a `hidden` key prefix (environment variables, which may hold tokens).
    """
    mlflow.log_params({k: "***" if k.startswith(hidden) else _URL_PASSWORD.sub(r"\1:***@", str(v))[:500]
                       for k, v in flatten(params).items()})


def log_training(params: dict[str, Any], loss_history: list | None, prefix: str = "train") -> None:
    """Log flat params and the loss curve (one point per logging step) to the active run."""
    log_params(params)
    for step, loss in loss_history or []:
        mlflow.log_metric(f"{prefix}/loss", loss, step=int(step))


def log_metrics(metrics: dict[str, float], run_id: str | None = None, model_id: str | None = None) -> None:
    """Log to the active run, or to run `run_id` (a model's run, written from another step); with
    `model_id`, linked to that MLflow LoggedModel too (its page in the UI shows them)."""
    clean = {k.replace("@", "_"): float(v) for k, v in metrics.items()}
    if run_id is None:
        mlflow.log_metrics(clean, model_id=model_id)
    else:
        now = int(time.time() * 1000)
        linked = [Metric(k, v, now, 0, model_id=model_id, run_id=run_id) for k, v in clean.items()]
        mlflow.MlflowClient().log_batch(run_id, metrics=linked)


def run_name(*what: str) -> str:
    """`demo · kd α=0.1,1 · 20261201-211530-4242`: what ran first, so that names the UI cuts short still
    tell runs apart; the time and process id last, which keep it unique."""
    return " · ".join([*what, f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"])


def kd_label(alphas: list[float]) -> str:
    """`kd α=0.1,1`: the KD weights a run trains next to its SFT baseline."""
    return "kd α=" + ",".join(f"{a:g}" for a in alphas) if alphas else "sft only"


def path_name(name: str) -> str:
    """A run name as a directory name: `demo-kd-a=0.1,1-20261201-211530-4242`."""
    return re.sub(r"[^A-Za-z0-9.,=_-]+", "-", name.replace("α", "a")).strip("-")


def run_link(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """The MLflow UI's address of a run's page (or of one of its artifacts), relative to the UI's root."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    return f"{page}/artifacts/{artifact}" if artifact else page


def artifact_source(run_id: str, artifact: str) -> str:
    """The tracking server's address of an artifact's bytes, relative to its root: an image in a note."""
    return f"get-artifact?path={quote(artifact, safe='')}&run_uuid={run_id}"


def child_runs(client: mlflow.MlflowClient, experiment_id: str, parent_id: str) -> dict:
    """The runs nested under run `parent_id`, by name (the newest of a name wins)."""
    runs = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'",
                              order_by=["attributes.start_time ASC"])
    return {run.info.run_name: run for run in runs}


def stop_tags(step: str, error: BaseException) -> dict[str, str]:
    """Where and why `error` stopped a run at `step`: outcome, step, the one-line error, and a note that
    reads as a gate's rejection when a gate refused (GATE_REJECTIONS), as a failure otherwise."""
    gate = next((name for kind, name in GATE_REJECTIONS.items() if isinstance(error, kind)), None)
    first = one_line(error)
    line = first if isinstance(error, USER_ERRORS) else f"{type(error).__name__}: {first}"
    heading = (f"Rejected by the {gate} gate at step `{step}`" if gate else f"Failed at step `{step}`")
    return {OUTCOME_TAG: "rejected" if gate else "failed", STOPPED_AT_TAG: step,
            ERROR_TAG: line[:MAX_TAG_CHARS], NOTE_TAG: f"**{heading}**\n\n{line}"[:MAX_TAG_CHARS]}


def record_stop(step: str, error: BaseException) -> None:
    """Tag and note the active run, and the pipeline run above it, with where and why `error` stopped the
    run. Their FAILED status is the tracker's, set as the step ends."""
    active = mlflow.active_run()
    if active is None:  # a step without tracking: nothing in MLflow to mark
        return
    client, run = mlflow.MlflowClient(), active.info
    tags = stop_tags(step, error)
    client.log_batch(run.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    parent = active.data.tags.get(PARENT_TAG)
    if parent:
        note = f"{tags[NOTE_TAG]}\n\nThe step's own run: [{step}]({run_link(run.experiment_id, run.run_id)})"
        client.log_batch(parent, tags=[RunTag(k, v) for k, v in (tags | {NOTE_TAG: note}).items()])


def mark_stopped_run(uri: str, experiment_name: str, run_name: str, step: str, error: BaseException) -> None:
    """Tag, note and end as FAILED the pipeline's run `run_name` with where and why `error` stopped it at
    `step`, unless a step's failure hook has marked it (a step without tracking, such as a training in a
    worker, has no run of its own to mark)."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], f"attributes.run_name = '{run_name}'", max_results=1)
    if not runs or STOPPED_AT_TAG in runs[0].data.tags:
        return
    tags = stop_tags(step, error)
    client.log_batch(runs[0].info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    # The last tracked step to end had closed it as finished.
    client.set_terminated(runs[0].info.run_id, "FAILED")


def latest_results(uri: str, experiment_name: str) -> tuple[str, Results] | None:
    """(pipeline run name, results record) of the newest finished `distill` run in the experiment: the
    `results.json` its report step logged to it. None when no run got that far."""
    import json
    import tempfile

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    finished = f"tags.`{RESULTS_TAG}` = '{RESULTS_ARTIFACT}' and attributes.status = 'FINISHED'"
    runs = client.search_runs([experiment.experiment_id], finished,
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run = runs[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run.info.run_id, RESULTS_ARTIFACT, tmp)
        return run.info.run_name, Results.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
