"""The MCP server driven in-process by the SDK's Client, in both protocol eras."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from mcp import Client
from mcp_types import CreateMessageResult, TextContent

from qmcp.agentframework.llm import register_function, unregister_function
from qmcp.agentframework.store import Store
from qmcp.agentframework.topologies import TopologyRegistry
from qmcp_server.server import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]
MODES = [pytest.param({}, id="stateless-2026"), pytest.param({"mode": "legacy"}, id="legacy")]
EXPECTED_TOOLS = {
    "agents_list",
    "agents_create",
    "agents_show",
    "agents_update",
    "agents_delete",
    "mixins_list",
    "topologies_list",
    "topologies_create",
    "topologies_show",
    "topologies_update",
    "topologies_delete",
    "topologies_run",
    "executions_list",
    "executions_get",
    "executions_cancel",
    "executions_resume",
    "runners_list",
    "flows_generate",
    "approvals_list",
    "approvals_answer",
}


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
    assert result.structured_content is not None
    return result.structured_content


async def error_of(client: Client, tool: str, **args: Any) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    return result.content[0].text  # type: ignore[union-attr]


async def row_counts(db_url: str) -> tuple[int, int, int]:
    from sqlalchemy import func, select

    from qmcp.agentframework.models import AgentType, Execution, Topology

    async with Store(db_url).session() as s:
        counts = []
        for table in (AgentType, Topology, Execution):
            counts.append((await s.execute(select(func.count()).select_from(table))).scalar_one())
    return counts[0], counts[1], counts[2]


async def make_pipeline(client: Client, model: str = "offline", name: str = "pipe") -> None:
    await call(client, "agents_create", name=f"{name}_planner", role="planner", model=model)
    await call(client, "agents_create", name=f"{name}_doer", role="executor", model=model)
    await call(
        client,
        "topologies_create",
        name=name,
        topology_type="pipeline",
        slots={"plan": f"{name}_planner", "do": f"{name}_doer"},
    )


@pytest.mark.parametrize("kwargs", MODES)
async def test_tools_listed_with_annotations_and_schemas(kwargs: dict[str, Any]) -> None:
    async with Client(build_server(), **kwargs) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == EXPECTED_TOOLS
    assert tools["agents_list"].annotations.read_only_hint is True
    assert tools["executions_cancel"].annotations.destructive_hint is True
    assert tools["topologies_run"].annotations.read_only_hint is False
    assert all(t.description and t.output_schema for t in tools.values())
    assert "wait" in tools["topologies_run"].input_schema["properties"]


@pytest.mark.parametrize("kwargs", MODES)
async def test_create_run_with_progress_and_read_record(
    kwargs: dict[str, Any], db_url: str
) -> None:
    async with Client(build_server(db_url), **kwargs) as client:
        await make_pipeline(client)
        shown = await call(client, "topologies_show", name="pipe")
        assert shown["slots"] == {"plan": "pipe_planner", "do": "pipe_doer"}
        assert "flowchart" in shown["mermaid"]
        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append((done, total, message))

        result = await client.call_tool(
            "topologies_run",
            {"topology": "pipe", "input": {"prompt": "plan a picnic"}},
            progress_callback=on_progress,
        )
        outcome = result.structured_content
        assert outcome is not None and outcome["status"] == "completed", outcome
        assert outcome["output"]["content"].startswith("[offline model]")
        assert [p[0] for p in progress] == [1, 2]
        assert all(p[1] == 2 for p in progress)
        resource = await client.read_resource(outcome["resource_uri"])
        record = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
        assert record["status"] == "completed"
        assert [i["key"] for i in record["invocations"]] == ["stage-0/plan", "stage-1/do"]
        listed = json.loads((await client.read_resource("qmcp://executions")).contents[0].text)  # type: ignore[union-attr]
        assert listed[0]["id"] == outcome["execution_id"]
        topology = json.loads(
            (await client.read_resource("qmcp://topologies/pipe")).contents[0].text
        )  # type: ignore[union-attr]
        assert topology["mermaid"].startswith("flowchart")
        agent = json.loads((await client.read_resource("qmcp://agents/pipe_doer")).contents[0].text)  # type: ignore[union-attr]
        assert agent["role"] == "executor"


@pytest.mark.parametrize("kwargs", MODES)
async def test_wait_false_returns_at_once_then_poll(kwargs: dict[str, Any], db_url: str) -> None:
    gate = asyncio.Event()

    async def slow(request: Any) -> str:
        await gate.wait()
        return f"done: {request.prompt[:20]}"

    register_function("gated", slow)
    try:
        async with Client(build_server(db_url), **kwargs) as client:
            await make_pipeline(client, "function:gated")
            started = await call(
                client, "topologies_run", topology="pipe", input={"prompt": "x"}, wait=False
            )
            assert started["status"] == "running"
            ident = started["execution_id"]
            polled = await call(client, "executions_get", execution_id=ident)
            assert polled["status"] == "running"
            gate.set()
            for _ in range(200):
                polled = await call(client, "executions_get", execution_id=ident)
                if polled["status"] != "running":
                    break
                await asyncio.sleep(0.02)
            assert polled["status"] == "completed"
            assert len(polled["invocations"]) == 2
    finally:
        unregister_function("gated")


@pytest.mark.parametrize("kwargs", MODES)
async def test_cancel_a_slow_run_then_resume_it(kwargs: dict[str, Any], db_url: str) -> None:
    calls: list[str] = []
    block = {"on": True}

    async def sometimes_slow(request: Any) -> str:
        calls.append(request.slot)
        if block["on"] and request.slot == "do":
            await asyncio.sleep(60)
        return f"answer from {request.slot}"

    register_function("slow", sometimes_slow)
    try:
        async with Client(build_server(db_url), **kwargs) as client:
            await make_pipeline(client, "function:slow")
            started = await call(
                client, "topologies_run", topology="pipe", input={"prompt": "x"}, wait=False
            )
            ident = started["execution_id"]
            for _ in range(200):
                if "do" in calls:
                    break
                await asyncio.sleep(0.01)
            cancelled = await call(client, "executions_cancel", execution_id=ident)
            assert cancelled["status"] == "cancelled"
            record = await call(client, "executions_get", execution_id=ident)
            assert record["status"] == "cancelled"
            again = await error_of(client, "executions_cancel", execution_id=ident)
            assert "not running" in again
            block["on"] = False
            resumed = await call(client, "executions_resume", execution_id=ident)
            assert resumed["status"] == "completed"
            assert calls == ["plan", "do", "do"], "the finished stage must not be called again"
    finally:
        unregister_function("slow")


async def test_client_cancelling_the_tool_call_cancels_the_run(db_url: str) -> None:
    started = asyncio.Event()

    async def hang(request: Any) -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    register_function("hang", hang)
    try:
        async with Client(build_server(db_url), mode="legacy") as client:
            await make_pipeline(client, "function:hang")
            task = asyncio.create_task(
                client.call_tool("topologies_run", {"topology": "pipe", "input": {"prompt": "x"}})
            )
            await asyncio.wait_for(started.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            listed: dict[str, Any] = {}
            for _ in range(300):
                listed = await call(client, "executions_list")
                if listed["executions"][0]["status"] != "running":
                    break
                await asyncio.sleep(0.02)
            assert listed["executions"][0]["status"] == "cancelled"
    finally:
        unregister_function("hang")


@pytest.mark.parametrize("kwargs", MODES)
async def test_resume_a_failed_run(kwargs: dict[str, Any], db_url: str) -> None:
    calls: list[str] = []
    broken = {"on": True}

    def flaky(request: Any) -> str:
        calls.append(request.slot)
        if broken["on"] and request.slot == "do":
            raise RuntimeError("tool backend down")
        return f"ok {request.slot}"

    register_function("flaky", flaky)
    try:
        async with Client(build_server(db_url), **kwargs) as client:
            await make_pipeline(client, "function:flaky")
            await call(
                client,
                "topologies_create",
                name="pipe_once",
                topology_type="pipeline",
                slots={"plan": "pipe_planner", "do": "pipe_doer"},
                config={"retry_failed_stages": False},
            )
            failed = await call(
                client,
                "topologies_run",
                topology="pipe_once",
                input={"prompt": "x"},
                timeout_seconds=30,
            )
            assert failed["status"] == "failed"
            assert "tool backend down" in failed["error"]
            broken["on"] = False
            planner_calls = calls.count("plan")
            resumed = await call(client, "executions_resume", execution_id=failed["execution_id"])
            assert resumed["status"] == "completed"
            assert calls.count("plan") == planner_calls
    finally:
        unregister_function("flaky")


@pytest.mark.parametrize("kwargs", MODES)
async def test_bad_input_is_a_clear_error_and_writes_nothing(
    kwargs: dict[str, Any], db_url: str
) -> None:
    async with Client(build_server(db_url), **kwargs) as client:
        await make_pipeline(client)
        before = await row_counts(db_url)
        cases = [
            ("topologies_run", {"topology": "nope", "input": {"prompt": "x"}}, "no topology named"),
            ("topologies_run", {"topology": "pipe", "input": "{not json"}, "not valid JSON"),
            ("topologies_run", {"topology": "pipe", "input": "[1, 2]"}, "valid dictionary"),
            ("topologies_run", {"topology": "pipe", "input": {"p": "x" * 1_100_000}}, "limit"),
            (
                "topologies_run",
                {"topology": "pipe", "input": {}, "runner": "warp"},
                "unknown runner",
            ),
            ("agents_create", {"name": "pipe_doer", "role": "executor"}, "already exists"),
            ("agents_create", {"name": "../etc/passwd", "role": "executor"}, "invalid agent name"),
            ("agents_create", {"name": "x", "role": "executor", "model": "gpt-9"}, "unknown model"),
            (
                "agents_create",
                {"name": "x", "role": "executor", "capabilities": [{"name": "telepathy"}]},
                "unknown mixin",
            ),
            (
                "topologies_create",
                {"name": "t", "topology_type": "debte", "slots": {"a": "pipe_doer"}},
                "unknown topology type",
            ),
            (
                "topologies_create",
                {"name": "t", "topology_type": "ensemble", "slots": {"ensemble_0": "pipe_doer"}},
                "aggregator",
            ),
            (
                "topologies_create",
                {"name": "t", "topology_type": "pipeline", "slots": {"a": "ghost"}},
                "no agent named 'ghost'",
            ),
            (
                "topologies_create",
                {
                    "name": "t",
                    "topology_type": "pipeline",
                    "slots": {"a": "pipe_doer"},
                    "config": {"stagez": []},
                },
                "unknown field",
            ),
            (
                "executions_get",
                {"execution_id": "'; DROP TABLE executions; --"},
                "not an execution id",
            ),
            (
                "executions_resume",
                {"execution_id": "00000000-0000-0000-0000-000000000000"},
                "no execution",
            ),
        ]
        for tool, args, expected in cases:
            message = await error_of(client, tool, **args)
            assert expected in message, (tool, args, message)
            assert "Traceback" not in message
        wrong_type = await client.call_tool("agents_create", {"name": 5, "role": "wizard"})
        assert wrong_type.is_error
        assert await row_counts(db_url) == before
        with pytest.raises(Exception, match="no execution"):
            await client.read_resource("qmcp://executions/00000000-0000-0000-0000-000000000000")
        with pytest.raises(Exception, match="no topology"):
            await client.read_resource("qmcp://topologies/ghost")


async def test_sampling_agent_answered_by_the_client_model_in_legacy_mode(db_url: str) -> None:
    seen: list[str] = []

    async def sample(context: Any, params: Any) -> CreateMessageResult:
        seen.append(params.messages[-1].content.text)
        return CreateMessageResult(
            role="assistant",
            content=TextContent(type="text", text="client model says hi"),
            model="client-llm-1",
        )

    async with Client(build_server(db_url), mode="legacy", sampling_callback=sample) as client:
        await make_pipeline(client, "sampling")
        outcome = await call(client, "topologies_run", topology="pipe", input={"prompt": "hello"})
    assert outcome["status"] == "completed", outcome
    assert outcome["output"]["content"] == "client model says hi"
    assert seen[0] == "hello"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"mode": "legacy"}, "does not support sampling"),
        ({}, "does not support sampling"),  # stateless: asked in rounds, if it can sample
    ],
)
async def test_sampling_fails_clearly_where_the_protocol_or_client_cannot(
    kwargs: dict[str, Any], expected: str, db_url: str
) -> None:
    async with Client(build_server(db_url), **kwargs) as client:
        await make_pipeline(client, "sampling")
        outcome = await call(client, "topologies_run", topology="pipe", input={"prompt": "hello"})
    assert outcome["status"] == "failed"
    assert expected in outcome["error"]


async def test_prompt_and_listing_tools(db_url: str) -> None:
    async with Client(build_server(db_url)) as client:
        await make_pipeline(client)
        prompts = (await client.list_prompts()).prompts
        assert [p.name for p in prompts] == [
            "run_workflow",
            "build_topology",
            "create_agent",
            "explain_execution",
        ]
        prompt = await client.get_prompt("run_workflow", {"request": "compare two laptops"})
        text = prompt.messages[0].content.text  # type: ignore[union-attr]
        assert "compare two laptops" in text and "pipe_doer" in text
        for kind in TopologyRegistry.items():  # the kinds come from the registry, as they are
            assert f"{kind.type.value}: {kind.summary}" in text
        assert {m["name"] for m in (await call(client, "mixins_list"))["mixins"]} >= {
            "reasoning",
            "structured_output",
            "memory",
        }
        runners = {r["runner_type"] for r in (await call(client, "runners_list"))["runners"]}
        assert {"local", "async"} <= runners
        agents = (await call(client, "agents_list", role="planner"))["agents"]
        assert [a["name"] for a in agents] == ["pipe_planner"]
        topologies = (await call(client, "topologies_list"))["topologies"]
        assert (
            topologies[0]["slots"] == {"plan": None, "do": None} or topologies[0]["name"] == "pipe"
        )
