"""Adaptive concurrency per provider endpoint: AIMD driven by the provider's own refusals.

Every run in the process that calls one endpoint (a provider and its base URL) shares one
`AdaptiveLimiter` (one per event loop: its waiters belong to a loop). Until the endpoint refuses
for load it bounds nothing; on a refusal (`RateLimited`: HTTP 429 or 529) it halves the
concurrency in use and holds new calls back for as long as Retry-After says, then probes upward
again: +1 per window of `limit` successes (additive increase). A level that held for a whole
window is remembered: a probe refused above it goes straight back to it (not to half), and the
next probe at that level waits twice as many windows (up to `MAX_PROBE_WINDOWS`), so an endpoint
whose limit does not move costs one refused call now and then instead of a sawtooth. So a wide
fan-out settles on what the provider admits instead of failing, and still finds out when the
provider admits more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Literal

from qmcp.agentframework.errors import ProviderError

# Calls at once before the endpoint has said anything: in effect no bound (the run's own
# concurrency bounds it); the limiter never grows the limit above the concurrency it has seen.
DEFAULT_CEILING = 1024
# A probe above a level that held, refused again and again, is tried at most this many windows
# apart (windows of `limit` successes).
MAX_PROBE_WINDOWS = 16

Outcome = Literal["ok", "rate_limited", "other"]


class RateLimited(ProviderError):
    """The provider refused for load: HTTP 429 (rate limit) or 529 (overloaded). Always
    transient, after `retry_after` seconds when the provider said so.

    `flow_control` is set by the endpoint's limiter when the refusal came while other calls were
    in flight: the concurrency was ours to lower, and the limiter has lowered it, so the retry
    does not use up the invocation's retries (see `RetryPolicy.max_rate_limit_retries`).
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        retry_after: float | None = None,
        status: int = 429,
    ) -> None:
        super().__init__(message, retryable=True, provider=provider, retry_after=retry_after)
        self.status = status
        self.flow_control = False


@dataclass(frozen=True)
class LimiterState:
    """What a limiter has learnt, for benchmarks and diagnostics."""

    limit: int
    in_flight: int
    stable: int
    decreases: int
    increases: int


class AdaptiveLimiter:
    """Additive increase, multiplicative decrease of the calls admitted at once.

    `acquire` returns a token (the limiter's epoch when the call was admitted) that `release`
    takes back with the call's outcome. Only a refusal of a call admitted since the last decrease
    lowers the limit again: the refusals of calls already in flight then are the same news.
    """

    def __init__(self, ceiling: int = DEFAULT_CEILING) -> None:
        self.ceiling = max(1, ceiling)
        self.limit = self.ceiling
        self.in_flight = 0
        self.stable = 0  # the highest level that held for a whole window (0: none known)
        self.probe_windows = 1  # windows at the level that held before probing above it again
        self.epoch = 0
        self.decreases = 0
        self.increases = 0
        self._successes = 0
        self._saturated = False  # the limit was reached since it last changed
        self._resume_at = 0.0  # loop time before which nothing is admitted (Retry-After)
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: deque[asyncio.Future[int]] = deque()

    def state(self) -> LimiterState:
        return LimiterState(self.limit, self.in_flight, self.stable, self.decreases, self.increases)

    # -- admission --------------------------------------------------------------------------

    def _admits(self, now: float) -> bool:
        return now >= self._resume_at and self.in_flight < self.limit

    def _admit(self) -> int:
        self.in_flight += 1
        if self.in_flight >= self.limit:
            self._saturated = True
        return self.epoch

    async def acquire(self) -> int:
        loop = asyncio.get_running_loop()
        if not self._waiters and self._admits(loop.time()):
            return self._admit()
        waiter: asyncio.Future[int] = loop.create_future()
        self._waiters.append(waiter)
        self._wake()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result(), "other")  # admitted as the cancel came
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _wake(self) -> None:
        """Admit waiters in order while the limit allows; if Retry-After holds them back, come
        back when it ends."""
        if not self._waiters:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._resume_at:
            if self._timer is None or self._timer.when() > self._resume_at:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = loop.call_at(self._resume_at, self._timer_fired)
            return
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(self._admit())

    def _timer_fired(self) -> None:
        self._timer = None
        self._wake()

    # -- learning ---------------------------------------------------------------------------

    def release(self, token: int, outcome: Outcome, retry_after: float | None = None) -> bool:
        """A call admitted with `token` ended. Returns whether a refusal was flow control (the
        call had company in flight, so lowering the concurrency is the answer to it)."""
        in_use = self.in_flight
        self.in_flight = max(0, self.in_flight - 1)
        flow_control = False
        if outcome == "ok":
            self._succeeded()
        elif outcome == "rate_limited":
            flow_control = in_use > 1 or token != self.epoch
            if retry_after is not None and retry_after > 0:
                loop = asyncio.get_running_loop()
                self._resume_at = max(self._resume_at, loop.time() + retry_after)
            if token == self.epoch:
                self._decrease(in_use)
            elif token == self.epoch - 1 and 0 < self.in_flight < self.limit:
                # The rest of the burst the decrease answered: each refusal back says the calls
                # still in flight are about what the endpoint admits, so the limit follows them
                # down (a burst of 50 against an endpoint admitting 8 settles near 8 at once,
                # not by halving 50 -> 25 -> 12 -> 6 one round trip at a time).
                self._set_limit(self.in_flight)
        self._wake()
        return flow_control

    def _succeeded(self) -> None:
        if not self._saturated or self.limit >= self.ceiling:
            return  # the limit did not bound anything: no evidence that more would pass
        self._successes += 1
        windows = self.probe_windows if self.limit == self.stable else 1
        if self._successes >= self.limit * windows:
            if self.limit > self.stable:
                self.probe_windows = 1  # a new level held: probe above it as usual
            self.stable = self.limit
            self.increases += 1
            self._set_limit(self.limit + 1)

    def _decrease(self, in_use: int) -> None:
        level = min(self.limit, in_use)
        if 0 < self.stable < level:
            # A probe above a level that held was refused: back to that level at once, and
            # probe above it less often while it keeps being refused.
            new = self.stable
            self.probe_windows = min(MAX_PROBE_WINDOWS, self.probe_windows * 2)
        else:
            new = max(1, level // 2)
            self.stable = 0  # refused at or below it: what held no longer does
            self.probe_windows = 1
        self.epoch += 1
        self.decreases += 1
        self._set_limit(new)

    def _set_limit(self, limit: int) -> None:
        self.limit = max(1, min(self.ceiling, limit))
        self._successes = 0
        self._saturated = self.in_flight >= self.limit


# One registry per event loop: a limiter's waiters are futures of its loop.
_LIMITERS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, str], AdaptiveLimiter]
] = weakref.WeakKeyDictionary()


def endpoint_of(provider: str, base_url: str | None) -> str:
    """The endpoint a call goes to: its base URL, else the provider's `<NAME>_BASE_URL`
    (ANTHROPIC_BASE_URL, OPENAI_BASE_URL), else the provider's default."""
    if base_url:
        return base_url.rstrip("/")
    variable = re.sub(r"[^A-Z0-9]", "_", provider.upper()) + "_BASE_URL"
    return (os.environ.get(variable) or "default").rstrip("/")


def limiter_for(provider: str, base_url: str | None = None) -> AdaptiveLimiter:
    """The limiter every run in this process (on this event loop) shares for one endpoint."""
    loop = asyncio.get_running_loop()
    limiters = _LIMITERS.get(loop)
    if limiters is None:
        limiters = _LIMITERS[loop] = {}
    key = (provider, endpoint_of(provider, base_url))
    limiter = limiters.get(key)
    if limiter is None:
        limiter = limiters[key] = AdaptiveLimiter()
    return limiter


def reset_limiters() -> None:
    """Forget what every endpoint's limiter learnt (tests, benchmarks)."""
    _LIMITERS.clear()
