"""Test-session isolation: no network, no writes to the user's ZenML/HF state.

Set before any test module imports `datasets`, `transformers` or `zenml`, which read these at import.
"""

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

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


def corpus_and_tokenizer(root: Path, seed: int, n_instruction: int, vocab_size: int, n_eval: int = 4,
                         train_rows: int | None = None) -> tuple[list[dict], "PreTrainedTokenizerBase"]:
    """Generate the embedded corpus into root / "corpus" and train a BPE tokenizer into root / "tok".

    The tokenizer learns from prompt + response texts of the first `train_rows` instruction rows (all when
    None). Returns (all instruction rows, tokenizer). Heavy imports stay inside: this module sets the
    environment before anything reads it.
    """
    from smoothkd.data.corpus import generate_corpus, read_jsonl
    from smoothkd.data.prompts import build_prompt, response_text
    from smoothkd.modeling.tokenizer import load_tokenizer, train_bpe_tokenizer

    generate_corpus(root / "corpus", seed=seed, n_instruction=n_instruction, n_cnndm=n_eval, n_xsum=n_eval)
    rows = read_jsonl(root / "corpus" / "instruction.jsonl")
    texts = [build_prompt(r["instruction"], r["context"], r["category"]) + response_text(r["response"])
             for r in rows[:train_rows]]
    tokenizer = load_tokenizer(str(train_bpe_tokenizer(texts, root / "tok", vocab_size=vocab_size)))
    return rows, tokenizer
