"""The `openai` provider: the official SDK (`AsyncOpenAI`, Chat Completions), one request per call.

It answers `openai:<model>` for any OpenAI-compatible endpoint (OpenAI, Ollama, vLLM, LM Studio).
The endpoint is the agent's `base_url`, else `OPENAI_BASE_URL`, else OpenAI's; the key is read
from the variable the agent names (`api_key_env`), else `OPENAI_API_KEY`. A local endpoint needs
no key. As with `anthropic`, the SDK's own retries are off (the provider chain retries transient
errors under one policy), and the key never appears in a record, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

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
from qmcp.agentframework.llm.redaction import redact

if TYPE_CHECKING:
    from openai import AsyncOpenAI

TRANSIENT_STATUS = {408, 409, 429, 500, 502, 503, 504}
DEFAULT_KEY_VARIABLE = "OPENAI_API_KEY"
# Sent to an endpoint that needs no key (Ollama): the SDK refuses to build a client without one.
NO_KEY = "no-key"
# OpenAI's own API takes `max_completion_tokens` (its reasoning models refuse `max_tokens`);
# other OpenAI-compatible servers (Ollama, LM Studio, older vLLM) know only `max_tokens`.
OPENAI_HOSTS = ("api.openai.com",)


class OpenAIProvider:
    name = "openai"
    CAPABILITIES = ProviderCapabilities(tools=True, temperature=True)

    def __init__(self) -> None:
        self._clients: dict[tuple[str | None, str, int], AsyncOpenAI] = {}

    def capabilities(self, model: str) -> ProviderCapabilities:
        return self.CAPABILITIES

    def _client(self, request: LLMRequest) -> tuple[AsyncOpenAI, str | None, str]:
        """The client for the request's endpoint, that endpoint, and the key it sends."""
        base_url = request.base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = _key(request.api_key_env, base_url)
        # Connections belong to an event loop: one client per endpoint, key and loop.
        loop = id(asyncio.get_running_loop())
        client = self._clients.get((base_url, key, loop))
        if client is None:
            from openai import AsyncOpenAI, DefaultAsyncHttpxClient  # only when openai runs

            # Our own HTTP client: the SDK's default one schedules its close on whatever loop
            # runs when it is garbage-collected, which fails once its own loop has closed.
            client = AsyncOpenAI(
                api_key=key,
                base_url=base_url,
                max_retries=0,
                http_client=DefaultAsyncHttpxClient(),
            )
            self._clients = {k: v for k, v in self._clients.items() if k[2] == loop}
            self._clients[(base_url, key, loop)] = client
        return client, base_url, key

    async def complete(self, request: LLMRequest) -> LLMResponse:
        client, base_url, key = self._client(request)
        # The timeout as a request option: `with_options` would copy the client for every call.
        kwargs: dict[str, Any] = {
            "timeout": request.timeout_seconds,
            "model": request.model,
            "messages": _messages(request),
        }
        limit = "max_completion_tokens" if _is_openai(base_url) else "max_tokens"
        kwargs[limit] = request.max_tokens
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.tools:
            kwargs["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        **({"description": t.description} if t.description else {}),
                        "parameters": t.input_schema,
                    },
                }
                for t in request.tools
            ]
            if request.tool_choice == "none":
                kwargs["tool_choice"] = "none"
        import openai

        where = _where(base_url)
        try:
            completion = await client.chat.completions.create(**kwargs)
        except openai.APIStatusError as exc:
            raise ProviderError(
                _status_reason(exc, where, key),
                retryable=exc.status_code in TRANSIENT_STATUS,
                retry_after=_retry_after(exc),
                provider=self.name,
            ) from None
        except openai.APITimeoutError:
            raise ProviderError(
                f"{where} did not answer within {request.timeout_seconds:g} s",
                retryable=True,
                provider=self.name,
            ) from None
        except openai.APIConnectionError as exc:
            raise ProviderError(
                f"could not reach {where} ({type(exc.__cause__ or exc).__name__})",
                retryable=True,
                provider=self.name,
            ) from None
        if not completion.choices:
            raise ProviderError(f"{where} answered with no choices", provider=self.name)
        choice = completion.choices[0]
        blocks: list[Any] = []
        if choice.message.content:
            blocks.append(TextBlock(text=choice.message.content))
        for call in choice.message.tool_calls or []:
            function = getattr(call, "function", None)
            if function is None:  # a custom (non-function) tool call: we offer none
                raise ProviderError(
                    f"{where} answered with a {call.type!r} tool call; only function tools "
                    "are offered",
                    provider=self.name,
                )
            blocks.append(
                ToolUseBlock(id=call.id, name=function.name, input=_arguments(function, where, key))
            )
        usage = completion.usage
        return LLMResponse(
            content=blocks,
            model=completion.model or request.model,
            provider=self.name,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            stop_reason=choice.finish_reason,
        )


def _key(variable: str | None, base_url: str | None) -> str:
    """The key to send: the named variable's value, else OPENAI_API_KEY's, else (for an endpoint
    that needs none, such as a local Ollama) a placeholder."""
    if variable:
        key = os.environ.get(variable)
        if not key:
            raise ConfigurationError(
                f"{variable} is not set, and this agent's model reads its API key from it "
                f"(api_key_env); set {variable}, or change the agent's --api-key-env",
                provider="openai",
            )
        return key
    key = os.environ.get(DEFAULT_KEY_VARIABLE)
    if key:
        return key
    if base_url is None:
        raise ConfigurationError(
            f"{DEFAULT_KEY_VARIABLE} is not set, so openai models cannot reach OpenAI; set "
            f"{DEFAULT_KEY_VARIABLE}, give the agent an endpoint of its own (--base-url, e.g. "
            "http://127.0.0.1:11434/v1 for a local Ollama, which needs no key) or the variable "
            "that holds its key (--api-key-env NAME)",
            provider="openai",
        )
    return NO_KEY


def _is_openai(base_url: str | None) -> bool:
    return base_url is None or (urlsplit(base_url).hostname or "") in OPENAI_HOSTS


def _where(base_url: str | None) -> str:
    """The endpoint as a message names it: no user, password or query (they may hold secrets)."""
    if base_url is None:
        return "the OpenAI API"
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _messages(request: LLMRequest) -> list[dict[str, Any]]:
    """The conversation in Chat Completions' form: the system prompt first, tool results as
    `tool` messages right after the assistant turn that asked for them."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        messages.extend(_message(message))
    return messages


def _message(message: Message) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    text = "".join(b.text for b in message.content if isinstance(b, TextBlock))
    if message.role == "assistant":
        calls = [
            {
                "id": b.id,
                "type": "function",
                "function": {"name": b.name, "arguments": json.dumps(b.input)},
            }
            for b in message.content
            if isinstance(b, ToolUseBlock)
        ]
        out: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            out["tool_calls"] = calls
        return [out]
    results: list[dict[str, Any]] = [
        {
            "role": "tool",
            "tool_call_id": b.tool_use_id,
            "content": f"error: {b.content}" if b.is_error else b.content,
        }
        for b in message.content
        if isinstance(b, ToolResultBlock)
    ]
    if text or not results:
        results.append({"role": "user", "content": text})
    return results


def _arguments(function: Any, where: str, key: str) -> dict[str, Any]:
    """A tool call's arguments (a JSON object as text); anything else fails the call for good:
    running a tool on made-up input would act on something the model did not ask for."""
    raw = function.arguments or ""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        shown = redact(raw[:200], (key,))
        raise ProviderError(
            f"{where} asked for tool {function.name!r} with arguments that are not a JSON "
            f"object: {shown!r}",
            provider="openai",
        )
    return value


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


def _status_reason(exc: Any, where: str, key: str) -> str:
    """`<endpoint> answered 429 rate_limit_exceeded: …` from an SDK status error, no headers.

    Key material is redacted first: OpenAI names part of a refused key, and a proxy may echo
    all of it; this message goes into records, results and logs.
    """
    kind, detail = "", ""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        error: dict[str, Any] = inner if isinstance(inner, dict) else body
        kind = redact(str(error.get("code") or error.get("type") or ""), (key,))
        detail = redact(str(error.get("message", "")), (key,))
    elif isinstance(body, str):
        detail = redact(body, (key,))
    reason = f"{where} answered {exc.status_code}"
    if kind:
        reason += f" {kind}"
    if detail:
        reason += f": {detail[:500]}"
    return reason
