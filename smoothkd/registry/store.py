"""MLflow side of the registry: log and register students, guard the `champion` alias, keep records.

The alias update is the one place two pipeline runs can race. `promote_guarded` serialises it with an
exclusive file lock and, inside the lock, re-reads the current champion and re-judges the candidate
against it (compare-and-set): the alias never moves to a version that failed against the champion it
replaces, nor back to a version older than the current champion. The lock file covers every process that
shares the lock path (one host, or a shared filesystem); the re-check keeps the order rule without it.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from smoothkd.registry.gate import Candidate, Decision

CHAMPION = "champion"
# Per-example scores stored with each model's run, so later gates can pair against that model.
PER_EXAMPLE_ARTIFACT = "evaluation/per_example.json"
MODEL_ARTIFACT = "model"
WEIGHTS_TAG = "weights_sha256"


def pip_requirements() -> list[str]:
    """Explicit requirements: MLflow's inference would import torchvision, which is not installed here."""
    import safetensors
    import tokenizers
    import torch
    import transformers

    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"transformers=={transformers.__version__}", f"tokenizers=={tokenizers.__version__}",
            f"safetensors=={safetensors.__version__}"]


def log_student_model(model_path: str | Path) -> str:
    """Log a saved model + tokenizer to the active MLflow run as a transformers model; return its URI."""
    from smoothkd.modeling.models import load_causal_lm
    from smoothkd.modeling.tokenizer import load_tokenizer

    model = load_causal_lm(model_path)
    tokenizer = load_tokenizer(str(model_path))
    info = mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer}, name=MODEL_ARTIFACT,
        task="text-generation", pip_requirements=pip_requirements())
    return info.model_uri


def register_version(client: MlflowClient, name: str, model_uri: str, run_id: str,
                     tags: dict[str, str] | None = None) -> str:
    """A new version of registered model `name` (created on first use) from a logged model."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    return str(client.create_model_version(name, model_uri, run_id=run_id, tags=tags or {}).version)


def version_with_weights(client: MlflowClient, name: str, weights: str) -> str | None:
    """The oldest version of `name` registered with these weights (their content hash), if any."""
    if not weights:
        return None
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.{WEIGHTS_TAG} = '{weights}'")
    except MlflowException:  # the registered model does not exist yet
        return None
    return str(min(int(v.version) for v in found)) if found else None


def champion_version(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def load_candidate(client: MlflowClient, name: str, version: str) -> Candidate:
    """Rebuild a registered version's Candidate from its run: metrics, α and per-example scores."""
    mv = client.get_model_version(name, version)
    run = client.get_run(mv.run_id)
    with tempfile.TemporaryDirectory() as tmp:  # through this client's store, not the process-wide URI
        per_example = json.loads(Path(client.download_artifacts(mv.run_id, PER_EXAMPLE_ARTIFACT, tmp))
                                 .read_text(encoding="utf-8"))
    alpha = float(run.data.params.get("alpha", mv.tags.get("alpha", 0.0)))
    candidate_name = mv.tags.get("candidate", run.data.tags.get("mlflow.runName", f"v{version}"))
    return Candidate(candidate_name, alpha, dict(run.data.metrics), per_example, version)


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class Outcome:
    """What happened to the alias for one candidate: `promoted`, `refused`, `superseded` or `unchanged`."""

    status: str
    version: str
    champion_before: str | None
    detail: str = ""

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"


def promote_guarded(client: MlflowClient, name: str, version: str, lock_path: str | Path,
                    rejudge: Callable[[str | None], Decision],
                    set_alias: Callable[[str], None] | None = None) -> tuple[Outcome, Decision | None]:
    """Move `champion` to `version` if it still passes against whatever is champion now.

    `rejudge(current_champion_version)` recomputes the gate decision inside the lock; `set_alias(version)`
    defaults to MLflow's alias update (the pipeline passes ZenML's model registry instead).
    """
    with exclusive_lock(lock_path):
        current = champion_version(client, name)
        if current == version:
            return Outcome("unchanged", version, current, "already champion"), None
        if current is not None and int(current) > int(version):
            return Outcome("superseded", version, current, f"newer champion v{current}"), None
        decision = rejudge(current)
        if not decision.passed:
            return Outcome("refused", version, current, ", ".join(decision.failed_criteria)), decision
        (set_alias or (lambda v: client.set_registered_model_alias(name, CHAMPION, v)))(version)
        if champion_version(client, name) != version:
            raise RuntimeError(f"alias {CHAMPION} of {name} did not move to v{version}")
        return Outcome("promoted", version, current), decision


def record_decision(client: MlflowClient, name: str, version: str, record: dict) -> None:
    """The decision as tags on the model version and as JSON in the version's run."""
    tags = {"gate.passed": str(record["passed"]).lower(), "gate.outcome": record.get("outcome", ""),
            "gate.primary": f"{record['primary_metric']}={record['primary_value']}"}
    for c in record["criteria"]:
        value = "n/a" if c["value"] is None else f"{c['value']:.3f}"
        tags[f"gate.{c['name']}"[:250]] = f"{c['verdict']}: {value} (threshold {c['threshold']})"[:5000]
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    run_id = client.get_model_version(name, version).run_id
    client.log_dict(run_id, record, f"gate/decision_v{version}.json")


def record_forced(client: MlflowClient, name: str, version: str, reason: str) -> None:
    """Who forced a promotion, when and why, as tags on the version."""
    for key, value in {"promotion.forced_by": getpass.getuser(), "promotion.reason": reason,
                       "promotion.forced_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}.items():
        client.set_model_version_tag(name, version, key, value)


def list_versions(client: MlflowClient, name: str | None = None) -> list[dict]:
    """Versions (newest first) with aliases and gate verdicts, for one registered model or all of them."""
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for model in names:
        # Version search results carry no aliases in MLflow 3: take them from the registered model.
        aliases: dict[str, list[str]] = {}
        for alias, aliased in client.get_registered_model(model).aliases.items():
            aliases.setdefault(str(aliased), []).append(alias)
        for mv in client.search_model_versions(f"name = '{model}'"):
            version = str(mv.version)
            rows.append({"name": model, "version": version, "aliases": aliases.get(version, []),
                         "candidate": mv.tags.get("candidate", ""),
                         "gate": mv.tags.get("gate.outcome") or mv.tags.get("gate.passed", ""),
                         "primary": mv.tags.get("gate.primary", ""),
                         "forced_by": mv.tags.get("promotion.forced_by", ""),
                         "created": time.strftime("%Y-%m-%d %H:%M:%S",
                                                  time.localtime(mv.creation_timestamp / 1000)),
                         "run_id": mv.run_id})
    return sorted(rows, key=lambda r: (r["name"], -int(r["version"])))
