"""The one place library errors become MCP errors.

A tool's `QmcpError` (bad input, not found, conflict, a provider that cannot run) and a pydantic
validation error reach the client as a `ToolError` with the library's message, which says what
was wrong and what to do; a resource that does not exist is a `ResourceNotFoundError`. Anything
else is a crash: the SDK reports it without its text and logs it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
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
