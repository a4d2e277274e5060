"""reasoning: the agent reasons step by step, and its reasoning is kept apart from its answer."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from qmcp.agentframework.llm import LLMRequest
from qmcp.agentframework.mixins.base import Mixin, MixinConfig, MixinContext

INSTRUCTION = (
    "Think step by step before answering. Write your reasoning after a line 'Reasoning:' and "
    "then your final answer after a line 'Answer:'. Only the answer is passed on."
)
_ANSWER = re.compile(r"^\s*answer\s*:\s*", re.I | re.M)
_REASONING = re.compile(r"^\s*reasoning\s*:\s*", re.I | re.M)


class ReasoningConfig(MixinConfig):
    keep_reasoning: bool = Field(default=True, description="record the reasoning in the output")


class Reasoning(Mixin):
    name = "reasoning"
    description = "Chain-of-thought instructions; the reasoning is kept apart from the answer."
    config_model = ReasoningConfig

    async def prepare(self, request: LLMRequest, ctx: MixinContext) -> LLMRequest:
        system = f"{request.system}\n\n{INSTRUCTION}" if request.system else INSTRUCTION
        return request.model_copy(update={"system": system})

    async def finish(self, output: dict[str, Any], ctx: MixinContext) -> None:
        text = output["content"]
        matches = list(_ANSWER.finditer(text))
        if not matches:
            return  # the model did not follow the format: everything it said is the answer
        last = matches[-1]
        reasoning = _REASONING.sub("", text[: last.start()], count=1).strip()
        output["content"] = text[last.end() :].strip()
        if self.config.keep_reasoning:  # type: ignore[attr-defined]
            output["reasoning"] = reasoning
