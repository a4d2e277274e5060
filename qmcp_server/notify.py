"""Change notifications and a run's log lines, in each protocol era's terms.

2025-11-25 (a handshake, a connection): a client subscribes with `resources/subscribe` and sets
its log level with `logging/setLevel`; the server sends `notifications/resources/updated` to the
connections subscribed to a URI, `notifications/*/list_changed` to every connection it knows, and
a run's log lines to the connection that started the run, on the tool call's own stream while the
call is open (so a client that never opened its standalone stream still gets them), on the
standalone stream after it answered (`wait=false`).

2026-07-28 (stateless): there is no standalone channel, no `resources/subscribe` and no
`logging/setLevel`. A client opens a `subscriptions/listen` stream naming the URIs and list
changes it wants; the SDK serves it from a `SubscriptionBus`, and `Notifier.bus` is the one this
server publishes on. Log lines are a per-request opt-in (the request's
`_meta["io.modelcontextprotocol/logLevel"]`) that ride that request's stream, so a run's lines
reach a 2026 client while its `topologies_run` call is open (`wait=true`) and never after.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.connection import allowed_log_levels
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import NotificationOptions
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ResourcesListChanged,
    ResourceUpdated,
    ToolsListChanged,
)
from mcp_types import (
    EmptyResult,
    LoggingLevel,
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
    RequestId,
    ResourceListChangedNotification,
    ResourceUpdatedNotification,
    ResourceUpdatedNotificationParams,
    ServerNotification,
    SetLevelRequestParams,
    SubscribeRequestParams,
    ToolListChangedNotification,
    UnsubscribeRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

if TYPE_CHECKING:
    from mcp.server.connection import Connection
    from mcp.server.lowlevel import Server
    from mcp.server.mcpserver import Context
    from mcp.server.session import ServerSession

    from qmcp.agentframework.service import InvocationEvent

log = logging.getLogger("qmcp.server")

EXECUTIONS_URI = "qmcp://executions"
RUN_LOGGER = "qmcp.run"
LEVELS: tuple[LoggingLevel, ...] = get_args(LoggingLevel)  # RFC 5424 order, least severe first
PYTHON_LEVELS: dict[int, LoggingLevel] = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}
# An invocation that ends changes the execution's record; "started" and "retrying" do not.
UPDATING_EVENTS = ("completed", "failed")
SUBSCRIPTIONS = "qmcp.subscriptions"  # keys of a legacy connection's `state`
LOG_LEVEL = "qmcp.log_level"

ListKind = Literal["resources", "tools"]


def execution_uri(execution_id: object) -> str:
    return f"{EXECUTIONS_URI}/{execution_id}"


def connection_of(session: ServerSession) -> Connection:
    """The connection behind a request's session: what a subscription or a log level belongs to
    and what outlives the request. The SDK keeps it private on `ServerSession` for now (its
    Context rework, TODO L53/L54, makes `ctx.connection` public)."""
    return session._connection


@dataclass(frozen=True)
class Origin:
    """The request behind a change while it is open: its own connection hears of the change on
    that request's stream (which exists for sure), every other connection on its standalone one."""

    session: ServerSession
    request_id: RequestId | None
    protocol_version: str
    meta: Any = None

    @classmethod
    def of(cls, ctx: Context[Any, Any]) -> Origin | None:
        try:
            request = ctx.request_context
        except ValueError:  # a context outside a request (a direct call in code)
            return None
        return cls(request.session, request.request_id, request.protocol_version, request.meta)

    @property
    def legacy(self) -> bool:
        return self.protocol_version not in MODERN_PROTOCOL_VERSIONS

    def detached(self) -> Origin:
        """The same client once its request has answered: only the standalone stream is left."""
        return Origin(self.session, None, self.protocol_version, None)


class Notifier:
    """Publishes this server's changes to every client that asked, in both protocol eras."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()  # 2026-07-28: `subscriptions/listen` streams
        self._connections: weakref.WeakSet[Connection] = weakref.WeakSet()  # 2025-era clients

    # -- what changed -----------------------------------------------------------------------

    async def resource_updated(self, uri: str, origin: Origin | None = None) -> None:
        await self.bus.publish(ResourceUpdated(uri=uri))
        notification = ResourceUpdatedNotification(
            params=ResourceUpdatedNotificationParams(uri=uri)
        )
        for connection in list(self._connections):
            if uri in connection.state.get(SUBSCRIPTIONS, ()):
                await self._send(connection, origin, notification)

    async def list_changed(self, kind: ListKind, origin: Origin | None = None) -> None:
        notification: ServerNotification
        if kind == "resources":
            await self.bus.publish(ResourcesListChanged())
            notification = ResourceListChangedNotification()
        else:
            await self.bus.publish(ToolsListChanged())
            notification = ToolListChangedNotification()
        for connection in list(self._connections):
            await self._send(connection, origin, notification)

    async def execution_changed(
        self, execution_id: object, origin: Origin | None = None, *, new: bool = False
    ) -> None:
        """An execution started, resumed or ended: its record and the execution list changed;
        `new` (a run started or resumed) also changes what the list holds."""
        await self.resource_updated(execution_uri(execution_id), origin)
        await self.resource_updated(EXECUTIONS_URI, origin)
        if new:
            await self.list_changed("resources", origin)

    def invocation_observer(
        self, origin: Origin | None
    ) -> Callable[[InvocationEvent], Awaitable[None]]:
        """An `on_event` handler: one `resources/updated` per finished invocation."""

        async def on_event(event: InvocationEvent) -> None:
            if event.kind in UPDATING_EVENTS:
                await self.resource_updated(execution_uri(event.execution_id), origin)

        return on_event

    async def _send(
        self, connection: Connection, origin: Origin | None, notification: ServerNotification
    ) -> None:
        """To the originating request's stream if it is this connection's and still open, else
        to the connection's standalone stream (dropped there if the client never opened one)."""
        try:
            if (
                origin is not None
                and origin.request_id is not None
                and connection_of(origin.session) is connection
            ):
                await origin.session.send_notification(notification, origin.request_id)
            else:
                data = notification.model_dump(by_alias=True, mode="json", exclude_none=True)
                await connection.notify(data["method"], data.get("params"))
        except Exception:  # a client that went away must not fail the change that happened
            log.debug("notification %s dropped", notification.method, exc_info=True)

    # -- the protocol methods (2025-11-25) --------------------------------------------------

    async def track(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """Middleware: remember each handshake-era connection, so that list changes reach it."""
        if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            self._connections.add(connection_of(ctx.session))
        return await call_next(ctx)

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        """Any URI may be subscribed to; `qmcp://executions` and `qmcp://executions/{id}` are
        the ones that change on their own."""
        state = connection_of(ctx.session).state
        state.setdefault(SUBSCRIPTIONS, set()).add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        connection_of(ctx.session).state.get(SUBSCRIPTIONS, set()).discard(str(params.uri))
        return EmptyResult()

    async def set_level(
        self, ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams
    ) -> EmptyResult:
        connection_of(ctx.session).state[LOG_LEVEL] = params.level
        return EmptyResult()

    def install(self, server: Server[Any]) -> None:
        """Serve the 2025-era methods on `server` and say so in its `initialize` answer (the
        SDK advertises list changes there only when told; 2026 derives them from the bus)."""
        server.middleware.append(self.track)
        server.add_request_handler("resources/subscribe", SubscribeRequestParams, self.subscribe)
        server.add_request_handler(
            "resources/unsubscribe", UnsubscribeRequestParams, self.unsubscribe
        )
        server.add_request_handler("logging/setLevel", SetLevelRequestParams, self.set_level)
        plain = server.create_initialization_options
        changes = NotificationOptions(resources_changed=True, tools_changed=True)

        def with_list_changes(
            notification_options: NotificationOptions | None = None,
            experimental_capabilities: dict[str, dict[str, Any]] | None = None,
            extensions: dict[str, dict[str, Any]] | None = None,
        ) -> InitializationOptions:
            return plain(notification_options or changes, experimental_capabilities, extensions)

        server.create_initialization_options = with_list_changes  # type: ignore[method-assign]

    # -- a run's log lines ------------------------------------------------------------------

    def log_levels(self, origin: Origin) -> frozenset[LoggingLevel]:
        """The levels the client behind `origin` takes: on 2026-07-28 what its request opted in
        to; on 2025-11-25 what `logging/setLevel` set on its connection (nothing before that)."""
        if not origin.legacy:
            if origin.request_id is None:
                return frozenset()
            return allowed_log_levels(origin.protocol_version, origin.meta)
        level = connection_of(origin.session).state.get(LOG_LEVEL)
        return frozenset(LEVELS[LEVELS.index(level) :]) if level in LEVELS else frozenset()

    @asynccontextmanager
    async def run_log(self, origin: Origin | None) -> AsyncIterator[None]:
        """While open, the log lines of the run in this task (and the tasks it starts) go to the
        client behind `origin` as `notifications/message`, in order, at the levels it takes;
        `RunConfig.log_level` has filtered them already."""
        levels = self.log_levels(origin) if origin is not None else frozenset()
        if origin is None or not levels:
            yield
            return
        install_run_log_relay()
        send, receive = anyio.create_memory_object_stream[tuple[LoggingLevel, str]](1000)
        sink = RunLogSink(levels, send, asyncio.get_running_loop(), threading.get_ident())
        token = _run_log.set(sink)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._pump, origin, receive)
                try:
                    yield
                finally:
                    send.close()
        finally:
            _run_log.reset(token)

    async def _pump(
        self, origin: Origin, receive: MemoryObjectReceiveStream[tuple[LoggingLevel, str]]
    ) -> None:
        async with receive:
            async for level, text in receive:
                notification = LoggingMessageNotification(
                    params=LoggingMessageNotificationParams(
                        level=level, data=text, logger=RUN_LOGGER
                    )
                )
                with suppress(Exception):  # a client that went away must not fail the run
                    await origin.session.send_notification(notification, origin.request_id)


@dataclass(frozen=True)
class RunLogSink:
    """One run's way to its client: lines at the client's levels, queued for `Notifier._pump`
    (bounded: a client that stops reading loses lines, the run never waits for it)."""

    levels: frozenset[LoggingLevel]
    send: MemoryObjectSendStream[tuple[LoggingLevel, str]]
    loop: asyncio.AbstractEventLoop
    thread: int

    def put(self, record: logging.LogRecord) -> None:
        level = PYTHON_LEVELS.get(record.levelno, "info")
        if level not in self.levels:
            return
        line = (level, record.getMessage())
        if threading.get_ident() == self.thread:
            self._queue(line)
        else:  # a worker thread of the run (the context travels with `to_thread`)
            with suppress(RuntimeError):  # the loop has closed: nobody is listening
                self.loop.call_soon_threadsafe(self._queue, line)

    def _queue(self, line: tuple[LoggingLevel, str]) -> None:
        with suppress(anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.send.send_nowait(line)


_run_log: ContextVar[RunLogSink | None] = ContextVar("qmcp_run_log", default=None)


class RunLogRelay(logging.Handler):
    """On the `qmcp.run` logger: hands each line to the client of the run that logged it, and
    passes on to the `qmcp` logger exactly the lines the server's own logging lets through.

    `qmcp.run` itself is opened to every level, so the server's stderr verbosity
    (QMCP_LOG_LEVEL) never hides from a client a line its run and its level ask for.
    """

    def emit(self, record: logging.LogRecord) -> None:
        sink = _run_log.get()
        if sink is not None:
            sink.put(record)
        parent = logging.getLogger("qmcp")
        if record.levelno >= parent.getEffectiveLevel():
            parent.handle(record)


def install_run_log_relay() -> None:
    """Once per process, when a client first asks for a run's log lines."""
    run_logger = logging.getLogger(RUN_LOGGER)
    if any(isinstance(h, RunLogRelay) for h in run_logger.handlers):
        return
    run_logger.addHandler(RunLogRelay())
    run_logger.propagate = False
    run_logger.setLevel(logging.DEBUG)
