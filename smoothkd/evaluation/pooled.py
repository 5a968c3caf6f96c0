"""A factual-rate detector fitted on several models' pooled held-out generations.

Lookback features are per (layer, head), so the models pooled must share a shape: the pipeline pools
all students into one detector and fits the teacher's on its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smoothkd.config import EvalConfig
from smoothkd.evaluation.detector import Detector, detector_examples, fit_detector
from smoothkd.modeling.models import load_causal_lm, resolve_device
from smoothkd.modeling.tokenizer import load_tokenizer


def fit_pooled_detector(model_paths: list[str | Path], rows: list[dict], lexicon: dict | None, e: EvalConfig,
                        max_prompt_length: int, seed: int, device: str = "auto", progress: bool = True
                        ) -> Detector:
    """Generate with each model on `rows`, label every sentence, and fit one detector on all of them.

    Raises DetectorError when the pooled sentences hold only one class.
    """
    features, labels, groups = [], [], []
    for model_path in model_paths:
        model = load_causal_lm(model_path).to(resolve_device(device))
        data = detector_examples(model, load_tokenizer(str(model_path)), rows, lexicon, e.batch_size,
                                 e.max_new_tokens, max_prompt_length, progress)
        features.append(data.features)
        labels.append(data.labels)
        groups.append(data.groups)
    # Grouped by source row: the models' generations for one row stay on one side of the split.
    return fit_detector(np.concatenate(features), np.concatenate(labels), np.concatenate(groups), seed=seed,
                        n_resamples=e.bootstrap_samples, confidence=e.confidence)
