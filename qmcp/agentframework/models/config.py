"""Model and agent configuration: what an agent is, which model answers it."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qmcp.agentframework.errors import ValidationError, known

# Which of this machine's variables an agent config may send somewhere (a model endpoint's key,
# a tool server's header or environment): names ending in these, or listed in QMCP_KEY_VARIABLES
# (comma-separated). Anything else (AWS_SECRET_ACCESS_KEY, DATABASE_URL, ...) stays here, so an
# agent created by a client cannot carry another secret of this machine to a URL it chose.
SENDABLE_SUFFIXES = ("_API_KEY", "_TOKEN")
_NEVER_SENT_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCP_", "QMCP_", "METAFLOW_")
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def sendable_variable(name: str) -> bool:
    """Whether an agent config may name the environment variable `name` as a secret to send."""
    listed = {v.strip() for v in os.environ.get("QMCP_KEY_VARIABLES", "").split(",") if v.strip()}
    if name in listed:
        return True
    upper = name.upper()
    return upper.endswith(SENDABLE_SUFFIXES) and not upper.startswith(_NEVER_SENT_PREFIXES)


def unsendable_message(name: str, where: str = "") -> str:
    return (
        f"{where + ': ' if where else ''}the variable {name} may not be sent anywhere by an "
        "agent config: only variables whose names end in _API_KEY or _TOKEN (cloud credentials "
        "and qmcp's own excepted) or that QMCP_KEY_VARIABLES lists (comma-separated, set where "
        "qmcp runs) may"
    )


# Built in: anthropic, openai, offline, function, and sampling (in the server); plugins add more.
BUILTIN_PROVIDERS = ("anthropic", "openai", "offline", "function", "sampling")


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
    base_url: str | None = Field(
        default=None,
        max_length=2000,
        pattern=r"^https?://\S+$",
        description="an OpenAI-compatible endpoint (openai provider), e.g. "
        "http://127.0.0.1:11434/v1 for Ollama; default: OPENAI_BASE_URL, else OpenAI's",
    )
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,99}$",
        description="the NAME of the environment variable that holds this endpoint's key "
        "(never the key itself); default: the provider's own (OPENAI_API_KEY, ANTHROPIC_API_KEY)",
    )

    @field_validator("api_key_env")
    @classmethod
    def _sendable(cls, value: str | None) -> str | None:
        if value is not None and not sendable_variable(value):
            raise ValueError(unsendable_message(value))
        return value

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

        Accepts a registry name (`CLAUDE_SONNET_4`), `offline`, `sampling`, `function:<name>`,
        `openai:<model>` (any OpenAI-compatible endpoint) or any Claude model id (`claude-…`).
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
        if lowered.startswith("openai:") and len(text) > len("openai:"):
            return ModelConfig(provider="openai", model=text.split(":", 1)[1])
        if lowered.startswith("anthropic:") and len(text) > len("anthropic:"):
            return ModelConfig(provider="anthropic", model=text.split(":", 1)[1])
        if lowered.startswith("claude-"):
            return ModelConfig(provider="anthropic", model=text)
        raise ValidationError(
            f"unknown model {spec!r}; use a Claude model id (claude-…), 'openai:<model>', "
            f"'offline', 'sampling', 'function:<name>' or one of: {known(sorted(cls.all()))}"
        )

    @classmethod
    def default(cls) -> ModelConfig:
        """The model for agents created without one: `QMCP_DEFAULT_MODEL`, else offline."""
        spec = os.environ.get("QMCP_DEFAULT_MODEL")
        return cls.parse(spec) if spec else cls.OFFLINE


_TOOL_NAME = r"^[A-Za-z0-9_.-]{1,128}$"


class ToolServer(BaseModel):
    """An MCP server whose tools an agent may call: a stdio command or a streamable HTTP URL.

    `env` and `headers` values may reference the environment (`"${GITHUB_TOKEN}"`); they are
    expanded when the server starts, and the expanded value is never stored, logged or recorded.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9_-]{1,64}$", description="how this agent's records name the server"
    )
    command: str | None = Field(
        default=None, min_length=1, max_length=1000, description="stdio: the program to start"
    )
    args: list[str] = Field(default_factory=list, max_length=100)
    env: dict[str, str] = Field(
        default_factory=dict, description='stdio: extra variables; "${VAR}" reads the environment'
    )
    cwd: str | None = Field(default=None, max_length=1000)
    url: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        max_length=2000,
        description="streamable HTTP: the server's MCP endpoint",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description='HTTP: extra headers; "${VAR}" reads the environment'
    )
    allow: list[Annotated[str, Field(pattern=_TOOL_NAME)]] | None = Field(
        default=None, description="only these tools (default: all the server lists)"
    )
    deny: list[Annotated[str, Field(pattern=_TOOL_NAME)]] = Field(
        default_factory=list, description="never these tools (checked before any call)"
    )
    approve: list[Annotated[str, Field(pattern=_TOOL_NAME)]] = Field(
        default_factory=list,
        description="tools a human approves before each call (destructive tools always do)",
    )

    @model_validator(mode="after")
    def _one_transport(self) -> ToolServer:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                f"tool server {self.name!r} needs either a command (stdio) or a url (streamable "
                "HTTP), not both and not neither"
            )
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError(
                f"tool server {self.name!r}: args, env and cwd are for stdio servers (a command)"
            )
        if self.command is not None and self.headers:
            raise ValueError(f"tool server {self.name!r}: headers are for HTTP servers (a url)")
        for kind, values in (("env", self.env), ("header", self.headers)):
            for key, text in values.items():
                for name in ENV_REFERENCE.findall(text):
                    if not sendable_variable(name):
                        where = f"tool server {self.name!r}: {kind} {key}"
                        raise ValueError(unsendable_message(name, where))
        both = sorted(set(self.allow or []) & set(self.deny))
        if both:
            raise ValueError(
                f"tool server {self.name!r}: {', '.join(both)} is both allowed and denied"
            )
        return self

    def permits(self, tool: str) -> bool:
        """Whether the allow and deny lists let the agent see and call `tool`."""
        return tool not in self.deny and (self.allow is None or tool in self.allow)

    @property
    def where(self) -> str:
        """The server as a message names it: its command line or its URL (never a secret)."""
        if self.url is not None:
            return self.url
        return " ".join([self.command or "", *self.args]).strip()


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
        description="sent to providers that take it (openai, MCP sampling); the Anthropic API "
        "rejects it",
    )
    max_tokens: int = Field(default=4096, ge=1, le=128_000)
    timeout_seconds: float = Field(default=120.0, gt=0, le=3600)
    max_tool_calls: int = Field(
        default=10, ge=0, le=500, description="tool calls one invocation may make at most"
    )
    tools: list[ToolServer] = Field(
        default_factory=list, max_length=20, description="MCP servers whose tools the agent uses"
    )
    fallback_models: list[ModelConfig] = Field(
        default_factory=list,
        max_length=5,
        description="models that answer, in order, when the primary fails for good",
    )
    capabilities: list[CapabilityConfig] = Field(default_factory=list)

    @field_validator("tools")
    @classmethod
    def _unique_servers(cls, value: list[ToolServer]) -> list[ToolServer]:
        names = [s.name for s in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"tool server named twice: {', '.join(duplicates)}")
        return value

    @field_validator("capabilities")
    @classmethod
    def _unique_capabilities(cls, value: list[CapabilityConfig]) -> list[CapabilityConfig]:
        names = [c.name for c in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"capability listed twice: {', '.join(duplicates)}")
        return value
