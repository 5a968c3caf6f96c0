"""Registration, the promotion gate and the guarded `champion` alias, on a real MLflow sqlite store."""

import json
import multiprocessing
import os
import random
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from conftest import corpus_and_tokenizer, free_port, http_json, stop_process_group
from typer.testing import CliRunner

from smoothkd.cli import app
from smoothkd.config import EvalConfig, PromotionConfig, RunConfig, SplitGate, TinyModelConfig
from smoothkd.data.prompts import eval_prompt
from smoothkd.evaluation.generation import generate
from smoothkd.io import read_jsonl
from smoothkd.modeling.models import build_tiny_llama, load_causal_lm
from smoothkd.modeling.tokenizer import load_tokenizer
from smoothkd.registry.gate import Candidate, best_passing, judge
from smoothkd.registry.identity import IDENTITY_ARTIFACT, EvalIdentity
from smoothkd.registry.promote import Registered, register_and_promote
from smoothkd.registry.serving import GenerationSettings
from smoothkd.registry.store import (
    PER_EXAMPLE_ARTIFACT,
    champion_version,
    list_versions,
    log_student_model,
    logged_model_id,
    read_decisions,
)
from smoothkd.tracking import ensure_experiment

EVAL = EvalConfig(splits=["cnndm"], bootstrap_samples=500)
FLOORS = PromotionConfig(splits={"cnndm": SplitGate(min_factual_consistency=80, min_rougeLsum=20)},
                         max_regression=2.0)
IDS = [f"cnndm-{i:03d}" for i in range(60)]
SETTINGS = GenerationSettings(max_new_tokens=24, max_prompt_length=512, batch_size=4)
# One evaluation identity shared by the hand-made candidates: same rows, scorers, settings and code.
IDENTITY = EvalIdentity({"cnndm": "rows"}, {"factual_consistency": "fact", "rougeLsum": "rouge"}, "gen",
                        "code")


def candidate(name, fc, rouge=30.0, alpha=0.1, spread=4.0):
    """A candidate whose per-example factual consistency averages `fc` (alternating ± spread)."""
    values = [fc + (spread if i % 2 else -spread) for i in range(len(IDS))]
    return Candidate(name, alpha, {"cnndm/factual_consistency": fc, "cnndm/rougeLsum": rouge},
                     {"cnndm": {"id": IDS, "factual_consistency": values, "rougeLsum": [rouge] * len(IDS)}},
                     identity=IDENTITY)


def test_gate_floors_regression_and_best_choice():
    low, high = candidate("kd_a0.1", 70), candidate("kd_a1", 90)
    low_d, high_d = judge(low, FLOORS, EVAL), judge(high, FLOORS, EVAL)
    assert not low_d.passed and low_d.failed_criteria == ["cnndm/factual_consistency"]
    assert high_d.passed and [c.verdict for c in high_d.criteria] == ["pass", "pass", "pass"]
    # No word shared with any reference: refused whatever else it scores, floors configured or not.
    silent = judge(candidate("kd_silent", 100, rouge=0.0), PromotionConfig(), EVAL)
    assert silent.failed_criteria == ["cnndm/rougeLsum above 0"]
    assert best_passing([low_d, high_d]) is high_d
    champion = candidate("sft", 90, alpha=0)
    champion.version = "1"
    # Equal to the champion: passes (the CI straddles zero). Clearly worse by more than 2 points: refused.
    assert judge(candidate("kd", 90), FLOORS, EVAL, champion=champion).passed
    worse = judge(candidate("kd", 85), FLOORS, EVAL, champion=champion)
    assert worse.failed_criteria == ["cnndm/factual_consistency vs champion v1"]
    regression = next(c for c in worse.criteria if c.verdict == "fail")
    assert regression.value == pytest.approx(-5.0) and regression.threshold == -2.0
    # Optional criteria: KD not worse than SFT, general-capability floor.
    strict = FLOORS.model_copy(update={"kd_not_worse_than_sft": True, "max_general_nll": 2.0})
    kd = candidate("kd", 84)
    kd.metrics["general/nll"] = 2.5
    decision = judge(kd, strict, EVAL, sft=candidate("sft", 90, alpha=0))
    assert set(decision.failed_criteria) == {"cnndm/factual_consistency vs sft", "general/nll"}


def test_scores_of_other_rows_or_scorers_are_never_paired_by_id():
    """Same ids, same values: still refused when the rows, the metric's scorer or the code differ."""
    champion = candidate("sft", 90, alpha=0)
    champion.version = "1"
    for change, expected in [({"examples": {"cnndm": "other rows"}}, "examples (cnndm)"),
                             ({"scorers": {**IDENTITY.scorers, "factual_consistency": "nli"}},
                              "scorer (factual_consistency)"),
                             ({"code": "changed"}, "scoring code")]:
        champion.identity = EvalIdentity(**{**IDENTITY.to_dict(), **change})
        decision = judge(candidate("kd", 90), FLOORS, EVAL, champion=champion)
        failed = {c.name: c.detail for c in decision.criteria if c.verdict == "fail"}
        assert expected in failed["cnndm/factual_consistency vs champion v1"], failed
        # rougeLsum does not read the consistency scorer: it still pairs when only that differs.
        assert ("cnndm/rougeLsum vs champion v1" in failed) == (expected != "scorer (factual_consistency)")
    champion.identity = None  # evaluated before identities were recorded
    assert "no recorded evaluation identity" in judge(candidate("kd", 90), FLOORS, EVAL,
                                                      champion=champion).criteria[-1].detail


def test_a_students_role_and_its_label_in_tables_and_the_registry_are_one_name():
    from smoothkd.artifacts import EvaluatedModel, model_label, student_role
    from smoothkd.stages import student_name

    for alpha, label in ((0.0, "sft"), (0.1, "kd_a0.1"), (1.0, "kd_a1")):
        role = student_role(student_name(alpha))
        assert role == f"student_{label}" and model_label(role) == label
        assert Candidate.from_summary(EvaluatedModel("m", role, 1, alpha=alpha)).name == label
    assert model_label("teacher") == "teacher"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    _, tokenizer = corpus_and_tokenizer(root, seed=3, n_instruction=120, vocab_size=400)
    shape = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model_dir = build_tiny_llama(tokenizer, shape, root / "model", seed=1)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ensure_experiment(uri, "registry-test", root / "artifacts")
    return {"root": root, "uri": uri, "model_dir": model_dir, "corpus": root / "corpus"}


def _log_candidate(cand: Candidate) -> None:
    """What the gate reads back from a candidate's run (`load_candidate`), logged to the active run."""
    mlflow.log_params({"alpha": cand.alpha})
    mlflow.log_metrics({k.replace("@", "_"): v for k, v in cand.metrics.items()})
    mlflow.log_dict(cand.per_example, PER_EXAMPLE_ARTIFACT)
    if cand.identity is not None:
        mlflow.log_dict(cand.identity.to_dict(), IDENTITY_ARTIFACT)


def _logged(world, cand: Candidate, model_dir=None) -> Registered:
    mlflow.set_tracking_uri(world["uri"])
    mlflow.set_experiment("registry-test")
    with mlflow.start_run(run_name=cand.name) as run:
        _log_candidate(cand)
        logged = log_student_model(model_dir or world["model_dir"], SETTINGS)
    return Registered(cand, logged.model_uri, run.info.run_id, model_id=logged.model_id)


def _cfg(world, name, **promotion) -> RunConfig:
    return RunConfig(output_dir=str(world["root"]), eval=EVAL,
                     promotion=FLOORS.model_copy(update={"registered_model_name": name, **promotion}),
                     tracking={"tracking_uri": world["uri"], "experiment_name": "registry-test"})


def test_register_gate_promote_refuse_and_force(world, monkeypatch):
    client = mlflow.MlflowClient(world["uri"])
    cfg = _cfg(world, "student")
    first = [_logged(world, candidate("sft", 70, alpha=0)), _logged(world, candidate("kd_a0.1", 88))]
    first[1].lineage = {"teacher": "teachers/abc (weights 0123)", "data": "dataset 9f8e"}
    records = register_and_promote(client, cfg.promotion, cfg.eval, first, world["uri"])
    assert [r["version"] for r in records] == ["1", "2"]
    assert [r["outcome"] for r in records] == ["failed gate", "champion"]
    assert champion_version(client, "student") == "2"
    version = client.get_model_version("student", "1")
    assert version.tags["gate.passed"] == "false" and version.tags["candidate"] == "sft"
    assert version.tags["gate.cnndm/factual_consistency"].startswith("fail: 70.000")
    # Versions and the model describe themselves; gate.primary names how the primary value aggregates.
    assert version.tags["gate.primary"] == "factual_consistency (mean over cnndm) = 70.000"
    assert version.description.startswith("**sft**: the SFT baseline (α = 0, no soft labels).")
    assert "**Gate: failed gate**, judged against no champion" in version.description
    assert ("- cnndm: **fail**: factual_consistency: 70.00 (fail, threshold 80); rougeLsum: 30.00 (pass, "
            "threshold 20); rougeLsum above 0: 30.00 (pass, threshold 0)") in version.description
    kd = client.get_model_version("student", "2").description
    assert kd.startswith("**kd_a0.1**: a KD student, α = 0.1.") and "- cnndm: **pass**: " in kd
    assert "- taught by: teachers/abc (weights 0123)\n- data: dataset 9f8e" in kd
    model = client.get_registered_model("student").description
    assert "highest `factual_consistency` (mean over cnndm)" in model
    assert "cnndm factual consistency ≥ 80 %" in model
    record = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/{version.tags['gate.decision']}")
    assert {**record, "record": version.tags["gate.decision"]} == records[0] and record["status"] == "final"
    assert record["criteria"][0] == {"name": "cnndm/factual_consistency", "value": 70.0, "threshold": 80.0,
                                     "verdict": "fail", "detail": ">="}
    # A later candidate above the floors but clearly worse than the champion is refused.
    records = register_and_promote(client, cfg.promotion, cfg.eval, [_logged(world, candidate("kd_a1", 82))],
                                   world["uri"])
    assert records[0]["outcome"] == "failed gate" and champion_version(client, "student") == "2"
    assert "cnndm/factual_consistency vs champion v2" in [c["name"] for c in records[0]["criteria"]
                                                          if c["verdict"] == "fail"]
    # The CLI shows it, re-runs the gate (still refused), and --force promotes with who/why on record,
    # reaching the store through --tracking-uri alone (nothing process-wide points there).
    mlflow.set_tracking_uri(f"sqlite:///{world['root'] / 'elsewhere.db'}")
    cli_args = ["--tracking-uri", world["uri"]]
    config = world["root"] / "student.yaml"  # the gate judged with above (its output_dir takes the log)
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    promote_args = [*cli_args, "--config", str(config)]
    shown = CliRunner().invoke(app, ["models", "student", "--json", *cli_args])
    assert shown.exit_code == 0, shown.output
    listed = {row["version"]: row for row in json.loads(shown.output)}
    assert listed["2"]["aliases"] == ["champion"] and listed["3"]["gate"] == "failed gate"
    refused = CliRunner().invoke(app, ["promote", "student", "3", *promote_args])
    assert refused.exit_code == 1
    last = refused.output.splitlines()[-1]
    assert last == "student v3: failed gate: cnndm/factual_consistency vs champion v2"
    forced = CliRunner().invoke(app, ["promote", "student", "3", "--force", "--reason", "hotfix",
                                      *promote_args])
    assert forced.exit_code == 0, forced.output
    assert champion_version(client, "student") == "3"
    tags = client.get_model_version("student", "3").tags
    assert tags["promotion.reason"] == "hotfix" and tags["promotion.forced_by"]
    assert [r.version for r in list_versions(client, "student")] == ["3", "2", "1"]
    # v1 judged against today's champion: the gate's verdict and the criteria it failed come first; that v3
    # is newer is a second reason. The registry reads show no download bars (a fresh process has none set).
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    old = CliRunner().invoke(app, ["promote", "student", "1", *promote_args])
    assert old.exit_code == 1
    assert old.output.splitlines()[-1] == ("student v1: failed gate: cnndm/factual_consistency, "
                                           "cnndm/factual_consistency vs champion v3; also newer champion v3")
    assert "Downloading artifacts" not in old.output and "log: " in old.output
    unknown = CliRunner().invoke(app, ["promote", "student", "99", *promote_args])
    assert unknown.exit_code == 2 and "student v99" in unknown.output and "Traceback" not in unknown.output


def test_an_overconfident_student_is_refused_on_record_and_in_the_listing(world):
    """`promotion.max_overconfidence`: the KD student ranks first on the primary metric, but its held-out
    overconfidence is above the ceiling, so the SFT baseline becomes champion."""
    client, name = mlflow.MlflowClient(world["uri"]), "calibrated"
    cfg = _cfg(world, name, max_ece=0.05, max_overconfidence=0.03)
    sft, kd = candidate("sft", 86, alpha=0), candidate("kd_a0.1", 92)
    sft.metrics |= {"general/ece": 0.02, "general/overconfidence": 0.01}
    kd.metrics |= {"general/ece": 0.04, "general/overconfidence": 0.035}
    records = register_and_promote(client, cfg.promotion, cfg.eval, [_logged(world, sft), _logged(world, kd)],
                                   world["uri"])
    assert [r["outcome"] for r in records] == ["champion", "failed gate"]
    refused = [c for c in records[1]["criteria"] if c["verdict"] == "fail"]
    assert refused == [{"name": "general/overconfidence", "value": 0.035, "threshold": 0.03,
                        "verdict": "fail", "detail": "<="}]
    version = client.get_model_version(name, "2")
    assert version.tags["gate.general/overconfidence"] == "fail: 0.035 (threshold 0.03)"
    assert ("- general: **fail**: ece: 0.040 (pass, threshold 0.05); overconfidence: 0.035 (fail, threshold "
            "0.03)") in version.description
    assert "held-out overconfidence (confidence − accuracy) ≤ 0.03" in \
        client.get_registered_model(name).description
    # Listed at 80 columns: one line per version, the failed criterion under it; --json keeps every field.
    args = ["models", name, "--tracking-uri", world["uri"]]
    shown = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert max(len(line) for line in lines) <= 80 and len(lines) == 4
    assert lines[0] == f"{name}: primary factual_consistency (mean over cnndm)"
    assert lines[1].startswith("  v2 ") and lines[1].endswith("kd_a0.1      92.000  failed gate")
    assert lines[2] == "         fail general/overconfidence: 0.035 (threshold 0.03)"
    assert lines[3].startswith("  v1 ") and lines[3].endswith("sft          86.000  @champion  champion")
    narrow = CliRunner().invoke(app, args, env={"COLUMNS": "40"}).output.splitlines()
    assert max(len(line) for line in narrow) == 40 and narrow[2].endswith("…")
    listed = json.loads(CliRunner().invoke(app, [*args, "--json"]).output)
    assert listed[0]["failed"] == ["general/overconfidence: 0.035 (threshold 0.03)"]
    assert listed[0]["primary"] == "factual_consistency (mean over cnndm) = 92.000"


def test_champion_loads_back_and_answers_as_the_evaluation_generates(world, monkeypatch):
    """The logged model (a LoggedModel with its own code) loads from the registry with the student's exact
    weights and answers a prompt with the completion the evaluation's greedy generation gives."""
    # Loading puts the model's copy of the smoothkd package first on sys.path; a process spawned later by
    # this session inherits that path and would import the copy (no infra/ beside it) instead of the repo.
    monkeypatch.setattr(sys, "path", list(sys.path))
    client = mlflow.MlflowClient(world["uri"])
    cfg = _cfg(world, "loadback")
    records = register_and_promote(client, cfg.promotion, cfg.eval,
                                   [_logged(world, candidate("kd_a0.1", 90))], world["uri"])
    assert records[0]["outcome"] == "champion"
    articles = [row["article"] for row in read_jsonl(world["corpus"] / "cnndm.jsonl")[:3]]
    prompts = [eval_prompt("cnndm", article) for article in articles]
    tokenizer = load_tokenizer(str(world["model_dir"]))
    student = load_causal_lm(world["model_dir"])
    before = generate(student, tokenizer, prompts, max_new_tokens=24, progress=False)
    mlflow.set_tracking_uri(world["uri"])
    loaded = mlflow.pyfunc.load_model("models:/loadback@champion")
    served = loaded.unwrap_python_model().model
    assert all(torch.equal(a, b) for a, b in zip(served.state_dict().values(), student.state_dict().values(),
                                                 strict=True))
    after = loaded.predict(prompts)
    assert after == before and all(before) and not any("\n" in text for text in after)
    short = generate(student, tokenizer, prompts[:1], max_new_tokens=3, progress=False)
    assert loaded.predict(prompts[:1], params={"max_new_tokens": 3}) == short != before[:1]


def test_a_registered_student_is_a_logged_model_with_its_evaluation_metrics(world):
    """MLflow 3: the version comes from the student's LoggedModel, whose page shows the metrics the gate
    judged (logged by the evaluation after the model, as `steps/evaluate.py` does) and the version."""
    from smoothkd.tracking import log_metrics

    client, name = mlflow.MlflowClient(world["uri"]), "logged"
    registered = _logged(world, candidate("kd_a0.1", 90))
    evaluation = {"cnndm/factual_consistency": 90.0, "cnndm/rougeLsum": 30.0, "general/ece": 0.02}
    log_metrics(evaluation, registered.run_id, registered.model_id)
    [record] = register_and_promote(client, _cfg(world, name).promotion, EVAL, [registered], world["uri"])
    model = client.get_logged_model(registered.model_id)
    assert {m.key: m.value for m in model.metrics} == evaluation
    assert model.source_run_id == registered.run_id
    source = client.get_model_version(name, record["version"]).source
    assert logged_model_id(source) == registered.model_id and source == f"models:/{registered.model_id}"
    assert logged_model_id(f"models:/{name}/1") is None and logged_model_id("models:/m-x@champion") is None
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": name, "version": record["version"]}]


def test_serve_answers_with_the_champions_completion_only(world, tmp_path):
    """`smoothkd serve` (MLflow's scoring server on loopback, started with the venv off PATH) answers a
    prompt with the completion the evaluation's generation gives: no prompt, no newline."""
    import subprocess
    import sys

    name, root = "served", Path(__file__).resolve().parents[1]
    cfg = _cfg(world, name)
    register_and_promote(mlflow.MlflowClient(world["uri"]), cfg.promotion, cfg.eval,
                         [_logged(world, candidate("kd_a0.1", 90))], world["uri"])
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    missing = CliRunner().invoke(app, ["serve", "--config", str(config), "--model", f"models:/{name}@nope"])
    assert missing.exit_code == 2 and f"models:/{name}@nope: not in the registry" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    prompt = eval_prompt("cnndm", read_jsonl(world["corpus"] / "cnndm.jsonl")[1]["article"])
    student, tokenizer = load_causal_lm(world["model_dir"]), load_tokenizer(str(world["model_dir"]))
    expected = generate(student, tokenizer, [prompt], max_new_tokens=SETTINGS.max_new_tokens, progress=False)
    port, log_file = free_port(), tmp_path / "serve.log"
    env = {**os.environ, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    with log_file.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "smoothkd.cli", "serve", "--config", str(config),
                                 "--port", str(port)], env=env, cwd=tmp_path, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    http_json(port, "ping", raw=True)
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, log_file.read_text()
                    time.sleep(1)
            [completion] = http_json(port, "invocations", {"inputs": [prompt]}, timeout=60)["predictions"]
            assert completion == expected[0] and completion and "\n" not in completion
            assert not completion.startswith(prompt[:20])
            short = http_json(port, "invocations", {"inputs": [prompt], "params": {"max_new_tokens": 2}},
                              timeout=60)
            assert short["predictions"] == generate(student, tokenizer, [prompt], max_new_tokens=2,
                                                    progress=False)
        finally:
            stop_process_group(proc)
    served_log = log_file.read_text()
    assert "serving models:/served@champion (served v1)" in served_log
    assert "Downloading artifacts" not in served_log  # a log file gets no progress-bar frames


def _use_zenml_store(zenml_dir) -> None:
    """Point this (spawned, ZenML not yet imported) process at the ZenML store `zenml_dir`; the repository
    is its source root (a spawned process's main module has no file for ZenML to find it by)."""
    os.environ["ZENML_CONFIG_PATH"] = str(zenml_dir)
    os.environ["ZENML_CUSTOM_SOURCE_ROOT"] = str(Path(__file__).resolve().parents[1])


def _promoter(barrier, uri, output_dir, name, seed, rounds, model_uri, zenml_dir=None):
    """One promoter process with its own output directory: each round it logs and offers one candidate.

    With `zenml_dir` (a ZenML store whose active stack is the local one on `uri`) it registers and moves the
    alias through the stack's MLflow model registry, as the pipeline's registry step does; else plain MLflow.
    """
    register = set_alias = None
    if zenml_dir is not None:
        _use_zenml_store(zenml_dir)
        from zenml.client import Client

        from steps.registry import registry_hooks

        register, set_alias = registry_hooks(Client().active_stack.model_registry, name, uri,
                                             f"race-{seed}", "distill")
    client = mlflow.MlflowClient(uri)
    cfg = RunConfig(output_dir=str(output_dir), eval=EVAL,
                    promotion=FLOORS.model_copy(update={"registered_model_name": name}),
                    tracking={"tracking_uri": uri, "experiment_name": "registry-test"})
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("registry-test")
    rng = random.Random(seed)
    try:
        for r in range(rounds):
            cand = candidate(f"p{seed}-r{r}", rng.choice([84, 88, 92, 96]))
            with mlflow.start_run(run_name=cand.name) as run:
                mlflow.log_dict(cand.per_example, PER_EXAMPLE_ARTIFACT)
                mlflow.log_dict(cand.identity.to_dict(), IDENTITY_ARTIFACT)
            barrier.wait()
            register_and_promote(client, cfg.promotion, cfg.eval,
                                 [Registered(cand, model_uri, run.info.run_id)], uri, register, set_alias)
    except BaseException:
        barrier.abort()  # the other promoter stops too instead of waiting forever
        raise


def race(args: list[tuple], timeout: float = 600) -> None:
    """Run `_promoter(barrier, *a)` for each of `args` in its own process, in step; each must succeed."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args), timeout=120)
    racers = [ctx.Process(target=_promoter, args=(barrier, *a)) for a in args]
    for p in racers:
        p.start()
    for p in racers:
        p.join(timeout=timeout)
        assert p.exitcode == 0


def assert_moves_chain(client, name: str, decisions: int) -> list[dict]:
    """Every move of `name`'s alias was judged against the champion it replaced: no two moves started from
    one champion, and the moves chain from "no champion" to today's. Returns the `decisions` records."""
    records = [r for mv in client.search_model_versions(f"name = '{name}'")
               for r in read_decisions(client, name, str(mv.version))]
    assert len(records) == decisions and all(r["status"] == "final" for r in records)
    promoted = {r["champion_judged"]: r for r in records if r["outcome"] == "champion"}
    assert len(promoted) == sum(r["outcome"] == "champion" for r in records) >= 2
    chain, current = [], None
    while current in promoted:
        record = promoted.pop(current)
        judged = [c for c in record["criteria"] if "vs champion" in c["name"]]
        assert all(c["verdict"] == "pass" for c in judged)
        assert len(judged) == (2 if current else 0) and all(c["name"].endswith(f"v{current}") for c in judged)
        chain.append(current := record["version"])
    assert not promoted and chain[-1] == champion_version(client, name)
    return records


def test_promoters_with_different_output_dirs_share_the_store_lock(world):
    """Two processes, 20 rounds: every move of the alias was judged against the champion it replaced."""
    client = mlflow.MlflowClient(world["uri"])
    source = _logged(world, candidate("racer", 90))
    name, rounds = "race", 20
    race([(world["uri"], world["root"] / f"promoter-{i}", name, i, rounds, source.model_uri) for i in (0, 1)])
    assert_moves_chain(client, name, 2 * rounds)


def _source(world) -> Registered:
    """One logged model, logged once, that the versions registered below all point at."""
    if "source" not in world:
        world["source"] = _logged(world, candidate("source", 90))
    return world["source"]


@pytest.fixture
def guarded(world, request):
    """(client, name, lock(), three versions of a fresh registered model) for driving `promote_guarded`;
    `lock()` is a fresh hold of the store's promotion lock (one per promotion)."""
    from smoothkd.registry.store import promotion_lock, register_version

    client = mlflow.MlflowClient(world["uri"])
    name = f"guarded-{request.node.name}"[:100]
    source = _source(world)
    # The sqlite registry finds a `models:/<model_id>` source through the process-wide URI.
    mlflow.set_tracking_uri(world["uri"])
    versions = [register_version(client, name, source.model_uri, source.run_id) for _ in range(3)]
    return client, name, lambda: promotion_lock(world["uri"], name), versions


def _mover(client, name):
    """Another writer of the alias, outside the lock (a manual move, another tool)."""
    return lambda version: client.set_registered_model_alias(name, "champion", version)


def test_guarded_promotion_keeps_a_newer_champion_and_leaves_the_alias_alone(guarded):
    from smoothkd.registry.store import promote_guarded

    client, name, lock, (v1, v2, v3) = guarded
    _mover(client, name)(v3)
    judged, pending = [], []
    outcome, decision = promote_guarded(client, name, v2, lock(), lambda c: judged.append(c),
                                        lambda d, c: pending.append(c))
    assert (outcome.status, outcome.detail, outcome.champion_after) == ("superseded", "newer champion v3", v3)
    assert decision is None and judged == [] and pending == []  # nothing judged, nothing about to move
    assert not outcome.promoted and champion_version(client, name) == v3
    # Forced, the older version is promoted all the same, judged against the champion it replaces.
    passing = judge(candidate("kd", 90), FLOORS, EVAL)
    outcome, decision = promote_guarded(client, name, v2, lock(), lambda c: judged.append(c) or passing,
                                        lambda d, c: pending.append(c), force=True)
    assert outcome.promoted and outcome.detail == "forced" and champion_version(client, name) == v2
    assert judged == [v3] and pending == [v3] and decision is passing


def test_guarded_promotion_judges_again_when_the_alias_moves_under_the_judgement(guarded):
    """Compare-and-set: the champion changes while the candidate is judged; the move waits for a
    judgement against the new champion, and the pending record names it."""
    from smoothkd.registry.store import promote_guarded

    client, name, lock, (v1, v2, v3) = guarded
    move = _mover(client, name)
    move(v1)
    judged, pending = [], []

    def rejudge(current):
        judged.append(current)
        if len(judged) == 1:
            move(v2)  # lands after the champion was read, before the alias moves
        return judge(candidate("kd", 90), FLOORS, EVAL)

    outcome, decision = promote_guarded(client, name, v3, lock(), rejudge, lambda d, c: pending.append(c))
    assert judged == [v1, v2] and pending == [v2]
    assert outcome.promoted and (outcome.champion_before, outcome.champion_after) == (v2, v3)
    assert champion_version(client, name) == v3


def test_guarded_promotion_reports_a_move_lost_to_another_writer(guarded):
    from smoothkd.registry.store import promote_guarded

    client, name, lock, (v1, v2, v3) = guarded
    move = _mover(client, name)
    move(v1)

    def then_overwritten(version):  # the real move, and another writer's right after it
        move(version)
        move(v2)

    outcome, _ = promote_guarded(client, name, v3, lock(), lambda c: judge(candidate("kd", 90), FLOORS, EVAL),
                                 lambda d, c: None, set_alias=then_overwritten)
    assert (outcome.status, outcome.champion_before, outcome.champion_after) == ("lost", v1, v2)
    assert outcome.detail == f"alias moved on to v{v2} by another writer" and not outcome.promoted
    assert champion_version(client, name) == v2


def test_guarded_promotion_gives_up_when_the_alias_keeps_moving(guarded):
    from smoothkd.registry.store import CAS_TRIES, promote_guarded

    client, name, lock, (v1, v2, v3) = guarded
    move = _mover(client, name)
    move(v1)
    judged, pending = [], []

    def rejudge(current):  # every judgement is overtaken by a move
        judged.append(current)
        move(v2 if current == v1 else v1)
        return judge(candidate("kd", 90), FLOORS, EVAL)

    outcome, decision = promote_guarded(client, name, v3, lock(), rejudge, lambda d, c: pending.append(c))
    assert judged == [(v1, v2)[i % 2] for i in range(CAS_TRIES)] and pending == []  # never about to move
    after = champion_version(client, name)
    assert (outcome.status, outcome.champion_after) == ("conflict", after) and after != v3
    assert outcome.detail == f"champion changed {CAS_TRIES} times under the judgement"
    assert decision.passed


def test_guarded_promotion_refuses_against_the_champion_it_reads(guarded):
    from smoothkd.registry.store import promote_guarded

    client, name, lock, (v1, v2, v3) = guarded
    _mover(client, name)(v1)
    failing = judge(candidate("kd", 70), FLOORS, EVAL)
    outcome, decision = promote_guarded(client, name, v3, lock(), lambda c: failing, lambda d, c: None)
    assert (outcome.status, outcome.detail) == ("refused", "cnndm/factual_consistency")
    assert decision is failing and champion_version(client, name) == v1
    outcome, _ = promote_guarded(client, name, v1, lock(), lambda c: failing, lambda d, c: None)
    assert (outcome.status, outcome.detail) == ("unchanged", "already champion")


def test_repromotion_judges_a_kd_student_against_the_sft_of_its_own_run(world):
    """`promotion.kd_not_worse_than_sft`: `promote` finds the SFT baseline registered by the same
    pipeline run (same parent MLflow run) and refuses a KD student clearly worse than it."""
    from smoothkd.registry.promote import repromote
    from smoothkd.registry.store import register_version

    uri, name, source = world["uri"], "kd-vs-sft", _source(world)
    client = mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("registry-test")
    with mlflow.start_run(run_name="pipeline") as parent:
        versions = {}
        for cand in (candidate("sft", 90, alpha=0), candidate("kd_a0.1", 84)):
            with mlflow.start_run(run_name=cand.name, nested=True) as run:
                _log_candidate(cand)
            versions[cand.name] = register_version(client, name, source.model_uri, run.info.run_id,
                                                   {"candidate": cand.name, "alpha": f"{cand.alpha:g}"})
    assert client.get_run(run.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    cfg = _cfg(world, name, kd_not_worse_than_sft=True)
    refused = repromote(client, cfg.promotion, cfg.eval, name, versions["kd_a0.1"], uri)
    failed = [c for c in refused["criteria"] if c["verdict"] == "fail"]
    assert [c["name"] for c in failed] == ["cnndm/factual_consistency vs sft"]
    assert failed[0]["value"] == pytest.approx(-6.0)
    assert refused["outcome"] == "failed gate: cnndm/factual_consistency vs sft"
    assert champion_version(client, name) is None
    # The same student without the criterion clears the floors and becomes champion.
    plain = _cfg(world, name)
    assert repromote(client, plain.promotion, plain.eval, name, versions["kd_a0.1"], uri)["outcome"] == \
        "champion"
    assert champion_version(client, name) == versions["kd_a0.1"]


class Crash(Exception):
    pass


def test_an_interrupted_promotion_leaves_a_record_and_tags_are_replaced_whole(world):
    client = mlflow.MlflowClient(world["uri"])
    cfg, uri, name = _cfg(world, "crash"), world["uri"], "crash"
    register_and_promote(client, cfg.promotion, cfg.eval, [_logged(world, candidate("kd_a0.1", 88))], uri)

    def crash_before_move(version):
        raise Crash

    def crash_after_move(version):
        client.set_registered_model_alias(name, "champion", version)
        raise Crash

    with pytest.raises(Crash):
        register_and_promote(client, cfg.promotion, cfg.eval, [_logged(world, candidate("kd_a1", 92))],
                             uri, set_alias=crash_before_move)
    assert champion_version(client, name) == "1"
    [record] = read_decisions(client, name, "2")
    assert record["status"] == "interrupted" and record["outcome"] == "moving champion from v1 to v2"
    assert not any(key.startswith("gate.") for key in client.get_model_version(name, "2").tags)
    with pytest.raises(Crash):
        register_and_promote(client, cfg.promotion, cfg.eval, [_logged(world, candidate("kd_a2", 96))],
                             uri, set_alias=crash_after_move)
    [record] = read_decisions(client, name, "3")
    assert champion_version(client, name) == "3" and record["outcome"] == "moving champion from v1 to v3"
    # A candidate refused against v3; after v2 is forced to champion, its re-judgement against v2 leaves
    # no tag of the v3 judgement behind, and both decisions keep their own record file.
    refused = register_and_promote(client, cfg.promotion, cfg.eval,
                                   [_logged(world, candidate("kd_a3", 82))], uri)[0]
    assert refused["outcome"] == "failed gate" and refused["champion_judged"] == "3"
    from smoothkd.registry.promote import repromote

    forced = repromote(client, cfg.promotion, cfg.eval, name, "2", uri, force=True, reason="rollback")
    assert forced["outcome"] == "champion (forced)" and champion_version(client, name) == "2"
    assert [r["status"] for r in read_decisions(client, name, "2")] == ["interrupted", "final"]
    again = repromote(client, cfg.promotion, cfg.eval, name, "4", uri)
    tags = client.get_model_version(name, "4").tags
    gate_keys = {k for k in tags if "vs champion" in k}
    assert gate_keys == {f"gate.cnndm/{m} vs champion v2" for m in ("factual_consistency", "rougeLsum")}
    assert tags["gate.decision"] == again["record"] and again["champion_judged"] == "2"
    history = read_decisions(client, name, "4")
    assert [r["champion_judged"] for r in history] == ["3", "2"]
    assert len({r["record"] for r in history}) == 2


def test_the_promotion_lock_lives_with_the_store(tmp_path):
    from smoothkd.errors import RegistryLockError
    from smoothkd.registry.store import LOCK_FILE, advisory_key, promotion_lock

    with promotion_lock(f"sqlite:///{tmp_path}/store/mlflow.db", "m"):
        assert (tmp_path / "store" / f"mlflow.db.{LOCK_FILE}").exists()
    with promotion_lock((tmp_path / "mlruns").as_uri(), "m"):
        assert (tmp_path / "mlruns" / LOCK_FILE).exists()
    with pytest.raises(RegistryLockError, match="promotion.lock_uri"):
        promotion_lock("http://mlflow.example:5000", "m")
    with promotion_lock("https://mlflow.example", "m", lock_uri=f"sqlite:///{tmp_path}/shared.db"):
        assert (tmp_path / f"shared.db.{LOCK_FILE}").exists()
    with pytest.raises(RegistryLockError, match="in-memory"):
        promotion_lock("sqlite://", "m")
    keys = {advisory_key(n) for n in ("a", "b", "smoothkd-student")}
    assert len(keys) == 3 and all(-2**63 <= k < 2**63 for k in keys)


def test_a_champion_evaluated_otherwise_is_re_evaluated_on_the_candidates_rows(world):
    """data.seed and eval.consistency change between two runs: the ids still match (they are positional),
    yet the gate does not pair by id; it re-evaluates the champion, fetched from the registry, on the
    candidate's rows with the candidate's scorer, and the record says so."""
    from transformers import BertConfig, BertForSequenceClassification

    from smoothkd.registry.promote import repromote
    from smoothkd.stages import champion_reevaluator, evaluate_model, prepare_data

    root, uri, name = world["root"], world["uri"], "reeval"
    tokenizer = load_tokenizer(str(world["model_dir"]))
    torch.manual_seed(0)  # a tiny random NLI model on the students' tokenizer
    labels = {0: "entailment", 1: "neutral", 2: "contradiction"}
    BertForSequenceClassification(BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=512, id2label=labels,
        label2id={v: k for k, v in labels.items()})).save_pretrained(root / "nli")
    tokenizer.save_pretrained(root / "nli")
    shape = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    other = build_tiny_llama(tokenizer, shape, root / "model-b", seed=2)

    def run_cfg(seed: int, **eval_) -> RunConfig:
        return RunConfig(output_dir=str(root / "reeval"),
                         data={"seed": seed, "embedded": {"n_instruction": 40, "n_cnndm": 6, "n_xsum": 2}},
                         eval=EVAL.model_copy(update={"max_new_tokens": 8, "batch_size": 6, **eval_}),
                         promotion=PromotionConfig(registered_model_name=name, max_regression=2.0,
                                                   regression_metrics=["factual_consistency"]),
                         tracking={"tracking_uri": uri, "experiment_name": "registry-test"})

    def evaluated(cfg: RunConfig, model_dir, label: str) -> tuple[Registered, dict]:
        result = evaluate_model(cfg, model_dir, prepare_data(cfg), progress=False)
        cand = Candidate(label, 0.1, result.metrics, result.per_example,
                         identity=EvalIdentity.from_dict(result.identity))
        return _logged(world, cand, model_dir), result

    client = mlflow.MlflowClient(uri)
    first = run_cfg(1)
    champion, _ = evaluated(first, world["model_dir"], "kd_a0.1")
    register_and_promote(client, first.promotion, first.eval, [champion], uri)
    # A random tiny model's summaries share no word with the references (ROUGE-Lsum 0 fails the gate):
    # the champion this test needs is forced, which the gate records as such.
    forced = repromote(client, first.promotion, first.eval, name, champion.candidate.version, uri,
                       force=True, reason="test champion")
    assert forced["outcome"].startswith("champion")
    second = run_cfg(2, consistency="nli", consistency_model=str(root / "nli"))
    cand, result = evaluated(second, other, "kd_a1")
    assert cand.candidate.per_example["cnndm"]["id"] == champion.candidate.per_example["cnndm"]["id"]
    expected_differences = ["examples (cnndm)", "scorer (factual_consistency)"]
    # Without a way to re-evaluate, the comparison fails instead of pairing other articles by id.
    vs_champion = "cnndm/factual_consistency vs champion v1"
    [refused] = register_and_promote(client, second.promotion, second.eval, [cand], uri)
    criterion = next(c for c in refused["criteria"] if c["name"] == vs_champion)
    assert criterion["verdict"] == "fail" and criterion["value"] is None
    assert criterion["detail"] == "not comparable: " + ", ".join(expected_differences)
    assert refused["champion_evaluation"]["source"] == "registry" and refused["outcome"] == "failed gate"
    # With it, the champion (from the registry) is scored on the candidate's rows by the candidate's scorer.
    record = repromote(client, second.promotion, second.eval, name, cand.candidate.version, uri,
                       reevaluate=champion_reevaluator(second, uri))
    assert record["champion_evaluation"] == {"version": "1", "source": "re-evaluated",
                                             "differences": expected_differences, "error": ""}
    again = evaluate_model(second, world["model_dir"], prepare_data(second), progress=False)
    assert again.identity == result.identity
    difference = (sum(result.per_example["cnndm"]["factual_consistency"])
                  - sum(again.per_example["cnndm"]["factual_consistency"])) / 6
    criterion = next(c for c in record["criteria"] if c["name"] == vs_champion)
    assert criterion["value"] == pytest.approx(difference) and criterion["detail"].startswith("paired CI")
    tags = client.get_model_version(name, cand.candidate.version).tags
    assert tags["gate.champion_evaluation"] == "re-evaluated (examples (cnndm); scorer (factual_consistency))"


def test_an_evaluation_of_another_evaluation_version_is_not_reused(world, monkeypatch):
    """`evaluate.VERSION` keys the evaluation cache: an evaluation cached by code that gave other metrics
    (before the fact confidences, say) is computed again, not read back without them."""
    from smoothkd.evaluation import evaluate
    from smoothkd.stages import evaluate_model, prepare_data

    cfg = RunConfig(output_dir=str(world["root"] / "versions"),
                    data={"embedded": {"n_instruction": 40, "n_cnndm": 2, "n_xsum": 2}},
                    eval=EVAL.model_copy(update={"max_new_tokens": 4, "bootstrap_samples": 20}))
    data_dir = prepare_data(cfg)
    first = evaluate_model(cfg, world["model_dir"], data_dir, progress=False)
    assert evaluate_model(cfg, world["model_dir"], data_dir, progress=False).dir == first.dir  # reused
    monkeypatch.setattr(evaluate, "VERSION", evaluate.VERSION + 1)
    again = evaluate_model(cfg, world["model_dir"], data_dir, progress=False)
    assert again.dir != first.dir and Path(again.dir, "result.json").exists()


# A promoter holding the lock: prints "held" once it has it, then sleeps.
HOLD_LOCK = """
import sys, time
from smoothkd.registry.store import promotion_lock
with promotion_lock(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


POSTGRES_URI = os.environ.get("SMOOTHKD_TEST_POSTGRES_URI")
needs_postgres = pytest.mark.skipif(
    not POSTGRES_URI, reason="needs a Postgres server: SMOOTHKD_TEST_POSTGRES_URI (.ci/run starts one)")


@needs_postgres
def test_the_postgres_advisory_lock_excludes_other_processes_and_dies_with_its_holder():
    import subprocess
    import sys

    from smoothkd.registry.store import promotion_lock

    uri = POSTGRES_URI
    with promotion_lock(uri, "pg-warm-up"):  # the driver's import and first connection are not timed
        pass
    for kill in (False, True):
        holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, uri, "pg-model", "60" if kill else "5"],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with promotion_lock(uri, "pg-other"):  # another registered model: its own key, no wait
            assert time.monotonic() - start < 2
        if kill:
            holder.kill()  # a promoter that dies mid-promotion: the server drops its session's lock
        with promotion_lock(uri, "pg-model"):
            waited = time.monotonic() - start
        holder.wait(60)
        assert (waited < 30) if kill else (waited > 3), waited


@pytest.fixture
def postgres_store():
    """A fresh database on the test server, for one MLflow store; dropped after."""
    import uuid

    import sqlalchemy

    admin = sqlalchemy.create_engine(POSTGRES_URI, isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    database = f"smoothkd_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{database}"'))
    try:
        yield sqlalchemy.engine.make_url(POSTGRES_URI).set(database=database).render_as_string(
            hide_password=False)
    finally:
        with admin.connect() as connection:  # MLflow keeps its pooled connections open: end them
            connection.execute(sqlalchemy.text(f'DROP DATABASE "{database}" WITH (FORCE)'))
        admin.dispose()


def _local_stack(zenml_dir, uri):
    """Register and activate, in the ZenML store `zenml_dir`, the local stack whose MLflow is on `uri`."""
    _use_zenml_store(zenml_dir)
    from pipelines.stack import ensure_local_stack

    ensure_local_stack(uri)


@needs_postgres
def test_pipeline_promoters_race_through_the_zenml_registry_on_postgres(world, postgres_store, tmp_path):
    """Two processes promote through the stack's MLflow model registry (the pipeline's path) on a Postgres
    MLflow store, serialised by its advisory lock: every move of the alias chains from the one before."""
    uri, name, rounds = postgres_store, "pg-race", 8
    ensure_experiment(uri, "registry-test", tmp_path / "artifacts")  # also creates MLflow's tables
    previous = mlflow.get_tracking_uri()
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("registry-test")
        with mlflow.start_run(run_name="racer"):
            model_uri = log_student_model(world["model_dir"], SETTINGS).model_uri
    finally:
        mlflow.set_tracking_uri(previous)
    ctx = multiprocessing.get_context("spawn")
    setup = ctx.Process(target=_local_stack, args=(tmp_path / "zenml", uri))
    setup.start()
    setup.join(timeout=300)
    assert setup.exitcode == 0
    race([(uri, tmp_path / f"promoter-{i}", name, i, rounds, model_uri, tmp_path / "zenml") for i in (0, 1)])
    client = mlflow.MlflowClient(uri)
    assert_moves_chain(client, name, 2 * rounds)
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 2 * rounds
    assert {(v.tags["zenml_pipeline_name"], v.tags["zenml_run_name"]) for v in versions} == {
        ("distill", "race-0"), ("distill", "race-1")}  # registered through ZenML's model registry


@pytest.mark.parametrize("config", sorted(Path(__file__).resolve().parents[1].glob("configs/paper/*.yaml")),
                         ids=lambda p: p.stem)
def test_paper_configs_gate_on_real_floors_with_a_model_scorer(config):
    from smoothkd.config import load_config

    cfg = load_config(config)
    assert cfg.eval.consistency in ("hhem", "nli")
    for split in cfg.eval.splits:
        floors = cfg.promotion.splits[split]
        assert floors.min_rougeLsum > 0 and floors.min_factual_consistency > 0
    assert 0 < cfg.promotion.max_ece < 0.1 and 0 < cfg.promotion.max_overconfidence < 0.1
    # An empty-output student: perfect consistency (nothing to contradict), no shared word. Refused.
    empty = Candidate("kd", 0.1, {f"{s}/{m}": v for s in cfg.eval.splits
                                  for m, v in (("rougeLsum", 0.0), ("factual_consistency", 100.0))})
    decision = judge(empty, cfg.promotion, cfg.eval)
    assert not decision.passed
    assert {f"{s}/rougeLsum above 0" for s in cfg.eval.splits} <= set(decision.failed_criteria)
