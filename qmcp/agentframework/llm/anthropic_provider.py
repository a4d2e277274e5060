"""The `anthropic` provider: the official SDK, which retries 429/529/5xx itself with backoff.

The key comes from `ANTHROPIC_API_KEY` (and the endpoint from `ANTHROPIC_BASE_URL`), never from a
stored agent config; it never appears in a record, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from qmcp.agentframework.errors import ConfigurationError, ProviderError
from qmcp.agentframework.llm.base import LLMRequest, LLMResponse

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic


class AnthropicProvider:
    name = "anthropic"
    self_retrying = True

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str | None, int], AsyncAnthropic] = {}

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
                api_key=key, base_url=base_url, http_client=DefaultAsyncHttpxClient()
            )
            self._clients = {k: v for k, v in self._clients.items() if k[2] == loop}
            self._clients[(key, base_url, loop)] = client
        return client

    async def complete(self, request: LLMRequest) -> LLMResponse:
        client = self._client().with_options(
            max_retries=request.max_retries, timeout=request.timeout_seconds
        )
        # No sampling parameters: the Messages API version SDK 2.x speaks (2026-10-21) rejects
        # temperature, top_p and top_k with a 400, and the SDK no longer accepts them.
        kwargs: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [m.model_dump() for m in request.messages],
        }
        if request.system:
            kwargs["system"] = request.system
        import anthropic

        try:
            message = await client.messages.create(**kwargs)
        except anthropic.APIStatusError as exc:
            raise ProviderError(_status_reason(exc), provider=self.name) from None
        except anthropic.APITimeoutError:
            raise ProviderError(
                f"the Anthropic API did not answer within {request.timeout_seconds:g} s "
                f"(after {request.max_retries} retries)",
                provider=self.name,
            ) from None
        except anthropic.APIConnectionError as exc:
            raise ProviderError(
                f"could not reach the Anthropic API ({type(exc.__cause__ or exc).__name__}; "
                f"after {request.max_retries} retries)",
                provider=self.name,
            ) from None
        text = "".join(block.text for block in message.content if block.type == "text")
        return LLMResponse(
            text=text,
            model=message.model,
            provider=self.name,
            input_tokens=message.usage.input_tokens,
            output_tokens=message.usage.output_tokens,
            stop_reason=message.stop_reason,
        )


def _status_reason(exc: Any) -> str:
    """`429 rate_limit_error: Too many requests` from an SDK status error, without headers."""
    kind, detail = "", ""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        error: dict[str, Any] = inner if isinstance(inner, dict) else body
        kind = str(error.get("type", ""))
        detail = str(error.get("message", ""))
    reason = f"Anthropic API error {exc.status_code}"
    if kind:
        reason += f" {kind}"
    if detail:
        reason += f": {detail[:500]}"
    return reason
