"""The real server over real transports: a stdio subprocess, HTTP on 127.0.0.1, the Inspector."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client, StdioServerParameters

# Every test starts the server as a process (stdio, HTTP) or the Inspector: the full suite, not the
# fast tier; tests/test_mcp_inprocess.py drives the same tools in process.
pytestmark = [pytest.mark.anyio, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODES = [pytest.param({}, id="stateless-2026"), pytest.param({"mode": "legacy"}, id="legacy")]


def server_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update({"QMCP_DATABASE_URL": db_url, "QMCP_LOG_LEVEL": "WARNING", **extra})
    return env


async def exercise(client: Client) -> dict[str, Any]:
    """Create two offline agents and a pipeline, run it, and read the record back."""
    tools = {t.name for t in (await client.list_tools()).tools}
    assert {"topologies_run", "executions_get", "agents_create"} <= tools
    for name, role in (("t_plan", "planner"), ("t_do", "executor")):
        created = await client.call_tool(
            "agents_create", {"name": name, "role": role, "model": "offline"}
        )
        assert not created.is_error, created.content
    made = await client.call_tool(
        "topologies_create",
        {"name": "t_pipe", "topology_type": "pipeline", "slots": {"a": "t_plan", "b": "t_do"}},
    )
    assert not made.is_error, made.content
    run = await client.call_tool(
        "topologies_run", {"topology": "t_pipe", "input": {"prompt": "hi"}}
    )
    assert not run.is_error, run.content
    outcome = run.structured_content
    assert outcome is not None and outcome["status"] == "completed"
    record = await client.read_resource(outcome["resource_uri"])
    data = json.loads(record.contents[0].text)  # type: ignore[union-attr]
    assert len(data["invocations"]) == 2
    return outcome


@pytest.mark.postgres
@pytest.mark.parametrize("kwargs", MODES)
async def test_stdio_subprocess(kwargs: dict[str, Any], db_url: str, tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=str(BIN / "qmcp-server"), env=server_env(db_url), cwd=str(tmp_path)
    )
    async with Client(params, **kwargs) as client:
        outcome = await exercise(client)
    assert outcome["output"]["content"].startswith("[offline model]")


async def test_python_dash_m_and_qmcp_serve_speak_stdio(db_url: str, tmp_path: Path) -> None:
    for command, args in ((sys.executable, ["-m", "qmcp_server"]), (str(BIN / "qmcp"), ["serve"])):
        params = StdioServerParameters(
            command=command, args=args, env=server_env(db_url), cwd=str(tmp_path)
        )
        async with Client(params, mode="legacy") as client:
            assert len((await client.list_tools()).tools) >= 13


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_http(
    db_url: str, tmp_path: Path, host: str = "127.0.0.1", **env: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "qmcp"), "serve", "--transport", "http", "--host", host, "--port", str(port)],
        env=server_env(db_url, **env),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode())  # type: ignore[union-attr]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, port
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("HTTP server did not start")


@pytest.fixture
def http_server(db_url: str, tmp_path: Path) -> Iterator[int]:
    process, port = start_http(db_url, tmp_path)
    yield port
    process.terminate()
    process.wait(10)


@pytest.mark.parametrize("kwargs", MODES)
async def test_streamable_http(kwargs: dict[str, Any], http_server: int) -> None:
    async with Client(f"http://127.0.0.1:{http_server}/mcp", **kwargs) as client:
        await exercise(client)


def test_health_route_and_foreign_host_refused(http_server: int) -> None:
    health = httpx.get(f"http://127.0.0.1:{http_server}/health")
    assert health.json()["status"] == "ok"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    evil_host = httpx.post(
        f"http://127.0.0.1:{http_server}/mcp",
        json=body,
        headers={**headers, "Host": "evil.example:80"},
    )
    assert evil_host.status_code == 421
    evil_origin = httpx.post(
        f"http://127.0.0.1:{http_server}/mcp",
        json=body,
        headers={**headers, "Origin": "http://evil.example"},
    )
    assert evil_origin.status_code == 403


async def test_bearer_token_required_when_set(db_url: str, tmp_path: Path) -> None:
    token = "sentinel-token-5a1f"
    process, port = start_http(db_url, tmp_path, QMCP_HTTP_TOKEN=token)
    try:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        headers = {"Accept": "application/json, text/event-stream"}
        refused = httpx.post(f"http://127.0.0.1:{port}/mcp", json=body, headers=headers)
        assert refused.status_code == 401
        assert token not in refused.text
        wrong = httpx.post(
            f"http://127.0.0.1:{port}/mcp",
            json=body,
            headers={**headers, "Authorization": "Bearer nope"},
        )
        assert wrong.status_code == 401
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
            transport = streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)
            async with Client(transport, mode="legacy") as client:
                assert len((await client.list_tools()).tools) >= 13
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert token not in stderr.decode()


def test_refuses_to_bind_beyond_loopback_without_a_token(db_url: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "qmcp"), "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "1"],
        env=server_env(db_url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "QMCP_HTTP_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


INSPECTOR = ROOT / "node_modules" / ".bin" / "mcp-inspector"


def inspector(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        "npx",
        "--no-install",
        "@modelcontextprotocol/inspector",
        "--cli",
        "-e",
        f"QMCP_DATABASE_URL={db_url}",
        "-e",
        "QMCP_LOG_LEVEL=WARNING",
        str(BIN / "qmcp-server"),
        *args,
    ]
    env = {**os.environ, "MCP_CATALOG_PATH": str(tmp_path / "catalog.json")}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("npx") is None, reason="Node.js is not installed")
def test_mcp_inspector_cli_drives_the_server(db_url: str, tmp_path: Path) -> None:
    assert INSPECTOR.exists(), "run `npm ci` (scripts/test.sh does) to install the MCP Inspector"
    listed = inspector(db_url, tmp_path, "--method", "tools/list")
    assert listed.returncode == 0, listed.stderr
    names = {t["name"] for t in json.loads(listed.stdout)["tools"]}
    assert "topologies_run" in names
    for name, role in (("i_plan", "planner"), ("i_do", "executor")):
        created = inspector(
            db_url,
            tmp_path,
            "--method",
            "tools/call",
            "--tool-name",
            "agents_create",
            "--tool-arg",
            f"name={name}",
            f"role={role}",
            "model=offline",
        )
        assert created.returncode == 0, created.stdout + created.stderr
    made = inspector(
        db_url,
        tmp_path,
        "--method",
        "tools/call",
        "--tool-name",
        "topologies_create",
        "--tool-arg",
        "name=i_pipe",
        "topology_type=pipeline",
        'slots={"a": "i_plan", "b": "i_do"}',
    )
    assert made.returncode == 0, made.stdout + made.stderr
    ran = inspector(
        db_url,
        tmp_path,
        "--method",
        "tools/call",
        "--tool-name",
        "topologies_run",
        "--tool-arg",
        "topology=i_pipe",
        'input={"prompt": "inspect me"}',
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert '"completed"' in ran.stdout
    missing = inspector(
        db_url,
        tmp_path,
        "--method",
        "tools/call",
        "--tool-name",
        "topologies_run",
        "--tool-arg",
        "topology=ghost",
        'input={"prompt": "x"}',
    )
    assert missing.returncode == 5, missing.stdout + missing.stderr
    assert "no topology named 'ghost'" in missing.stdout + missing.stderr


def test_stdout_carries_only_json_rpc(db_url: str, tmp_path: Path) -> None:
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": "agents_create", "arguments": {"name": "x", "role": "wizard"}},
        },
        {
            "jsonrpc": "2.0",
            "id": 4,
            "method": "tools/call",
            "params": {"name": "executions_list", "arguments": {}},
        },
    ]
    errors = (tmp_path / "stderr.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "qmcp-server")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        env=server_env(db_url, QMCP_LOG_LEVEL="DEBUG"),
        cwd=tmp_path,
    )
    assert process.stdin is not None and process.stdout is not None
    for message in messages:
        process.stdin.write(json.dumps(message) + "\n")
    process.stdin.flush()
    replies = []
    while len([r for r in replies if "id" in r]) < 4:  # every line is JSON-RPC, or this fails
        line = process.stdout.readline()
        assert line, (tmp_path / "stderr.log").read_text()
        replies.append(json.loads(line))
    process.stdin.close()
    rest = process.stdout.read()
    process.wait(30)
    errors.close()
    replies += [json.loads(line) for line in rest.splitlines() if line.strip()]
    assert all(r.get("jsonrpc") == "2.0" for r in replies)
    by_id = {r["id"]: r for r in replies if "id" in r}
    assert set(by_id) == {1, 2, 3, 4}
    assert by_id[3]["result"]["isError"] is True
    assert "Traceback" not in rest
