"""Agents that act: real MCP servers (tests/tool_server.py over stdio and streamable HTTP, and a
third-party server from npm) as agents' tools, through the real runners and the real store."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_messages_api import MessagesAPIServer
from tool_functions import register_crash_model, scripted

from qmcp.agentframework import service
from qmcp.agentframework.errors import ValidationError
from qmcp.agentframework.llm import register_function, unregister_function
from qmcp.agentframework.store import Store

pytestmark = pytest.mark.anyio
HERE = Path(__file__).parent
SERVER = str(HERE / "tool_server.py")


class ToolLog:
    """The calls the test server saw (it appends one JSON line per call)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        return [r for r in rows if tool is None or r["tool"] == tool]


@pytest.fixture
def log(tmp_path: Path) -> ToolLog:
    return ToolLog(tmp_path / "calls.jsonl")


def stdio_server(log: ToolLog, name: str = "t", **extra: Any) -> dict[str, Any]:
    env = {"TOOL_SERVER_LOG": str(log.path), **extra.pop("env", {})}
    return {"name": name, "command": sys.executable, "args": [SERVER], "env": env, **extra}


@pytest.fixture
def functions() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        unregister_function(name)


def use(functions: list[str], name: str, *turns: list[tuple[str, dict[str, Any]]]) -> str:
    register_function(name, scripted(*turns))
    functions.append(name)
    return f"function:{name}"


async def solo(db_url: str, agent: str, model: str, tools: list[dict[str, Any]], **kw: Any) -> str:
    await service.create_agent(agent, "executor", model=model, tools=tools, db_url=db_url, **kw)
    await service.create_topology(f"{agent}_solo", "pipeline", {"only": agent}, db_url=db_url)
    return f"{agent}_solo"


@pytest.mark.slow  # a tool server process
async def test_an_offline_agent_calls_a_read_only_tool_and_quotes_it(
    db_url: str, log: ToolLog
) -> None:
    topology = await solo(db_url, "reader", "offline", [stdio_server(log)])
    result = await service.run_topology(topology, {"prompt": "what is mcp?"}, db_url=db_url)
    assert result.status == "completed", result.error
    # The first read-only tool (none shares a word with the task), its required field filled.
    assert log.calls() == [
        {"tool": "lookup", "arguments": {"term": "what is mcp?"}, "pid": log.calls()[0]["pid"]}
    ]
    content = result.output["content"]
    assert content.startswith("[offline model]") and "What the tools said:" in content
    assert "no entry for what is mcp?" in content
    ((key, call_id), row) = next(
        iter((await Store(db_url).tool_calls(result.execution_id)).items())
    )
    assert key == "stage-0/only" and call_id.startswith("offline_")
    assert (row["server"], row["tool"], row["status"]) == ("t", "lookup", "completed")
    assert row["arguments"] == {"term": "what is mcp?"} and row["duration_ms"] > 0
    assert row["result"].endswith("no entry for what is mcp?") and row["is_error"] is False


async def test_tool_calls_of_one_turn_run_concurrently_and_results_go_back(
    db_url: str, log: ToolLog, functions: list[str]
) -> None:
    model = use(
        functions,
        "two_turns",
        [("lookup", {"term": "mcp"}), ("add", {"a": 2, "b": 3})],
        [("lookup", {"term": "qmcp"})],
    )
    topology = await solo(db_url, "actor", model, [stdio_server(log)])
    result = await service.run_topology(topology, {"prompt": "go"}, db_url=db_url)
    assert result.status == "completed", result.error
    lines = result.output["content"].splitlines()[1:]
    assert len(lines) == 3 * 2, lines  # each result is a marker line and the data
    assert "Model Context Protocol" in lines[1] and lines[3] == "5"
    assert "multi-agent topologies over MCP" in lines[5]
    assert lines[0].startswith("[result of the tool t.lookup; data from an outside server")
    assert [c["tool"] for c in log.calls()].count("lookup") == 2
    (row,) = await Store(db_url).invocations(result.execution_id)
    assert row.output is not None and row.output["tool_calls"] == 3
    assert len({c["pid"] for c in log.calls()}) == 1, "one session per server per run"


@pytest.mark.slow  # a tool server process
async def test_a_tool_error_goes_back_to_the_model_and_results_are_bounded(
    db_url: str, log: ToolLog, functions: list[str]
) -> None:
    model = use(functions, "errs", [("broken", {"reason": "why"}), ("huge", {"size": 50_000})])
    topology = await solo(
        db_url,
        "bounded",
        model,
        [stdio_server(log)],
        capabilities=[{"name": "tool_use", "config": {"max_result_chars": 1000}}],
    )
    result = await service.run_topology(topology, {"prompt": "go"}, db_url=db_url)
    assert result.status == "completed", result.error
    content = result.output["content"]
    assert "ERROR [error from the tool t.broken" in content and "broken on purpose" in content
    assert "[cut: the result had 50000 characters; the first 1000 are shown]" in content
    assert len(content) < 3000


@pytest.mark.slow  # a tool server process
async def test_deny_hides_a_tool_and_refuses_it_before_any_call(
    db_url: str, log: ToolLog, functions: list[str]
) -> None:
    model = use(functions, "denied", [("append_line", {"text": "x"}), ("lookup", {"term": "mcp"})])
    topology = await solo(db_url, "careful", model, [stdio_server(log, deny=["append_line"])])
    seen: list[list[str]] = []
    register_function("denied_spy", lambda r: seen.append([t.name for t in r.tools]) or "ok")
    functions.append("denied_spy")
    result = await service.run_topology(topology, {"prompt": "go"}, db_url=db_url)
    assert result.status == "completed", result.error
    assert (
        "ERROR not called: the tool 'append_line' is denied to this agent"
        in (result.output["content"])
    )
    assert [c["tool"] for c in log.calls()] == ["lookup"], "a denied tool reached the server"
    await service.create_agent(
        "spy", "executor", model="function:denied_spy", tools=[stdio_server(log, deny=["add"])]
    )
    await service.create_topology("spy_solo", "pipeline", {"only": "spy"})
    assert (await service.run_topology("spy_solo", {"prompt": "x"})).status == "completed"
    assert seen and "add" not in seen[0] and "lookup" in seen[0]


@pytest.mark.slow  # a tool server process
async def test_max_tool_calls_asks_for_a_final_answer_and_says_so(
    db_url: str, log: ToolLog, functions: list[str]
) -> None:
    model = use(functions, "greedy", *[[("add", {"a": i, "b": 1})] for i in range(10)])
    topology = await solo(db_url, "greedy", model, [stdio_server(log)], max_tool_calls=3)
    result = await service.run_topology(topology, {"prompt": "go"}, db_url=db_url)
    assert result.status == "completed", result.error
    assert len(log.calls("add")) == 3
    (row,) = await Store(db_url).invocations(result.execution_id)
    assert row.output is not None and row.output["tool_limit_reached"] is True
    assert row.output["tool_calls"] == 3


@pytest.mark.slow  # a tool server process
async def test_a_destructive_tool_waits_for_a_human_and_a_rejection_reaches_the_model(
    db_url: str, log: ToolLog, functions: list[str]
) -> None:
    model = use(functions, "wrecker", [("delete_everything", {"reason": "cleanup"})])
    topology = await solo(db_url, "wrecker", model, [stdio_server(log)])
    first = await service.run_topology(topology, {"prompt": "go"}, db_url=db_url)
    assert first.status == "pending", first.error
    (approval,) = await service.list_approvals("pending", db_url=db_url)
    assert "t.delete_everything" in approval.question and "destructive" in approval.question
    assert log.calls("delete_everything") == [], "called before a human approved"
    await service.answer_approval(approval.id, False, comment="not today", db_url=db_url)  # type: ignore[arg-type]
    done = await service.resume_execution(first.execution_id, db_url=db_url)
    assert done.status == "completed", done.error
    assert "ERROR not called: a human rejected this call (not today)" in done.output["content"]
    assert log.calls("delete_everything") == []
    rows = await Store(db_url).tool_calls(first.execution_id)
    assert [r["status"] for r in rows.values()] == ["rejected"]


@pytest.mark.slow  # a tool server process
async def test_a_tool_on_the_approve_list_is_called_once_approved(
    db_url: str, log: ToolLog, functions: list[str]
) -> None:
    model = use(functions, "asker", [("lookup", {"term": "mcp"})])
    topology = await solo(db_url, "asker", model, [stdio_server(log, approve=["lookup"])])
    first = await service.run_topology(topology, {"prompt": "go"}, db_url=db_url)
    assert first.status == "pending"
    (approval,) = await service.list_approvals("pending", db_url=db_url)
    await service.answer_approval(approval.id, True, db_url=db_url)  # type: ignore[arg-type]
    done = await service.resume_execution(first.execution_id, db_url=db_url)
    assert done.status == "completed", done.error
    assert "Model Context Protocol" in done.output["content"]
    assert len(log.calls("lookup")) == 1


async def test_a_server_that_does_not_start_fails_the_invocation_naming_it(db_url: str) -> None:
    broken = {
        "name": "ghost",
        "command": sys.executable,
        "args": ["-c", "import sys; print('no such module: ghostly', file=sys.stderr); exit(3)"],
    }
    topology = await solo(db_url, "haunted", "offline", [broken])
    result = await service.run_topology(topology, {"prompt": "go"}, db_url=db_url)
    assert result.status == "failed"
    assert result.error is not None
    assert "tool server 'ghost' did not start (command: " in result.error
    assert "no such module: ghostly" in result.error, "the server's own output explains it"
    (row,) = await Store(db_url).invocations(result.execution_id)
    assert row.status == "failed" and "ghost" in (row.error or "")


@pytest.mark.slow  # a tool server process
async def test_an_allow_list_naming_a_missing_tool_is_a_clear_error(
    db_url: str, log: ToolLog
) -> None:
    topology = await solo(db_url, "picky", "offline", [stdio_server(log, allow=["nope"])])
    result = await service.run_topology(topology, {"prompt": "go"}, db_url=db_url)
    assert result.status == "failed"
    assert "has no tool named 'nope', which its allow list names" in (result.error or "")
    agent = await service.get_agent("picky", db_url)
    (entry,) = await service.discover_tools(agent)
    assert "nope" in entry["error"]


async def test_a_model_endpoint_key_must_be_a_key_variable(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(
        ValidationError, match="api_key_env: the variable AWS_SECRET_ACCESS_KEY may not be sent"
    ):
        await service.create_agent(
            "leaky",
            "executor",
            model="openai:gpt-4o",
            base_url="http://evil.example/v1",
            api_key_env="AWS_SECRET_ACCESS_KEY",
            db_url=db_url,
        )
    monkeypatch.setenv("QMCP_KEY_VARIABLES", "MY_VLLM_SECRET")
    made = await service.create_agent(
        "vllm", "executor", model="openai:m", api_key_env="MY_VLLM_SECRET", db_url=db_url
    )
    assert made.config["model_config_obj"]["api_key_env"] == "MY_VLLM_SECRET"


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        (
            [{"name": "x", "url": "http://h/mcp", "headers": {"A": "${AWS_SECRET_ACCESS_KEY}"}}],
            "header A: the variable AWS_SECRET_ACCESS_KEY may not be sent anywhere",
        ),
        (
            [{"name": "x", "command": "a", "env": {"DB": "${DATABASE_URL}"}}],
            "env DB: the variable DATABASE_URL may not",
        ),
        ([{"name": "x"}], "needs either a command (stdio) or a url"),
        ([{"name": "x", "command": "a", "url": "http://h/mcp"}], "not both"),
        ([{"name": "x", "command": "a", "colour": "red"}], "colour"),
        ([{"name": "x", "url": "http://h/mcp", "args": ["a"]}], "args, env and cwd are for stdio"),
        ([{"name": "x", "command": "a"}, {"name": "x", "command": "b"}], "named twice"),
        ([{"name": "x", "command": "a", "allow": ["t"], "deny": ["t"]}], "both allowed and denied"),
    ],
)
async def test_bad_tool_declarations_are_refused_at_creation(
    db_url: str, servers: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        await service.create_agent("bad", "executor", tools=servers, db_url=db_url)
    assert await service.list_agents(db_url=db_url) == []


@pytest.mark.slow  # a tool server process
async def test_env_references_reach_the_server_and_are_never_recorded(
    db_url: str, log: ToolLog, functions: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = "s3cr3t-value-that-must-not-leak"
    monkeypatch.setenv("MY_TOOL_TOKEN", secret)
    model = use(functions, "who", [("whoami", {})])
    server = stdio_server(log, env={"TOOL_SERVER_SECRET": "${MY_TOOL_TOKEN}"})
    topology = await solo(db_url, "who", model, [server])
    result = await service.run_topology(topology, {"prompt": "go"}, db_url=db_url)
    assert result.status == "completed", result.error
    import hashlib

    assert hashlib.sha256(secret.encode()).hexdigest() in result.output["content"]
    database = Path(db_url.split("///", 1)[1])
    for file in database.parent.glob(database.name + "*"):
        assert secret.encode() not in file.read_bytes(), f"the secret is in {file.name}"
    monkeypatch.delenv("MY_TOOL_TOKEN")
    again = await service.run_topology(topology, {"prompt": "go"}, db_url=db_url)
    assert again.status == "failed"
    assert "refers to ${MY_TOOL_TOKEN}, which is not set" in (again.error or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(log: ToolLog) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "TOOL_SERVER_LOG": str(log.path)}
    process = subprocess.Popen(
        [sys.executable, SERVER, "http", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.slow  # a tool server process
async def test_a_streamable_http_server_and_the_real_anthropic_sdk(
    db_url: str, log: ToolLog, http_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claude's tool_use blocks (the real SDK against a local Messages API) call a tool on a
    streamable HTTP server; the tool_result goes back in the next request."""

    def claude(body: dict[str, Any]) -> Any:
        last = body["messages"][-1]
        if isinstance(last["content"], str):
            assert [t["name"] for t in body["tools"]] == ["lookup", "add"]
            return [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"term": "mcp"}},
            ]
        (result,) = last["content"]
        assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_1"
        return "It stands for " + result["content"].splitlines()[-1]

    with MessagesAPIServer(claude) as api:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.base_url)
        server = {"name": "docs", "url": http_server, "allow": ["lookup", "add"]}
        topology = await solo(db_url, "claude", "claude-haiku-4-5", [server])
        result = await service.run_topology(topology, {"prompt": "What is MCP?"}, db_url=db_url)
        assert result.status == "completed", result.error
        assert result.output["content"] == "It stands for Model Context Protocol"
        assert len(api.requests) == 2
    assert [c["tool"] for c in log.calls()] == ["lookup"]
    ((_, row),) = (await Store(db_url).tool_calls(result.execution_id)).items()
    assert row["server"] == "docs" and row["arguments"] == {"term": "mcp"}


@pytest.mark.slow  # tool server processes
async def test_concurrent_runs_each_have_their_own_sessions(
    db_url: str, log: ToolLog, functions: list[str]
) -> None:
    model = use(functions, "who2", [("whoami", {})])
    server = stdio_server(log)
    for name in ("w1", "w2"):
        await service.create_agent(name, "executor", model=model, tools=[server], db_url=db_url)
    await service.create_topology(
        "pair",
        "ensemble",
        {"ensemble_1": "w1", "ensemble_2": "w2"},
        config={"aggregation_method": "concat"},
        db_url=db_url,
    )
    results = await asyncio.gather(
        *(
            service.run_topology(
                "pair", {"prompt": "who"}, runner_type="async", max_concurrent=4, db_url=db_url
            )
            for _ in range(3)
        )
    )
    assert all(r.status == "completed" for r in results), [r.error for r in results]
    pids = [c["pid"] for c in log.calls("whoami")]
    assert len(pids) == 6 and len(set(pids)) == 3, "one session per server per run, never shared"


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow  # a tool server process
async def test_sessions_close_when_the_run_ends(
    db_url: str, log: ToolLog, functions: list[str]
) -> None:
    model = use(functions, "who3", [("whoami", {})])
    topology = await solo(db_url, "closer", model, [stdio_server(log)])
    result = await service.run_topology(topology, {"prompt": "go"}, db_url=db_url)
    assert result.status == "completed"
    (call,) = log.calls("whoami")
    for _ in range(100):
        if _pid_gone(call["pid"]):
            break
        await asyncio.sleep(0.05)
    assert _pid_gone(call["pid"]), "the tool server outlived its run"


@pytest.mark.slow
async def test_a_crash_never_repeats_a_finished_call_and_asks_about_one_in_flight(
    db_url: str, log: ToolLog, tmp_path: Path
) -> None:
    """SIGKILL while `gate` runs: `append_line` (finished, same turn) is replayed, never made
    again; `gate` (not idempotent, in flight) waits for a human, who says run it again."""
    gate = tmp_path / "gate"
    gate.touch()
    server = stdio_server(log, env={"TOOL_SERVER_GATE": str(gate)})
    await service.create_agent(
        "crasher", "executor", model="function:toolcrash", tools=[server], db_url=db_url
    )
    await service.create_topology("crash_tools", "pipeline", {"only": "crasher"}, db_url=db_url)
    child = subprocess.Popen(
        [sys.executable, str(HERE / "tool_crash_child.py"), db_url, "crash_tools"],
        cwd=HERE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        execution_id = child.stdout.readline().strip()
        for _ in range(600):
            if {"append_line", "gate"} <= {c["tool"] for c in log.calls()}:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # append_line's completion is being recorded
        rows = await Store(db_url).tool_calls(
            await Store(db_url).resolve_execution_id(execution_id)
        )
        statuses = {r["tool"]: r["status"] for r in rows.values()}
        assert statuses == {"append_line": "completed", "gate": "running"}, statuses
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    orphan = log.calls("gate")[0]["pid"]
    gate.unlink()
    for _ in range(100):
        if _pid_gone(orphan):
            break
        await asyncio.sleep(0.05)

    register_crash_model()
    await Store(db_url).mark_interrupted()  # what the next start of any qmcp process does
    try:
        first = await service.resume_execution(execution_id, db_url=db_url)
        assert first.status == "pending", first.error
        (approval,) = await service.list_approvals("pending", db_url=db_url)
        assert "was running when the run stopped" in approval.question
        assert "t.gate" in approval.question
        await service.answer_approval(approval.id, True, db_url=db_url)  # type: ignore[arg-type]
        done = await service.resume_execution(execution_id, db_url=db_url)
        assert done.status == "completed", done.error
    finally:
        unregister_function("toolcrash")
    assert len(log.calls("append_line")) == 1, "a finished tool call was made again"
    assert len(log.calls("gate")) == 2, "the call in flight was made again once approved"
    content = done.output["content"]
    assert "appended: once" in content and "passed the gate: g" in content


@pytest.mark.slow
async def test_a_third_party_server_from_npm(db_url: str, functions: list[str]) -> None:
    """@modelcontextprotocol/server-everything, installed by `npm ci`, as an agent's tools."""
    binary = Path(__file__).parents[1] / "node_modules" / ".bin" / "mcp-server-everything"
    assert binary.exists(), "npm ci installs @modelcontextprotocol/server-everything"
    model = use(functions, "echoer", [("echo", {"message": "hello from qmcp"})])
    server = {"name": "everything", "command": str(binary), "allow": ["echo"]}
    topology = await solo(db_url, "echoer", model, [server])
    result = await service.run_topology(topology, {"prompt": "go"}, db_url=db_url)
    assert result.status == "completed", result.error
    assert "hello from qmcp" in result.output["content"]
    agent = await service.get_agent("echoer", db_url)
    (entry,) = await service.discover_tools(agent)
    assert [t["name"] for t in entry["tools"]] == ["echo"]


@pytest.mark.slow  # a tool server process
@pytest.mark.parametrize("mode", [{}, {"mode": "legacy"}], ids=["stateless-2026", "legacy"])
async def test_over_mcp_agents_take_tools_and_show_what_they_found(
    db_url: str, log: ToolLog, mode: dict[str, Any]
) -> None:
    from mcp import Client

    from qmcp_server.server import build_server

    async with Client(build_server(db_url), **mode) as client:
        created = await client.call_tool(
            "agents_create",
            {
                "name": "mcp_actor",
                "role": "executor",
                "model": "offline",
                "tools": [stdio_server(log, deny=["huge"], approve=["add"])],
                "max_tool_calls": 4,
            },
        )
        assert not created.is_error, created.content
        shown = (await client.call_tool("agents_show", {"name": "mcp_actor"})).structured_content
        assert shown is not None
        (server,) = shown["tools"]
        names = {t["name"]: t for t in server["tools"]}
        assert "huge" not in names and names["add"]["needs_approval"] is True
        assert (
            names["delete_everything"]["needs_approval"] and not names["lookup"]["needs_approval"]
        )
        bad = await client.call_tool(
            "agents_create",
            {"name": "x", "role": "executor", "tools": [{"name": "x", "command": "a", "oops": 1}]},
        )
        assert bad.is_error and "oops" in bad.content[0].text  # type: ignore[union-attr]
    assert shown["config"]["max_tool_calls"] == 4


@pytest.mark.slow  # a tool server process
async def test_an_mcp_client_approves_a_destructive_call_through_elicitation(
    db_url: str, log: ToolLog, functions: list[str]
) -> None:
    from mcp import Client
    from mcp_types import ElicitResult

    from qmcp_server.server import build_server

    asked: list[str] = []

    async def elicit(context: Any, params: Any) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"approve": True})

    model = use(functions, "mcp_wrecker", [("delete_everything", {"reason": "asked"})])
    await solo(db_url, "mcp_wrecker", model, [stdio_server(log)])
    async with Client(build_server(db_url), mode="legacy", elicitation_callback=elicit) as client:
        result = await client.call_tool(
            "topologies_run", {"topology": "mcp_wrecker_solo", "input": {"prompt": "go"}}
        )
    outcome = result.structured_content
    assert outcome is not None and outcome["status"] == "completed", outcome
    assert "t.delete_everything" in asked[0] and '"reason": "asked"' in asked[0]
    assert [c["tool"] for c in log.calls()] == ["delete_everything"]
    (approval,) = await service.list_approvals("approved", db_url=db_url)
    assert approval.decided_by == "elicitation"


@pytest.mark.slow  # a tool server process
async def test_a_read_only_call_in_flight_when_the_run_stopped_is_made_again_by_itself(
    db_url: str, log: ToolLog, functions: list[str], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    gate.touch()
    model = use(functions, "peeker", [("peek", {"label": "p"})])
    server = stdio_server(log, env={"TOOL_SERVER_GATE": str(gate)})
    topology = await solo(db_url, "peeker", model, [server])
    started = await service.start_run(topology, {"prompt": "go"}, db_url=db_url)
    task = asyncio.create_task(service.finish_run(started))
    for _ in range(400):
        if log.calls("peek"):
            break
        await asyncio.sleep(0.025)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rows = await Store(db_url).tool_calls(started.execution_id)
    assert [r["status"] for r in rows.values()] == ["running"]
    gate.unlink()
    done = await service.resume_execution(started.execution_id, db_url=db_url)
    assert done.status == "completed", done.error
    assert "peeked: p" in done.output["content"]
    assert len(log.calls("peek")) == 2 and await service.list_approvals(db_url=db_url) == []


async def test_over_http_a_client_may_not_make_the_server_start_programs(
    db_url: str, log: ToolLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp import Client

    from qmcp_server.server import build_server

    arguments = {"name": "rce", "role": "executor", "tools": [stdio_server(log)]}
    async with Client(build_server(db_url, remote=True)) as client:
        refused = await client.call_tool("agents_create", arguments)
        assert refused.is_error
        text = refused.content[0].text  # type: ignore[union-attr]
        assert "may not start programs on the server's machine" in text
        assert "QMCP_ALLOW_REMOTE_TOOL_COMMANDS=1" in text
        http_only = {
            "name": "ok",
            "role": "executor",
            "tools": [{"name": "d", "url": "http://h/m"}],
        }
        assert not (await client.call_tool("agents_create", http_only)).is_error
        monkeypatch.setenv("QMCP_ALLOW_REMOTE_TOOL_COMMANDS", "1")
        assert not (await client.call_tool("agents_create", arguments)).is_error
    assert [a.name for a in await service.list_agents(db_url=db_url)] == ["ok", "rce"]
