"""What runs record about themselves: names, params without secrets, stop tags, the pipeline run's note."""

import os

import mlflow
from conftest import MLFLOW_ENV, active_experiment, mlflow_state_restored

from smoothkd.artifacts import GateDecision, ModelResult, Results
from smoothkd.errors import DataValidationError, TeacherRejectedError, one_line
from smoothkd.report import Grid, run_note
from smoothkd.tracking import (
    ERROR_TAG,
    NOTE_TAG,
    OUTCOME_TAG,
    STOPPED_AT_TAG,
    kd_label,
    log_params,
    path_name,
    record_stop,
    run_name,
    stop_tags,
)


def test_run_names_lead_with_what_ran_and_give_a_plain_directory_name():
    name = run_name("demo", kd_label([0.1, 1.0]))
    assert name.startswith("demo · kd α=0.1,1 · ") and name != run_name("demo", kd_label([0.5]))
    assert path_name(name).startswith("demo-kd-a=0.1,1-") and " " not in path_name(name)
    assert kd_label([]) == "sft only"


def test_a_gate_refusal_reads_as_a_rejection_anything_else_as_a_failure():
    rejected = stop_tags("check_teacher_calibration", TeacherRejectedError("calibration gate rejected "
                                                                           "the teacher: ece 0.7\nmore"))
    assert rejected[OUTCOME_TAG] == "rejected" and rejected[STOPPED_AT_TAG] == "check_teacher_calibration"
    assert rejected[ERROR_TAG] == "calibration gate rejected the teacher: ece 0.7"
    assert rejected[NOTE_TAG].startswith("**Rejected by the teacher calibration gate at step")
    assert stop_tags("validate_data", DataValidationError("x"))[NOTE_TAG].startswith(
        "**Rejected by the data validation gate")
    crashed = stop_tags("student_sft", KeyError("weights"))
    assert crashed[OUTCOME_TAG] == "failed" and crashed[ERROR_TAG] == "KeyError: 'weights'"
    assert crashed[NOTE_TAG].startswith("**Failed at step `student_sft`**")
    # A message that opens with a blank line (SQL, a worker's traceback) still gives its first words.
    blank_first = stop_tags("register", RuntimeError("\n  (sqlite3.OperationalError) locked  \n[SQL: ...]"))
    assert blank_first[ERROR_TAG] == "RuntimeError: (sqlite3.OperationalError) locked"


def test_one_line_is_the_first_non_blank_line_cut_at_its_limit():
    assert one_line("") == one_line(KeyError()) == ""
    assert one_line(ValueError("a\nb")) == "a" and one_line("x" * 10, limit=10) == "x" * 10
    assert one_line("x" * 11, limit=10) == "x" * 7 + "..."


def test_stop_is_recorded_on_the_step_run_and_its_pipeline_run(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("stops")  # not an experiment id an earlier test left active in another store
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name="pipeline") as parent:
        # Params are readable by all: no password of a URL, no environment variable's value.
        log_params({"tracking": {"tracking_uri": "postgresql://me:secret@db/mlflow"},
                    "env": {"HF_TOKEN": "hf_abc"}, "alphas": [0.1, 1.0]}, hidden=("env.",))
        with mlflow.start_run(run_name="check_teacher_calibration", nested=True) as child:
            record_stop("check_teacher_calibration", TeacherRejectedError("calibration gate rejected it"))
    params = client.get_run(parent.info.run_id).data.params
    assert params == {"tracking.tracking_uri": "postgresql://me:***@db/mlflow", "env.HF_TOKEN": "***",
                      "alphas": "[0.1, 1.0]"}
    for run_id in (parent.info.run_id, child.info.run_id):
        tags = client.get_run(run_id).data.tags
        assert tags[STOPPED_AT_TAG] == "check_teacher_calibration" and tags[OUTCOME_TAG] == "rejected"
        assert tags[ERROR_TAG] == "calibration gate rejected it"
    # The pipeline run's note points at the step's own run.
    note = client.get_run(parent.info.run_id).data.tags[NOTE_TAG]
    assert f"runs/{child.info.run_id})" in note


TEACHER = {"cnndm/rougeLsum": 30.0, "cnndm/rougeLsum_ci_low": 28.0, "cnndm/rougeLsum_ci_high": 32.0,
           "general/nll": 2.5}
FAILED = {"name": "cnndm/rougeLsum above 0", "value": 0.0, "threshold": 0.0, "verdict": "fail"}
RESULTS = Results(
    models=[ModelResult("teacher", None, "/t", 2_000_000, TEACHER),
            ModelResult("student_sft", 0.0, "/s", 1_000_000, {"cnndm/rougeLsum": 3.5}, cached=True)],
    decisions=[GateDecision("sft", "1", False, "factual_consistency", None, [FAILED], "failed gate",
                            "smoothkd-student")],
)


def test_the_run_note_is_markdown_tables_links_and_images_within_the_tag_limit():
    note = run_note(RESULTS, ["cnndm"], ["[SFT vs KD](#/x)"], [("SFT vs KD", "get-artifact?path=a")], 8000)
    assert note.startswith("**champion: unchanged (no candidate of this run was promoted)**")
    assert "| split | model | ROUGE-Lsum |" in note and "| cnndm | teacher | 30.0 (28.0–32.0) |" in note
    assert "| cnndm | sft\\* | 3.50 |" in note and "| sft | 1 | failed gate |" in note
    assert "\\* reused from an earlier run's stage cache" in note  # the mark, escaped, and what it means
    assert "- [SFT vs KD](#/x)" in note and note.endswith("![SFT vs KD](get-artifact?path=a)")
    short = run_note(RESULTS, ["cnndm"], [], [], 300)
    assert len(short) <= 300 and short.endswith("the whole record is the run's results.json)")


def test_markdown_cells_escape_the_column_bar():
    table = Grid("t", ["x", "y"], [["a|b", "1"]]).markdown()
    assert table.splitlines()[-1] == "| a\\|b | 1 |" and table.splitlines()[3] == "| :-- | --: |"


# A format-1 results.json as the report step wrote it before the gates were typed: every gate was its
# step's ZenML metadata, the experiment tracker's keys included, under the step's label.
TRACKER = {"experiment_tracker_url": "http://mlflow/#/runs/x"}
FORMAT_1 = {
    "models": [{"role": "student_sft", "alpha": 0.0, "path": "/s", "parameters": 1000000.0, "cached": True,
                "train_seconds": 12.5, "run_id": "r1", "metrics": {"cnndm/rougeLsum": 3.5},
                "version": "1", "outcome": "champion"}],
    "deltas": {"kd_a1.0 - sft": {"cnndm/factual_consistency": 1.5}},
    "decisions": [{"candidate": "sft", "version": "1", "passed": True, "primary_metric": "fc",
                   "primary_value": 24.3, "criteria": [], "outcome": "champion", "registered_model": "m"}],
    "champion": {"name": "m", "version": "1", "candidate": "sft"},
    "gates": {
        "data": {"validation.verdict": "warn", "validation.expectations": 41, "validation.failed": [],
                 "validation.warnings": ["instruction.rows.duplicates"], "validation.tokens": "bpe",
                 "validation.data_docs": "/d/index.html", **TRACKER},
        "calibration": {"gate": "teacher_calibration", "verdict": "pass",
                        "message": "calibration gate passed", "calibration_temperature": 1.0,
                        "fitted": False, "diagram": "/c/reliability.png",
                        "ece": 0.013, "n_tokens": 900, **TRACKER},
        "teacher detector": {"auroc": 0.81, "auroc_ci_low": 0.7, "auroc_ci_high": 0.9, "n_train": 80,
                             "n_test": 40, "n_test_groups": 12, "n_factual": 90, "n_hallucinated": 30,
                             "min_auroc": 0.6, "reliable": 1.0, "unreliable": "", "fitted_on": "teacher",
                             "path": "/det.joblib", "cached": False, **TRACKER},
        "student detector": TRACKER,  # disabled: the step logged no metadata of its own
    },
}


def test_a_format_1_results_json_reads_back_from_the_store(tmp_path):
    import json

    from smoothkd.report import gate_lines
    from smoothkd.tracking import RESULTS_ARTIFACT, RESULTS_TAG, latest_results

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("old", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment, run_name="demo · old", tags={RESULTS_TAG: RESULTS_ARTIFACT})
    client.log_text(run.info.run_id, json.dumps(FORMAT_1), RESULTS_ARTIFACT)
    client.set_terminated(run.info.run_id)
    name, results = latest_results(uri, "old")
    assert name == "demo · old" and results.format == 2
    (sft,) = results.models
    assert (sft.name, sft.parameters, sft.cached) == ("sft", 1_000_000, True)
    assert sft.metrics == {"cnndm/rougeLsum": 3.5}
    assert results.decisions[0].primary_value == 24.3 and results.champion.candidate == "sft"
    gates = results.gates
    assert gates.data.warnings == ["instruction.rows.duplicates"] and gates.data.data_docs == "/d/index.html"
    assert gates.calibration.temperature == 1.0
    assert gates.calibration.metrics == {"ece": 0.013, "n_tokens": 900}
    assert gates.teacher_detector.auroc == 0.81 and gates.teacher_detector.path == "/det.joblib"
    assert gates.student_detector.disabled
    assert gate_lines(gates) == [
        "data validation: warn (41 expectations, 1 warnings)",
        "teacher calibration gate passed",
        "teacher detector (factual rate): held-out AUROC 0.810 (CI 0.700–0.900) on 40 sentences of 12 rows "
        "(90 factual / 30 hallucinated in all)",
        "student detector (factual rate): disabled, no factual rate for these models (reason not recorded)"]
    # A record written now reads back as the same record.
    assert Results.from_dict(json.loads(json.dumps(results.to_dict()))) == results


def test_a_store_and_experiment_a_test_points_mlflow_at_do_not_outlive_it(tmp_path):
    """What the autouse fixture does around every test: the next test finds MLflow as this one found it."""
    def state():
        return mlflow.get_tracking_uri(), active_experiment(), {n: os.environ.get(n) for n in MLFLOW_ENV}

    before = state()
    with mlflow_state_restored():
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'leaked.db'}")
        leaked = mlflow.set_experiment("leaked").experiment_id
        assert os.environ["MLFLOW_TRACKING_URI"].endswith("leaked.db") and active_experiment() == leaked
    assert state() == before
