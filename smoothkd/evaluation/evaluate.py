"""Evaluate one model: summaries with lookback ratios, ROUGE, factual consistency, factual rate, unsupported
facts, general capability, each aggregate with its bootstrap CI, plus per-example tables.

Metric names are flat and stable: `{split}/rougeLsum`, `{split}/factual_consistency` (%; with a model
scorer also `{split}/factual_consistency_min`, the mean over summaries of their least supported sentence),
`{split}/factual_rate` (%; `{split}/factual_rate_unreliable` when the detector is below its AUROC floor),
`{split}/hallucinated_facts_per_summary`, `{split}/lookback_ratio`, `{split}/prior_trap_rate` (% of
prior-trap rows whose summary names the memorised chief), `{split}/unsupported_fact_confidence` and
`{split}/supported_fact_confidence` (the model's probability of the token that chose each fact, averaged
per summary over its unsupported or supported facts, then over the summaries that state such a fact; see
`smoothkd.evaluation.confidence`), `general/rougeL`, `general/nll`, each with `_ci_low` / `_ci_high`;
`general/ece` and `general/overconfidence` (held-out calibration of next-token predictions on the
reference responses, no CI).

`VERSION` names what an evaluation computes: a cached evaluation of another version is not reused.
"""

from __future__ import annotations

from pathlib import Path

from smoothkd.config import UNRELIABLE_SUFFIX, EvalConfig, TrainConfig
from smoothkd.data.dataset import dataset_lexicon, read_split
from smoothkd.data.prompts import eval_prompt
from smoothkd.data.schema import REFERENCE_COLUMN, SOURCE_COLUMN
from smoothkd.evaluation.bootstrap import ci_metrics

# Part of every evaluation's cache key (`smoothkd.stages.evaluate_model`): bump it when an evaluation gives
# other metrics or per-example columns, so that no evaluation cached before is read as a current one.
# 2: unsupported_fact_confidence, supported_fact_confidence.
VERSION = 2


def _aggregate(name: str, values: list[float | None], e: EvalConfig, scale: float = 1.0) -> dict[str, float]:
    """Mean and bootstrap CI over the examples that have a value (none: the metric is left out)."""
    present = [v * scale for v in values if v is not None]
    if not present:
        return {}
    return ci_metrics(name, present, e.bootstrap_samples, e.confidence, e.bootstrap_seed)


def _ids(rows: list[dict]) -> list[str]:
    """Row ids, falling back to the row's position for data without an `id` column."""
    return [r.get("id", str(i)) for i, r in enumerate(rows)]


def prior_trap_hits(checks: list, golds: list[dict | None]) -> list[float | None]:
    """Per row: 1.0 when a prior-trap row's summary names the memorised chief, 0.0 when it does not, None
    for rows that are no trap (their gold `facts` carry no `trap`), so the mean is the prior-trap rate."""
    return [None if not (gold or {}).get("trap") else float(check.trap_hit)
            for check, gold in zip(checks, golds, strict=True)]


def evaluate_split(e: EvalConfig, max_prompt_length: int, model, tokenizer, kind: str, rows: list[dict],
                   scorer, fact_scorer, detector=None, progress: bool = True) -> tuple[dict, dict, list]:
    """(metrics, per-example columns, localization rows) for one summarisation split; prompts are cut to
    `max_prompt_length` tokens, as in training."""
    from smoothkd.evaluation.confidence import fact_confidences
    from smoothkd.evaluation.consistency import SentenceScorer
    from smoothkd.evaluation.detector import factual_rate
    from smoothkd.evaluation.generation import generate_with_lookback
    from smoothkd.evaluation.localization import localization_rows
    from smoothkd.evaluation.rouge import rouge_per_example

    sources = [r[SOURCE_COLUMN[kind]] for r in rows]
    references = [r[REFERENCE_COLUMN[kind]] for r in rows]
    golds = [r.get("facts") for r in rows]
    generations = generate_with_lookback(
        model, tokenizer, [eval_prompt(kind, s) for s in sources], batch_size=e.batch_size,
        max_new_tokens=e.max_new_tokens, max_prompt_length=max_prompt_length,
        progress=progress, desc=f"generate {kind}")
    summaries = [g.text for g in generations]
    rouge = rouge_per_example(summaries, references, e.use_stemmer)
    checks = fact_scorer.checks(sources, summaries, golds)
    metrics = {}
    if isinstance(scorer, SentenceScorer):
        by_sentence = scorer.score_sentences(sources, summaries)
        consistency = [s.mean for s in by_sentence]
        metrics |= _aggregate(f"{kind}/factual_consistency_min", [s.min for s in by_sentence], e, 100.0)
    else:  # fact precision is the checks' precision: do not extract every summary's facts twice
        consistency = [c.precision for c in checks]
    per_example = {"id": _ids(rows), "rougeLsum": rouge["rougeLsum"],
                   "factual_consistency": [100.0 * s for s in consistency],
                   "hallucinated_facts": [float(c.n_unsupported) for c in checks],
                   "prior_trap_rate": [None if hit is None else 100.0 * hit
                                       for hit in prior_trap_hits(checks, golds)]}
    confidences = [fact_confidences(c, g.offsets, g.probs) for c, g in zip(checks, generations, strict=True)]
    per_example["unsupported_fact_confidence"] = [unsupported for unsupported, _ in confidences]
    per_example["supported_fact_confidence"] = [supported for _, supported in confidences]
    for name in ("rougeL", "rougeLsum"):
        metrics |= _aggregate(f"{kind}/{name}", rouge[name], e)
    metrics |= _aggregate(f"{kind}/factual_consistency", consistency, e, 100.0)
    metrics |= _aggregate(f"{kind}/hallucinated_facts_per_summary", per_example["hallucinated_facts"], e)
    metrics |= _aggregate(f"{kind}/prior_trap_rate", per_example["prior_trap_rate"], e)
    for name in ("unsupported_fact_confidence", "supported_fact_confidence"):
        metrics |= _aggregate(f"{kind}/{name}", per_example[name], e)
    extra = {}
    if detector is not None:
        rate = factual_rate(detector, generations)
        # An unreliable detector's rate is reported under another name, so no gate or delta reads it.
        name = "factual_rate" + (UNRELIABLE_SUFFIX if detector.unreliable_reason(e.detector_min_auroc)
                                 else "")
        per_example[name] = [None if v is None else 100.0 * v for v in rate.per_example]
        metrics |= _aggregate(f"{kind}/{name}", rate.per_example, e, 100.0)
        metrics |= _aggregate(f"{kind}/lookback_ratio", rate.mean_lookback, e)
        extra = {name: per_example[name], "lookback_ratio": rate.mean_lookback}
    rows_out = localization_rows(per_example["id"], summaries, references, rouge["rougeLsum"],
                                 per_example["factual_consistency"], checks, sources, extra)
    return metrics, per_example, rows_out


def run_evaluation(e: EvalConfig, train: TrainConfig, model_path: str | Path, data_dir: str | Path,
                   out_dir: str | Path, detector_path: str | Path | None = None,
                   tokenizer_ref: str | Path | None = None, device: str = "auto", progress: bool = True,
                   label: str | None = None) -> dict:
    """Evaluate `model_path` on every configured split and the held-out instruction split.

    `train` (the student's training section) gives the prompt and sequence limits the model was trained at.

    Writes per-split localization tables (CSV, JSON, HTML), titled `<label> · <split>` (`label` defaults
    to the model directory's name), to `out_dir/<split>/` and returns
    `{"metrics": {...}, "per_example": {split: {column: [...]}}, "predictions": {split: [...]}}`, plus
    `"factual_rate_unreliable": reason` when the detector's AUROC is below `eval.detector_min_auroc`.
    """
    from smoothkd.evaluation.capability import general_capability, run_lm_eval
    from smoothkd.evaluation.consistency import FactPrecisionScorer, build_scorer
    from smoothkd.evaluation.detector import load_detector
    from smoothkd.evaluation.localization import write_localization
    from smoothkd.modeling.models import load_causal_lm, resolve_device
    from smoothkd.modeling.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_ref or model_path))
    model = load_causal_lm(model_path).to(resolve_device(device))
    lexicon = dataset_lexicon(data_dir)
    scorer = build_scorer(e, lexicon, device)
    fact_scorer = scorer if isinstance(scorer, FactPrecisionScorer) else FactPrecisionScorer(lexicon)
    detector = load_detector(detector_path) if detector_path else None
    result: dict = {"metrics": {}, "per_example": {}, "predictions": {}}
    reason = detector.unreliable_reason(e.detector_min_auroc) if detector else None
    if reason:
        result["factual_rate_unreliable"] = reason
    for kind in e.splits:
        metrics, per_example, rows = evaluate_split(e, train.max_prompt_length, model, tokenizer, kind,
                                                    read_split(data_dir, kind), scorer, fact_scorer, detector,
                                                    progress)
        result["metrics"] |= metrics
        result["per_example"][kind] = per_example
        result["predictions"][kind] = [row.summary for row in rows]
        write_localization(rows, Path(out_dir) / kind, f"{label or Path(model_path).name} · {kind}")
    held_out = read_split(data_dir, "validation")
    if held_out:
        general = general_capability(model, tokenizer, held_out, train.max_prompt_length, train.max_length,
                                     e.batch_size, e.max_new_tokens, progress)
        result["metrics"] |= _aggregate("general/rougeL", general["rougeL"], e)
        result["metrics"] |= _aggregate("general/nll", general["nll"], e)
        result["metrics"] |= {"general/ece": general["calibration"].ece,
                              "general/overconfidence": general["calibration"].overconfidence}
        result["per_example"]["general"] = {"id": _ids(held_out),
                                            "rougeL": general["rougeL"], "nll": general["nll"]}
    if e.lm_eval_tasks:
        result["metrics"] |= run_lm_eval(model_path, e.lm_eval_tasks)
    return result
