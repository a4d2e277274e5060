"""Scripted function-model agents for topology tests: answers by script, records who saw what."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from qmcp.agentframework.llm import LLMRequest, register_function
from qmcp.agentframework.models import AgentConfig, AgentType, CapabilityConfig, ModelConfig

Answer = str | Callable[[str], str]


@dataclass
class Team:
    """Function-model agents that answer by script and record what each was asked."""

    delay: float = 0.0
    calls: list[tuple[str, str]] = field(default_factory=list)
    inflight: int = 0
    peak: int = 0
    registered: list[str] = field(default_factory=list)

    def agent(
        self,
        name: str,
        answer: Answer,
        role: str = "specialist",
        description: str = "",
        capabilities: tuple[str, ...] = (),
    ) -> AgentType:
        fn_name = f"team-{uuid.uuid4().hex[:8]}-{name}"

        async def fn(request: LLMRequest) -> str:
            self.calls.append((name, request.prompt))
            self.inflight += 1
            self.peak = max(self.peak, self.inflight)
            try:
                await asyncio.sleep(self.delay)
                return answer(request.prompt) if callable(answer) else answer
            finally:
                self.inflight -= 1

        register_function(fn_name, fn)
        self.registered.append(fn_name)
        config = AgentConfig(
            model_config_obj=ModelConfig(provider="function", model=fn_name),
            capabilities=[CapabilityConfig(name=c) for c in capabilities],
        )
        return AgentType(name=name, role=role, description=description, config=config.model_dump())

    def prompts(self, name: str) -> list[str]:
        return [prompt for who, prompt in self.calls if who == name]

    def who(self) -> list[str]:
        return [who for who, _ in self.calls]
