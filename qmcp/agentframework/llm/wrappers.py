"""Cross-cutting behaviour as providers around providers (pydantic-ai's `WrapperModel` shape).

An agent's provider chain, outermost first: `RetryingProvider` (transient errors only, honouring
Retry-After) → `RecordingProvider` (every attempt reported as it ends) → `LimitedProvider` (the
run's concurrency bound) → `AdaptiveLimitedProvider` (the endpoint's limit, shared by every run in
the process) → `TimeoutProvider` → the provider itself; with fallback models, one such chain per
model under a `FallbackProvider` (`llm/fallback.py`). Each wrapper is a `Provider`, so a chain can
be wrapped again without the engine knowing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

from qmcp.agentframework import telemetry
from qmcp.agentframework.errors import ProviderError
from qmcp.agentframework.llm.base import LLMRequest, LLMResponse, Provider, ProviderCapabilities
from qmcp.agentframework.llm.limits import AdaptiveLimiter, Outcome, RateLimited, limiter_for


class WrapperProvider:
    """A provider that delegates to `wrapped`; subclasses change `complete`."""

    def __init__(self, wrapped: Provider) -> None:
        self.wrapped = wrapped

    @property
    def name(self) -> str:
        return self.wrapped.name

    def capabilities(self, model: str) -> ProviderCapabilities:
        return self.wrapped.capabilities(model)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        return await self.wrapped.complete(request)


class TimeoutProvider(WrapperProvider):
    """No answer within `seconds` is a transient error. (Chains leave it out for providers that
    answer inline: there is nothing it could interrupt, and arming it would be most of their
    cost.)"""

    def __init__(self, wrapped: Provider, seconds: float) -> None:
        super().__init__(wrapped)
        self.seconds = seconds

    async def complete(self, request: LLMRequest) -> LLMResponse:
        try:
            async with asyncio.timeout(self.seconds):
                return await self.wrapped.complete(request)
        except TimeoutError:
            raise ProviderError(
                f"no answer within {self.seconds:g} s", retryable=True, provider=self.name
            ) from None


class LimitedProvider(WrapperProvider):
    """At most as many calls at once as `limit` admits (a semaphore shared by a run's branches,
    or an endpoint's limiter shared by every run in the process)."""

    def __init__(self, wrapped: Provider, limit: AbstractAsyncContextManager[object]) -> None:
        super().__init__(wrapped)
        self.limit = limit

    async def complete(self, request: LLMRequest) -> LLMResponse:
        async with self.limit:
            return await self.wrapped.complete(request)


class AdaptiveLimitedProvider(WrapperProvider):
    """Calls go through their endpoint's `AdaptiveLimiter` (`llm/limits.py`), which learns from
    the provider's refusals how many it admits at once; `limiter` fixes one (tests)."""

    def __init__(self, wrapped: Provider, limiter: AdaptiveLimiter | None = None) -> None:
        super().__init__(wrapped)
        self.limiter = limiter

    async def complete(self, request: LLMRequest) -> LLMResponse:
        limiter = self.limiter or limiter_for(self.name, request.base_url)
        token = await limiter.acquire()
        outcome: Outcome = "other"
        try:
            response = await self.wrapped.complete(request)
        except RateLimited as exc:
            outcome = "rate_limited"
            exc.flow_control = limiter.release(token, outcome, exc.retry_after)
            raise
        except BaseException:
            limiter.release(token, outcome)
            raise
        limiter.release(token, "ok")
        return response


@dataclass(frozen=True)
class Attempt:
    """One call of the provider, answered or failed."""

    request: LLMRequest
    response: LLMResponse | None
    error: ProviderError | None
    started_at: datetime
    duration_ms: float


class RecordingProvider(WrapperProvider):
    """Reports every attempt to `on_attempt` as it ends; failures other than `ProviderError`
    (a provider's bug) become permanent `ProviderError`s here, so nothing above guesses."""

    def __init__(self, wrapped: Provider, on_attempt: Callable[[Attempt], Awaitable[None]]) -> None:
        super().__init__(wrapped)
        self.on_attempt = on_attempt

    async def complete(self, request: LLMRequest) -> LLMResponse:
        with telemetry.chat_span(self.name, request) as span:  # a `chat` span per attempt
            response = await self._attempt(request)
            telemetry.answered(span, response)
            return response

    async def _attempt(self, request: LLMRequest) -> LLMResponse:
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        try:
            response = await self.wrapped.complete(request)
        except ProviderError as exc:
            error = exc
        except Exception as exc:
            error = ProviderError(f"{type(exc).__name__}: {exc}", provider=self.name)
        else:
            await self.on_attempt(
                Attempt(request, response, None, started, (time.perf_counter() - t0) * 1000)
            )
            return response
        await self.on_attempt(
            Attempt(request, None, error, started, (time.perf_counter() - t0) * 1000)
        )
        raise error


@dataclass(frozen=True)
class RetryPolicy:
    """How transient errors are retried: exponential backoff with jitter, or what the
    provider's Retry-After says (capped). Permanent errors are never retried.

    A refusal for load that the endpoint's limiter answered by lowering the concurrency (a
    `RateLimited` with `flow_control`: other calls were in flight) is flow control, not a
    failure: up to `max_rate_limit_retries` of them are retried without using up
    `max_retries`, so a wide fan-out converges on what the provider admits. A refusal of a lone
    call counts as any transient error.
    """

    max_retries: int = 3
    max_rate_limit_retries: int = 20
    base_seconds: float = 0.25
    max_seconds: float = 8.0
    max_retry_after_seconds: float = 60.0

    def delay(self, retry: int, error: ProviderError) -> float:
        if error.retry_after is not None:
            return max(0.0, min(error.retry_after, self.max_retry_after_seconds))
        backoff = min(self.max_seconds, self.base_seconds * 2**retry)
        return backoff * (0.5 + random.random() / 2)


RetryHook = Callable[[ProviderError, int, float], Awaitable[None]]


class RetryingProvider(WrapperProvider):
    """Retries transient `ProviderError`s under one policy; `on_retry(error, retry, delay)` is
    told before each wait."""

    def __init__(
        self, wrapped: Provider, policy: RetryPolicy, on_retry: RetryHook | None = None
    ) -> None:
        super().__init__(wrapped)
        self.policy = policy
        self.on_retry = on_retry

    async def complete(self, request: LLMRequest) -> LLMResponse:
        retry = shed = 0  # retries that count; flow-control retries (see RetryPolicy)
        while True:
            try:
                return await self.wrapped.complete(request)
            except ProviderError as exc:
                if not exc.retryable:
                    raise
                if isinstance(exc, RateLimited) and exc.flow_control:
                    if shed >= self.policy.max_rate_limit_retries:
                        raise
                    delay = self.policy.delay(shed, exc)
                    shed += 1
                else:
                    if retry >= self.policy.max_retries:
                        raise
                    delay = self.policy.delay(retry, exc)
                    retry += 1
                if self.on_retry is not None:
                    await self.on_retry(exc, retry + shed, delay)
                await asyncio.sleep(delay)
