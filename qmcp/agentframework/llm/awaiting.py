"""A run that waits for answers from outside it: the MCP client's model on the stateless protocol.

On MCP 2026-07-28 a server cannot ask the client's model in the middle of a tool call; it answers
the call with the questions (`InputRequiredResult`) and the client calls again with the answers. A
provider that asks that way (`sampling`) raises `AwaitingSamples` for a question not answered yet.
The run then stops as `pending`, after the branches running beside the one that asked have reached
their own questions (the run context's `gather` holds the pause until they have), so the questions
of parallel members go out in one round; the next call resumes the execution with the answers, and
every invocation recorded so far is a checkpoint that is not asked again.

Inside an agent's provider chain the pause travels as `Paused`, a permanent `ProviderError` that
the retry, recording and limit wrappers let through untouched and no fallback model answers
(`carry_pause` inside the chain, `release_pause` outside it).
"""

from __future__ import annotations

from collections.abc import Iterable

from qmcp.agentframework.errors import ProviderError, QmcpError
from qmcp.agentframework.human import AwaitingHuman
from qmcp.agentframework.llm.base import LLMRequest, LLMResponse, Provider
from qmcp.agentframework.llm.wrappers import WrapperProvider

AWAITS_CLIENT = "client"  # what a sampling pause waits for: the MCP client's answers


class AwaitingSamples(AwaitingHuman):
    """The run waits for the MCP client's model to answer `keys` (one per question); runners stop
    it as `pending`, like a run waiting for a human decision, and the next round resumes it."""

    awaits = AWAITS_CLIENT  # a pause, not a failure, to the spans it leaves (`telemetry.AWAITS`)

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = sorted(set(keys))
        shown = ", ".join(self.keys[:5]) + (", …" if len(self.keys) > 5 else "")
        QmcpError.__init__(
            self,
            f"waiting for the MCP client's model to answer {len(self.keys)} sampling "
            f"request(s) ({shown}); the client answers them and calls the tool again",
        )

    @classmethod
    def merge(cls, waits: Iterable[AwaitingSamples]) -> AwaitingSamples:
        """One pause for the questions of several branches."""
        return cls(key for wait in waits for key in wait.keys)


class Paused(ProviderError):
    """An `AwaitingSamples` on its way through a provider chain (see the module docstring); the
    `chat` span it leaves is a pause awaiting the client, not an error."""

    awaits = AWAITS_CLIENT

    def __init__(self, wait: AwaitingSamples) -> None:
        super().__init__(str(wait), retryable=False)
        self.wait = wait


class _CarryPause(WrapperProvider):
    async def complete(self, request: LLMRequest) -> LLMResponse:
        try:
            return await self.wrapped.complete(request)
        except AwaitingSamples as wait:
            raise Paused(wait) from None


class _ReleasePause(WrapperProvider):
    async def complete(self, request: LLMRequest) -> LLMResponse:
        try:
            return await self.wrapped.complete(request)
        except Paused as paused:
            raise paused.wait from None


def carry_pause(provider: Provider) -> Provider:
    """Wrap a provider that may pause (innermost in its chain)."""
    return _CarryPause(provider)


def release_pause(chain: Provider) -> Provider:
    """Wrap the chain of a provider that may pause (outermost, before any fallback)."""
    return _ReleasePause(chain)
