"""Test-session isolation: no network, no writes to the user's ZenML/HF state.

Set before any test module imports `datasets`, `transformers` or `zenml`, which read these at import.
"""

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_STATE = Path(tempfile.mkdtemp(prefix="smoothkd-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_STATE / "hf")
os.environ["ZENML_CONFIG_PATH"] = str(_STATE / "zenml")
os.environ["ZENML_ANALYTICS_OPT_IN"] = "false"
os.environ["ZENML_LOGGING_VERBOSITY"] = "WARN"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["MLFLOW_ENABLE_TELEMETRY"] = "false"
# A bare `mlflow.*` call with no store set would write MLflow's default `./mlflow.db` into the checkout.
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STATE / 'mlflow-default.db'}"

# What MLflow reads for the store and experiment a bare `mlflow.*` call uses; it sets them itself too, so
# that subprocesses inherit its process-wide tracking URI and active experiment.
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


@contextlib.contextmanager
def mlflow_state_restored():
    """Leave MLflow's process-wide tracking URI and active experiment (and MLFLOW_ENV) as found, whoever set
    them inside: the test, or code it ran (a ZenML step, `mlflow.set_experiment`). MLflow is looked at only
    once something imported it, so tests that never do pay nothing."""
    env = {name: os.environ.get(name) for name in MLFLOW_ENV}
    experiment = active_experiment()
    try:
        yield
    finally:
        if "mlflow" in sys.modules:
            import mlflow
            from mlflow.tracking import fluent

            mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])  # None: unset, MLflow's default store
            fluent._active_experiment_id = experiment  # no public way back to "none set"
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(autouse=True)
def restore_mlflow_state():
    """No test depends on a store or experiment an earlier test pointed MLflow at."""
    with mlflow_state_restored():
        yield


def active_experiment() -> str | None:
    """The experiment id `mlflow.set_experiment` made active in this process, if MLflow is loaded."""
    fluent = sys.modules.get("mlflow.tracking.fluent")
    return fluent._active_experiment_id if fluent else None


def corpus_and_tokenizer(root: Path, seed: int, n_instruction: int, vocab_size: int, n_eval: int = 4,
                         train_rows: int | None = None) -> tuple[list[dict], "PreTrainedTokenizerBase"]:
    """Generate the embedded corpus into root / "corpus" and train a BPE tokenizer into root / "tok".

    The tokenizer learns from prompt + response texts of the first `train_rows` instruction rows (all when
    None). Returns (all instruction rows, tokenizer). Heavy imports stay inside: this module sets the
    environment before anything reads it.
    """
    from smoothkd.data.corpus import generate_corpus
    from smoothkd.data.prompts import build_prompt, response_text
    from smoothkd.io import read_jsonl
    from smoothkd.modeling.tokenizer import load_tokenizer, train_bpe_tokenizer

    generate_corpus(root / "corpus", seed=seed, n_instruction=n_instruction, n_cnndm=n_eval, n_xsum=n_eval)
    rows = read_jsonl(root / "corpus" / "instruction.jsonl")
    texts = [build_prompt(r["instruction"], r["context"], r["category"]) + response_text(r["response"])
             for r in rows[:train_rows]]
    tokenizer = load_tokenizer(str(train_bpe_tokenizer(texts, root / "tok", vocab_size=vocab_size)))
    return rows, tokenizer


def save_tiny_causal_lm(arch: str, tokenizer, out: Path, hidden: int, layers: int, extra_rows: int = 0,
                        max_positions: int = 512, seed: int = 0) -> Path:
    """A randomly initialised `arch` model (qwen2, gpt2, mistral) for `tokenizer`, saved like a hub model.

    `extra_rows` pads the embedding past the tokenizer, as Qwen2.5 checkpoints do (152,064 rows for
    151,665 tokens).
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, MistralConfig, Qwen2Config

    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    vocab = len(tokenizer) + extra_rows
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=2,
                            n_positions=max_positions, **special)
    else:
        family = {"qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
        config = family(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                        max_position_embeddings=max_positions, tie_word_embeddings=False, **special)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def free_port() -> int:
    """A loopback port nothing listens on now, for a server a test starts."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(port: int, path: str, body: dict | None = None, raw: bool = False, timeout: float = 10):
    """GET (or POST `body` as JSON to) a loopback server's `path`: parsed JSON, or bytes with `raw`."""
    import json
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read() if raw else json.load(response)


def stop_process_group(proc) -> None:
    """Stop a server started with `start_new_session=True` and the workers of its process group, so that
    nothing is left listening."""
    import signal
    import subprocess

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
