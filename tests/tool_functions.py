"""Scripted models for the tool tests, registered as `function:<name>` (imported by the tests and
by the child process the crash test kills)."""

from __future__ import annotations

from typing import Any

from qmcp.agentframework.llm import (
    LLMRequest,
    LLMResponse,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    register_function,
)


def results_of(request: LLMRequest) -> list[ToolResultBlock]:
    return [b for m in request.messages for b in m.blocks if isinstance(b, ToolResultBlock)]


def scripted(*turns: list[tuple[str, dict[str, Any]]]) -> Any:
    """A model that asks for the calls of `turns[i]` on its i-th turn (ids `c<i>_<j>`), then
    answers with every result it was given, one per line."""

    def answer(request: LLMRequest) -> LLMResponse:
        turn = sum(1 for m in request.messages if m.role == "assistant")
        if turn < len(turns) and request.tool_choice != "none":
            calls = [
                ToolUseBlock(id=f"c{turn}_{j}", name=name, input=args)
                for j, (name, args) in enumerate(turns[turn])
            ]
            return LLMResponse(
                content=[TextBlock(text=f"turn {turn}"), *calls],
                model="scripted",
                provider="function",
                input_tokens=10,
                output_tokens=5,
            )
        lines = [("ERROR " if r.is_error else "") + r.content for r in results_of(request)]
        return LLMResponse(
            text="final:\n" + "\n".join(lines),
            model="scripted",
            provider="function",
            input_tokens=10,
            output_tokens=5,
        )

    return answer


def register_crash_model() -> None:
    """One turn that appends a line and passes the gate (which blocks while its file exists)."""
    register_function(
        "toolcrash", scripted([("append_line", {"text": "once"}), ("gate", {"label": "g"})])
    )
