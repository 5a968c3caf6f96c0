"""Registration, the promotion gate and the guarded `champion` alias, on a real MLflow sqlite store."""

import json
import multiprocessing
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import corpus_and_tokenizer
from typer.testing import CliRunner

from smoothkd.cli import app
from smoothkd.config import EvalConfig, PromotionConfig, RunConfig, SplitGate, TinyModelConfig
from smoothkd.data.corpus import read_jsonl
from smoothkd.data.prompts import eval_prompt
from smoothkd.evaluation.generation import generate
from smoothkd.modeling.models import build_tiny_llama, load_causal_lm
from smoothkd.modeling.tokenizer import load_tokenizer
from smoothkd.registry.gate import Candidate, best_passing, judge
from smoothkd.registry.promote import Registered, register_and_promote
from smoothkd.registry.store import (
    PER_EXAMPLE_ARTIFACT,
    champion_version,
    list_versions,
    log_student_model,
    promote_guarded,
    register_version,
)
from smoothkd.tracking import ensure_experiment

EVAL = EvalConfig(splits=["cnndm"], bootstrap_samples=500)
FLOORS = PromotionConfig(splits={"cnndm": SplitGate(min_factual_consistency=80, min_rougeLsum=20)},
                         max_regression=2.0)
IDS = [f"cnndm-{i:03d}" for i in range(60)]


def candidate(name, fc, rouge=30.0, alpha=0.1, spread=4.0):
    """A candidate whose per-example factual consistency averages `fc` (alternating ± spread)."""
    values = [fc + (spread if i % 2 else -spread) for i in range(len(IDS))]
    return Candidate(name, alpha, {"cnndm/factual_consistency": fc, "cnndm/rougeLsum": rouge},
                     {"cnndm": {"id": IDS, "factual_consistency": values, "rougeLsum": [rouge] * len(IDS)}})


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


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    _, tokenizer = corpus_and_tokenizer(root, seed=3, n_instruction=120, vocab_size=400)
    shape = TinyModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    model_dir = build_tiny_llama(tokenizer, shape, root / "model", seed=1)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ensure_experiment(uri, "registry-test", root / "artifacts")
    return {"root": root, "uri": uri, "model_dir": model_dir, "corpus": root / "corpus"}


def _logged(world, cand: Candidate) -> Registered:
    mlflow.set_tracking_uri(world["uri"])
    mlflow.set_experiment("registry-test")
    with mlflow.start_run(run_name=cand.name) as run:
        mlflow.log_params({"alpha": cand.alpha})
        mlflow.log_metrics({k.replace("@", "_"): v for k, v in cand.metrics.items()})
        mlflow.log_dict(cand.per_example, PER_EXAMPLE_ARTIFACT)
        uri = log_student_model(world["model_dir"])
    return Registered(cand, uri, run.info.run_id)


def _cfg(world, name, **promotion) -> RunConfig:
    return RunConfig(output_dir=str(world["root"]), eval=EVAL,
                     promotion=FLOORS.model_copy(update={"registered_model_name": name, **promotion}),
                     tracking={"tracking_uri": world["uri"], "experiment_name": "registry-test"})


def test_register_gate_promote_refuse_and_force(world):
    client = mlflow.MlflowClient(world["uri"])
    cfg = _cfg(world, "student")
    lock = world["root"] / "registry.lock"
    first = [_logged(world, candidate("sft", 70, alpha=0)), _logged(world, candidate("kd_a0.1", 88))]
    records = register_and_promote(client, cfg, first, lock)
    assert [r["version"] for r in records] == ["1", "2"]
    assert [r["outcome"] for r in records] == ["failed gate", "champion"]
    assert champion_version(client, "student") == "2"
    version = client.get_model_version("student", "1")
    assert version.tags["gate.passed"] == "false" and version.tags["candidate"] == "sft"
    assert version.tags["gate.cnndm/factual_consistency"].startswith("fail: 70.000")
    record = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/gate/decision_v1.json")
    assert record["criteria"][0] == {"name": "cnndm/factual_consistency", "value": 70.0, "threshold": 80.0,
                                     "verdict": "fail", "detail": ">="}
    # A later candidate above the floors but clearly worse than the champion is refused.
    records = register_and_promote(client, cfg, [_logged(world, candidate("kd_a1", 82))], lock)
    assert records[0]["outcome"] == "failed gate" and champion_version(client, "student") == "2"
    assert "cnndm/factual_consistency vs champion v2" in [c["name"] for c in records[0]["criteria"]
                                                          if c["verdict"] == "fail"]
    # The CLI shows it, re-runs the gate (still refused), and --force promotes with who/why on record,
    # reaching the store through --tracking-uri alone (nothing process-wide points there).
    mlflow.set_tracking_uri(f"sqlite:///{world['root'] / 'elsewhere.db'}")
    cli_args = ["--tracking-uri", world["uri"]]
    shown = CliRunner().invoke(app, ["models", "student", "--json", *cli_args])
    assert shown.exit_code == 0, shown.output
    listed = {row["version"]: row for row in json.loads(shown.output)}
    assert listed["2"]["aliases"] == ["champion"] and listed["3"]["gate"] == "failed gate"
    refused = CliRunner().invoke(app, ["promote", "student", "3", *cli_args, "--set",
                                       f"output_dir={world['root']}", "--set", "eval.splits=[cnndm]"])
    assert refused.exit_code == 1 and "failed gate" in refused.output
    forced = CliRunner().invoke(app, ["promote", "student", "3", "--force", "--reason", "hotfix", *cli_args])
    assert forced.exit_code == 0, forced.output
    assert champion_version(client, "student") == "3"
    tags = client.get_model_version("student", "3").tags
    assert tags["promotion.reason"] == "hotfix" and tags["promotion.forced_by"]
    assert [r["version"] for r in list_versions(client, "student")] == ["3", "2", "1"]
    unknown = CliRunner().invoke(app, ["promote", "student", "99", *cli_args])
    assert unknown.exit_code == 2 and "student v99" in unknown.output and "Traceback" not in unknown.output


def test_champion_loads_back_and_generates_the_same_summary(world):
    client = mlflow.MlflowClient(world["uri"])
    records = register_and_promote(client, _cfg(world, "loadback"),
                                   [_logged(world, candidate("kd_a0.1", 90))], world["root"] / "lb.lock")
    assert records[0]["outcome"] == "champion"
    article = read_jsonl(world["corpus"] / "cnndm.jsonl")[0]["article"]
    prompts = [eval_prompt("cnndm", article)]
    tokenizer = load_tokenizer(str(world["model_dir"]))
    before = generate(load_causal_lm(world["model_dir"]), tokenizer, prompts, max_new_tokens=24,
                      progress=False)
    mlflow.set_tracking_uri(world["uri"])
    components = mlflow.transformers.load_model("models:/loadback@champion", return_type="components")
    loaded = components["model"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 load_causal_lm(world["model_dir"]).state_dict().values(),
                                                 strict=True))
    after = generate(loaded, components["tokenizer"], prompts, max_new_tokens=24, progress=False)
    assert after == before and before[0]


def _race(uri, lock, jobs, barrier, results):
    """One racer: for each (name, version, passes) wait for the other racer, then try to promote."""
    client = mlflow.MlflowClient(uri)
    for name, version, passes in jobs:
        cand = candidate(f"v{version}", 90 if passes else 50)
        barrier.wait()
        outcome, _ = promote_guarded(client, name, version, lock,
                                     lambda current, c=cand: judge(c, FLOORS, EVAL))
        results.put((name, version, outcome.status))


def test_concurrent_promotions_leave_the_alias_on_the_right_version(world):
    """Two processes race each round: pass/fail (either order), then pass/pass (newest must win)."""
    client = mlflow.MlflowClient(world["uri"])
    source = _logged(world, candidate("racer", 90))
    rounds = 20
    plan = {}
    for r in range(rounds):
        for kind in ("mixed", "both"):
            name = f"race-{kind}-{r}"
            for _ in range(2):
                register_version(client, name, source.model_uri, source.run_id)
            older_passes = kind == "both" or r % 2 == 0
            newer_passes = kind == "both" or r % 2 == 1
            plan[name] = ((name, "1", older_passes), (name, "2", newer_passes))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    lock = world["root"] / "race.lock"
    racers = [ctx.Process(target=_race, args=(world["uri"], lock, [jobs[i] for jobs in plan.values()],
                                              barrier, results)) for i in (0, 1)]
    for p in racers:
        p.start()
    for p in racers:
        p.join(timeout=300)
        assert p.exitcode == 0
    statuses = [results.get(timeout=5) for _ in range(2 * len(plan))]
    assert len(statuses) == 4 * rounds
    for name, (_, newer) in plan.items():
        expected = "2" if newer[2] else "1"
        assert champion_version(client, name) == expected, (name, statuses)


@pytest.mark.parametrize("config", sorted(Path(__file__).resolve().parents[1].glob("configs/paper/*.yaml")),
                         ids=lambda p: p.stem)
def test_paper_configs_gate_on_real_floors_with_a_model_scorer(config):
    from smoothkd.config import load_config

    cfg = load_config(config)
    assert cfg.eval.consistency in ("hhem", "nli")
    for split in cfg.eval.splits:
        floors = cfg.promotion.splits[split]
        assert floors.min_rougeLsum > 0 and floors.min_factual_consistency > 0
    # An empty-output student: perfect consistency (nothing to contradict), no shared word. Refused.
    empty = Candidate("kd", 0.1, {f"{s}/{m}": v for s in cfg.eval.splits
                                  for m, v in (("rougeLsum", 0.0), ("factual_consistency", 100.0))})
    decision = judge(empty, cfg.promotion, cfg.eval)
    assert not decision.passed
    assert {f"{s}/rougeLsum above 0" for s in cfg.eval.splits} <= set(decision.failed_criteria)
