"""Every import points down the layers (../shared/LAYOUT.md, README "The system, box by box").

The AST of every module of every package is walked, imports inside functions included, so a lazy
import cannot hide an upward dependency; string imports (``importlib.import_module("...")``) count
too. Within a package, the import graph has no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> layer; a module may import only from its own package or from lower layers.
LAYERS = {
    "encoders": 0,
    "decoders": 0,
    "projections": 1,
    "anyany": 2,
    "training": 3,
    "miniature": 4,
    "serving": 5,
}


def _modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Absolute module names imported by the module ``name`` at ``path``, with line numbers."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
                # ``from . import a, b`` imports submodules a and b
                out += [(f"{target}.{alias.name}" if not node.module else target, node.lineno) for alias in node.names]
            else:
                out.append((node.module, node.lineno))
        elif isinstance(node, ast.Call):
            func = node.func
            called = getattr(func, "attr", None) or getattr(func, "id", None)
            if called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                if isinstance(node.args[0].value, str):
                    out.append((node.args[0].value, node.lineno))
    return out


def _all_modules():
    return {name: path for package in LAYERS if (ROOT / package).is_dir() for name, path in _modules(package)}


def test_layer_table_covers_every_package():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "bench"} <= set(LAYERS), "a new top-level package needs a layer in this test"


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_imports_point_down(package):
    if not (ROOT / package).is_dir():
        pytest.skip(f"{package}/ is not in this checkout")
    own = LAYERS[package]
    upward = []
    for name, path in _modules(package):
        for target, line in _imports(name, path):
            top = target.split(".")[0]
            if top == package or top not in LAYERS:
                continue
            if LAYERS[top] > own or (LAYERS[top] == own and top != package):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target} (layer {LAYERS[top]} > {own})"
                              if LAYERS[top] > own else
                              f"{path.relative_to(ROOT)}:{line} imports its sibling {target} (both layer {own})")
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_no_import_cycle_within_a_package():
    modules = _all_modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target, _ in _imports(name, path):
            # the deepest project module the import names (``from .base import X`` -> package.base)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target.split(".")[0] == name.split(".")[0]:
                deps.add(target)
        graph[name] = deps
    # a package's __init__ re-exports its modules; edges into an __init__ from its own modules are
    # the only cycles that Python resolves by design, so they are left out
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}

    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layering_check_sees_an_upward_import(tmp_path):
    """The walker finds lazy, relative and string imports (so the tests above can fail)."""
    src = tmp_path / "mod.py"
    src.write_text(
        "import importlib\n"
        "def f():\n"
        "    from training.cli import register\n"
        "    importlib.import_module('miniature.cli')\n"
        "from ..pipeline import AnyToAnyPipeline\n"
    )
    found = {t for t, _ in _imports("anyany.sub.mod", src)}
    assert {"training.cli", "miniature.cli", "anyany.pipeline"} <= found
