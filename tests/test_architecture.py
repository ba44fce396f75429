"""The rules the tree keeps (README, "Architecture"), checked on the source itself: which package
may import which, no import cycle between modules, SQL against the outcome store only in its
module, and no module over 400 lines."""

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "policies", "orchestrator")
MAX_LINES = 400
RUNTIME = ("engine", "orchestrator", "apscheduler", "aiohttp", "sqlite_utils", "prometheus_client")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(name: str, path: Path) -> set[str]:
    """Modules ``name`` imports (function-level imports included; ``if TYPE_CHECKING:`` left out)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                for a in child.names:  # ``from pkg import module`` names a module
                    found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod)
            visit(child)

    visit(tree)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _violations(prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} imports {i}" for m, imps in GRAPH.items() if m == prefix or m.startswith(prefix + ".")
                  for i in imps if any(i == f or i.startswith(f + ".") for f in forbidden))


def test_the_parser_sees_imports():
    assert "engine.aim.journal" in GRAPH["engine.aim.replication"] or "engine.aim.aimset" in GRAPH["engine.aim.replication"]
    assert "engine.storage.storage" in GRAPH["engine.node"]


def test_engine_imports_neither_policies_nor_orchestrator():
    assert _violations("engine", ("policies", "orchestrator")) == []


def test_policies_import_no_runtime_code():
    assert _violations("policies", RUNTIME) == []


def test_storage_knows_nothing_above_it():
    assert _violations("engine.storage", ("engine.aim", "engine.serve", "engine.client", "engine.node",
                                          "engine.net")) == []
    assert _violations("engine.net", ("engine.storage", "engine.aim", "engine.serve", "engine.node")) == []
    assert _violations("engine.aim", ("engine.serve", "engine.client", "engine.node")) == []


def test_only_the_cli_imports_the_cli():
    users = sorted(m for m, imps in GRAPH.items() if not m.startswith("orchestrator.cli")
                   and m != "orchestrator.__main__"
                   and any(i == "orchestrator.cli" or i.startswith("orchestrator.cli.") for i in imps))
    assert users == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            strong(v)
    return found


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    edges = {m: {i for i in imps if i in MODULES and i != m} for m, imps in GRAPH.items()}
    # a package's __init__ re-exporting its modules is not a cycle of modules
    for m in edges:
        edges[m] = {i for i in edges[m] if not (MODULES[i].name == "__init__.py" and m.startswith(i + "."))}
    assert cycles(edges) == []


SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b", re.I | re.S)


def test_sql_against_the_outcome_store_lives_in_the_store_module():
    offenders = []
    for name, path in MODULES.items():
        if not name.startswith("orchestrator") or name == "orchestrator.store":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"


def test_the_tree_has_the_layers():
    for d in ("engine/storage", "engine/aim", "engine/serve", "engine/net", "engine/client", "orchestrator/cli",
              "orchestrator/schedule", "orchestrator/actions", "orchestrator/demo"):
        assert os.path.exists(ROOT / d / "__init__.py"), d
    assert not list((ROOT / "engine").glob("*.py")) or {p.name for p in (ROOT / "engine").glob("*.py")} <= {
        "__init__.py", "errors.py", "interface.py", "routes.py", "node.py"}
