"""Registration step: every evaluated student becomes a registered version; the gate picks the champion."""

from pathlib import Path
from typing import Annotated

import mlflow
from zenml import get_step_context, log_metadata, step
from zenml.client import Client
from zenml.enums import ModelStages
from zenml.logger import get_logger
from zenml.model_registries.base_model_registry import ModelRegistryModelMetadata, ModelVersionStage

from smoothkd.artifacts import EvaluatedModel, GateDecision, ModelSummary
from smoothkd.config import DistillConfig, RunConfig
from smoothkd.modeling.identity import model_identity
from smoothkd.registry.gate import Candidate
from smoothkd.registry.identity import EvalIdentity
from smoothkd.registry.promote import Registered, register_and_promote
from smoothkd.registry.store import ensure_registered_model
from smoothkd.stages import champion_reevaluator
from steps.tracking import ON_PIPELINE_RUN

logger = get_logger(__name__)


def registry_hooks(registry, name: str, store_uri: str, run_name: str, pipeline_name: str | None):
    """(register, set_alias) for `register_and_promote` through ZenML's MLflow model registry `registry`
    on the MLflow store `store_uri`: versions tagged with the ZenML run, the alias moved as ZenML's stage
    PRODUCTION (`champion`)."""
    # The component caches an MLflow client configured from the stack it was first built with; in a process
    # that already ran the pipeline on another store (tests, notebooks) that client points at the old one.
    client = registry._client = mlflow.MlflowClient(store_uri)

    def register(model_name: str, uri: str, run_id: str, tags: dict[str, str]) -> str:
        metadata = ModelRegistryModelMetadata(mlflow_run_id=run_id, zenml_run_name=run_name,
                                              zenml_pipeline_name=pipeline_name, **tags)
        # ZenML creates a missing registered model itself, and fails when a concurrent run created it first.
        ensure_registered_model(client, model_name)
        version = registry.register_model_version(model_name, model_source_uri=uri, metadata=metadata)
        return str(version.version)

    def set_alias(version: str) -> None:
        registry.update_model_version(name, version, stage=ModelVersionStage.PRODUCTION)

    return register, set_alias


def _stack_registry_hooks(name: str):
    """The stack's model registry hooks (`registry_hooks`) on the store this step's tracker configured;
    (None, None), plain MLflow, when the stack has no model registry."""
    registry = Client().active_stack.model_registry
    if registry is None:
        return None, None
    run = get_step_context().pipeline_run
    return registry_hooks(registry, name, mlflow.get_tracking_uri(), run.name,
                          run.pipeline.name if run.pipeline else None)


def _mirror_in_model_control_plane(name: str, decisions: list[GateDecision]) -> None:
    """One ZenML model version per registered MLflow version, with its decision; champion in production."""
    client = Client()
    try:
        client.get_model(name)
    except KeyError:
        client.create_model(name, description="smoothkd students; versions mirror the MLflow registry")
    for decision in decisions:
        version = f"mlflow-v{decision.version}"
        try:
            client.get_model_version(name, version)
        except KeyError:  # a version reused by a rerun is mirrored already; its metadata gains this decision
            client.create_model_version(name, name=version, tags=[decision.candidate])
        criteria = {c["name"]: f"{c['verdict']}: {c['value']}" for c in decision.criteria}
        log_metadata(metadata={"mlflow_version": decision.version, "passed": decision.passed,
                               "outcome": decision.outcome, "criteria": criteria},
                     model_name=name, model_version=version)
        if decision.outcome == "champion":
            client.update_model_version(name, version, stage=ModelStages.PRODUCTION, force=True)


def _lineage(student: EvaluatedModel, teacher: ModelSummary, distill: DistillConfig) -> dict[str, str]:
    """What a student is besides its candidate name and α, as version tags (`store.LINEAGE_TAGS`): the
    teacher and the distillation that taught a KD student, the data and the evaluation's identity."""
    tags = {}
    identity = EvalIdentity.from_dict(student.identity)
    if identity is not None:
        tags |= {"data": f"dataset {Path(identity.data_dir).name}", "evaluation": identity.describe()}
    if student.alpha:
        labels = f"top-{distill.top_k}" if distill.labels == "topk" else f"{distill.samples} sampled"
        taught = "an online teacher" if distill.mode == "online" else f"stored {labels} labels"
        tags |= {"teacher": f"{teacher.path} (weights {model_identity(teacher.path)[:12]})",
                 "distill": f"{distill.divergence} on {taught}, temperature {distill.temperature:g}"}
    return tags


# Logs to the pipeline's run: the decisions are the run's story; the versions live in the registry.
@step(experiment_tracker=True, settings=ON_PIPELINE_RUN)
def register_students(config: dict, teacher_summary: ModelSummary, student_summaries: list[EvaluatedModel]
                      ) -> Annotated[list[GateDecision], "gate_decisions"]:
    """Register every student, judge each against the promotion gate, promote at most one to `champion`."""
    cfg = RunConfig.model_validate(config)
    if not cfg.promotion.enabled:
        return []
    name = cfg.promotion.registered_model_name
    registered = [Registered(Candidate.from_summary(s), s.model_uri, s.run_id, model_identity(s.path),
                             _lineage(s, teacher_summary, cfg.distill), s.model_id)
                  for s in student_summaries]
    register, set_alias = _stack_registry_hooks(name)
    store = mlflow.get_tracking_uri()  # the tracker's store: the promotion lock lives with it
    records = register_and_promote(mlflow.MlflowClient(store), cfg.promotion, cfg.eval, registered, store,
                                   register, set_alias, champion_reevaluator(cfg, store))
    decisions = [GateDecision(**record) for record in records]
    _mirror_in_model_control_plane(name, decisions)
    mlflow.log_dict({"decisions": records}, "gate/decisions.json")
    mlflow.set_tags({f"gate.{d.candidate}": f"v{d.version}: {d.outcome}" for d in decisions})
    for d in decisions:
        logger.info("%s v%s: %s", d.candidate, d.version, d.outcome)
    log_metadata(metadata={d.candidate: {"version": d.version, "outcome": d.outcome} for d in decisions})
    return decisions
