"""The typed records that flow between stages and pipeline steps.

Plain JSON-serialisable dataclasses: ZenML 0.98 stores them with its built-in dataclass materializer, and
they import nothing of the project's, so every layer may use them. The label store flows as
`smoothkd.distill.labels.PrecomputeResult`, the dataset, tokenizer and detector as paths.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The file in a trained model's directory that holds its `ModelArtifact`, written last by rank 0.
TRAIN_RECORD = "smoothkd_train.json"


@dataclass
class ModelArtifact:
    """A trained (or loaded) model directory plus what its training recorded."""

    path: str
    role: str
    parameters: int
    cached: bool = False
    train_steps: int = 0
    train_seconds: float = 0.0
    train_tokens_per_second: float = 0.0
    loss_history: list | None = None
    runtime: dict | None = None  # torch, CPU capability, threads of its training (jobs.train_model)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelSummary(ModelArtifact):
    """A model as its training step hands it on: the artifact, its α (None: the teacher), the MLflow run
    that trained it and, for a student, its logged MLflow model."""

    alpha: float | None = None
    run_id: str = ""
    model_uri: str | None = None


@dataclass
class Evaluation:
    """One model's evaluation: flat metrics with CIs, per-example columns and the generated summaries per
    split, and `dir`, the directory holding `result.json` and the localization tables."""

    metrics: dict[str, float]
    per_example: dict[str, dict[str, list]]
    predictions: dict[str, list[str]]
    dir: str = ""
    factual_rate_unreliable: str = ""  # why the detector's rate is unreliable, "" when it is not
    identity: dict[str, Any] | None = None  # what the scores depend on (smoothkd.registry.identity)


@dataclass
class EvaluatedModel(ModelSummary):
    """A model summary with its evaluation, as the evaluation step hands it to registration and report."""

    metrics: dict[str, float] = field(default_factory=dict)
    per_example: dict[str, dict[str, list]] = field(default_factory=dict)
    predictions: dict[str, list[str]] = field(default_factory=dict)
    identity: dict[str, Any] | None = None  # the evaluation's identity (smoothkd.registry.identity)


@dataclass
class GateDecision:
    """One student's final promotion decision record as registered (`smoothkd.registry.promote`): every
    criterion with value, threshold and verdict, the outcome, the champion judged against and after."""

    candidate: str
    version: str | None
    passed: bool
    primary_metric: str
    primary_value: float | None
    criteria: list[dict[str, Any]]
    outcome: str
    registered_model: str
    champion_judged: str | None = None
    champion_after: str | None = None
    champion_evaluation: dict[str, Any] | None = None
    status: str = "final"
    decision_id: str = ""
    written_at: str = ""
    promoter: str = ""
    record: str = ""  # the immutable record file in the version's run
    primary_splits: list[str] = field(default_factory=list)  # the splits the primary value is the mean of

    def to_dict(self) -> dict:
        return asdict(self)
