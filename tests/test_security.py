"""Security (issue 6, item 6): no secret in a record, a log line or an error; the HTTP transport
refuses strangers; generated Metaflow code cannot be injected; retention prunes old executions.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_messages_api import Fault, MessagesAPIServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qmcp.agentframework import service
from qmcp.agentframework.errors import ValidationError
from qmcp.agentframework.llm import ProviderRegistry, redact
from qmcp.agentframework.models import (
    AgentConfig,
    AgentRole,
    AgentType,
    Approval,
    ExecutionStatus,
    Models,
    Topology,
    TopologyType,
    utcnow,
)
from qmcp.agentframework.runners import LocalRunner, MetaflowRunner, RunConfig
from qmcp.agentframework.store import Store

pytestmark = pytest.mark.anyio
BIN = Path(sys.executable).parent
SENTINEL = "sk-ant-SENTINEL-7c1e0f9a4b2d11ee"
TOKEN = "qmcp-TOKEN-SENTINEL-5a1f93c0d7e2"
CLAUDE = "claude-sonnet-4-5"


def secret_pieces(secret: str) -> list[str]:
    """The secret and its distinctive tail: a truncated or masked copy is still a leak."""
    return [secret, secret[-12:]]


def assert_absent(secret: str, text: str, where: str) -> None:
    for piece in secret_pieces(secret):
        index = text.find(piece)
        assert index < 0, (
            f"{piece!r} leaked into {where}: …{text[max(0, index - 200) : index + 80]}…"
        )


def dump_database(db_file: Path) -> str:
    """Every row of every table, plus the raw bytes of the file and its WAL (freed pages too)."""
    connection = sqlite3.connect(db_file)
    try:
        tables = [
            r[0] for r in connection.execute("select name from sqlite_master where type='table'")
        ]
        rows = {t: connection.execute(f'select * from "{t}"').fetchall() for t in tables}
    finally:
        connection.close()
    raw = b"".join(
        p.read_bytes() for p in (db_file, db_file.with_name(db_file.name + "-wal")) if p.exists()
    )
    return json.dumps(rows, default=str) + raw.decode("latin-1")


@pytest.fixture
def api() -> Iterator[MessagesAPIServer]:
    with MessagesAPIServer() as server:
        yield server


def claude_env(api: MessagesAPIServer, db_file: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    return {
        **env,
        "QMCP_DATABASE_URL": f"sqlite+aiosqlite:///{db_file}",
        "ANTHROPIC_API_KEY": SENTINEL,
        "ANTHROPIC_BASE_URL": api.base_url,
        "ANTHROPIC_LOG": "debug",  # the SDK's own debug logging, on purpose
        "QMCP_LOG_LEVEL": "DEBUG",
        **extra,
    }


def assert_key_was_sent(api: MessagesAPIServer) -> None:
    """The sentinel really was the key in use, so its absence elsewhere means something."""
    assert api.requests, "no request reached the Messages API"
    for request in api.requests:
        headers = request["headers"]
        sent = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        assert sent == SENTINEL


# -- the API key: library, CLI, MCP server --------------------------------------------------


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture every logger at DEBUG, including the SDK's, httpx's and httpcore's."""
    names = ("anthropic", "httpx", "httpcore", "qmcp")
    levels = {n: logging.getLogger(n).level for n in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    yield caplog
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


async def test_library_keeps_the_key_out_of_records_logs_and_errors(
    api: MessagesAPIServer,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SENTINEL)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.base_url)
    ProviderRegistry.reset()
    await service.create_agent("claude_a", "executor", model=CLAUDE, db_url=db_url)
    await service.create_topology(
        "claude_t",
        "pipeline",
        {"a": "claude_a"},
        config={"max_stage_retries": 10},
        db_url=db_url,
    )
    seen: list[str] = []
    cases = [
        ([Fault.unauthorized()], 0, "failed"),
        ([Fault.server_error(), Fault.server_error()], 1, "failed"),
        ([Fault.rate_limited(0.05), Fault.overloaded()], 2, "completed"),
    ]
    for faults, retries, expected in cases:
        api.enqueue(*faults)
        result = await service.run_topology(
            "claude_t", {"prompt": "hi"}, config=RunConfig(max_retries=retries), db_url=db_url
        )
        assert result.status == expected, result.error
        seen.append(result.model_dump_json())
        execution, invocations = await service.get_execution(result.execution_id, db_url)
        seen.append(json.dumps(service.execution_to_dict(execution, invocations)))
    assert "401 authentication_error" in "".join(seen) and "500 api_error" in "".join(seen)
    assert_key_was_sent(api)
    logs = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in debug_logs.records
    )
    assert "HTTP Request: POST" in logs, "the SDK's request log was captured"
    assert_absent(SENTINEL, logs, "a log record")
    assert_absent(SENTINEL, "\n".join(seen), "a run result or execution record")
    assert_absent(SENTINEL, dump_database(tmp_path / "agent.db"), "the database")


async def test_a_provider_error_echoing_the_key_is_redacted(
    api: MessagesAPIServer,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    """A verbose gateway's 'invalid x-api-key: sk-ant-…' was once copied verbatim into
    Invocation.error, the run's error and the log."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", SENTINEL)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.base_url)
    ProviderRegistry.reset()
    await service.create_agent("claude_a", "executor", model=CLAUDE, db_url=db_url)
    await service.create_topology(
        "claude_t",
        "pipeline",
        {"a": "claude_a"},
        config={"max_stage_retries": 10},
        db_url=db_url,
    )
    api.enqueue(Fault(401, "authentication_error", f"invalid x-api-key: {SENTINEL}"))
    result = await service.run_topology(
        "claude_t", {"prompt": "hi"}, config=RunConfig(max_retries=0), db_url=db_url
    )
    assert result.status == "failed" and "401" in (result.error or "")
    assert_absent(SENTINEL, result.error or "", "the run's error")
    assert_absent(SENTINEL, dump_database(tmp_path / "agent.db"), "the database")
    assert_absent(SENTINEL, debug_logs.text, "the log")


def test_redact_masks_the_key_and_anything_shaped_like_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "gateway.key/with+odd=chars")
    text = redact(
        "invalid x-api-key: gateway.key/with+odd=chars; also sk-proj-a1B2c3D4e5F6 and "
        f"{SENTINEL} (a task-scheduler risk-assessment, sk-short)"
    )
    assert "odd=chars" not in text and "a1B2c3D4e5F6" not in text
    assert_absent(SENTINEL, text, "redacted text")
    assert text.count("[redacted]") == 3
    assert "task-scheduler risk-assessment, sk-short" in text


class StdioServer:
    """`qmcp-server` over stdio, one JSON-RPC request at a time (stdin stays open meanwhile)."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.stderr_path = cwd / "server-stderr.log"
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [str(BIN / "qmcp-server")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=cwd,
        )
        self.transcript: list[str] = []
        self._next = 0
        self.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "security-test", "version": "0"},
            },
        )
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next += 1
        self._send({"jsonrpc": "2.0", "id": self._next, "method": method, "params": params})
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            assert line, self.stderr_path.read_text(errors="replace")
            self.transcript.append(line.decode())
            message = json.loads(line)
            if message.get("id") == self._next:
                return message

    def tool(self, name: str, **arguments: Any) -> dict[str, Any]:
        return self.request("tools/call", {"name": name, "arguments": arguments})["result"]

    def close(self) -> str:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)
        self._stderr.close()
        return self.stderr_path.read_text(errors="replace")


@pytest.mark.slow  # a subprocess per case: the full suite, not the fast tier
def test_cli_and_mcp_server_keep_the_key_out_of_logs_and_results(
    api: MessagesAPIServer, tmp_path: Path
) -> None:
    db_file = tmp_path / "agent.db"
    env = claude_env(api, db_file)

    def qmcp(*args: str) -> str:
        done = subprocess.run(
            [str(BIN / "qmcp"), "-v", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return f"$ qmcp {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"

    outputs = [
        qmcp("agents", "create", "claude_a", "executor", "--model", CLAUDE),
        qmcp(
            "agents",
            "topologies",
            "create",
            "claude_t",
            "pipeline",
            "--slot",
            "a=claude_a",
            "--config-json",
            '{"max_stage_retries": 10}',
        ),
    ]
    run = ("agents", "topologies", "run", "claude_t", "--input-json", '{"prompt": "hi"}')
    api.enqueue(Fault.unauthorized())
    outputs.append(qmcp(*run, "--max-retries", "0"))
    api.enqueue(Fault.server_error(), Fault.server_error())
    outputs.append(qmcp(*run, "--max-retries", "1"))
    api.enqueue(Fault.rate_limited(0.05))
    outputs.append(qmcp(*run, "--max-retries", "2", "--format", "json"))
    outputs.append(qmcp("executions", "list", "--format", "json"))
    cli = "\n".join(outputs)
    assert "401" in cli and "500" in cli and '"status": "completed"' in cli, cli[-3000:]

    server = StdioServer(env, tmp_path)
    try:
        api.enqueue(Fault.unauthorized())
        failed = server.tool(
            "topologies_run", topology="claude_t", input={"prompt": "x"}, timeout_seconds=60
        )
        assert failed["structuredContent"]["status"] == "failed"
        ident = failed["structuredContent"]["execution_id"]
        server.tool("executions_get", execution_id=ident)
        server.request("resources/read", {"uri": f"qmcp://executions/{ident}"})
        server.tool("executions_list")
    finally:
        server_stderr = server.close()
    mcp = "\n".join(server.transcript)
    assert "401 authentication_error" in mcp
    assert_key_was_sent(api)
    for text, where in (
        (cli, "CLI output or -v log"),
        (mcp, "an MCP tool result"),
        (server_stderr, "the MCP server's DEBUG log"),
        (dump_database(db_file), "the database"),
    ):
        assert_absent(SENTINEL, text, where)


# -- the HTTP transport ---------------------------------------------------------------------

MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpServer:
    def __init__(self, tmp_path: Path, host: str = "127.0.0.1", **env: str) -> None:
        self.port = free_port()
        self.log = tmp_path / f"http-{self.port}.log"
        self._log = self.log.open("wb")
        environment = {k: v for k, v in os.environ.items() if not k.startswith("QMCP_HTTP")}
        environment.update(
            QMCP_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/http.db",
            QMCP_LOG_LEVEL="DEBUG",
            **env,
        )
        self.process = subprocess.Popen(
            [
                str(BIN / "qmcp"),
                "serve",
                "--transport",
                "http",
                "--host",
                host,
                "--port",
                str(self.port),
            ],
            env=environment,
            cwd=tmp_path,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("the HTTP server did not start")

    def post(self, **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/mcp", json=TOOLS_LIST, headers={**MCP_HEADERS, **headers}, timeout=10
        )

    def stop(self) -> str:
        self.process.terminate()
        self.process.wait(20)
        self._log.close()
        return self.log.read_text(errors="replace")


FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:80",
    "127.0.0.1.evil.example:8765",
    "localhost.evil.example",
    "attacker.localhost.example:1",
]
FOREIGN_ORIGINS = [
    "http://evil.example",
    "https://127.0.0.1.evil.example",
    "http://localhost.evil.example:8765",
    "null",
]


@pytest.mark.slow  # a server process
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
async def test_http_needs_the_token_and_refuses_foreign_host_and_origin(
    tmp_path: Path, host: str
) -> None:
    server = HttpServer(tmp_path, host=host, QMCP_HTTP_TOKEN=TOKEN)
    responses: list[httpx.Response] = []
    try:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
            {"X-Api-Key": TOKEN},
        ):
            refused = server.post(**headers)
            responses.append(refused)
            assert refused.status_code == 401, (headers, refused.text)
            assert refused.headers.get("www-authenticate", "").startswith("Bearer")
        authorized = {"Authorization": f"Bearer {TOKEN}"}
        for foreign in FOREIGN_HOSTS:
            response = server.post(Host=foreign, **authorized)
            responses.append(response)
            assert response.status_code == 421, (foreign, response.text)
        for origin in FOREIGN_ORIGINS:
            response = server.post(Origin=origin, **authorized)
            responses.append(response)
            assert response.status_code == 403, (origin, response.text)
        local = server.post(Origin=f"http://127.0.0.1:{server.port}", **authorized)
        assert local.status_code not in (401, 403, 421), local.text
        health = httpx.get(f"{server.url}/health")
        assert health.status_code == 200 and TOKEN not in health.text

        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async with httpx2.AsyncClient(headers=authorized) as http:
            transport = streamable_http_client(f"{server.url}/mcp", http_client=http)
            async with Client(transport, mode="legacy") as client:
                created = await client.call_tool(
                    "agents_create", {"name": "h", "role": "executor", "model": "offline"}
                )
                assert not created.is_error
    finally:
        log = server.stop()
    for response in responses:
        assert_absent(TOKEN, response.text + json.dumps(dict(response.headers)), "a response")
    assert "Created new transport" in log or "session" in log, "DEBUG logging was on"
    assert_absent(TOKEN, log, "the HTTP server's log")


@pytest.mark.slow  # a process per case: the full suite, not the fast tier
@pytest.mark.parametrize(
    ("command", "host", "token"),
    [
        (["qmcp", "serve", "--transport", "http"], "0.0.0.0", None),
        (["qmcp", "serve", "--transport", "http"], "::", None),
        (["qmcp", "serve", "--transport", "http"], "192.0.2.10", None),
        (["qmcp", "serve", "--transport", "http"], "0.0.0.0", ""),
        (["qmcp-server", "--transport", "http"], "0.0.0.0", None),
    ],
    ids=["all-ipv4", "all-ipv6", "lan-address", "empty-token", "qmcp-server"],
)
def test_binding_beyond_loopback_without_a_token_exits_2(
    tmp_path: Path, command: list[str], host: str, token: str | None
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QMCP_HTTP")}
    env["QMCP_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/h.db"
    if token is not None:
        env["QMCP_HTTP_TOKEN"] = token
    done = subprocess.run(
        [str(BIN / command[0]), *command[1:], "--host", host, "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "QMCP_HTTP_TOKEN" in lines[0]
    assert "Traceback" not in done.stderr


# -- generated Metaflow code ----------------------------------------------------------------

# Text built to break out of any quoting and run code if it were pasted into the source.
BREAKOUTS = [
    "x\"); __import__('os').system('touch PWNED') #",
    "x'''; __import__('os').system('touch PWNED') #",
    'x"""\nimport os\nos.system("touch PWNED")\n"""',
    '\\x"; import os #',
    "{__import__('os').system('touch PWNED')}",
    "\u2028import os\u2029",
    "\x00\r\n@step\ndef evil(self): pass",
]
hostile = st.builds(
    lambda breakout, text: f"{text}{breakout}{text}",
    st.sampled_from(BREAKOUTS),
    st.text(max_size=40),
)


def flow_parts(
    name: str, prompt: str, kind: TopologyType, slot_suffix: str
) -> tuple[Topology, dict[str, AgentType]]:
    def agent(agent_name: str) -> AgentType:
        config = AgentConfig(model_config_obj=Models.OFFLINE, system_prompt=prompt)
        return AgentType(
            name=agent_name,
            description=prompt,
            role=AgentRole.SPECIALIST,
            config=config.model_dump(mode="json"),
        )

    if kind is TopologyType.ENSEMBLE:
        slots = [f"ensemble_{slot_suffix}", "ensemble_b"]
        config: dict[str, Any] = {"aggregation_method": "concat"}
    else:
        slots = [f"stage {slot_suffix}", "second"]
        config = {}
    agents = {slot: agent(f"{name}-{i}") for i, slot in enumerate(slots)}
    topology = Topology(name=name, description=prompt, topology_type=kind, config=config)
    return topology, agents


def code_shape(source: str) -> str:
    """The program's structure with every constant and the class name blanked out."""
    tree = ast.parse(source)
    classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    assert len(classes) == 1 and all(name.isidentifier() for name in classes)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            node.value = None
        elif isinstance(node, ast.ClassDef):
            node.name = "Flow"
        elif isinstance(node, ast.Name) and node.id in classes:
            node.id = "Flow"
    return ast.dump(tree)


def spec_of(source: str) -> dict[str, Any]:
    """The SPEC document the flow embeds, read back as data (never executed)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SPEC":
            call = node.value
            assert isinstance(call, ast.Call)
            return dict(json.loads(ast.literal_eval(call.args[0])))
    raise AssertionError("no SPEC in the flow")


@pytest.mark.slow  # generated cases: the full suite, not the fast tier
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    name=hostile,
    prompt=hostile,
    slot_suffix=hostile,
    kind=st.sampled_from([TopologyType.PIPELINE, TopologyType.ENSEMBLE]),
    environment=st.sampled_from(["local", "kubernetes"]),
)
def test_hostile_names_and_prompts_stay_data_in_generated_flows(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    prompt: str,
    slot_suffix: str,
    kind: TopologyType,
    environment: str,
) -> None:
    runner = MetaflowRunner(output_dir=tmp_path_factory.mktemp("flows"), environment=environment)  # type: ignore[arg-type]
    source = runner._topology_to_flow(*flow_parts(name, prompt, kind, slot_suffix))
    benign = runner._topology_to_flow(*flow_parts("benign", "be nice", kind, "a"))
    compile(source, "<generated flow>", "exec")
    for text in (name, prompt, slot_suffix):
        assert text not in source
    assert code_shape(source) == code_shape(benign), "user text changed the program's structure"
    spec = spec_of(source)
    assert spec["topology"]["name"] == name, "the text survives exactly, as data"
    assert spec["topology"]["description"] == prompt


def test_hostile_topology_names_cannot_steer_the_flow_path(tmp_path: Path) -> None:
    runner = MetaflowRunner(output_dir=tmp_path / "flows")
    for name in ("../../etc/passwd", "/tmp/x", "C:\\x", "..", "\x00", "名前"):
        topology, agents = flow_parts(name, "p", TopologyType.PIPELINE, "a")
        path = runner.write_flow(topology, agents).resolve()
        assert path.parent == (tmp_path / "flows").resolve(), path
        assert path.name.endswith("_flow.py") and path.exists()


def test_resource_keys_cannot_inject_code(tmp_path: Path) -> None:
    key = "cpu=1)\n__import__('os').system('touch PWNED')\n@retry(times=1"
    topology, agents = flow_parts("t", "p", TopologyType.PIPELINE, "a")
    try:
        runner = MetaflowRunner(output_dir=tmp_path, environment="kubernetes", resources={key: 1})
        source = runner._topology_to_flow(topology, agents)
    except ValidationError:
        return
    assert "PWNED" not in source


# -- retention ------------------------------------------------------------------------------


def rows(db_file: Path, sql: str) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(db_file)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


async def make_executions(db_url: str) -> dict[str, uuid.UUID]:
    """One execution per status, each with its invocations; the running one stays running."""
    await service.create_agent("r_a", "executor", model="offline", db_url=db_url)
    await service.create_agent("r_b", "executor", model="offline", db_url=db_url)
    await service.create_topology("r_p", "pipeline", {"a": "r_a", "b": "r_b"}, db_url=db_url)
    store = Store(db_url)
    made: dict[str, uuid.UUID] = {}
    for status in ("completed", "failed", "cancelled", "interrupted", "pending"):
        result = await service.run_topology("r_p", {"prompt": status}, db_url=db_url)
        made[status] = result.execution_id
        if status != "completed":
            await store.update_execution(result.execution_id, status=ExecutionStatus(status))
    topology, agents = await service.get_topology("r_p", db_url)
    running = await LocalRunner(db_url=db_url).start(topology, agents, {"prompt": "running"})
    await store.record_invocations(
        [
            {
                "execution_id": running.execution_id,
                "key": "stage-0/a",
                "slot": "a",
                "agent_name": "r_a",
                "provider": "offline",
                "model": "offline",
                "status": "completed",
                "attempt": 1,
                "input": {},
                "output": {"content": "half way"},
                "started_at": utcnow(),
                "completed_at": utcnow(),
            }
        ]
    )
    made["running"] = running.execution_id  # owned by this (live) test process
    for status in ("completed", "pending"):
        await store.add_approval(
            Approval(
                execution_id=made[status], key="k", agent_name="r_a", question="q", proposed="p"
            )
        )
    return made


def prune(db_file: Path, *days: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "qmcp"), "executions", "prune", *days],
        env={**os.environ, "QMCP_DATABASE_URL": f"sqlite+aiosqlite:///{db_file}"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow  # the CLI as a process
async def test_prune_deletes_finished_executions_and_their_invocations_only(
    db_url: str, tmp_path: Path
) -> None:
    db_file = tmp_path / "agent.db"
    made = await make_executions(db_url)
    invocations_of = {
        status: len(rows(db_file, f"select id from invocations where execution_id = '{i.hex}'"))
        for status, i in made.items()
    }
    assert all(invocations_of.values()), invocations_of

    kept = prune(db_file, "--older-than-days", "1")
    assert kept.returncode == 0 and "deleted 0 execution(s)" in kept.stdout, kept.stderr
    done = prune(db_file, "--older-than-days", "0")
    assert done.returncode == 0, done.stderr
    assert "deleted 3 execution(s)" in done.stdout

    remaining = {uuid.UUID(r[0]): r[1] for r in rows(db_file, "select id, status from executions")}
    survivors = {made[s]: s for s in ("running", "interrupted", "pending")}
    assert {i: s.upper() for i, s in survivors.items()} == remaining
    for status, ident in made.items():
        count = len(rows(db_file, f"select id from invocations where execution_id = '{ident.hex}'"))
        assert count == (invocations_of[status] if ident in survivors else 0), status
    orphans = rows(
        db_file,
        "select count(*) from invocations where execution_id not in (select id from executions)",
    )
    assert orphans == [(0,)]


@pytest.mark.slow  # the CLI as a process
async def test_prune_by_age_keeps_recent_executions(db_url: str, tmp_path: Path) -> None:
    db_file = tmp_path / "agent.db"
    made = await make_executions(db_url)
    old = await service.run_topology("r_p", {"prompt": "old"}, db_url=db_url)
    store = Store(db_url)
    await store.update_execution(old.execution_id, created_at=utcnow() - timedelta(days=40))
    done = prune(db_file)  # the default: 30 days
    assert done.returncode == 0 and "deleted 1 execution(s)" in done.stdout, done.stderr
    remaining = {uuid.UUID(r[0]) for r in rows(db_file, "select id from executions")}
    assert remaining == set(made.values())
    refused = prune(db_file, "--older-than-days", "-1")
    assert refused.returncode == 2 and refused.stderr.startswith("error:")


@pytest.mark.slow  # the CLI as a process
async def test_prune_removes_the_approvals_of_pruned_executions(
    db_url: str, tmp_path: Path
) -> None:
    """Approvals and memories of pruned executions were once left behind."""
    db_file = tmp_path / "agent.db"
    made = await make_executions(db_url)
    store = Store(db_url)
    for status in ("completed", "pending"):
        await store.add_memory("r_a", made[status], "k", f"remembered in {status}")
    assert prune(db_file, "--older-than-days", "0").returncode == 0
    approvals = {uuid.UUID(r[0]) for r in rows(db_file, "select execution_id from approvals")}
    assert approvals == {made["pending"]}
    memories = {uuid.UUID(r[0]) for r in rows(db_file, "select execution_id from agent_memories")}
    assert memories == {made["pending"]}
