"""What `qmcp models` shows: the model specs a user can write, which providers are configured
on this machine (a key present, an endpoint that answers), and one tiny call that checks a model
answers and how fast.

The checks never send a key anywhere: an endpoint is probed with a bare `GET <base>/models`, and
any HTTP answer (even 401) means it is reachable.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from qmcp.agentframework.errors import (
    ProviderError,
    ValidationError,
    describe_validation_error,
)
from qmcp.agentframework.llm import LLMRequest, Message, ProviderRegistry, redact
from qmcp.agentframework.llm.function import FUNCTIONS
from qmcp.agentframework.models import ModelConfig, Models

PROBE_SECONDS = 1.5
TEST_PROMPT = "Reply with the single word OK."
TEST_MAX_TOKENS = 16
BUILTIN = ("anthropic", "openai", "offline", "function", "sampling")


async def probe(base_url: str, timeout: float = PROBE_SECONDS) -> dict[str, Any]:
    """Whether an endpoint answers HTTP within `timeout` (`GET <base>/models`, no key)."""
    import httpx

    url = base_url.rstrip("/") + "/models"
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(url)
    except httpx.TimeoutException:
        return {"reachable": False, "detail": f"no answer within {timeout:g} s"}
    except httpx.HTTPError as exc:
        return {"reachable": False, "detail": f"cannot connect ({type(exc).__name__})"}
    ms = round((time.perf_counter() - started) * 1000)
    return {"reachable": True, "detail": f"HTTP {response.status_code} in {ms} ms"}


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


async def _anthropic() -> dict[str, Any]:
    base_url = _env("ANTHROPIC_BASE_URL")
    endpoint = {"url": base_url, **await probe(base_url)} if base_url else None
    keyed = _env("ANTHROPIC_API_KEY") is not None
    if not keyed:
        status = "not configured: set ANTHROPIC_API_KEY"
    elif endpoint is not None and not endpoint["reachable"]:
        status = f"ANTHROPIC_BASE_URL does not answer: {endpoint['detail']}"
    else:
        status = "configured: ANTHROPIC_API_KEY is set"
    return {
        "name": "anthropic",
        "specs": ["claude-<model id>", "anthropic:<model id>", "<a Models name>"],
        "configured": keyed and (endpoint is None or endpoint["reachable"]),
        "status": status,
        "endpoint": endpoint,
    }


async def _openai() -> dict[str, Any]:
    base_url = _env("OPENAI_BASE_URL")
    endpoint = {"url": base_url, **await probe(base_url)} if base_url else None
    keyed = _env("OPENAI_API_KEY") is not None
    if endpoint is not None:
        configured = bool(endpoint["reachable"])
        if configured:
            key = "OPENAI_API_KEY is set" if keyed else "no key (fine for a local server)"
            status = f"configured: OPENAI_BASE_URL answers ({endpoint['detail']}); {key}"
        else:
            status = f"OPENAI_BASE_URL does not answer: {endpoint['detail']}"
    else:
        configured = keyed
        status = (
            "configured: OPENAI_API_KEY is set (OpenAI's endpoint)"
            if keyed
            else "not configured: set OPENAI_API_KEY, or OPENAI_BASE_URL for a local server"
        )
    return {
        "name": "openai",
        "specs": ["openai:<model>"],
        "configured": configured,
        "status": status + "; an agent may name its own endpoint (--base-url, --api-key-env)",
        "endpoint": endpoint,
    }


def _others() -> list[dict[str, Any]]:
    functions = FUNCTIONS.list()
    found = [
        {
            "name": "offline",
            "specs": ["offline"],
            "configured": True,
            "status": "always available (no network, deterministic)",
            "endpoint": None,
        },
        {
            "name": "function",
            "specs": ["function:<name>"],
            "configured": bool(functions),
            "status": "registered Python callables: " + (", ".join(functions) or "none"),
            "endpoint": None,
        },
        {
            "name": "sampling",
            "specs": ["sampling"],
            "configured": False,
            "status": "only inside the MCP server (the client's own model answers)",
            "endpoint": None,
        },
    ]
    for name in ProviderRegistry.list():
        if name not in BUILTIN:
            found.append(
                {
                    "name": name,
                    "specs": [],
                    "configured": True,
                    "status": "registered by a plugin",
                    "endpoint": None,
                }
            )
    return found


async def catalog() -> dict[str, Any]:
    """The providers (with how they are configured here) and the named models."""
    anthropic, openai = await asyncio.gather(_anthropic(), _openai())
    providers = [anthropic, openai, *_others()]
    ready = {p["name"]: p["configured"] for p in providers}
    models = [
        {
            "name": name,
            "provider": config.provider,
            "model": config.model,
            "label": config.label,
            "configured": ready.get(config.provider, False),
        }
        for name, config in Models.all().items()
    ]
    return {"providers": providers, "models": models}


def resolve(spec: str, base_url: str | None = None, api_key_env: str | None = None) -> ModelConfig:
    """A model spec with an optional endpoint, checked as an agent's would be."""
    config = Models.parse(spec)
    endpoint = {k: v for k, v in (("base_url", base_url), ("api_key_env", api_key_env)) if v}
    if not endpoint:
        return config
    if config.provider != "openai":
        raise ValidationError(
            f"--base-url and --api-key-env are for openai:<model> models, not {config.label!r}"
        )
    try:
        return ModelConfig.model_validate(config.model_dump() | endpoint)
    except PydanticValidationError as exc:
        raise ValidationError(f"invalid endpoint: {describe_validation_error(exc)}") from None


async def try_model(
    spec: str,
    *,
    base_url: str | None = None,
    api_key_env: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """One tiny call through the model's provider: `ok`, the latency, and the answer or why
    there was none. A bad spec raises `ValidationError`; a failed call is reported, not raised."""
    config = resolve(spec, base_url, api_key_env)
    provider = ProviderRegistry.provider(config.provider)
    request = LLMRequest(
        model=config.model,
        messages=[Message(role="user", content=TEST_PROMPT)],
        max_tokens=TEST_MAX_TOKENS,
        timeout_seconds=timeout,
        base_url=config.base_url,
        api_key_env=config.api_key_env,
        agent_name="qmcp-models-test",
    )
    result: dict[str, Any] = {"spec": spec, "model": config.label, "provider": config.provider}
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout + 1.0):
            response = await provider.complete(request)
    except ProviderError as exc:
        error = str(exc)
    except TimeoutError:
        error = f"no answer within {timeout:g} s"
    except Exception as exc:  # a provider's bug: still one line, never a traceback
        error = redact(f"{type(exc).__name__}: {exc}")
    else:
        return result | {
            "ok": True,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            "answered_by": response.model,
            "answer": response.text[:200],
            "input_tokens": response.input_tokens,
            "output_tokens": response.output_tokens,
        }
    return result | {
        "ok": False,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "error": error,
    }
