"""The α × seed sweep: its statistics on hand-made numbers (hierarchical bootstrap, pairing, the
conclusion's wording), then `smoothkd sweep` end to end on the tiny config (2 seeds × α ∈ {0, 0.5})."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from smoothkd.artifacts import Evaluation
from smoothkd.config import EvalConfig, load_config, tracking_uri
from smoothkd.evaluation.bootstrap import bootstrap_ci, hierarchical_bootstrap_ci
from smoothkd.evaluation.sweep import (
    KD_HELPS,
    SEEDS_AND_EXAMPLES,
    SEEDS_ONLY,
    Difference,
    conclusion,
    conclusions,
    kd_minus_sft,
)

ROOT = Path(__file__).resolve().parents[1]


# ---- hierarchical bootstrap ----


def test_hierarchical_interval_covers_seed_variation_that_pooling_hides():
    rng = np.random.default_rng(0)
    groups = [rng.normal(0.0, 1.0, 60), rng.normal(6.0, 1.0, 60), rng.normal(3.0, 1.0, 60)]
    nested = hierarchical_bootstrap_ci(groups, n_resamples=2000, seed=1)
    pooled = bootstrap_ci(np.concatenate(groups), n_resamples=2000, seed=1)
    assert nested.mean == pytest.approx(np.mean([g.mean() for g in groups]))
    assert nested.low < nested.mean < nested.high
    # Three seeds 3 points apart: which seeds were drawn dominates; examples alone would not show it.
    assert nested.high - nested.low > 4 * (pooled.high - pooled.low)
    assert hierarchical_bootstrap_ci(groups, n_resamples=2000, seed=1) == nested


def test_one_group_is_an_example_bootstrap_and_one_value_per_group_a_seed_bootstrap():
    values = np.random.default_rng(3).normal(10.0, 2.0, 200)
    alone = hierarchical_bootstrap_ci([values], n_resamples=2000, seed=2)
    plain = bootstrap_ci(values, n_resamples=2000, seed=2)
    assert alone.mean == pytest.approx(plain.mean)
    assert alone.high - alone.low == pytest.approx(plain.high - plain.low, rel=0.15)
    seeds_only = hierarchical_bootstrap_ci([[1.0], [2.0], [4.0]], n_resamples=2000, seed=2)
    assert seeds_only.mean == pytest.approx(7 / 3)
    assert 1.0 <= seeds_only.low < seeds_only.mean < seeds_only.high <= 4.0
    with pytest.raises(ValueError):
        hierarchical_bootstrap_ci([])


# ---- KD − SFT over seeds, on hand-made evaluations ----


def _evaluation(ids, consistency, ece=None):
    per_example = {"cnndm": {"id": ids, "factual_consistency": consistency}}
    metrics = {"cnndm/factual_consistency": float(np.mean([c for c in consistency if c is not None]))}
    if ece is not None:
        metrics["general/ece"] = ece
    return Evaluation(metrics=metrics, per_example=per_example, predictions={})


def test_differences_pair_examples_by_id_within_each_seed():
    ids = ["a", "b", "c", "d"]
    evaluations = {
        0.0: {10: _evaluation(ids, [50.0, 60.0, 70.0, 80.0], ece=0.20),
              # Another order of the same examples: pairing goes by id, not position.
              11: _evaluation(ids[::-1], [40.0, 30.0, 20.0, 10.0], ece=0.30)},
        0.5: {10: _evaluation(ids, [52.0, 62.0, 72.0, None], ece=0.10),
              11: _evaluation(ids, [11.0, 21.0, 31.0, 41.0], ece=0.26)},
    }
    e = EvalConfig(bootstrap_samples=500)
    diffs = {(d.split, d.metric): d for d in kd_minus_sft(evaluations, e)}
    consistency = diffs[("cnndm", "factual_consistency")]
    # Seed 10: +2 on the three complete pairs; seed 11: a=11-10, b=21-20, ... = +1 each.
    assert consistency.per_seed == pytest.approx({10: 2.0, 11: 1.0})
    assert consistency.examples_per_seed == {10: 3, 11: 4}
    assert consistency.mean == pytest.approx(1.5)
    assert consistency.low <= consistency.mean <= consistency.high
    assert consistency.covers == SEEDS_AND_EXAMPLES
    # An aggregate-only metric (no per-example column) is compared over seeds alone, and says so.
    ece = diffs[("general", "ece")]
    assert ece.per_seed == pytest.approx({10: -0.10, 11: -0.04})
    assert ece.covers == SEEDS_ONLY
    # Metrics the evaluation does not give (prior-trap rate here) are left out, not reported as missing.
    assert set(diffs) == {("cnndm", "factual_consistency"), ("general", "ece")}


def _difference(mean, low, high):
    return Difference(0.5, "cnndm", "factual_consistency", mean, low, high, {10: mean, 11: mean},
                      {10: 6, 11: 6}, SEEDS_AND_EXAMPLES)


@pytest.mark.parametrize(("mean", "low", "high", "helps", "says"), [
    (3.0, 1.0, 5.0, True, KD_HELPS),
    (0.5, 0.0, 1.0, False, "includes 0"),  # touching 0 is not excluding it
    (0.2, -1.0, 1.4, False, "includes 0"),
    (-3.0, -5.0, -1.0, False, "KD lowers factual consistency"),
])
def test_the_conclusion_claims_kd_helps_only_when_the_ci_lies_above_zero(mean, low, high, helps, says):
    text = conclusion(_difference(mean, low, high), 0.95)
    assert (KD_HELPS in text) is helps
    assert says in text
    assert f"{low:+.2f} to {high:+.2f}" in text and "95% CI" in text


def test_conclusions_speak_of_consistency_only():
    other = Difference(0.5, "cnndm", "rougeLsum", 9.0, 8.0, 10.0, {10: 9.0}, {10: 6}, SEEDS_AND_EXAMPLES)
    assert conclusions([other, _difference(-1.0, -2.0, 0.5)], 0.95) == {
        "kd_a0.5": {"cnndm": conclusion(_difference(-1.0, -2.0, 0.5), 0.95)}}


def test_table_shows_every_seed_and_marks_a_seeds_only_interval():
    from rich.console import Console

    from smoothkd.evaluation.sweep import SweepSummary, differences_table

    ece = Difference(0.5, "general", "ece", -0.07, -0.10, -0.04, {10: -0.10, 11: -0.04}, {10: 1, 11: 1},
                     SEEDS_ONLY)
    consistency = Difference(0.5, "cnndm", "factual_consistency", 1.5, -0.5, 3.25, {10: 2.0, 11: 1.0},
                             {10: 3, 11: 4}, SEEDS_AND_EXAMPLES)
    summary = SweepSummary("tiny", "sweep-x", "r", [10, 11], [0.5], 0.95, 1.0, [], [consistency, ece])
    console = Console(record=True, width=200)
    console.print(differences_table(summary))
    text = console.export_text()
    assert "+1.50 (-0.50–+3.25)" in text and "+2.00, +1.00" in text
    assert "-0.07 (-0.10–-0.04)†" in text
    assert "prior-trap" not in text  # no column for a metric no evaluation gave


# ---- the command on the tiny config ----


def _sweep(out: Path, *args: str):
    from smoothkd.cli import app

    config = str(ROOT / "configs/test/tiny.yaml")
    return CliRunner().invoke(app, ["sweep", config, *args, "--set", f"output_dir={out}"])


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    shown = _sweep(out, "--seeds", "2", "--alphas", "0,0.5", "--json")
    assert shown.exit_code == 0, shown.output
    return out, shown, json.loads(shown.stdout)


def test_sweep_json_reports_each_alpha_and_split_with_a_ci(tiny_sweep):
    _, shown, summary = tiny_sweep
    assert summary["seeds"] == [10, 11] and summary["alphas"] == [0.5]
    assert [m["name"] for m in summary["models"]] == ["teacher", "sft_s10", "kd_a0.5_s10", "sft_s11",
                                                      "kd_a0.5_s11"]
    assert set(summary["differences"]) == {"kd_a0.5"}
    per_split = summary["differences"]["kd_a0.5"]
    assert {"cnndm", "xsum"} <= set(per_split)
    models = {m["name"]: m["metrics"] for m in summary["models"]}
    for split in ("cnndm", "xsum"):
        metrics = per_split[split]
        assert {"factual_consistency", "rougeLsum", "hallucinated_facts_per_summary"} <= set(metrics)
        for name, d in metrics.items():
            assert d["low"] <= d["mean"] <= d["high"], (split, name)
            assert sorted(d["per_seed"]) == ["10", "11"]
            assert d["mean"] == pytest.approx(np.mean(list(d["per_seed"].values())))
            assert d["covers"] == SEEDS_AND_EXAMPLES
        # Every example has every score here, so a seed's paired mean is the difference of the means.
        for seed in ("10", "11"):
            assert metrics["factual_consistency"]["per_seed"][seed] == pytest.approx(
                models[f"kd_a0.5_s{seed}"][f"{split}/factual_consistency"]
                - models[f"sft_s{seed}"][f"{split}/factual_consistency"])
        low = metrics["factual_consistency"]["low"]
        assert (KD_HELPS in summary["conclusions"]["kd_a0.5"][split]) is (low > 0)
    # Progress: one line per model on stderr, stdout holds the JSON alone.
    assert [line.split("]")[0] for line in shown.stderr.splitlines() if line.startswith("[")] == [
        f"[{i}/5" for i in range(1, 6)]


def test_sweep_logs_one_parent_run_with_a_child_per_model_and_the_chart(tiny_sweep):
    out, _, summary = tiny_sweep
    cfg = load_config(ROOT / "configs/test/tiny.yaml", [f"output_dir={out}"])
    client = mlflow.MlflowClient(tracking_uri(cfg))
    parent = client.get_run(summary["run_id"])
    assert parent.info.run_name == summary["run_name"] and parent.data.tags["smoothkd.sweep"] == "true"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == sorted(m["name"] for m in summary["models"])
    assert {m["run_id"] for m in summary["models"]} == {r.info.run_id for r in children}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/sweep.png", "sweep/sweep.json"}
    assert Path(summary["chart"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(Path(summary["summary_file"]).read_text()) == summary
    delta = "delta/kd_a0.5/cnndm/factual_consistency"
    assert parent.data.metrics[delta] == pytest.approx(
        summary["differences"]["kd_a0.5"]["cnndm"]["factual_consistency"]["mean"])


def test_a_rerun_reuses_the_cached_teacher_and_students(tiny_sweep):
    out, _, first = tiny_sweep
    again = _sweep(out, "--seeds", "1", "--alphas", "0.5")
    assert again.exit_code == 0, again.output
    assert again.output.count(": cached, evaluated") == 3  # the teacher and both students
    assert "KD − SFT over seeds 10" in again.output
    assert "kd_a0.5 cnndm: " in again.output


@pytest.mark.parametrize(("alphas", "says"), [("0", "at least one KD weight"), ("0,1.5", "1.5 is outside"),
                                              ("a,b", "comma-separated numbers")])
def test_bad_alphas_are_one_line(tmp_path, alphas, says):
    shown = _sweep(tmp_path, "--seeds", "1", "--alphas", alphas)
    assert shown.exit_code == 2 and says in shown.output
    assert "Traceback" not in shown.output and not (tmp_path / "sweeps").exists()


def test_a_bad_student_reference_stops_the_sweep_before_any_data_or_model(tmp_path):
    shown = _sweep(tmp_path, "--seeds", "2", "--set", "student.name_or_path=/nonexistent")
    assert shown.exit_code == 2, shown.output
    errors = [line for line in shown.output.splitlines() if not line.startswith("log: ")]
    assert len(errors) == 1 and "student.name_or_path=/nonexistent" in errors[0]
    # The preflight comes first: no corpus, dataset, teacher or student was made, only the log file.
    assert [p.name for p in tmp_path.iterdir()] == ["logs"]


def test_a_student_trains_with_its_fixed_threads_and_the_same_weights_in_or_out_of_a_worker(tiny_sweep,
                                                                                             tmp_path):
    import torch

    from smoothkd.artifacts import TRAIN_RECORD
    from smoothkd.io import read_json
    from smoothkd.stages import prepare_data, prepare_tokenizer, train_student

    out, _, summary = tiny_sweep
    swept = {m["name"]: m for m in summary["models"]}["sft_s10"]
    runtime = read_json(Path(swept["path"]) / TRAIN_RECORD)["runtime"]
    assert runtime == {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                       "threads": 1}
    # The same student trained again here, as `smoothkd run` would, in this process with 3 threads set:
    # the training's fixed count applies (and this process's is restored after), so the content key and
    # the weights are the worker's. The worker's copy moves aside first, or it would be reused.
    worker_copy = tmp_path / "worker"
    Path(swept["path"]).rename(worker_copy)
    cfg = load_config(ROOT / "configs/test/tiny.yaml", [f"output_dir={out}"])
    data_dir = prepare_data(cfg)
    previous = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        here = train_student(cfg, data_dir, prepare_tokenizer(cfg, data_dir))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)
    assert not here.cached and here.path == swept["path"]  # one content key
    weights = "model.safetensors"
    assert (Path(here.path) / weights).read_bytes() == (worker_copy / weights).read_bytes()


def test_the_thread_count_is_part_of_the_students_key(tmp_path):
    from smoothkd.stages import prepare_data, prepare_tokenizer, train_student

    paths = []
    for threads in (1, 2):
        cfg = load_config(ROOT / "configs/test/tiny.yaml", [
            f"output_dir={tmp_path}", "student.train.max_steps=1", f"student.train.threads={threads}"])
        data_dir = prepare_data(cfg)
        paths.append(train_student(cfg, data_dir, prepare_tokenizer(cfg, data_dir)).path)
    assert paths[0] != paths[1]


def _progress_names(lines: list[str]) -> list[str]:
    return [line.split("] ", 1)[1].split(":")[0] for line in lines if line.startswith("[")]


def test_a_sweep_killed_after_its_third_model_resumes_without_retraining_it(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    command = [sys.executable, "-m", "smoothkd.cli", "sweep", str(ROOT / "configs/test/tiny.yaml"),
               "--seeds", "2", "--alphas", "0.5", "--json", "--set", f"output_dir={tmp_path}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Its own session, so the kill takes the sweep's worker processes too, as a Ctrl-\ or an OOM kill would.
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    lines = []
    for line in first.stderr:
        lines.append(line)
        if line.startswith("[3/"):
            os.killpg(first.pid, signal.SIGKILL)
            break
    first.wait(timeout=60)
    killed = _progress_names(lines)
    assert len(killed) == 3 and not list(tmp_path.glob("sweeps/*/sweep.json")), lines
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    cached = [name for name, line in zip(_progress_names(again.stderr.splitlines()),
                                         [x for x in again.stderr.splitlines() if x.startswith("[")],
                                         strict=True) if ": cached, " in line]
    assert set(killed) <= set(cached)
    assert len(json.loads(again.stdout)["models"]) == 5


def test_student_steps_depend_on_the_front_half_only(tiny_sweep):
    from zenml.client import Client

    _, _, summary = tiny_sweep
    steps = Client().get_pipeline_run(summary["run_name"]).steps
    front = {"load_data", "validate_data", "build_tokenizer", "teacher", "check_teacher_calibration",
             "precompute_labels"}
    students = [f"{arm}_s{seed}" for seed in (10, 11) for arm in ("sft", "kd_a0.5")]
    assert front | {f"train_{s}" for s in students} | {f"evaluate_{s}" for s in ["teacher", *students]} | {
        "analyse_sweep"} == set(steps)
    for name in students:
        assert set(steps[f"train_{name}"].spec.upstream_steps) <= front
        assert set(steps[f"evaluate_{name}"].spec.upstream_steps) - front == {f"train_{name}"}
        settings = steps[f"train_{name}"].config.settings["resources"]
        assert settings.cpu_count == 1  # its own ResourceSettings: a pod or job each on a cluster stack
    assert set(steps["analyse_sweep"].spec.upstream_steps) >= {f"evaluate_{s}" for s in students}


def test_results_reads_the_latest_sweep_back(tiny_sweep, tmp_path):
    from smoothkd.cli import app

    out = tiny_sweep[0]
    # The module's sweeps so far (the rerun test adds one): the newest written is the one to read back.
    summary = json.loads(max(out.glob("sweeps/*/sweep.json"), key=lambda p: p.stat().st_mtime).read_text())
    config = ["--config", str(ROOT / "configs/test/tiny.yaml")]
    shown = CliRunner().invoke(app, ["results", "--sweep", "--json", *config, "--set", f"output_dir={out}"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == summary
    text = CliRunner().invoke(app, ["results", "--sweep", *config, "--set", f"output_dir={out}"])
    assert text.exit_code == 0 and summary["run_name"] in text.output
    assert f"kd_a0.5 cnndm: {summary['conclusions']['kd_a0.5']['cnndm']}" in text.output
    none = CliRunner().invoke(app, ["results", "--sweep", *config, "--set", f"output_dir={tmp_path}"])
    assert none.exit_code == 1 and "no finished sweep" in none.output
