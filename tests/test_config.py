import os
import subprocess
import sys
from pathlib import Path

import pytest

from smoothkd.config import ConfigError, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_validate(path):
    assert isinstance(load_config(path), RunConfig)


def test_overrides_apply_with_yaml_types(tmp_path):
    cfg = load_config(write(tmp_path, "teacher:\n  train:\n    epochs: 1\n"),
                      ["teacher.train.epochs=3", "eval.splits=[xsum]", "teacher.finetune=false"])
    assert cfg.teacher.train.epochs == 3
    assert cfg.eval.splits == ["xsum"]
    assert cfg.teacher.finetune is False


@pytest.mark.parametrize(("text", "overrides", "expected"), [
    ("teacher:\n  trian: {}\n", [], "teacher.trian: unknown key"),
    ("student:\n  train:\n    batch_size: many\n", [], "student.train.batch_size"),
    ("eval:\n  splits: [cnndm, nope]\n", [], "eval.splits.1"),
    ("", ["student.train.lr=1"], "student.train.lr: unknown key"),
    ("data:\n  seed: 3\n", ["data.seed.x=1"], "data.seed is not a section"),
    ("teacher: [1, 2\n", [], "invalid YAML"),
])
def test_errors_name_the_key(tmp_path, text, overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_fingerprint_tracks_only_named_sections():
    a, b = RunConfig(), RunConfig.model_validate({"eval": {"batch_size": 3}})
    assert a.fingerprint("data") == b.fingerprint("data")
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize(("args", "expected"), [
    (["run", "missing.yaml"], "config file not found: missing.yaml"),
    (["run", "{cfg}", "--set", "teacher.tiny.hidden_size=big"], "teacher.tiny.hidden_size"),
    (["run", "{cfg}", "--set", "bogus=1"], "bogus: unknown key"),
])
def test_cli_reports_config_errors_in_one_line(tmp_path, args, expected):
    cfg = write(tmp_path, "name: t\n")
    argv = [a.replace("{cfg}", str(cfg)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "smoothkd.cli", *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("args", [["promote", "smoothkd-student", "1"], ["models"], ["results"], ["ui"],
                                  ["serve"], ["stack", "up", "local"]], ids=lambda a: a[0])
def test_a_named_config_that_does_not_exist_stops_every_command(tmp_path, monkeypatch, args):
    """Not the defaults' gate and store in its place: one line naming the file, exit 2."""
    from typer.testing import CliRunner

    from smoothkd.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "execv", lambda *a: pytest.fail("`ui` started a server"))
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("`serve` started a server"))
    result = CliRunner().invoke(app, [*args, "--config", "nope.yaml"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: config file not found: nope.yaml"]


@pytest.mark.parametrize("args", [["promote", "smoothkd-student", "1"], ["models"], ["results"], ["ui"],
                                  ["serve"]], ids=lambda a: a[0])
def test_every_command_reading_a_config_takes_overrides(tmp_path, monkeypatch, args):
    """`--set` reaches the config of every command that reads one (e.g. `--set output_dir=...` for the
    store of another run), checked like `run`'s: an unknown key is one line naming it."""
    from typer.testing import CliRunner

    from smoothkd.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "execv", lambda *a: pytest.fail("`ui` started a server"))
    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("`serve` started a server"))
    result = CliRunner().invoke(app, [*args, "--set", "bogus=1"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "bogus: unknown key" in lines[0], result.output


def test_an_unnamed_config_is_the_demo_config_where_it_exists_else_the_defaults(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from smoothkd.cli import DEFAULT_CONFIG, app

    monkeypatch.chdir(tmp_path)
    store = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    DEFAULT_CONFIG.parent.mkdir(parents=True)
    DEFAULT_CONFIG.write_text("tracking:\n  experiment_name: from-the-demo-config\n")
    read = CliRunner().invoke(app, ["results", *store])
    assert read.exit_code == 1 and "experiment from-the-demo-config of" in read.output, read.output
    DEFAULT_CONFIG.unlink()  # outside a checkout: the built-in defaults
    read = CliRunner().invoke(app, ["results", *store])
    assert read.exit_code == 1 and f"experiment {RunConfig().tracking.experiment_name} of" in read.output


def test_a_kd_students_key_ignores_the_other_alphas_of_its_run():
    from smoothkd.config import DistillConfig

    assert DistillConfig(alphas=[0.1, 1.0]).student_key() == DistillConfig(alphas=[1.0]).student_key()
    assert DistillConfig(alphas=[1.0]).student_key() != DistillConfig(alphas=[1.0], top_k=8).student_key()


def test_the_runs_evidence_hint_names_the_sweep_of_its_own_kd_students():
    from smoothkd.cli import evidence_hint

    cfg = load_config("configs/demo.yaml", ["distill.alphas=[0.1, 1.0]", "student.train.seed=7"])
    hint = evidence_hint("configs/demo.yaml", cfg)
    assert "one student seed (7) on one corpus draw (data.seed 10), not evidence" in hint
    # The run's own α, not the sweep's default four: the command costs what the README's evidence cost.
    assert "`smoothkd sweep configs/demo.yaml --seeds 10 --alphas 0.1,1`" in hint
    # A run with no KD student: the sweep's own default arms.
    alone = evidence_hint("configs/demo.yaml", load_config("configs/demo.yaml", ["distill.alphas=[]"]))
    assert "`smoothkd sweep configs/demo.yaml --seeds 10` compares" in alone
