"""General capability on held-out instruction rows, so a faithful student is not a broken one.

`general_capability` scores each row twice: ROUGE-L of the greedy response against the reference response,
and the mean token NLL of the reference response under teacher forcing (response tokens only, its closing
EOS included), through the same prompt template and encoding as training; the same teacher-forced logits
give the model's held-out calibration (ECE, overconfidence), which one-hot training is said to worsen.
`run_lm_eval` optionally runs lm-evaluation-harness tasks on a saved model when that package is installed.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from smoothkd.calibration.metrics import CalibrationAccumulator
from smoothkd.data.prompts import build_prompt
from smoothkd.data.tokenize import IGNORE_INDEX, CausalLMCollator, encode_instruction_rows
from smoothkd.evaluation.generation import generate
from smoothkd.evaluation.rouge import rouge_per_example
from smoothkd.modeling.models import response_logits

logger = logging.getLogger(__name__)


@torch.inference_mode()
def response_nll_per_example(model, tokenizer, rows: list[dict], max_length: int, max_prompt_length: int,
                             batch_size: int = 16, calibration: CalibrationAccumulator | None = None
                             ) -> list[float]:
    """Mean next-token NLL (nats) of each row's reference response given its prompt; the same logits also
    go into `calibration` when given."""
    model.eval()
    encoded = encode_instruction_rows(tokenizer, rows, max_length, max_prompt_length)
    collate = CausalLMCollator(tokenizer.pad_token_id)
    nll: list[float] = []
    for start in range(0, len(encoded), batch_size):
        batch = collate(encoded[start:start + batch_size])
        logits, targets = response_logits(model, batch)
        # Over the tokenizer's ids, as calibration measures the teacher: padded rows are no outcome.
        logits = logits[..., :len(tokenizer)]
        if calibration is not None:
            calibration.update(logits, targets)
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        # Response positions come row-major, so each row's losses are the next `count` entries.
        counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(-1).tolist()
        nll += [chunk.mean().item() for chunk in losses.split(counts)]
    return nll


def general_capability(model, tokenizer, rows: list[dict], max_prompt_length: int, max_length: int,
                       batch_size: int = 16, max_new_tokens: int = 64, progress: bool = False
                       ) -> dict:
    """Per-row `rougeL` (F1 ×100, greedy response vs reference), `nll` and the `generated` responses, and
    `calibration`: CalibrationMetrics of the reference responses' tokens at T = 1."""
    prompts = [build_prompt(r["instruction"], r.get("context", ""), r.get("category", "")) for r in rows]
    calibration = CalibrationAccumulator()
    generated = generate(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         max_prompt_length=max_prompt_length, progress=progress, desc="general capability")
    return {
        "rougeL": rouge_per_example(generated, [r["response"] for r in rows])["rougeL"],
        "nll": response_nll_per_example(model, tokenizer, rows, max_length, max_prompt_length, batch_size,
                                        calibration),
        "generated": generated,
        "calibration": calibration.compute(),
    }


def _metric_name(task: str, metric: str) -> str:
    # lm-eval keys look like "acc,none" (metric, filter); MLflow names cannot hold commas.
    name, _, filt = metric.partition(",")
    return f"lm_eval/{task}/{name}" + (f"_{filt}" if filt and filt != "none" else "")


def run_lm_eval(model_path: str | Path, tasks: list[str], batch_size: int = 8, device: str | None = None,
                limit: int | None = None) -> dict[str, float]:
    """lm-evaluation-harness `tasks` on the saved model at `model_path`, as flat `lm_eval/<task>/<metric>`.

    Optional: returns {} (and logs one line) when no task is asked for or `lm_eval` is not installed.
    """
    if not tasks:
        return {}
    if importlib.util.find_spec("lm_eval") is None:
        logger.warning("lm-evaluation-harness is not installed; skipping eval.lm_eval_tasks %s", tasks)
        return {}
    import lm_eval

    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_path}", tasks=list(tasks),
                                      batch_size=batch_size, device=device, limit=limit)
    return {
        _metric_name(task, metric): float(value)
        for task, metrics in results["results"].items()
        for metric, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
