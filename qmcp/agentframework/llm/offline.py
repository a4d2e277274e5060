"""The `offline` provider: deterministic answers with no network, always marked as offline.

It is the embedded default so that everything runs without a key. It is role-aware only as
far as the topologies need: reviewers and critics answer approval JSON, planners a numbered
plan, synthesizers a synthesis of what they were given, everyone a `confidence:` line.

Given tools, it calls one read-only tool first (the one whose name or description shares the
most words with the task, with arguments built from its input schema's required fields), then
answers quoting what the tool returned, so demos and tests show a tool-using agent with no key.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from qmcp.agentframework.llm.base import (
    LLMRequest,
    LLMResponse,
    ProviderCapabilities,
    TextBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    count_tokens,
)

MARK = "[offline model]"


def _digest(request: LLMRequest) -> int:
    seed = f"{request.agent_name}|{request.role}|{request.system or ''}|{request.prompt}"
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")


def _excerpt(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# Format requests a topology writes into its prompt; the offline model answers them in kind, as
# a real model would. They must match chain_of_command.PLAN_FORMAT and delegation.ROUTE_FORMAT
# (llm/ does not import topologies/; tests/test_offline.py holds them together).
SUBTASKS_MARKER = 'JSON of the form {"subtasks": ['
ROUTE_MARKER = 'JSON of the form {"route": ['
VERDICT_MARKER = 'JSON of the form {"approved":'
JUDGMENT_MARKER = 'JSON of the form {"converged":'
_AT_MOST_SUBTASKS = re.compile(r"at most (\d+) subtasks|between 1 and (\d+) subtasks")
_SPECIALIST_LINE = re.compile(r"^- ([^:\s]+): agent ", re.M)
_AT_MOST_SPECIALISTS = re.compile(r"at least 1 and at most (\d+)")


def _section(prompt: str, heading: str) -> str:
    """The paragraph after a 'Heading:' line (the task a topology quoted)."""
    _, found, rest = prompt.partition(f"\n{heading}:\n")
    return rest.split("\n\n", 1)[0] if found else prompt


def _structured_answer(request: LLMRequest, digest: int) -> str | None:
    prompt = request.prompt
    if SUBTASKS_MARKER in prompt:
        match = _AT_MOST_SUBTASKS.search(prompt)
        limit = int(next(g for g in match.groups() if g)) if match else 3
        count = max(1, min(limit, 2 + digest % 2))  # 2 or 3 subtasks, never above the limit
        task = _excerpt(_section(prompt, "Task"), 80)
        subtasks = [
            {
                "title": f"Part {i} of {count}",
                "description": f"{MARK} part {i} of {count} of: {task}",
            }
            for i in range(1, count + 1)
        ]
        return json.dumps({"subtasks": subtasks})
    confidence = round(0.55 + (digest % 41) / 100, 2)
    if VERDICT_MARKER in prompt:
        return json.dumps({"approved": True, "confidence": confidence, "issues": []})
    if JUDGMENT_MARKER in prompt:
        return json.dumps(
            {
                "converged": confidence >= 0.8,
                "agreement": confidence,
                "verdict": f"{MARK} {request.agent_name or 'mediator'} finds the sides at "
                f"{confidence:.0%} agreement on: {_excerpt(prompt, 60)}",
                "winner": None,
            }
        )
    if ROUTE_MARKER in prompt:
        slots = _SPECIALIST_LINE.findall(prompt)
        if not slots:
            return None
        match = _AT_MOST_SPECIALISTS.search(prompt)
        limit = int(match.group(1)) if match else 1
        start = digest % len(slots)
        route = [slots[(start + i) % len(slots)] for i in range(min(limit, len(slots)))]
        return json.dumps({"route": route, "reason": f"{MARK} deterministic offline routing"})
    return None


def offline_answer(request: LLMRequest) -> str:
    digest = _digest(request)
    structured = _structured_answer(request, digest)
    if structured is not None:
        return structured
    confidence = 0.55 + (digest % 41) / 100  # 0.55 .. 0.95, stable for the same request
    who = request.agent_name or request.role or "agent"
    topic = _excerpt(request.prompt)
    role = request.role
    if role in ("reviewer", "critic"):
        return json.dumps(
            {
                "approved": True,
                "confidence": round(confidence, 2),
                "issues": [],
                "comment": f"{MARK} {who} reviewed: {_excerpt(request.prompt, 80)}",
            }
        )
    if role == "planner":
        body = (
            f"{MARK} Plan by {who} for: {topic}\n"
            "1. Clarify the goal and constraints.\n"
            "2. Gather the facts that matter.\n"
            "3. Produce and check the result."
        )
    elif role == "synthesizer":
        body = f"{MARK} Synthesis by {who} of: {topic}"
    else:
        body = f"{MARK} {role or 'agent'} {who} on: {topic}"
    return f"{body}\nconfidence: {confidence:.2f}"


_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2}


def _task_text(request: LLMRequest) -> str:
    """The first user message's text: the task, before any tool traffic."""
    for message in request.messages:
        if message.role == "user" and message.text:
            return message.text
    return ""


def _argument(schema: dict[str, Any], task: str) -> Any:
    """A value of the JSON Schema `schema` built from the task, deterministically."""
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        return max(1, int(low)) if kind == "integer" else float(max(1, low))
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    if kind == "object":
        return _arguments(schema, task)
    return _excerpt(task, min(int(schema.get("maxLength", 120)), 120))


def _arguments(schema: dict[str, Any], task: str) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    return {
        name: _argument(properties.get(name) or {}, task) for name in schema.get("required", [])
    }


def _chosen_tool(tools: list[ToolSpec], task: str) -> ToolSpec | None:
    """The read-only tool that shares the most words with the task (the first on a tie)."""
    readable = [t for t in tools if t.read_only]
    if not readable:
        return None
    words = _words(task)
    return max(readable, key=lambda t: len(words & _words(f"{t.name} {t.description}")))


def _tool_results(request: LLMRequest) -> list[ToolResultBlock]:
    return [
        b
        for m in request.messages
        if m.role == "user"
        for b in m.blocks
        if isinstance(b, ToolResultBlock)
    ]


class OfflineProvider:
    """Answers at once, without I/O: declared `answers_inline`, so no timeout is armed."""

    name = "offline"
    CAPABILITIES = ProviderCapabilities(tools=True, answers_inline=True)

    def capabilities(self, model: str) -> ProviderCapabilities:
        return self.CAPABILITIES

    async def complete(self, request: LLMRequest) -> LLMResponse:
        prompt_size = sum(len(m.text) for m in request.messages) + len(request.system or "")
        input_tokens = max(1, prompt_size // 4)
        results = _tool_results(request)
        if request.tools and request.tool_choice != "none" and not results:
            task = _task_text(request)
            tool = _chosen_tool(request.tools, task)
            if tool is not None:
                digest = _digest(request)
                call = ToolUseBlock(
                    id=f"offline_{digest % 10**12:012d}",
                    name=tool.name,
                    input=_arguments(tool.input_schema, task),
                )
                note = TextBlock(text=f"{MARK} calling {tool.name} first.")
                return LLMResponse(
                    content=[note, call],
                    provider=self.name,
                    model="offline",
                    input_tokens=input_tokens,
                    output_tokens=count_tokens(note.text) + 8,
                    stop_reason="tool_use",
                )
        # After tool calls, the task is the first message (the last ones carry results).
        asked = (
            request.model_copy(update={"messages": request.messages[:1]}) if results else request
        )
        text = offline_answer(asked)
        if results:
            quoted = "\n".join(
                f"- {'error' if r.is_error else 'result'}: {_excerpt(r.content, 300)}"
                for r in results
            )
            text = f"{text}\nWhat the tools said:\n{quoted}"
        return LLMResponse(
            text=text,
            model="offline",
            provider=self.name,
            input_tokens=input_tokens,
            output_tokens=count_tokens(text),
            stop_reason="end_turn",
        )
