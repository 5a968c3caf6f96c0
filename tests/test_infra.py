"""Scale-out infrastructure: stack definitions, shipped configs, `smoothkd stack up`, remote-run settings."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smoothkd.config import ConfigError, load_config
from smoothkd.stackdef import (
    ENV_REFERENCE,
    StackDefinition,
    available_stacks,
    is_secret_reference,
    literal_secrets,
    load_stack_definition,
    map_strings,
)

ROOT = Path(__file__).resolve().parents[1]
STACK_FILES = sorted((ROOT / "infra" / "stacks").glob("*.yaml"))
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
TINY = ROOT / "configs" / "test" / "tiny.yaml"
# Values that satisfy the flavors' validators wherever a definition reads the environment.
FAKE_ENV = {"SMOOTHKD_TRACKING_URI": "sqlite:////tmp/mlflow.db", "MLFLOW_TRACKING_URI": "https://mlflow.example.com",
            "SMOOTHKD_S3_ENDPOINT_URL": "http://127.0.0.1:9000", "SMOOTHKD_ARTIFACT_BUCKET": "bucket",
            "SMOOTHKD_CONTAINER_REGISTRY": "registry.example.com/team", "SMOOTHKD_K8S_CONTEXT": "gpu-cluster"}


def ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


@functools.cache
def shipped_flavors() -> dict:
    """(component type, flavor name) → flavor class, for every flavor ZenML ships, built in or integration.

    The integration flavor classes import without their integration's requirements installed.
    """
    from zenml.stack.flavor_registry import FlavorRegistry

    registry = FlavorRegistry()
    flavors = [f() for f in registry.builtin_flavors + registry.integration_flavors]
    return {(f.type.value, f.name): type(f) for f in flavors}


def resolved_with_fake_env(defn: StackDefinition) -> StackDefinition:
    """`defn` with every `${VAR}` it uses set from FAKE_ENV (or `x`)."""
    used = {m.group(1) for m in ENV_REFERENCE.finditer(json.dumps(defn.model_dump()))}
    return defn.resolved({name: FAKE_ENV.get(name, "x") for name in used})


def test_the_three_stacks_are_defined():
    assert {"local", "kubernetes", "skypilot"} <= set(available_stacks())
    assert load_stack_definition("local").components["model_registry"].flavor == "mlflow"


def test_stack_list_cli_shows_every_definition_with_its_flavors():
    """`smoothkd stack list`: per file in infra/stacks, its ZenML stack and description, then each
    component's type and flavor in the file's order."""
    from typer.testing import CliRunner

    from smoothkd.cli import app

    shown = CliRunner().invoke(app, ["stack", "list"])
    assert shown.exit_code == 0, shown.output
    expected = []
    for path in STACK_FILES:
        raw = yaml.safe_load(path.read_text())
        expected += [f"{path.stem}: {raw['name']} - {raw['description']}",
                     "    " + ", ".join(f"{t}={c['flavor']}" for t, c in raw["components"].items())]
    assert shown.output.splitlines() == expected


@pytest.mark.parametrize("path", STACK_FILES, ids=ids(STACK_FILES))
def test_stack_definition_validates_and_resolves(path):
    defn = load_stack_definition(path)
    assert defn.name.startswith("smoothkd-")
    assert "${" not in json.dumps(resolved_with_fake_env(defn).model_dump())


@pytest.mark.parametrize("path", STACK_FILES, ids=ids(STACK_FILES))
def test_every_flavor_and_key_is_one_zenml_ships(path):
    from zenml.utils import secret_utils

    flavors = shipped_flavors()
    for ctype, comp in load_stack_definition(path).components.items():
        assert (ctype, comp.flavor) in flavors, f"{ctype} flavor {comp.flavor} is not shipped by ZenML"
        fields = flavors[(ctype, comp.flavor)]().config_class.model_fields
        assert set(comp.configuration) <= set(fields), f"{ctype}: unknown keys"
        for key, value in comp.configuration.items():
            if secret_utils.is_secret_field(fields[key]):  # ZenML's own notion of a sensitive field
                assert is_secret_reference(value), f"{ctype}.{key} must be a {{{{secret.key}}}} reference"


@pytest.mark.parametrize("path", STACK_FILES, ids=ids(STACK_FILES))
def test_configurations_pass_the_flavors_validation(path):
    flavors = shipped_flavors()
    resolved = resolved_with_fake_env(load_stack_definition(path))
    checked = 0
    for ctype, comp in resolved.components.items():
        # Secret resolution is not under test here: stand in plain values for the references.
        config = map_strings(comp.configuration, lambda s: "stand-in" if is_secret_reference(s) else s)
        try:
            flavors[(ctype, comp.flavor)]().config_class(**config)
        except ModuleNotFoundError:  # a validator that needs its integration's package, absent here
            continue
        checked += 1
    assert checked >= len(resolved.components) - 1


@pytest.mark.parametrize("path", STACK_FILES, ids=ids(STACK_FILES))
def test_definitions_hold_no_literal_secrets(path):
    raw = yaml.safe_load(path.read_text())
    assert literal_secrets(raw) == []
    # Independently of the helper: every value under a credential-like key is a reference.
    def walk(tree):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from walk(value)
            elif any(word in key.lower() for word in ("password", "secret", "token", "key")):
                yield key, value
    assert all(is_secret_reference(v) for _, v in walk(raw))


@pytest.mark.parametrize(("text", "overrides", "expected"), [
    ("configuration: {tracking_uri: 'http://x', tracking_password: hunter2}", [],
     "components.experiment_tracker.configuration.tracking_password: pass secrets as ZenML references"),
    ("configuration: {tracking_uri: 'http://x'}",
     ["components.experiment_tracker.configuration.tracking_token=abc"], "tracking_token: pass secrets"),
    ("configuration: {client_kwargs: {aws_secret_access_key: abc}}", [],
     "client_kwargs.aws_secret_access_key"),
    ("flavour: mlflow", [], "components.experiment_tracker.flavour: unknown key"),
])
def test_bad_definitions_fail_in_one_line(tmp_path, text, overrides, expected):
    path = tmp_path / "bad.yaml"
    path.write_text("name: smoothkd-bad\ncomponents:\n  orchestrator: {name: default, flavor: local}\n"
                    "  artifact_store: {name: default, flavor: local}\n"
                    f"  experiment_tracker: {{name: t, flavor: mlflow, {text}}}\n")
    with pytest.raises(ConfigError) as err:
        load_stack_definition(path, overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_environment_references_resolve_or_name_what_is_missing():
    defn = StackDefinition.model_validate({"name": "s", "components": {
        "orchestrator": {"name": "o", "flavor": "local"},
        "artifact_store": {"name": "a", "flavor": "s3", "configuration": {
            "path": "s3://${BUCKET}/zenml", "client_kwargs": {"endpoint_url": "${ENDPOINT:-http://minio:9000}"},
            "key": "{{creds.id}}", "secret": "{{creds.secret}}"}}}})
    resolved = defn.resolved({"BUCKET": "team"})
    config = resolved.components["artifact_store"].configuration
    assert config["path"] == "s3://team/zenml"
    assert config["client_kwargs"] == {"endpoint_url": "http://minio:9000"}
    assert config["key"] == "{{creds.id}}"  # secret references are left to ZenML
    assert defn.secret_references() == {"creds": {"id", "secret"}}
    with pytest.raises(ConfigError, match=r"^def.yaml: set BUCKET in the environment"):
        defn.resolved({}, source="def.yaml")


# ---- run configs ----


def _pipeline_steps(cfg) -> set[str]:
    from pipelines.distill import distill_steps

    steps = distill_steps(cfg)
    return set(steps) | set(steps.values())


@pytest.mark.parametrize("path", CONFIGS, ids=ids(CONFIGS))
def test_shipped_config_fits_its_stack_and_pipeline(path):
    cfg = load_config(path)
    orch = cfg.orchestration
    assert orch.stack in available_stacks()
    if orch.docker.dockerfile:
        assert (ROOT / orch.docker.dockerfile).is_file()
    assert set(orch.resources) <= _pipeline_steps(cfg)
    if orch.stack != "local":
        # Each multi-process stage must be given a GPU per process (labels run on the student's processes).
        for step, procs in (("teacher", cfg.teacher.train.num_processes),
                            ("student", cfg.student.train.num_processes),
                            ("precompute_labels", cfg.student.train.num_processes)):
            assert (orch.resources[step].gpu_count or 0) >= procs, step


def test_paper_configs_reproduce_the_papers_setup():
    for path in sorted((ROOT / "configs" / "paper").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.data.instruction.source == cfg.data.cnndm.source == cfg.data.xsum.source == "hub"
        assert round(15011 * cfg.data.validation_fraction) == 1000
        assert cfg.distill.alphas == [0.1, 1.0]
        for section in (cfg.teacher, cfg.student):
            t = section.train
            assert (t.epochs, t.learning_rate, t.max_length, t.max_prompt_length, t.lr_scheduler) == (
                3, 1e-5, 1024, 512, "cosine")
            assert (t.weight_decay, t.max_grad_norm, t.warmup_ratio, t.seed) == (0.01, 1.0, 0.0, 10)
            assert t.batch_size * t.num_processes * t.gradient_accumulation_steps == 8
        assert cfg.teacher.finetune


# ---- remote-run settings ----


def test_resources_and_step_operator_map_to_each_invocation():
    """The rules `configured` applies on a cluster stack, called as `distill` calls it for a training
    step (its lookup names `student_<name>` and `student`): an invocation's own entry over its step's.
    That `distill` makes this call for each training is checked on a real run (test_pipeline)."""
    from zenml.config.step_configurations import StepConfigurationUpdate

    from pipelines.distill import distill_steps
    from pipelines.options import configured, step_configuration
    from steps.teacher import teacher
    from steps.train_student import train_student

    cfg = load_config(TINY, [
        "orchestration.stack=kubernetes",
        "orchestration.resources={student: {gpu_count: 2}, student_sft: {gpu_count: 1, memory: 8GiB}, "
        "teacher: {cpu_count: 4}}",
        "orchestration.step_operator={name: gpu-operator, steps: [student]}"])
    steps = distill_steps(cfg)
    assert {inv for inv, name in steps.items() if name == "student"} == {
        "train_sft", "train_kd_a0.5", "student_sft", "student_kd_a0.5"}
    kd, sft = (configured(cfg, train_student, f"student_{m}", "student", cpu_count=1)
               for m in ("kd_a0.5", "sft"))
    assert (_resources(kd).gpu_count, _resources(sft).gpu_count) == (2, 1)
    assert (_resources(sft).memory, _resources(sft).cpu_count) == ("8GiB", 1)
    assert _resources(configured(cfg, teacher, "teacher")).cpu_count == 4
    assert sft.configuration.step_operator == "gpu-operator"
    assert configured(cfg, teacher, "teacher").configuration.step_operator is None
    for invocation, name in steps.items():  # ZenML accepts each as a step configuration update
        StepConfigurationUpdate.model_validate(step_configuration(cfg, invocation, name))


def test_unknown_step_names_fail_before_the_run():
    from pipelines.distill import distill_steps
    from pipelines.options import check_step_names

    cfg = load_config(TINY, ["orchestration.resources={studnet: {gpu_count: 1}}"])
    with pytest.raises(ConfigError, match="unknown step studnet"):
        check_step_names(cfg, distill_steps(cfg))
    check_step_names(load_config(TINY, ["orchestration.resources={student_sft: {gpu_count: 1}}"]),
                     distill_steps(cfg))


def test_docker_section_maps_to_docker_settings():
    from pipelines.runner import docker_settings

    settings = docker_settings(load_config(ROOT / "configs/paper/llama2-7b-from-13b.yaml"))
    assert settings.dockerfile == "infra/docker/Dockerfile" and settings.build_context_root == "."
    assert settings.user == "smoothkd" and settings.parent_image is None
    prebuilt = docker_settings(load_config(TINY, ["orchestration.docker.parent_image=reg/img:1"]))
    assert prebuilt.parent_image == "reg/img:1" and prebuilt.dockerfile is None



def test_artifact_classes_keep_their_package_path_whatever_the_entry_point(monkeypatch, tmp_path):
    """ZenML names a stored artifact's class by its module under the source root, guessed from the entry
    point's directory: under `python -m smoothkd.cli` that is smoothkd/, and a gate decision became
    `artifacts.GateDecision`, a second class the report step refused. The runner fixes the root at the
    repository's."""
    from zenml.constants import ENV_ZENML_CUSTOM_SOURCE_ROOT
    from zenml.utils import source_utils

    from pipelines.runner import configure_zenml_env
    from smoothkd.artifacts import GateDecision

    monkeypatch.delenv(ENV_ZENML_CUSTOM_SOURCE_ROOT, raising=False)
    monkeypatch.setenv("ZENML_CONFIG_PATH", str(tmp_path / "zenml"))
    monkeypatch.setattr(source_utils, "_CUSTOM_SOURCE_ROOT", None)
    # The entry point `python -m smoothkd.cli`: its directory is where ZenML would look.
    monkeypatch.setattr(source_utils, "get_implicit_source_root", lambda: str(ROOT / "smoothkd"))
    configure_zenml_env(load_config(TINY, [f"output_dir={tmp_path}"]))
    assert source_utils.get_source_root() == str(ROOT)
    assert source_utils.resolve(GateDecision).import_path == "smoothkd.artifacts.GateDecision"

# ---- `smoothkd stack up` against a fresh ZenML store ----

# Runs the CLI in-process (typer's runner) inside a subprocess whose ZENML_CONFIG_PATH is the test's own,
# then prints what the store holds.
SNAPSHOT = """
import json, sys
from typer.testing import CliRunner
from smoothkd.cli import app
result = CliRunner().invoke(app, sys.argv[2:])
from zenml.client import Client
client = Client()
out = {"exit": result.exit_code, "output": result.output,
       "stacks": sorted(s.name for s in client.list_stacks(size=100).items)}
try:
    stack = client.get_stack(sys.argv[1], allow_name_prefix_match=False)
except KeyError:
    stack = None
if stack is not None:
    out["active"] = client.active_stack_model.name
    out["stack"] = {"id": str(stack.id), "updated": str(stack.updated)}
    out["components"] = {t.value: {"id": str(c.id), "name": c.name, "flavor": c.flavor_name,
                                   "configuration": c.configuration, "updated": str(c.updated)}
                         for t, cs in stack.components.items() for c in cs}
print("SNAPSHOT " + json.dumps(out))
"""


def snapshot(home: Path, stack: str, *args: str, setup: str = "") -> dict:
    # A script file, not `python -c`: ZenML derives its source root from the main module's file.
    script = home / "snapshot.py"
    script.write_text(setup + SNAPSHOT)
    env = {**os.environ, "ZENML_CONFIG_PATH": str(home / "zenml")}
    proc = subprocess.run([sys.executable, str(script), stack, *args], capture_output=True, text=True,
                          cwd=home, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("SNAPSHOT "))
    return json.loads(line.removeprefix("SNAPSHOT "))


def test_stack_up_local_is_idempotent_and_touches_the_stack_when_the_uri_moves(tmp_path):
    args = ("stack", "up", "local", "--config", str(TINY))
    first = snapshot(tmp_path, "smoothkd-local", *args)
    assert first["exit"] == 0, first["output"]
    assert "created the stack" in first["output"]
    assert first["active"] == "smoothkd-local"
    assert first["components"]["model_registry"]["flavor"] == "mlflow"
    tracker = first["components"]["experiment_tracker"]
    expected_uri = f"sqlite:///{tmp_path / '.smoothkd-tiny' / 'mlflow.db'}"
    assert tracker["configuration"]["tracking_uri"] == expected_uri

    second = snapshot(tmp_path, "smoothkd-local", *args)
    assert second["exit"] == 0 and "unchanged" in second["output"], second["output"]
    assert [s for s in second["stacks"] if s.startswith("smoothkd")] == ["smoothkd-local"]
    assert second["stack"] == first["stack"]  # same id, same update time
    assert second["components"] == first["components"]  # same ids, configurations, update times

    moved = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    third = snapshot(tmp_path, "smoothkd-local", *args,
                     "--set", f"components.experiment_tracker.configuration.tracking_uri={moved}")
    assert "updated experiment_tracker smoothkd-mlflow" in third["output"], third["output"]
    new_tracker = third["components"]["experiment_tracker"]
    assert new_tracker["id"] == tracker["id"] and new_tracker["configuration"]["tracking_uri"] == moved
    assert third["stack"]["id"] == first["stack"]["id"]
    assert third["stack"]["updated"] != first["stack"]["updated"]  # touched, so ZenML rebuilds it
    assert third["components"]["orchestrator"] == first["components"]["orchestrator"]


def test_stack_up_asks_for_missing_secrets_and_stores_only_references(tmp_path):
    definition = tmp_path / "secretive.yaml"
    definition.write_text(f"""
name: smoothkd-secretive
components:
  orchestrator: {{name: default, flavor: local}}
  artifact_store: {{name: default, flavor: local}}
  experiment_tracker:
    name: secretive-mlflow
    flavor: mlflow
    configuration:
      tracking_uri: sqlite:///{tmp_path / 'm.db'}
      tracking_token: "{{{{smoothkd_test.token}}}}"
""")
    missing = snapshot(tmp_path, "smoothkd-secretive", "stack", "up", str(definition))
    assert missing["exit"] == 2
    assert ("uses ZenML secret 'smoothkd_test' (keys token) that does not exist: "
            "`zenml secret create smoothkd_test --token=...`") in missing["output"]
    assert "smoothkd-secretive" not in missing["stacks"]

    # Create the secret, register once, then snapshot a second `stack up`: nothing left to change.
    create = ("from typer.testing import CliRunner\nfrom zenml.client import Client\n"
              "from smoothkd.cli import app\n"
              "Client().create_secret('smoothkd_test', values={'token': 's3cr3t-value'})\n"
              f"assert CliRunner().invoke(app, ['stack', 'up', {str(definition)!r}]).exit_code == 0\n")
    done = snapshot(tmp_path, "smoothkd-secretive", "stack", "up", str(definition), setup=create)
    assert done["exit"] == 0 and "unchanged" in done["output"], done["output"]
    assert done["components"]["experiment_tracker"]["configuration"]["tracking_token"] == \
        "{{smoothkd_test.token}}"


def test_missing_integration_is_one_line_with_the_install_command(tmp_path):
    from zenml.integrations.registry import integration_registry

    if integration_registry.integrations["kubernetes"].check_installation():
        pytest.skip("the kubernetes integration is installed here")
    env = {**os.environ, "ZENML_CONFIG_PATH": str(tmp_path / "zenml")}
    proc = subprocess.run([sys.executable, "-m", "smoothkd.cli", "stack", "up", "kubernetes"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "needs ZenML integrations not installed here: kubernetes s3" in lines[0]
    assert "`zenml integration install kubernetes s3 -y`" in lines[0] and "pip install" in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def _resources(step):
    from zenml.config import ResourceSettings

    return ResourceSettings.model_validate(step.configuration.settings["resources"].model_dump())


def test_a_dynamic_pipelines_steps_get_their_resources_on_a_remote_stack_and_defaults_locally():
    """The sweep's steps are configured as they are submitted (a run configuration's per-invocation entries
    do not reach a dynamic pipeline): by their own invocation, else by `smoothkd run`'s step name."""
    from pipelines.options import configured
    from steps.sweep import evaluate_sweep_model
    from steps.teacher import teacher
    from steps.train_student import train_student

    entries = ["orchestration.resources={student: {gpu_count: 2, memory: 8GiB}, teacher_t11: {gpu_count: 4}, "
               "teacher: {gpu_count: 1}}",
               "orchestration.step_operator={name: gpu-operator, steps: [student]}"]
    remote = load_config(TINY, ["orchestration.stack=kubernetes", *entries])
    train = configured(remote, train_student, "train_student", "student", cpu_count=1)
    resources = _resources(train)
    assert (resources.gpu_count, resources.memory, resources.cpu_count) == (2, "8GiB", 1)
    assert train.configuration.step_operator == "gpu-operator"
    evaluate = configured(remote, evaluate_sweep_model, "evaluate_sweep_model", "evaluate", cpu_count=1)
    assert _resources(evaluate).gpu_count is None
    assert evaluate.configuration.step_operator is None
    assert _resources(configured(remote, teacher, "teacher")).gpu_count == 1
    assert _resources(configured(remote, teacher, "teacher_t11")).gpu_count == 4
    # The local stack: the entries are for remote stacks (as in `smoothkd run`); the defaults still apply.
    local = load_config(TINY, entries)
    assert configured(local, teacher, "teacher") is teacher
    assert _resources(configured(local, train_student, "train_student", "student",
                                 cpu_count=1)).gpu_count is None
