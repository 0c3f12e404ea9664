"""No import loop in bench/: a module never imports (at module level or inside a function) a module that imports it
back, directly or through others. Names imported for type hints only (`if TYPE_CHECKING:`) never run and do not
count. The graph is built from the source with `ast` and searched for cycles with networkx (a dependency of torch)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

BENCH = Path(__file__).parents[1] / "bench"
# bench/models/llm/ is being reworked for GGUF sources (issue 32 leaves it to that work); its own loop
# (source <-> checkpoint) is the one left.
REWORKED = "bench.models.llm."


def module_name(path: Path) -> str:
    parts = path.relative_to(BENCH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except the bodies of `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def import_graph() -> nx.DiGraph:
    modules = {module_name(p): p for p in BENCH.rglob("*.py")}
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `import bench.x.y` as a name: its nearest module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph.add_edge(name, target)
    return graph


def test_the_graph_sees_module_and_function_level_imports_but_not_type_hints():
    graph = import_graph()
    assert graph.has_edge("bench.config.schema", "bench.models.registry")  # module level
    assert graph.has_edge("bench.config.resolve", "bench.models.checkpoint2d")  # inside resolve's helper
    assert not graph.has_edge("bench.models.backbones", "bench.config")  # `if TYPE_CHECKING:` only


def test_no_import_loop():
    loops = [c for c in nx.simple_cycles(import_graph()) if not all(m.startswith(REWORKED) for m in c)]
    assert not loops, "import loops: " + "; ".join(" -> ".join([*c, c[0]]) for c in loops)


def test_the_registry_imports_no_model_code():
    assert set(import_graph().successors("bench.models.registry")) == set()
