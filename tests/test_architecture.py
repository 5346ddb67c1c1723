"""The package's one arrow direction (DESIGN.md): no module imports, even lazily inside a function, a module
that imports it back (issue 13, item 10: distributed.py took resolve_device from the trainer)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "scorelab"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the scorelab modules it imports anywhere in its text (package __init__ files as their package)."""
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:                     # `from . import losses` names a module
                    deps.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("scorelab")}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (depth-first search), or None."""
    state: dict[str, int] = {}                               # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return trail[trail.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, trail + [dep])):
                return found
        state[node] = 2
        return None

    return next((c for m in sorted(graph) if m not in state and (c := visit(m, [m]))), None)


def test_the_module_graph_has_no_cycle():
    graph = _imports()
    graph.pop("scorelab")                                    # the package root re-exports everything
    for deps in graph.values():
        deps.discard("scorelab")
    assert len(graph) > 30 and any(graph.values())          # the graph really was read
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]   # the search finds one
