"""Per-row helper columns that plain column expectations cannot compute: token lengths, duplicate rows,
reference/source length ratios and leakage of evaluation sources into the training contexts.

They are computed here with pandas and asserted through Great Expectations (see `suites.py`), so the GX
results and Data Docs report them like any other expectation. Only pandas and the tokenizer are needed.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import pandas as pd

from smoothkd.config import TrainConfig
from smoothkd.data.prompts import build_prompt, eval_prompt, response_text
from smoothkd.data.schema import COLUMNS, REFERENCE_COLUMN, SOURCE_COLUMN

# Helper column names, shared with the suites that assert them.
ROW_ID = "row_id"  # the id as text (the row number when ids are missing): names offending rows
TRUNCATED = "truncated"
DUPLICATE = "duplicate_row"
REFERENCE_RATIO = "reference_to_source_chars"
SOURCE_IN_TRAIN = "source_in_train"
TRAIN_OVERLAP = "train_ngram_overlap"

# Characters per token for the approximation used when the run's tokenizer cannot be loaded; about right
# for English with BPE tokenizers (Llama, GPT-2).
CHARS_PER_TOKEN = 4

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class TokenCounter:
    """Token counts as training encodes a row: BOS (if the tokenizer has one) + prompt, response + EOS."""

    count: Callable[[list[str]], list[int]]
    bos: int
    description: str


def tokenizer_counter(tokenizer, name: str) -> TokenCounter:
    """Token counts from a Hugging Face tokenizer (batched; without special tokens, added by `bos`)."""

    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    return TokenCounter(count, int(tokenizer.bos_token_id is not None), f"tokenizer {name}")


def approximate_counter(reason: str) -> TokenCounter:
    """Token counts approximated from characters, for when the run's tokenizer cannot be loaded."""

    def count(texts: list[str]) -> list[int]:
        return [math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts]

    return TokenCounter(count, 1, f"approximate, {CHARS_PER_TOKEN} chars/token ({reason})")


def limits(trains: Iterable[TrainConfig]) -> tuple[int, int]:
    """(max_length, max_prompt_length): the strictest of the models that train on the data (teacher and
    student)."""
    trains = list(trains)
    return min(t.max_length for t in trains), min(t.max_prompt_length for t in trains)


def _text(df: pd.DataFrame, column: str) -> list[str]:
    # Nulls and missing columns fail their own expectations; here they only must not break the arithmetic.
    if column not in df.columns:
        return [""] * len(df)
    return df[column].fillna("").astype(str).tolist()


def instruction_frame(rows: list[dict], max_length: int, max_prompt: int, tokens: TokenCounter
                      ) -> pd.DataFrame:
    """The instruction split with `truncated` and `duplicate_row` helper columns.

    A row is truncated when its prompt exceeds `max_prompt` or prompt + response exceeds `max_length`
    (`limits`), counted the way training encodes it.
    """
    df = _frame(rows, "instruction")
    instruction, context, category = (_text(df, c) for c in ("instruction", "context", "category"))
    prompts = [build_prompt(i, c, k) for i, c, k in zip(instruction, context, category, strict=True)]
    prompt_tokens = pd.Series(tokens.count(prompts), index=df.index, dtype="int64") + tokens.bos
    responses = [response_text(r) for r in _text(df, "response")]
    response_tokens = pd.Series(tokens.count(responses), index=df.index, dtype="int64") + 1  # EOS
    df[TRUNCATED] = (prompt_tokens > max_prompt) | (prompt_tokens + response_tokens > max_length)
    df[DUPLICATE] = _duplicates(df, "instruction")
    return df


def eval_frame(rows: list[dict], kind: str, max_prompt: int, tokens: TokenCounter, train: TrainingContexts
               ) -> pd.DataFrame:
    """An evaluation split with truncation, duplicate, length-ratio and leakage helper columns.

    Evaluation prompts are truncated when longer than `max_prompt` (generation cuts the middle out).
    Leakage compares each source with the training contexts (`source_in_train`: the same text;
    `train_ngram_overlap`: the largest share of its word n-grams found in any one context).
    """
    df = _frame(rows, kind)
    sources, references = _text(df, SOURCE_COLUMN[kind]), _text(df, REFERENCE_COLUMN[kind])
    prompt_tokens = pd.Series(tokens.count([eval_prompt(kind, s) for s in sources]), index=df.index,
                              dtype="int64") + tokens.bos
    df[TRUNCATED] = prompt_tokens > max_prompt
    df[DUPLICATE] = _duplicates(df, kind)
    # An empty source gets an infinite ratio: it fails here as well as in its own not-empty expectation.
    df[REFERENCE_RATIO] = [len(r) / len(s) if s else math.inf
                           for r, s in zip(references, sources, strict=True)]
    df[SOURCE_IN_TRAIN] = [train.contains(s) for s in sources]
    df[TRAIN_OVERLAP] = [train.overlap(s) for s in sources]
    return df


def _frame(rows: list[dict], kind: str) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    # Extra columns (e.g. the corpus's gold facts) hold nested objects GX cannot render; keep the schema.
    keep = [c for c in dict.fromkeys(("id", *COLUMNS[kind])) if c in df.columns]
    df = df[keep].reset_index(drop=True)
    # A copy, not `id` itself: GX cannot list index columns that are also the column under test.
    df[ROW_ID] = df["id"].astype(str) if "id" in df.columns else df.index.astype(str)
    return df


def _duplicates(df: pd.DataFrame, kind: str) -> pd.Series:
    """True for every repeat of an earlier row (same schema columns, ids aside)."""
    present = [c for c in COLUMNS[kind] if c != "id" and c in df.columns]
    return df.duplicated(subset=present, keep="first") if present else pd.Series(False, index=df.index)


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _text_hash(text: str) -> str:
    return hashlib.sha1(_normalise(text).encode()).hexdigest()


def _shingles(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return set(zip(*(words[i:] for i in range(n)), strict=False))  # all n-word windows, built in C


class TrainingContexts:
    """The training contexts, indexed once for the leakage checks of every evaluation split.

    Exact leakage compares hashes of whitespace- and case-normalised text. Near duplicates use an inverted
    index from word n-gram to the contexts holding it, so each source costs one pass over its n-grams
    instead of a comparison with every context.
    """

    def __init__(self, contexts: Iterable[str], n: int):
        self.n = n
        self.hashes: set[str] = set()
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, context in enumerate(c for c in contexts if c.strip()):
            self.hashes.add(_text_hash(context))
            for gram in _shingles(context, n):
                self.index[gram].append(i)

    def contains(self, source: str) -> bool:
        """True when `source` equals a training context up to case and whitespace."""
        return _text_hash(source) in self.hashes

    def overlap(self, source: str) -> float:
        """The largest fraction of the source's word n-grams found in one training context (0..1)."""
        grams = _shingles(source, self.n)
        hits: Counter[int] = Counter()
        for gram in grams:
            hits.update(self.index.get(gram, ()))
        return max(hits.values()) / len(grams) if hits else 0.0
