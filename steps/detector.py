"""Detector step: the factual-rate (lookback ratio) detector for models of one shape.

Training and evaluation are separate steps because the factual rate needs a detector fitted on
generations of a model of the evaluated shape (see `smoothkd.stages.prepare_detector`).
"""

from typing import Annotated

import mlflow
from zenml import log_metadata, step
from zenml.logger import get_logger

from smoothkd.artifacts import DetectorFit, ModelSummary
from smoothkd.config import RunConfig
from smoothkd.errors import DetectorError
from smoothkd.evaluation.detector import load_detector
from smoothkd.stages import prepare_detector
from smoothkd.tracking import log_metrics

logger = get_logger(__name__)

# The fit's numbers, logged as the step's metrics and metadata.
NUMBERS = ("auroc", "auroc_ci_low", "auroc_ci_high", "n_train", "n_test", "n_test_groups", "n_factual",
           "n_hallucinated", "min_auroc")


@step(experiment_tracker=True)
def factual_rate_detector(config: dict, dataset_dir: str, model_summaries: list[ModelSummary]
                          ) -> Annotated[DetectorFit, "detector"]:
    """Fit (or reuse) the lookback-ratio detector on the models' pooled held-out generations.

    Returns the fit: the detector's path and held-out quality, or (path "") why none was fitted when the
    generations give no hallucinated (or no factual) sentence to learn from: the run goes on, and
    `factual_rate` is left out of those models' metrics.
    """
    cfg = RunConfig.model_validate(config)
    roles = ", ".join(s.role for s in model_summaries)
    mlflow.log_params({"detector.fitted_on": roles, "detector.rows": cfg.eval.detector_rows})
    try:
        path, cached = prepare_detector(cfg, dataset_dir, [s.path for s in model_summaries])
    except DetectorError as err:
        logger.warning("factual rate disabled for %s: %s", roles, err)
        mlflow.set_tag("detector", f"disabled: {err}")
        return DetectorFit(fitted_on=roles, disabled=str(err))
    detector = load_detector(path)
    min_auroc = cfg.eval.detector_min_auroc
    fit = DetectorFit(
        fitted_on=roles, path=str(path), cached=cached, auroc=detector.auroc,
        auroc_ci_low=detector.auroc_ci_low, auroc_ci_high=detector.auroc_ci_high, n_train=detector.n_train,
        n_test=detector.n_test, n_test_groups=detector.n_test_groups, n_factual=detector.n_factual,
        n_hallucinated=detector.n_hallucinated, min_auroc=min_auroc,
        unreliable=detector.unreliable_reason(min_auroc) or "")
    stats = {name: getattr(fit, name) for name in NUMBERS} | {"reliable": float(not fit.unreliable)}
    mlflow.set_tag("detector.reliable", "false: " + fit.unreliable if fit.unreliable else "true")
    log_metrics({f"detector/{k}": v for k, v in stats.items()})
    mlflow.log_artifact(str(path), "detector")
    log_metadata(metadata={**stats, "unreliable": fit.unreliable, "fitted_on": roles, "path": fit.path,
                           "cached": cached})
    logger.info("factual-rate detector (%s): held-out AUROC %.3f (CI %.3f-%.3f) on %d sentences%s", roles,
                fit.auroc, fit.auroc_ci_low, fit.auroc_ci_high, fit.n_test,
                f"; factual rate unreliable: {fit.unreliable}" if fit.unreliable else "")
    return fit
