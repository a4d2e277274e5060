"""Model and agent configuration: what an agent is, which model answers it."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qmcp.agentframework.errors import ValidationError, known

# Built in: anthropic, offline, function, and sampling (in the server); plugins add more.
BUILTIN_PROVIDERS = ("anthropic", "offline", "function", "sampling")


class ModelConfig(BaseModel):
    """Which provider answers, with which model id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = Field(
        pattern=r"^[a-z][a-z0-9_.-]{0,49}$",
        description="a registered model provider: "
        + ", ".join(BUILTIN_PROVIDERS)
        + " or a plugin's",
    )
    model: str = Field(min_length=1, max_length=200)

    @property
    def label(self) -> str:
        return self.model if self.provider == "anthropic" else f"{self.provider}:{self.model}"


class Models:
    """Registry of pre-configured model configs (ids as the installed anthropic SDK lists them)."""

    CLAUDE_SONNET_4: ClassVar[ModelConfig] = ModelConfig(
        provider="anthropic", model="claude-sonnet-4-20250514"
    )
    CLAUDE_SONNET_4_5: ClassVar[ModelConfig] = ModelConfig(
        provider="anthropic", model="claude-sonnet-4-5"
    )
    CLAUDE_HAIKU_4_5: ClassVar[ModelConfig] = ModelConfig(
        provider="anthropic", model="claude-haiku-4-5"
    )
    CLAUDE_OPUS_4_5: ClassVar[ModelConfig] = ModelConfig(
        provider="anthropic", model="claude-opus-4-5"
    )
    CLAUDE_OPUS_5_5: ClassVar[ModelConfig] = ModelConfig(
        provider="anthropic", model="claude-opus-5-5"
    )
    CLAUDE_SONNET_5_5: ClassVar[ModelConfig] = ModelConfig(
        provider="anthropic", model="claude-sonnet-5-5"
    )
    CLAUDE_HAIKU_5_5: ClassVar[ModelConfig] = ModelConfig(
        provider="anthropic", model="claude-haiku-5-5"
    )
    # The newest of each family, for users who want "the current one".
    CLAUDE_OPUS: ClassVar[ModelConfig] = CLAUDE_OPUS_5_5
    CLAUDE_SONNET: ClassVar[ModelConfig] = CLAUDE_SONNET_5_5
    CLAUDE_HAIKU: ClassVar[ModelConfig] = CLAUDE_HAIKU_5_5
    OFFLINE: ClassVar[ModelConfig] = ModelConfig(provider="offline", model="offline")
    SAMPLING: ClassVar[ModelConfig] = ModelConfig(provider="sampling", model="client")

    @classmethod
    def all(cls) -> dict[str, ModelConfig]:
        return {
            name: value
            for name, value in vars(cls).items()
            if name.isupper() and isinstance(value, ModelConfig)
        }

    @classmethod
    def parse(cls, spec: str) -> ModelConfig:
        """Resolve a user's model spec.

        Accepts a registry name (`CLAUDE_SONNET_4`), `offline`, `sampling`, `function:<name>`
        or any Claude model id (`claude-…`).
        """
        text = spec.strip()
        named = cls.all().get(text.upper())
        if named is not None:
            return named
        lowered = text.lower()
        if lowered == "offline":
            return cls.OFFLINE
        if lowered in ("sampling", "sampling:client"):
            return cls.SAMPLING
        if lowered.startswith("function:") and len(text) > len("function:"):
            return ModelConfig(provider="function", model=text.split(":", 1)[1])
        if lowered.startswith("claude-"):
            return ModelConfig(provider="anthropic", model=text)
        raise ValidationError(
            f"unknown model {spec!r}; use a Claude model id (claude-…), 'offline', 'sampling', "
            f"'function:<name>' or one of: {known(sorted(cls.all()))}"
        )

    @classmethod
    def default(cls) -> ModelConfig:
        """The model for agents created without one: `QMCP_DEFAULT_MODEL`, else offline."""
        spec = os.environ.get("QMCP_DEFAULT_MODEL")
        return cls.parse(spec) if spec else cls.OFFLINE


class CapabilityConfig(BaseModel):
    """A mixin attached to an agent: its name, its config and whether it is on."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    config: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True


class AgentConfig(BaseModel):
    """How an agent is called. Stored as JSON in `AgentType.config`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_config_obj: ModelConfig = Field(default_factory=Models.default)
    system_prompt: str | None = Field(default=None, max_length=100_000)
    temperature: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="for providers that take it (MCP sampling); the Anthropic API rejects it",
    )
    max_tokens: int = Field(default=4096, ge=1, le=128_000)
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    max_tool_calls: int = Field(
        default=10, ge=0, le=500, description="tool calls one invocation may make at most"
    )
    capabilities: list[CapabilityConfig] = Field(default_factory=list)

    @field_validator("capabilities")
    @classmethod
    def _unique_capabilities(cls, value: list[CapabilityConfig]) -> list[CapabilityConfig]:
        names = [c.name for c in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"capability listed twice: {', '.join(duplicates)}")
        return value
