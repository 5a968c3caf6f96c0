"""Teacher calibration: metrics against reference implementations, the gate, temperature fitting, the
pipeline stopping at a rejected teacher, `smoothkd teacher check`, and the calibration temperature as the
remedy that changes what the student learns."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from smoothkd.calibration.gate import gate_checks, response_logit_batches
from smoothkd.calibration.metrics import CalibrationAccumulator
from smoothkd.calibration.temperature import fit_temperature
from smoothkd.config import CalibrationConfig, ConfigError, load_config, tracking_uri
from smoothkd.data.dataset import read_split
from smoothkd.data.tokenize import encode_instruction_rows
from smoothkd.errors import TeacherRejectedError
from smoothkd.io import read_json
from smoothkd.modeling.models import load_causal_lm
from smoothkd.modeling.tokenizer import load_tokenizer
from smoothkd.stages import (
    check_teacher_calibration,
    precompute_labels,
    prepare_data,
    prepare_teacher,
    prepare_tokenizer,
    train_student,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/test/tiny.yaml"
# Makes the near-uniform tiny teacher badly overconfident (ECE ~0.76 against the tiny config's max 0.5).
OVERCONFIDENT = "calibration.logit_scale=30"


def _calibrated(n: int = 50_000, vocab: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from the logits' own softmax: calibrated by construction."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 2.5
    labels = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)
    return logits, labels


def _measure(logits, labels, n_bins=15, temperature=1.0, batch=4096):
    acc = CalibrationAccumulator(n_bins, temperature)
    for start in range(0, len(labels), batch):
        acc.update(logits[start:start + batch], labels[start:start + batch])
    return acc.compute()


def test_calibrated_logits_have_low_ece_and_scaled_ones_are_rejected():
    logits, labels = _calibrated()
    good = _measure(logits, labels)
    assert good.ece < 0.02 and good.adaptive_ece < 0.02
    assert abs(good.overconfidence) < 0.02
    bad = _measure(logits * 3, labels)
    assert bad.ece > 0.1 and bad.overconfidence > 0.1
    assert all(check.passed for check in gate_checks(good, CalibrationConfig()))
    checks = gate_checks(bad, CalibrationConfig(max_ece=0.1, max_nll=10.0))
    assert [c.name for c in checks if not c.passed] == ["ece"]
    # Dividing by a calibration temperature undoes the scale.
    assert _measure(logits * 3, labels, temperature=3.0).ece == pytest.approx(good.ece, abs=1e-9)


def test_no_token_is_no_measurement():
    """Zeros would read as a perfectly calibrated teacher."""
    acc = CalibrationAccumulator()
    acc.update(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="no token"):
        acc.compute()


def test_temperature_fit_recovers_a_known_scale():
    logits, labels = _calibrated(n=20_000, seed=1)
    assert fit_temperature((logits * 3).float(), labels) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature((logits / 2).float(), labels) == pytest.approx(0.5, rel=0.05)


def _reference(logits: np.ndarray, labels: np.ndarray, n_bins: int) -> dict:
    """Textbook definitions on dense arrays, for comparison with the streamed accumulator."""
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    conf, correct = probs.max(-1), (probs.argmax(-1) == labels).astype(float)
    ece = 0.0
    for lo, hi in zip(np.linspace(0, 1, n_bins + 1)[:-1], np.linspace(0, 1, n_bins + 1)[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    order = np.argsort(conf, kind="stable")
    adaptive = sum(len(idx) * abs(correct[idx].mean() - conf[idx].mean())
                   for idx in np.array_split(order, n_bins)) / len(conf)
    onehot = np.eye(logits.shape[1])[labels]
    return {"ece": ece, "adaptive_ece": adaptive, "brier": ((probs - onehot) ** 2).sum(-1).mean(),
            "nll": -np.log(probs[np.arange(len(labels)), labels]).mean(), "accuracy": correct.mean(),
            "confidence": conf.mean()}


@pytest.mark.parametrize("n_bins", [15, 7])
def test_streamed_metrics_match_dense_reference(n_bins):
    rng = np.random.default_rng(n_bins)
    logits = rng.normal(size=(997, 13)) * rng.uniform(0.5, 4, size=(997, 1))
    labels = rng.integers(0, 13, size=997)
    # Uneven batches, to check that streaming changes nothing.
    got = _measure(torch.from_numpy(logits), torch.from_numpy(labels), n_bins=n_bins, batch=100)
    want = _reference(logits, labels, n_bins)
    for name, value in want.items():
        assert getattr(got, name) == pytest.approx(value, abs=1e-6), name
    assert got.n_tokens == 997 and sum(got.bin_counts) == 997


def test_brier_over_a_large_vocabulary_matches_dense_computation():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 32_000, generator=gen) * 3
    labels = torch.randint(0, 32_000, (64,), generator=gen)
    dense = ((logits.double().softmax(-1) - F.one_hot(labels, 32_000).double()) ** 2).sum(-1).mean()
    assert _measure(logits, labels, batch=16).brier == pytest.approx(float(dense), abs=1e-6)
    assert _measure(logits, labels).nll == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)


# ---- the gate in the pipeline and the CLI (one tiny teacher, trained once for the module) ----


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("calibration")


@pytest.fixture(scope="module")
def rejected_run(out_dir):
    from zenml.client import Client

    from pipelines.runner import run_distill

    cfg = load_config(TINY, [f"output_dir={out_dir}", OVERCONFIDENT])
    with pytest.raises(Exception) as caught:
        run_distill(cfg)
    return cfg, caught.value, Client().get_pipeline("distill").last_run


def _chain(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_overconfident_teacher_stops_the_pipeline_at_the_gate(rejected_run):
    cfg, error, run = rejected_run
    rejection = next(e for e in _chain(error) if isinstance(e, TeacherRejectedError))
    assert "rejected" in str(rejection) and "ece" in str(rejection) and "> max 0.5000" in str(rejection)
    assert run.steps["check_teacher_calibration"].status == "failed"
    assert "student_sft" not in run.steps or run.steps["student_sft"].status != "completed"
    assert "report" not in run.steps or run.steps["report"].status != "completed"
    metadata = run.steps["check_teacher_calibration"].run_metadata
    assert metadata["verdict"] == "reject" and metadata["ece"] > 0.5
    out = Path(cfg.output_dir)
    assert not list(out.glob("students/*")), "a student was trained after the rejection"
    assert not list(out.rglob("*label*")), "soft labels were made after the rejection"
    assert list(out.glob("runs/*/calibration/reliability.png"))


def test_rejection_is_recorded_in_mlflow(rejected_run):
    cfg, _, _ = rejected_run
    client = mlflow.MlflowClient(tracking_uri(cfg))
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    by_name = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert "student_sft" not in by_name
    gate = by_name["check_teacher_calibration"]
    assert gate.data.tags["gate"] == "teacher_calibration" and gate.data.tags["gate.verdict"] == "reject"
    assert gate.data.metrics["calibration/ece"] > 0.5
    assert gate.data.params["calibration.logit_scale"] == "30.0"
    artifacts = {a.path for a in client.list_artifacts(gate.info.run_id, "calibration")}
    assert "calibration/reliability.png" in artifacts
    parent = client.get_run(gate.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["gate.teacher_calibration"] == "reject"
    assert client.search_registered_models() == []
    # Both runs say where and why the run stopped, as a rejection, not a crash.
    for run in (gate, parent):
        assert run.info.status == "FAILED" and run.data.tags["smoothkd.outcome"] == "rejected"
        assert run.data.tags["smoothkd.stopped_at"] == "check_teacher_calibration"
        assert run.data.tags["smoothkd.error"].startswith("calibration gate rejected the teacher")


def _check(out_dir, *overrides):
    from smoothkd.cli import app

    args = ["teacher", "check", str(TINY), "--set", f"output_dir={out_dir}"]
    for item in overrides:
        args += ["--set", item]
    return CliRunner().invoke(app, args)


def test_teacher_check_passes_and_prints_the_table(rejected_run, out_dir):
    result = _check(out_dir)  # reuses the teacher the pipeline trained
    assert result.exit_code == 0, result.output
    for name in ("ece", "adaptive_ece", "brier", "nll", "accuracy", "confidence", "overconfidence"):
        assert name in result.output
    assert "calibration gate passed" in result.output
    assert "reliability diagram: " in result.output


def test_teacher_check_rejects_with_exit_code_1(rejected_run, out_dir):
    result = _check(out_dir, OVERCONFIDENT)
    assert result.exit_code == 1, result.output
    assert "calibration gate rejected the teacher" in result.output and "FAIL" in result.output


def test_fitted_temperature_rescues_an_overconfident_teacher(rejected_run, out_dir):
    result = _check(out_dir, OVERCONFIDENT, "calibration.fit_temperature=true")
    assert result.exit_code == 0, result.output
    assert "before fit" in result.output and "fitted temperature" in result.output


@pytest.mark.parametrize("distillation_temperature", [1, 3])
def test_overconfident_teacher_is_rejected_whatever_the_distillation_temperature(
        rejected_run, out_dir, distillation_temperature):
    """distill.temperature only shapes the KD loss (the student still learns the teacher's distribution),
    so it must not change the gate's verdict."""
    result = _check(out_dir, OVERCONFIDENT, f"distill.temperature={distillation_temperature}")
    assert result.exit_code == 1, result.output
    assert "calibration gate rejected the teacher" in result.output and "temperature 1)" in result.output


def test_given_calibration_temperature_is_the_remedy_the_gate_judges(rejected_run, out_dir):
    result = _check(out_dir, OVERCONFIDENT, "calibration.temperature=30")
    assert result.exit_code == 0, result.output
    assert "calibration gate passed" in result.output and "temperature 30" in result.output


def test_a_window_the_prompts_fill_leaves_the_gate_nothing_to_judge_and_it_says_so(out_dir):
    """Prompts of the tiny corpus are longer than 16 tokens: no held-out response token is in the window."""
    result = _check(out_dir, "teacher.train.max_length=16", "teacher.train.max_prompt_length=16")
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert "held-out (validation) rows" in line and "teacher.train.max_length=16" in line
    assert "teacher.train.max_prompt_length=16" in line and "Traceback" not in result.output


def test_a_fitted_and_a_given_calibration_temperature_are_refused_together():
    with pytest.raises(ConfigError, match="calibration.temperature is given and fit_temperature is on"):
        load_config(TINY, ["calibration.fit_temperature=true", "calibration.temperature=2"])


def _held_out_calibration(data_dir, model_dir, cfg):
    """Calibration metrics of a model (at T = 1) on the held-out instruction split's response tokens."""
    tokenizer = load_tokenizer(str(model_dir))
    rows = read_split(data_dir, "validation")
    t = cfg.student.train
    examples = encode_instruction_rows(tokenizer, rows, t.max_length, t.max_prompt_length)
    accumulator = CalibrationAccumulator(cfg.calibration.n_bins)
    for logits, targets in response_logit_batches(load_causal_lm(model_dir), examples,
                                                  tokenizer.pad_token_id, 16):
        accumulator.update(logits, targets)
    return accumulator.compute()


def test_student_of_the_recalibrated_teacher_is_better_calibrated(rejected_run, out_dir):
    """The remedy changes what is taught: same student, seed and steps, labels from the raw overconfident
    teacher vs from the same teacher at its fitted calibration temperature (α = 1, KD only)."""
    overrides = [f"output_dir={out_dir}", OVERCONFIDENT, "student.train.max_steps=60",
                 "student.train.learning_rate=1.0e-2"]
    raw_cfg = load_config(TINY, overrides)
    data_dir = prepare_data(raw_cfg)
    tokenizer = prepare_tokenizer(raw_cfg, data_dir)
    teacher = prepare_teacher(raw_cfg, data_dir, tokenizer)
    assert teacher.cached  # the module's pipeline run trained it
    fit_cfg = load_config(TINY, [*overrides, "calibration.fit_temperature=true"])
    fitted = check_teacher_calibration(fit_cfg, data_dir, teacher.path, out_dir / "fitted")
    assert fitted.passed and fitted.temperature > 2  # it undoes most of the ×30
    students = {}
    for name, cfg, temperature in (("raw", raw_cfg, 1.0), ("recalibrated", fit_cfg, fitted.temperature)):
        labels = precompute_labels(cfg, data_dir, tokenizer, teacher.path, temperature, progress=False)
        assert read_json(Path(labels.path) / "manifest.json")["calibration_temperature"] == temperature
        student = train_student(cfg, data_dir, tokenizer, alpha=1.0, labels_dir=labels.path,
                                teacher_path=teacher.path, calibration_temperature=temperature)
        students[name] = _held_out_calibration(data_dir, student.path, cfg)
    raw, recalibrated = students["raw"], students["recalibrated"]
    # Measured: ECE 0.46 (overconfidence 0.45) vs 0.06 at equal accuracy.
    assert raw.overconfidence > 0.1  # the raw teacher's overconfidence was distilled
    assert recalibrated.ece < raw.ece - 0.05, (recalibrated.ece, raw.ece)
