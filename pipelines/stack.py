"""Register ZenML stacks from the definitions in infra/stacks, idempotently; the local stack of `make demo`.

`apply_stack` registers missing components, updates components whose configuration differs from the
definition, creates the stack once (or repoints it at the defined components) and activates it. A second
call with the same definition changes nothing.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from zenml.client import Client
from zenml.enums import StackComponentType

from smoothkd.errors import StackError, one_line
from smoothkd.stackdef import ComponentDef, StackDefinition, load_stack_definition, stack_file

LOCAL = "local"


@dataclass
class StackReport:
    """What `apply_stack` did: all empty/False when the store already matched the definition."""

    stack: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    stack_created: bool = False
    stack_updated: bool = False
    activated: bool = False


def _require_integrations(defn: StackDefinition) -> None:
    """Raise naming the install command for ZenML integrations the definition's flavors need."""
    from zenml.integrations.registry import integration_registry

    client = Client()
    missing: dict[str, list[str]] = {}
    for ctype, comp in defn.components.items():
        try:
            flavor = client.get_flavor_by_name_and_type(comp.flavor, StackComponentType(ctype))
        except KeyError:
            raise StackError(f"stack '{defn.name}': {ctype} flavor '{comp.flavor}' is not a ZenML flavor "
                             f"(list them with `zenml {ctype.replace('_', '-')} flavor list`)") from None
        integration = integration_registry.integrations.get(flavor.integration or "")
        if integration is not None and not integration.check_installation():
            missing[flavor.integration] = integration.get_requirements()
    if missing:
        names = " ".join(sorted(missing))
        pip = " ".join(shlex.quote(r) for name in sorted(missing) for r in missing[name])
        raise StackError(f"stack '{defn.name}' needs ZenML integrations not installed here: {names}; "
                         f"run `zenml integration install {names} -y` (or `pip install {pip}`)")


def _require_secrets(defn: StackDefinition) -> None:
    client = Client()
    for name, keys in sorted(defn.secret_references().items()):
        try:
            secret = client.get_secret(name, allow_partial_name_match=False, allow_partial_id_match=False)
        except KeyError:
            secret = None
        absent = sorted(keys - set(secret.secret_values if secret else ()))
        if absent:
            args = " ".join(f"--{k}=..." for k in absent)
            problem, verb = ("lacks them", "update") if secret else ("does not exist", "create")
            raise StackError(f"stack '{defn.name}' uses ZenML secret '{name}' (keys {', '.join(absent)}) "
                             f"that {problem}: `zenml secret {verb} {name} {args}`")


def _normalised(comp: ComponentDef, ctype: StackComponentType) -> dict:
    """The configuration as ZenML stores it (validated by the flavor's config class, JSON values)."""
    from zenml.stack.utils import validate_stack_component_config

    try:
        config = validate_stack_component_config(comp.configuration, comp.flavor, ctype)
    except ValueError as err:
        raise StackError(f"{ctype.value} '{comp.name}' ({comp.flavor}): {one_line(err)}") from None
    return config.model_dump(mode="json", exclude_unset=True)


def _apply_component(client: Client, ctype: StackComponentType, comp: ComponentDef,
                     report: StackReport) -> None:
    wanted = _normalised(comp, ctype)
    try:
        existing = client.get_stack_component(ctype, comp.name, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack_component(comp.name, comp.flavor, ctype, comp.configuration)
        report.created.append(f"{ctype.value} {comp.name}")
        return
    if existing.flavor_name != comp.flavor:
        raise StackError(f"{ctype.value} '{comp.name}' is registered with flavor '{existing.flavor_name}', "
                         f"the definition wants '{comp.flavor}': rename it in the definition or delete it "
                         f"(`zenml {ctype.value.replace('_', '-')} delete {comp.name}`)")
    if any(existing.configuration.get(key) != value for key, value in wanted.items()):
        client.update_stack_component(comp.name, ctype, configuration=comp.configuration)
        report.updated.append(f"{ctype.value} {comp.name}")


def _activate(client: Client, name: str) -> bool:
    """Make stack `name` the active one; False when it already was."""
    if client.active_stack_model.name == name:
        return False
    client.activate_stack(name)
    return True


def apply_stack(defn: StackDefinition) -> StackReport:
    """Make the ZenML store hold and activate the stack `defn` describes.

    `defn` comes from `stack_up`: its integrations checked, its `${VAR}`s resolved.
    """
    _require_secrets(defn)
    client = Client()
    report = StackReport(defn.name)
    components = {StackComponentType(t): c for t, c in defn.components.items()}
    for ctype, comp in components.items():
        _apply_component(client, ctype, comp, report)
    wanted = {t: c.name for t, c in components.items()}
    try:
        stack = client.get_stack(defn.name, allow_name_prefix_match=False)
    except KeyError:
        client.create_stack(defn.name, components=wanted)
        report.stack_created = True
    else:
        current = {t: comps[0].name for t, comps in stack.components.items() if comps}
        # ZenML caches a built stack by the stack's own update time, which a component update leaves alone:
        # touch the stack too, or a second run in this process logs to the previous tracking URI.
        if report.updated or any(current.get(t) != name for t, name in wanted.items()):
            client.update_stack(defn.name, component_updates={t: [name] for t, name in wanted.items()})
            report.stack_updated = True
    report.activated = _activate(client, defn.name)
    return report


def stack_up(name_or_path: str, overrides: list[str] | None = None,
             context: Mapping[str, str] | None = None) -> StackReport:
    """Load a definition, resolve `${VAR}` from `context` over the environment, and apply it."""
    file = stack_file(name_or_path)
    defn = load_stack_definition(file, overrides)
    _require_integrations(defn)  # first: installing them is the first thing a user has to do
    resolved = defn.resolved({**os.environ, **(context or {})}, source=str(file))
    return apply_stack(resolved)


def ensure_local_stack(tracking_uri: str) -> str:
    """Register (once) and activate the local stack whose MLflow tracker writes to `tracking_uri`."""
    return stack_up(LOCAL, context={"SMOOTHKD_TRACKING_URI": tracking_uri}).stack


def use_stack(name_or_path: str) -> str:
    """Activate an already registered (non-local) stack; return its MLflow tracking URI."""
    defn = load_stack_definition(name_or_path)
    _require_integrations(defn)
    client = Client()
    try:
        stack = client.get_stack(defn.name, allow_name_prefix_match=False)
    except KeyError:
        raise StackError(f"stack '{defn.name}' is not registered in this ZenML store: run "
                         f"`smoothkd stack up {name_or_path}` first") from None
    _activate(client, defn.name)
    trackers = stack.components.get(StackComponentType.EXPERIMENT_TRACKER) or []
    if not trackers:
        raise StackError(f"stack '{defn.name}' has no experiment tracker: its definition needs an mlflow one")
    return trackers[0].configuration.get("tracking_uri", "")
