"""The `anthropic` provider: the official SDK (`AsyncAnthropic`), one request per call.

The SDK's own retries are off: the provider chain retries transient errors under one policy, so
this provider classifies what went wrong (429/529/5xx, dropped connections and timeouts are
transient, with the server's Retry-After; authentication, bad requests and a missing key are
permanent). The key comes from `ANTHROPIC_API_KEY` (and the endpoint from `ANTHROPIC_BASE_URL`),
never from a stored agent config; it never appears in a record, a log line or an error message.

Prompt caching: a request marks with `cache_control` what later requests will send again — the
system prompt, the end of a conversation that goes on (tool use), and the shared part of a long
prompt (all but its last paragraph: a debate's transcript, which each round repeats and extends) —
once such a prefix is long enough for the API to cache it. The cache's reads and writes are part
of the recorded input tokens and are priced at the cache rates (`pricing.py`).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from qmcp.agentframework.errors import ConfigurationError, ProviderError
from qmcp.agentframework.llm.base import (
    LLMRequest,
    LLMResponse,
    Message,
    ProviderCapabilities,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from qmcp.agentframework.llm.limits import RateLimited
from qmcp.agentframework.llm.redaction import redact

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

TRANSIENT_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}
# The shortest prefix the Messages API caches (Sonnet and Opus; Haiku needs more): shorter ones
# are not marked, so their requests stay as they were. Tokens are estimated (characters / 4).
MIN_CACHE_TOKENS = 1024
MAX_BREAKPOINTS = 4  # the API's limit per request
LOOKBACK_BLOCKS = 20  # how far before a breakpoint the API looks for an earlier cached prefix
EPHEMERAL = {"type": "ephemeral"}
LOAD_STATUS = {429, 529}  # rate limited, overloaded: the endpoint's limiter slows down


class AnthropicProvider:
    name = "anthropic"
    # No sampling parameters: the Messages API version SDK 2.x speaks (2026-10-21) rejects
    # temperature, top_p and top_k with a 400, and the SDK no longer accepts them.
    CAPABILITIES = ProviderCapabilities(tools=True, temperature=False)

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str | None, int], AsyncAnthropic] = {}

    def capabilities(self, model: str) -> ProviderCapabilities:
        return self.CAPABILITIES

    def _client(self) -> AsyncAnthropic:
        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise ConfigurationError(
                "ANTHROPIC_API_KEY is not set, so Claude models cannot be called; set "
                "ANTHROPIC_API_KEY, or give the agent the offline model (--model offline, "
                "Models.OFFLINE) to run without a key",
                provider=self.name,
            )
        base_url = os.environ.get("ANTHROPIC_BASE_URL") or None
        # Connections belong to an event loop: one client per loop (the server has one).
        loop = id(asyncio.get_running_loop())
        client = self._clients.get((key, base_url, loop))
        if client is None:
            from anthropic import AsyncAnthropic, DefaultAsyncHttpxClient  # only when Claude runs

            # Our own HTTP client: the SDK's default one schedules its close on whatever loop
            # runs when it is garbage-collected, which fails once its own loop has closed.
            client = AsyncAnthropic(
                api_key=key,
                base_url=base_url,
                max_retries=0,
                http_client=DefaultAsyncHttpxClient(),
            )
            self._clients = {k: v for k, v in self._clients.items() if k[2] == loop}
            self._clients[(key, base_url, loop)] = client
        return client

    async def complete(self, request: LLMRequest) -> LLMResponse:
        client = self._client()
        # The timeout as a request option: `with_options` would copy the client for every call.
        kwargs: dict[str, Any] = {
            "timeout": request.timeout_seconds,
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [_message(m) for m in request.messages],
        }
        if request.system:
            kwargs["system"] = request.system
        if request.tools:
            kwargs["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                for t in request.tools
            ]
            if request.tool_choice == "none":
                kwargs["tool_choice"] = {"type": "none"}
        mark_cache_breakpoints(kwargs)
        import anthropic

        try:
            message = await client.messages.create(**kwargs)
        except anthropic.APIStatusError as exc:
            if exc.status_code in LOAD_STATUS:
                raise RateLimited(
                    _status_reason(exc),
                    retry_after=_retry_after(exc),
                    provider=self.name,
                    status=exc.status_code,
                ) from None
            raise ProviderError(
                _status_reason(exc),
                retryable=exc.status_code in TRANSIENT_STATUS,
                retry_after=_retry_after(exc),
                provider=self.name,
            ) from None
        except anthropic.APITimeoutError:
            raise ProviderError(
                f"the Anthropic API did not answer within {request.timeout_seconds:g} s",
                retryable=True,
                provider=self.name,
            ) from None
        except anthropic.APIConnectionError as exc:
            raise ProviderError(
                f"could not reach the Anthropic API ({type(exc.__cause__ or exc).__name__})",
                retryable=True,
                provider=self.name,
            ) from None
        blocks: list[Any] = []
        for block in message.content:
            if block.type == "text":
                blocks.append(TextBlock(text=block.text))
            elif block.type == "tool_use":
                blocks.append(ToolUseBlock(id=block.id, name=block.name, input=dict(block.input)))
        usage = message.usage
        # The API counts cache reads and writes apart from `input_tokens`; ours counts them all.
        read = getattr(usage, "cache_read_input_tokens", None) or 0
        written = getattr(usage, "cache_creation_input_tokens", None) or 0
        return LLMResponse(
            content=blocks,
            model=message.model,
            provider=self.name,
            input_tokens=usage.input_tokens + read + written,
            output_tokens=usage.output_tokens,
            stop_reason=message.stop_reason,
            cache_read_tokens=read,
            cache_write_tokens=written,
        )


def _message(message: Message) -> dict[str, Any]:
    """A conversation message in the Messages API's form (plain text stays a string)."""
    if isinstance(message.content, str):
        return {"role": message.role, "content": message.content}
    content: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            content.append({"type": "text", "text": block.text})
        elif isinstance(block, ToolUseBlock):
            content.append(
                {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
            )
        elif isinstance(block, ToolResultBlock):
            content.append(
                {
                    "type": "tool_result",
                    "tool_use_id": block.tool_use_id,
                    "content": block.content,
                    "is_error": block.is_error,
                }
            )
    return {"role": message.role, "content": content}


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _block_tokens(block: dict[str, Any]) -> int:
    text = block.get("text")
    return _tokens(text if isinstance(text, str) else str(block.get("content") or block))


def _paragraphs(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A message's content as blocks, a text as one block per paragraph (each keeps its blank
    line, so together they read as the text did): block ends are where a cached prefix can end."""
    if not isinstance(content, str):
        return content
    parts = content.split("\n\n")
    last = len(parts) - 1
    return [
        {"type": "text", "text": part + ("\n\n" if i < last else "")}
        for i, part in enumerate(parts)
        if part or i == last
    ]


def mark_cache_breakpoints(kwargs: dict[str, Any]) -> None:
    """Mark (`cache_control`) in a Messages API request what later requests send again, where
    that prefix is long enough to be cached (`MIN_CACHE_TOKENS`):
    - the system prompt: every call of the agent starts with it;
    - in a conversation with earlier turns (tool use), its last block: the next turn extends it;
    - in a first prompt, the block before its last paragraph: the shared part (a debate's
      transcript, which the next round repeats and extends) comes first, the call's own
      instruction last; with marks every `LOOKBACK_BLOCKS` blocks before it, so that the next,
      longer prompt still finds what this one cached.
    Texts go as one block per paragraph when anything is marked; a request with nothing worth
    caching is left as it was."""
    messages = kwargs["messages"]
    if not messages:
        return
    system = kwargs.get("system")
    system_blocks = [{"type": "text", "text": system}] if system else []
    contents = [_paragraphs(m["content"]) for m in messages]
    sequence = [*system_blocks, *(block for content in contents for block in content)]
    # A conversation that goes on: all of it so far; a first prompt: all but its last paragraph.
    shared = len(sequence) - (1 if len(messages) > 1 else 2)
    marks = {0} if system_blocks else set()
    marks.update(range(shared, len(system_blocks) - 1, -LOOKBACK_BLOCKS))
    tokens = sum(_tokens(str(tool)) for tool in kwargs.get("tools") or [])
    long_enough: list[int] = []
    for index, block in enumerate(sequence):
        tokens += _block_tokens(block)
        if index in marks and tokens >= MIN_CACHE_TOKENS:
            long_enough.append(index)
    if not long_enough:
        return
    for index in long_enough[-MAX_BREAKPOINTS:]:
        sequence[index]["cache_control"] = dict(EPHEMERAL)
    if system_blocks and "cache_control" in system_blocks[0]:
        kwargs["system"] = system_blocks
    for message, content in zip(messages, contents, strict=True):
        if len(content) > 1 or any("cache_control" in b for b in content):  # else: as it was
            message["content"] = content


def _retry_after(exc: Any) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms` or `retry-after` in seconds)."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / scale
        except ValueError:
            continue  # an HTTP date: fall back to the policy's backoff
    return None


def _status_reason(exc: Any) -> str:
    """`429 rate_limit_error: Too many requests` from an SDK status error, without headers.

    Key material is redacted first: a gateway may echo the key it refused ("invalid x-api-key:
    sk-ant-…"), and this message goes into records, results and logs.
    """
    kind, detail = "", ""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        error: dict[str, Any] = inner if isinstance(inner, dict) else body
        kind = redact(str(error.get("type", "")))
        detail = redact(str(error.get("message", "")))
    reason = f"Anthropic API error {exc.status_code}"
    if kind:
        reason += f" {kind}"
    if detail:
        reason += f": {detail[:500]}"
    return reason
