"""The `function` provider: a registered Python callable answers (tests, benchmarks, glue).

`register_function("echo", fn)` then `ModelConfig(provider="function", model="echo")`. The callable
takes the `LLMRequest` and returns a string or an `LLMResponse` (which may hold tool-use blocks),
directly or as an awaitable. It stands in for a remote model: an exception it raises counts as a
transient failure (as a 5xx would) and is retried; raise `ProviderError(..., retryable=False)` or
`ConfigurationError` for a permanent one.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Union

from qmcp.agentframework.errors import ConfigurationError, ProviderError
from qmcp.agentframework.llm.base import (
    LLMRequest,
    LLMResponse,
    ProviderCapabilities,
    count_tokens,
)
from qmcp.agentframework.registry import Registry

Reply = Union[str, LLMResponse]  # noqa: UP007 - runtime alias
AgentFunction = Callable[[LLMRequest], Reply | Awaitable[Reply]]

FUNCTIONS: Registry[AgentFunction] = Registry(
    "function", hint="qmcp.agentframework.llm.register_function", missing=ConfigurationError
)


_INLINE: dict[str, bool] = {}


def register_function(name: str, fn: AgentFunction, *, inline: bool | None = None) -> None:
    """Register `fn` as the model `function:<name>`.

    `inline`: the function answers without awaiting anything, so no timeout or concurrency
    slot is armed for it. By default a function is inline unless it is an `async def` (or an
    object whose `__call__` is); pass `inline=False` for a plain callable that returns an
    awaitable.
    """
    if inline is None:
        inline = not (
            inspect.iscoroutinefunction(fn)
            or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
        )
    _INLINE[name] = inline
    FUNCTIONS.register(name, fn)


def unregister_function(name: str) -> None:
    _INLINE.pop(name, None)
    FUNCTIONS.unregister(name)


class FunctionProvider:
    """A registered callable answers; a plain (not `async def`) one answers inline."""

    name = "function"

    def capabilities(self, model: str) -> ProviderCapabilities:
        inline = FUNCTIONS.find(model) is not None and _INLINE.get(model, False)
        return ProviderCapabilities(tools=True, temperature=True, answers_inline=inline)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        fn = FUNCTIONS.get(request.model)
        try:
            reply = fn(request)
            if inspect.isawaitable(reply):
                reply = await reply
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(
                f"{type(exc).__name__}: {exc}", retryable=True, provider=self.name
            ) from None
        return _response(reply, request)


def _response(reply: Reply, request: LLMRequest) -> LLMResponse:
    if isinstance(reply, LLMResponse):
        return reply
    text = str(reply)
    return LLMResponse(
        text=text,
        model=request.model,
        provider="function",
        input_tokens=count_tokens(request.prompt),
        output_tokens=count_tokens(text),
        stop_reason="end_turn",
    )
