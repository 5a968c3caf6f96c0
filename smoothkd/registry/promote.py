"""Register a run's candidates, judge them, and promote at most one: the flow behind the pipeline's last
step and `smoothkd promote`.

Order of writes for each decision: its record first (a `pending` record before an alias move, the
`final` one after it), then the alias, then the version's gate.* tags as one set, then its description.
A champion whose registry evaluation does not pair with the candidate's (other rows, scorers or
settings) is re-evaluated on the candidate's rows before the candidate is judged against it; the record
says which was used.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow import MlflowClient

from smoothkd.config import EvalConfig, PromotionConfig
from smoothkd.registry.gate import Candidate, ChampionEvaluation, Decision, best_passing, describe_gate, judge
from smoothkd.registry.identity import EvalIdentity
from smoothkd.registry.store import (
    WEIGHTS_TAG,
    Outcome,
    champion_version,
    describe_model,
    describe_version,
    forced_tags,
    gate_tags,
    link_logged_model,
    load_candidate,
    promote_guarded,
    promotion_lock,
    register_version,
    replace_gate_tags,
    version_with_weights,
    write_record,
)

# (champion as registered, the candidate's evaluation identity) -> the champion evaluated like the candidate
Reevaluate = Callable[[Candidate, EvalIdentity], Candidate]


class ReevaluationError(RuntimeError):
    """The champion cannot be evaluated on the candidate's rows (they are gone, the model fails, ...)."""


@dataclass
class Registered:
    """A candidate whose model is logged in run `run_id` at `model_uri` (the MLflow LoggedModel `model_id`);
    `weights` identifies its weights, `lineage` says what it is (version tags: `store.LINEAGE_TAGS`)."""

    candidate: Candidate
    model_uri: str
    run_id: str
    weights: str = ""
    lineage: dict[str, str] = field(default_factory=dict)
    model_id: str | None = None


class _Champions:
    """The champions judged against, each loaded from the registry once and, where its evaluation does
    not pair with a candidate's, re-evaluated once per candidate evaluation identity."""

    def __init__(self, client: MlflowClient, promotion: PromotionConfig, eval_cfg: EvalConfig,
                 reevaluate: Reevaluate | None) -> None:
        self.client, self.promotion, self.eval_cfg, self.reevaluate = client, promotion, eval_cfg, reevaluate
        self.registered: dict[str, Candidate] = {}
        self.comparable: dict[tuple, tuple[Candidate, ChampionEvaluation]] = {}

    def judge(self, candidate: Candidate, version: str | None, sft: Candidate | None) -> Decision:
        """`candidate` judged against champion `version` (None: no champion), evaluated like it."""
        champion, evaluation = self._like(candidate, version) if version else (None, None)
        decision = judge(candidate, self.promotion, self.eval_cfg, champion, sft)
        decision.champion_evaluation = evaluation
        return decision

    def _like(self, candidate: Candidate, version: str) -> tuple[Candidate, ChampionEvaluation | None]:
        if version not in self.registered:
            self.registered[version] = load_candidate(self.client, self.promotion.registered_model_name,
                                                      version)
        champion = self.registered[version]
        if version == candidate.version:  # no comparison with itself is made
            return champion, None
        differences = candidate.differences(champion, self.eval_cfg.splits, self.promotion.regression_metrics)
        if not differences:
            return champion, ChampionEvaluation(version, "registry")
        key = (version, repr(candidate.identity))
        if key not in self.comparable:
            self.comparable[key] = self._reevaluated(champion, candidate.identity, differences)
        return self.comparable[key]

    def _reevaluated(self, champion: Candidate, like: EvalIdentity | None, differences: list[str]
                     ) -> tuple[Candidate, ChampionEvaluation]:
        version = champion.version
        if like is None:
            return champion, ChampionEvaluation(version, "registry", differences,
                                                "the candidate's evaluation has no identity")
        if self.reevaluate is None:
            return champion, ChampionEvaluation(version, "registry", differences, "no re-evaluation here")
        try:
            return self.reevaluate(champion, like), ChampionEvaluation(version, "re-evaluated", differences)
        except ReevaluationError as err:
            return champion, ChampionEvaluation(version, "registry", differences,
                                                f"re-evaluation failed: {err}")


def _outcome(decision: Decision, result: Outcome | None) -> str:
    """The outcome line of a decision; `result` is the alias outcome of the one candidate offered for
    promotion. The gate's verdict comes first: a refused version names the criteria it failed; a newer
    champion, which would have kept it out anyway, is a second, separate reason."""
    if result is None:
        return "passed, not best" if decision.passed else "failed gate"
    if result.status in ("promoted", "unchanged"):
        return "champion (forced)" if result.detail == "forced" else "champion"
    if decision.passed:
        return f"passed, not promoted: {result.detail}"
    refused = f"failed gate: {', '.join(decision.failed_criteria)}"
    return refused if result.status == "refused" else f"{refused}; also {result.detail}"


class _Journal:
    """Writes a run's decision records and tags in the order the module docstring gives."""

    def __init__(self, client: MlflowClient, name: str, **extra) -> None:
        self.client, self.name, self.extra = client, name, extra

    def record(self, decision: Decision, status: str, outcome: str, champion_after: str | None) -> dict:
        record = decision.to_record(
            status=status, outcome=outcome, registered_model=self.name, champion_after=champion_after,
            written_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            promoter=f"{socket.gethostname()}:{os.getpid()}", **self.extra)
        record["record"] = write_record(self.client, self.name, decision.version, record)
        return record

    def pending(self, decision: Decision, current: str | None) -> None:
        self.record(decision, "pending", f"moving champion from {_v(current)} to v{decision.version}",
                    current)

    def tags(self, record: dict, extra: dict[str, str] | None = None) -> None:
        replace_gate_tags(self.client, self.name, record["version"], gate_tags(record, record["record"]))
        for key, value in (extra or {}).items():
            self.client.set_model_version_tag(self.name, record["version"], key, value)
        describe_version(self.client, self.name, record)


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


def register_and_promote(client: MlflowClient, promotion: PromotionConfig, eval_cfg: EvalConfig,
                         registered: list[Registered], store_uri: str,
                         register: Callable[[str, str, str, dict[str, str]], str] | None = None,
                         set_alias: Callable[[str], None] | None = None,
                         reevaluate: Reevaluate | None = None) -> list[dict]:
    """Register every candidate, judge each, promote the best passing one; return the final records.

    `promotion` names the registered model and sets the gate; `eval_cfg` gives the splits and the bootstrap
    the paired comparisons use.
    `store_uri` is the MLflow store `client` talks to (its promotion lock lives there);
    `register(name, model_uri, run_id, tags) -> version` and `set_alias(version)` default to plain MLflow
    (the pipeline passes ZenML's MLflow model registry); `reevaluate` evaluates a champion like a candidate
    (`champion_reevaluator`; None: an incomparable champion fails the comparison instead).
    """
    name = promotion.registered_model_name
    lock = promotion_lock(store_uri, name, promotion.lock_uri)  # a store without a lock fails here
    register = register or (lambda n, uri, run, tags: register_version(client, n, uri, run, tags))
    for r in registered:
        # Identical weights (a rerun on cached students) keep their version instead of piling up copies.
        r.candidate.version = version_with_weights(client, name, r.weights) or register(
            name, r.model_uri, r.run_id,
            {"candidate": r.candidate.name, "alpha": f"{r.candidate.alpha:g}", WEIGHTS_TAG: r.weights,
             **r.lineage})
        if r.model_id:
            link_logged_model(client, r.model_id, name, r.candidate.version)
    champions = _Champions(client, promotion, eval_cfg, reevaluate)
    before = champion_version(client, name)
    sft = next((r.candidate for r in registered if r.candidate.alpha == 0), None)
    decisions = [champions.judge(r.candidate, before, sft) for r in registered]
    best = best_passing(decisions)
    journal = _Journal(client, name)
    # Decisions that move nothing are recorded at once; the best one's record waits for the alias.
    records = {id(d): journal.record(d, "final", _outcome(d, None), before)
               for d in decisions if d is not best}
    if best is not None:
        chosen = next(r.candidate for r in registered if r.candidate.version == best.version)
        result, rejudged = promote_guarded(client, name, best.version, lock,
                                           lambda current: champions.judge(chosen, current, sft),
                                           journal.pending, set_alias)
        final = rejudged or best  # the judgement made under the lock is the one on record
        records[id(best)] = journal.record(final, "final", _outcome(final, result), result.champion_after)
    ordered = [records[id(d)] for d in decisions]
    for record in ordered:
        journal.tags(record)
    describe_model(client, name, describe_gate(promotion, eval_cfg.splits))
    return ordered


def repromote(client: MlflowClient, promotion: PromotionConfig, eval_cfg: EvalConfig, name: str,
              version: str, store_uri: str, force: bool = False, reason: str = "",
              reevaluate: Reevaluate | None = None) -> dict:
    """Re-run the gate for an existing version against today's champion; `force` promotes regardless.

    `name` replaces `promotion.registered_model_name`. Returns the final decision record.
    """
    lock = promotion_lock(store_uri, name, promotion.lock_uri)
    candidate = load_candidate(client, name, version)
    sft = None
    if promotion.kd_not_worse_than_sft and candidate.alpha > 0:
        sft = _sibling_sft(client, name, version)
    champions = _Champions(client, promotion.model_copy(update={"registered_model_name": name}), eval_cfg,
                           reevaluate)
    journal = _Journal(client, name, forced=force, reason=reason)
    result, decision = promote_guarded(client, name, version, lock,
                                       lambda current: champions.judge(candidate, current, sft),
                                       journal.pending, force=force)
    decision = decision or champions.judge(candidate, result.champion_before, sft)
    record = journal.record(decision, "final", _outcome(decision, result), result.champion_after)
    journal.tags(record, forced_tags(reason) if force and result.promoted else None)
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
