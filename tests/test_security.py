"""No secret in records, logs or errors; HTTP refuses strangers; retention prunes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fake_messages_api import Fault, MessagesAPIServer

from qmcp.agentframework import service
from qmcp.agentframework.models import ExecutionStatus
from qmcp.agentframework.store import Store

pytestmark = pytest.mark.anyio
SENTINEL = "sk-ant-SENTINEL-7c1e0f9a4b"
BIN = Path(sys.executable).parent


@pytest.fixture
def api() -> Iterator[MessagesAPIServer]:
    with MessagesAPIServer() as server:
        yield server


def dump_database(db_file: Path) -> str:
    connection = sqlite3.connect(db_file)
    tables = [r[0] for r in connection.execute("select name from sqlite_master where type='table'")]
    return json.dumps(
        {t: connection.execute(f'select * from "{t}"').fetchall() for t in tables}, default=str
    )


def test_the_api_key_never_reaches_records_logs_or_errors(
    api: MessagesAPIServer, tmp_path: Path
) -> None:
    db_file = tmp_path / "agent.db"
    env = {
        **os.environ,
        "QMCP_DATABASE_URL": f"sqlite+aiosqlite:///{db_file}",
        "ANTHROPIC_API_KEY": SENTINEL,
        "ANTHROPIC_BASE_URL": api.base_url,
        "QMCP_LOG_LEVEL": "DEBUG",
    }
    api.enqueue(Fault.unauthorized(), Fault.server_error(), Fault.server_error())

    def qmcp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "qmcp"), "-v", *args], env=env, capture_output=True, text=True, timeout=120
        )

    outputs = [
        qmcp("agents", "create", "claude_agent", "executor", "--model", "claude-sonnet-4-5"),
        qmcp("agents", "topologies", "create", "t", "pipeline", "--slot", "a=claude_agent"),
        qmcp(
            "agents",
            "topologies",
            "run",
            "t",
            "--input-json",
            '{"prompt": "hi"}',
            "--max-retries",
            "1",
        ),
        qmcp("agents", "topologies", "run", "t", "--input-json", '{"prompt": "hi"}'),
        qmcp("executions", "list", "--format", "json"),
    ]
    mcp_stdin = "".join(
        json.dumps(m) + "\n"
        for m in (
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "0"},
                },
            },
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {
                    "name": "topologies_run",
                    "arguments": {"topology": "t", "input": {"prompt": "x"}},
                },
            },
        )
    )
    api.enqueue(Fault.unauthorized())
    server = subprocess.run(
        [str(BIN / "qmcp-server")],
        input=mcp_stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    seen = "".join(o.stdout + o.stderr for o in [*outputs, server]) + dump_database(db_file)
    assert "401" in seen and "authentication_error" in seen, "the failures were really exercised"
    assert SENTINEL not in seen
    assert SENTINEL[-8:] not in seen


def start_http(tmp_path: Path, *extra: str, **environ: str) -> subprocess.Popen[str]:
    env = {**os.environ, "QMCP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/h.db", **environ}
    return subprocess.Popen(
        [str(BIN / "qmcp"), "serve", "--transport", "http", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_binding_beyond_loopback_requires_a_token(tmp_path: Path) -> None:
    process = start_http(tmp_path, "--host", "0.0.0.0", "--port", "0")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "QMCP_HTTP_TOKEN" in stderr and "Traceback" not in stderr


async def test_retention_prunes_finished_executions_only(db_url: str) -> None:
    await service.create_agent("a", "executor", model="offline", db_url=db_url)
    await service.create_topology("p", "pipeline", {"s": "a"}, db_url=db_url)
    done = await service.run_topology("p", {"prompt": "x"}, db_url=db_url)
    store = Store(db_url)
    running = await service.run_topology("p", {"prompt": "y"}, db_url=db_url)
    await store.update_execution(running.execution_id, status=ExecutionStatus.RUNNING)
    assert await service.prune_executions(1, db_url=db_url) == 0, "nothing is older than a day"
    assert await store.prune(timedelta(seconds=-1)) == 1
    remaining = {e.id for e in await store.list_executions()}
    assert remaining == {running.execution_id}
    assert await store.invocations(done.execution_id) == []
    qmcp = subprocess.run(
        [str(BIN / "qmcp"), "executions", "prune", "--older-than-days", "0"],
        env={**os.environ, "QMCP_DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert qmcp.returncode == 0 and "deleted 0 execution(s)" in qmcp.stdout
