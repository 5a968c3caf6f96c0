"""Real architectures from local directories: Qwen2 (padded vocabulary), GPT-2, Mistral; compatibility
checks from configs; bad references and failing steps as one line on a quiet console."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import corpus_and_tokenizer, save_tiny_causal_lm
from typer.testing import CliRunner

from smoothkd.cli import app
from smoothkd.config import load_config
from smoothkd.errors import IncompatibleModelsError, ModelReferenceError, TokenizerMismatchError
from smoothkd.modeling.compat import check_run_models, preflight

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/test/tiny.yaml"
PAD = 64


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tokenizer and a padded Qwen2 teacher, GPT-2 and Mistral students (smaller), saved to disk."""
    root = tmp_path_factory.mktemp("real")
    _, tokenizer = corpus_and_tokenizer(root, seed=3, n_instruction=120, vocab_size=320)
    # In a qwen2 directory transformers loads it as Qwen2Tokenizer, which adds this unk token; with it
    # already there, every directory loads the same vocabulary (the checks would say so otherwise).
    tokenizer.add_special_tokens({"unk_token": "<|endoftext|>"})
    tokenizer.save_pretrained(root / "tok")
    return {
        "root": root, "vocab": len(tokenizer), "tokenizer": root / "tok",
        "qwen2": save_tiny_causal_lm("qwen2", tokenizer, root / "qwen2", 32, 2, extra_rows=PAD, seed=1),
        "gpt2": save_tiny_causal_lm("gpt2", tokenizer, root / "gpt2", 16, 1, seed=2),
        "mistral": save_tiny_causal_lm("mistral", tokenizer, root / "mistral", 16, 1, seed=3),
    }


def tiny(out: Path, *overrides: str):
    return load_config(TINY, [f"output_dir={out}", *overrides])


def sections(cfg) -> dict:
    """The config sections the compatibility checks take."""
    return {"tokenizer_cfg": cfg.tokenizer, "teacher": cfg.teacher, "student": cfg.student,
            "eval_cfg": cfg.eval}


@pytest.mark.parametrize(("mode", "student"), [("stored", "gpt2"), ("online", "mistral")])
def test_padded_qwen2_teacher_distils_into_another_architecture(models, tmp_path, mode, student):
    from pipelines.runner import run_distill
    from smoothkd.distill.labels import LabelStore

    cfg = tiny(tmp_path, f"teacher.name_or_path={models['qwen2']}", f"student.name_or_path={models[student]}",
               f"distill.mode={mode}", "eval.detector_rows=8")
    results = run_distill(cfg)
    assert [m.role for m in results.models] == ["teacher", "student_sft", "student_kd_a0.5"]
    for model in results.models[1:]:
        config = json.loads((Path(model.path) / "config.json").read_text())
        assert config["model_type"] == student and config["vocab_size"] == models["vocab"]
    teacher_config = json.loads((Path(results.models[0].path) / "config.json").read_text())
    assert teacher_config["model_type"] == "qwen2" and teacher_config["vocab_size"] == models["vocab"] + PAD
    # Online, the KD student read the padded teacher's logits in its loss (a shape mismatch before they were
    # cut). The label step runs in both modes; a random padded teacher puts padding ids in its top-k, and
    # the store must hold none of them.
    (manifest,) = (tmp_path / "labels").glob("*/manifest.json")
    store = LabelStore(manifest.parent)
    assert store.manifest["vocab_size"] == models["vocab"]
    assert int(store.all_tokens().ids.max()) < models["vocab"]


def test_compatibility_is_read_from_configs(models, tmp_path):
    cfg = tiny(tmp_path, f"teacher.name_or_path={models['qwen2']}", f"student.name_or_path={models['gpt2']}")
    compat = preflight(**sections(cfg))
    assert compat.vocab_size == models["vocab"]
    assert (compat.teacher.embedding_rows, compat.student.embedding_rows) == (models["vocab"] + PAD,
                                                                              models["vocab"])
    assert f"{PAD} padding rows, logits cut to {models['vocab']}" in compat.describe()
    # A trained tokenizer for a configured student cannot be the student's: said before any data is read.
    with pytest.raises(IncompatibleModelsError, match=r"student\.name_or_path is set.*tokenizer\.name_or"):
        preflight(**sections(tiny(tmp_path, f"student.name_or_path={models['gpt2']}")))


def test_each_incompatibility_names_its_config_key(models, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(models["tokenizer"]))
    small = save_tiny_causal_lm("mistral", tokenizer, tmp_path / "short", 16, 1, max_positions=128)
    with pytest.raises(IncompatibleModelsError, match=r"^student\.name_or_path takes at most 128 positions, "
                                                      r"but student\.train\.max_length is 160"):
        preflight(**sections(tiny(tmp_path, f"teacher.name_or_path={models['qwen2']}",
                                  f"student.name_or_path={small}")))
    # Fewer embedding rows than tokens: ids past them could not be embedded.
    config = json.loads((models["gpt2"] / "config.json").read_text())
    narrow = tmp_path / "narrow"
    save_tiny_causal_lm("gpt2", tokenizer, narrow, 16, 1)
    (narrow / "config.json").write_text(json.dumps({**config, "vocab_size": models["vocab"] - 8}))
    with pytest.raises(IncompatibleModelsError, match=rf"^student\.name_or_path has {models['vocab'] - 8} "
                                                      "embedding rows, fewer than"):
        preflight(**sections(tiny(tmp_path, f"teacher.name_or_path={models['qwen2']}",
                                  f"student.name_or_path={narrow}")))
    from smoothkd.modeling.tokenizer import train_bpe_tokenizer

    other = tmp_path / "other"
    save_tiny_causal_lm("gpt2", tokenizer, other, 16, 1)
    train_bpe_tokenizer(["a different corpus, a different vocabulary"] * 20, tmp_path / "tok2", 300)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (other / name).write_bytes((tmp_path / "tok2" / name).read_bytes())
    with pytest.raises(TokenizerMismatchError, match=r"^student\.name_or_path's tokenizer differs"):
        preflight(**sections(tiny(tmp_path, f"teacher.name_or_path={models['qwen2']}",
                                  f"student.name_or_path={other}")))
    # The pipeline's tokenizer step runs the same checks on the tokenizer it built.
    compat = check_run_models(models["tokenizer"], **sections(tiny(tmp_path)))
    assert compat.student.embedding_rows == models["vocab"]


def test_the_teacher_tokenizer_is_read_once_a_process_until_its_files_change(models, monkeypatch):
    """Every stage asks which tokenizer the teacher reads (cross_tokenizer_ref): the two tokenizers are
    loaded and compared on the first question only, and again once a file of theirs is rewritten."""
    from smoothkd.config import DistillConfig, TeacherConfig
    from smoothkd.modeling import compat

    loaded = []
    load = compat.load_checked_tokenizer
    monkeypatch.setattr(compat, "load_checked_tokenizer", lambda *args: loaded.append(args[1]) or load(*args))
    teacher = TeacherConfig(name_or_path=str(models["qwen2"]))
    shipped = models["qwen2"] / "tokenizer_config.json"

    def loads_for(questions: int) -> int:
        loaded.clear()
        for _ in range(questions):
            assert compat.cross_tokenizer_ref(models["tokenizer"], teacher, DistillConfig()) is None
        return len(loaded)

    for _ in range(2):  # each round a time no earlier question was asked with
        later = shipped.stat().st_mtime_ns + 10**9
        os.utime(shipped, ns=(later, later))
        assert loads_for(3) == 2


def test_bad_model_references_name_the_key_and_the_fix(models, tmp_path):
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((models["gpt2"] / "config.json").read_text())
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "smoothkd-custom",
                                                    "auto_map": {"AutoConfig": "configuration_x.XConfig"}}))
    (remote / "model.safetensors").write_bytes((models["gpt2"] / "model.safetensors").read_bytes())
    cases = {
        "/nonexistent/model": r"teacher\.name_or_path=/nonexistent/model: no such model directory",
        "someorg/not-cached": r"teacher\.name_or_path=someorg/not-cached: not in the local Hugging Face "
                              r"cache and HF_HUB_OFFLINE=1",
        str(no_weights): r"teacher\.name_or_path=.*: no \*\.safetensors weights",
        str(remote): r"needs its own \(remote\) code; set teacher\.trust_remote_code: true",
    }
    for ref, message in cases.items():
        with pytest.raises(ModelReferenceError, match=message):
            preflight(**sections(tiny(tmp_path, f"teacher.name_or_path={ref}")))


@pytest.mark.parametrize("command", [["run"], ["data", "validate"], ["teacher", "check"]])
def test_cli_commands_exit_2_on_a_bad_model_path(tmp_path, command):
    result = CliRunner().invoke(app, [*command, str(TINY), "--set", f"output_dir={tmp_path}", "--set",
                                      "teacher.name_or_path=/nonexistent", "--verbose"])
    assert result.exit_code == 2, result.output
    assert "teacher.name_or_path=/nonexistent: no such model directory" in result.output


def test_eval_exits_2_on_a_directory_without_safetensors(models, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text((models["gpt2"] / "config.json").read_text())
    result = CliRunner().invoke(app, ["eval", str(TINY), "--model", str(tmp_path / "m"), "--set",
                                      f"output_dir={tmp_path}", "--verbose"])
    assert result.exit_code == 2 and "--model=" in result.output and "safetensors" in result.output


def _smoothkd(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "smoothkd.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_bad_path_is_one_line_on_the_console(tmp_path):
    done = _smoothkd("run", str(TINY), "--set", f"output_dir={tmp_path}", "--set",
                     "teacher.name_or_path=/nonexistent")
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 2 and len(lines) <= 5, lines
    assert any("teacher.name_or_path=/nonexistent" in line for line in lines)
    assert "Traceback" not in done.stderr


def test_a_failing_step_is_its_one_line_on_a_quiet_console(tmp_path):
    done = _smoothkd("run", str(TINY), "--set", f"output_dir={tmp_path}", "--set",
                     "calibration.logit_scale=30")
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "Traceback" not in out and "Skipping registering" not in out and "'grad_norm'" not in out
    assert "  FAIL check_teacher_calibration" in out and "  ok   teacher (" in out
    assert out.strip().splitlines()[-1].startswith("error: calibration gate rejected the teacher")
    log = Path(out.splitlines()[0].removeprefix("log: "))
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text()
