"""Register a run's candidates, judge them, and promote at most one: the flow behind the pipeline's last
step and `smoothkd promote`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient

from smoothkd.config import RunConfig
from smoothkd.registry.gate import Candidate, Decision, best_passing, judge
from smoothkd.registry.store import (
    CHAMPION,
    WEIGHTS_TAG,
    champion_version,
    load_candidate,
    promote_guarded,
    record_decision,
    record_forced,
    register_version,
    version_with_weights,
)


@dataclass
class Registered:
    """A candidate whose model is logged in run `run_id` at `model_uri`; `weights` identifies its weights."""

    candidate: Candidate
    model_uri: str
    run_id: str
    weights: str = ""


def _champion(client: MlflowClient, name: str, version: str | None) -> Candidate | None:
    return load_candidate(client, name, version) if version else None


def _outcome(decision: Decision, promoted: str | None, best: Decision | None, detail: str) -> str:
    if decision.version == promoted:
        return "champion"
    if not decision.passed:
        return "failed gate"
    if best is not None and decision is best:
        return f"passed, not promoted: {detail}"
    return "passed, not best"


def register_and_promote(client: MlflowClient, cfg: RunConfig, registered: list[Registered],
                         lock_path: str | Path,
                         register: Callable[[str, str, str, dict[str, str]], str] | None = None,
                         set_alias: Callable[[str], None] | None = None) -> list[dict]:
    """Register every candidate, judge each, promote the best passing one; return the decision records.

    `register(name, model_uri, run_id, tags) -> version` and `set_alias(version)` default to plain MLflow;
    the pipeline passes ZenML's MLflow model registry so the stack's registry component does both.
    """
    name = cfg.promotion.registered_model_name
    register = register or (lambda n, uri, run, tags: register_version(client, n, uri, run, tags))
    for r in registered:
        # Identical weights (a rerun on cached students) keep their version instead of piling up copies.
        r.candidate.version = version_with_weights(client, name, r.weights) or register(
            name, r.model_uri, r.run_id,
            {"candidate": r.candidate.name, "alpha": f"{r.candidate.alpha:g}", WEIGHTS_TAG: r.weights})
    before = champion_version(client, name)
    champions = {before: _champion(client, name, before)}
    sft = next((r.candidate for r in registered if r.candidate.alpha == 0), None)
    decisions = [judge(r.candidate, cfg.promotion, cfg.eval, champions[before], sft) for r in registered]
    best = best_passing(decisions)
    promoted, detail = None, ""
    if best is not None:
        chosen = next(r.candidate for r in registered if r.candidate.version == best.version)

        def rejudge(current: str | None) -> Decision:
            # Only a champion that changed since `before` is loaded again (its run and per-example scores).
            if current not in champions:
                champions[current] = _champion(client, name, current)
            return judge(chosen, cfg.promotion, cfg.eval, champions[current], sft)

        outcome, rejudged = promote_guarded(client, name, best.version, lock_path, rejudge, set_alias)
        if rejudged is not None:  # the judgement made under the lock is the one on record
            decisions[decisions.index(best)] = best = rejudged
        promoted = best.version if outcome.status in ("promoted", "unchanged") else None
        detail = outcome.detail
    records = []
    for decision in decisions:
        record = decision.to_record(outcome=_outcome(decision, promoted, best, detail),
                                    champion_before=before, registered_model=name)
        record_decision(client, name, decision.version, record)
        records.append(record)
    return records


def repromote(client: MlflowClient, cfg: RunConfig, name: str, version: str, lock_path: str | Path,
              force: bool = False, reason: str = "") -> dict:
    """Re-run the gate for an existing version against today's champion; `force` promotes regardless."""
    candidate = load_candidate(client, name, version)
    sft = None
    if cfg.promotion.kd_not_worse_than_sft and candidate.alpha > 0:
        sft = _sibling_sft(client, name, version)

    def rejudge(current: str | None) -> Decision:
        return judge(candidate, cfg.promotion, cfg.eval, _champion(client, name, current), sft)

    before = champion_version(client, name)
    if force:
        decision = rejudge(before)
        client.set_registered_model_alias(name, CHAMPION, version)
        record_forced(client, name, version, reason)
        outcome = "champion (forced)"
    else:
        result, rejudged = promote_guarded(client, name, version, lock_path, rejudge)
        decision = rejudged or rejudge(before)
        outcome = {"promoted": "champion", "refused": "failed gate"}.get(result.status,
                                                                          f"{result.status}: {result.detail}")
    record = decision.to_record(outcome=outcome, champion_before=before, registered_model=name,
                                forced=force, reason=reason)
    record_decision(client, name, version, record)
    return record


def _sibling_sft(client: MlflowClient, name: str, version: str) -> Candidate | None:
    """The SFT baseline registered by the same pipeline run as `version` (same parent MLflow run)."""
    run = client.get_run(client.get_model_version(name, version).run_id)
    parent = run.data.tags.get("mlflow.parentRunId")
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.tags.get("alpha") == "0" and parent and \
                client.get_run(mv.run_id).data.tags.get("mlflow.parentRunId") == parent:
            return load_candidate(client, name, mv.version)
    return None
