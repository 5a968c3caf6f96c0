"""ROUGE as the paper reports it: `rouge_score` F1 ×100, rougeLsum with sentences split on newlines."""

from __future__ import annotations

from rouge_score import rouge_scorer


def rouge_per_example(predictions: list[str], references: list[str], use_stemmer: bool = False
                      ) -> dict[str, list[float]]:
    """Per-example rougeL and rougeLsum F1 (×100). References keep their newline sentence breaks."""
    scorer = rouge_scorer.RougeScorer(["rougeL", "rougeLsum"], use_stemmer=use_stemmer)
    scores: dict[str, list[float]] = {"rougeL": [], "rougeLsum": []}
    for prediction, reference in zip(predictions, references, strict=True):
        result = scorer.score(reference, prediction)
        for key in scores:
            scores[key].append(100.0 * result[key].fmeasure)
    return scores


def rouge(predictions: list[str], references: list[str], use_stemmer: bool = False) -> dict[str, float]:
    """Mean rougeL and rougeLsum F1 (×100) over the pairs."""
    per = rouge_per_example(predictions, references, use_stemmer)
    return {key: sum(values) / len(values) if values else 0.0 for key, values in per.items()}
