"""Adaptive rate limits: the AIMD arithmetic of one endpoint's limiter, the retry policy's
flow-control allowance, and a fan-out through the real Anthropic SDK converging on what a local
Messages API admits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fake_messages_api import Fault, MessagesAPIServer

from qmcp.agentframework.errors import ProviderError
from qmcp.agentframework.llm import (
    AdaptiveLimitedProvider,
    AdaptiveLimiter,
    LLMRequest,
    LLMResponse,
    Message,
    ProviderCapabilities,
    ProviderRegistry,
    RateLimited,
    RetryingProvider,
    RetryPolicy,
    limiter_for,
    reset_limiters,
)
from qmcp.agentframework.models import (
    AgentConfig,
    AgentRole,
    AgentType,
    EnsembleConfig,
    Models,
    Topology,
    TopologyType,
)
from qmcp.agentframework.runners import AsyncRunner, RunConfig
from qmcp.agentframework.store import Store

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def _fresh_limiters() -> Iterator[None]:
    reset_limiters()
    yield
    reset_limiters()


async def admitted(limiter: AdaptiveLimiter, n: int) -> list[int]:
    return [await limiter.acquire() for _ in range(n)]


# -- the arithmetic ------------------------------------------------------------------------


async def test_a_new_limiter_bounds_nothing_until_the_endpoint_refuses() -> None:
    limiter = AdaptiveLimiter()
    await admitted(limiter, 200)
    assert limiter.in_flight == 200 and limiter.limit == limiter.ceiling


async def test_a_refusal_halves_the_concurrency_in_use_once_per_epoch() -> None:
    limiter = AdaptiveLimiter()
    tokens = await admitted(limiter, 50)
    assert limiter.release(tokens[0], "rate_limited") is True, "refused with company: flow control"
    assert limiter.limit == 25 and limiter.decreases == 1
    for token in tokens[1:30]:  # the same news from calls already in flight: no second halving,
        assert limiter.release(token, "rate_limited") is True
    assert limiter.decreases == 1
    # ... but the limit follows the calls still in flight down: those are what was admitted.
    assert limiter.in_flight == 20 and limiter.limit == 20
    for token in tokens[30:]:  # 20 in flight at once all went through: 20 held
        limiter.release(token, "ok")
    assert limiter.stable == 20 and limiter.limit == 21
    # A call admitted after the decrease is refused at 20: that is news, and halves again.
    fresh = await admitted(limiter, 20)
    limiter.release(fresh[0], "rate_limited")
    assert limiter.limit == 10 and limiter.decreases == 2


async def test_a_lone_refusal_is_not_flow_control_and_the_floor_is_one() -> None:
    limiter = AdaptiveLimiter()
    for _ in range(3):
        (token,) = await admitted(limiter, 1)
        assert limiter.release(token, "rate_limited") is False
    assert limiter.limit == 1


async def test_additive_increase_one_per_window_of_successes_while_the_limit_binds() -> None:
    limiter = AdaptiveLimiter()
    (token,) = await admitted(limiter, 1)
    limiter.limit = 8
    limiter.release(token, "rate_limited")  # alone: the limit was 8, the concurrency 1
    assert limiter.limit == 1 and limiter.stable == 0, "nothing held before: plain AIMD"
    limiter.limit = 4
    for expected in (5, 6, 7):
        window = await admitted(limiter, limiter.limit)
        for token in window[:-1]:
            limiter.release(token, "ok")
        assert limiter.limit == expected - 1, "not before the window is complete"
        limiter.release(window[-1], "ok")
        assert limiter.limit == expected
        assert limiter.stable == expected - 1


async def test_no_increase_when_the_limit_does_not_bind() -> None:
    limiter = AdaptiveLimiter()
    tokens = await admitted(limiter, 8)
    limiter.release(tokens[0], "rate_limited")
    for token in tokens[1:]:
        limiter.release(token, "ok")
    limit = limiter.limit
    for _ in range(20):  # one call at a time: no evidence that more than the limit would pass
        (token,) = await admitted(limiter, 1)
        limiter.release(token, "ok")
    assert limiter.limit == limit


async def test_a_refused_probe_returns_to_the_level_that_held_and_probes_less_often() -> None:
    limiter = AdaptiveLimiter()
    limiter.limit, limiter.stable = 9, 8  # 8 held for a window; 9 is the probe
    tokens = await admitted(limiter, 9)
    limiter.release(tokens[-1], "rate_limited")
    assert limiter.limit == 8 and limiter.probe_windows == 2, "straight back to 8, not to 4"
    for token in tokens[:-1]:  # the first of two windows of 8 successes before the next probe
        limiter.release(token, "ok")
    assert limiter.limit == 8
    tokens = await admitted(limiter, 8)
    for token in tokens:
        limiter.release(token, "ok")
    assert limiter.limit == 9, "the second window: probe again"
    tokens = await admitted(limiter, 9)
    limiter.release(tokens[-1], "rate_limited")  # refused again: four windows next time
    assert limiter.limit == 8 and limiter.probe_windows == 4
    for token in tokens[:-1]:
        limiter.release(token, "ok")
    # Refused at or below the level that held: it no longer holds, plain AIMD from here.
    tokens = await admitted(limiter, 8)
    limiter.release(tokens[0], "rate_limited")
    assert limiter.limit == 4 and limiter.stable == 0 and limiter.probe_windows == 1


async def test_a_probe_that_holds_becomes_the_level_and_resets_the_back_off() -> None:
    limiter = AdaptiveLimiter()
    limiter.limit, limiter.stable, limiter.probe_windows = 9, 8, 4
    tokens = await admitted(limiter, 9)
    for token in tokens:
        limiter.release(token, "ok")
    assert limiter.stable == 9 and limiter.limit == 10 and limiter.probe_windows == 1


async def test_retry_after_holds_new_calls_back_and_other_failures_teach_nothing() -> None:
    limiter = AdaptiveLimiter()
    tokens = await admitted(limiter, 4)
    limiter.release(tokens[0], "other")
    assert limiter.limit == limiter.ceiling and limiter.decreases == 0
    limiter.release(tokens[1], "rate_limited", retry_after=0.05)
    assert limiter.limit == 1, "3 in use, halved"
    limiter.release(tokens[2], "ok")
    limiter.release(tokens[3], "ok")
    assert limiter.in_flight == 0
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    assert not waiter.done(), "held back while Retry-After lasts, though a slot is free"
    assert await asyncio.wait_for(waiter, 5) == limiter.epoch
    assert limiter.in_flight == 1


async def test_waiters_are_admitted_in_order_and_a_cancelled_one_gives_its_turn_up() -> None:
    limiter = AdaptiveLimiter(ceiling=1)
    (token,) = await admitted(limiter, 1)
    first = asyncio.ensure_future(limiter.acquire())
    second = asyncio.ensure_future(limiter.acquire())
    third = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0)
    second.cancel()
    limiter.release(token, "ok")
    await asyncio.sleep(0)
    assert first.done() and not third.done()
    limiter.release(first.result(), "ok")
    await asyncio.wait_for(third, 5)
    assert second.cancelled() and limiter.in_flight == 1


async def test_one_limiter_per_endpoint() -> None:
    assert limiter_for("anthropic", "http://a/") is limiter_for("anthropic", "http://a")
    assert limiter_for("anthropic", "http://a") is not limiter_for("anthropic", "http://b")
    assert limiter_for("openai", "http://a") is not limiter_for("anthropic", "http://a")


# -- the retry policy ----------------------------------------------------------------------


class Crowded:
    """A provider that admits `capacity` calls at once and refuses beyond, as an endpoint does."""

    name = "crowded"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active = self.peak = self.refused = self.calls = 0

    def capabilities(self, model: str) -> ProviderCapabilities:
        return ProviderCapabilities()

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.calls += 1
        if self.active >= self.capacity:
            self.refused += 1
            raise RateLimited("429 rate_limit_error", provider=self.name, retry_after=0.001)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(0.002)
        finally:
            self.active -= 1
        return LLMResponse(text="ok", model=request.model, provider=self.name)


def ask() -> LLMRequest:
    return LLMRequest(model="m", messages=[Message(role="user", content="hi")])


async def test_flow_control_retries_do_not_use_up_the_retry_budget() -> None:
    crowded = Crowded(capacity=3)
    limiter = AdaptiveLimiter()
    policy = RetryPolicy(max_retries=0)
    chain = RetryingProvider(AdaptiveLimitedProvider(crowded, limiter), policy)
    answers = await asyncio.gather(*(chain.complete(ask()) for _ in range(30)))
    assert [a.text for a in answers] == ["ok"] * 30
    assert crowded.refused > 0, "the fan-out met the limit"
    assert limiter.limit <= 4


async def test_a_lone_refusal_counts_as_a_retry() -> None:
    class Refusing(Crowded):
        async def complete(self, request: LLMRequest) -> LLMResponse:
            self.calls += 1
            raise RateLimited("429 rate_limit_error", provider=self.name, retry_after=0.001)

    refusing = Refusing(capacity=0)
    chain = RetryingProvider(
        AdaptiveLimitedProvider(refusing, AdaptiveLimiter()), RetryPolicy(max_retries=2)
    )
    with pytest.raises(ProviderError, match="429"):
        await chain.complete(ask())
    assert refusing.calls == 3


async def test_flow_control_retries_have_their_own_bound() -> None:
    class AlwaysCrowded(Crowded):
        async def complete(self, request: LLMRequest) -> LLMResponse:
            self.calls += 1
            error = RateLimited("429 rate_limit_error", provider=self.name, retry_after=0)
            error.flow_control = True  # as the limiter marks a refusal that had company
            raise error

    provider = AlwaysCrowded(capacity=0)
    chain = RetryingProvider(provider, RetryPolicy(max_retries=1, max_rate_limit_retries=5))
    with pytest.raises(RateLimited):
        await chain.complete(ask())
    assert provider.calls == 6, "5 flow-control retries, and the failure retries stay unused"


# -- a fan-out through the real SDK --------------------------------------------------------


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesAPIServer]:
    with MessagesAPIServer() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-ratelimit")
        ProviderRegistry.reset()
        yield server


def members(n: int) -> dict[str, AgentType]:
    config = AgentConfig(model_config_obj=Models.CLAUDE_SONNET_4, system_prompt="Answer briefly.")
    return {
        f"ensemble_{i}": AgentType(
            name=f"member-{i}",
            role=AgentRole.SPECIALIST,
            config=config.model_dump(mode="json"),
        )
        for i in range(n)
    }


@pytest.mark.slow  # waits out 429s and back-off
async def test_a_wide_fan_out_converges_on_what_the_endpoint_admits(
    api: MessagesAPIServer, db_url: str
) -> None:
    api.max_concurrent = 4
    api.latency = 0.02
    topology = Topology(
        name="wide",
        topology_type=TopologyType.ENSEMBLE,
        config=EnsembleConfig(aggregation_method="concat", failure_threshold=0.0).model_dump(),
    )
    runner = AsyncRunner(db_url=db_url, max_concurrent=20, config=RunConfig(max_retries=3))
    result = await runner.run(topology, members(40), {"prompt": "count to three"})
    assert result.status == "completed", result.error
    assert len(result.output["members"]) == 40
    assert api.refused > 0, "the fan-out went beyond what the endpoint admits"
    assert api.peak == 4
    rows = await Store(db_url).invocations(result.execution_id)
    completed = [r for r in rows if r.status == "completed"]
    refused = [r for r in rows if r.status == "failed"]
    assert len(completed) == 40
    assert all("429 rate_limit_error" in (r.error or "") for r in refused)
    limiter = limiter_for("anthropic", api.base_url)
    assert 1 <= limiter.limit <= 8 and limiter.decreases >= 1
    assert limiter.in_flight == 0


async def test_a_lone_call_still_fails_after_its_retries(
    api: MessagesAPIServer, db_url: str
) -> None:
    api.enqueue(*[Fault.rate_limited(0.01)] * 3)
    topology = Topology(
        name="one", topology_type=TopologyType.ENSEMBLE, config={"aggregation_method": "concat"}
    )
    agents: dict[str, Any] = members(1)
    runner = AsyncRunner(db_url=db_url, max_concurrent=4, config=RunConfig(max_retries=2))
    result = await runner.run(topology, agents, {"prompt": "q"})
    assert result.status == "failed"
    assert "429 rate_limit_error" in (result.error or "")
    assert len(api.requests) == 3
