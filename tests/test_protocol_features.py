"""Subscriptions, logging, completions, inline topologies and `run_<name>` tools, through the SDK's
own `Client` in both protocol eras (2026-07-28 stateless by default, and `mode="legacy"`)."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import gate_functions  # function:gated and function:broken
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import (
    INVALID_PARAMS,
    LoggingMessageNotificationParams,
    PromptReference,
    ResourceListChangedNotification,
    ResourceTemplateReference,
    ResourceUpdatedNotification,
    ToolListChangedNotification,
)

from qmcp.agentframework import service
from qmcp_server.server import build_server

pytestmark = pytest.mark.anyio
MODES = [pytest.param({}, id="stateless-2026"), pytest.param({"mode": "legacy"}, id="legacy")]
WAIT = 30.0  # seconds: a bound for things that happen in milliseconds, never a sleep


@pytest.fixture(autouse=True)
def _gate_functions() -> None:
    gate_functions.register()


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file whose existence lets `function:gated` answer."""
    path = tmp_path / "gate"
    monkeypatch.setenv("QMCP_TEST_GATE", str(path))
    return path


class Heard:
    """Every notification a client received, in order, and its log lines."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.logs: list[LoggingMessageNotificationParams] = []
        self.changed = anyio.Event()

    async def on_message(self, message: Any) -> None:
        self.messages.append(message)
        self.changed.set()

    async def on_log(self, params: LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    def updated(self, uri: str) -> int:
        return sum(
            isinstance(m, ResourceUpdatedNotification) and m.params.uri == uri
            for m in self.messages
        )

    def count(self, kind: type) -> int:
        return sum(isinstance(m, kind) for m in self.messages)

    async def until(self, ready: Callable[[], bool]) -> None:
        with anyio.fail_after(WAIT):
            while not ready():
                self.changed = anyio.Event()
                await self.changed.wait()


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def legacy(client: Client) -> bool:
    return client.protocol_version == "2025-11-25"


@asynccontextmanager
async def subscribed(client: Client, uri: str) -> AsyncIterator[None]:
    """Subscribed to `uri` (and the list changes) the way the client's era has it."""
    if legacy(client):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)  # removed in 2026-07-28 only
            await client.subscribe_resource(uri)
        yield
        return
    async with client.listen(resources_list_changed=True, resource_subscriptions=[uri]):
        yield


async def set_level(client: Client, level: str) -> None:
    if legacy(client):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await client.set_logging_level(level)  # type: ignore[arg-type]


async def gated_pipeline(client: Client, name: str = "gp") -> None:
    for agent in ("g1", "g2"):
        await call(client, "agents_create", name=agent, role="executor", model="function:gated")
    await call(
        client,
        "topologies_create",
        name=name,
        topology_type="pipeline",
        slots={"a": "g1", "b": "g2"},
    )


async def running_execution(client: Client) -> str:
    """The id of the execution in flight (the gate holds it)."""
    with anyio.fail_after(WAIT):
        while True:
            listed = await call(client, "executions_list", status="running")
            if listed["executions"]:
                return str(listed["executions"][0]["id"])
            await anyio.sleep(0.01)


async def run_while_subscribed(client: Client, heard: Heard, gate: Path) -> str:
    """Run the gated pipeline, subscribe to its execution mid-run, then let it finish; the
    execution id."""
    outcome: dict[str, Any] = {}

    async def run() -> None:
        outcome.update(await call(client, "topologies_run", topology="gp", input={"prompt": "x"}))

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        ident = await running_execution(client)
        async with subscribed(client, f"qmcp://executions/{ident}"):
            gate.touch()
            await heard.until(lambda: heard.updated(f"qmcp://executions/{ident}") >= 3)
            await call(client, "executions_get", execution_id=ident)  # a round trip: no more
    assert outcome["status"] == "completed" and outcome["execution_id"] == ident
    return ident


# -- subscriptions ----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", MODES)
async def test_a_subscriber_hears_each_invocation_and_the_end(
    kwargs: dict[str, Any], db_url: str, gate: Path
) -> None:
    heard = Heard()
    async with Client(build_server(db_url), message_handler=heard.on_message, **kwargs) as client:
        assert client.server_capabilities.resources is not None
        assert client.server_capabilities.resources.subscribe
        await gated_pipeline(client)
        ident = await run_while_subscribed(client, heard, gate)
    # Two invocations, then the end: exactly three updates of that execution's record.
    assert heard.updated(f"qmcp://executions/{ident}") == 3


@pytest.mark.parametrize("kwargs", MODES)
async def test_a_run_starting_and_ending_changes_the_execution_list(
    kwargs: dict[str, Any], db_url: str
) -> None:
    heard = Heard()
    async with Client(build_server(db_url), message_handler=heard.on_message, **kwargs) as client:
        await call(client, "agents_create", name="o", role="executor", model="offline")
        await call(
            client, "topologies_create", name="solo", topology_type="pipeline", slots={"a": "o"}
        )
        async with subscribed(client, "qmcp://executions"):
            await call(client, "topologies_run", topology="solo", input={"prompt": "1"})
            # Started and ended: the list's content changed twice, what it holds once.
            await heard.until(
                lambda: (
                    heard.updated("qmcp://executions") >= 2
                    and heard.count(ResourceListChangedNotification) >= 1
                )
            )
            await call(client, "executions_list")  # a round trip: nothing more came
        assert heard.updated("qmcp://executions") == 2
        assert heard.count(ResourceListChangedNotification) == 1


async def test_legacy_unsubscribe_stops_the_updates_and_list_changes_reach_everyone(
    db_url: str,
) -> None:
    heard = Heard()
    server = build_server(db_url)
    async with Client(server, message_handler=heard.on_message, mode="legacy") as client:
        assert client.server_capabilities.resources.list_changed  # type: ignore[union-attr]
        await call(client, "agents_create", name="o", role="executor", model="offline")
        await call(
            client, "topologies_create", name="solo", topology_type="pipeline", slots={"a": "o"}
        )
        async with subscribed(client, "qmcp://executions"):
            await call(client, "topologies_run", topology="solo", input={"prompt": "1"})
            # Started and ended: the list's content changed twice, its membership once.
            assert heard.updated("qmcp://executions") == 2
            assert heard.count(ResourceListChangedNotification) == 1
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await client.unsubscribe_resource("qmcp://executions")
            await call(client, "topologies_run", topology="solo", input={"prompt": "2"})
        assert heard.updated("qmcp://executions") == 2
        assert heard.count(ResourceListChangedNotification) == 2  # not a subscription: all hear


async def test_a_background_run_notifies_a_legacy_subscriber_on_its_own_stream(
    db_url: str, gate: Path
) -> None:
    """wait=false: the call has answered, so the updates go on the connection's own stream."""
    heard = Heard()
    async with Client(
        build_server(db_url), message_handler=heard.on_message, mode="legacy"
    ) as client:
        await gated_pipeline(client)
        started = await call(
            client, "topologies_run", topology="gp", input={"prompt": "x"}, wait=False
        )
        uri = started["resource_uri"]
        async with subscribed(client, uri):
            gate.touch()
            await heard.until(lambda: heard.updated(uri) >= 3)
            record = await client.read_resource(uri)
        assert json.loads(record.contents[0].text)["status"] == "completed"  # type: ignore[union-attr]
        assert heard.updated(uri) == 3


# -- logging ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", MODES)
async def test_a_runs_log_lines_reach_the_client_at_its_level(
    kwargs: dict[str, Any], db_url: str
) -> None:
    heard = Heard()
    modern = "mode" not in kwargs
    async with Client(
        build_server(db_url),
        logging_callback=heard.on_log,
        log_level="warning" if modern else None,  # 2026: the per-request opt-in
        **kwargs,
    ) as client:
        assert client.server_capabilities.logging is not None
        await set_level(client, "warning")
        await call(client, "agents_create", name="bad", role="executor", model="function:broken")
        await call(
            client, "topologies_create", name="fails", topology_type="pipeline", slots={"a": "bad"}
        )
        outcome = await call(client, "topologies_run", topology="fails", input={"prompt": "x"})
    assert outcome["status"] == "failed"
    lines = [(log.level, str(log.data)) for log in heard.logs]
    assert lines, "no log lines reached the client"
    assert all(level == "warning" for level, _ in lines), lines  # the INFO lines were filtered
    assert any("attempt 1 failed: a is broken on purpose" in text for _, text in lines), lines
    assert any(f"execution {outcome['execution_id']} failed" in text for _, text in lines)
    assert {log.logger for log in heard.logs} == {"qmcp.run"}


@pytest.mark.parametrize("kwargs", MODES)
async def test_run_config_log_level_filters_before_the_clients_level(
    kwargs: dict[str, Any], db_url: str
) -> None:
    heard = Heard()
    modern = "mode" not in kwargs
    async with Client(
        build_server(db_url),
        logging_callback=heard.on_log,
        log_level="debug" if modern else None,
        **kwargs,
    ) as client:
        await set_level(client, "debug")
        await call(client, "agents_create", name="o", role="executor", model="offline")
        await call(
            client, "topologies_create", name="solo", topology_type="pipeline", slots={"a": "o"}
        )
        await call(client, "topologies_run", topology="solo", input={"prompt": "x"})
        said = len(heard.logs)
        assert said and {log.level for log in heard.logs} == {"info"}
        quiet = await call(
            client, "topologies_run", topology="solo", input={"prompt": "x"}, log_level="WARNING"
        )
    assert quiet["status"] == "completed"
    assert len(heard.logs) == said  # a completed run logs nothing at WARNING


async def test_a_legacy_client_that_set_no_level_gets_no_log_lines(db_url: str) -> None:
    heard = Heard()
    async with Client(build_server(db_url), logging_callback=heard.on_log, mode="legacy") as c:
        await call(c, "agents_create", name="o", role="executor", model="offline")
        await call(c, "topologies_create", name="solo", topology_type="pipeline", slots={"a": "o"})
        await call(c, "topologies_run", topology="solo", input={"prompt": "x"})
    assert heard.logs == []


# -- completions ------------------------------------------------------------------------------


def prompt(name: str) -> PromptReference:
    return PromptReference(type="ref/prompt", name=name)


def template(uri: str) -> ResourceTemplateReference:
    return ResourceTemplateReference(type="ref/resource", uri=uri)


@pytest.mark.postgres  # execution ids complete by a range of the primary key, on both backends
@pytest.mark.parametrize("kwargs", MODES)
async def test_completions_for_each_kind_of_argument(kwargs: dict[str, Any], db_url: str) -> None:
    async with Client(build_server(db_url), **kwargs) as client:
        assert client.server_capabilities.completions is not None
        for name, role in (("alpha", "planner"), ("alps", "critic"), ("beta", "executor")):
            await call(client, "agents_create", name=name, role=role, model="offline")
        await call(
            client, "topologies_create", name="flow", topology_type="pipeline", slots={"a": "alpha"}
        )
        await call(
            client, "topologies_create", name="fan", topology_type="pipeline", slots={"a": "beta"}
        )
        ran = await call(client, "topologies_run", topology="flow", input={"prompt": "x"})
        ident = ran["execution_id"]

        async def values(ref: Any, argument: str, typed: str) -> list[str]:
            result = await client.complete(ref, {"name": argument, "value": typed})
            return result.completion.values

        assert await values(template("qmcp://agents/{name}"), "name", "al") == ["alpha", "alps"]
        assert sorted(await values(template("qmcp://topologies/{name}"), "name", "f")) == [
            "fan",
            "flow",
        ]
        for ref in (
            template("qmcp://executions/{execution_id}"),
            template("qmcp://executions/{execution_id}/view"),
            prompt("explain_execution"),
        ):
            assert await values(ref, "execution_id", ident[:6]) == [ident]
            assert await values(ref, "execution_id", ident[:10].replace("-", "")) == [ident]
            assert await values(ref, "execution_id", "zz") == []  # not an id's start
        assert await values(prompt("run_workflow"), "runner", "") == ["async", "local", "metaflow"]
        assert await values(prompt("create_agent"), "role", "c") == ["critic", "coordinator"]
        assert await values(prompt("build_topology"), "topology_type", "c") == [
            "cross_check",
            "chain_of_command",
        ]
        assert await values(prompt("run_workflow"), "style", "") == ["pipeline", "ensemble"]
        models = await values(prompt("create_agent"), "model", "")
        assert {"offline", "sampling", "CLAUDE_SONNET", "claude-sonnet-4-5"} <= set(models)
        assert "function:gated" in models  # a registered function is a model too
        assert await values(prompt("create_agent"), "model", "OFF") == ["offline", "OFFLINE"]
        assert await values(prompt("create_agent"), "purpose", "any") == []  # free text
        # Another server's prompt (the conformance suite's): an answer with nothing in it.
        assert await values(prompt("test_prompt_with_arguments"), "arg1", "par") == []
        assert await values(template("test://template/{id}/data"), "id", "1") == []


@pytest.mark.parametrize("kwargs", MODES)
async def test_the_new_prompts_say_what_to_call(kwargs: dict[str, Any], db_url: str) -> None:
    async with Client(build_server(db_url), **kwargs) as client:
        names = {p.name for p in (await client.list_prompts()).prompts}
        assert names == {"run_workflow", "build_topology", "create_agent", "explain_execution"}
        got = await client.get_prompt(
            "build_topology", {"goal": "pick a database", "topology_type": "debate"}
        )
        text = got.messages[0].content.text  # type: ignore[union-attr]
        assert '"topic": <the goal>' in text and "proponent, opponent and mediator" in text
        with pytest.raises(MCPError) as raised:
            await client.get_prompt("create_agent", {"purpose": "x", "model": "gpt-nonsense"})
        assert raised.value.error.code == INVALID_PARAMS
        assert "unknown model 'gpt-nonsense'" in raised.value.error.message
        with pytest.raises(MCPError) as raised:
            await client.get_prompt("explain_execution", {"execution_id": "0000"})
        assert raised.value.error.code == INVALID_PARAMS


# -- an inline topology -----------------------------------------------------------------------


DEBATE = {
    "topology_type": "debate",
    "config": {"max_rounds": 1},
    "slots": {
        "proponent": {"role": "critic", "model": "offline", "system_prompt": "Argue for it."},
        "opponent": {"role": "critic", "model": "offline"},
        "mediator": {"role": "synthesizer", "model": "offline", "name": "judge"},
    },
}


@pytest.mark.parametrize("kwargs", MODES)
async def test_an_inline_topology_runs_and_stores_nothing_but_the_execution(
    kwargs: dict[str, Any], db_url: str
) -> None:
    async with Client(build_server(db_url), **kwargs) as client:
        outcome = await call(client, "topologies_run", topology=DEBATE, input={"topic": "tabs"})
        assert outcome["status"] == "completed", outcome
        assert outcome["topology_name"] == "inline"
        assert (await call(client, "agents_list"))["agents"] == []
        assert (await call(client, "topologies_list"))["topologies"] == []
        assert not [t for t in (await client.list_tools()).tools if t.name.startswith("run_")]
        listed = (await call(client, "executions_list"))["executions"]
        assert [e["id"] for e in listed] == [outcome["execution_id"]]
    execution, invocations = await service.get_execution(outcome["execution_id"], db_url)
    snapshot = execution.snapshot["agents"]
    assert snapshot["proponent"]["config"]["system_prompt"] == "Argue for it."
    assert snapshot["mediator"]["name"] == "judge"
    assert {i.agent_name for i in invocations} == {"proponent", "opponent", "judge"}


async def test_an_inline_run_resumes_from_its_snapshot(db_url: str, gate: Path) -> None:
    inline = {
        "topology_type": "pipeline",
        "slots": {
            "first": {"role": "planner", "model": "offline"},
            "second": {"role": "executor", "model": "function:gated"},
        },
    }
    async with Client(build_server(db_url)) as client:
        started = await call(
            client, "topologies_run", topology=inline, input={"prompt": "x"}, wait=False
        )
        ident = started["execution_id"]
        await running_execution(client)
        await call(client, "executions_cancel", execution_id=ident)
        gate.touch()
        resumed = await call(client, "executions_resume", execution_id=ident)
    assert resumed["status"] == "completed", resumed
    _, invocations = await service.get_execution(ident, db_url)
    assert [i.slot for i in invocations if i.status == "completed"] == ["first", "second"]


@pytest.mark.parametrize("kwargs", MODES)
async def test_an_inline_topology_saved_becomes_a_tool(kwargs: dict[str, Any], db_url: str) -> None:
    heard = Heard()
    async with Client(build_server(db_url), message_handler=heard.on_message, **kwargs) as client:
        await call(client, "agents_create", name="known", role="critic", model="offline")
        saved = {**DEBATE, "name": "argue", "save": True}
        saved["slots"] = {**DEBATE["slots"], "opponent": "known"}  # a stored agent, by name
        outcome = await call(client, "topologies_run", topology=saved, input={"topic": "tabs"})
        assert outcome["status"] == "completed" and outcome["topology_name"] == "argue"
        agents = {a["name"] for a in (await call(client, "agents_list"))["agents"]}
        assert agents == {"known", "proponent", "judge"}
        assert "run_argue" in {t.name for t in (await client.list_tools()).tools}


@pytest.mark.parametrize(
    ("topology", "says"),
    [
        ({**DEBATE, "slots": {**DEBATE["slots"], "opponent": {"role": "boss"}}}, "role"),
        ({**DEBATE, "topology_type": "debte"}, "unknown topology type 'debte'"),
        ({**DEBATE, "save": True}, "saved for later needs a name"),
        ({**DEBATE, "slots": {**DEBATE["slots"], "opponent": "nobody"}}, "no agent named 'nobody'"),
        ({**DEBATE, "name": "taken"}, "a stored topology is named 'taken'"),
    ],
    ids=["bad-role", "bad-kind", "save-without-name", "unknown-agent", "name-taken"],
)
async def test_a_bad_inline_topology_is_refused_with_one_message_and_nothing_written(
    topology: dict[str, Any], says: str, db_url: str
) -> None:
    async with Client(build_server(db_url), mode="legacy") as client:
        await call(client, "agents_create", name="o", role="executor", model="offline")
        await call(
            client, "topologies_create", name="taken", topology_type="pipeline", slots={"a": "o"}
        )
        result = await client.call_tool(
            "topologies_run", {"topology": topology, "input": {"topic": "x"}}
        )
        assert result.is_error
        assert says in result.content[0].text, result.content[0].text  # type: ignore[union-attr]
        assert (await call(client, "executions_list"))["executions"] == []
        assert [a["name"] for a in (await call(client, "agents_list"))["agents"]] == ["o"]


async def test_a_refused_save_takes_back_the_agents_it_stored(db_url: str) -> None:
    async with Client(build_server(db_url)) as client:
        await call(client, "agents_create", name="o", role="executor", model="offline")
        await call(
            client, "topologies_create", name="taken", topology_type="pipeline", slots={"a": "o"}
        )
        clash = {**DEBATE, "name": "taken", "save": True}
        result = await client.call_tool(
            "topologies_run", {"topology": clash, "input": {"topic": "x"}}
        )
        assert result.is_error and "already exists" in result.content[0].text  # type: ignore[union-attr]
        assert [a["name"] for a in (await call(client, "agents_list"))["agents"]] == ["o"]


# -- run_<name> tools -------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", MODES)
async def test_each_topology_is_a_tool_announced_by_list_changed(
    kwargs: dict[str, Any], db_url: str
) -> None:
    heard = Heard()
    async with Client(build_server(db_url), message_handler=heard.on_message, **kwargs) as client:
        for name in ("pro", "con", "judge"):
            await call(client, "agents_create", name=name, role="critic", model="offline")

        listening = client.listen(tools_list_changed=True) if not legacy(client) else _nothing()
        async with listening:
            await call(
                client,
                "topologies_create",
                name="argue",
                topology_type="debate",
                slots={"proponent": "pro", "opponent": "con", "mediator": "judge"},
                config={"max_rounds": 1},
                description="Two critics argue; a judge decides.",
            )
            await heard.until(lambda: heard.count(ToolListChangedNotification) >= 1)
            tools = {t.name: t for t in (await client.list_tools()).tools}
            tool = tools["run_argue"]
            assert tool.input_schema["required"] == ["topic"]
            assert tool.description is not None and tool.description.startswith("Two critics")
            result = await client.call_tool("run_argue", {"topic": "tabs or spaces"})
            assert not result.is_error, result.content
            assert result.structured_content is not None
            assert result.structured_content["status"] == "completed"
            assert result.structured_content["topology_name"] == "argue"
            bad = await client.call_tool("run_argue", {"prompt": "wrong field"})
            assert bad.is_error and "takes no argument(s) prompt" in bad.content[0].text  # type: ignore[union-attr]
            await call(client, "topologies_delete", name="argue")
            await heard.until(lambda: heard.count(ToolListChangedNotification) >= 2)
            assert "run_argue" not in {t.name for t in (await client.list_tools()).tools}
        with pytest.raises(MCPError) as raised:
            await client.call_tool("run_argue", {"topic": "x"})
        assert raised.value.error.code == INVALID_PARAMS


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


# -- over stdio and HTTP ----------------------------------------------------------------------


def gated_env(db_url: str, gate: Path) -> dict[str, str]:
    from test_mcp_transports import server_env

    return server_env(
        db_url,
        QMCP_PLUGINS="gate_functions",
        PYTHONPATH=str(Path(__file__).parent),
        QMCP_TEST_GATE=str(gate),
    )


async def subscribe_and_log(client: Client, heard: Heard, gate: Path) -> None:
    """Subscribed mid-run: three updates; and the run's log lines, at info."""
    await set_level(client, "info")
    await gated_pipeline(client)
    assert "run_gp" in {t.name for t in (await client.list_tools()).tools}
    ident = await run_while_subscribed(client, heard, gate)
    assert heard.updated(f"qmcp://executions/{ident}") == 3
    lines = [str(log.data) for log in heard.logs]
    assert f"execution {ident}: pipeline 'gp' on local" in lines, lines
    assert any(line.startswith(f"execution {ident} completed in") for line in lines), lines


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", MODES)
async def test_subscriptions_and_log_lines_over_stdio(
    kwargs: dict[str, Any], db_url: str, tmp_path: Path
) -> None:
    from mcp import StdioServerParameters
    from test_mcp_transports import BIN

    gate = tmp_path / "gate"
    heard = Heard()
    params = StdioServerParameters(
        command=str(BIN / "qmcp-server"), env=gated_env(db_url, gate), cwd=str(tmp_path)
    )
    modern = "mode" not in kwargs
    async with Client(
        params,
        message_handler=heard.on_message,
        logging_callback=heard.on_log,
        log_level="info" if modern else None,
        **kwargs,
    ) as client:
        await subscribe_and_log(client, heard, gate)


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", MODES)
async def test_subscriptions_and_log_lines_over_http(
    kwargs: dict[str, Any], db_url: str, tmp_path: Path
) -> None:
    from test_mcp_transports import start_http

    gate = tmp_path / "gate"
    heard = Heard()
    process, port = start_http(
        db_url,
        tmp_path,
        QMCP_PLUGINS="gate_functions",
        PYTHONPATH=str(Path(__file__).parent),
        QMCP_TEST_GATE=str(gate),
    )
    modern = "mode" not in kwargs
    try:
        async with Client(
            f"http://127.0.0.1:{port}/mcp",
            message_handler=heard.on_message,
            logging_callback=heard.on_log,
            log_level="info" if modern else None,
            **kwargs,
        ) as client:
            await subscribe_and_log(client, heard, gate)
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.slow
async def test_a_cold_server_lists_the_run_tools_or_announces_them(
    db_url: str, tmp_path: Path
) -> None:
    """`tools/list` never waits for the service layer's import: a listing made before it has
    loaded leaves the `run_<name>` tools out, and `list_changed` follows once they are there."""
    from mcp import StdioServerParameters
    from test_mcp_transports import BIN, server_env

    await service.create_agent("o", "executor", model="offline", db_url=db_url)
    await service.create_topology("solo", "pipeline", {"a": "o"}, db_url=db_url)
    heard = Heard()
    params = StdioServerParameters(
        command=str(BIN / "qmcp-server"), env=server_env(db_url), cwd=str(tmp_path)
    )
    async with Client(params, message_handler=heard.on_message, mode="legacy") as client:
        first = {t.name for t in (await client.list_tools()).tools}
        if "run_solo" not in first:
            await heard.until(lambda: heard.count(ToolListChangedNotification) >= 1)
        assert "run_solo" in {t.name for t in (await client.list_tools()).tools}
