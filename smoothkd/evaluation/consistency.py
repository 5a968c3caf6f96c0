"""Factual-consistency scorers: one score in [0, 1] per (source, summary), 1 = fully supported.

Three scorers share one interface, `score(sources, summaries, golds=None) -> list[float]`:

- `fact_precision` (default, no model): the share of a summary's facts its source supports
  (`smoothkd.evaluation.facts`); uses the corpus lexicon and gold facts when given.
- `nli`: any `AutoModelForSequenceClassification` NLI or consistency model, premise = source, hypothesis =
  a summary sentence; the probability of the positive label (`positive_label_index`).
- `hhem`: Vectara HHEM-2.1-open without its remote code (`load_hhem`).

Model scorers judge each summary sentence on its own, as SummaC-style checkers do: a sentence's score is
its best chunk's, since a fact needs support somewhere in the source, not everywhere, and the summary's
score is the mean over its sentences (the minimum, its least supported sentence, is reported too). So a
faithful summary whose sentences draw on distant parts of a long article is not under-scored for lacking
one chunk that holds all of them. A source longer than `max_length` tokens is read in chunks: whole
sentences packed greedily into the token budget the hypothesis sentence leaves (a source sentence longer
than the budget is cut by tokens). An empty or blank summary has no sentence and scores 0, as under
fact precision. Loading problems raise `EvaluationModelError` naming `eval.consistency_model` (or
`_tokenizer`).
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForTokenClassification,
)
from transformers.utils import cached_file

from smoothkd.config import EvalConfig
from smoothkd.data.corpus import load_lexicon
from smoothkd.errors import EvaluationModelError, one_line
from smoothkd.evaluation.facts import FactCheck, score_facts, sentence_spans, split_sentences
from smoothkd.io import read_json
from smoothkd.modeling.models import resolve_device

DEFAULT_NLI_MODEL = "FacebookAI/roberta-large-mnli"
DEFAULT_HHEM_MODEL = "vectara/hallucination_evaluation_model"
HHEM_FOUNDATION = "google/flan-t5-base"
HHEM_PROMPT = ("<pad> Determine if the hypothesis is true given the premise?\n\n"
               "Premise: {text1}\n\nHypothesis: {text2}")
MODEL_KEY = "eval.consistency_model"
TOKENIZER_KEY = "eval.consistency_tokenizer"
# Positive labels once lower-cased with non-letters dropped; "not_entailment", "inconsistent" and
# "unsupported" do not start with these.
_POSITIVE_PREFIXES = ("entail", "consistent", "support", "faithful", "factual")
# A chunk re-tokenised inside the full input can differ from its standalone count by a token at each edge.
_SLACK_TOKENS = 2


class ConsistencyScorer(Protocol):
    name: str

    def score(self, sources: list[str], summaries: list[str], golds: list[dict | None] | None = None
              ) -> list[float]:
        """One score in [0, 1] per example, 1 = the summary is fully supported by its source."""
        ...


def _fail(key: str, what: str, exc: BaseException) -> EvaluationModelError:
    reason = one_line(exc, limit=300) or type(exc).__name__
    return EvaluationModelError(f"{key}: cannot load {what}: {reason}")


class FactPrecisionScorer:
    """Share of supported facts per summary (deterministic; see `smoothkd.evaluation.facts`)."""

    name = "fact_precision"

    def __init__(self, lexicon: dict[str, list[str]] | None = None) -> None:
        self.lexicon = lexicon

    def checks(self, sources: list[str], summaries: list[str], golds: list[dict | None] | None = None
               ) -> list[FactCheck]:
        """The full fact check of every example, for localisation tables."""
        golds = golds or [None] * len(sources)
        return [score_facts(summary, source, gold, self.lexicon)
                for source, summary, gold in zip(sources, summaries, golds, strict=True)]

    def score(self, sources: list[str], summaries: list[str], golds: list[dict | None] | None = None
              ) -> list[float]:
        return [check.precision for check in self.checks(sources, summaries, golds)]


def positive_label_index(id2label: dict) -> int:
    """Index of the label meaning "the hypothesis is supported", found by name, never assumed.

    A label is positive when, lower-cased with non-letters dropped, it starts with entail, consistent,
    support, faithful or factual: "ENTAILMENT" and "consistent" are, "not_entailment" and "inconsistent"
    are not. Exactly one label must qualify.
    """
    labels = {int(i): str(label) for i, label in id2label.items()}
    positive = [i for i, label in labels.items()
                if re.sub(r"[^a-z]", "", label.lower()).startswith(_POSITIVE_PREFIXES)]
    if len(positive) != 1:
        names = ", ".join(labels[i] for i in sorted(labels))
        raise EvaluationModelError(
            f"{MODEL_KEY}: cannot tell which label means entailment among id2label [{names}]; expected "
            f"exactly one starting with {'/'.join(_POSITIVE_PREFIXES)}"
        )
    return positive[0]


@dataclass(frozen=True)
class SentenceScores:
    """One summary's per-sentence scores: each the best chunk's probability that the source supports it."""

    sentences: tuple[float, ...]

    @property
    def mean(self) -> float:
        """The summary's score: mean over its sentences; 0.0 for a summary without a sentence."""
        return sum(self.sentences) / len(self.sentences) if self.sentences else 0.0

    @property
    def min(self) -> float:
        """The least supported sentence's score; 0.0 for a summary without a sentence."""
        return min(self.sentences, default=0.0)


class SentenceScorer:
    """Scores (premise chunk, summary sentence) pairs in batches; each sentence keeps its best chunk."""

    name = ""

    def __init__(self, model, tokenizer: PreTrainedTokenizerBase, max_length: int, batch_size: int,
                 device: str) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size

    def _overhead(self, hypothesis: str) -> int:
        """Tokens of the model input other than the premise."""
        raise NotImplementedError

    def _encode(self, premises: list[str], hypotheses: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _positive_probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def chunks(self, source: str, hypothesis: str) -> list[str]:
        """`source` split into the premises actually scored against `hypothesis` (one when it fits)."""
        budget = max(self.max_length - self._overhead(hypothesis) - _SLACK_TOKENS, self.max_length // 4)
        try:
            offsets = self.tokenizer(source, add_special_tokens=False, return_offsets_mapping=True
                                     )["offset_mapping"]
        except NotImplementedError as exc:
            raise EvaluationModelError(f"{TOKENIZER_KEY}: chunking needs a fast tokenizer ({exc})") from None
        if len(offsets) <= budget:
            return [source]
        ends = [end for _, end in offsets]
        # First token reaching into each sentence after the first: the places a chunk may end cleanly.
        boundaries = sorted({bisect.bisect_right(ends, start) for start, _ in sentence_spans(source)[1:]})
        pieces, start = [], 0
        while start < len(offsets):
            end = min(start + budget, len(offsets))
            if end < len(offsets):
                right = bisect.bisect_right(boundaries, end)
                if right and boundaries[right - 1] > start:
                    end = boundaries[right - 1]
            pieces.append(source[offsets[start][0]:offsets[end - 1][1]].strip())
            start = end
        return [p for p in pieces if p] or [source]

    @torch.inference_mode()
    def score_sentences(self, sources: list[str], summaries: list[str]) -> list[SentenceScores]:
        """Per summary, each sentence's best-chunk probability of being supported by the source."""
        sentences = [split_sentences(summary) for summary in summaries]
        pairs = [(i, j, chunk, sentence)
                 for i, (source, summary_sentences) in enumerate(zip(sources, sentences, strict=True))
                 for j, sentence in enumerate(summary_sentences)
                 for chunk in self.chunks(source, sentence)]
        # Longest first: similar lengths share a batch, so little compute goes to padding.
        pairs.sort(key=lambda p: -len(p[2]) - len(p[3]))
        best = [[0.0] * len(s) for s in sentences]
        for start in range(0, len(pairs), self.batch_size):
            group = pairs[start:start + self.batch_size]
            batch = self._encode([p[2] for p in group], [p[3] for p in group])
            probs = self._positive_probs({k: v.to(self.device) for k, v in batch.items()})
            for (i, j, _, _), prob in zip(group, probs.tolist(), strict=True):
                best[i][j] = max(best[i][j], prob)
        return [SentenceScores(tuple(b)) for b in best]

    def score(self, sources: list[str], summaries: list[str], golds: list[dict | None] | None = None
              ) -> list[float]:
        """Mean over each summary's sentences of their best-chunk scores (`golds` is unused)."""
        return [s.mean for s in self.score_sentences(sources, summaries)]


class NLIScorer(SentenceScorer):
    """P(entailment) of an NLI / consistency classifier, premise = source chunk, hypothesis = a summary
    sentence."""

    name = "nli"

    def __init__(self, model: str = DEFAULT_NLI_MODEL, tokenizer: str | None = None, max_length: int = 512,
                 batch_size: int = 8, device: str = "auto") -> None:
        try:
            loaded = AutoModelForSequenceClassification.from_pretrained(
                model, use_safetensors=True, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise _fail(MODEL_KEY, f"NLI model '{model}'", exc) from None
        try:
            tok = AutoTokenizer.from_pretrained(tokenizer or model, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise _fail(TOKENIZER_KEY if tokenizer else MODEL_KEY, f"tokenizer '{tokenizer or model}'", exc
                        ) from None
        self.positive = positive_label_index(loaded.config.id2label)
        # The encoder's position table bounds the input; tokenizers record it as model_max_length.
        limit = tok.model_max_length if tok.model_max_length < 1_000_000 else max_length
        super().__init__(loaded, tok, min(max_length, limit), batch_size, device)

    def _overhead(self, hypothesis: str) -> int:
        hyp = self.tokenizer(hypothesis, add_special_tokens=False)["input_ids"]
        return len(hyp) + self.tokenizer.num_special_tokens_to_add(pair=True)

    def _encode(self, premises: list[str], hypotheses: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(premises, hypotheses, truncation=True, max_length=self.max_length,
                                   padding=True, return_tensors="pt"))

    def _positive_probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**batch).logits.float().softmax(-1)[:, self.positive]


def load_hhem(model: str = DEFAULT_HHEM_MODEL, tokenizer: str | None = None
              ) -> tuple[T5ForTokenClassification, PreTrainedTokenizerBase, str]:
    """HHEM-2.1-open as a stock `T5ForTokenClassification`, its tokenizer and its prompt; no remote code.

    HHEM-2.1-open (vectara/hallucination_evaluation_model) is flan-t5-base's encoder with a 2-label token
    classifier, wrapped by remote code (`HHEMv2ForSequenceClassification`, reported broken on
    transformers 5) as the attribute `t5`, so its safetensors keys are `t5.transformer.*` and
    `t5.classifier.*`, and its config.json is an `HHEMv2Config` carrying no T5 shape. This loader builds
    the T5 config from the `foundation` named in config.json (default google/flan-t5-base) with 2 labels,
    strips the `t5.` prefix, restores whichever of the tied embedding keys (`transformer.shared`,
    `transformer.encoder.embed_tokens`) the checkpoint left out, and loads strictly, so any other key
    mismatch fails loudly. A directory holding a stock T5ForTokenClassification (config model_type `t5`)
    loads as is. The tokenizer defaults to the foundation's (HHEM ships none). The upstream scoring is
    mirrored in `HHEMScorer`: prompt `HHEM_PROMPT`, score = softmax(logits[:, 0, :])[:, 1].
    """
    try:
        config_path = cached_file(model, "config.json")
        if config_path is None:
            raise OSError(f"no config.json in {model}")
        raw = read_json(config_path)
        if raw.get("model_type") == "t5":
            loaded = T5ForTokenClassification.from_pretrained(model, use_safetensors=True)
            foundation = model
        else:
            foundation = raw.get("foundation", HHEM_FOUNDATION)
            t5_config = T5Config.from_pretrained(foundation)
            t5_config.num_labels = 2
            weights = cached_file(model, "model.safetensors")
            if weights is None:
                raise OSError(f"no model.safetensors in {model}")
            state = {k.removeprefix("t5."): v for k, v in load_file(weights).items()}
            shared, encoder = "transformer.shared.weight", "transformer.encoder.embed_tokens.weight"
            embedding = state.get(shared, state.get(encoder))
            if embedding is None:
                raise ValueError(f"checkpoint has no token embedding ({shared})")
            state[shared] = state[encoder] = embedding
            loaded = T5ForTokenClassification(t5_config)
            loaded.load_state_dict(state, strict=True)
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise _fail(MODEL_KEY, f"HHEM model '{model}'", exc) from None
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer or foundation, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _fail(TOKENIZER_KEY if tokenizer else MODEL_KEY, f"HHEM tokenizer '{tokenizer or foundation}'",
                    exc) from None
    # Scores are read at position 0, the prompt's leading <pad>: padding must go to the right.
    tok.padding_side = "right"
    return loaded, tok, raw.get("prompt", HHEM_PROMPT)


class HHEMScorer(SentenceScorer):
    """Vectara HHEM-2.1-open: P(consistent) from the first token's 2-way logits (see `load_hhem`)."""

    name = "hhem"

    def __init__(self, model: str = DEFAULT_HHEM_MODEL, tokenizer: str | None = None, max_length: int = 512,
                 batch_size: int = 8, device: str = "auto") -> None:
        loaded, tok, self.prompt = load_hhem(model, tokenizer)
        # T5's relative positions put no hard limit on length, so `max_length` is only a memory bound.
        super().__init__(loaded, tok, max_length, batch_size, device)

    def _overhead(self, hypothesis: str) -> int:
        return len(self.tokenizer(self.prompt.format(text1="", text2=hypothesis))["input_ids"])

    def _encode(self, premises: list[str], hypotheses: list[str]) -> dict[str, torch.Tensor]:
        texts = [self.prompt.format(text1=p, text2=h) for p, h in zip(premises, hypotheses, strict=True)]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _positive_probs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**batch).logits[:, 0, :].float().softmax(-1)[:, 1]


def build_scorer(eval_cfg: EvalConfig, lexicon: dict[str, list[str]] | str | Path | None = None,
                 device: str = "auto") -> ConsistencyScorer:
    """The scorer `eval.consistency` names. `lexicon`: entity lists, a lexicon.json, or a corpus dir."""
    if eval_cfg.consistency == "fact_precision":
        if isinstance(lexicon, str | Path):
            path = Path(lexicon)
            lexicon = load_lexicon(path) if path.is_dir() else read_json(path)
        return FactPrecisionScorer(lexicon)
    cls = NLIScorer if eval_cfg.consistency == "nli" else HHEMScorer
    default = DEFAULT_NLI_MODEL if eval_cfg.consistency == "nli" else DEFAULT_HHEM_MODEL
    return cls(eval_cfg.consistency_model or default, eval_cfg.consistency_tokenizer,
               eval_cfg.consistency_max_length, eval_cfg.consistency_batch_size, device)
