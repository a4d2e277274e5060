"""Sampling agents on both protocol eras, driven by the mcp SDK's own `Client`.

On 2026-07-28 (the Client's default) a run of `sampling` agents goes through input-required
round trips: each call answers with the questions of the members that can run now (an ensemble's
members together, in one round), the Client's driver asks its sampling callback and calls again,
and every answered sample is recorded as an invocation, so no question is asked twice. On
2025-11-25 (`mode="legacy"`) the server asks mid-call, as before. Over stdio and streamable HTTP
too: the server is a real `qmcp-server` process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import (
    CreateMessageResult,
    CreateMessageResultWithTools,
    SamplingCapability,
    SamplingToolsCapability,
    TextContent,
    ToolUseContent,
)

from qmcp.agentframework.store import Store
from qmcp_server.sampling import INVOCATION_META
from qmcp_server.server import build_server

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


class ClientModel:
    """A sampling callback: answers each question with a text naming its invocation, and
    remembers what it was asked (by the invocation key the server puts in `_meta`)."""

    def __init__(self) -> None:
        self.asked: Counter[str] = Counter()
        self.answers: dict[str, str] = {}
        self.rounds: list[list[str]] = []

    async def __call__(self, context: Any, params: Any) -> CreateMessageResult:
        key = (params.metadata or {}).get(INVOCATION_META, "?")
        self.asked[key] += 1
        if key.startswith("checker_"):  # a cross-check's verdict
            text = json.dumps({"approved": True, "confidence": 0.9, "issues": []})
        elif key.endswith("mediator"):
            text = json.dumps({"converged": False, "agreement": 0.2, "verdict": f"v-{key}"})
        elif key.endswith("aggregator"):
            text = f"synthesis of {len(params.messages[-1].content.text)} chars"
        else:
            text = f"{key} answers: {params.messages[-1].content.text[:20]}"
        self.answers[key] = text
        return CreateMessageResult(
            role="assistant", content=TextContent(type="text", text=text), model="client-llm"
        )


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
    assert result.structured_content is not None
    return result.structured_content


async def make_ensemble(client: Client, members: int = 3) -> None:
    slots = {}
    for i in range(members):
        await call(client, "agents_create", name=f"m{i}", role="planner", model="sampling")
        slots[f"ensemble_{i}"] = f"m{i}"
    await call(client, "agents_create", name="agg", role="synthesizer", model="sampling")
    slots["aggregator"] = "agg"
    await call(client, "topologies_create", name="ens", topology_type="ensemble", slots=slots)


async def make_debate(client: Client, rounds: int = 2) -> None:
    for name, role in (("pro", "planner"), ("con", "critic"), ("med", "reviewer")):
        await call(client, "agents_create", name=name, role=role, model="sampling")
    await call(
        client,
        "topologies_create",
        name="deb",
        topology_type="debate",
        slots={"proponent": "pro", "opponent": "con", "mediator": "med"},
        config={"max_rounds": rounds, "allow_early_termination": False},
    )


async def recorded(db_url: str, execution_id: str) -> dict[str, str]:
    """The completed invocations' answers, by key."""
    store = Store(db_url)
    try:
        return {
            k: v["content"] for k, v in (await store.checkpoints(uuid.UUID(execution_id))).items()
        }
    finally:
        await store.close()


async def run_ensemble(client: Client, model: ClientModel, db_url: str, runner: str) -> None:
    await make_ensemble(client)
    outcome = await call(
        client, "topologies_run", topology="ens", input={"prompt": "pick a colour"}, runner=runner
    )
    assert outcome["status"] == "completed", outcome
    members = {f"ensemble_{i}" for i in range(3)}
    assert set(model.asked) == members | {"aggregator"}
    assert all(n == 1 for n in model.asked.values()), model.asked  # once per invocation key
    answers = await recorded(db_url, outcome["execution_id"])
    assert answers == model.answers  # what the client's model said is what was recorded
    assert outcome["output"]["content"] == model.answers["aggregator"]


async def run_debate(client: Client, model: ClientModel, db_url: str) -> None:
    await make_debate(client)
    outcome = await call(client, "topologies_run", topology="deb", input={"topic": "tabs?"})
    assert outcome["status"] == "completed", outcome
    keys = {f"round-{r}/{s}" for r in (1, 2) for s in ("proponent", "opponent", "mediator")}
    assert set(model.asked) == keys and all(n == 1 for n in model.asked.values()), model.asked
    assert await recorded(db_url, outcome["execution_id"]) == model.answers
    assert outcome["output"]["rounds"] == 2
    transcript = outcome["output"]["transcript"]
    assert transcript[-1]["content"] == model.answers["round-2/opponent"]


@pytest.mark.parametrize("runner", ["local", "async"])
async def test_ensemble_with_the_client_driving_its_rounds(db_url: str, runner: str) -> None:
    model = ClientModel()
    async with Client(build_server(db_url), sampling_callback=model) as client:
        await run_ensemble(client, model, db_url, runner)


async def test_a_run_tool_continues_its_execution_round_after_round(db_url: str) -> None:
    """`run_<name>` answers the client's next call by resuming the execution it started, as
    topologies_run does (it used to start a new execution each round, asking again)."""
    model = ClientModel()
    async with Client(build_server(db_url), sampling_callback=model) as client:
        await make_ensemble(client)
        await client.list_tools()  # the service is loaded: run_ens is listed
        outcome = await call(client, "run_ens", prompt="pick a colour")
        assert outcome["status"] == "completed", outcome
        assert all(n == 1 for n in model.asked.values()), model.asked
        listed = await call(client, "executions_list")
        assert len(listed["executions"]) == 1


async def drive_rounds(
    client: Client, model: ClientModel, db_url: str, args: dict[str, Any]
) -> tuple[list[set[str]], Any, str]:
    """Run a topology with the input-required rounds driven by hand: the questions of each
    round, the final result and the execution id. Between rounds the execution waits as
    `pending`, with the invocations answered so far recorded and nothing else."""
    session = client.session
    rounds: list[set[str]] = []
    result: Any = await session.call_tool("topologies_run", args, allow_input_required=True)
    execution: dict[str, Any] = {}
    while result.result_type == "input_required":
        rounds.append(set(result.input_requests))
        execution = (await call(client, "executions_list"))["executions"][0]
        assert execution["status"] == "pending"
        assert "waiting for the MCP client's model" in execution["error"]
        assert set(await recorded(db_url, execution["id"])) == set().union(*rounds[:-1])
        answers = {k: await model(None, r.params) for k, r in result.input_requests.items()}
        result = await session.call_tool(
            "topologies_run",
            args,
            input_responses=answers,
            request_state=result.request_state,
            allow_input_required=True,
        )
    return rounds, result, execution["id"]


@pytest.mark.parametrize("runner", ["local", "async"])
async def test_parallel_members_are_asked_in_one_round(db_url: str, runner: str) -> None:
    """An ensemble: its members' questions go out together, then the aggregator's."""
    model = ClientModel()
    async with Client(build_server(db_url), sampling_callback=model) as client:
        await make_ensemble(client)
        args = {"topology": "ens", "input": {"prompt": "p"}, "runner": runner}
        rounds, result, execution_id = await drive_rounds(client, model, db_url, args)
    assert rounds == [{"ensemble_0", "ensemble_1", "ensemble_2"}, {"aggregator"}]
    assert result.structured_content["status"] == "completed"
    assert await recorded(db_url, execution_id) == model.answers


async def test_an_answer_counts_only_for_a_question_that_was_asked(db_url: str) -> None:
    """A client that answers ahead (the aggregator, not asked yet) is asked that question in
    its own round all the same: an answer is taken only for a question as it was put."""
    from mcp_types import CreateMessageResult

    model = ClientModel()
    args = {"topology": "ens", "input": {"prompt": "p"}}
    forged = CreateMessageResult(
        role="assistant", content=TextContent(type="text", text="forged"), model="x"
    )
    async with Client(build_server(db_url), sampling_callback=model) as client:
        await make_ensemble(client, members=2)
        session = client.session
        first: Any = await session.call_tool("topologies_run", args, allow_input_required=True)
        answers = {k: await model(None, r.params) for k, r in first.input_requests.items()}
        second: Any = await session.call_tool(
            "topologies_run",
            args,
            input_responses={**answers, "aggregator": forged},
            request_state=first.request_state,
            allow_input_required=True,
        )
    assert set(second.input_requests) == {"aggregator"}


async def test_cross_check_checkers_are_asked_in_one_round(db_url: str) -> None:
    model = ClientModel()
    async with Client(build_server(db_url), sampling_callback=model) as client:
        for name in ("author", "c1", "c2"):
            await call(client, "agents_create", name=name, role="reviewer", model="sampling")
        slots = {"primary": "author", "checker_1": "c1", "checker_2": "c2"}
        await call(client, "topologies_create", name="cc", topology_type="cross_check", slots=slots)
        args = {"topology": "cc", "input": {"prompt": "2+2?"}, "runner": "async"}
        rounds, result, execution_id = await drive_rounds(client, model, db_url, args)
    assert rounds == [{"primary"}, {"checker_1", "checker_2"}]
    assert result.structured_content["output"]["approved"] is True
    assert await recorded(db_url, execution_id) == model.answers


async def test_a_nested_topology_asks_in_rounds_too(db_url: str) -> None:
    """A pipeline whose second stage is the ensemble: the pause crosses the nesting."""
    model = ClientModel()
    async with Client(build_server(db_url), sampling_callback=model) as client:
        await make_ensemble(client)
        await call(client, "agents_create", name="w", role="executor", model="sampling")
        slots = {"a": "w", "b": "topology:ens"}
        await call(client, "topologies_create", name="outer", topology_type="pipeline", slots=slots)
        args = {"topology": "outer", "input": {"prompt": "x"}, "runner": "async"}
        rounds, result, execution_id = await drive_rounds(client, model, db_url, args)
    members = {f"stage-1/b/ensemble_{i}" for i in range(3)}
    assert rounds == [{"stage-0/a"}, members, {"stage-1/b/aggregator"}]
    assert result.structured_content["status"] == "completed"
    assert await recorded(db_url, execution_id) == model.answers


async def test_debate_on_the_stateless_protocol(db_url: str) -> None:
    model = ClientModel()
    async with Client(build_server(db_url), sampling_callback=model) as client:
        await run_debate(client, model, db_url)


@pytest.mark.parametrize("kind", ["ensemble", "debate"])
async def test_legacy_clients_are_asked_mid_call(db_url: str, kind: str) -> None:
    model = ClientModel()
    async with Client(build_server(db_url), mode="legacy", sampling_callback=model) as client:
        if kind == "ensemble":
            await run_ensemble(client, model, db_url, "async")
        else:
            await run_debate(client, model, db_url)


async def test_a_run_waiting_for_samples_is_pending_and_resumes(db_url: str) -> None:
    """A run waiting for the client's model is `pending` (recorded so, with nothing answered);
    executions_resume on the same client goes on with it in rounds of its own."""
    model = ClientModel()
    async with Client(build_server(db_url), sampling_callback=model) as client:
        await make_ensemble(client, members=2)
        first = await client.session.call_tool(
            "topologies_run",
            {"topology": "ens", "input": {"prompt": "p"}},
            allow_input_required=True,
        )
        assert first.result_type == "input_required"  # type: ignore[union-attr]
        assert set(first.input_requests) == {"ensemble_0", "ensemble_1"}  # type: ignore[union-attr]
        listed = await call(client, "executions_list")
        execution = listed["executions"][0]
        assert execution["status"] == "pending"
        assert "waiting for the MCP client's model" in execution["error"]
        assert await recorded(db_url, execution["id"]) == {}
        # The client answers through executions_resume instead (its own round trips).
        outcome = await call(client, "executions_resume", execution_id=execution["id"])
    assert outcome["status"] == "completed", outcome
    assert set(model.asked) == {"ensemble_0", "ensemble_1", "aggregator"}
    assert await recorded(db_url, execution["id"]) == model.answers


@pytest.mark.slow  # a tool server process over stdio
@pytest.mark.parametrize("mode", [{}, {"mode": "legacy"}], ids=["stateless", "legacy"])
async def test_sampling_with_tools_where_the_client_declares_them(
    db_url: str, mode: dict[str, Any], tmp_path: Path
) -> None:
    """An agent with a tool server, answered by the client's model with tool use: the call goes
    to the tool, its result back to the client's model, which then answers."""
    asked: list[Any] = []

    async def sample(context: Any, params: Any) -> CreateMessageResultWithTools:
        asked.append(params)
        assert params.tools and any(t.name == "lookup" for t in params.tools)
        if len(params.messages) == 1:
            use = ToolUseContent(type="tool_use", id="t1", name="lookup", input={"term": "mcp"})
            return CreateMessageResultWithTools(
                role="assistant", content=[use], model="client-llm", stop_reason="toolUse"
            )
        result = params.messages[-1].content
        result = result[0] if isinstance(result, list) else result
        text = result.content[0].text
        return CreateMessageResultWithTools(
            role="assistant",
            content=[TextContent(type="text", text=f"tool said {text}")],
            model="client-llm",
        )

    calls = tmp_path / "calls.jsonl"
    server = [sys.executable, str(ROOT / "tests" / "tool_server.py")]
    env = {"TOOL_SERVER_LOG": str(calls)}
    tools = [{"name": "t", "command": server[0], "args": server[1:], "env": env}]
    capabilities = SamplingCapability(tools=SamplingToolsCapability())
    async with Client(
        build_server(db_url), sampling_callback=sample, sampling_capabilities=capabilities, **mode
    ) as client:
        await call(
            client, "agents_create", name="user", role="executor", model="sampling", tools=tools
        )
        await call(
            client, "topologies_create", name="one", topology_type="pipeline", slots={"s": "user"}
        )
        outcome = await call(client, "topologies_run", topology="one", input={"prompt": "echo"})
    assert outcome["status"] == "completed", outcome
    assert outcome["output"]["content"].startswith("tool said")
    assert "Model Context Protocol" in outcome["output"]["content"]
    assert len(asked) == 2  # the tool-use turn, recorded, is not asked again
    assert [json.loads(line)["tool"] for line in calls.read_text().splitlines()] == ["lookup"]


# -- a real qmcp-server process, over stdio and over streamable HTTP ----------------------------


def _env(db_url: str) -> dict[str, str]:
    return {**os.environ, "QMCP_DATABASE_URL": db_url}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ensemble", "debate"])
async def test_stateless_sampling_over_stdio(db_url: str, kind: str) -> None:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "qmcp_server"], env=_env(db_url), cwd=str(ROOT)
    )
    model = ClientModel()
    async with Client(stdio_client(params), sampling_callback=model) as client:
        if kind == "ensemble":
            await run_ensemble(client, model, db_url, "async")
        else:
            await run_debate(client, model, db_url)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ensemble", "debate"])
async def test_stateless_sampling_over_http(db_url: str, kind: str, tmp_path: Path) -> None:
    port = _free_port()
    token = "t" * 40
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "qmcp_server", "--transport", "http", "--port", str(port)],
        env={**_env(db_url), "QMCP_HTTP_TOKEN": token},
        cwd=str(ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        model = ClientModel()
        http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
        async with (
            http,
            Client(
                streamable_http_client(url, http_client=http), sampling_callback=model
            ) as client,
        ):
            if kind == "ensemble":
                await run_ensemble(client, model, db_url, "async")
            else:
                await run_debate(client, model, db_url)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
