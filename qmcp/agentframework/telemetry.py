"""OpenTelemetry traces of runs, in the GenAI semantic conventions.

A span per execution (`invoke_workflow`), per invocation (`invoke_agent`), per model call
(`chat`) and per tool call (`execute_tool`). Inside the MCP server they nest under the span the
`mcp` SDK's middleware opens for each request, which continues the client's trace when its
`_meta` carries one; Metaflow steps, separate processes, continue the run's trace from the W3C
`TRACEPARENT` variable the runner gives them (the OpenTelemetry convention for carrying a trace
context in the environment).

Off unless asked for, and then the cost of a function call per span: nothing of OpenTelemetry is
imported here until traces are on. On when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, exporting over OTLP (the `otel` extra), or when the
host process already installed an SDK tracer provider (`opentelemetry-instrument`, an app's own
set-up), or when `use()` hands one over. This module imports nothing of qmcp, so every layer may
import it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

log = logging.getLogger("qmcp.telemetry")

TRACER_NAME = "qmcp"
# An exception with this attribute (a string: what it waits for, e.g. "client") stops a run to
# wait for an answer from outside it; a span it leaves is not failed (see `span`).
AWAITS = "awaits"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
INSTALL = "pip install 'qmcp-server[otel]'"


class SpanLike(Protocol):
    """What callers do with a span; a real OpenTelemetry span, or `NO_SPAN` when traces are off."""

    def set_attribute(self, key: str, value: Any) -> Any: ...

    def set_attributes(self, attributes: Mapping[str, Any]) -> Any: ...

    def set_status(self, status: Any, description: str | None = None) -> Any: ...

    def record_exception(self, exception: BaseException) -> Any: ...

    def is_recording(self) -> bool: ...


class _NoSpan:
    """The span of a process that does not trace: a context manager that does nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None

    def set_status(self, status: Any, description: str | None = None) -> None:
        return None

    def record_exception(self, exception: BaseException) -> None:
        return None

    def is_recording(self) -> bool:
        return False


NO_SPAN = _NoSpan()

_decided = False
_tracer: Any = None  # an opentelemetry Tracer once traces are on
_provider: Any = None  # the tracer provider in use, for flush()


# -- switching traces on and off --------------------------------------------------------------


def setup() -> bool:
    """Decide now, from the environment, whether this process traces (the first span decides
    otherwise). Servers call it as they start, so the SDK's request spans export from the first
    request on. Returns whether traces are on."""
    global _decided, _tracer, _provider
    if not _decided:
        _provider = _environment_provider()
        _tracer = _provider.get_tracer(TRACER_NAME) if _provider is not None else None
        _decided = True
    return _tracer is not None


def use(tracer_provider: Any) -> None:
    """Trace with `tracer_provider` (an SDK `TracerProvider`), whatever the environment says."""
    global _decided, _tracer, _provider
    _provider, _tracer, _decided = tracer_provider, tracer_provider.get_tracer(TRACER_NAME), True


def disable() -> None:
    """Stop tracing in this process (spans already ended are exported as configured)."""
    global _decided, _tracer, _provider
    _provider, _tracer, _decided = None, None, True


def reset() -> None:
    """Forget the decision: the next span decides again from the environment."""
    global _decided, _tracer, _provider
    _provider, _tracer, _decided = None, None, False


def enabled() -> bool:
    return (_tracer if _decided else _decide()) is not None


def flush(timeout_millis: int = 10_000) -> None:
    """Export the spans ended so far; a process about to exit (a Metaflow step) calls it."""
    force_flush = getattr(_provider, "force_flush", None)
    if force_flush is not None:
        force_flush(timeout_millis)


def _decide() -> Any:
    setup()
    return _tracer


def _environment_provider() -> Any:
    """The tracer provider this process should use, or None for no traces."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    installed = _installed_provider()
    if installed is not None:
        return installed
    if not any(os.environ.get(v, "").strip() for v in ENDPOINT_VARIABLES):
        return None
    protocol = next(
        (os.environ[v].strip() for v in PROTOCOL_VARIABLES if os.environ.get(v, "").strip()),
        "http/protobuf",
    )
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
        else:
            _warn(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use "
                "'http/protobuf' or 'grpc'. No traces are exported."
            )
            return None
    except ImportError as exc:
        _warn(
            f"{ENDPOINT_VARIABLES[1]} is set but the OpenTelemetry SDK or its OTLP exporter is "
            f"not installed ({exc.name}); {INSTALL}. No traces are exported."
        )
        return None
    # OTEL_SERVICE_NAME, when set, names the service; the SDK reads it.
    name = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "qmcp"}
    provider = TracerProvider(resource=Resource.create(name))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # Global, so the mcp SDK's request spans (its own tracer) go out with ours.
    trace.set_tracer_provider(provider)
    return provider


def _installed_provider() -> Any:
    """The SDK tracer provider the host process installed globally, if any. Only looked for when
    OpenTelemetry's API is already imported (the mcp SDK imports it): importing it here would
    be the cost this module avoids."""
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return None
    provider = api.get_tracer_provider()
    if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
        return None
    return provider


def _warn(message: str) -> None:
    log.warning(message)
    sys.stderr.write(f"qmcp: {message}\n")


# -- spans --------------------------------------------------------------------------------------


def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    client: bool = False,
    context: Any = None,
    not_failures: tuple[type[BaseException], ...] = (),
) -> Any:
    """A context manager: the span `name`, current while it is open, or `NO_SPAN` when traces are
    off. An exception leaving it marks it failed, unless it is one of `not_failures` or says what
    it waits for (`AWAITS`): a run that stops to wait for a human or for the MCP client's model
    is not a failure. `client` marks a call to another service."""
    tracer = _tracer if _decided else _decide()
    if tracer is None:
        return NO_SPAN
    return _span(tracer, name, attributes, client, context, not_failures)


@contextmanager
def _span(
    tracer: Any,
    name: str,
    attributes: Mapping[str, Any] | None,
    client: bool,
    context: Any,
    not_failures: tuple[type[BaseException], ...],
) -> Iterator[SpanLike]:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    with tracer.start_as_current_span(
        name,
        context=context,
        kind=SpanKind.CLIENT if client else SpanKind.INTERNAL,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except Exception as exc:
            awaits = getattr(exc, AWAITS, None)
            if isinstance(exc, not_failures) or isinstance(awaits, str):
                _waiting(current, exc, awaits)
                raise
            current.set_attribute("error.type", type(exc).__qualname__)
            current.record_exception(exc)
            current.set_status(Status(StatusCode.ERROR, str(exc)))
            raise


def _waiting(current: Any, exc: BaseException, awaits: str | None) -> None:
    """A span left by a pause, not a failure: its status stays unset, and it says what the run
    waits for (with an `qmcp.awaiting` event, when the pause names it: `awaits`)."""
    current.set_attribute("qmcp.waiting", type(exc).__qualname__)
    if isinstance(awaits, str):
        current.set_attribute("qmcp.awaits", awaits)
        current.add_event("qmcp.awaiting", {"qmcp.awaits": awaits, "message": str(exc)[:1000]})


def execution_span(
    execution_id: Any,
    topology_name: str,
    topology_type: str,
    runner_type: str,
    not_failures: tuple[type[BaseException], ...] = (),
) -> Any:
    """One execution of a topology (a run segment: a resume is another span)."""
    if not enabled():
        return NO_SPAN
    attributes = {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.conversation.id": str(execution_id),
        "qmcp.execution.id": str(execution_id),
        "qmcp.topology.name": topology_name,
        "qmcp.topology.type": topology_type,
        "qmcp.runner.type": runner_type,
    }
    return span(f"invoke_workflow {topology_name}", attributes, not_failures=not_failures)


def ended(current: SpanLike, status: str, error: str | None = None) -> None:
    """Say how an execution ended on its span (a failed run returns rather than raises)."""
    if not current.is_recording():
        return
    current.set_attribute("qmcp.execution.status", status)
    if error is not None and status in ("failed", "cancelled"):
        from opentelemetry.trace import Status, StatusCode

        current.set_attribute("error.type", status)
        current.set_status(Status(StatusCode.ERROR, error))


def agent_span(
    agent_name: str,
    key: str,
    slot: str,
    execution_id: Any,
    cached: bool,
    not_failures: tuple[type[BaseException], ...] = (),
) -> Any:
    """One invocation of an agent (a conversation of model turns and tool calls)."""
    if not enabled():
        return NO_SPAN
    return span(
        f"invoke_agent {agent_name}",
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent_name,
            "gen_ai.conversation.id": str(execution_id),
            "qmcp.invocation.key": key,
            "qmcp.slot": slot,
            "qmcp.invocation.cached": cached,
        },
        not_failures=not_failures,
    )


def chat_span(provider: str, request: Any) -> Any:
    """One call of a model (an attempt: a retry is another span)."""
    if not enabled():
        return NO_SPAN
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request.model,
        "gen_ai.request.max_tokens": request.max_tokens,
    }
    if request.temperature is not None:
        attributes["gen_ai.request.temperature"] = request.temperature
    if request.agent_name:
        attributes["gen_ai.agent.name"] = request.agent_name
    return span(f"chat {request.model}", attributes, client=True)


def answered(current: SpanLike, response: Any) -> None:
    """What a model call returned: the model that answered, token usage, why it stopped."""
    if not current.is_recording():
        return
    current.set_attributes(
        {
            "gen_ai.response.model": response.model,
            "gen_ai.usage.input_tokens": response.input_tokens,
            "gen_ai.usage.output_tokens": response.output_tokens,
        }
    )
    if response.stop_reason:
        current.set_attribute("gen_ai.response.finish_reasons", [response.stop_reason])


def tool_span(tool_name: str, call_id: str, server: str) -> Any:
    """One call of an agent's tool on its MCP server (the SDK's client span nests inside)."""
    if not enabled():
        return NO_SPAN
    return span(
        f"execute_tool {tool_name}",
        {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool_name,
            "gen_ai.tool.call.id": call_id,
            "gen_ai.tool.type": "extension",
            "qmcp.tool.server": server,
        },
    )


def tool_failed(current: SpanLike, error: str) -> None:
    """A tool call that failed or returned an error result."""
    if not current.is_recording():
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_attribute("error.type", "tool_error")
    current.set_status(Status(StatusCode.ERROR, error))


# -- across processes ---------------------------------------------------------------------------


def carrier() -> dict[str, str]:
    """The current trace context as environment variables (`TRACEPARENT`, `TRACESTATE`) for a
    child process to continue the trace; empty when traces are off."""
    if not enabled():
        return {}
    from opentelemetry.propagate import inject

    headers: dict[str, str] = {}
    inject(headers)
    return {name.upper(): value for name, value in headers.items()}


def continued(name: str, attributes: Mapping[str, Any] | None = None) -> Any:
    """A span continuing the trace of the process that started this one (`TRACEPARENT` in the
    environment), or a new trace when none was given."""
    if not enabled():
        return NO_SPAN
    from opentelemetry.propagate import extract

    given = {
        header: os.environ[variable]
        for header, variable in (("traceparent", "TRACEPARENT"), ("tracestate", "TRACESTATE"))
        if os.environ.get(variable)
    }
    return span(name, attributes, context=extract(given) if given else None)
