"""Declarative ZenML stack definitions (`infra/stacks/*.yaml`): schema, loading, reference resolution.

A definition names a stack and, per component type, a component's name, flavor and configuration.
Values never hold secrets: a secret-like key (password, secret, token, key) must be a ZenML secret
reference `{{secret_name.key}}`, which ZenML resolves when a step runs. `${VAR}` (or `${VAR:-default}`)
is read from the environment at `smoothkd stack up` time. This module needs no ZenML; registering a
definition lives in `pipelines/stack.py`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smoothkd.config import ConfigError, apply_overrides, format_validation_error

STACKS_DIR = Path(__file__).resolve().parents[1] / "infra" / "stacks"

ComponentType = Literal[
    "orchestrator", "artifact_store", "container_registry", "image_builder", "experiment_tracker",
    "model_registry", "step_operator", "model_deployer", "alerter", "data_validator", "log_store",
]

# `{{name.key}}`, as ZenML parses secret references.
SECRET_REFERENCE = re.compile(r"\{\{\s*([^.\s{}]+)\.([^\s{}]+)\s*\}\}")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
SECRET_KEY = re.compile(r"(^|_)(password|secret|token|key)($|_)", re.IGNORECASE)
# Keys that hold the *name* of a ZenML secret, not a secret value.
SECRET_NAME_KEYS = {"authentication_secret"}


def is_secret_reference(value: Any) -> bool:
    return isinstance(value, str) and SECRET_REFERENCE.fullmatch(value) is not None


def literal_secrets(tree: Any, path: str = "") -> list[str]:
    """Dotted paths of secret-like keys whose value is anything but a `{{secret.key}}` reference."""
    found: list[str] = []
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            where = f"{path}.{key}" if path else str(key)
            if SECRET_KEY.search(str(key)) and key not in SECRET_NAME_KEYS and not isinstance(value, Mapping):
                if value not in (None, "") and not is_secret_reference(value):
                    found.append(where)
            else:
                found.extend(literal_secrets(value, where))
    elif isinstance(tree, list):
        for i, item in enumerate(tree):
            found.extend(literal_secrets(item, f"{path}.{i}"))
    return found


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentDef(_Strict):
    """One stack component: registered under `name` with `flavor`; `configuration` as the flavor takes it."""

    name: str = Field(min_length=1)
    flavor: str = Field(min_length=1)
    configuration: dict[str, Any] = Field(default_factory=dict)


class StackDefinition(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    components: dict[ComponentType, ComponentDef]

    def secret_references(self) -> dict[str, set[str]]:
        """Secret name → keys that the definition's `{{name.key}}` references use."""
        refs: dict[str, set[str]] = {}

        def collect(text: str) -> str:
            for match in SECRET_REFERENCE.finditer(text):
                refs.setdefault(match.group(1), set()).add(match.group(2))
            return text

        map_strings(self.model_dump(), collect)
        return refs

    def resolved(self, environ: Mapping[str, str] | None = None, source: str = "stack") -> StackDefinition:
        """A copy with every `${VAR}` replaced from `environ` (the process environment by default).

        Raises ConfigError naming every variable that is unset and has no default.
        """
        env = os.environ if environ is None else environ
        missing: list[str] = []

        def substitute(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            missing.append(name)
            return ""

        resolved = map_strings(self.model_dump(), lambda s: ENV_REFERENCE.sub(substitute, s))
        if missing:
            names = ", ".join(dict.fromkeys(missing))
            raise ConfigError(f"{source}: set {names} in the environment, or override the value with --set")
        return StackDefinition.model_validate(resolved)


def map_strings(tree: Any, fn) -> Any:
    """`tree` with `fn` applied to every string in it (mappings and lists rebuilt)."""
    if isinstance(tree, str):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: map_strings(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [map_strings(v, fn) for v in tree]
    return tree


def available_stacks() -> list[str]:
    """Names of the definitions shipped in infra/stacks (file stems)."""
    return sorted(p.stem for p in STACKS_DIR.glob("*.yaml"))


def stack_file(name_or_path: str | Path) -> Path:
    """`kubernetes` → infra/stacks/kubernetes.yaml; a path to a .yaml file is taken as it is."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"stack definition not found: {path}")
        return path
    file = STACKS_DIR / f"{name_or_path}.yaml"
    if not file.is_file():
        raise ConfigError(f"unknown stack '{name_or_path}': choose one of {', '.join(available_stacks())} "
                          "or pass a definition file")
    return file


def load_stack_definition(name_or_path: str | Path, overrides: list[str] | None = None) -> StackDefinition:
    """Read and validate a definition, `--set a.b=c` overrides applied; `${VAR}`s stay unresolved."""
    file = stack_file(name_or_path)
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{file}: invalid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: top level must be a mapping")
    raw = apply_overrides(raw, overrides or [])
    try:
        defn = StackDefinition.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(file))) from None
    missing = [t for t in ("orchestrator", "artifact_store") if t not in defn.components]
    if missing:
        raise ConfigError(f"{file}: components: a stack needs {' and '.join(missing)}")
    literal = literal_secrets(raw)
    if literal:
        raise ConfigError(f"{file}: {', '.join(literal)}: pass secrets as ZenML references "
                          "{{secret_name.key}}, never as values")
    return defn
