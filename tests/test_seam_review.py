"""Regressions from a review of the invocation seam: each test failed before its fix."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from qmcp.agentframework.errors import ConfigurationError, ValidationError
from qmcp.agentframework.llm import (
    LLMRequest,
    LLMResponse,
    ProviderRegistry,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    register_function,
    unregister_function,
)
from qmcp.agentframework.llm.offline import OfflineProvider
from qmcp.agentframework.mixins import Mixin, MixinRegistry
from qmcp.agentframework.models import AgentConfig, AgentType, ModelConfig, Topology
from qmcp.agentframework.registry import Registry
from qmcp.agentframework.runners import AsyncRunner, LocalRunner, RunConfig
from qmcp.agentframework.runners.engine import Engine
from qmcp.agentframework.store import Store

pytestmark = pytest.mark.anyio
ENSEMBLE = {"aggregation_method": "concat"}


def agent(name: str, fn: str, **config: Any) -> AgentType:
    model = ModelConfig(provider="function", model=fn)
    return AgentType(
        name=name, config=AgentConfig(model_config_obj=model, **config).model_dump(mode="json")
    )


class Lookup:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def specs(self) -> list[ToolSpec]:
        return [ToolSpec(name="lookup")]

    async def run(self, calls: Sequence[ToolUseBlock]) -> list[ToolResultBlock]:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self.call(call)) for call in calls]
        return [task.result() for task in tasks]

    async def call(self, call: ToolUseBlock) -> ToolResultBlock:
        self.calls.append(call.id)
        return ToolResultBlock(tool_use_id=call.id, content="found")


async def test_a_repair_after_tool_turns_continues_the_conversation(db_url: str) -> None:
    """The repair's turns follow the tool turns (they reused turn 0 and hit the unique key)."""

    def model(request: LLMRequest) -> LLMResponse:
        last = request.messages[-1]
        if isinstance(last.content, str) and "JSON" not in last.content:
            return LLMResponse(
                content=[ToolUseBlock(id="c0", name="lookup")], model="m", provider="f"
            )
        if any(isinstance(b, ToolResultBlock) for b in last.blocks):
            return LLMResponse(text="not json", model="m", provider="f")
        return LLMResponse(text='{"ok": true}', model="m", provider="f")

    register_function("repairing", model)
    try:
        capability = {"name": "structured_output", "config": {"schema": {"type": "object"}}}
        runner = LocalRunner(db_url=db_url)
        topology = Topology(name="t", topology_type="pipeline", config={})
        prepared = await runner.start(
            topology, {"only": agent("r", "repairing", capabilities=[capability])}, {"prompt": "x"}
        )
        ident, setup = next(iter(prepared.setups.items()))
        prepared.setups[ident] = setup._replace(toolbox=Lookup())
        result = await runner.finish(prepared)
        assert result.status == "completed", result.error
        rows = await Store(db_url).invocations(result.execution_id)
        assert [(r.attempt, r.status) for r in rows] == [(1, "failed"), (2, "completed")]
    finally:
        unregister_function("repairing")


async def test_a_cancel_while_the_run_settles_loses_no_row(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Background batches in flight when the run is cancelled still land, and the execution
    records its end (it stayed running with 0 of 40 rows)."""
    register_function("quick", lambda r: "ok")
    original = Store.record_invocations

    async def slow(self: Store, rows: Any) -> None:
        await asyncio.sleep(0.4)
        await original(self, rows)

    monkeypatch.setattr(Store, "record_invocations", slow)
    try:
        agents = {f"ensemble_{i}": agent(f"q{i}", "quick") for i in range(40)}
        topology = Topology(name="bg", topology_type="ensemble", config=ENSEMBLE)
        runner = AsyncRunner(
            db_url=db_url, max_concurrent=8, config=RunConfig(checkpoint_enabled=False)
        )
        prepared = await runner.start(topology, agents, {"prompt": "q"})
        task = asyncio.create_task(runner.finish(prepared))
        await asyncio.sleep(0.15)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        store = Store(db_url)
        execution = await store.get_execution(prepared.execution_id)
        assert execution.status in ("completed", "cancelled") and execution.owner is None
        assert len(await store.invocations(prepared.execution_id)) == 40
    finally:
        unregister_function("quick")


async def test_flush_waits_for_background_batches(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Metaflow step ends with flush(): every row must be written by then."""
    register_function("quick2", lambda r: "ok")
    original = Store.record_invocations

    async def slow(self: Store, rows: Any) -> None:
        if len(rows) >= 16:
            await asyncio.sleep(0.2)
        await original(self, rows)

    monkeypatch.setattr(Store, "record_invocations", slow)
    try:
        agents = {f"ensemble_{i}": agent(f"f{i}", "quick2") for i in range(20)}
        topology = Topology(name="bg", topology_type="ensemble", config=ENSEMBLE)
        runner = LocalRunner(db_url=db_url, config=RunConfig(checkpoint_enabled=False))
        prepared = await runner.start(topology, agents, {"prompt": "q"})
        engine = Engine(
            execution_id=prepared.execution_id,
            agents=prepared.agents,
            config=runner.config,
            store=runner.store,
            checkpoints={},
            concurrency=None,
            on_event=None,
            total=20,
        )
        for slot, member in prepared.agents.items():
            await engine.invoke_agent(member, slot, {"prompt": "q"}, slot)
        await engine.flush()
        assert len(await Store(db_url).invocations(prepared.execution_id)) == 20
    finally:
        unregister_function("quick2")


async def test_a_failed_group_commit_hands_its_rows_to_the_end(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows of a group commit that failed while its branches were cancelled are written with
    the run's end (they were dropped, and the store's error went unretrieved)."""
    register_function("fast_gc", lambda r: "ok")
    original = Store.record_invocations
    failing = {"on": True}

    async def flaky(self: Store, rows: Any) -> None:
        if failing["on"]:
            await asyncio.sleep(0.05)
            failing["on"] = False
            raise RuntimeError("disk I/O error")
        await original(self, rows)

    original_gather = Engine.gather

    async def gather(self: Engine, awaitables: Any) -> list[Any]:
        async def crash() -> None:
            await asyncio.sleep(0.02)
            raise ValueError("sibling crashed")

        return await original_gather(self, [*awaitables, crash()])

    monkeypatch.setattr(Store, "record_invocations", flaky)
    monkeypatch.setattr(Engine, "gather", gather)
    try:
        agents = {"ensemble_0": agent("g0", "fast_gc"), "ensemble_1": agent("g1", "fast_gc")}
        topology = Topology(name="e", topology_type="ensemble", config=ENSEMBLE)
        result = await AsyncRunner(db_url=db_url).run(topology, agents, {"prompt": "q"})
        assert result.status == "failed" and "sibling crashed" in (result.error or "")
        store = Store(db_url)
        execution = await store.get_execution(result.execution_id)
        rows = await store.invocations(result.execution_id)
        assert len(rows) == 2 and execution.invocation_count == 2
    finally:
        unregister_function("fast_gc")


async def test_a_plain_callable_returning_an_awaitable_is_bounded_when_declared(
    db_url: str,
) -> None:
    live = {"now": 0, "max": 0}

    async def body(request: LLMRequest) -> str:
        live["now"] += 1
        live["max"] = max(live["max"], live["now"])
        await asyncio.sleep(0.05)
        live["now"] -= 1
        return "ok"

    register_function("wrapped", lambda r: body(r), inline=False)
    try:
        agents = {f"ensemble_{i}": agent(f"w{i}", "wrapped") for i in range(6)}
        topology = Topology(name="e", topology_type="ensemble", config=ENSEMBLE)
        result = await AsyncRunner(db_url=db_url, max_concurrent=2).run(
            topology, agents, {"prompt": "q"}
        )
        assert result.status == "completed" and live["max"] == 2
    finally:
        unregister_function("wrapped")


async def test_registry_changes_reach_agents_resolved_before(db_url: str) -> None:
    """A replaced or removed mixin, and an unregistered provider, are not served from caches."""
    seen: list[str] = []

    class V1(Mixin):
        name = "tagger_for_test"

        async def finish(self, output: dict[str, Any], ctx: Any) -> None:
            seen.append("v1")

    class V2(V1):
        async def finish(self, output: dict[str, Any], ctx: Any) -> None:
            seen.append("v2")

    def tagged() -> AgentType:
        model = ModelConfig(provider="offline", model="offline")
        config = AgentConfig(model_config_obj=model, capabilities=[{"name": "tagger_for_test"}])
        return AgentType(name="m", config=config.model_dump(mode="json"))

    topology = Topology(name="t", topology_type="pipeline", config={})
    runner = LocalRunner(db_url=db_url)
    MixinRegistry.add(V1)
    try:
        await runner.run(topology, {"only": tagged()}, {"prompt": "x"})
        MixinRegistry.add(V2)
        await runner.run(topology, {"only": tagged()}, {"prompt": "x"})
        assert seen == ["v1", "v2"]
        MixinRegistry.unregister("tagger_for_test")
        with pytest.raises(ValidationError, match="unknown mixin"):
            await runner.run(topology, {"only": tagged()}, {"prompt": "x"})
    finally:
        MixinRegistry.unregister("tagger_for_test")

    ProviderRegistry.register("mine_for_test", OfflineProvider)
    model = ModelConfig(provider="mine_for_test", model="x")
    mine = AgentType(name="u", config=AgentConfig(model_config_obj=model).model_dump(mode="json"))
    assert (await runner.run(topology, {"only": mine}, {"prompt": "x"})).status == "completed"
    ProviderRegistry.unregister("mine_for_test")
    with pytest.raises(ValidationError, match="unknown model provider 'mine_for_test'"):
        await runner.run(topology, {"only": mine}, {"prompt": "x"})


def test_a_registration_before_the_plugins_load_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from qmcp.agentframework import plugins

    monkeypatch.setitem(plugins._state, "ready", False)
    registry: Registry[str] = Registry("thing")
    registry.register("offline", "mine")
    monkeypatch.setitem(plugins._state, "loading", True)
    registry.register("offline", "built-in")  # what a built-in plugin does while loading
    monkeypatch.setitem(plugins._state, "loading", False)
    monkeypatch.setitem(plugins._state, "ready", True)
    assert registry.get("offline") == "mine"
    registry.reset()
    assert registry.get("offline") == "built-in"


def test_a_plugin_that_fails_while_loading_is_a_clear_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qmcp.agentframework.plugins import load_plugins

    (tmp_path / "broken_plugin_for_test.py").write_text("raise RuntimeError('bad plugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("QMCP_PLUGINS", "broken_plugin_for_test")
    with pytest.raises(ConfigurationError, match="failed while loading: RuntimeError: bad plugin"):
        load_plugins()


async def test_attempts_number_on_across_a_resume(db_url: str) -> None:
    """A resumed invocation's attempt goes on from the last recorded one (it restarted at 1)."""
    broken = {"on": True}

    def model(request: LLMRequest) -> str:
        if broken["on"]:
            raise ConfigurationError("not yet")
        return "fine"

    register_function("later", model)
    try:
        topology = Topology(name="t", topology_type="pipeline", config={})
        first = await LocalRunner(db_url=db_url).run(
            topology, {"only": agent("l", "later")}, {"prompt": "x"}
        )
        assert first.status == "failed"
        broken["on"] = False
        resumed = await LocalRunner(db_url=db_url).resume(first.execution_id)
        assert resumed.status == "completed", resumed.error
        rows = await Store(db_url).invocations(first.execution_id)
        assert [(r.attempt, r.status) for r in rows] == [(1, "failed"), (2, "completed")]
    finally:
        unregister_function("later")
