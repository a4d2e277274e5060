"""Cross-cutting behaviour as providers around providers (pydantic-ai's `WrapperModel` shape).

An agent's provider chain, outermost first: `RetryingProvider` (transient errors only, honouring
Retry-After) → `RecordingProvider` (every attempt reported as it ends) → `LimitedProvider` (the
concurrency bound) → `TimeoutProvider` → the provider itself. Each wrapper is a `Provider`, so a
chain can be wrapped again (fallback, adaptive limits) without the engine knowing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

from qmcp.agentframework.errors import ProviderError
from qmcp.agentframework.llm.base import LLMRequest, LLMResponse, Provider, ProviderCapabilities


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
    provider's Retry-After says (capped). Permanent errors are never retried."""

    max_retries: int = 3
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
        retry = 0
        while True:
            try:
                return await self.wrapped.complete(request)
            except ProviderError as exc:
                if not exc.retryable or retry >= self.policy.max_retries:
                    raise
                delay = self.policy.delay(retry, exc)
                retry += 1
                if self.on_retry is not None:
                    await self.on_retry(exc, retry, delay)
                await asyncio.sleep(delay)
