"""The package's shape: no import cycles between its modules, and objectives compared nowhere by name.

Imports are read from the source (every `import`, including those under
TYPE_CHECKING and inside functions), so a cycle hidden behind a lazy import
counts as a cycle too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("partitioner", "cost_models", "targets")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports: `from a.b import c` names a.b.c when that is a module, else a.b."""
    found = set()
    for statement in ast.walk(ast.parse(path.read_text())):
        if isinstance(statement, ast.Import):
            found.update(alias.name for alias in statement.names if alias.name in modules)
        elif isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
            for alias in statement.names:
                submodule = f"{statement.module}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif statement.module in modules:
                    found.add(statement.module)
    return found


def import_graph() -> nx.DiGraph:
    modules = project_modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, imported) for imported in imported_modules(path, modules) if imported != name)
    return graph


def test_the_import_graph_reads_lazy_and_type_checking_imports():
    graph = import_graph()

    assert graph.has_edge("partitioner.plan", "partitioner.reporting.summary")
    assert graph.has_edge("partitioner.placement.objectives", "partitioner.placement.cp_sat_model")


def test_no_module_imports_itself_through_others():
    cycles = list(nx.simple_cycles(import_graph()))

    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(cycle + cycle[:1]) for cycle in cycles)


def test_no_module_but_the_objectives_compares_an_objective():
    comparison = re.compile(r"objective *(==|!=|in) ")
    objectives = ROOT / "partitioner" / "placement" / "objectives.py"
    offenders = [f"{path.relative_to(ROOT)}:{number}" for path in (ROOT / "partitioner").rglob("*.py")
                 if path != objectives
                 for number, line in enumerate(path.read_text().splitlines(), 1) if comparison.search(line)]

    assert offenders == []
