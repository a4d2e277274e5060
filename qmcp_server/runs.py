"""Taking a started run to its end: in the tool call with progress (`wait=true`), or in the
server after the call has answered (`wait=false`), where it can still be cancelled."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import Context

from qmcp.agentframework.human import human_channel
from qmcp_server.sampling import current_context, elicitation_channel
from qmcp_server.schemas import RunOutcome

if TYPE_CHECKING:
    from qmcp.agentframework.service import InvocationEvent, RunResult, StartedRun

log = logging.getLogger("qmcp.server")

PROGRESS_EVENTS = ("completed", "cached", "failed", "retrying")


class BackgroundRuns:
    """Runs carried on after their tool call answered, by execution id; a finished one leaves."""

    def __init__(self) -> None:
        self._tasks: dict[uuid.UUID, asyncio.Task[RunResult]] = {}

    def start(self, started: StartedRun) -> None:
        from qmcp.agentframework import service

        ident = started.execution_id
        task = asyncio.create_task(service.finish_run(started), name=f"qmcp-run-{ident}")
        self._tasks[ident] = task
        task.add_done_callback(lambda t: self._done(ident, t))

    def _done(self, ident: uuid.UUID, task: asyncio.Task[RunResult]) -> None:
        self._tasks.pop(ident, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("background run %s crashed: %r", ident, task.exception())

    def running(self, ident: uuid.UUID) -> bool:
        return ident in self._tasks

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
) -> RunOutcome:
    """Run to the end with progress (wait), or carry on in the server and answer at once."""
    if wait:
        return outcome(await finish_with_progress(ctx, started))
    runs.start(started)
    execution = started.execution
    return RunOutcome(
        execution_id=str(execution.id),
        status="running",
        topology_name=execution.topology_name,
        runner_type=started.runner.runner_type,
        correlation_id=execution.correlation_id,
        resource_uri=f"qmcp://executions/{execution.id}",
    )


async def finish_with_progress(ctx: Context[Any, Any], started: StartedRun) -> RunResult:
    """Finish the run inside this tool call: progress per invocation, and the calling client's
    own model (sampling) and user (elicitation) within reach of the run."""
    from qmcp.agentframework import service

    async def on_event(event: InvocationEvent) -> None:
        if event.kind in PROGRESS_EVENTS:
            message = f"{event.kind} {event.key} ({event.agent})"
            try:
                await ctx.report_progress(event.done, event.total, message)
            except Exception:  # a client that went away must not fail the run
                log.debug("progress report dropped", exc_info=True)

    token = current_context.set(ctx)
    human = human_channel.set(elicitation_channel(ctx))
    try:
        return await service.finish_run(started, on_event=on_event)
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
