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

    async def complete(self, request: LLMRequest) -> LLMResponse:
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
            reply = await reply
        if isinstance(reply, LLMResponse):
            return reply
        text = str(reply)
        return LLMResponse(
            text=text,
            model=request.model,
            provider=self.name,
            input_tokens=count_tokens(request.prompt),
            output_tokens=count_tokens(text),
            stop_reason="end_turn",
        )
