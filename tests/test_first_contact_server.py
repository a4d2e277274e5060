"""First contact with the server (issue 11): HTTP hardening (10), the URL `serve` listens on (12),
JSON-RPC error codes (13). Real processes and real HTTP wherever it matters."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

BIN = Path(sys.executable).parent
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LISTENING = re.compile(r"^qmcp-server listening on (http://127\.0\.0\.1:(\d+)/mcp)$")
GOOD_TOKEN = "k" * 32
ENTRY_POINTS = [
    pytest.param(["qmcp-server"], id="qmcp-server"),
    pytest.param(["qmcp", "serve"], id="qmcp-serve"),
]


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "QMCP_HTTP"))}
    env.update(
        {
            "QMCP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/agent.db",
            "QMCP_LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    return env


class HttpServer:
    """An HTTP server process on port 0, found through the line it prints on stderr."""

    def __init__(self, command: list[str], tmp_path: Path, **env: str) -> None:
        self.process = subprocess.Popen(
            [str(BIN / command[0]), *command[1:], "--transport", "http", "--port", "0"],
            env=server_env(tmp_path, **env),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self._wait_for_url()
        self.base = self.url.removesuffix("/mcp")

    def _pump(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.stderr.append(line)
            if match := LISTENING.match(line):
                return match.group(1)
        self.process.kill()
        raise AssertionError(f"no 'listening on' line; stderr: {self.stderr}")

    def post(self, **headers: str) -> httpx.Response:
        return httpx.post(self.url, json=INITIALIZE, headers={**MCP_HEADERS, **headers}, timeout=10)

    def stop(self) -> tuple[str, list[str]]:
        self.process.terminate()
        stdout, _ = self.process.communicate(timeout=20)
        while (line := self.lines.get(timeout=5)) is not None:
            self.stderr.append(line)
        return stdout, self.stderr


# -- 12: `serve --transport http` says where it listens ---------------------------------------


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_http_serve_prints_the_url_it_listens_on(command: list[str], tmp_path: Path) -> None:
    server = HttpServer(command, tmp_path)
    try:
        port = int(server.url.rsplit(":", 1)[1].removesuffix("/mcp"))
        assert port > 0  # the bound port, not the 0 that was asked for
        assert httpx.get(f"{server.base}/health", timeout=5).json()["status"] == "ok"
        assert server.post().status_code == 200
    finally:
        stdout, stderr = server.stop()
    assert stdout == ""
    assert sum(1 for line in stderr if "listening on" in line) == 1


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
def test_stdio_writes_nothing_but_json_rpc_to_stdout(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "qmcp-server")],
        input=json.dumps(INITIALIZE) + "\n",
        env=server_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, done.stderr
    assert [json.loads(line)["id"] for line in lines] == [1]
    assert "listening" not in done.stdout + done.stderr


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_a_port_in_use_or_a_foreign_address_exits_2_in_one_line(
    command: list[str], tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for host, port_arg, says in (
            ("127.0.0.1", str(port), "pick another with --port"),
            ("192.0.2.10", "0", "give --host an address of this machine"),
        ):
            options = ["--transport", "http", "--host", host, "--port", port_arg]
            done = subprocess.run(
                [str(BIN / command[0]), *command[1:], *options],
                env=server_env(tmp_path, QMCP_HTTP_TOKEN=GOOD_TOKEN),
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 2, done.stderr
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: cannot listen on"), lines
            assert f"{host}:{port_arg}" in lines[0] and says in lines[0], lines


@pytest.mark.anyio
async def test_http_connections_send_without_waiting_for_acks() -> None:
    """The HTTP server's connections have Nagle's algorithm off (TCP_NODELAY), as asyncio sets it
    on a TCP socket's: with it on, a response body written after its headers waited for the
    client's delayed ACK, ~40 ms a request (bench/results: the HTTP round trip)."""
    import asyncio

    from qmcp_server.http import bind

    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    listening = bind("127.0.0.1", 0)
    server = await asyncio.get_running_loop().create_server(Probe, sock=listening)
    async with server:
        port = listening.getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(seen, 10) != 0, "TCP_NODELAY is off on accepted connections"
        writer.close()


# -- 10: HTTP hardening -----------------------------------------------------------------------


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
@pytest.mark.parametrize("command", ENTRY_POINTS)
@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10"])
def test_a_short_token_beyond_loopback_exits_2_saying_how_to_make_one(
    command: list[str], host: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [str(BIN / command[0]), *command[1:], "--transport", "http", "--host", host, "--port", "0"],
        env=server_env(tmp_path, QMCP_HTTP_TOKEN="t" * 31),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:") and "QMCP_HTTP_TOKEN" in lines[0]
    assert "at least 32 characters" in lines[0]
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in lines[0]
    assert "t" * 31 not in done.stderr


def test_the_suggested_command_makes_a_token_that_is_accepted() -> None:
    from qmcp_server.http import MAKE_TOKEN, MIN_TOKEN_LENGTH, build_http_app
    from qmcp_server.server import build_server

    made = subprocess.run(
        [sys.executable, "-c", MAKE_TOKEN.split('"')[1]], capture_output=True, text=True
    )
    token = made.stdout.strip()
    assert len(token) >= MIN_TOKEN_LENGTH
    build_http_app(build_server(), "0.0.0.0", 8765, token=token)


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """One server for the module: its cases only send `initialize` and read the answer. It starts
    before the per-test environment (tests/conftest.py), so it drops the same variables itself."""
    with pytest.MonkeyPatch.context() as env:
        for name in (
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "QMCP_DEFAULT_MODEL",
            "QMCP_KEY_VARIABLES",
        ):
            env.delenv(name, raising=False)
        server = HttpServer(
            ["qmcp-server"], tmp_path_factory.mktemp("token"), QMCP_HTTP_TOKEN=GOOD_TOKEN
        )
    yield server
    server.stop()


@pytest.mark.slow  # a server process: the full suite, not the fast tier
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(token_server: HttpServer, scheme: str) -> None:
    response = token_server.post(Authorization=f"{scheme} {GOOD_TOKEN}")
    assert response.status_code == 200, response.text
    assert "qmcp-server" in response.text  # the initialize result's serverInfo


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
@pytest.mark.parametrize(
    "authorization",
    [
        "bearer wrong",
        f"BEARER {GOOD_TOKEN}x",
        f"bearer {GOOD_TOKEN[:-1]}",
        f"bearer{GOOD_TOKEN}",
        f"Basic {GOOD_TOKEN}",
        f"Bearerx {GOOD_TOKEN}",
        GOOD_TOKEN,
        "bearer",
        "",
    ],
)
def test_wrong_credentials_are_still_refused(token_server: HttpServer, authorization: str) -> None:
    response = token_server.post(Authorization=authorization)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert GOOD_TOKEN not in response.text


# -- 13: protocol errors use JSON-RPC codes, in both protocol eras ----------------------------

MODES = [pytest.param({}, id="stateless-2026"), pytest.param({"mode": "legacy"}, id="legacy")]


async def protocol_error(request: Awaitable[object]) -> tuple[int, str]:
    from mcp.shared.exceptions import MCPError

    with pytest.raises(MCPError) as raised:
        await request
    return raised.value.error.code, raised.value.error.message


@pytest.mark.anyio
@pytest.mark.parametrize("kwargs", MODES)
@pytest.mark.parametrize(
    ("name", "arguments", "says"),
    [
        (
            "no_such_prompt",
            {"request": "x"},
            "unknown prompt 'no_such_prompt'; known: build_topology, create_agent, "
            "explain_execution, run_workflow",
        ),
        ("run_workflow", {}, "needs the argument(s): request"),
        ("run_workflow", {"style": "pipeline"}, "needs the argument(s): request"),
        ("run_workflow", {"request": "x", "bogus": "1"}, "takes no argument(s) bogus"),
        ("run_workflow", {"request": "x", "style": "chaos"}, "pipeline or ensemble, not 'chaos'"),
        ("run_workflow", {"request": "  "}, "request is empty"),
    ],
    ids=["unknown", "no-arguments", "missing-request", "unknown-argument", "bad-style", "empty"],
)
async def test_prompts_get_with_bad_params_is_invalid_params(
    kwargs: dict[str, Any], name: str, arguments: dict[str, str], says: str, db_url: str
) -> None:
    from mcp import Client
    from mcp_types import INVALID_PARAMS

    from qmcp_server.server import build_server

    async with Client(build_server(db_url), **kwargs) as client:
        code, message = await protocol_error(client.get_prompt(name, arguments))
        assert (code, says in message) == (INVALID_PARAMS, True), message
        good = await client.get_prompt("run_workflow", {"request": "x", "style": "ensemble"})
        assert "ensemble" in good.messages[0].content.text  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize("kwargs", MODES)
async def test_a_prompt_that_fails_for_the_librarys_reasons_is_internal_error_in_its_words(
    kwargs: dict[str, Any],
) -> None:
    from mcp import Client
    from mcp_types import INTERNAL_ERROR

    from qmcp_server.server import build_server

    async with Client(build_server("nonsense://nowhere"), **kwargs) as client:
        code, message = await protocol_error(client.get_prompt("run_workflow", {"request": "x"}))
    assert code == INTERNAL_ERROR and "nonsense" in message, (code, message)


@pytest.mark.anyio
@pytest.mark.parametrize("kwargs", MODES)
async def test_tools_call_of_an_unknown_tool_is_invalid_params(
    kwargs: dict[str, Any], db_url: str
) -> None:
    from mcp import Client
    from mcp_types import INVALID_PARAMS

    from qmcp_server.server import build_server

    async with Client(build_server(db_url), **kwargs) as client:
        code, message = await protocol_error(client.call_tool("agents_destroy_all", {}))
        assert code == INVALID_PARAMS and "unknown tool 'agents_destroy_all'" in message
        assert "agents_list" in message  # the known tools are named
        # Arguments that fail a known tool's schema stay a tool error the model can read and
        # correct (MCP 2025-11-25, SEP-1303), not a protocol error.
        bad = await client.call_tool("agents_show", {})
        assert bad.is_error and "name" in bad.content[0].text  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize("kwargs", MODES)
@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("qmcp://agents/nobody", "nobody"),
        ("qmcp://topologies/nothing", "nothing"),
        ("qmcp://executions/not-an-id", "not-an-id"),
        ("qmcp://executions/00000000-0000-0000-0000-000000000000", "00000000"),
        ("qmcp://nothing/here", "qmcp://nothing/here"),
        ("not a uri", "not a uri"),
    ],
    ids=["agent", "topology", "malformed-execution", "unknown-execution", "no-template", "no-uri"],
)
async def test_resources_read_of_a_missing_or_malformed_uri_is_invalid_params(
    kwargs: dict[str, Any], uri: str, says: str, db_url: str
) -> None:
    """Resource not found is -32602 per SEP-2164 (the SDK's ResourceNotFoundError); the older
    -32002 is not a code the SDK defines."""
    from mcp import Client
    from mcp_types import INVALID_PARAMS

    from qmcp_server.server import build_server

    async with Client(build_server(db_url), **kwargs) as client:
        code, message = await protocol_error(client.read_resource(uri))
    assert code == INVALID_PARAMS and says in message, (code, message)


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
def test_a_token_with_a_trailing_newline_is_the_token(tmp_path: Path) -> None:
    server = HttpServer(["qmcp-server"], tmp_path, QMCP_HTTP_TOKEN=f"  {GOOD_TOKEN}\n")
    try:
        assert server.post(Authorization=f"Bearer {GOOD_TOKEN}").status_code == 200
        assert server.post(Authorization="Bearer").status_code == 401
    finally:
        server.stop()
