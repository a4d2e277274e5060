"""One invocation as a conversation: model turns and the tool calls between them.

The model is asked; when it answers with tool-use blocks, the calls of that turn run concurrently
through the agent's `Toolbox`, their results go back as one user message, and the model is asked
again, until it answers without tool calls. Each turn is reported to `on_turn` as it completes, so
the caller can record it; given the turns recorded before a crash, the conversation continues from
the last of them instead of asking the model (or a tool) again. A single-turn invocation is the
case where the first answer has no tool calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from qmcp.agentframework.errors import ConfigurationError
from qmcp.agentframework.llm import (
    LLMRequest,
    LLMResponse,
    Message,
    Provider,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
)


class Toolbox(Protocol):
    """The tools one agent may call in one invocation (its MCP servers, filtered)."""

    async def specs(self) -> list[ToolSpec]: ...

    async def run(self, calls: Sequence[ToolUseBlock]) -> list[ToolResultBlock]:
        """Run one turn's calls, results in order; a tool's own failure is an `is_error`
        result, not an exception."""
        ...


TurnHook = Callable[[int, Message, LLMResponse | None], Awaitable[None]]


@dataclass
class Conversation:
    """The state of one invocation's conversation."""

    response: LLMResponse | None = None
    turns: list[Message] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    tool_calls: int = 0
    limited: bool = False  # the tool-call limit was reached and the model answered without tools


def _tool_uses(message: Message) -> list[ToolUseBlock]:
    return [b for b in message.blocks if isinstance(b, ToolUseBlock)]


async def converse(
    provider: Provider,
    request: LLMRequest,
    *,
    toolbox: Toolbox | None = None,
    max_tool_calls: int = 10,
    recorded: list[Message] | None = None,
    recorded_usage: tuple[int, int] = (0, 0),
    on_turn: TurnHook | None = None,
) -> Conversation:
    """Ask until the model answers without tool calls; `recorded` turns are not asked again."""
    state = Conversation(
        turns=list(recorded or []),
        input_tokens=recorded_usage[0],
        output_tokens=recorded_usage[1],
    )
    state.tool_calls = sum(len(_tool_uses(m)) for m in state.turns if m.role == "assistant")
    specs = await toolbox.specs() if toolbox is not None else []
    if specs:
        if not provider.capabilities(request.model).tools:
            raise ConfigurationError(
                f"the model {provider.name}:{request.model} cannot call tools, and this agent "
                "has tool servers; give it a model that can (Claude, openai:…, offline) or "
                "remove its tools",
                provider=provider.name,
            )
        request = request.model_copy(update={"tools": specs})
    dangling = _tool_uses(state.turns[-1]) if state.turns else []
    if dangling and state.turns[-1].role == "assistant":
        # A crash between a tool-use turn and its results: run that turn's calls now.
        if toolbox is None:
            raise ConfigurationError(
                "the recorded conversation ends with tool calls, but this agent has no tools "
                "now; give it back its tool servers to resume it",
                provider=provider.name,
            )
        state.tool_calls -= len(dangling)
        await _answer_calls(state, toolbox, dangling, max_tool_calls, on_turn)
    state.limited = state.limited or state.tool_calls >= max_tool_calls > 0
    while True:
        asked = request
        if state.turns:
            asked = request.model_copy(update={"messages": [*request.messages, *state.turns]})
        if state.limited:
            asked = asked.model_copy(update={"tool_choice": "none"})
        response = await provider.complete(asked)
        state.input_tokens += response.input_tokens
        state.output_tokens += response.output_tokens
        calls = response.tool_calls
        if not calls or toolbox is None or state.limited:
            state.response = response
            return state
        message = response.message()
        state.turns.append(message)
        if on_turn is not None:
            await on_turn(len(state.turns) - 1, message, response)
        await _answer_calls(state, toolbox, calls, max_tool_calls, on_turn)


async def _answer_calls(
    state: Conversation,
    toolbox: Toolbox,
    calls: list[ToolUseBlock],
    max_tool_calls: int,
    on_turn: TurnHook | None,
) -> None:
    """Run one turn's calls concurrently (those within the limit) and record their results."""
    room = max(0, max_tool_calls - state.tool_calls)
    allowed, refused = calls[:room], calls[room:]
    results = await toolbox.run(allowed) if allowed else []
    state.tool_calls += len(allowed)
    for call in refused:
        results.append(
            ToolResultBlock(
                tool_use_id=call.id,
                content=f"not called: this invocation reached its limit of {max_tool_calls} "
                "tool calls; answer now with what you have",
                is_error=True,
            )
        )
    if refused or state.tool_calls >= max_tool_calls:
        state.limited = True
    message = Message(role="user", content=list(results))
    state.turns.append(message)
    if on_turn is not None:
        await on_turn(len(state.turns) - 1, message, None)
