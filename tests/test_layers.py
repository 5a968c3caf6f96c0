"""The dependency rule of smoothkd/__init__.py, checked over every import (module level, function local,
TYPE_CHECKING) of smoothkd/, steps/ and pipelines/: no upward import, no import circle, no private name
used outside its module. The checker is tested on small synthetic packages too, so it can fail."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower rank = lower layer; a module may import its own layer and the layers below it. The longest
# matching prefix decides a module's layer.
LAYERS: dict[str, int] = {
    "smoothkd": 0, "smoothkd.config": 0, "smoothkd.io": 0, "smoothkd.errors": 0, "smoothkd.artifacts": 0,
    "smoothkd.data.schema": 0,
    "smoothkd.data": 1,
    "smoothkd.modeling": 2,
    "smoothkd.validation": 3, "smoothkd.calibration": 3, "smoothkd.registry": 3, "smoothkd.evaluation": 3,
    "smoothkd.distill": 3, "smoothkd.tracking": 3, "smoothkd.report": 3, "smoothkd.charts": 3,
    "smoothkd.stackdef": 3,
    "smoothkd.stages": 4,
    "steps": 5,
    "pipelines": 6,
    "smoothkd.cli": 7,
}


@dataclass(frozen=True)
class Use:
    source: str
    target: str
    line: int
    private: str | None = None  # the private name imported or reached, if any


def module_name(root: Path, file: Path) -> str:
    parts = list(file.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def collect(root: Path, packages: list[str]) -> dict[str, list[Use]]:
    """Every module of `packages` under `root` with the uses of other modules of the same set."""
    files = {module_name(root, f): f for pkg in packages for f in sorted((root / pkg).rglob("*.py"))}
    return {name: list(_uses(name, file, set(files), file.name == "__init__.py"))
            for name, file in files.items()}


def _uses(name: str, file: Path, modules: set[str], is_package: bool):
    tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    package = name if is_package else name.rpartition(".")[0]
    aliases: dict[str, str] = {}  # local name -> one of our modules
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name, modules):
                    yield Use(name, _owner(alias.name, modules), node.lineno)
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if not _ours(base, modules):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:  # a submodule
                    yield Use(name, full, node.lineno)
                    aliases[alias.asname or alias.name] = full
                else:
                    private = alias.name if _private(alias.name) else None
                    yield Use(name, _owner(base, modules), node.lineno, private)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            target = aliases.get(node.value.id)
            if target is not None:
                yield Use(name, target, node.lineno, node.attr)


def _ours(dotted: str, modules: set[str]) -> bool:
    return any(dotted == m or dotted.startswith(m + ".") or m.startswith(dotted + ".") for m in modules)


def _owner(dotted: str, modules: set[str]) -> str:
    """The module `dotted` names, or the deepest of ours that contains it."""
    while dotted not in modules and "." in dotted:
        dotted = dotted.rpartition(".")[0]
    return dotted


def _private(attr: str) -> bool:
    return attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__"))


def layer(module: str, layers: dict[str, int]) -> int | None:
    matches = [p for p in layers if module == p or module.startswith(p + ".")]
    return layers[max(matches, key=len)] if matches else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(root: Path, packages: list[str], layers: dict[str, int]) -> list[str]:
    """Every breach of the rule, one line each; empty when the packages keep it."""
    uses = collect(root, packages)
    problems = [f"{m}: no layer assigned" for m in uses if layer(m, layers) is None]
    graph: dict[str, set[str]] = {m: set() for m in uses}
    for source, items in uses.items():
        for use in items:
            if use.target == source:
                continue
            graph[source].add(use.target)
            if use.private:
                problems.append(f"{source}:{use.line} uses private {use.target}.{use.private}")
            low, high = layer(source, layers), layer(use.target, layers)
            if low is not None and high is not None and high > low:
                problems.append(f"{source}:{use.line} imports {use.target} from a lower layer")
    problems = list(dict.fromkeys(problems))  # one line per breach, not per imported name
    return problems + [f"import circle: {' -> '.join(c)}" for c in cycles(graph)]


def test_project_keeps_the_dependency_rule():
    assert violations(ROOT, ["smoothkd", "steps", "pipelines"], LAYERS) == []


# The names that are, or read, the whole run. Below the stage layer a function takes the config sections
# it reads (e.g. `registry.gate.judge` takes PromotionConfig and EvalConfig), never the run.
RUN_WIDE = ("RunConfig", "output_root", "tracking_uri")


def run_wide_uses(root: Path, packages: list[str], layers: dict[str, int], below: int) -> list[str]:
    """Each place a module under layer `below` imports or reaches a `RUN_WIDE` name."""
    found = []
    files = (file for pkg in packages for file in sorted((root / pkg).rglob("*.py")))
    for name, file in ((module_name(root, f), f) for f in files):
        rank = layer(name, layers)
        if rank is None or rank >= below or name == "smoothkd.config":
            continue
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            names = ([a.name for a in node.names] if isinstance(node, ast.ImportFrom)
                     else [node.attr] if isinstance(node, ast.Attribute) else [])
            found += [f"{name}:{node.lineno} uses {n}" for n in names if n in RUN_WIDE]
    return found


def test_no_domain_function_takes_the_whole_run():
    assert run_wide_uses(ROOT, ["smoothkd"], LAYERS, LAYERS["smoothkd.stages"]) == []


def test_the_run_wide_check_finds_an_import_and_an_attribute(tmp_path):
    root = _package(tmp_path, {
        "pkg/__init__.py": "", "pkg/low.py": "from smoothkd.config import RunConfig\n",
        "pkg/high.py": "import smoothkd.config as c\ndef f(cfg):\n    c.output_root(cfg)\n"})
    assert run_wide_uses(root, ["pkg"], {"pkg": 0, "pkg.high": 1}, 2) == ["pkg.high:3 uses output_root",
                                                                        "pkg.low:1 uses RunConfig"]
    assert run_wide_uses(root, ["pkg"], {"pkg": 0, "pkg.high": 1}, 1) == ["pkg.low:1 uses RunConfig"]


def test_every_layer_is_present():
    # The map names real modules: a renamed package would otherwise leave its rule checking nothing.
    modules = collect(ROOT, ["smoothkd", "steps", "pipelines"])
    for prefix in LAYERS:
        assert any(m == prefix or m.startswith(prefix + ".") for m in modules), prefix


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


SYNTHETIC = {"pkg": 0, "pkg.low": 0, "pkg.high": 1}


def test_checker_accepts_a_clean_package(tmp_path):
    root = _package(tmp_path, {"pkg/__init__.py": "", "pkg/low.py": "X = 1\n",
                               "pkg/high.py": "from pkg.low import X\nfrom . import low\n"})
    assert violations(root, ["pkg"], SYNTHETIC) == []


@pytest.mark.parametrize(("low", "high", "expected"), [
    ("def f():\n    from pkg.high import Y\n", "Y = 1\n", "pkg.low:2 imports pkg.high from a lower layer"),
    ("_hidden = 1\n", "from pkg.low import _hidden\n", "uses private pkg.low._hidden"),
    ("_hidden = 1\n", "import pkg.low as low\nlow._hidden\n", "uses private pkg.low._hidden"),
    ("_hidden = 1\n", "from pkg import low\ndef f():\n    return low._hidden\n", "private pkg.low._hidden"),
])
def test_checker_finds_each_breach(tmp_path, low, high, expected):
    root = _package(tmp_path, {"pkg/__init__.py": "", "pkg/low.py": low, "pkg/high.py": high})
    assert any(expected in problem for problem in violations(root, ["pkg"], SYNTHETIC))


def test_checker_finds_a_circle_through_a_function_local_import(tmp_path):
    root = _package(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from pkg import b\n",
                               "pkg/b.py": "def f():\n    from pkg.a import g\n"})
    assert violations(root, ["pkg"], {"pkg": 0}) == ["import circle: pkg.a -> pkg.b"]


def test_checker_names_a_module_without_a_layer(tmp_path):
    root = _package(tmp_path, {"pkg/__init__.py": "", "other/__init__.py": "", "other/x.py": ""})
    assert violations(root, ["pkg", "other"], {"pkg": 0}) == ["other: no layer assigned",
                                                             "other.x: no layer assigned"]
