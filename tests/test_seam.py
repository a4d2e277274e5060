"""The invocation seam: structured concurrency, one classified retry policy, the provider chain,
and invocations as conversations that checkpoint inside themselves (issue 10, findings 1-4)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from fake_messages_api import Fault, MessagesAPIServer

from qmcp.agentframework import service
from qmcp.agentframework.errors import ConfigurationError, ProviderError
from qmcp.agentframework.llm import (
    LLMRequest,
    LLMResponse,
    Message,
    Provider,
    ProviderCapabilities,
    ProviderRegistry,
    RetryingProvider,
    RetryPolicy,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    WrapperProvider,
    register_function,
    unregister_function,
)
from qmcp.agentframework.mixins import Mixin, MixinRegistry
from qmcp.agentframework.models import AgentConfig, AgentType, ModelConfig, Topology
from qmcp.agentframework.runners import AsyncRunner, LocalRunner, RunConfig
from qmcp.agentframework.runners.engine import agent_setup
from qmcp.agentframework.store import Store

pytestmark = pytest.mark.anyio


def agent(name: str, fn: str, **config: Any) -> AgentType:
    model = ModelConfig(provider="function", model=fn)
    return AgentType(
        name=name, config=AgentConfig(model_config_obj=model, **config).model_dump(mode="json")
    )


# -- 1. no branch outlives its run ---------------------------------------------------------


async def test_a_run_that_waits_for_a_human_leaves_no_branch_running(db_url: str) -> None:
    """Member 0 awaits an approval at once; the slow members must be cancelled, not finish
    after the run has ended (measured before: 1 row at return, 3 rows a second later)."""
    called: list[str] = []
    finished: list[str] = []

    async def slow(request: LLMRequest) -> str:
        called.append(request.slot)
        await asyncio.sleep(0.3)
        finished.append(request.slot)
        return f"answer of {request.slot}"

    register_function("gate_fast", lambda r: "draft")
    register_function("gate_slow", slow)
    try:
        gated = agent(
            "gated",
            "gate_fast",
            capabilities=[{"name": "human_in_loop", "config": {"question": "ok?"}}],
        )
        agents = {
            "ensemble_0": gated,
            "ensemble_1": agent("slow1", "gate_slow"),
            "ensemble_2": agent("slow2", "gate_slow"),
        }
        topology = Topology(
            name="e", topology_type="ensemble", config={"aggregation_method": "concat"}
        )
        result = await AsyncRunner(db_url=db_url).run(topology, agents, {"prompt": "q"})
        assert result.status == "pending", result.error
        store = Store(db_url)
        rows_at_return = await store.invocations(result.execution_id)
        await asyncio.sleep(0.6)
        rows_later = await store.invocations(result.execution_id)
        assert len(rows_later) == len(rows_at_return) == 1
        assert finished == [], "a cancelled branch kept calling its model after the run ended"
        execution = await store.get_execution(result.execution_id)
        assert execution.invocation_count == len(rows_later)
    finally:
        unregister_function("gate_fast")
        unregister_function("gate_slow")


async def test_a_crashing_branch_cancels_its_siblings(db_url: str) -> None:
    """A branch that raises something other than a failed invocation (here a mixin's bug)
    ends the run at once; its slow siblings are cancelled, not left calling their models."""
    finished: list[str] = []

    class Buggy(Mixin):
        name = "buggy_for_test"

        async def prepare(self, request: LLMRequest, ctx: Any) -> LLMRequest:
            raise RuntimeError("mixin bug")

    async def slow(request: LLMRequest) -> str:
        await asyncio.sleep(0.3)
        finished.append(request.slot)
        return "late"

    MixinRegistry.add(Buggy)
    register_function("boom_slow", slow)
    try:
        agents = {
            "ensemble_0": agent("s0", "boom_slow"),
            "ensemble_1": agent("bad", "boom_slow", capabilities=[{"name": "buggy_for_test"}]),
            "ensemble_2": agent("s2", "boom_slow"),
        }
        topology = Topology(
            name="e2", topology_type="ensemble", config={"aggregation_method": "concat"}
        )
        result = await AsyncRunner(db_url=db_url).run(topology, agents, {"prompt": "q"})
        assert result.status == "failed" and "mixin bug" in (result.error or "")
        await asyncio.sleep(0.5)
        assert finished == []
        store = Store(db_url)
        execution = await store.get_execution(result.execution_id)
        assert execution.invocation_count == len(await store.invocations(result.execution_id))
    finally:
        MixinRegistry.unregister("buggy_for_test")
        unregister_function("boom_slow")


# -- 2. one retry policy, errors classified ------------------------------------------------


async def test_pipeline_stage_retries_do_not_stack_on_run_retries(db_url: str) -> None:
    """Defaults were 3 stage attempts x 4 engine attempts = 12 calls; now one budget."""
    calls = {"n": 0}

    def down(request: LLMRequest) -> str:
        calls["n"] += 1
        raise ProviderError("503 upstream unavailable", retryable=True)

    register_function("down", down)
    try:
        topology = Topology(name="p", topology_type="pipeline", config={})  # 2 stage retries
        result = await LocalRunner(config=RunConfig(max_retries=3), db_url=db_url).run(
            topology, {"only": agent("d", "down")}, {"prompt": "x"}
        )
        assert result.status == "failed"
        assert calls["n"] == 3, "one policy: 1 attempt + min(stage retries 2, run retries 3)"
        rows = await Store(db_url).invocations(result.execution_id)
        assert [r.attempt for r in rows] == [1, 2, 3]
    finally:
        unregister_function("down")


@pytest.mark.parametrize(
    "error",
    [
        ConfigurationError("no key configured"),
        ProviderError("400 invalid_request_error: bad", retryable=False),
    ],
    ids=["configuration", "permanent"],
)
async def test_permanent_errors_are_never_retried(db_url: str, error: Exception) -> None:
    calls = {"n": 0}

    def broken(request: LLMRequest) -> str:
        calls["n"] += 1
        raise error

    register_function("broken", broken)
    try:
        topology = Topology(name="p", topology_type="pipeline", config={})
        result = await LocalRunner(config=RunConfig(max_retries=5), db_url=db_url).run(
            topology, {"only": agent("b", "broken")}, {"prompt": "x"}
        )
        assert result.status == "failed" and calls["n"] == 1
        assert str(error) in (result.error or "")
    finally:
        unregister_function("broken")


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Any:
    with MessagesAPIServer() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-seam")
        ProviderRegistry.reset()
        yield server


def claude(name: str) -> AgentType:
    model = ModelConfig(provider="anthropic", model="claude-sonnet-4-20250514")
    return AgentType(name=name, config=AgentConfig(model_config_obj=model).model_dump(mode="json"))


async def test_retry_after_is_honoured_and_the_sdk_does_not_retry_by_itself(
    api: MessagesAPIServer, db_url: str
) -> None:
    api.enqueue(Fault.rate_limited(0.4))
    topology = Topology(name="c", topology_type="pipeline", config={})
    t0 = time.perf_counter()
    result = await LocalRunner(config=RunConfig(max_retries=1), db_url=db_url).run(
        topology, {"only": claude("c")}, {"prompt": "hello"}
    )
    elapsed = time.perf_counter() - t0
    assert result.status == "completed", result.error
    assert len(api.requests) == 2
    assert elapsed >= 0.4, "the 429's retry-after (0.4 s) was not waited for"
    rows = await Store(db_url).invocations(result.execution_id)
    assert [(r.attempt, r.status) for r in rows] == [(1, "failed"), (2, "completed")]
    assert "429 rate_limit_error" in (rows[0].error or "")


async def test_a_missing_key_is_permanent(db_url: str) -> None:
    topology = Topology(name="c", topology_type="pipeline", config={})
    result = await LocalRunner(config=RunConfig(max_retries=3), db_url=db_url).run(
        topology, {"only": claude("c")}, {"prompt": "hello"}
    )
    assert result.status == "failed" and "ANTHROPIC_API_KEY" in (result.error or "")
    rows = await Store(db_url).invocations(result.execution_id)
    assert len(rows) == 1


async def test_retry_policy_uses_retry_after_capped_and_backoff_otherwise() -> None:
    policy = RetryPolicy(max_retries=3, base_seconds=0.1, max_seconds=1.0)
    assert policy.delay(0, ProviderError("x", retryable=True, retry_after=2.5)) == 2.5
    capped = RetryPolicy(max_retry_after_seconds=5).delay(0, ProviderError("x", retry_after=99))
    assert capped == 5
    for retry in range(6):
        delay = policy.delay(retry, ProviderError("x", retryable=True))
        assert 0.5 * min(1.0, 0.1 * 2**retry) <= delay <= min(1.0, 0.1 * 2**retry)


# -- 3. providers: declared capabilities, wrappers compose ---------------------------------


def test_every_provider_declares_what_it_can_do() -> None:
    for name in ProviderRegistry.list():
        provider = ProviderRegistry.provider(name)
        assert isinstance(provider, Provider), name
        assert isinstance(provider.capabilities("any"), ProviderCapabilities), name
        for hidden in ("self_retrying", "begin"):
            assert not hasattr(provider, hidden), f"{name} has the undeclared channel {hidden}"


class Shouting(WrapperProvider):
    """A third-party wrapper: the chain composes without the engine knowing."""

    async def complete(self, request: LLMRequest) -> LLMResponse:
        response = await self.wrapped.complete(request)
        return response.model_copy(update={"text": response.text.upper(), "content": []})


async def test_a_wrapper_provider_registers_and_runs_like_any_other(db_url: str) -> None:
    ProviderRegistry.register("shouting", lambda: Shouting(ProviderRegistry.provider("offline")))
    try:
        model = ModelConfig(provider="shouting", model="offline")
        loud = AgentType(
            name="loud", config=AgentConfig(model_config_obj=model).model_dump(mode="json")
        )
        topology = Topology(name="s", topology_type="pipeline", config={})
        result = await LocalRunner(db_url=db_url).run(topology, {"only": loud}, {"prompt": "hi"})
        assert result.status == "completed", result.error
        assert result.output["content"] == result.output["content"].upper()
        assert "[OFFLINE MODEL]" in result.output["content"]
    finally:
        ProviderRegistry.unregister("shouting")
        ProviderRegistry.reset()


async def test_retrying_wrapper_retries_transient_only() -> None:
    class Flaky:
        name = "flaky"

        def __init__(self, errors: list[ProviderError]) -> None:
            self.errors = errors
            self.calls = 0

        def capabilities(self, model: str) -> ProviderCapabilities:
            return ProviderCapabilities()

        async def complete(self, request: LLMRequest) -> LLMResponse:
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)
            return LLMResponse(text="ok", model="m", provider="flaky")

    request = LLMRequest(model="m", messages=[Message(role="user", content="x")])
    fast = RetryPolicy(max_retries=2, base_seconds=0.001)
    transient = Flaky([ProviderError("529", retryable=True), ProviderError("500", retryable=True)])
    assert (await RetryingProvider(transient, fast).complete(request)).text == "ok"
    assert transient.calls == 3
    permanent = Flaky([ProviderError("401", retryable=False)])
    with pytest.raises(ProviderError, match="401"):
        await RetryingProvider(permanent, fast).complete(request)
    assert permanent.calls == 1


# -- 4. an invocation is a conversation ----------------------------------------------------


class Tools:
    """A toolbox of plain functions; `block` makes one tool wait until released."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.block: str | None = None

    async def specs(self) -> list[ToolSpec]:
        return [ToolSpec(name="lookup"), ToolSpec(name="add")]

    async def run(self, calls: Sequence[ToolUseBlock]) -> list[ToolResultBlock]:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self.call(call)) for call in calls]
        return [task.result() for task in tasks]

    async def call(self, call: ToolUseBlock) -> ToolResultBlock:
        self.calls.append(f"{call.name}:{call.input.get('x')}")
        if call.name == self.block:
            await self.release.wait()
        return ToolResultBlock(tool_use_id=call.id, content=f"{call.name}={call.input.get('x')}")


def scripted_model(log: list[int]) -> Any:
    """Turn 1: two lookups at once; turn 2: an add; turn 3: the answer quoting the results."""

    def answer(request: LLMRequest) -> LLMResponse:
        turn = sum(1 for m in request.messages if m.role == "assistant")
        log.append(turn)
        if turn == 0:
            blocks: list[Any] = [
                TextBlock(text="looking up"),
                ToolUseBlock(id="t1", name="lookup", input={"x": 1}),
                ToolUseBlock(id="t2", name="lookup", input={"x": 2}),
            ]
        elif turn == 1:
            blocks = [ToolUseBlock(id="t3", name="add", input={"x": 3})]
        else:
            results = [
                b.content
                for m in request.messages
                for b in m.blocks
                if isinstance(b, ToolResultBlock)
            ]
            blocks = [TextBlock(text="final: " + ", ".join(results))]
        return LLMResponse(
            content=blocks, model="scripted", provider="function", input_tokens=10, output_tokens=5
        )

    return answer


async def _prepared(runner: Any, tools: Tools, fn: str) -> Any:
    topology = Topology(name="t", topology_type="pipeline", config={})
    prepared = await runner.start(topology, {"only": agent("actor", fn)}, {"prompt": "sum it"})
    (ident, setup) = next(iter(prepared.setups.items()))
    prepared.setups[ident] = setup._replace(toolbox=tools)
    return prepared


async def test_a_tool_using_invocation_records_each_turn(db_url: str) -> None:
    turns: list[int] = []
    register_function("scripted", scripted_model(turns))
    try:
        tools = Tools()
        runner = LocalRunner(db_url=db_url)
        result = await runner.finish(await _prepared(runner, tools, "scripted"))
        assert result.status == "completed", result.error
        assert result.output["content"] == "final: lookup=1, lookup=2, add=3"
        assert turns == [0, 1, 2] and tools.calls == ["lookup:1", "lookup:2", "add:3"]
        (row,) = await Store(db_url).invocations(result.execution_id)
        assert row.output is not None and row.output["tool_calls"] == 3
        assert (row.input_tokens, row.output_tokens) == (30, 15), "usage of every turn"
        recorded = await Store(db_url).turns(result.execution_id)
        assert recorded == {}, "turns of a completed invocation are not a pending checkpoint"
    finally:
        unregister_function("scripted")


async def test_a_conversation_resumes_from_its_last_recorded_turn(db_url: str) -> None:
    """Cancelled while its second turn's tool runs: the resume asks neither the model for
    turn 1 nor the lookups again; it runs the unanswered call and goes on."""
    turns: list[int] = []
    register_function("scripted", scripted_model(turns))
    try:
        tools = Tools()
        tools.block = "add"
        runner = LocalRunner(db_url=db_url)
        prepared = await _prepared(runner, tools, "scripted")
        task = asyncio.create_task(runner.finish(prepared))
        for _ in range(500):
            if "add:3" in tools.calls or task.done():
                break
            await asyncio.sleep(0.01)
        assert "add:3" in tools.calls, task.result() if task.done() else "no progress"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        execution = await Store(db_url).get_execution(prepared.execution_id)
        assert execution.status == "cancelled"
        recorded = await Store(db_url).turns(prepared.execution_id)
        assert [t["role"] for t in recorded["stage-0/only"]] == ["assistant", "user", "assistant"]
        assert turns == [0, 1]

        fresh = Tools()
        resumed_runner = LocalRunner(db_url=db_url)
        claimed = await resumed_runner.claim(prepared.execution_id)
        claimed.setups.update(
            {id(a): agent_setup(a)._replace(toolbox=fresh) for a in claimed.agents.values()}
        )
        done = await resumed_runner.finish(claimed)
        assert done.status == "completed", done.error
        assert done.output["content"] == "final: lookup=1, lookup=2, add=3"
        assert fresh.calls == ["add:3"], "finished tool calls were repeated"
        assert turns == [0, 1, 2], "finished model turns were asked again"
        rows = await Store(db_url).invocations(prepared.execution_id)
        completed = [r for r in rows if r.status == "completed"]
        assert len(completed) == 1 and completed[0].input_tokens == 30
    finally:
        unregister_function("scripted")


async def test_the_tool_call_limit_asks_for_an_answer_without_tools(db_url: str) -> None:
    asked: list[str] = []

    def greedy(request: LLMRequest) -> LLMResponse:
        asked.append(request.tool_choice)
        n = sum(1 for m in request.messages if m.role == "assistant")
        if request.tool_choice == "none":
            return LLMResponse(text="done with what I have", model="g", provider="function")
        return LLMResponse(
            content=[ToolUseBlock(id=f"c{n}", name="lookup", input={"x": n})],
            model="g",
            provider="function",
        )

    register_function("greedy", greedy)
    try:
        tools = Tools()
        runner = LocalRunner(db_url=db_url)
        topology = Topology(name="t", topology_type="pipeline", config={})
        prepared = await runner.start(
            topology, {"only": agent("g", "greedy", max_tool_calls=2)}, {"prompt": "go"}
        )
        ident, setup = next(iter(prepared.setups.items()))
        prepared.setups[ident] = setup._replace(toolbox=tools)
        result = await runner.finish(prepared)
        assert result.status == "completed", result.error
        assert len(tools.calls) == 2
        (row,) = await Store(db_url).invocations(result.execution_id)
        assert row.output is not None and row.output["tool_limit_reached"] is True
        assert asked[-1] == "none" and result.output["content"] == "done with what I have"
    finally:
        unregister_function("greedy")


async def test_service_runs_still_work_through_the_seam(db_url: str) -> None:
    await service.create_agent("a1", "executor", model="offline", db_url=db_url)
    await service.create_topology("solo", "pipeline", {"s": "a1"}, db_url=db_url)
    result = await service.run_topology("solo", {"prompt": "hi"}, db_url=db_url)
    assert result.status == "completed" and "[offline model]" in result.output["content"]


async def test_concurrent_branches_share_commits_and_every_row_lands(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: ten branches that finish in the same turn of the event loop are one
    transaction; each branch goes on only once its row is committed."""
    register_function("instant_gc", lambda r: f"ok {r.slot}")
    batches: list[int] = []
    original = Store.record_invocations

    async def spy(self: Store, rows: Any) -> None:
        batches.append(len(rows))
        await original(self, rows)

    monkeypatch.setattr(Store, "record_invocations", spy)
    try:
        agents = {f"ensemble_{i}": agent(f"m{i}", "instant_gc") for i in range(10)}
        topology = Topology(
            name="gc", topology_type="ensemble", config={"aggregation_method": "concat"}
        )
        result = await AsyncRunner(db_url=db_url, max_concurrent=10).run(
            topology, agents, {"prompt": "q"}
        )
        assert result.status == "completed", result.error
        assert sum(batches) == 10 and len(batches) < 10, batches
        rows = await Store(db_url).invocations(result.execution_id)
        assert sorted(r.slot for r in rows) == sorted(agents)
    finally:
        unregister_function("instant_gc")


async def test_a_long_run_without_checkpointing_writes_every_row_by_its_end(db_url: str) -> None:
    """Rows beyond a batch go to the store in the background; all of them land by the end."""
    register_function("instant_bg", lambda r: f"ok {r.slot}")
    try:
        agents = {f"ensemble_{i}": agent(f"b{i}", "instant_bg") for i in range(40)}
        topology = Topology(
            name="bg", topology_type="ensemble", config={"aggregation_method": "concat"}
        )
        runner = AsyncRunner(
            db_url=db_url, max_concurrent=8, config=RunConfig(checkpoint_enabled=False)
        )
        result = await runner.run(topology, agents, {"prompt": "q"})
        assert result.status == "completed", result.error
        store = Store(db_url)
        rows = await store.invocations(result.execution_id)
        assert sorted(r.slot for r in rows) == sorted(agents)
        execution = await store.get_execution(result.execution_id)
        assert execution.invocation_count == 40
    finally:
        unregister_function("instant_bg")
