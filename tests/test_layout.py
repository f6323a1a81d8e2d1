"""The package layout: imports point one way along the data path, with no cycle, and the run path never
imports the cost model (docs/design.md §4). Read from the source with ``ast``: imports inside functions
and under ``TYPE_CHECKING`` count as much as top-level ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "coral_bench"
# Lower layers never import higher ones; packages of one layer do not import each other.
LAYERS = (
    ("paths",),
    ("core",),
    ("drafters",),
    ("metrics",),
    ("rundir",),
    ("run",),
    ("costmodel", "train"),
    ("report",),
    ("cli",),
    ("__main__",),
)
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(module: str, path: Path) -> set[str]:
    """coral_bench modules that ``module`` imports, resolved to the deepest existing module name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return {n for n in names if n == "coral_bench" or n.startswith("coral_bench.")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: {i for i in _imports(m, p) if i in modules and i != m} for m, p in modules.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_layer():
    tops = {_top(m) for m in _modules()} - {""}
    assert tops <= set(RANK), f"packages without a layer in LAYERS: {sorted(tops - set(RANK))}"


def test_imports_point_down_the_layers():
    upward = [f"{m} imports {i}" for m, deps in _graph().items() for i in deps
              if _top(m) and _top(i) and _top(m) != _top(i) and RANK[_top(i)] >= RANK[_top(m)]]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_the_run_path_never_imports_the_cost_model():
    graph = _graph()
    reached, todo = set(), ["coral_bench.run.runner"]
    while todo:
        m = todo.pop()
        if m not in reached:
            reached.add(m)
            todo.extend(graph.get(m, ()))
    assert not [m for m in reached if _top(m) in ("costmodel", "train", "report", "cli")], sorted(reached)


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph[m]):
            if d == m.rpartition(".")[0] or m == d.rpartition(".")[0]:
                continue  # a package and its own modules (an __init__ re-exporting them)
            if state.get(d) == "open":
                cycles.append(" → ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("layer", ["core", "drafters", "metrics", "rundir"])
def test_lower_layers_do_no_command_line_work(layer):
    """The loop, the drafters, the metrics and the run-directory code never import click or rich."""
    offenders = [str(p.relative_to(PACKAGE)) for p in (PACKAGE / layer).rglob("*.py")
                 if {"click", "rich"} & {n.split(".")[0] for n in _all_imports(p)}]
    assert not offenders, offenders


def _all_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module)
    return out
