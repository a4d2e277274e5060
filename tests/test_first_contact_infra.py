"""First contact (issue 11, point 3): a database that cannot be opened, a malformed URL, a driver
that is not installed, a path in a missing or unwritable place are one line with the cause and
the fix, in the CLI (exit 2, no traceback) and in every MCP tool result; the server says where its
database is when it starts, and starts even when it cannot open it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from qmcp_server.server import build_server

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODES = [pytest.param({}, id="stateless-2026"), pytest.param({"mode": "legacy"}, id="legacy")]
SET_URL = "set QMCP_DATABASE_URL (or --database-url)"
PIP_POSTGRES = "pip install 'qmcp-server[postgres]'"

pytestmark = pytest.mark.anyio

# asyncpg is installed here: this makes it not importable, as on a machine without the extra.
BLOCK_ASYNCPG = textwrap.dedent(
    """
    import sys

    class NoAsyncpg:
        def find_spec(self, name, path=None, target=None):
            if name == "asyncpg" or name.startswith("asyncpg."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoAsyncpg())
    """
)


def bad_urls(tmp_path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (URL, what the one line must say: the cause, then the fix)."""
    (tmp_path / "afile").write_text("a file where a directory is expected\n")
    return {
        "file-as-directory": (
            f"sqlite+aiosqlite:///{tmp_path}/afile/sub/db.sqlite",
            ["Not a directory", f"{tmp_path}/afile/sub", "must exist", "writable", SET_URL],
        ),
        "under-proc": (
            "sqlite+aiosqlite:////proc/qmcp-first-contact/db.sqlite",
            ["No such file or directory", "/proc/qmcp-first-contact", "writable", SET_URL],
        ),
        "unopenable-file": (
            "sqlite+aiosqlite:////proc/qmcp-first-contact.db",
            ["unable to open database file", "writable", SET_URL],
        ),
        "malformed": (
            "sqlite+aiosqlite:/x",
            ["invalid database URL 'sqlite+aiosqlite:/x'", SET_URL, "sqlite+aiosqlite:///PATH"],
        ),
        "unknown-kind": (
            "nonsense://",
            ["unknown kind of database 'nonsense'", SET_URL, "postgresql+asyncpg://"],
        ),
        "sync-postgres-driver": (
            "postgresql://user@127.0.0.1:1/db",
            ["not installed", "postgresql+asyncpg://", PIP_POSTGRES],
        ),
    }


NO_ASYNCPG_URL = "postgresql+asyncpg://user:secret@127.0.0.1:1/db"
NO_ASYNCPG_SAYS = ["the database driver asyncpg is not installed", PIP_POSTGRES]


def env(tmp_path: Path, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "QMCP_DATABASE_URL": url,
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "PYTHONPATH": str(ROOT),
    }


def run_cli(
    tmp_path: Path, url: str, *args: str, block: bool = False
) -> subprocess.CompletedProcess[str]:
    code = (BLOCK_ASYNCPG if block else "import sys\n") + (
        f"sys.argv = ['qmcp', *{list(args)!r}]\nfrom qmcp.agentframework.cli import main\nmain()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env(tmp_path, url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_error_line(done: subprocess.CompletedProcess[str], says: list[str]) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    for piece in says:
        assert piece in lines[0], (piece, lines[0])
    assert done.stderr.endswith("\n")


# -- the CLI -------------------------------------------------------------------------------------


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
@pytest.mark.parametrize(
    "case",
    [
        "file-as-directory",
        "under-proc",
        "unopenable-file",
        "malformed",
        "unknown-kind",
        "sync-postgres-driver",
    ],
)
@pytest.mark.parametrize("command", [["agents", "list"], ["agents", "create", "a1", "planner"]])
def test_cli_says_cause_and_fix_in_one_line(case: str, command: list[str], tmp_path: Path) -> None:
    url, says = bad_urls(tmp_path)[case]
    assert_one_error_line(run_cli(tmp_path, url, *command), says)


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
def test_info_refuses_a_malformed_url_in_one_line(tmp_path: Path) -> None:
    """`qmcp info` opens no database, but a URL it cannot even read is the same one line."""
    url, says = bad_urls(tmp_path)["malformed"]
    assert_one_error_line(run_cli(tmp_path, url, "info"), says)


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
def test_cli_names_the_extra_when_asyncpg_is_not_installed(tmp_path: Path) -> None:
    done = run_cli(tmp_path, NO_ASYNCPG_URL, "agents", "list", block=True)
    assert_one_error_line(done, NO_ASYNCPG_SAYS)
    assert "secret" not in done.stderr  # the password is not shown


# -- MCP tools -------------------------------------------------------------------------------


async def tool_error(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result
    text: str = result.content[0].text  # type: ignore[union-attr]
    return text


@pytest.mark.parametrize("kwargs", MODES)
async def test_every_tool_answers_cause_and_fix(kwargs: dict[str, Any], tmp_path: Path) -> None:
    for url, says in bad_urls(tmp_path).values():
        async with Client(build_server(url), **kwargs) as client:
            for name, arguments in (
                ("agents_list", {}),
                ("agents_create", {"name": "a1", "role": "planner", "model": "offline"}),
                ("topologies_list", {}),
                ("executions_list", {}),
            ):
                text = await tool_error(client, name, arguments)
                for piece in says:
                    assert piece in text, (url, name, piece, text)
                assert "\n" not in text


MCP_NO_ASYNCPG = BLOCK_ASYNCPG + textwrap.dedent(
    """
    import asyncio
    import json

    from mcp import Client

    from qmcp_server.server import build_server


    async def main():
        answers = []
        for kwargs in ({}, {"mode": "legacy"}):
            async with Client(build_server(sys.argv[1]), **kwargs) as client:
                result = await client.call_tool("agents_list", {})
                answers.append([result.is_error, result.content[0].text])
        print(json.dumps(answers))


    asyncio.run(main())
    """
)


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
def test_tools_name_the_extra_when_asyncpg_is_not_installed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", MCP_NO_ASYNCPG, NO_ASYNCPG_URL],
        env=env(tmp_path, NO_ASYNCPG_URL),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(answers) == 2
    for is_error, text in answers:
        assert is_error, text
        for piece in NO_ASYNCPG_SAYS:
            assert piece in text, text
        assert "secret" not in text


# -- the server's start ----------------------------------------------------------------------

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "first-contact", "version": "1"},
    },
}


def start_stdio(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "qmcp-server")],
        input=json.dumps(INITIALIZE) + "\n",
        env=env(tmp_path, url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
def test_the_server_says_where_its_database_is(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/served.db"
    done = start_stdio(tmp_path, url)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["id"] for line in done.stdout.splitlines() if line.strip()] == [1]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"qmcp-server: database {url}" in lines[0], lines
    assert (tmp_path / "served.db").exists()  # checked, so created


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
def test_the_server_starts_on_a_database_it_cannot_open_and_says_why(tmp_path: Path) -> None:
    url, says = bad_urls(tmp_path)["file-as-directory"]
    done = start_stdio(tmp_path, url)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["id"] for line in done.stdout.splitlines() if line.strip()] == [1]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "ERROR" in lines[0] and "every tool that needs the database answers this" in lines[0]
    for piece in says:
        assert piece in lines[0], (piece, lines[0])
