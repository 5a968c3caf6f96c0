"""Evaluate one model: summaries with lookback ratios, ROUGE, factual consistency, factual rate, unsupported
facts, general capability, each aggregate with its bootstrap CI, plus per-example tables.

Metric names are flat and stable: `{split}/rougeLsum`, `{split}/factual_consistency` (%),
`{split}/factual_rate` (%), `{split}/hallucinated_facts_per_summary`, `{split}/lookback_ratio`,
`{split}/prior_trap_rate` (% of prior-trap rows whose summary names the memorised chief), `general/rougeL`,
`general/nll`, each with `_ci_low` / `_ci_high`; `general/ece` and `general/overconfidence` (held-out
calibration of next-token predictions on the reference responses, no CI).
"""

from __future__ import annotations

from pathlib import Path

from smoothkd.config import RunConfig
from smoothkd.data.prompts import eval_prompt
from smoothkd.data.schema import REFERENCE_COLUMN, SOURCE_COLUMN
from smoothkd.evaluation.bootstrap import ci_metrics


def _aggregate(name: str, values: list[float | None], cfg: RunConfig, scale: float = 1.0) -> dict[str, float]:
    """Mean and bootstrap CI over the examples that have a value (none: the metric is left out)."""
    present = [v * scale for v in values if v is not None]
    if not present:
        return {}
    e = cfg.eval
    return ci_metrics(name, present, e.bootstrap_samples, e.confidence, e.bootstrap_seed)


def _ids(rows: list[dict]) -> list[str]:
    """Row ids, falling back to the row's position for data without an `id` column."""
    return [r.get("id", str(i)) for i, r in enumerate(rows)]


def prior_trap_hits(checks: list, golds: list[dict | None]) -> list[float | None]:
    """Per row: 1.0 when a prior-trap row's summary names the memorised chief, 0.0 when it does not, None
    for rows that are no trap (their gold `facts` carry no `trap`), so the mean is the prior-trap rate."""
    return [None if not (gold or {}).get("trap") else float(check.trap_hit)
            for check, gold in zip(checks, golds, strict=True)]


def evaluate_split(cfg: RunConfig, model, tokenizer, kind: str, rows: list[dict], scorer, fact_scorer,
                   detector=None, progress: bool = True) -> tuple[dict, dict, list]:
    """(metrics, per-example columns, localization rows) for one summarisation split."""
    from smoothkd.evaluation.detector import factual_rate
    from smoothkd.evaluation.generation import generate_with_lookback
    from smoothkd.evaluation.localization import localization_rows
    from smoothkd.evaluation.rouge import rouge_per_example

    sources = [r[SOURCE_COLUMN[kind]] for r in rows]
    references = [r[REFERENCE_COLUMN[kind]] for r in rows]
    golds = [r.get("facts") for r in rows]
    generations = generate_with_lookback(
        model, tokenizer, [eval_prompt(kind, s) for s in sources], batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens, max_prompt_length=cfg.student.train.max_prompt_length,
        progress=progress, desc=f"generate {kind}")
    summaries = [g.text for g in generations]
    rouge = rouge_per_example(summaries, references, cfg.eval.use_stemmer)
    checks = fact_scorer.checks(sources, summaries, golds)
    # The default scorer's score is the checks' precision: do not extract every summary's facts twice.
    consistency = ([c.precision for c in checks] if scorer is fact_scorer
                   else scorer.score(sources, summaries, golds))
    per_example = {"id": _ids(rows), "rougeLsum": rouge["rougeLsum"],
                   "factual_consistency": [100.0 * s for s in consistency],
                   "hallucinated_facts": [float(c.n_unsupported) for c in checks],
                   "prior_trap_rate": [None if hit is None else 100.0 * hit
                                       for hit in prior_trap_hits(checks, golds)]}
    metrics = {}
    for name in ("rougeL", "rougeLsum"):
        metrics |= _aggregate(f"{kind}/{name}", rouge[name], cfg)
    metrics |= _aggregate(f"{kind}/factual_consistency", consistency, cfg, 100.0)
    metrics |= _aggregate(f"{kind}/hallucinated_facts_per_summary", per_example["hallucinated_facts"], cfg)
    metrics |= _aggregate(f"{kind}/prior_trap_rate", per_example["prior_trap_rate"], cfg)
    extra = {}
    if detector is not None:
        rate = factual_rate(detector, generations)
        per_example["factual_rate"] = [None if v is None else 100.0 * v for v in rate.per_example]
        metrics |= _aggregate(f"{kind}/factual_rate", rate.per_example, cfg, 100.0)
        metrics |= _aggregate(f"{kind}/lookback_ratio", rate.mean_lookback, cfg)
        extra = {"factual_rate": per_example["factual_rate"], "lookback_ratio": rate.mean_lookback}
    rows_out = localization_rows(per_example["id"], summaries, references, rouge["rougeLsum"],
                                 per_example["factual_consistency"], checks, sources, extra)
    return metrics, per_example, rows_out


def evaluate_model(cfg: RunConfig, model_path: str | Path, data_dir: str | Path, out_dir: str | Path,
                   detector_path: str | Path | None = None, tokenizer_ref: str | Path | None = None,
                   progress: bool = True) -> dict:
    """Evaluate `model_path` on every configured split and the held-out instruction split.

    Writes per-split localization tables (CSV, JSON, HTML) to `out_dir/<split>/` and returns
    `{"metrics": {...}, "per_example": {split: {column: [...]}}, "predictions": {split: [...]}}`.
    """
    from smoothkd.evaluation.capability import general_capability, run_lm_eval
    from smoothkd.evaluation.consistency import FactPrecisionScorer, build_scorer
    from smoothkd.evaluation.detector import load_detector
    from smoothkd.evaluation.localization import write_localization
    from smoothkd.modeling.models import load_causal_lm, resolve_device
    from smoothkd.modeling.tokenizer import load_tokenizer
    from smoothkd.stages import dataset_lexicon, read_split

    tokenizer = load_tokenizer(str(tokenizer_ref or model_path))
    model = load_causal_lm(model_path).to(resolve_device(cfg.device))
    lexicon = dataset_lexicon(data_dir)
    scorer = build_scorer(cfg.eval, lexicon, cfg.device)
    fact_scorer = scorer if isinstance(scorer, FactPrecisionScorer) else FactPrecisionScorer(lexicon)
    detector = load_detector(detector_path) if detector_path else None
    result: dict = {"metrics": {}, "per_example": {}, "predictions": {}}
    for kind in cfg.eval.splits:
        metrics, per_example, rows = evaluate_split(cfg, model, tokenizer, kind, read_split(data_dir, kind),
                                                    scorer, fact_scorer, detector, progress)
        result["metrics"] |= metrics
        result["per_example"][kind] = per_example
        result["predictions"][kind] = [row.summary for row in rows]
        write_localization(rows, Path(out_dir) / kind, f"{kind}: {Path(model_path).name}")
    held_out = read_split(data_dir, "validation")
    if held_out:
        train = cfg.student.train
        general = general_capability(model, tokenizer, held_out, train.max_prompt_length, train.max_length,
                                     cfg.eval.batch_size, cfg.eval.max_new_tokens, progress)
        result["metrics"] |= _aggregate("general/rougeL", general["rougeL"], cfg)
        result["metrics"] |= _aggregate("general/nll", general["nll"], cfg)
        result["metrics"] |= {"general/ece": general["calibration"].ece,
                              "general/overconfidence": general["calibration"].overconfidence}
        result["per_example"]["general"] = {"id": _ids(held_out),
                                            "rougeL": general["rougeL"], "nll": general["nll"]}
    if cfg.eval.lm_eval_tasks:
        result["metrics"] |= run_lm_eval(model_path, cfg.eval.lm_eval_tasks)
    return result
