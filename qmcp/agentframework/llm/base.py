"""One async protocol for every model provider, and the registry that finds them."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from qmcp.agentframework.errors import ValidationError, known


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str  # "user" | "assistant"
    content: str


class LLMRequest(BaseModel):
    """What an agent asks of its model. The system prompt is top-level, never a message."""

    model_config = ConfigDict(extra="forbid")

    model: str
    system: str | None = None
    messages: list[Message]
    max_tokens: int = 4096
    temperature: float | None = None
    timeout_seconds: float = 120.0
    max_retries: int = Field(
        default=0, description="retries a self-retrying provider (anthropic) may make itself"
    )
    # Who is asking; providers such as `offline` and `function` may use it.
    agent_name: str = ""
    role: str = ""
    slot: str = ""

    @property
    def prompt(self) -> str:
        """The text of the last user message."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""


class LLMResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    model: str
    provider: str
    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str | None = None


@runtime_checkable
class Provider(Protocol):
    """A model provider. `self_retrying` providers retry transient faults inside `complete`."""

    name: str
    self_retrying: bool

    async def complete(self, request: LLMRequest) -> LLMResponse: ...


class ProviderRegistry:
    """Provider factories by name; instances are made on first use and cached."""

    _factories: ClassVar[dict[str, Callable[[], Provider]]] = {}
    _instances: ClassVar[dict[str, Provider]] = {}

    @classmethod
    def register(cls, name: str, factory: Callable[[], Provider]) -> None:
        cls._factories[name] = factory
        cls._instances.pop(name, None)

    @classmethod
    def get(cls, name: str) -> Provider:
        provider = cls._instances.get(name)
        if provider is None:
            factory = cls._factories.get(name)
            if factory is None:
                raise ValidationError(
                    f"unknown model provider {name!r}; known: {known(sorted(cls._factories))}"
                )
            provider = cls._instances[name] = factory()
        return provider

    @classmethod
    def names(cls) -> list[str]:
        return sorted(cls._factories)

    @classmethod
    def reset(cls) -> None:
        """Drop cached instances (tests; a changed environment such as a new base URL)."""
        cls._instances.clear()


def count_tokens(text: str) -> int:
    """A rough token count for providers that do not report usage (about 4 characters each)."""
    return max(1, (len(text) + 3) // 4) if text else 0
