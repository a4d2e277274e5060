"""One async protocol for every model provider, and the registry that finds them.

A provider takes a conversation (a system text and messages whose content is a list of blocks:
text, tool use, tool result) and returns the next turn. What it can do is declared by
`capabilities(model)`; cross-cutting behaviour (retry, timeout, concurrency, recording) is
composed around it as wrapper providers (`llm/wrappers.py`), never discovered through extra
attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qmcp.agentframework.errors import ValidationError
from qmcp.agentframework.registry import Registry


class TextBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(BaseModel):
    """The model asks for a tool call; `id` pairs it with its result."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(BaseModel):
    """What a tool answered (untrusted data), sent back to the model in a user message."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: str
    is_error: bool = False


Block = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


def text_of(blocks: list[Any]) -> str:
    return "".join(b.text for b in blocks if isinstance(b, TextBlock))


class Message(BaseModel):
    """One message of a conversation; plain text is the one-text-block case."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str | list[Block]

    @property
    def blocks(self) -> list[Block]:
        if isinstance(self.content, str):
            return [TextBlock(text=self.content)]
        return list(self.content)

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else text_of(self.content)


class ToolSpec(BaseModel):
    """A tool offered to the model: its name, what it does, and its JSON Schema input."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    read_only: bool = Field(
        default=False, description="the tool says it changes nothing (MCP readOnlyHint)"
    )


class LLMRequest(BaseModel):
    """What an agent asks of its model. The system prompt is top-level, never a message."""

    model_config = ConfigDict(extra="forbid")

    model: str
    system: str | None = None
    messages: list[Message]
    tools: list[ToolSpec] = Field(default_factory=list)
    tool_choice: Literal["auto", "none"] = Field(
        default="auto", description="'none': answer without calling tools (the limit is reached)"
    )
    max_tokens: int = 4096
    temperature: float | None = None
    timeout_seconds: float = Field(
        default=120.0, description="how long one call may take (providers pass it to their SDK)"
    )
    # The endpoint, for providers that take one (openai): a base URL and the NAME of the
    # variable that holds its key; None: the provider's defaults.
    base_url: str | None = None
    api_key_env: str | None = None
    # Who is asking; providers such as `offline` and `function` may use it.
    agent_name: str = ""
    role: str = ""
    slot: str = ""
    # The invocation's key (`round-2/opponent`): a provider that asks outside the run (MCP
    # sampling on the stateless protocol) names its questions by it.
    key: str = ""

    @property
    def prompt(self) -> str:
        """The text of the last user message."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.text
        return ""


class LLMResponse(BaseModel):
    """The next turn of a conversation: content blocks, usage, model and stop reason.

    `text` is the text of the blocks; a provider may give either (`text` alone is one block).
    """

    model_config = ConfigDict(extra="forbid")

    text: str = ""
    content: list[Block] = Field(default_factory=list)
    model: str
    provider: str
    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str | None = None
    # Prompt caching: the parts of `input_tokens` (which counts every input token) that were
    # read from the provider's cache and written to it; they are priced at the cache rates.
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @model_validator(mode="after")
    def _blocks_and_text(self) -> LLMResponse:
        if not self.content and self.text:
            self.content = [TextBlock(text=self.text)]
        elif self.content and not self.text:
            self.text = text_of(self.content)
        return self

    @property
    def tool_calls(self) -> list[ToolUseBlock]:
        return [b for b in self.content if isinstance(b, ToolUseBlock)]

    def message(self) -> Message:
        """This turn as the assistant message of the conversation."""
        return Message(role="assistant", content=list(self.content) or self.text)


@dataclass(frozen=True)
class ProviderCapabilities:
    """What a provider can do for one model.

    `tools`: it takes `LLMRequest.tools` and may answer tool use. `temperature`: it sends
    `LLMRequest.temperature`. `answers_inline`: it answers without waiting on I/O (offline, a
    plain function), so there is nothing a timeout or a concurrency slot could bound.
    `pauses`: it may stop the run to wait for answers from outside it (MCP sampling on the
    stateless protocol raises `llm.awaiting.AwaitingSamples`).
    """

    tools: bool = False
    temperature: bool = False
    answers_inline: bool = False
    pauses: bool = False


@runtime_checkable
class Provider(Protocol):
    """A model provider: the next turn of a conversation.

    `complete` raises `ProviderError` (transient or permanent, see `errors.py`) when the model
    cannot answer; it does not retry, time out or limit itself: wrappers do that.
    """

    @property
    def name(self) -> str: ...

    def capabilities(self, model: str) -> ProviderCapabilities: ...

    async def complete(self, request: LLMRequest) -> LLMResponse: ...


ProviderFactory = Callable[[], Provider]


class _Providers(Registry[ProviderFactory]):
    """Provider factories by name; `provider(name)` makes the instance on first use."""

    def __init__(self) -> None:
        super().__init__("model provider", hint="`qmcp info`")
        self._instances: dict[str, Provider] = {}

    def register(self, name: str, item: ProviderFactory) -> ProviderFactory:
        self._instances.pop(name, None)
        return super().register(name, item)

    def get(self, name: str) -> ProviderFactory:
        if name == "sampling" and name not in self._items:
            raise ValidationError(
                "the sampling model is answered by the MCP client that runs the topology, so it "
                "exists only inside the MCP server (qmcp-server); run this topology from an MCP "
                "client, or give the agent another model"
            )
        return super().get(name)

    def unregister(self, name: str) -> None:
        self._instances.pop(name, None)
        super().unregister(name)

    def provider(self, name: str) -> Provider:
        instance = self._instances.get(name)
        if instance is None:
            instance = self._instances[name] = self.get(name)()
        return instance

    def reset(self) -> None:
        """Drop cached instances (a changed environment such as a new base URL) and what was
        registered after the plugins loaded."""
        self._instances.clear()
        super().reset()


ProviderRegistry = _Providers()


def count_tokens(text: str) -> int:
    """A rough token count for providers that do not report usage (about 4 characters each)."""
    return max(1, (len(text) + 3) // 4) if text else 0
