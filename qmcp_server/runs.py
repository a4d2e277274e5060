"""Taking a started run to its end: in the tool call with progress (`wait=true`), or in the
server after the call has answered (`wait=false`), where it can still be cancelled."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import suppress
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server.mcpserver import Context
from mcp_types import InputRequiredResult

from qmcp.agentframework.human import human_channel
from qmcp_server.notify import Notifier, Origin
from qmcp_server.sampling import current_context, elicitation_channel, sampling_round
from qmcp_server.schemas import RunOutcome

if TYPE_CHECKING:
    from qmcp.agentframework.service import InvocationEvent, RunResult, StartedRun

log = logging.getLogger("qmcp.server")

PROGRESS_EVENTS = ("completed", "cached", "failed", "retrying")

# Set by `qmcp_server.tasks` around a task-augmented tool call: the run goes on in the server,
# as with wait=false, and the call answers with a task (whose id is the execution id).
as_task: ContextVar[bool] = ContextVar("qmcp_run_as_task", default=False)


class BackgroundRuns:
    """Runs carried on after their tool call answered, by execution id; a finished one leaves."""

    def __init__(self, notifier: Notifier | None = None) -> None:
        self._tasks: dict[uuid.UUID, asyncio.Task[RunResult]] = {}
        self.notifier = notifier if notifier is not None else Notifier()

    def start(self, started: StartedRun, origin: Origin | None = None) -> None:
        """`origin`: the client that started it, which hears of its invocations and its log
        lines where its protocol era lets it (`qmcp_server.notify`)."""
        ident = started.execution_id
        task = asyncio.create_task(self._finish(started, origin), name=f"qmcp-run-{ident}")
        self._tasks[ident] = task
        task.add_done_callback(lambda t: self._done(ident, t))

    async def _finish(self, started: StartedRun, origin: Origin | None) -> RunResult:
        from qmcp.agentframework import service

        notifier = self.notifier
        try:
            async with notifier.run_log(origin):
                observer = notifier.invocation_observer(origin)
                return await service.finish_run(started, on_event=observer)
        finally:
            with anyio.CancelScope(shield=True):  # a cancelled run has changed its record too
                await notifier.execution_changed(started.execution_id, origin)

    def _done(self, ident: uuid.UUID, task: asyncio.Task[RunResult]) -> None:
        self._tasks.pop(ident, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("background run %s crashed: %r", ident, task.exception())

    def running(self, ident: uuid.UUID) -> bool:
        return ident in self._tasks

    async def wait(self, ident: uuid.UUID, timeout: float) -> None:
        """Wait up to `timeout` seconds for a run of this process to end (at once if none)."""
        task = self._tasks.get(ident)
        if task is not None:
            await asyncio.wait([task], timeout=timeout)

    async def cancel(self, execution_id: uuid.UUID) -> bool:
        """Cancel a run of this process and wait until it has recorded itself as cancelled."""
        task = self._tasks.get(execution_id)
        if task is None:
            return False
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        return True

    async def shutdown(self) -> None:
        for ident in list(self._tasks):
            await self.cancel(ident)


async def launch(
    ctx: Context[Any, Any], runs: BackgroundRuns, started: StartedRun, wait: bool
) -> RunOutcome | InputRequiredResult:
    """Run to the end with progress (wait), or carry on in the server and answer at once
    (wait=false, or a task-augmented call: see `as_task`).

    A run on a stateless (2026-07-28) client that stopped to wait for the client's model answers
    with its questions instead (`sampling.py`); the client's next call brings the answers."""
    origin = Origin.of(ctx)
    await runs.notifier.execution_changed(started.execution_id, origin, new=True)
    if wait and not as_task.get():
        with sampling_round(ctx) as round_:
            result = await finish_with_progress(ctx, started, runs.notifier)
        asked = round_.input_required(result) if round_ is not None else None
        return asked if asked is not None else outcome(result)
    runs.start(started, origin.detached() if origin is not None else None)
    execution = started.execution
    return RunOutcome(
        execution_id=str(execution.id),
        status="running",
        topology_name=execution.topology_name,
        runner_type=started.runner.runner_type,
        correlation_id=execution.correlation_id,
        resource_uri=f"qmcp://executions/{execution.id}",
    )


async def finish_with_progress(
    ctx: Context[Any, Any], started: StartedRun, notifier: Notifier | None = None
) -> RunResult:
    """Finish the run inside this tool call: progress per invocation, and the calling client's
    own model (sampling) and user (elicitation) within reach of the run; with a `notifier`,
    subscribers hear of each invocation and the caller gets the run's log lines."""
    from qmcp.agentframework import service

    origin = Origin.of(ctx)
    observer = notifier.invocation_observer(origin) if notifier is not None else None

    async def on_event(event: InvocationEvent) -> None:
        if observer is not None:
            await observer(event)
        if event.kind in PROGRESS_EVENTS:
            message = f"{event.kind} {event.key} ({event.agent})"
            try:
                await ctx.report_progress(event.done, event.total, message)
            except Exception:  # a client that went away must not fail the run
                log.debug("progress report dropped", exc_info=True)

    token = current_context.set(ctx)
    human = human_channel.set(elicitation_channel(ctx))
    try:
        if notifier is None:
            return await service.finish_run(started, on_event=on_event)
        try:
            async with notifier.run_log(origin):
                return await service.finish_run(started, on_event=on_event)
        finally:
            with anyio.CancelScope(shield=True):  # a cancelled run has changed its record too
                await notifier.execution_changed(started.execution_id, origin)
    finally:
        human_channel.reset(human)
        current_context.reset(token)


def outcome(result: RunResult) -> RunOutcome:
    return RunOutcome(
        execution_id=str(result.execution_id),
        status=result.status.value,  # type: ignore[arg-type]
        topology_name=result.topology_name,
        runner_type=result.runner_type,
        output=result.output,
        error=result.error,
        duration_ms=result.duration_ms,
        correlation_id=result.correlation_id,
        resource_uri=f"qmcp://executions/{result.execution_id}",
    )
