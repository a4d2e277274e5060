"""The one place library errors become MCP errors.

A tool's `QmcpError` (bad input, not found, conflict, a provider that cannot run) and a pydantic
validation error reach the client as a `ToolError` with the library's message, which says what
was wrong and what to do; a resource that does not exist is a `ResourceNotFoundError` (JSON-RPC
-32602, as SEP-2164 has it). A request the server cannot take as asked (an unknown tool or prompt,
a prompt's missing, unknown or invalid arguments) is a protocol error with code -32602 (Invalid
params); a prompt that fails for the library's reasons is -32603 with the library's message.
Anything else is a crash: the SDK reports it without its text and logs it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS
from pydantic import ValidationError as PydanticValidationError

from qmcp.agentframework.errors import NotFoundError, QmcpError, ValidationError

P = ParamSpec("P")
R = TypeVar("R")


def _describe(exc: PydanticValidationError) -> str:
    from qmcp.agentframework.errors import describe_validation_error

    return f"invalid value: {describe_validation_error(exc)}"


def tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Report the library's errors from a tool as tool errors, in the library's words."""

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except QmcpError as exc:
            raise ToolError(str(exc)) from None
        except PydanticValidationError as exc:
            raise ToolError(_describe(exc)) from None

    return call


def resource_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A name or id that is malformed or unknown is a resource that does not exist."""

    @functools.wraps(fn)
    async def read(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (NotFoundError, ValidationError) as exc:
            raise ResourceNotFoundError(str(exc)) from None
        except QmcpError as exc:
            raise ResourceError(str(exc)) from None

    return read


def invalid_params(message: str) -> MCPError:
    """The JSON-RPC error for a request whose parameters the server cannot take (-32602)."""
    return MCPError(code=INVALID_PARAMS, message=message)


def prompt_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Report the library's errors from a prompt as JSON-RPC errors, in the library's words.

    Without this the SDK turns them into code 0 (2025-11-25) or a bare -32603 (2026-07-28).
    """

    @functools.wraps(fn)
    async def get(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except (NotFoundError, ValidationError) as exc:
            raise invalid_params(str(exc)) from None
        except QmcpError as exc:
            raise MCPError(code=INTERNAL_ERROR, message=str(exc)) from None

    return get
