"""The layout's rules, checked on the source: imports point only down, no import cycles, no oversized module.

Layers, top to bottom (CONTRIBUTING.md draws them): stages/ -> alignment.cli -> alignment.pipeline, alignment.sweep
-> the stage modules (alignment.sft, .reward, .ppo, .evaluate, .inspect_data) -> alignment.modeling, alignment.training ->
alignment.data -> alignment.core, alignment.rl -> data_schemas. A module may import from its own package or from a
lower layer, never from a higher one or from a sibling package on its own layer (the stages do not import each
other; rl, the pure math, imports nothing else of the library). Every import counts, also one inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

LAYERS: dict[str, int] = {
    "data_schemas": 0,
    "alignment.core": 1,
    "alignment.rl": 1,
    "alignment.data": 2,
    "alignment.modeling": 3,
    "alignment.training": 3,
    "alignment.sft": 4,
    "alignment.reward": 4,
    "alignment.dpo": 4,
    "alignment.ppo": 4,
    "alignment.evaluate": 4,
    "alignment.inspect_data": 4,
    "alignment.pipeline": 5,
    "alignment.sweep": 5,
    "alignment.cli": 6,
    "stages": 7,
}
MAX_MODULE_LINES = 450
PACKAGES = ("alignment", "data_schemas", "stages")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO_ROOT / package).rglob("*.py"))}


def group(module: str) -> str | None:
    """The package (or top-level module) whose layer ``module`` is on; None for the ``alignment`` package itself."""
    for name in sorted(LAYERS, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return None


def imported_modules(path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(project module, line) for every import in ``path``, at any depth; ``from pkg import mod`` resolves to mod."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names
            ]
        for name in names:
            while name and name not in modules:  # `import a.b.c` names a.b.c; fall back to its package
                name = name.rpartition(".")[0]
            if name:
                found.append((name, node.lineno))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[str, int]]]:
    modules = all_modules()
    return {name: imported_modules(path, modules) for name, path in modules.items()}


def test_every_module_is_on_a_layer():
    unplaced = [name for name in all_modules() if group(name) is None and name != "alignment"]
    assert not unplaced, f"modules on no layer (add them to LAYERS and to CONTRIBUTING.md): {unplaced}"


def test_imports_point_only_down(graph):
    offenders = []
    for module, targets in graph.items():
        source = group(module)
        for target, line in targets:
            destination = group(target)
            if source is None or destination is None or destination == source:
                continue
            if LAYERS[destination] >= LAYERS[source]:
                offenders.append(f"{module}:{line} imports {target} ({destination} is not below {source})")
    assert not offenders, "upward or sideways imports:\n" + "\n".join(offenders)


def test_no_import_cycles(graph):
    """Between modules, inside packages too (a package's __init__ re-exporting its own stage module is no cycle)."""
    edges = {m: sorted({t for t, _ in targets if t != m and not m.startswith(t + ".")}) for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_pure_layers_import_nothing_above_them(graph):
    """data_schemas knows nothing of alignment; rl is tensors in, tensors out."""
    for module, targets in graph.items():
        if group(module) in ("data_schemas", "alignment.rl"):
            outside = [t for t, _ in targets if group(t) != group(module)]
            assert not outside, f"{module} imports {outside}"


def test_stage_scripts_only_call_the_cli(graph):
    for module, targets in graph.items():
        if module.startswith("stages.") and not module.endswith("__init__"):
            assert [t for t, _ in targets] == ["alignment.cli"], f"{module} imports {targets}: scripts hold no logic"


def test_no_module_is_over_the_size_limit():
    """A module past ~400 lines does two jobs; split it by job (bench/ and tests/ are exempt)."""
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in all_modules().items()}
    too_big = {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not too_big, f"modules over {MAX_MODULE_LINES} lines: {too_big}"


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The graph walker sees a function-local import and resolves ``from package import module``."""
    modules = {"alignment.core.config": Path(), "alignment.ppo": Path(), "alignment.ppo.loop": Path()}
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from alignment.ppo import loop\n    import alignment.core.config.x\n")
    assert imported_modules(source, modules) == [("alignment.ppo.loop", 2), ("alignment.core.config", 3)]
    assert group("alignment.ppo.loop") == "alignment.ppo" and group("alignment") is None


def test_contributing_maps_every_module():
    """CONTRIBUTING.md is the map: a module it does not name is one a newcomer cannot place."""
    text = (REPO_ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    missing = [
        str(path.relative_to(REPO_ROOT))
        for name, path in all_modules().items()
        if path.name != "__init__.py" and path.name not in text
    ]
    assert not missing, f"modules CONTRIBUTING.md does not map: {missing}"


# Declared dependencies the library never imports itself: transformers uses them on its behalf.
USED_THROUGH_TRANSFORMERS = {
    "bitsandbytes": "BitsAndBytesConfig quantizes with it (load_in_8bit / load_in_4bit)",
    "gguf": "from_pretrained(gguf_file=...) reads the embedded models' GGUF files with it",
}
IMPORT_NAMES = {"pyyaml": "yaml"}


def test_every_declared_dependency_is_used():
    """A runtime dependency the library does not use goes (trl was one until DPO was measured against it)."""
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0].lower() for spec in declared]
    sources = "\n".join(
        path.read_text(encoding="utf-8")
        for folder in ("alignment", "data_schemas", "stages")
        for path in (REPO_ROOT / folder).rglob("*.py")
    )
    unused = [
        name
        for name in names
        if name not in USED_THROUGH_TRANSFORMERS
        and not re.search(rf"^\s*(import|from) {IMPORT_NAMES.get(name, name)}\b", sources, flags=re.MULTILINE)
    ]
    assert not unused, f"declared in pyproject.toml but imported by no module: {unused}"
