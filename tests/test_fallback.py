"""Fallback models: when the primary fails for good, the next model in `fallback_models` answers,
each with its own retries; the invocation records which model answered and why the others did
not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fake_messages_api import Fault, MessagesAPIServer

from qmcp.agentframework.errors import ConfigurationError, ProviderError
from qmcp.agentframework.llm import (
    Candidate,
    FallbackProvider,
    FunctionProvider,
    LLMRequest,
    Message,
    ProviderRegistry,
    estimate_cost,
    register_function,
    unregister_function,
)
from qmcp.agentframework.models import (
    AgentConfig,
    AgentRole,
    AgentType,
    ModelConfig,
    Models,
    Topology,
    TopologyType,
)
from qmcp.agentframework.runners import AsyncRunner, LocalRunner, RunConfig
from qmcp.agentframework.store import Store

pytestmark = pytest.mark.anyio
PIPELINE = Topology(name="p", topology_type=TopologyType.PIPELINE, config={})


@pytest.fixture
def functions() -> Iterator[dict[str, int]]:
    """`permanent` always fails for good, `flaky` always fails transiently, `good` answers."""
    calls = {"permanent": 0, "flaky": 0, "good": 0}

    def permanent(request: LLMRequest) -> str:
        calls["permanent"] += 1
        raise ConfigurationError("no key for the permanent model", provider="function")

    def flaky(request: LLMRequest) -> str:
        calls["flaky"] += 1
        raise RuntimeError("503 upstream unavailable")

    def good(request: LLMRequest) -> str:
        calls["good"] += 1
        return f"good: {request.prompt}"

    for name, fn in (("permanent", permanent), ("flaky", flaky), ("good", good)):
        register_function(name, fn)
    yield calls
    for name in calls:
        unregister_function(name)


def agent(primary: str, *fallbacks: str) -> AgentType:
    config = AgentConfig(
        model_config_obj=ModelConfig(provider="function", model=primary),
        fallback_models=[ModelConfig(provider="function", model=f) for f in fallbacks],
    )
    return AgentType(name="writer", role=AgentRole.EXECUTOR, config=config.model_dump(mode="json"))


async def run(db_url: str, member: AgentType, retries: int = 2) -> Any:
    runner = LocalRunner(db_url=db_url, config=RunConfig(max_retries=retries))
    return await runner.run(PIPELINE, {"only": member}, {"prompt": "hello"})


async def test_a_permanent_failure_falls_back_at_once(
    db_url: str, functions: dict[str, int]
) -> None:
    result = await run(db_url, agent("permanent", "good"))
    assert result.status == "completed", result.error
    assert result.output["content"] == "good: hello"
    assert functions == {"permanent": 1, "flaky": 0, "good": 1}, "a permanent error: no retry"
    failed, answered = await Store(db_url).invocations(result.execution_id)
    assert (failed.status, failed.model) == ("failed", "function:permanent")
    assert "no key for the permanent model" in (failed.error or "")
    assert (answered.status, answered.provider, answered.model) == (
        "completed",
        "function",
        "function:good",
    )
    assert answered.output is not None
    assert answered.output["fallbacks"] == [
        {"model": "function:permanent", "error": "no key for the permanent model"}
    ]


@pytest.mark.slow  # waits out retry back-off
async def test_the_primary_uses_up_its_own_retries_before_the_fallback_answers(
    db_url: str, functions: dict[str, int]
) -> None:
    result = await run(db_url, agent("flaky", "good"), retries=2)
    assert result.status == "completed", result.error
    assert functions["flaky"] == 3 and functions["good"] == 1
    rows = await Store(db_url).invocations(result.execution_id)
    assert [(r.model, r.status, r.attempt) for r in rows] == [
        ("function:flaky", "failed", 1),
        ("function:flaky", "failed", 2),
        ("function:flaky", "failed", 3),
        ("function:good", "completed", 4),
    ]
    assert rows[-1].output is not None
    (reason,) = rows[-1].output["fallbacks"]
    assert reason["model"] == "function:flaky" and "503 upstream unavailable" in reason["error"]


async def test_each_model_in_turn_and_all_reasons_when_none_answers(
    db_url: str, functions: dict[str, int]
) -> None:
    result = await run(db_url, agent("flaky", "permanent", "good"), retries=1)
    assert result.status == "completed", result.error
    assert functions == {"flaky": 2, "permanent": 1, "good": 1}
    rows = await Store(db_url).invocations(result.execution_id)
    assert rows[-1].output is not None
    assert [f["model"] for f in rows[-1].output["fallbacks"]] == [
        "function:flaky",
        "function:permanent",
    ]

    result = await run(db_url, agent("flaky", "permanent"), retries=1)
    assert result.status == "failed"
    error = result.error or ""
    assert "every model failed" in error
    assert "function:flaky: RuntimeError: 503 upstream unavailable" in error
    assert "function:permanent: no key for the permanent model" in error


async def test_an_agent_without_fallback_models_fails_as_before(
    db_url: str, functions: dict[str, int]
) -> None:
    result = await run(db_url, agent("permanent"))
    assert result.status == "failed"
    assert "every model failed" not in (result.error or "")
    assert "no key for the permanent model" in (result.error or "")


async def test_the_move_is_sticky_within_an_invocation() -> None:
    calls: list[str] = []

    def answer(request: LLMRequest) -> str:
        calls.append(request.model)
        if request.model == "first":
            raise ProviderError("gone", provider="function")
        return "ok"

    register_function("first", answer)
    register_function("second", answer)
    try:
        provider = FallbackProvider(
            [
                Candidate("function:first", FunctionProvider()),
                Candidate("function:second", FunctionProvider(), {"model": "second"}),
            ]
        )
        request = LLMRequest(model="first", messages=[Message(role="user", content="q")])
        await provider.complete(request)
        await provider.complete(request)  # a later turn of the same conversation
        assert calls == ["first", "second", "second"]
        assert provider.answering.label == "function:second"
        assert [c.label for c, _ in provider.failures] == ["function:first"]
    finally:
        unregister_function("first")
        unregister_function("second")


# -- through the real SDK ------------------------------------------------------------------


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesAPIServer]:
    with MessagesAPIServer() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-fallback")
        ProviderRegistry.reset()
        yield server


async def test_an_overloaded_claude_model_falls_back_to_another(
    api: MessagesAPIServer, db_url: str
) -> None:
    primary, fallback = Models.CLAUDE_SONNET_5_5, Models.CLAUDE_HAIKU_5_5
    api.fault_for = lambda body: Fault.overloaded() if body["model"] == primary.model else None
    config = AgentConfig(model_config_obj=primary, fallback_models=[fallback])
    member = AgentType(name="c", role=AgentRole.EXECUTOR, config=config.model_dump(mode="json"))
    runner = AsyncRunner(db_url=db_url, max_concurrent=2, config=RunConfig(max_retries=1))
    result = await runner.run(PIPELINE, {"only": member}, {"prompt": "hello"})
    assert result.status == "completed", result.error
    assert [r["body"]["model"] for r in api.requests] == [primary.model] * 2 + [fallback.model]
    rows = await Store(db_url).invocations(result.execution_id)
    assert [(r.model, r.status) for r in rows] == [
        (primary.model, "failed"),
        (primary.model, "failed"),
        (fallback.model, "completed"),
    ]
    answered = rows[-1]
    assert answered.cost_usd == estimate_cost(
        fallback.model, answered.input_tokens, answered.output_tokens
    )
    assert answered.output is not None
    (reason,) = answered.output["fallbacks"]
    assert reason["model"] == primary.model and "529 overloaded_error" in reason["error"]
