"""MLflow side of the registry: log and register students, guard the `champion` alias, keep records.

The alias update is the one place two promoters can race, on one host or on many. `promote_guarded`
serialises it with a lock that lives with the MLflow store (`promotion_lock`: a file beside a sqlite
database or in a file store, a Postgres advisory lock in a Postgres store), so every process that shares
the store shares the lock, whatever its output directory. Inside the lock it re-reads the champion,
re-judges the candidate against it, and moves the alias only if the champion is still the one judged
against (compare-and-set), then reads the alias back: the alias never moves to a version that was not
judged against the champion it replaces, nor back to a version older than the current champion.

Every decision leaves immutable records (`write_record`, one file per record, never overwritten): a
`pending` record before the alias moves, saying what is about to happen, and a `final` one after. Tags are
only an index of the latest final record (`replace_gate_tags`); the records are the history.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import itertools
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from smoothkd.errors import RegistryLockError, one_line
from smoothkd.registry.gate import Candidate, Decision
from smoothkd.registry.identity import IDENTITY_ARTIFACT, EvalIdentity
from smoothkd.registry.serving import WEIGHTS_ARTIFACT, Completion, GenerationSettings, signature

CHAMPION = "champion"
# Per-example scores stored with each model's run, so later gates can pair against that model.
PER_EXAMPLE_ARTIFACT = "evaluation/per_example.json"
MODEL_ARTIFACT = "model"
WEIGHTS_TAG = "weights_sha256"
DECISIONS_DIR = "gate/decisions"
GATE_PREFIX = "gate."
# The tag naming the record the gate.* tags index; written last, so it changes only once the set is whole.
DECISION_TAG = "gate.decision"
LOCK_FILE = "smoothkd-promotion.lock"
# Tries of the compare-and-set when a writer outside the lock keeps moving the alias under a judgement.
CAS_TRIES = 3
# Version tags set at registration that say what a version is, besides `candidate` and `alpha`, with the
# words its description gives them.
LINEAGE_TAGS = {"teacher": "taught by", "distill": "distillation", "data": "data",
                "evaluation": "evaluated on"}
DESCRIPTION_CHARS = 5000  # what MLflow's stores keep of a model or version description
MODEL_DESCRIPTION = (
    "Students distilled by smoothkd: every `distill` run registers its SFT baseline (α = 0) and one KD "
    "student per α as versions, once they are evaluated. A version's description says what it is "
    "(candidate, α, teacher, data and evaluation) and how the promotion gate judged it per split; its "
    "`gate.*` tags index its latest decision record, kept with every earlier one under `gate/decisions/` "
    "in the version's run.")


def pip_requirements() -> list[str]:
    """Explicit requirements: MLflow's inference would import torchvision, which is not installed here.
    Besides torch and transformers, what the served model's own code (smoothkd, carried with it) imports."""
    from importlib.metadata import version

    packages = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "pydantic", "pyyaml",
                "tqdm")
    return [f"mlflow=={mlflow.__version__}", *(f"{p}=={version(p).split('+')[0]}" for p in packages)]


def log_student_model(model_path: str | Path, settings: GenerationSettings) -> ModelInfo:
    """Log a saved model + tokenizer to the active MLflow run as a `Completion` model (an MLflow
    LoggedModel) that generates as the evaluation does with `settings`; return its ModelInfo."""
    import smoothkd

    return mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT, python_model=Completion(settings), artifacts={WEIGHTS_ARTIFACT: str(model_path)},
        code_paths=[str(Path(smoothkd.__file__).parent)], signature=signature(settings),
        pip_requirements=pip_requirements())


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create registered model `name` unless it exists; a concurrent promoter creating it first is fine."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name)
        except MlflowException as err:  # another promoter created it between the two calls
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def register_version(client: MlflowClient, name: str, model_uri: str, run_id: str,
                     tags: dict[str, str] | None = None) -> str:
    """A new version of registered model `name` (created on first use) from a logged model."""
    ensure_registered_model(client, name)
    return str(client.create_model_version(name, model_uri, run_id=run_id, tags=tags or {}).version)


def logged_model_id(model_uri: str) -> str | None:
    """The LoggedModel id a `models:/<model_id>` URI names (what MLflow 3's log_model returns and a version
    registered from it keeps as its source), else None (a registry reference, a path)."""
    rest = model_uri.removeprefix("models:/")
    return rest if rest != model_uri and rest.startswith("m-") and not {"/", "@"} & set(rest) else None


def link_logged_model(client: MlflowClient, model_id: str, name: str, version: str) -> None:
    """Name version `version` of `name` on its LoggedModel (the tag `mlflow.register_model` keeps), so the
    model's page lists the registered versions made from it, however they were registered. (The version's
    source, `models:/<model_id>`, names the model the other way; sqlite and Postgres registries keep no
    model id on a version.)"""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    listed = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    entry = {"name": name, "version": version}
    if entry not in listed:
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*listed, entry])})


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
        identity = _run_identity(client, mv.run_id, tmp)
    alpha = float(run.data.params.get("alpha", mv.tags.get("alpha", 0.0)))
    candidate_name = mv.tags.get("candidate", run.data.tags.get("mlflow.runName", f"v{version}"))
    return Candidate(candidate_name, alpha, dict(run.data.metrics), per_example, version, identity)


def _run_identity(client: MlflowClient, run_id: str, tmp: str) -> EvalIdentity | None:
    """The evaluation identity logged with a run; None for runs evaluated before identities were kept."""
    folder, _, file = IDENTITY_ARTIFACT.rpartition("/")
    if file not in {Path(a.path).name for a in client.list_artifacts(run_id, folder)}:
        return None
    path = Path(client.download_artifacts(run_id, IDENTITY_ARTIFACT, tmp))
    return EvalIdentity.from_dict(json.loads(path.read_text(encoding="utf-8")))


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as err:
        raise RegistryLockError(f"promotion lock {path}: {err.strerror or err}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def advisory_key(name: str) -> int:
    """The Postgres advisory-lock key (signed 64 bit) for promotions of registered model `name`."""
    return int.from_bytes(hashlib.sha256(f"smoothkd-promotion:{name}".encode()).digest()[:8], "big",
                          signed=True)


@contextmanager
def _postgres_lock(uri: str, name: str) -> Iterator[None]:
    """A session advisory lock on the store's database: the server drops it if the promoter dies."""
    import sqlalchemy

    shown = sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
    try:
        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool,
                                          isolation_level="AUTOCOMMIT")
        connection = engine.connect()
    except ModuleNotFoundError as err:
        raise RegistryLockError(f"promotion lock on {shown}: no Postgres driver ({err.name}); install "
                                f"psycopg2-binary") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        raise RegistryLockError(f"promotion lock on {shown}: {one_line(err)}") from None
    key = advisory_key(name)
    try:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        connection.close()
        engine.dispose()


def promotion_lock(store_uri: str, name: str, lock_uri: str | None = None) -> AbstractContextManager[None]:
    """The lock every promoter of `name` on the MLflow store `store_uri` takes, living with the store.

    `sqlite:///path/db` locks a file beside the database (every process that can open it can take it);
    a file store (`file://` or a path) a file in the store's directory; `postgresql://` takes a Postgres
    advisory lock in that database. A tracking server (`http(s)://`) hides its database: `lock_uri`
    (`promotion.lock_uri`) names a lock of the kinds above that every promoter reaches, e.g. the server's
    Postgres. Raises RegistryLockError, one line, when the store has no lock to offer.
    """
    uri = lock_uri or store_uri
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme == "sqlite":
        database = uri.split("://", 1)[1].removeprefix("/").split("?")[0]
        if not database or database == ":memory:":
            raise RegistryLockError(f"promotion lock: {uri} is an in-memory sqlite store, shared by no one")
        return _file_lock(Path(unquote(database)).with_name(f"{Path(database).name}.{LOCK_FILE}"))
    if scheme in ("", "file"):
        return _file_lock(Path(unquote(parts.path if scheme else uri)) / LOCK_FILE)
    if scheme in ("postgresql", "postgres"):
        return _postgres_lock(uri.replace("postgres://", "postgresql://", 1), name)
    where = "promotion.lock_uri" if lock_uri else f"MLflow store {parts.scheme}://{parts.hostname or ''}"
    raise RegistryLockError(f"{where}: no promotion lock for '{parts.scheme}' URIs; set promotion.lock_uri "
                            f"to the store's Postgres database (postgresql://...) or a shared sqlite:// or "
                            f"file:// path that every promoter reaches")


@dataclass
class Outcome:
    """What happened to the alias for one candidate: `promoted`, `refused`, `superseded`, `unchanged`,
    `lost` (another writer moved the alias right after this one) or `conflict` (it kept moving)."""

    status: str
    version: str
    champion_before: str | None
    detail: str = ""
    champion_after: str | None = None

    @property
    def promoted(self) -> bool:
        return self.status == "promoted"


def promote_guarded(client: MlflowClient, name: str, version: str, lock: AbstractContextManager[None],
                    rejudge: Callable[[str | None], Decision],
                    before_move: Callable[[Decision, str | None], None],
                    set_alias: Callable[[str], None] | None = None,
                    force: bool = False) -> tuple[Outcome, Decision | None]:
    """Move `champion` to `version` if it passes against whatever is champion now (`force`: regardless).

    Under `lock` (`promotion_lock`): `rejudge(current_champion_version)` recomputes the decision;
    `before_move(decision, current)` writes the pending record; `set_alias(version)` defaults to MLflow's
    alias update (the pipeline passes ZenML's model registry). Returns the outcome and the decision made
    under the lock (None when no judgement was needed).
    """
    move = set_alias or (lambda v: client.set_registered_model_alias(name, CHAMPION, v))
    with lock:
        decision = None
        for _ in range(CAS_TRIES):
            current = champion_version(client, name)
            if current == version and not force:
                return Outcome("unchanged", version, current, "already champion", current), decision
            if current is not None and int(current) > int(version) and not force:
                return (Outcome("superseded", version, current, f"newer champion v{current}", current),
                        decision)
            decision = rejudge(current)
            if not decision.passed and not force:
                return (Outcome("refused", version, current, ", ".join(decision.failed_criteria), current),
                        decision)
            # Compare-and-set: a writer that does not take this lock (a manual alias move, another tool) may
            # have moved the alias while the judgement ran; then judge again against the new champion.
            if champion_version(client, name) != current:
                continue
            before_move(decision, current)
            move(version)
            after = champion_version(client, name)
            if after != version:
                return (Outcome("lost", version, current, f"alias moved on to v{after} by another writer",
                                after), decision)
            return Outcome("promoted", version, current, "forced" if force else "", version), decision
        after = champion_version(client, name)
        return Outcome("conflict", version, after, f"champion changed {CAS_TRIES} times under the judgement",
                       after), decision


def write_record(client: MlflowClient, name: str, version: str, record: dict) -> str:
    """Write one decision record into the version's run, under a name no other record has; return its path.

    `record` carries `decision_id` and `status` (`pending` or `final`): the pair names the file, so a
    record is never overwritten, and a pending record without its final one marks an interrupted decision.
    """
    path = f"{DECISIONS_DIR}/{record['decision_id']}.{record['status']}.json"
    client.log_dict(client.get_model_version(name, version).run_id, record, path)
    return path


def gate_tags(record: dict, record_path: str) -> dict[str, str]:
    """The gate.* tags that index one final decision record."""
    evaluation = record.get("champion_evaluation") or {}
    tags = {"gate.passed": str(record["passed"]).lower(), "gate.outcome": record.get("outcome", ""),
            "gate.primary": primary_line(record),
            DECISION_TAG: record_path}
    if evaluation.get("differences"):  # the champion's registry evaluation did not pair: say what was used
        why = f"{evaluation['source']} ({'; '.join(evaluation['differences'])})"
        if evaluation["error"]:
            why = f"{why}: {evaluation['error']}"
        tags["gate.champion_evaluation"] = why[:5000]
    for c in record["criteria"]:
        verdict = f"{c['verdict']}: {_number(c['value'])} (threshold {c['threshold']})"
        tags[f"gate.{c['name']}"[:250]] = verdict[:5000]
    return tags


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def figure(value: float | None) -> str:
    """A value to read: two decimals, three below 1 (a calibration error of 0.035 is not 0.04)."""
    return _number(value, 2 if value is None or abs(value) >= 1 else 3)


def primary_line(record: dict) -> str:
    """`factual_consistency (mean over cnndm, xsum) = 23.460`: what a decision ranks candidates by."""
    over = record.get("primary_splits")
    how = f" (mean over {', '.join(over)})" if over else ""
    return f"{record['primary_metric']}{how} = {_number(record['primary_value'])}"


def replace_gate_tags(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    """Make `tags` the version's whole gate.* set: stale gate.* tags removed first, DECISION_TAG set last.

    MLflow sets tags one call at a time; this order keeps a reader from mistaking a half-replaced set for
    a whole one: DECISION_TAG names the record of the set only once that set is complete.
    """
    existing = client.get_model_version(name, version).tags
    for key in existing:
        if key.startswith(GATE_PREFIX) and key not in tags:
            client.delete_model_version_tag(name, version, key)
    for key, value in sorted(tags.items(), key=lambda kv: kv[0] == DECISION_TAG):
        if existing.get(key) != value or key == DECISION_TAG:
            client.set_model_version_tag(name, version, key, value)


def version_description(tags: dict[str, str], record: dict) -> str:
    """A version's description (markdown) from its registration tags and a final decision record: what it
    is (candidate, α and the LINEAGE_TAGS: teacher, data, evaluation) and the gate's outcome per split."""
    alpha = float(tags.get("alpha", "0"))
    kind = "the SFT baseline (α = 0, no soft labels)" if alpha == 0 else f"a KD student, α = {alpha:g}"
    lines = [f"**{tags.get('candidate', record['candidate'])}**: {kind}.", ""]
    lines += [f"- {label}: {tags[key]}" for key, label in LINEAGE_TAGS.items() if tags.get(key)]
    judged = f"champion v{record['champion_judged']}" if record.get("champion_judged") else "no champion"
    lines += ["", f"**Gate: {record['outcome']}**, judged against {judged}, ranked by {primary_line(record)} "
              f"(decision {record['decision_id']}):", ""]
    by_split: dict[str, list[dict]] = {}
    for c in record["criteria"]:
        by_split.setdefault(c["name"].partition("/")[0], []).append(c)
    for split, criteria in by_split.items():
        verdict = "pass" if all(c["verdict"] == "pass" for c in criteria) else "fail"
        judged_on = [f"{c['name'].partition('/')[2]}: {figure(c['value'])} ({c['verdict']}, threshold "
                     f"{'n/a' if c['threshold'] is None else format(c['threshold'], 'g')})" for c in criteria]
        lines.append(f"- {split}: **{verdict}**: " + "; ".join(judged_on))
    return "\n".join(lines)[:DESCRIPTION_CHARS]


def describe_version(client: MlflowClient, name: str, record: dict) -> None:
    """Write a version's description from its tags and its latest final decision `record`."""
    tags = client.get_model_version(name, record["version"]).tags
    client.update_model_version(name, record["version"], description=version_description(tags, record))


def describe_model(client: MlflowClient, name: str, gate: str) -> None:
    """Write the registered model's description, what its versions are and how `gate` (`describe_gate`)
    picks the champion, when it says something else."""
    text = f"{MODEL_DESCRIPTION}\n\n{gate}"[:DESCRIPTION_CHARS]
    if client.get_registered_model(name).description != text:
        client.update_registered_model(name, description=text)


def forced_tags(reason: str) -> dict[str, str]:
    """Who forced a promotion, when and why."""
    return {"promotion.forced_by": getpass.getuser(), "promotion.reason": reason,
            "promotion.forced_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def read_decisions(client: MlflowClient, name: str, version: str) -> list[dict]:
    """Every decision recorded for a version, oldest first: its final record, or its pending one with
    status `interrupted` when the decision never completed (the alias tells whether it had moved)."""
    run_id = client.get_model_version(name, version).run_id
    records: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for artifact in client.list_artifacts(run_id, DECISIONS_DIR):
            record = json.loads(Path(client.download_artifacts(run_id, artifact.path, tmp))
                                .read_text(encoding="utf-8"))
            if record["version"] != version or record["registered_model"] != name:
                continue
            if record["status"] == "final" or record["decision_id"] not in records:
                records[record["decision_id"]] = {**record, "record": artifact.path}
    return [r if r["status"] == "final" else {**r, "status": "interrupted"}
            for _, r in sorted(records.items())]


@dataclass
class VersionRow:
    """One registered version as `smoothkd models` lists it: aliases, what it is, the gate's outcome, its
    primary value (`primary_line`), the criteria it failed (`name: value (threshold t)`) and its run."""

    name: str
    version: str
    aliases: list[str]
    candidate: str
    gate: str
    primary: str
    failed: list[str]
    forced_by: str
    created: str
    run_id: str


def failed_criteria(tags: dict[str, str]) -> list[str]:
    """`name: value (threshold t)` for each criterion a version's gate.* tags (`gate_tags`) mark failed."""
    return [f"{key.removeprefix(GATE_PREFIX)}: {value.removeprefix('fail: ')}"
            for key, value in sorted(tags.items())
            if key.startswith(GATE_PREFIX) and value.startswith("fail: ")]


def list_versions(client: MlflowClient, name: str | None = None) -> list[VersionRow]:
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
            tags = mv.tags
            rows.append(VersionRow(
                model, version, aliases.get(version, []), tags.get("candidate", ""),
                tags.get("gate.outcome") or tags.get("gate.passed", ""), tags.get("gate.primary", ""),
                failed_criteria(tags), tags.get("promotion.forced_by", ""),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mv.creation_timestamp / 1000)), mv.run_id))
    return sorted(rows, key=lambda r: (r.name, -int(r.version)))


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def version_lines(rows: list[VersionRow], width: int = 80) -> list[str]:
    """`smoothkd models` as lines of at most `width` characters: per registered model a line naming it and
    its primary metric, then per version one line (version, created, candidate, primary value, aliases,
    gate outcome) and one more per failed criterion. What a line cuts short, `--json` gives whole."""
    lines: list[str] = []
    for model, group in itertools.groupby(rows, key=lambda r: r.name):
        versions = list(group)
        metric = next((r.primary.rpartition(" = ")[0] for r in versions if r.primary), "")
        lines.append(_cut(model + (f": primary {metric}" if metric else ""), width))
        for row in versions:
            value = row.primary.rpartition(" = ")[2] or "-"
            aliases = "".join(f"@{a}  " for a in row.aliases)
            lines.append(_cut(f"  v{row.version:<4} {row.created[:16]}  {_cut(row.candidate, 10):<10} "
                              f"{value:>8}  {aliases}{row.gate or 'not judged'}", width))
            lines += [_cut(f"         fail {criterion}", width) for criterion in row.failed]
    return lines
