"""The logged student: an MLflow pyfunc model that answers a prompt the way the evaluation generated.

MLflow's transformers text-generation pyfunc answers with the prompt followed by a completion that runs on
past the first newline; the gate judged greedy completions cut at the first newline. `Completion` wraps
the student's saved weights and tokenizer (an artifact of the logged model) and generates with the
evaluation's own code (`smoothkd.evaluation.generation.generate`), which the logged model carries as its
code, so `mlflow models serve` and `mlflow.pyfunc.load_model` answer as the evaluation did wherever torch
and transformers are installed. A request's params may set `max_new_tokens` and `max_prompt_length`;
decoding stays greedy and stops at the first newline, the protocol every score was measured under.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

from smoothkd.config import EvalConfig, TrainConfig

# The pyfunc artifact holding the student's `save_pretrained` directory (weights and tokenizer).
WEIGHTS_ARTIFACT = "student"


@dataclass(frozen=True)
class GenerationSettings:
    """How the evaluation generates (`eval.max_new_tokens`, `eval.batch_size`, the student's
    `train.max_prompt_length`): the served model's defaults."""

    max_new_tokens: int
    max_prompt_length: int
    batch_size: int

    @classmethod
    def of(cls, eval_cfg: EvalConfig, train: TrainConfig) -> GenerationSettings:
        """The settings `smoothkd.evaluation.evaluate` generates a student's summaries with."""
        return cls(eval_cfg.max_new_tokens, train.max_prompt_length, eval_cfg.batch_size)


class Completion(mlflow.pyfunc.PythonModel):
    """Prompts in, greedy completions out: no prompt, nothing from the first newline on."""

    def __init__(self, settings: GenerationSettings) -> None:
        self.settings = settings

    def load_context(self, context) -> None:
        from smoothkd.modeling.models import load_causal_lm
        from smoothkd.modeling.tokenizer import load_tokenizer

        weights = context.artifacts[WEIGHTS_ARTIFACT]
        self.model = load_causal_lm(weights)
        self.tokenizer = load_tokenizer(weights)

    # A frame, as the signature makes of every request (`{"inputs": [...]}` to the scoring server, a list to
    # `predict`): with this hint MLflow keeps the signature below instead of inferring one without params.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        from smoothkd.evaluation.generation import generate

        settings = {**asdict(self.settings), **{k: v for k, v in (params or {}).items() if v is not None}}
        prompts = [str(prompt) for prompt in model_input.iloc[:, 0]]
        return generate(self.model, self.tokenizer, prompts, settings["batch_size"],
                        int(settings["max_new_tokens"]), int(settings["max_prompt_length"]), progress=False)


def signature(settings: GenerationSettings) -> ModelSignature:
    """Strings in, strings out; `max_new_tokens` and `max_prompt_length` as request params."""
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string)]), outputs=Schema([ColSpec(DataType.string)]),
        params=ParamSchema([ParamSpec("max_new_tokens", DataType.long, settings.max_new_tokens),
                            ParamSpec("max_prompt_length", DataType.long, settings.max_prompt_length)]))


def weights_dir(local_model: Path) -> Path | None:
    """The student's saved weights inside a downloaded `Completion` model, None for another kind of model
    (a student logged with the transformers flavor, before `Completion`)."""
    flavor = Model.load(str(local_model)).flavors.get("python_function", {})
    artifact = (flavor.get("artifacts") or {}).get(WEIGHTS_ARTIFACT)
    return local_model / artifact["path"] if artifact else None
