"""Many runs at once: 50 concurrent MCP calls over HTTP, and processes sharing one SQLite file."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from mcp import Client

from qmcp.agentframework import service
from qmcp.agentframework.store import Store

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.postgres]
BIN = Path(sys.executable).parent


async def assert_intact(db_url: str, expected_runs: int, keys_per_run: int) -> None:
    store = Store(db_url)
    executions = await store.list_executions(limit=1000)
    assert len(executions) == expected_runs
    for execution in executions:
        assert execution.status == "completed", (execution.status, execution.error)
        completed = Counter(
            i.key for i in await store.invocations(execution.id) if i.status == "completed"
        )
        assert len(completed) == keys_per_run and set(completed.values()) == {1}
        assert execution.invocation_count == keys_per_run


async def test_fifty_concurrent_runs_over_http(db_url: str, tmp_path: Path) -> None:
    await service.create_agent("c_a", "specialist", model="offline", db_url=db_url)
    await service.create_agent("c_b", "specialist", model="offline", db_url=db_url)
    await service.create_agent("c_s", "synthesizer", model="offline", db_url=db_url)
    await service.create_topology(
        "c_ens",
        "ensemble",
        {"ensemble_0": "c_a", "ensemble_1": "c_b", "aggregator": "c_s"},
        config={"aggregation_method": "synthesis"},
        db_url=db_url,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "QMCP_DATABASE_URL": db_url, "QMCP_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [str(BIN / "qmcp"), "serve", "--transport", "http", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/mcp"

        async def caller(index: int) -> list[str]:
            statuses = []
            async with Client(url, mode="legacy" if index % 2 else "auto") as client:
                for n in range(10):
                    result = await client.call_tool(
                        "topologies_run",
                        {
                            "topology": "c_ens",
                            "input": {"prompt": f"q{index}-{n}"},
                            "runner": "async",
                        },
                    )
                    assert not result.is_error, result.content
                    statuses.append(result.structured_content["status"])  # type: ignore[index]
            return statuses

        results = await asyncio.gather(*(caller(i) for i in range(5)))
        statuses = [s for batch in results for s in batch]
        assert statuses == ["completed"] * 50
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=20)
    assert b"database is locked" not in stderr
    await assert_intact(db_url, 50, 3)


SCRIPT = """
import asyncio, sys
from qmcp.agentframework import service
async def main():
    for n in range(6):
        prompt = {"prompt": f"{sys.argv[1]}-{n}"}
        result = await service.run_topology("shared", prompt, runner_type="async")
        assert result.status == "completed", result.error
asyncio.run(main())
"""


async def test_processes_share_one_database(db_url: str) -> None:
    await service.create_agent("p_a", "executor", model="offline", db_url=db_url)
    await service.create_agent("p_b", "executor", model="offline", db_url=db_url)
    await service.create_topology("shared", "pipeline", {"a": "p_a", "b": "p_b"}, db_url=db_url)
    env = {**os.environ, "QMCP_DATABASE_URL": db_url}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(i)], env=env, stderr=subprocess.PIPE, text=True
        )
        for i in range(4)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr
        assert "locked" not in stderr
    await assert_intact(db_url, 24, 2)
