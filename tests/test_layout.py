"""The package's imports point one way: no module imports one that (through others) imports
it back, function-level imports included (only imports for type checking may look up)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vqclip"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The vqclip modules ``path`` imports, at any depth of its code but under TYPE_CHECKING;
    ``from vqclip.ui import estimate`` counts as importing vqclip.ui.estimate."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in ast.walk(node):
                inner.type_checking = True  # type: ignore[attr-defined]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "type_checking", False):
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vqclip"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("vqclip")}
    return found - {module_name(path)}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(files)) for name, path in files.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt == "vqclip":  # the package root holds only the version and lazy names
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_module_imports_back_up():
    cycle = find_cycle(graph())
    assert cycle is None, "an import cycle: " + " -> ".join(cycle)


def test_the_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_timeline_and_the_steering_box_sit_where_the_layout_says():
    edges = graph()
    assert "vqclip.engine" not in edges["vqclip.timeline"]  # the engine uses it, not back
    assert edges["vqclip.ui.sweep_tab"].isdisjoint({"vqclip.ui.panel", "vqclip.ui"})


def test_the_settings_modules_import_one_way():
    """config.py's concerns, bottom up: checks -> prompt_syntax -> settings -> validation ->
    config; none imports one above it, and none imports torch's side of the package."""
    edges = graph()
    order = ["checks", "prompt_syntax", "settings", "validation", "config"]
    for low, name in enumerate(order):
        above = {f"vqclip.{other}" for other in order[low + 1 :]}
        assert edges[f"vqclip.{name}"].isdisjoint(above), name
        assert edges[f"vqclip.{name}"] <= {f"vqclip.{o}" for o in order[:low]} | {
            "vqclip.schedules",
            "vqclip.registry",
            "vqclip.ensemble",  # the CLIP setting's syntax: it imports only checks
        }, name
    assert graph()["vqclip.ensemble"] <= {"vqclip.checks", "vqclip.registry"}
