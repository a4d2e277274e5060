"""The owner's side of an execution's lease: a heartbeat that renews it and hears a cancel.

While a run goes, its owner renews the lease every third of `QMCP_LEASE_SECONDS` in one small
transaction that also reads the execution's cancel flag. A cancel asked for from any process
(`qmcp executions cancel`, `executions_cancel`) is heard there, or sooner at the next invocation
(`check`, at most once a second), and stops the run: `on_stop` cancels its task group, whose
in-flight calls end with it. A lease found taken by another process stops the run too: it is
no longer this process's to record.

The same UPDATE that renews the lease writes the run's invocations in flight (`in_flight`, the
engine's keys with their start times) into the execution row, so a view in another process sees
which calls are in progress, at most a heartbeat late; no write is added per invocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Literal

from qmcp.agentframework.models import ExecutionStatus
from qmcp.agentframework.store import Store, lease_seconds

log = logging.getLogger("qmcp.run")
Stop = Literal["cancelled", "lost"]
# The invocation-boundary check reads the flag at most this often (a read per model call
# would cost a small run more than the run itself).
CHECK_SECONDS = 1.0


class Lease:
    """Renew `execution_id`'s lease for `owner` in the background while in `async with`."""

    def __init__(
        self,
        store: Store,
        execution_id: uuid.UUID,
        owner: str,
        on_stop: Callable[[Stop], object],
        in_flight: Mapping[str, datetime] | None = None,
    ) -> None:
        self.store = store
        # The engine's live map of invocations in flight (read at each beat), or None: then the
        # heartbeat leaves the column alone (an owner that invokes nothing itself).
        self.in_flight = in_flight
        self.execution_id = execution_id
        self.owner = owner
        self.on_stop = on_stop
        self.seconds = lease_seconds()
        self.stopped: Stop | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._checked = time.monotonic()

    async def __aenter__(self) -> Lease:
        # A timer, not a task: a run shorter than a beat (most small ones) never starts one.
        self._timer = asyncio.get_running_loop().call_later(self.seconds / 3, self._start)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _start(self) -> None:
        self._task = asyncio.create_task(self._beat(), name=f"qmcp-lease-{self.execution_id}")

    @property
    def reason(self) -> str:
        if self.stopped == "lost":
            return (
                "this process lost the execution's lease (it did not renew it in time) and "
                "another process took the run over"
            )
        return "cancelled"

    async def _beat(self) -> None:
        while self.stopped is None:
            try:
                if not await self.renew():
                    return
            except Exception:  # a database hiccup: the next beat tries again, within the lease
                log.warning("execution %s: lease renewal failed", self.execution_id, exc_info=True)
            await asyncio.sleep(self.seconds / 3)

    async def renew(self) -> bool:
        """One heartbeat; False once there is nothing left to renew."""
        in_flight = None if self.in_flight is None else dict(self.in_flight)
        state = await self.store.renew_lease(self.execution_id, self.owner, in_flight)
        self._checked = time.monotonic()
        if state.status != ExecutionStatus.RUNNING:
            return False  # finished (a flow's step process recorded it): nothing to hold
        if not state.held:
            self._stop("lost")
            return False
        if state.cancel_requested:
            self._stop("cancelled")
            return False
        return True

    async def check(self) -> None:
        """Between invocations: honour a cancel asked for since the last look (throttled)."""
        if self.stopped is not None or time.monotonic() - self._checked < CHECK_SECONDS:
            return
        self._checked = time.monotonic()
        if await self.store.cancel_requested(self.execution_id):
            self._stop("cancelled")
            await asyncio.sleep(0)  # the cancel lands here, before the next model call

    def _stop(self, why: Stop) -> None:
        if self.stopped is None:
            self.stopped = why
            log.warning("execution %s: %s", self.execution_id, self.reason)
            self.on_stop(why)
