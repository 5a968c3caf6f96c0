"""Data validation (Great Expectations 1.x): clean data passes, each corruption fails by name, the pipeline
stops before the teacher, and the CLI reports it.

GX is slow to import and run, so the corpus, tokenizer and clean rows are built once per module and each
corruption validates a modified copy of those rows.
"""

import copy
import json
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from smoothkd.cli import _user_error, app
from smoothkd.config import load_config, tracking_uri
from smoothkd.data.dataset import read_split
from smoothkd.stages import prepare_data, run_tokens, validate_dataset
from smoothkd.validation.report import DataValidationError
from smoothkd.validation.validate import validate_splits

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures/data"
TINY = ROOT / "configs/test/tiny.yaml"
# A small embedded corpus under the default model limits and validation thresholds.
SMALL = ["data.embedded={n_instruction: 120, n_cnndm: 6, n_xsum: 6}", "data.validation_fraction=0.1",
         "tokenizer.vocab_size=320"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("validation")
    cfg = load_config(None, [f"output_dir={out}", *SMALL])
    dataset_dir = prepare_data(cfg)
    splits = {"instruction": read_split(dataset_dir, "train") + read_split(dataset_dir, "validation"),
              "cnndm": read_split(dataset_dir, "cnndm"), "xsum": read_split(dataset_dir, "xsum")}
    return {"cfg": cfg, "dataset_dir": dataset_dir, "splits": splits, "tokens": run_tokens(cfg, dataset_dir),
            "out": out}


def _validate(base, mutate, overrides=()):
    splits = copy.deepcopy(base["splits"])
    mutate(splits)
    cfg = load_config(None, [f"output_dir={base['out']}", *SMALL, *overrides])
    return validate_splits(cfg.validation, (cfg.teacher.train, cfg.student.train), splits, base["tokens"],
                           base["out"] / "docs")


def test_embedded_corpus_passes_every_expectation_and_writes_data_docs(base):
    report = validate_dataset(base["cfg"], base["dataset_dir"], base["out"] / "clean_docs")
    assert report.verdict == "pass", report.message()
    assert report.tokens.startswith("tokenizer ")  # the run's BPE tokenizer, not the approximation
    assert report.rows == {"instruction": 120, "cnndm": 6, "xsum": 6}
    assert Path(report.docs_index) == base["out"] / "clean_docs" / "index.html"
    assert Path(report.docs_index).is_file()
    pages = {p.name for p in (base["out"] / "clean_docs").rglob("*.html")}
    assert {"instruction.html", "cnndm.html", "xsum.html"} <= pages  # one suite page per split
    checks = {o.check for o in report.outcomes}
    assert checks == {"columns", "not_null", "not_empty", "max_chars", "allowed_values", "unique_id",
                      "duplicate_rows", "truncation", "reference_shorter", "leakage_exact", "leakage_near"}


def test_demo_corpus_passes_with_the_demo_config(tmp_path):
    cfg = load_config(ROOT / "configs/demo.yaml", [f"output_dir={tmp_path}"])
    report = validate_dataset(cfg, prepare_data(cfg))
    assert report.verdict == "pass", report.message()


def test_fixture_files_in_the_real_schemas_pass(tmp_path):
    cfg = load_config(None, [
        f"output_dir={tmp_path}", "tokenizer.vocab_size=320",
        f"data.instruction={{source: local, path: {FIXTURES / 'dolly.jsonl'}}}",
        f"data.cnndm={{source: local, path: {FIXTURES / 'cnn_dailymail.parquet'}}}",
        f"data.xsum={{source: local, path: {FIXTURES / 'xsum.csv'}}}",
    ])
    report = validate_dataset(cfg, prepare_data(cfg))
    assert report.verdict == "pass", report.message()
    assert report.rows == {"instruction": 6, "cnndm": 5, "xsum": 5}


def _set(split, index, column, value):
    def mutate(splits):
        splits[split][index][column] = value(splits) if callable(value) else value
    return mutate


def _copy_into_context(transform):
    def mutate(splits):
        splits["instruction"][5]["context"] = transform(splits["cnndm"][0]["article"])
    return mutate


def _overlong(n_rows):
    def mutate(splits):
        for row in splits["instruction"][:n_rows]:
            row["context"] = " ".join(["The board met again on Monday."] * 400)  # ~2.8k tokens
    return mutate


CORRUPTIONS = {
    "null response": (_set("instruction", 3, "response", None), "instruction.response.not_null"),
    "blank response": (_set("instruction", 3, "response", "  "), "instruction.response.not_empty"),
    "empty article": (_set("cnndm", 1, "article", ""), "cnndm.article.not_empty"),
    "duplicated id": (_set("xsum", 2, "id", lambda s: s["xsum"][1]["id"]), "xsum.id.unique_id"),
    "eval article copied into a training context": (_copy_into_context(str.upper),
                                                     "cnndm.article.leakage_exact"),
    "eval article pasted into a longer context": (
        _copy_into_context(lambda a: "Earlier report. " + a.rsplit(" ", 3)[0] + " More later."),
        "cnndm.article.leakage_near"),
    "over-length rows beyond the truncation bound": (_overlong(3), "instruction.truncation"),
    "unknown category": (_set("instruction", 7, "category", "poetry"), "instruction.category.allowed_values"),
    "summary longer than its article": (_set("xsum", 0, "summary", lambda s: s["xsum"][0]["document"] + "!"),
                                        "xsum.summary.reference_shorter"),
    "missing column": (lambda s: [r.pop("category") for r in s["instruction"]], "instruction.columns"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_each_corruption_fails_its_expectation(base, corruption):
    mutate, expected = CORRUPTIONS[corruption]
    report = _validate(base, mutate)
    assert report.verdict == "fail"
    assert expected in {o.name for o in report.failures}, report.message()
    with pytest.raises(DataValidationError) as info:
        report.raise_for_failures()
    message = str(info.value)
    assert "\n" not in message and expected in message and report.docs_index in message


def test_failure_message_names_observed_value_and_offending_rows(base):
    report = _validate(base, _set("xsum", 2, "id", "xsum-000001"))
    failure = next(o for o in report.failures if o.name == "xsum.id.unique_id")
    assert failure.observed == "2 of 6 rows, 33.3%"
    assert failure.row_ids == ["xsum-000001"]
    assert "xsum.id.unique_id (2 of 6 rows, 33.3%, e.g. xsum-000001)" in report.message()


def test_truncation_is_bounded_not_forbidden(base):
    report = _validate(base, _overlong(2))  # 2 of 120 rows = 1.7%, within the default 2%
    truncation = next(o for o in report.outcomes if o.name == "instruction.truncation")
    assert truncation.success and truncation.observed == "2 of 120 rows, 1.7%, allowed 2.0%"
    assert report.verdict == "pass"


def test_duplicate_rows_warn_by_default_and_stop_when_configured(base):
    def duplicate(splits):
        rows = splits["instruction"]
        for i in range(20):  # 20 repeats (+ the corpus's own 2) of 120 rows: above the 10% bound
            rows[i + 1] = {**rows[0], "id": rows[i + 1]["id"]}

    report = _validate(base, duplicate)
    assert report.verdict == "warn" and not report.failures
    assert [o.name for o in report.warnings] == ["instruction.duplicate_rows"]
    report.raise_for_failures()  # warnings never stop the run
    stopping = _validate(base, duplicate, ["validation.severity.duplicate_rows=stop"])
    assert [o.name for o in stopping.failures] == ["instruction.duplicate_rows"]


def test_tokens_are_approximated_when_the_tokenizer_cannot_load(base, tmp_path):
    missing = tmp_path / "no-tokenizer"
    cfg = load_config(None, [f"output_dir={base['out']}", *SMALL, f"tokenizer.name_or_path={missing}"])
    tokens = run_tokens(cfg, base["dataset_dir"])
    assert tokens.description.startswith("approximate")
    assert tokens.count(["abcdefgh", "abc"]) == [2, 1]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_data_validate_prints_table_and_docs_and_exits_by_verdict(base, tmp_path):
    runner = CliRunner()
    clean = runner.invoke(app, ["data", "validate", str(TINY), "--set", f"output_dir={base['out']}"])
    assert clean.exit_code == 0, clean.output
    assert "instruction.category.allowed_values" in clean.output and "Data Docs:" in clean.output
    xsum = copy.deepcopy(base["splits"]["xsum"])
    xsum[0]["summary"] = xsum[0]["document"] + " Also."
    corrupted = _write_jsonl(tmp_path / "xsum.jsonl", xsum)
    failed = runner.invoke(app, ["data", "validate", str(TINY), "--set", f"output_dir={base['out']}",
                                 "--set", f"data.xsum={{source: local, path: {corrupted}}}"])
    assert failed.exit_code == 1, failed.output
    assert "FAIL" in failed.output and "xsum.summary.reference_shorter" in failed.output


def test_pipeline_stops_at_validation_before_the_teacher(base, tmp_path):
    from pipelines.runner import run_distill

    instruction = copy.deepcopy(base["splits"]["instruction"])
    instruction[4]["response"] = None  # the loader reads a null as empty text
    corrupted = _write_jsonl(tmp_path / "dolly.jsonl", instruction)
    out = tmp_path / "run"
    cfg = load_config(TINY, [f"output_dir={out}", f"data.instruction={{source: local, path: {corrupted}}}"])
    with pytest.raises(Exception) as info:
        run_distill(cfg)
    message = _user_error(info.value)  # what the CLI prints, as one line
    assert message is not None and message.startswith("data validation failed")
    assert "instruction.response.not_empty" in message and instruction[4]["id"] in message
    assert not (out / "teachers").exists() or not any((out / "teachers").iterdir())
    assert not (out / "runs").exists()

    client = mlflow.MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert "teacher" not in runs
    validation = runs["validate_data"]
    assert validation.data.tags["validation.verdict"] == "fail"
    parent = client.get_run(validation.data.tags["mlflow.parentRunId"])
    for run in (validation, parent):  # where and why, read as the data gate's rejection
        assert run.data.tags["smoothkd.stopped_at"] == "validate_data"
        assert run.data.tags["smoothkd.outcome"] == "rejected"
        assert run.data.tags["smoothkd.error"].startswith("data validation failed")
    assert parent.data.params["name"] == "tiny"  # the config, logged before the data was judged
    assert "instruction.response.not_empty" in validation.data.tags["validation.failed"]
    docs = [a.path for a in client.list_artifacts(validation.info.run_id, "validation/data_docs")]
    assert "validation/data_docs/index.html" in docs


def test_training_key_ignores_evaluation_rows(tmp_path):
    """More evaluation rows (the sweep's) keep the training key, so the tokenizer, teacher and students
    another run trained are reused; other training rows change it."""
    from smoothkd.data.dataset import dataset_key, training_key

    def prepared(n_instruction: int, n_eval: int):
        sizes = f"data.embedded={{n_instruction: {n_instruction}, n_cnndm: {n_eval}, n_xsum: {n_eval}}}"
        return prepare_data(load_config(TINY, [f"output_dir={tmp_path}", sizes]))

    base, more_eval, other_train = prepared(120, 6), prepared(120, 9), prepared(97, 6)
    assert dataset_key(base) != dataset_key(more_eval)
    assert training_key(base) == training_key(more_eval)
    assert training_key(base) != training_key(other_train)
