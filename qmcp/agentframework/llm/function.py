"""The `function` provider: a registered Python callable answers (tests, benchmarks, glue).

`register_function("echo", fn)` then `ModelConfig(provider="function", model="echo")`. The callable
takes the `LLMRequest` and returns a string or an `LLMResponse`, directly or as an awaitable.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Union

from qmcp.agentframework.errors import ConfigurationError, known
from qmcp.agentframework.llm.base import LLMRequest, LLMResponse, count_tokens

Reply = Union[str, LLMResponse]  # noqa: UP007 - runtime alias
AgentFunction = Callable[[LLMRequest], Reply | Awaitable[Reply]]

_FUNCTIONS: dict[str, AgentFunction] = {}


def register_function(name: str, fn: AgentFunction) -> None:
    _FUNCTIONS[name] = fn


def unregister_function(name: str) -> None:
    _FUNCTIONS.pop(name, None)


class FunctionProvider:
    name = "function"
    self_retrying = False

    def begin(self, request: LLMRequest) -> LLMResponse | Awaitable[LLMResponse]:
        """Call the function: a sync one answers here, an async one returns what to await."""
        fn = _FUNCTIONS.get(request.model)
        if fn is None:
            raise ConfigurationError(
                f"no function registered as {request.model!r}; register it with "
                f"qmcp.agentframework.llm.register_function (registered: "
                f"{known(sorted(_FUNCTIONS)) or 'none'})",
                provider=self.name,
            )
        reply = fn(request)
        if inspect.isawaitable(reply):
            return self._later(reply, request)
        return _response(reply, request)

    async def _later(self, reply: Awaitable[Reply], request: LLMRequest) -> LLMResponse:
        return _response(await reply, request)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = self.begin(request)
        return started if isinstance(started, LLMResponse) else await started


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
