"""Fix what you created (issue 11, point 8): update and delete agents and topologies, from the CLI
and as MCP tools. An update bumps `version`, and each execution's snapshot records the versions it
ran with; deleting something still referenced is refused naming the referrer; bad input writes
nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from mcp import Client
from sqlalchemy import select
from typer.testing import CliRunner

from qmcp.agentframework.cli import app
from qmcp.agentframework.models import MAX_NESTING, AgentType, Execution, Topology
from qmcp.agentframework.models import TopologyMembership as Membership
from qmcp.agentframework.store import Store
from qmcp_server.server import build_server

MODES = [pytest.param({}, id="stateless-2026"), pytest.param({"mode": "legacy"}, id="legacy")]
WIDE = {"COLUMNS": "4000"}


# -- helpers --------------------------------------------------------------------------------


def cli(*argv: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(argv), env=WIDE)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, result.output
    return result.output


async def state_of(db_url: str) -> list[Any]:
    """Every agent, topology and slot as stored: what 'writes nothing' compares."""
    async with Store(db_url).session() as s:
        rows: list[Any] = []
        for model in (AgentType, Topology, Membership):
            found = (await s.execute(select(model).order_by(model.id))).scalars()  # type: ignore[attr-defined]
            rows.append([r.model_dump(mode="json") for r in found])
    return rows


async def snapshots(db_url: str) -> list[dict[str, Any]]:
    """The executions' snapshots, oldest first."""
    async with Store(db_url).session() as s:
        found = (await s.execute(select(Execution).order_by(Execution.created_at))).scalars()  # type: ignore[arg-type]
        return [e.snapshot for e in found]


def versions(snapshot: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """The topology's version and each slot's agent version recorded in a snapshot."""
    agents = {slot: member["version"] for slot, member in snapshot["agents"].items()}
    return snapshot["topology"]["version"], agents


# -- CLI ------------------------------------------------------------------------------------


def make_cli_pipeline() -> None:
    cli("agents", "create", "alice", "planner", "--model", "offline")
    cli("agents", "create", "bob", "executor", "--model", "offline")
    cli(
        "agents", "topologies", "create", "pipe", "pipeline",
        "--slot", "plan=alice", "--slot", "do=bob",
    )  # fmt: skip


def run_cli(name: str = "pipe") -> None:
    cli("agents", "topologies", "run", name, "--input-json", '{"prompt": "hi"}')


def test_cli_update_bumps_version_and_runs_record_versions(db_url: str) -> None:
    make_cli_pipeline()
    run_cli()
    out = cli(
        "agents", "update", "alice", "--description", "plans [things]", "--role", "critic",
        "--system-prompt", "be brief", "--temperature", "0.5", "--max-tokens", "300",
        "--capabilities-json", '[{"name": "reasoning"}]', "--format", "json",
    )  # fmt: skip
    agent = json.loads(out)
    assert agent["version"] == 2
    assert agent["description"] == "plans [things]"
    assert agent["role"] == "critic"
    assert agent["config"]["system_prompt"] == "be brief"
    assert agent["config"]["temperature"] == 0.5
    assert agent["config"]["max_tokens"] == 300
    assert [c["name"] for c in agent["config"]["capabilities"]] == ["reasoning"]
    assert agent["updated_at"] >= agent["created_at"]
    assert agent["model"] == json.loads(cli("agents", "show", "bob"))["model"]  # kept
    shown = json.loads(cli("agents", "show", "alice"))
    assert shown["version"] == 2 and shown["description"] == "plans [things]"
    assert "updated agent alice (version 3)" in cli(
        "agents", "update", "alice", "--model", "offline"
    )

    out = cli(
        "agents", "topologies", "update", "pipe", "--description", "new",
        "--slot", "first=bob", "--slot", "second=alice", "--format", "json",
    )  # fmt: skip
    topology = json.loads(out)
    assert topology["version"] == 2
    assert topology["description"] == "new"
    assert topology["slots"] == {"first": "bob", "second": "alice"}
    run_cli()

    first, second = asyncio.run(snapshots(db_url))
    assert versions(first) == (1, {"plan": 1, "do": 1})  # history keeps what ran
    assert versions(second) == (2, {"first": 1, "second": 3})
    assert second["agents"]["second"]["description"] == "plans [things]"


def test_cli_delete_unreferenced_and_refuse_referenced(db_url: str) -> None:
    make_cli_pipeline()
    cli("agents", "topologies", "create", "outer", "pipeline", "--slot", "inner=topology:pipe")
    run_cli()
    before = asyncio.run(state_of(db_url))

    out = cli("agents", "delete", "alice", code=2)
    assert "'pipe'" in out and "error:" in out
    out = cli("agents", "topologies", "delete", "pipe", code=2)
    assert "'outer'" in out
    assert asyncio.run(state_of(db_url)) == before

    assert "deleted topology outer" in cli("agents", "topologies", "delete", "outer")
    assert "deleted topology pipe" in cli("agents", "topologies", "delete", "pipe")
    assert "deleted agent alice" in cli("agents", "delete", "alice")
    cli("agents", "delete", "alice", code=2)  # gone
    assert "outer" not in cli("agents", "topologies", "list")
    # History survives: the execution and its snapshot are still there and readable.
    (execution,) = json.loads(cli("executions", "list", "--format", "json"))
    shown = json.loads(cli("executions", "show", execution["id"], "--format", "json"))
    assert shown["topology_name"] == "pipe"
    (snapshot,) = asyncio.run(snapshots(db_url))
    assert snapshot["agents"]["plan"]["name"] == "alice"


def test_cli_bad_input_writes_nothing(db_url: str) -> None:
    make_cli_pipeline()
    cli("agents", "create", "judge", "synthesizer", "--model", "offline")
    cli(
        "agents", "topologies", "create", "vote", "ensemble",
        "--slot", "ensemble_0=alice", "--slot", "ensemble_1=bob", "--slot", "aggregator=judge",
    )  # fmt: skip
    cli("agents", "topologies", "create", "outer", "pipeline", "--slot", "inner=topology:pipe")
    before = asyncio.run(state_of(db_url))
    bad = [
        ("agents", "update", "alice"),  # nothing to change
        ("agents", "update", "nobody", "--description", "x"),
        ("agents", "update", "alice", "--model", "no-such-model"),
        ("agents", "update", "alice", "--role", "wizard"),
        ("agents", "update", "alice", "--temperature", "5"),
        ("agents", "update", "alice", "--max-tokens", "0"),
        ("agents", "update", "alice", "--capabilities-json", '[{"name": "no_such_mixin"}]'),
        ("agents", "update", "alice", "--capabilities-json", "NaN"),
        ("agents", "update", "alice", "--description", "x" * 10_001),
        ("agents", "topologies", "update", "pipe"),
        ("agents", "topologies", "update", "nothing", "--description", "x"),
        ("agents", "topologies", "update", "pipe", "--slot", "plan=nobody"),
        ("agents", "topologies", "update", "pipe", "--slot", "bad slot=alice"),
        ("agents", "topologies", "update", "pipe", "--slot", "noequals"),
        ("agents", "topologies", "update", "pipe", "--config-json", "[1]"),
        ("agents", "topologies", "update", "pipe", "--config-json", '{"x": NaN}'),
        ("agents", "topologies", "update", "vote", "--slot", "ensemble_0=alice"),  # no aggregator
        ("agents", "topologies", "update", "vote", "--config-json", '{"aggregation_method": 7}'),
        ("agents", "topologies", "update", "pipe", "--slot", "loop=topology:outer"),  # a cycle
        ("agents", "topologies", "update", "pipe", "--slot", "me=topology:pipe"),
    ]
    for argv in bad:
        out = cli(*argv, code=2)
        assert out.startswith("error:") or "Usage" in out, (argv, out)
        assert out.endswith("\n")
        assert asyncio.run(state_of(db_url)) == before, argv
    cycle = cli("agents", "topologies", "update", "pipe", "--slot", "loop=topology:outer", code=2)
    assert "contains itself" in cycle and "'pipe'" in cycle


def test_cli_update_rechecks_nesting_of_holders(db_url: str) -> None:
    """Deepening a topology that others nest is refused when a holder would nest too deep."""
    cli("agents", "create", "solo", "executor", "--model", "offline")
    cli("agents", "topologies", "create", "t0", "pipeline", "--slot", "only=solo")
    for level in range(1, MAX_NESTING + 1):
        cli(
            "agents", "topologies", "create", f"t{level}", "pipeline",
            "--slot", f"inner=topology:t{level - 1}",
        )  # fmt: skip
    cli("agents", "topologies", "create", "spare", "pipeline", "--slot", "only=solo")
    before = asyncio.run(state_of(db_url))
    out = cli("agents", "topologies", "update", "t0", "--slot", "deeper=topology:spare", code=2)
    assert f"'t{MAX_NESTING}'" in out and "levels" in out
    assert asyncio.run(state_of(db_url)) == before
    # The same change at the top of a shorter chain is fine.
    cli("agents", "topologies", "update", "t2", "--slot", "inner=topology:t1", "--slot", "x=solo")


# -- MCP ------------------------------------------------------------------------------------


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
    assert result.structured_content is not None
    return result.structured_content


async def error_of(client: Client, tool: str, **args: Any) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    return result.content[0].text  # type: ignore[union-attr]


@pytest.mark.anyio
@pytest.mark.parametrize("kwargs", MODES)
async def test_mcp_update_and_delete(kwargs: dict[str, Any], db_url: str) -> None:
    async with Client(build_server(db_url), **kwargs) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        for name in ("agents_update", "topologies_update"):
            hints = tools[name].annotations
            assert hints is not None
            assert (hints.read_only_hint, hints.destructive_hint, hints.idempotent_hint) == (
                False,
                False,
                True,
            )
        for name in ("agents_delete", "topologies_delete"):
            hints = tools[name].annotations
            assert hints is not None and hints.destructive_hint is True
            assert hints.read_only_hint is False

        await call(client, "agents_create", name="alice", role="planner", model="offline")
        await call(client, "agents_create", name="bob", role="executor", model="offline")
        await call(
            client,
            "topologies_create",
            name="pipe",
            topology_type="pipeline",
            slots={"plan": "alice", "do": "bob"},
        )
        await call(
            client,
            "topologies_create",
            name="outer",
            topology_type="pipeline",
            slots={"inner": "topology:pipe"},
        )
        await call(client, "topologies_run", topology="pipe", input={"prompt": "one"})

        agent = await call(
            client,
            "agents_update",
            name="alice",
            description="new [text]",
            temperature=0.25,
            capabilities=[{"name": "reasoning"}],
        )
        assert agent["version"] == 2 and agent["description"] == "new [text]"
        assert agent["config"]["temperature"] == 0.25
        assert agent["updated_at"] is not None
        assert (await call(client, "agents_show", name="alice"))["version"] == 2
        topology = await call(
            client, "topologies_update", name="pipe", slots={"a": "bob", "b": "alice"}
        )
        assert topology["version"] == 2 and topology["slots"] == {"a": "bob", "b": "alice"}
        assert "flowchart" in topology["mermaid"]
        await call(client, "topologies_run", topology="pipe", input={"prompt": "two"})
        await call(client, "topologies_run", topology="outer", input={"prompt": "three"})
        first, second, third = await snapshots(db_url)
        assert versions(first) == (1, {"plan": 1, "do": 1})
        assert versions(second) == (2, {"a": 1, "b": 2})
        assert third["topology"]["version"] == 1
        assert versions(third["agents"]["inner"]["subtopology"]) == (2, {"a": 1, "b": 2})

        before = await state_of(db_url)
        assert "'pipe'" in await error_of(client, "agents_delete", name="alice")
        assert "'outer'" in await error_of(client, "topologies_delete", name="pipe")
        assert "nothing to change" in await error_of(client, "agents_update", name="alice")
        assert "no agent named" in await error_of(client, "agents_update", name="x", role="critic")
        await error_of(client, "agents_update", name="alice", model="no-such-model")
        await error_of(client, "agents_update", name="alice", temperature=3)
        await error_of(client, "agents_update", name="alice", role="wizard")
        await error_of(client, "agents_update", name="alice", capabilities=[{"name": "nope"}])
        await error_of(client, "topologies_update", name="pipe", slots={"a": "nobody"})
        await error_of(client, "topologies_update", name="pipe", config={"x": float("nan")})
        cycle = await error_of(
            client, "topologies_update", name="pipe", slots={"loop": "topology:outer"}
        )
        assert "contains itself" in cycle
        assert await state_of(db_url) == before

        await call(client, "topologies_update", name="outer", slots={"only": "bob"})
        deleted = await call(client, "topologies_delete", name="pipe")
        assert deleted["name"] == "pipe"
        await call(client, "topologies_delete", name="outer")
        await call(client, "agents_delete", name="alice")
        assert "no agent named" in await error_of(client, "agents_show", name="alice")
        listed = await call(client, "executions_list")
        assert len(listed["executions"]) == 3  # history stays
        assert len(await snapshots(db_url)) == 3
