"""Fallback models: when one model fails for good, the next answers.

`FallbackProvider` holds one provider chain per model, in order, each with its own retries,
recording and limits. A model fails for good when its chain raises (a permanent error, or a
transient one with its retries spent); the next model is then asked the same request, with its
own model id and endpoint. Within one invocation the move is sticky: the later turns of a
conversation go to the model that answered, not back to one that failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qmcp.agentframework.errors import ProviderError
from qmcp.agentframework.llm.base import LLMRequest, LLMResponse, Provider, ProviderCapabilities


@dataclass(frozen=True)
class Candidate:
    """One model of a fallback list: how records name it, its provider chain, and what it
    changes in the request (its model id and endpoint)."""

    label: str
    provider: Provider
    changes: dict[str, Any] = field(default_factory=dict)


FallbackHook = Callable[[Candidate, ProviderError, Candidate], Awaitable[None]]


class FallbackProvider:
    """The first candidate that answers; `on_fallback(failed, error, next)` is told before each
    move, and `failures` keeps why each earlier candidate did not answer."""

    def __init__(self, candidates: Sequence[Candidate], on_fallback: FallbackHook | None = None):
        if not candidates:
            raise ValueError("a fallback list needs at least one model")
        self.candidates = list(candidates)
        self.on_fallback = on_fallback
        self.current = 0
        self.failures: list[tuple[Candidate, ProviderError]] = []

    @property
    def answering(self) -> Candidate:
        return self.candidates[self.current]

    @property
    def name(self) -> str:
        return self.answering.provider.name

    def capabilities(self, model: str) -> ProviderCapabilities:
        return self.answering.provider.capabilities(model)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        while True:
            candidate = self.answering
            asked = request.model_copy(update=candidate.changes) if candidate.changes else request
            try:
                return await candidate.provider.complete(asked)
            except ProviderError as exc:
                if self.current + 1 >= len(self.candidates):
                    if not self.failures:
                        raise
                    reasons = [*self.failures, (candidate, exc)]
                    raise ProviderError(
                        "every model failed: " + "; ".join(f"{c.label}: {e}" for c, e in reasons),
                        provider=exc.provider,
                    ) from None
                self.failures.append((candidate, exc))
                self.current += 1
                if self.on_fallback is not None:
                    await self.on_fallback(candidate, exc, self.answering)
