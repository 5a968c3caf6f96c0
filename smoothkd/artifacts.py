"""The typed records that flow between stages and pipeline steps.

Plain JSON-serialisable dataclasses: ZenML 0.98 stores them with its built-in dataclass materializer, and
they import nothing of the project's, so every layer may use them. The label store flows as
`smoothkd.distill.labels.PrecomputeResult`, the dataset, tokenizer and detector as paths; the gates'
verdicts as `DataValidation`, `CalibrationVerdict` and `DetectorFit`, which the report step gathers into
`Results`, the record a run's `results.json` holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from pydantic import TypeAdapter

# The file in a trained model's directory that holds its `ModelArtifact`, written last by rank 0.
TRAIN_RECORD = "smoothkd_train.json"
STUDENT_ROLE_PREFIX = "student_"


def student_role(label: str) -> str:
    """The role of the student labelled `label` (`sft`, `kd_a0.1`): `student_sft`, `student_kd_a0.1`."""
    return STUDENT_ROLE_PREFIX + label


def model_label(role: str) -> str:
    """A model's label in tables, charts and the registry: a student's role without its prefix (`sft`,
    `kd_a0.1`), the teacher's as it is."""
    return role.removeprefix(STUDENT_ROLE_PREFIX)


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
    that trained it and, for a student, its logged MLflow model (URI and LoggedModel id)."""

    alpha: float | None = None
    run_id: str = ""
    model_uri: str | None = None
    model_id: str | None = None


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


@dataclass
class DataValidation:
    """The data gate's verdict as the validation step hands it on (a failed gate stops the run instead)."""

    verdict: str  # `pass` or `warn`
    expectations: int
    failed: list[str]
    warnings: list[str]
    tokens: str  # how tokens were counted
    data_docs: str  # the Data Docs site's index page


@dataclass
class CalibrationVerdict:
    """The teacher calibration gate's verdict: the temperature labels are made at and what it measured."""

    verdict: str
    message: str
    temperature: float
    fitted: bool
    diagram: str  # the reliability diagram
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class DetectorFit:
    """The factual-rate detector fitted for some models: its path and held-out quality, or why none was."""

    fitted_on: str  # the roles whose generations it was fitted on
    path: str = ""  # "" when disabled
    disabled: str = ""  # why no detector could be fitted, "" when one was
    cached: bool = False
    auroc: float = 0.0
    auroc_ci_low: float = 0.0
    auroc_ci_high: float = 0.0
    n_train: int = 0
    n_test: int = 0
    n_test_groups: int = 0
    n_factual: int = 0
    n_hallucinated: int = 0
    min_auroc: float = 0.0
    unreliable: str = ""  # why its rate is unreliable, "" when it is not


@dataclass
class Gates:
    """The verdicts of the gates a run passed through before its models were evaluated."""

    data: DataValidation | None = None
    calibration: CalibrationVerdict | None = None
    teacher_detector: DetectorFit | None = None
    student_detector: DetectorFit | None = None


@dataclass
class ModelResult:
    """One model's line in the results: what trained it, its metrics with CIs, its registry outcome."""

    role: str
    alpha: float | None
    path: str
    parameters: int
    metrics: dict[str, float]
    cached: bool = False
    train_seconds: float = 0.0
    run_id: str = ""
    version: str | None = None
    outcome: str | None = None

    @property
    def name(self) -> str:
        """`teacher`, `sft`, `kd_a0.5`: the role without its `student_` prefix."""
        return model_label(self.role)


@dataclass
class Champion:
    """The registered version this run made champion."""

    name: str
    version: str | None
    candidate: str


# 2: typed gates (`Gates`); 1 (no `format` key): each gate's step metadata as ZenML recorded it.
RESULTS_FORMAT = 2


@dataclass
class Results:
    """A pipeline run's results (`results.json`): per-model metrics, paired KD − SFT deltas, the gates'
    verdicts, promotion decisions and the champion; the runner adds the run's name, time and store."""

    models: list[ModelResult]
    deltas: dict[str, dict[str, float]] = field(default_factory=dict)
    decisions: list[GateDecision] = field(default_factory=list)
    champion: Champion | None = None
    gates: Gates = field(default_factory=Gates)
    run_name: str = ""
    pipeline_seconds: float = 0.0
    tracking_uri: str = ""
    format: int = RESULTS_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Results:
        """A results record as written by `to_dict`, or by a run before the gates were typed (format 1, no
        `format` key: the gates' verdicts were the steps' ZenML metadata under `LEGACY_GATES`' labels)."""
        if raw.get("format", 1) < RESULTS_FORMAT:
            gates = raw.get("gates") or {}
            raw = {**raw, "format": RESULTS_FORMAT,
                   "gates": {name: _legacy_gate(name, gates[old])
                             for old, name in LEGACY_GATES.items() if old in gates}}
        return TypeAdapter(cls).validate_python(raw)


# The labels under which format-1 records stored each gate's step metadata, and the field each fills.
LEGACY_GATES = {"data": "data", "calibration": "calibration", "teacher detector": "teacher_detector",
                "student detector": "student_detector"}


def _legacy_gate(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """One gate's old step metadata as the fields of its typed verdict (other keys, e.g. the experiment
    tracker's, dropped)."""
    if name == "data":
        return {key.removeprefix("validation."): value for key, value in meta.items()
                if key.startswith("validation.")}
    if name == "calibration":
        named = {"verdict", "message", "fitted", "diagram", "gate", "calibration_temperature"}
        return {"verdict": meta["verdict"], "message": meta["message"], "fitted": meta["fitted"],
                "diagram": meta["diagram"], "temperature": meta["calibration_temperature"],
                "metrics": {k: v for k, v in meta.items() if k not in named and isinstance(v, int | float)}}
    if "auroc" not in meta:  # a disabled detector recorded nothing
        return {"fitted_on": meta.get("fitted_on", ""), "disabled": "reason not recorded"}
    known = {f.name for f in fields(DetectorFit)}
    return {key: value for key, value in meta.items() if key in known}
