"""The architecture, read from the code: layers only point down and no import makes a circle.

Layers (README "Architecture"): the application (``cli`` and its modules, ``experiment``,
``featuresets``, ``predict``, ``export``, ``report``, ``headfile``) may use the core and
``classifiers``; the core (every other ``featurestore`` module) uses neither; ``classifiers``
uses neither ``featurestore`` nor torch. Every import is read with :mod:`ast`, at module level
or inside functions alike (a lazy import still ties two modules), except those under
``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("featurestore", "classifiers")
APPLICATION = {
    "featurestore.cli",
    "featurestore.cli.__main__",
    "featurestore.cli.cache",
    "featurestore.cli.extracting",
    "featurestore.cli.group",
    "featurestore.cli.heads",
    "featurestore.cli.stores",
    "featurestore.cli.terminal",
    "featurestore.export",
    "featurestore.experiment",
    "featurestore.featuresets",
    "featurestore.predict",
    "featurestore.report",
    "featurestore.headfile",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _import_nodes_of(child))
            continue
        yield from _import_nodes_of(node)


def _import_nodes_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _import_nodes(node)


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules ``name`` imports: project modules by full name, others by top package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.add(sub if sub in known else base)
    return {m for m in found if m != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle among the graph's own modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _top(module: str) -> str:
    return module.split(".")[0]


def _in_application(module: str) -> bool:
    """An application module, or a module of an application package (featurestore.report.*)."""
    return any(module == name or module.startswith(f"{name}.") for name in APPLICATION)


def test_the_graph_sees_every_module_and_lazy_imports() -> None:
    graph = import_graph()
    assert {"featurestore.cli", "featurestore.extraction", "classifiers.heads"} <= set(graph)
    # extract() imports the pipeline only inside a function: that edge must still be seen
    assert "featurestore.pipeline" in graph["featurestore.extraction"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"numpy"}}) is None


def test_no_import_cycles() -> None:
    assert find_cycle(import_graph()) is None


def test_the_core_imports_neither_classifiers_nor_the_application() -> None:
    bad = {
        name: sorted(m for m in deps if _top(m) == "classifiers" or _in_application(m))
        for name, deps in import_graph().items()
        if _top(name) == "featurestore" and not _in_application(name)
    }
    assert {k: v for k, v in bad.items() if v} == {}


#: Torch may be used inside a batched head's ``fit`` (issue 11): ``classifiers.linear`` imports
#: it, and its private solver module, only inside functions, as ``classifiers.mlp`` imports
#: torch's fused Adam; importing ``classifiers`` and predicting with a fitted head stay
#: torch-free (tests/classifiers/test_heads.py, test_linear.py check that at run time).
TORCH_INSIDE_FIT = {"classifiers.linear", "classifiers._torch_linear", "classifiers.mlp"}


def test_classifiers_import_neither_featurestore_nor_torch() -> None:
    bad = {
        name: sorted(
            m
            for m in deps
            if _top(m) == "featurestore"
            or (_top(m) in ("torch", "torchvision") and name not in TORCH_INSIDE_FIT)
        )
        for name, deps in import_graph().items()
        if _top(name) == "classifiers"
    }
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("name", sorted(APPLICATION))
def test_every_application_module_exists(name: str) -> None:
    assert name in import_graph(), f"{name} is named a layer but is gone; update APPLICATION"
