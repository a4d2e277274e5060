"""Runs the server carries on after a tool call returns (`wait=false`), so they can be cancelled."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import suppress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qmcp.agentframework.runners import BaseRunner, PreparedRun, RunResult

log = logging.getLogger("qmcp.server")


class BackgroundRuns:
    """Tasks by execution id; a finished task removes itself."""

    def __init__(self) -> None:
        self._tasks: dict[uuid.UUID, asyncio.Task[RunResult]] = {}

    def start(self, runner: BaseRunner, prepared: PreparedRun) -> None:
        ident = prepared.execution_id
        task = asyncio.create_task(runner.finish(prepared), name=f"qmcp-run-{ident}")
        self._tasks[ident] = task
        task.add_done_callback(lambda t: self._done(ident, t))

    def _done(self, ident: uuid.UUID, task: asyncio.Task[RunResult]) -> None:
        self._tasks.pop(ident, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("background run %s crashed: %r", ident, task.exception())

    def running(self, ident: uuid.UUID) -> bool:
        return ident in self._tasks

    async def cancel(self, ident: uuid.UUID) -> bool:
        """Cancel a run of this process and wait until it has recorded itself as cancelled."""
        task = self._tasks.get(ident)
        if task is None:
            return False
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        return True

    async def shutdown(self) -> None:
        for ident in list(self._tasks):
            await self.cancel(ident)
