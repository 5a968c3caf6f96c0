"""Lookback-Lens factual rate: a logistic-regression detector on sentence-level lookback ratios.

Features: for each generated sentence, the mean lookback ratio per (layer, head) over its tokens, the
first generated token excepted (see `smoothkd.evaluation.lookback.span_features`), a vector of length
layers × heads, standardised with the training split's mean and scale. The detector predicts P(factual);
the factual rate of a generation is the share of its sentences with P(factual) ≥ 0.5.

Labels differ from the paper. Lookback Lens trains its detector on spans that humans or GPT-4 annotated
as hallucinated, on other data. We label held-out generations of the model itself (the teacher, in the
pipeline) with our deterministic fact scorer (`smoothkd.evaluation.facts.score_facts`): a sentence is
factual iff none of its facts is unsupported by the row's context. The rate is therefore only as good as
that scorer. Sentences with no checkable fact are left out of training, because "no unsupported fact" is
vacuous there and would teach the detector to spot fact-free filler rather than grounding; at inference
the detector reads attention only, so every sentence of a generation is classified.

The train/test split is grouped by source row: every sentence of one generation, and every model's
generation for the same row (the students' detector pools several students on one set of rows), lands on
one side, so the held-out AUROC is never measured on sentences whose row the fit has seen. The AUROC comes
with a percentile-bootstrap CI that resamples held-out rows (sentences of one row are not independent).
A detector whose AUROC is below `eval.detector_min_auroc`, or whose CI reaches chance (0.5), gives a
factual rate reported as unreliable (`Detector.unreliable_reason`): evaluation names it
`{split}/factual_rate_unreliable` (`smoothkd.config.UNRELIABLE_SUFFIX`), and no gate reads it.

The saved detector is the one fitted on the training split, so its recorded held-out AUROC describes
exactly the model that scores students. Classes are weighted to balance: factual sentences can be rare (the
tiny demo teacher's are 3-7%), and an unweighted fit would put no sentence of any model above 0.5, a rate
of 0 that tells nothing apart. Balanced, the 0.5 threshold separates the classes at equal cost, and the
factual rate counts the sentences whose attention looks more like grounded than like hallucinated text.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from smoothkd.data.prompts import build_prompt
from smoothkd.errors import DetectorError
from smoothkd.evaluation.facts import score_facts, sentence_spans
from smoothkd.evaluation.generation import Generation, generate_with_lookback
from smoothkd.evaluation.lookback import span_features, span_tokens
from smoothkd.io import read_json, write_json

THRESHOLD = 0.5
FORMAT = "smoothkd-lookback-detector/3"  # /2: grouped split, AUROC CI; /3: byte-level token offsets


@dataclass(frozen=True)
class Detector:
    """A fitted logistic regression on standardised [layers × heads] lookback features; label 1 = factual."""

    layers: int
    heads: int
    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    auroc: float
    auroc_ci_low: float
    auroc_ci_high: float
    n_train: int
    n_test: int
    n_test_groups: int
    n_factual: int
    n_hallucinated: int
    seed: int

    def unreliable_reason(self, min_auroc: float) -> str | None:
        """Why the factual rate this detector gives is not to be trusted (one line), or None."""
        # Written as "not above" so that a NaN (no resample held both classes) counts as unreliable too.
        if not self.auroc >= min_auroc:
            return f"held-out AUROC {self.auroc:.3f} is below eval.detector_min_auroc {min_auroc:g}"
        if not self.auroc_ci_low > 0.5:
            return (f"held-out AUROC CI [{self.auroc_ci_low:.3f}, {self.auroc_ci_high:.3f}] reaches chance "
                    f"(0.5)")
        return None

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """P(factual) for [n, layers, heads] (or [n, layers × heads]) sentence features."""
        x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        if x.shape[1] != self.layers * self.heads:
            raise DetectorError(f"detector expects {self.layers} layers × {self.heads} heads of lookback "
                                f"features, got {x.shape[1]} per sentence (a model of another shape?)")
        logits = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def save(self, path: str | Path) -> Path:
        """Write the detector as JSON (atomically)."""
        payload = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in self.__dict__.items()}
        return write_json(path, {"format": FORMAT, **payload})


def load_detector(path: str | Path) -> Detector:
    """Read a detector written by `Detector.save`."""
    payload = read_json(path)
    if payload.pop("format", None) != FORMAT:
        raise DetectorError(f"{path} is not a lookback detector ({FORMAT})")
    arrays = {k: np.asarray(payload.pop(k), dtype=np.float64) for k in ("coef", "mean", "scale")}
    return Detector(**payload, **arrays)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count half), labels 0/1."""
    from scipy.stats import rankdata

    positive = labels == 1
    n_pos = int(positive.sum())
    n_neg = len(labels) - n_pos
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _auroc_ci(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray, n_resamples: int,
              confidence: float, seed: int) -> tuple[float, float]:
    """Percentile-bootstrap CI of the AUROC, resampling whole groups (resamples with one class skipped)."""
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    values = []
    for _ in range(n_resamples):
        index = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        if 0 < labels[index].sum() < len(index):
            values.append(_auroc(labels[index], probs[index]))
    if not values:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def grouped_split(labels: np.ndarray, groups: np.ndarray, seed: int, test_fraction: float = 0.5
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices with every group on one side, stratified by label as far as groups allow.

    Raises DetectorError when a side would hold one class only (factual sentences from too few rows).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    n_splits, n_groups = max(2, round(1 / test_fraction)), len(np.unique(groups))
    if n_groups < n_splits:
        raise DetectorError(f"the lookback detector needs sentences from at least {n_splits} source rows; "
                            f"got {n_groups}")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train, test = next(folds.split(np.zeros(len(labels)), labels, groups))
    for side, index in (("training", train), ("held-out", test)):
        if len(np.unique(labels[index])) < 2:
            raise DetectorError(f"the {side} rows of the lookback detector hold one class only (factual "
                                f"sentences come from too few rows: {int(labels.sum())} factual in "
                                f"{len(np.unique(groups[labels == 1]))} rows)")
    return train, test


def fit_detector(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int,
                 test_fraction: float = 0.5, n_resamples: int = 1000, confidence: float = 0.95) -> Detector:
    """Fit on a split of [n, layers, heads] features (label 1 = factual) grouped by `groups` (one per
    sentence: its source row), stratified as far as the groups allow; record the held-out AUROC and its
    group-bootstrap CI."""
    from sklearn.linear_model import LogisticRegression

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups)
    n_factual, n_hallucinated = int((labels == 1).sum()), int((labels == 0).sum())
    if min(n_factual, n_hallucinated) < 2 or n_factual + n_hallucinated != len(labels):
        raise DetectorError(f"the lookback detector needs labels 0/1 with at least 2 factual and 2 "
                            f"hallucinated sentences; got {n_factual} factual, {n_hallucinated} hallucinated")
    if len(groups) != len(labels):
        raise DetectorError(f"the lookback detector needs one group per sentence; got {len(groups)} groups "
                            f"for {len(labels)} sentences")
    _, layers, heads = features.shape
    x = features.reshape(len(features), -1)
    train, test = grouped_split(labels, groups, seed, test_fraction)
    mean = x[train].mean(axis=0)
    # Heads whose ratio never varies (e.g. a constant head) must not divide by zero.
    std = x[train].std(axis=0)
    scale = np.where(std > 1e-12, std, 1.0)
    model = LogisticRegression(max_iter=5000, random_state=seed, class_weight="balanced").fit(
        (x[train] - mean) / scale, labels[train])
    detector = Detector(layers=layers, heads=heads, coef=model.coef_[0], intercept=float(model.intercept_[0]),
                        mean=mean, scale=scale, auroc=float("nan"), auroc_ci_low=float("nan"),
                        auroc_ci_high=float("nan"), n_train=len(train), n_test=len(test),
                        n_test_groups=len(np.unique(groups[test])), n_factual=n_factual,
                        n_hallucinated=n_hallucinated, seed=seed)
    probs = detector.predict_proba(x[test])
    low, high = _auroc_ci(labels[test], probs, groups[test], n_resamples, confidence, seed)
    return replace(detector, auroc=_auroc(labels[test], probs), auroc_ci_low=low,
                   auroc_ci_high=high)


def _sentences(generation: Generation) -> list[tuple[str, np.ndarray]]:
    """(sentence text, [layers, heads] features) for each sentence of a generation with measured tokens."""
    out = []
    for start, end in sentence_spans(generation.text):
        features = span_features(generation.lookback, *span_tokens(generation.offsets, start, end))
        if features is not None:
            out.append((generation.text[start:end], features))
    return out


@dataclass(frozen=True)
class DetectorData:
    """Labelled sentences for `fit_detector`: features [n, layers, heads], labels (1 = factual), groups
    (the source row's context, shared by every sentence and every model generated on that row), texts."""

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    sentences: list[str] = field(default_factory=list)


def detector_examples(model, tokenizer, rows: list[dict], lexicon: dict | None = None, batch_size: int = 16,
                      max_new_tokens: int = 64, max_prompt_length: int = 512, progress: bool = False
                      ) -> DetectorData:
    """Generate on instruction rows with a context; label each generated sentence with the fact scorer.

    `rows` are Dolly-schema rows with gold `facts` (the held-out instruction split); rows without a context
    are skipped, as are sentences with no checkable fact (see the module docstring).
    """
    rows = [r for r in rows if r.get("context", "").strip()]
    prompts = [build_prompt(r["instruction"], r["context"], r.get("category", "")) for r in rows]
    generations = generate_with_lookback(model, tokenizer, prompts, batch_size=batch_size,
                                         max_new_tokens=max_new_tokens, max_prompt_length=max_prompt_length,
                                         progress=progress, desc="generate (detector)")
    features, labels, groups, sentences = [], [], [], []
    for row, generation in zip(rows, generations, strict=True):
        for sentence, feats in _sentences(generation):
            check = score_facts(sentence, row["context"], gold=row.get("facts"), lexicon=lexicon)
            if not check.facts:
                continue
            features.append(feats)
            labels.append(int(check.n_unsupported == 0))
            groups.append(row["context"])
            sentences.append(sentence)
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    return DetectorData(np.asarray(features, dtype=np.float32).reshape(-1, layers, heads),
                        np.asarray(labels, dtype=np.int64), np.asarray(groups, dtype=str), sentences)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


@dataclass(frozen=True)
class FactualRate:
    """Per example: share of sentences classified factual (P(factual) ≥ 0.5, as Lookback Lens classifies
    spans), mean lookback ratio and sentence count. Values are None for an example whose generation has
    no sentence (empty text).
    """

    per_example: list[float | None]
    mean_lookback: list[float | None]
    n_sentences: list[int]

    @property
    def rate(self) -> float | None:
        """Mean of `per_example` in [0, 1] over the examples with at least one sentence."""
        return _mean(self.per_example)

    @property
    def mean_lookback_ratio(self) -> float | None:
        return _mean(self.mean_lookback)


def factual_rate(detector: Detector, generations: list[Generation]) -> FactualRate:
    """Classify every sentence of each generation (from `generate_with_lookback`) with `detector`."""
    per_example, mean_lookback, counts = [], [], []
    for generation in generations:
        sentences = _sentences(generation)
        counts.append(len(sentences))
        if not sentences:
            per_example.append(None)
            mean_lookback.append(None)
            continue
        probs = detector.predict_proba(np.stack([feats for _, feats in sentences]))
        per_example.append(float((probs >= THRESHOLD).mean()))
        # Measured tokens of the text only: token 0's ratio is 1 by definition (see `span_features`).
        measured = [t for t, (start, end) in enumerate(generation.offsets) if end > start and t > 0]
        mean_lookback.append(float(generation.lookback[measured].mean()))
    return FactualRate(per_example, mean_lookback, counts)
