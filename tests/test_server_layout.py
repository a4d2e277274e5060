"""How the MCP server is put together: its imports, read from the source (function-level imports
count), and what building it loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "qmcp_server"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, typing_only: bool = True) -> set[str]:
    """Every module the file imports, at any depth of the code; `typing_only=False` leaves out
    what is imported under `if TYPE_CHECKING:` (annotations, never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def server_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(p) if m in files and m != name} for name, p in files.items()}


def test_no_import_cycles_in_the_server_even_through_function_level_imports() -> None:
    graph = server_graph()
    assert "qmcp_server.http" in graph and "qmcp_server.server" in graph

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                if nxt == goal:
                    return True
                seen.add(nxt)
                todo.append(nxt)
        return False

    cycles = [name for name in graph if reaches(name, name)]
    assert not cycles, f"modules on an import cycle: {cycles}"
    assert "qmcp_server.server" not in graph["qmcp_server.http"]
    assert "qmcp_server.http" not in graph["qmcp_server.server"]


def test_the_server_reaches_the_library_through_the_service_layer() -> None:
    """Runners and the store are the service's business: the server neither calls nor imports
    them (type annotations aside), so the CLI and the server cannot disagree."""
    offenders = {
        module_name(path): sorted(
            m
            for m in imports(path, typing_only=False)
            if m.startswith(("qmcp.agentframework.runners", "qmcp.agentframework.store"))
        )
        for path in PACKAGE.rglob("*.py")
    }
    assert not {name: found for name, found in offenders.items() if found}
    # Imports by name (importlib) would hide a dependency from this test and its types from mypy.
    hidden = [module_name(p) for p in PACKAGE.rglob("*.py") if "importlib" in imports(p)]
    assert not hidden, hidden


@pytest.mark.slow  # a fresh interpreter
def test_building_the_server_loads_no_database_layer() -> None:
    """stdio cold start: `initialize` and `tools/list` are answered without SQLModel or
    SQLAlchemy; the first tool call that needs the service layer imports it."""
    code = (
        "import sys\n"
        "from qmcp_server.server import build_server\n"
        "server = build_server()\n"
        "print(sorted(m for m in ('sqlmodel', 'sqlalchemy', 'qmcp.agentframework.service') "
        "if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
