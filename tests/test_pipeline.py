"""End to end: the real `distill` ZenML pipeline on an isolated store, MLflow on sqlite, `smoothkd ui`."""

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
from conftest import free_port, http_json, stop_process_group

from smoothkd.config import load_config, tracking_uri
from smoothkd.registry.store import champion_version

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory):
    """(config, results, seconds the call took) of the tiny pipeline on a fresh output directory."""
    from pipelines.runner import run_distill

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(ROOT / "configs/test/tiny.yaml", [f"output_dir={out}"])
    start = time.perf_counter()
    results = run_distill(cfg)
    return cfg, results, time.perf_counter() - start


@pytest.fixture(scope="module")
def tiny_run(timed_run):
    return timed_run[:2]


def _scored_here(client, name: str, version: str, split: str) -> dict[str, list[float]]:
    """Registered student `name` `version`'s per-example scores on `split`, computed here from the rows of
    the localization table its run logged, independently of the pipeline's scorers: ROUGE-Lsum by
    rouge_score on summary and reference, consistency and hallucinated facts counted from its fact checks."""
    from rouge_score import rouge_scorer

    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(client.get_model_version(name, version).run_id,
                                         f"evaluation/{split}/localization.json", tmp)
        rows = json.loads(Path(path).read_text(encoding="utf-8"))["rows"]
    rouge = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=False)
    return {"rougeLsum": [100 * rouge.score(r["reference"], r["summary"])["rougeLsum"].fmeasure
                          for r in rows],
            "factual_consistency": [100 * sum(f["supported"] for f in r["facts"]) / len(r["facts"])
                                    if r["facts"] else 0.0 for r in rows],
            "hallucinated_facts_per_summary": [sum(not f["supported"] for f in r["facts"]) for r in rows]}


def test_pipeline_runs_and_reports_every_model(timed_run):
    cfg, results, seconds = timed_run
    roles = [m.role for m in results.models]
    assert roles == ["teacher", "student_sft", "student_kd_a0.5"]
    for model in results.models:
        assert (Path(model.path) / "model.safetensors").exists()
        assert {"general/ece", "general/overconfidence", "cnndm/prior_trap_rate", "xsum/prior_trap_rate"} <= \
            set(model.metrics)  # the mechanism: every model's prior-trap rate and calibration
    # Each student's headline numbers are the means of the scores computed here from what it wrote; an
    # interval is wide exactly when those scores vary.
    client = mlflow.MlflowClient(tracking_uri(cfg))
    for model in results.models[1:]:
        for split in cfg.eval.splits:
            scores = _scored_here(client, cfg.promotion.registered_model_name, model.version, split)
            assert all(len(values) == 6 for values in scores.values())  # the tiny config's split size
            for name, values in scores.items():
                mean, low, high = (model.metrics[f"{split}/{name}{end}"]
                                   for end in ("", "_ci_low", "_ci_high"))
                assert mean == pytest.approx(sum(values) / len(values), abs=1e-6), (split, name)
                assert low <= mean <= high and (low < high) == (len(set(values)) > 1), (split, name)
    # The 4-step tiny models say nothing checkable, so no detector can be fitted: the rate is left out.
    assert results.gates.student_detector.disabled and not results.gates.student_detector.path
    assert not any("factual_rate" in name for m in results.models for name in m.metrics)
    assert set(results.deltas) == {"kd_a0.5 - sft"}
    # The wall time is the whole pipeline's: from its first step's start to its last step's end, at least.
    from zenml.client import Client

    run_steps = Client().get_pipeline_run(results.run_name).steps
    steps = run_steps.values()
    span = (max(s.end_time for s in steps) - min(s.start_time for s in steps)).total_seconds()
    assert span <= results.pipeline_seconds <= seconds
    # The steps the run ran are the ones `orchestration` entries are checked against before it runs.
    from pipelines.distill import distill_steps

    assert set(run_steps) == set(distill_steps(cfg))
    # The students train side by side: each depends on the front half only, not on the other.
    front = {"load_data", "validate_data", "build_tokenizer", "teacher", "check_teacher_calibration",
             "precompute_labels"}
    for name in ("sft", "kd_a0.5"):
        assert set(run_steps[f"train_{name}"].spec.upstream_steps) <= front
        assert f"train_{name}" in run_steps[f"student_{name}"].spec.upstream_steps  # logs what trained
        # Configured as it was submitted: its own ResourceSettings (the training's threads as CPUs).
        assert run_steps[f"train_{name}"].config.settings["resources"].cpu_count == cfg.student.train.threads


def test_students_are_registered_and_the_gate_decides_the_champion(tiny_run):
    cfg, results = tiny_run
    client = mlflow.MlflowClient(tracking_uri(cfg))
    name = cfg.promotion.registered_model_name
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
    assert sorted(versions) == ["1", "2"]
    assert [d.candidate for d in results.decisions] == ["sft", "kd_a0.5"]
    # No champion before this run and no floors in the tiny config: a student passes exactly when, on each
    # split, some summary shares a word with its reference (ROUGE-Lsum above 0, scored here), and the gate
    # reads its own metrics. The champion is then the passing student with the higher mean consistency (the
    # first on a tie), or none, with no alias, when none passes.
    by_version = {m.version: m.metrics for m in results.models[1:]}
    passes = {v: all(any(_scored_here(client, name, v, s)["rougeLsum"]) for s in cfg.eval.splits)
              for v in by_version}
    for decision in results.decisions:
        metrics = by_version[decision.version]
        assert {c["name"]: c["value"] for c in decision.criteria} == {
            f"{s}/rougeLsum above 0": metrics[f"{s}/rougeLsum"] for s in cfg.eval.splits}
        assert decision.passed == passes[decision.version]
    consistency = {v: sum(by_version[v][f"{s}/factual_consistency"] for s in cfg.eval.splits)
                   for v in by_version if passes[v]}
    best = max(consistency, key=lambda v: (consistency[v], -int(v)), default=None)
    assert (results.champion.version if results.champion else None) == best
    assert champion_version(client, name) == best
    outcomes = {v: "champion" if v == best else "passed, not best" if passes[v] else "failed gate"
                for v in by_version}
    assert {d.version: d.outcome for d in results.decisions} == outcomes
    for decision in results.decisions:
        tags = versions[decision.version].tags
        assert tags["gate.passed"] == str(decision.passed).lower()
        assert tags["candidate"] == decision.candidate
        assert tags["zenml_pipeline_name"] == "distill"  # registered through the stack's model registry
        run_id = versions[decision.version].run_id
        artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation")}
        assert {"evaluation/per_example.json", "evaluation/cnndm", "evaluation/xsum"} <= artifacts
        tables = {a.path for a in client.list_artifacts(run_id, "evaluation/cnndm")}
        assert {f"evaluation/cnndm/localization.{ext}" for ext in ("csv", "json", "html")} <= tables
        # The version comes from the student's LoggedModel, which holds the metrics the gate judged.
        logged = client.get_logged_model(versions[decision.version].source.removeprefix("models:/"))
        linked = {m.key: m.value for m in logged.metrics}
        for metric in ("cnndm/factual_consistency", "xsum/rougeLsum", "general/ece"):
            assert linked[metric] == pytest.approx(by_version[decision.version][metric])
        assert {"name": name, "version": decision.version} in json.loads(logged.tags["mlflow.modelVersions"])
    # Mirrored in ZenML's Model Control Plane, the champion (if any) in production.
    from zenml.client import Client

    for decision in results.decisions:
        mirrored = Client().get_model_version(name, f"mlflow-v{decision.version}")
        assert (mirrored.stage == "production") == (decision.outcome == "champion")
    # The pipeline's own run carries the SFT-vs-KD chart, the loss curves, the results and the decisions.
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name).experiment_id
    parent = client.search_runs([experiment], f"attributes.run_name = '{results.run_name}'")[0]
    charts = {a.path for a in client.list_artifacts(parent.info.run_id, "charts")}
    assert charts == {"charts/sft_vs_kd.png", "charts/loss_curves.png"}
    assert {"results.json", "gate"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {parent.data.tags[f"gate.{d.candidate}"] for d in results.decisions} == {
        f"v{d.version}: {d.outcome}" for d in results.decisions}
    # No child run holds nothing: the steps that log to another run (evaluations, registry, report) or to
    # the pipeline's run (data, tokenizer) open none.
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    names = {r.info.run_name for r in children}
    assert names == {"validate_data", "teacher", "check_teacher_calibration", "precompute_labels",
                     "student_sft", "student_kd_a0.5", "detector_teacher", "detector_student"}
    assert all(r.data.metrics or r.data.params for r in children), names


def test_each_model_is_an_mlflow_run_with_params_loss_curve_and_metrics(tiny_run):
    cfg, results = tiny_run
    client = mlflow.MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert {"teacher", "student_sft", results.run_name} <= set(by_name)
    student = by_name["student_sft"]
    assert student.data.params["train.max_steps"] == "4"
    assert student.data.metrics["cnndm/rougeLsum"] == pytest.approx(
        results.models[1].metrics["cnndm/rougeLsum"])
    curve = client.get_metric_history(student.info.run_id, "train/loss")
    assert [p.step for p in curve] == [2, 4]
    # Artifacts land under output_dir, not in the caller's working directory.
    assert Path(cfg.output_dir).resolve().as_uri() in experiment.artifact_location


def test_teacher_passes_the_calibration_gate_before_any_student(tiny_run):
    cfg, results = tiny_run
    client = mlflow.MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    gate = client.search_runs([experiment.experiment_id],
                              "attributes.run_name = 'check_teacher_calibration'")[0]
    assert gate.data.tags["gate.verdict"] == "pass"
    assert gate.data.params["calibration_temperature"] == "1.0"
    assert 0 <= gate.data.metrics["calibration/ece"] <= cfg.calibration.max_ece
    assert {a.path for a in client.list_artifacts(gate.info.run_id, "calibration")} >= {
        "calibration/reliability.png", "calibration/calibration.json"}


def test_results_cli_reads_the_latest_run_back_from_the_store(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from smoothkd.cli import app

    cfg, results = tiny_run
    args = ["--config", str(ROOT / "configs/test/tiny.yaml"), "--set", f"output_dir={cfg.output_dir}"]
    shown = CliRunner().invoke(app, ["results", "--json", *args])
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.stdout)
    assert summary["run"] == results.run_name
    assert set(summary["models"]) == {"teacher", "sft", "kd_a0.5"}
    for model in results.models:
        by_split = summary["models"][model.name]
        assert set(by_split) == {"cnndm", "xsum", "general"}
        for split in ("cnndm", "xsum"):
            for metric in ("factual_consistency", "rougeLsum", "hallucinated_facts_per_summary"):
                assert by_split[split][metric] == pytest.approx(model.metrics[f"{split}/{metric}"])
            assert not any(name.endswith(("_ci_low", "_ci_high")) for name in by_split[split])
    table = CliRunner().invoke(app, ["results", *args])
    assert table.exit_code == 0 and results.run_name in table.output and "kd_a0.5" in table.output
    empty = CliRunner().invoke(app, ["results", "--json", *args[:2], "--set", f"output_dir={tmp_path}"])
    assert empty.exit_code == 1 and "no finished pipeline run" in empty.output
    # Piped, as a script reads it: the JSON and nothing else, not a download bar's frames on stderr.
    piped = subprocess.run([sys.executable, "-m", "smoothkd.cli", "results", "--json", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and json.loads(piped.stdout)["run"] == results.run_name
    assert "Downloading artifacts" not in piped.stderr, piped.stderr


# The labels a format-1 results record (before the gates were typed) gave each gate step's ZenML metadata.
FORMAT_1_GATES = {"data": "validate_data", "calibration": "check_teacher_calibration",
                  "teacher detector": "detector_teacher", "student detector": "detector_student"}


def test_the_gates_reach_the_report_typed_and_results_json_reads_back(tiny_run):
    from zenml.client import Client

    from smoothkd.artifacts import Results
    from smoothkd.report import gate_lines
    from smoothkd.tracking import latest_results

    cfg, results = tiny_run
    gates = results.gates
    assert gates.data.verdict == "pass" and (Path(gates.data.data_docs)).is_file()
    assert gates.data.expectations > 0 and gates.data.failed == []
    assert gates.calibration.verdict == "pass" and gates.calibration.temperature == 1.0
    assert Path(gates.calibration.diagram).is_file()
    assert gates.calibration.metrics["ece"] <= cfg.calibration.max_ece
    assert gates.teacher_detector.fitted_on == "teacher"
    assert gates.student_detector.fitted_on == "student_sft, student_kd_a0.5"
    lines = gate_lines(gates)
    assert lines[0].startswith("data validation: pass (") and lines[1].startswith("teacher calibration gate")
    # The pipeline's MLflow run holds the same record (less what the runner adds) as results.json.
    run_name, stored = latest_results(tracking_uri(cfg), cfg.tracking.experiment_name)
    assert run_name == results.run_name
    assert stored == replace(results, run_name="", pipeline_seconds=0.0, tracking_uri="")
    # A format-1 record, its gates the steps' ZenML metadata as the report step used to gather them, reads.
    steps = Client().get_pipeline_run(results.run_name).steps
    format_1 = {key: value for key, value in stored.to_dict().items() if key != "format"} | {
        "gates": {label: dict(steps[step].run_metadata) for label, step in FORMAT_1_GATES.items()}}
    old = Results.from_dict(json.loads(json.dumps(format_1)))
    assert old.gates.data == gates.data and old.gates.calibration == gates.calibration
    assert old.gates.student_detector.disabled and old.models == stored.models
    assert gate_lines(old.gates)[:2] == lines[:2]


def test_second_run_reuses_the_cached_teacher(tiny_run):
    from pipelines.runner import run_distill

    cfg, first = tiny_run
    again = run_distill(cfg)
    teacher_first, teacher_again = first.models[0], again.models[0]
    assert teacher_again.cached and not teacher_first.cached
    assert teacher_again.path == teacher_first.path
    assert teacher_again.metrics == teacher_first.metrics
    # Cached students have the same weights: their registered versions are reused, not copied.
    assert [d.version for d in again.decisions] == [d.version for d in first.decisions]
    client = mlflow.MlflowClient(tracking_uri(cfg))
    assert len(client.search_model_versions(f"name = '{cfg.promotion.registered_model_name}'")) == 2
    assert again.champion == first.champion


@pytest.fixture(scope="module")
def rejected_run(tiny_run):
    """A second run on the same store whose (cached) teacher the calibration gate rejects."""
    from pipelines.runner import run_distill

    cfg, _ = tiny_run
    with pytest.raises(Exception, match="calibration gate rejected the teacher"):
        run_distill(cfg.model_copy(update={"calibration": cfg.calibration.model_copy(
            update={"max_ece": 0.001})}))
    return cfg


def test_ui_serves_the_story_of_each_run(tiny_run, rejected_run, tmp_path):
    """Through the `smoothkd ui` server's REST API, as the MLflow UI reads them: the pipeline run's note,
    params and metrics, a rejected run's stop tags, the versions' and the model's descriptions."""
    cfg, results = tiny_run
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(f"output_dir: {cfg.output_dir}\n")
    experiment = mlflow.MlflowClient(tracking_uri(cfg)).get_experiment_by_name(cfg.tracking.experiment_name)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "smoothkd.cli", "ui", "--config", str(config_file),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        search = {"experiment_ids": [experiment.experiment_id], "max_results": 200}
        deadline = time.time() + 90
        while True:
            try:
                payload = http_json(port, "api/2.0/mlflow/runs/search", search)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.time() < deadline, "MLflow UI did not come up"
                time.sleep(1)
        runs = [{"info": r["info"], "params": {p["key"]: p["value"] for p in r["data"].get("params", [])},
                 "metrics": {m["key"]: m["value"] for m in r["data"].get("metrics", [])},
                 "tags": {t["key"]: t["value"] for t in r["data"].get("tags", [])}} for r in payload["runs"]]
        student = next(r for r in runs if r["info"]["run_name"] == "student_sft")
        sft = results.models[1].metrics
        assert student["metrics"]["xsum/rougeL"] == pytest.approx(sft["xsum/rougeL"])

        # The pipeline's run: named by what ran first, the resolved config as params, headline metrics per
        # model and split, the KD − SFT deltas, and a note with the tables, the champion and the links.
        assert results.run_name.startswith("tiny · kd α=0.5 · ")
        pipeline = next(r for r in runs if r["info"]["run_name"] == results.run_name)
        assert pipeline["info"]["status"] == "FINISHED"
        assert pipeline["tags"]["smoothkd.outcome"] == "completed"
        assert pipeline["params"]["teacher.train.max_steps"] == "6"
        assert pipeline["params"]["distill.alphas"] == "[0.5]" and pipeline["params"]["name"] == "tiny"
        assert pipeline["params"]["calibration.max_ece"] == "0.5"
        teacher = results.models[0].metrics
        for split in cfg.eval.splits:
            for metric in ("factual_consistency", "rougeLsum", "hallucinated_facts_per_summary"):
                assert pipeline["metrics"][f"teacher/{split}/{metric}"] == pytest.approx(
                    teacher[f"{split}/{metric}"])
            delta = results.deltas["kd_a0.5 - sft"][f"{split}/factual_consistency"]
            logged = pipeline["metrics"][f"delta/kd_a0.5-sft/{split}/factual_consistency"]
            assert logged == pytest.approx(delta)
        assert pipeline["metrics"]["sft/general/nll"] == pytest.approx(sft["general/nll"])
        note = pipeline["tags"]["mlflow.note.content"]
        assert note.startswith("**champion: ") and "| split | model | ROUGE-Lsum |" in note
        assert "**promotion gate**" in note and "| sft | 1 |" in note
        assert "- teacher calibration gate passed" in note
        assert "[reliability diagram](#/experiments/" in note and "[Data Docs](#/experiments/" in note
        chart = next(line for line in note.splitlines() if line.startswith("![SFT vs KD](get-artifact?"))
        assert http_json(port, chart[len("![SFT vs KD]("):-1], raw=True).startswith(b"\x89PNG")

        # The rejected run and its calibration step: FAILED, with where and why, read as a rejection.
        stopped = [r for r in runs if r["tags"].get("smoothkd.stopped_at") == "check_teacher_calibration"]
        assert {r["info"]["run_name"] for r in stopped} >= {"check_teacher_calibration"}
        assert len(stopped) == 2 and all(r["info"]["status"] == "FAILED" for r in stopped)
        for run in stopped:
            assert run["tags"]["smoothkd.outcome"] == "rejected"
            assert run["tags"]["smoothkd.error"].startswith("calibration gate rejected the teacher")
            assert run["tags"]["mlflow.note.content"].startswith(
                "**Rejected by the teacher calibration gate at step `check_teacher_calibration`**")
        parent = next(r for r in stopped if "mlflow.parentRunId" not in r["tags"])
        assert "smoothkd.results" not in parent["tags"] and parent["params"]["calibration.max_ece"] == "0.001"

        # The localization pages are titled by model and split.
        page = http_json(port, f"get-artifact?path=evaluation%2Fcnndm%2Flocalization.html&run_uuid="
                          f"{student['info']['run_id']}", raw=True).decode()
        assert "<title>sft · cnndm</title>" in page

        # The registered model and each version describe themselves; gate.primary says how it aggregates.
        name = cfg.promotion.registered_model_name
        model = http_json(port, f"api/2.0/mlflow/registered-models/get?name={name}")["registered_model"]
        assert "highest `factual_consistency` (mean over cnndm, xsum)" in model["description"]
        for decision in results.decisions:
            version = http_json(port, f"api/2.0/mlflow/model-versions/get?name={name}&version="
                                 f"{decision.version}")["model_version"]
            text, tags = version["description"], {t["key"]: t["value"] for t in version["tags"]}
            assert text.startswith(f"**{decision.candidate}**: ")
            assert f"**Gate: {decision.outcome}**" in text
            assert "- data: dataset " in text and "- evaluated on: cnndm rows " in text
            assert ("- taught by: " in text) == (decision.candidate != "sft")
            assert all(f"- {split}: **" in text for split in cfg.eval.splits)
            assert tags["gate.primary"].startswith("factual_consistency (mean over cnndm, xsum) = ")
    finally:
        stop_process_group(proc)


def test_eval_cli_scores_a_registered_version_like_the_pipeline(tiny_run, tmp_path):
    from typer.testing import CliRunner

    from smoothkd.cli import app

    cfg, results = tiny_run
    version = results.decisions[0].version
    overrides = ["--set", f"output_dir={cfg.output_dir}"]
    config = str(ROOT / "configs/test/tiny.yaml")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # the config alone names the store
    shown = CliRunner().invoke(app, ["eval", config, "--model",
                                     f"models:/{cfg.promotion.registered_model_name}/{version}", "--json",
                                     "--verbose", *overrides])
    assert shown.exit_code == 0, shown.output
    metrics = json.loads(shown.output[shown.output.index("{"):])
    evaluated = next(m for m in results.models if m.version == version)
    for name in ("cnndm/rougeLsum", "xsum/factual_consistency", "general/nll"):
        assert metrics[name] == pytest.approx(evaluated.metrics[name], abs=1e-6)
    missing = CliRunner().invoke(app, ["eval", config, "--model", "models:/no-such-model@champion",
                                       *overrides])
    assert missing.exit_code == 2 and "models:/no-such-model@champion" in missing.output


def test_a_training_that_fails_in_a_worker_is_recorded_on_the_pipelines_run(tiny_run):
    """A student's training logs to no MLflow run of its own (it runs in a worker): when it stops the
    run, the pipeline's MLflow run still says at which step and why, as a gate's refusal would."""
    from pipelines.runner import run_distill
    from smoothkd.errors import NonFiniteLossError
    from smoothkd.tracking import ERROR_TAG, OUTCOME_TAG, STOPPED_AT_TAG

    cfg, _ = tiny_run
    train = cfg.student.train.model_copy(update={"learning_rate": 1e30})  # diverges at once
    with pytest.raises(NonFiniteLossError):
        run_distill(cfg.model_copy(update={"student": cfg.student.model_copy(update={"train": train})}))
    client = mlflow.MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    [run] = client.search_runs([experiment.experiment_id], "attributes.status = 'FAILED'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    assert "mlflow.parentRunId" not in run.data.tags  # the pipeline's own run
    tags = run.data.tags
    assert tags[STOPPED_AT_TAG] in {"train_sft", "train_kd_a0.5"} and tags[OUTCOME_TAG] == "failed"
    assert tags[ERROR_TAG].startswith("non-finite loss")
