"""One error base with a few precise subclasses; messages say what was wrong and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError as PydanticValidationError


class QmcpError(Exception):
    """Base of every error qmcp raises on purpose."""


class ValidationError(QmcpError):
    """Input that cannot be accepted (bad name, bad JSON, missing slot, unknown value)."""


class NotFoundError(QmcpError):
    """A named agent, topology, execution or runner does not exist."""


class ConflictError(QmcpError):
    """An object with that name already exists, or the state forbids the operation."""


class ProviderError(QmcpError):
    """A model provider failed to answer.

    The classification is the provider's: `retryable` (transient: 429/529/5xx, a dropped
    connection, a timeout) means another attempt could succeed, after `retry_after` seconds when
    the provider said so; otherwise it is permanent (authentication, a bad request, a missing key,
    configuration) and is never retried.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        provider: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.provider = provider
        self.retry_after = retry_after


class ConfigurationError(ProviderError):
    """A provider cannot run as configured (for example no API key)."""

    def __init__(self, message: str, *, provider: str = "") -> None:
        super().__init__(message, retryable=False, provider=provider)


class InvocationFailed(QmcpError):
    """An agent invocation failed after all its attempts."""

    def __init__(self, key: str, slot: str, message: str) -> None:
        super().__init__(f"invocation {key!r} (slot {slot!r}) failed: {message}")
        self.key = key
        self.slot = slot
        self.reason = message


class TopologyFailed(QmcpError):
    """A topology could not produce a result under its failure policy."""


def known(values: object) -> str:
    """Render a list of known values for an error message."""
    return ", ".join(str(v) for v in values)  # type: ignore[attr-defined]


class RunnerError(QmcpError):
    """A runner could not carry out a run as asked (a Metaflow helper called outside its flow,
    a flow that ended with calls still pending)."""


def describe_validation_error(exc: PydanticValidationError) -> str:
    """A pydantic error as one line: `field.path: message; …`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "value"
        message = error.get("msg", "invalid")
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        elif error.get("type") == "value_error":  # our own validators' words, without a prefix
            message = message.removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
