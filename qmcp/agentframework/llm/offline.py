"""The `offline` provider: deterministic answers with no network, always marked as offline.

It is the embedded default so that everything runs without a key. It is role-aware only as
far as the topologies need: reviewers and critics answer approval JSON, planners a numbered
plan, synthesizers a synthesis of what they were given, everyone a `confidence:` line.
"""

from __future__ import annotations

import hashlib
import json

from qmcp.agentframework.llm.base import LLMRequest, LLMResponse, count_tokens

MARK = "[offline model]"


def _digest(request: LLMRequest) -> int:
    seed = f"{request.agent_name}|{request.role}|{request.system or ''}|{request.prompt}"
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big")


def _excerpt(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def offline_answer(request: LLMRequest) -> str:
    digest = _digest(request)
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


class OfflineProvider:
    name = "offline"
    self_retrying = False

    async def complete(self, request: LLMRequest) -> LLMResponse:
        text = offline_answer(request)
        prompt_size = sum(len(m.content) for m in request.messages) + len(request.system or "")
        return LLMResponse(
            text=text,
            model="offline",
            provider=self.name,
            input_tokens=max(1, prompt_size // 4),
            output_tokens=count_tokens(text),
            stop_reason="end_turn",
        )
