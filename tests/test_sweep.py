"""The α × seed sweep: its statistics on hand-made numbers (the seeds × examples table, pairing by id, Holm,
a primary cell, an A/A arm, the conclusion's wording, the machine record), then `smoothkd sweep` end to
end on the tiny config (2 seeds × α ∈ {0, 0.5})."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from smoothkd.artifacts import Evaluation
from smoothkd.config import ConfigError, EvalConfig, load_config, tracking_uri
from smoothkd.evaluation.machine import cpu_model, machine
from smoothkd.evaluation.seeds import EXAMPLES_ONLY, SEEDS_AND_EXAMPLES, SEEDS_ONLY
from smoothkd.evaluation.sweep import (
    KD_HELPS,
    PER_MODEL,
    Arm,
    Difference,
    SweepSummary,
    baseline,
    baseline_lines,
    check_primary,
    compare_arms,
    conclusions,
    differences_table,
    kd_minus_sft,
)

ROOT = Path(__file__).resolve().parents[1]


# ---- arm − SFT over seeds, on hand-made evaluations ----


def _evaluation(ids, consistency, ece=None):
    per_example = {"cnndm": {"id": ids, "factual_consistency": consistency}}
    metrics = {"cnndm/factual_consistency": float(np.mean([c for c in consistency if c is not None]))}
    if ece is not None:
        metrics["general/ece"] = ece
    return Evaluation(metrics=metrics, per_example=per_example, predictions={})


# KD − SFT per seed on examples a, b: [0, 2], [2, 4], [4, 6]; example c is unscored in one KD model.
IDS = ["a", "b", "c"]
SFT = {10: _evaluation(IDS, [50.0, 60.0, 70.0], ece=0.20),
       # Another order of the same examples: pairing goes by id, not position.
       11: _evaluation(IDS[::-1], [40.0, 30.0, 20.0], ece=0.30),
       12: _evaluation(IDS, [10.0, 10.0, 10.0], ece=0.25)}
KD = {10: _evaluation(IDS, [50.0, 62.0, 71.0], ece=0.10),
      11: _evaluation(IDS, [22.0, 34.0, None], ece=0.26),
      12: _evaluation(IDS, [14.0, 16.0, 19.0], ece=0.24)}


def test_the_baseline_check_reports_the_sft_spread_and_its_overconfidence_over_seeds():
    """The regime's check: SFT consistency mean and SD over seeds beside the teacher's, and held-out
    overconfidence with a seed-level t-interval (one value per seed)."""
    over = {10: 0.010, 11: 0.020, 12: 0.015}
    sft = {s: Evaluation(metrics={**e.metrics, "general/overconfidence": over[s],
                                  "cnndm/prior_trap_rate": 4.0 * i},
                         per_example=e.per_example, predictions={}) for i, (s, e) in enumerate(SFT.items())}
    teacher = _evaluation(IDS, [90.0, 95.0, 100.0])
    b = baseline(sft, teacher, 0.95)
    means = [60.0, 30.0, 10.0]  # the SFT evaluations' own consistency
    assert b.consistency["cnndm"] == pytest.approx((np.mean(means), np.std(means, ddof=1)))
    assert b.prior_trap_rate == {"cnndm": pytest.approx(4.0)} and b.teacher_consistency == {"cnndm": 95.0}
    half = stats.t.ppf(0.975, 2) * np.std(list(over.values()), ddof=1) / np.sqrt(3)
    assert b.overconfidence == pytest.approx((0.015, 0.015 - half, 0.015 + half))
    lines = baseline_lines(b, 0.95)
    assert "teacher 95.0" in lines[0] and lines[-1].endswith(": overconfident")
    under = baseline({s: Evaluation(metrics={**e.metrics, "general/overconfidence": -over[s]},
                                    per_example=e.per_example, predictions={}) for s, e in SFT.items()},
                     None, 0.95)
    assert baseline_lines(under, 0.95)[-1].endswith(": underconfident")


def test_differences_pair_examples_by_id_and_cross_seeds_with_examples():
    diffs = {(d.split, d.metric): d for d in kd_minus_sft({0.0: SFT, 0.5: KD}, EvalConfig())}
    consistency = diffs[("cnndm", "factual_consistency")]
    # The table [[0, 2], [2, 4], [4, 6]] (c dropped from every seed): by hand, mean 3, V = 7/3 with
    # 49/17 df (tests/test_bootstrap.py derives it).
    half = stats.t.ppf(0.975, 49 / 17) * np.sqrt(7 / 3)
    assert consistency.per_seed == pytest.approx({10: 1.0, 11: 3.0, 12: 5.0})
    assert consistency.examples_per_seed == {10: 2, 11: 2, 12: 2}
    assert (consistency.mean, consistency.low, consistency.high) == pytest.approx((3.0, 3 - half, 3 + half))
    assert consistency.p_value == pytest.approx(2 * stats.t.sf(3 / np.sqrt(7 / 3), 49 / 17))
    assert consistency.covers == SEEDS_AND_EXAMPLES and consistency.arm == "kd_a0.5"
    # Two examples cannot pin the shared example noise down to the paper's 1.4 points: no seed count does.
    assert consistency.mde is not None and consistency.seeds_for_paper_effect is None
    # An aggregate-only metric (no per-example column) is compared over seeds alone, and says so.
    ece = diffs[("general", "ece")]
    expected = stats.ttest_1samp([-0.10, -0.04, -0.01], 0.0).confidence_interval(0.95)
    assert ece.per_seed == pytest.approx({10: -0.10, 11: -0.04, 12: -0.01})
    assert (ece.low, ece.high) == pytest.approx((expected.low, expected.high))
    assert ece.covers == SEEDS_ONLY and ece.seeds_for_paper_effect is None
    # Metrics the evaluation does not give (prior-trap rate here) are left out, not reported as missing.
    assert set(diffs) == {("cnndm", "factual_consistency"), ("general", "ece")}


def test_one_seed_gives_an_examples_only_interval_and_no_aggregate():
    diffs = kd_minus_sft({0.0: {10: SFT[10]}, 0.5: {10: KD[10]}}, EvalConfig())
    assert [(d.metric, d.covers, d.mde) for d in diffs] == [("factual_consistency", EXAMPLES_ONLY, None)]


def test_an_aa_arm_is_analysed_as_kd_and_named_as_itself():
    diffs = compare_arms(SFT, [Arm("sft_null", 0.0, KD)], EvalConfig())
    assert {d.arm for d in diffs} == {"sft_null"}
    summary = SweepSummary("tiny", "sweep-x", "r", [10, 11, 12], [], 0.95, 1.0, [], diffs,
                           conclusions(diffs, 0.95), machine=machine())
    record = summary.to_dict()
    assert set(record["differences"]) == {"sft_null"} and set(record["conclusions"]) == {"sft_null"}
    assert record["differences"]["sft_null"]["cnndm"]["factual_consistency"]["per_seed"] == {10: 1.0, 11: 3.0,
                                                                                             12: 5.0}
    assert record["machine"]["threads"] >= 1
    with pytest.raises(ValueError, match="sft_null has no evaluation for seed"):
        compare_arms(SFT, [Arm("sft_null", 0.0, {10: KD[10]})], EvalConfig())


def _with_confidence(evaluation, by_example):
    """`evaluation` plus an unsupported-fact confidence per example (None: the summary states no unsupported
    fact) and its mean over the examples that have one, as the evaluation gives them."""
    mean = float(np.mean([v for v in by_example if v is not None]))
    return Evaluation(metrics={**evaluation.metrics, "cnndm/unsupported_fact_confidence": mean},
                      per_example={"cnndm": {**evaluation.per_example["cnndm"],
                                             "unsupported_fact_confidence": by_example}}, predictions={})


def test_unsupported_fact_confidence_is_one_value_per_model_over_seeds_and_exploratory():
    """Which summaries state an unsupported fact differs by model (here no example has a value in every
    model), so the confidence is compared as one value per model, as ECE is, not paired by example; it is
    marked exploratory and changes no conclusion."""
    sft = {10: _with_confidence(SFT[10], [0.9, None, 0.8]), 11: _with_confidence(SFT[11], [0.7, 0.9, None]),
           12: _with_confidence(SFT[12], [None, 0.95, None])}
    kd = {10: _with_confidence(KD[10], [None, 0.6, None]), 11: _with_confidence(KD[11], [0.5, None, 0.7]),
          12: _with_confidence(KD[12], [0.9, 0.7, 0.8])}
    diffs = kd_minus_sft({0.0: sft, 0.5: kd}, EvalConfig())
    confidence = next(d for d in diffs if d.metric == "unsupported_fact_confidence")
    assert confidence.split == "cnndm" and confidence.covers == SEEDS_ONLY and confidence.exploratory
    assert confidence.per_seed == pytest.approx({10: 0.6 - 0.85, 11: 0.6 - 0.8, 12: 0.8 - 0.95})
    expected = stats.ttest_1samp([-0.25, -0.2, -0.15], 0.0).confidence_interval(0.95)
    assert (confidence.mean, confidence.low, confidence.high) == pytest.approx((-0.2, expected.low,
                                                                                expected.high))
    assert not any(d.exploratory for d in diffs if d is not confidence)
    # The family and the conclusions are those of the same evaluations without it.
    assert conclusions(diffs, 0.95) == conclusions(kd_minus_sft({0.0: SFT, 0.5: KD}, EvalConfig()), 0.95)
    summary = SweepSummary("tiny", "sweep-x", "r", [10, 11, 12], [0.5], 0.95, 1.0, [], diffs)
    record = summary.to_dict()["differences"]["kd_a0.5"]["cnndm"]
    assert record["unsupported_fact_confidence"]["exploratory"] is True
    assert record["unsupported_fact_confidence"]["covers"] == SEEDS_ONLY
    assert record["factual_consistency"]["exploratory"] is False
    from rich.console import Console

    console = Console(record=True, width=250)
    console.print(differences_table(summary))
    text = console.export_text()
    assert "unsupported-fact confidence (exploratory)" in text
    assert f"-0.20 ({expected.low:+.2f}–{expected.high:+.2f})†" in text


def _cell(arm, split, p, mean=3.0, seeds=5):
    return Difference(0.1, split, "factual_consistency", mean, mean - 1, mean + 1,
                      dict.fromkeys(range(seeds), mean), dict.fromkeys(range(seeds), 500), SEEDS_AND_EXAMPLES,
                      arm=arm, se=0.5, df=4.0, p_value=p, mde=2.0, seeds_for_paper_effect=12)


def test_holm_decides_the_family_and_the_sentence_says_so():
    # Each cell alone excludes 0 at 95 %; Holm over the three tested cells keeps the first only
    # (adjusted 0.03, 0.06, 0.06). The two-seed cell is in no family and concludes nothing.
    cells = [_cell("kd_a0.1", "cnndm", 0.01), _cell("kd_a0.1", "xsum", 0.03), _cell("kd_a1", "cnndm", 0.04),
             _cell("kd_a1", "xsum", 0.001, seeds=2)]
    said = conclusions(cells, 0.95)
    assert KD_HELPS in said["kd_a0.1"]["cnndm"]
    assert "Holm-adjusted over 3 arm × split cells, p = 0.03 < 0.05" in said["kd_a0.1"]["cnndm"]
    for arm, split in (("kd_a0.1", "xsum"), ("kd_a1", "cnndm")):
        assert said[arm][split].startswith("no difference resolved")
        assert "p = 0.06, not below 0.05" in said[arm][split]
    assert said["kd_a1"]["xsum"].startswith("no conclusion from this many seeds")
    assert "over 2 seeds" in said["kd_a1"]["xsum"]
    assert "80% power to resolve ±2.00 points at the unadjusted 0.05 level" in said["kd_a0.1"]["cnndm"]
    assert "the paper's +1.4 needs 12 seeds" in said["kd_a0.1"]["cnndm"]
    lowers = conclusions([_cell("kd_a0.1", "cnndm", 0.001, mean=-3.0)], 0.95)["kd_a0.1"]["cnndm"]
    assert lowers.startswith("KD lowers factual consistency here")


def test_a_primary_cell_is_tested_alone_and_the_rest_are_exploratory():
    cells = [_cell("kd_a0.1", "cnndm", 0.04), _cell("kd_a0.1", "xsum", 0.001), _cell("kd_a1", "cnndm", 0.04)]
    said = conclusions(cells, 0.95, primary="kd_a0.1/cnndm")
    # Unadjusted 0.04 < 0.05 concludes; under Holm it would be 0.08.
    assert KD_HELPS in said["kd_a0.1"]["cnndm"] and "primary cell (eval.primary)" in said["kd_a0.1"]["cnndm"]
    for arm, split in (("kd_a0.1", "xsum"), ("kd_a1", "cnndm")):
        assert said[arm][split].startswith("exploratory") and KD_HELPS not in said[arm][split]
    assert KD_HELPS not in conclusions(cells, 0.95)["kd_a0.1"]["cnndm"]
    with pytest.raises(ConfigError, match="eval.primary: 'kd_a0.5/cnndm' is not a compared cell"):
        conclusions(cells, 0.95, primary="kd_a0.5/cnndm")
    # Before the run, from the cells the sweep will compare.
    check_primary("kd_a1/xsum", ["kd_a1/cnndm", "kd_a1/xsum"])
    with pytest.raises(ConfigError, match="compares kd_a1/cnndm, kd_a1/xsum"):
        check_primary("kd_a0.1/xsum", ["kd_a1/cnndm", "kd_a1/xsum"])


def test_table_shows_every_seed_power_and_marks_a_seeds_only_interval():
    from rich.console import Console

    ece = Difference(0.5, "general", "ece", -0.07, -0.10, -0.04, {10: -0.10, 11: -0.04}, {10: 1, 11: 1},
                     SEEDS_ONLY)
    consistency = Difference(0.5, "cnndm", "factual_consistency", 1.5, -0.5, 3.25, {10: 2.0, 11: 1.0},
                             {10: 3, 11: 3}, SEEDS_AND_EXAMPLES, mde=4.25, seeds_for_paper_effect=31)
    null = Difference(0.0, "cnndm", "factual_consistency", 0.5, -1.0, 2.0, {10: 0.0, 11: 1.0},
                      {10: 3, 11: 3}, SEEDS_AND_EXAMPLES, arm="sft_null", mde=3.0)
    summary = SweepSummary("tiny", "sweep-x", "r", [10, 11], [0.5], 0.95, 1.0, [], [consistency, null, ece])
    console = Console(record=True, width=250)
    console.print(differences_table(summary))
    text = console.export_text()
    assert "+1.50 (-0.50–+3.25)" in text and "+2.00, +1.00" in text
    assert "±4.25" in text and " 31 " in text and "sft_null" in text and " none " in text
    assert "-0.07 (-0.10–-0.04)†" in text
    assert "prior-trap" not in text  # no column for a metric no evaluation gave


def test_machine_record_reads_the_cpu_model(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: avx2\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert cpu_model(tmp_path / "absent") != ""
    import torch

    record = machine()
    assert record.torch == torch.__version__ and record.threads == torch.get_num_threads()


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
    # The mechanism's own measure, held-out calibration, one value per model: an interval over seeds.
    assert {"ece", "overconfidence"} <= set(per_split["general"])
    assert per_split["general"]["overconfidence"]["covers"] == SEEDS_ONLY
    models = {m["name"]: m["metrics"] for m in summary["models"]}
    for split in ("cnndm", "xsum"):
        metrics = per_split[split]
        assert {"factual_consistency", "rougeLsum", "hallucinated_facts_per_summary"} <= set(metrics)
        for name, d in metrics.items():
            assert sorted(d["per_seed"]) == ["10", "11"]
            assert d["covers"] == (SEEDS_ONLY if name in PER_MODEL else SEEDS_AND_EXAMPLES), (split, name)
        # Every example has every score here, so a seed's paired mean is the difference of the means.
        for seed in ("10", "11"):
            assert metrics["factual_consistency"]["per_seed"][seed] == pytest.approx(
                models[f"kd_a0.5_s{seed}"][f"{split}/factual_consistency"]
                - models[f"sft_s{seed}"][f"{split}/factual_consistency"])
        # Every example scored: the mean over seeds and examples is the seeds' mean difference of means.
        assert metrics["factual_consistency"]["mean"] == pytest.approx(np.mean(
            [models[f"kd_a0.5_s{s}"][f"{split}/factual_consistency"]
             - models[f"sft_s{s}"][f"{split}/factual_consistency"] for s in ("10", "11")]))
        assert summary["conclusions"]["kd_a0.5"][split].startswith("no conclusion from this many seeds")
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


def test_a_null_sweep_compares_a_second_sft_arm_from_its_own_seeds(tiny_sweep):
    """`--null`: the A/A check trains SFT students from seeds 1000 apart in place of the KD arms and
    analyses them exactly as a KD arm (the baseline's students reused from the cache)."""
    out, _, _ = tiny_sweep
    shown = _sweep(out, "--seeds", "2", "--null", "--json")
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.stdout)
    assert [m["name"] for m in summary["models"]] == ["teacher", "sft_s10", "sft_null_s10", "sft_s11",
                                                      "sft_null_s11"]
    assert summary["alphas"] == [] and "A/A" in summary["run_name"]
    assert set(summary["differences"]) == {"sft_null"} and set(summary["conclusions"]) == {"sft_null"}
    models = {m["name"]: m for m in summary["models"]}
    assert models["sft_s10"]["cached"] and models["sft_s11"]["cached"]
    # The null student of pairing seed 10 is the SFT student `smoothkd run` would train from seed 1010.
    from smoothkd.stages import prepare_data, prepare_tokenizer, train_student, with_student_seed

    cfg = load_config(ROOT / "configs/test/tiny.yaml", [f"output_dir={out}"])
    data = prepare_data(cfg)
    again = train_student(with_student_seed(cfg, 1010), data, prepare_tokenizer(cfg, data), 0.0)
    assert again.cached and again.path == models["sft_null_s10"]["path"] != models["sft_s10"]["path"]
    assert summary["baseline"]["seeds"] == 2 and set(summary["baseline"]["consistency"]) == {"cnndm", "xsum"}
    assert summary["machine"]["threads"] == cfg.student.train.threads


def test_teacher_seeds_give_the_kd_students_of_each_seed_a_teacher_in_turn(tiny_sweep):
    """`--teacher-seeds 2`: a second teacher (teacher.train.seed + 1) is trained and gated, and the KD
    student of the second seed learns from it; the first seed's students and every SFT student are the
    single-teacher sweep's own (cached)."""
    out, _, single = tiny_sweep
    shown = _sweep(out, "--seeds", "2", "--alphas", "0,0.5", "--teacher-seeds", "2", "--json")
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.stdout)
    before = {m["name"]: m for m in single["models"]}
    models = {m["name"]: m for m in summary["models"]}
    assert summary["teacher_seeds"] == [10, 11]
    assert [models[n]["teacher_seed"] for n in ("kd_a0.5_s10", "kd_a0.5_s11", "sft_s10", "sft_s11")] == [
        10, 11, None, None]
    for same in ("teacher", "sft_s10", "sft_s11", "kd_a0.5_s10"):
        assert models[same]["path"] == before[same]["path"] and models[same]["cached"], same
    assert models["kd_a0.5_s11"]["path"] != before["kd_a0.5_s11"]["path"]
    assert not models["kd_a0.5_s11"]["cached"]
    from zenml.client import Client

    run = Client().get_pipeline_run(summary["run_name"])
    assert {"teacher_t11", "check_teacher_calibration_t11", "precompute_labels_t11"} <= set(run.steps)


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
                       "threads": 1, "cpu_model": cpu_model(), "platform": runtime["platform"]}
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
    arm, per_split = next(iter(summary["conclusions"].items()))  # kd_a0.5, or sft_null after the A/A test
    assert f"{arm} cnndm: {per_split['cnndm']}" in text.output
    none = CliRunner().invoke(app, ["results", "--sweep", *config, "--set", f"output_dir={tmp_path}"])
    assert none.exit_code == 1 and "no finished sweep" in none.output


def test_an_evaluation_waiting_for_a_worker_runs_before_trainings_that_asked_first(tmp_path):
    """One worker, busy: a training (priority 1) asks for it, then an evaluation (priority 0). The evaluation
    runs first, and each reports the seconds it ran, not the time it waited."""
    import threading
    import time

    from smoothkd.stages import in_worker

    cfg = load_config(ROOT / "configs/test/tiny.yaml", [f"output_dir={tmp_path}", "sweep.workers=1"])
    results = {}

    def ask(name, fn, *args, priority=1):
        results[name] = in_worker(cfg, fn, *args, priority=priority)

    busy = threading.Thread(target=ask, args=("busy", time.sleep, 3.0))
    busy.start()
    time.sleep(0.5)  # the busy job holds the one worker from here on (its slot is taken before it starts)
    training = threading.Thread(target=ask, args=("training", time.time))
    training.start()
    time.sleep(0.5)
    evaluation = threading.Thread(target=ask, args=("evaluation", time.time), kwargs={"priority": 0})
    evaluation.start()
    for thread in (busy, training, evaluation):
        thread.join(120)
    assert results["evaluation"][0] < results["training"][0]  # started first though it asked second
    assert results["busy"][1] >= 3.0
    assert results["training"][1] < 1.0 and results["evaluation"][1] < 1.0  # the wait is not counted


def test_models_train_one_at_a_time_on_a_gpu_unless_told(monkeypatch):
    """Unset, `sweep.workers` is two on a CPU with two or more cores and one where the models train on a
    GPU (two 7B trainings would share its memory); a number set in the config wins either way."""
    import os

    import torch

    from smoothkd.distill.runtime import parallel_trainings

    assert load_config(ROOT / "configs/test/tiny.yaml", []).sweep.workers is None
    # The machine's cores and CUDA's presence are stood in for: these tests run on one kind of machine.
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert parallel_trainings(None, "cpu") == 2 and parallel_trainings(3, "cpu") == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert parallel_trainings(None, "cpu") == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parallel_trainings(None, "auto") == 1 and parallel_trainings(None, "cuda") == 1
    assert parallel_trainings(None, "cpu") == 2  # asked for the CPU
    assert parallel_trainings(2, "cuda") == 2


def test_time_left_follows_trained_models_not_cached_ones():
    from pipelines.sweep import time_left

    assert time_left([], 2, 3, 21) == "time left: after the first trained model"  # three cached so far
    # Models of 200 s each (training and evaluation) on two workers: 100 s a model.
    assert time_left([200.0], 2, 4, 21) == "~28.3 min left"
    assert time_left([180.0, 220.0], 2, 5, 21) == "~26.7 min left"
    assert time_left([60.0], 1, 20, 21) == "~60 s left"
    assert time_left([200.0], 2, 21, 21) == "done"


def test_time_left_is_not_the_gap_between_side_by_side_finishes():
    from pipelines.sweep import time_left

    # Two models trained side by side for 190 s finish 5 s apart; 16 more of them are
    # 26 minutes of work on two workers, not 16 × 5 s.
    assert time_left([190.0, 195.0], 2, 5, 21) == "~25.7 min left"


def test_the_sweep_gives_every_step_a_thread_and_restores_the_setting(monkeypatch):
    """ZenML runs a dynamic pipeline's ready steps on a pool of threads (10 by default), first ready first:
    a sweep of 10 seeds × 2 arms would queue every evaluation behind the last training."""
    import os

    from zenml.constants import ENV_ZENML_DYNAMIC_PIPELINE_WORKER_COUNT, handle_int_env_var

    from pipelines.sweep import THREADS_ENV, step_threads

    assert THREADS_ENV == ENV_ZENML_DYNAMIC_PIPELINE_WORKER_COUNT  # the name ZenML reads
    monkeypatch.delenv(THREADS_ENV, raising=False)
    with step_threads(42):
        assert handle_int_env_var(THREADS_ENV, default=10) == 42
    assert THREADS_ENV not in os.environ
    monkeypatch.setenv(THREADS_ENV, "64")  # a user's larger pool is kept, and restored after
    with step_threads(42):
        assert handle_int_env_var(THREADS_ENV, default=10) == 64
    assert os.environ[THREADS_ENV] == "64"
