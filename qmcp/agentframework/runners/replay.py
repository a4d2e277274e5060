"""Run a topology program step by step: what the Metaflow runner's generated steps are made of.

A `ReplayContext` answers `invoke` from recorded outcomes; where none is recorded it stops the
program with `Pending`, naming every call the program is waiting for (all branches of a `gather`
at once). Running the program again after those calls are answered moves it forward. Because the
program is the same one LocalRunner and AsyncRunner run, and it is deterministic given its
recorded outcomes (see `TopologyKind`), the output is the same on every runner.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from qmcp.agentframework.errors import InvocationFailed
from qmcp.agentframework.topologies.base import Slots, SubTopology, TopologyKind, run_nested
from qmcp.agentframework.topologies.flow import FlowStep

T = TypeVar("T")
Outcome = dict[str, Any]  # {"ok": output} or {"failed": reason}


@dataclass(frozen=True)
class PendingCall:
    key: str
    slot: str
    payload: Any
    path: tuple[str, ...] = ()  # the outer slots, for a call inside nested topologies
    retries: int | None = None  # the call's own retry cap (a pipeline stage's budget)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "slot": self.slot,
            "payload": self.payload,
            "path": list(self.path),
            "retries": self.retries,
        }


class Pending(BaseException):
    """The program needs these calls answered before it can go on.

    A BaseException so that a topology's `except Exception` cannot swallow it.
    """

    def __init__(self, calls: list[PendingCall]) -> None:
        super().__init__(f"{len(calls)} pending call(s)")
        self.calls = calls


class ReplayContext(Slots):
    """A `RunContext` over recorded outcomes, key by key, in the order the program asks."""

    def __init__(
        self,
        agents: Mapping[str, Any],
        outcomes: Mapping[str, list[Outcome]],
        prefix: str = "",
        path: tuple[str, ...] = (),
        asked: dict[str, int] | None = None,
    ) -> None:
        self.agents = agents
        self.outcomes = outcomes
        self.prefix = prefix
        self.path = path
        self.asked: dict[str, int] = {} if asked is None else asked

    async def invoke(
        self, slot: str, payload: Any, *, key: str | None = None, retries: int | None = None
    ) -> dict[str, Any]:
        key = self.prefix + (key or slot)
        member = self.agent(slot)
        if isinstance(member, SubTopology):
            return await self._nested(slot, member, payload, key)
        index = self.asked.get(key, 0)
        self.asked[key] = index + 1
        recorded = self.outcomes.get(key, [])
        if index >= len(recorded):
            raise Pending([PendingCall(key, slot, payload, self.path, retries)])
        outcome = recorded[index]
        if "ok" in outcome:
            return dict(outcome["ok"])
        raise InvocationFailed(key, slot, str(outcome.get("failed", "unknown error")))

    async def _nested(self, slot: str, sub: SubTopology, payload: Any, key: str) -> dict[str, Any]:
        child = ReplayContext(sub.agents, self.outcomes, f"{key}/", (*self.path, slot), self.asked)
        return await run_nested(child, len(self.path) + 1, slot, sub, payload, key)

    async def gather(self, awaitables: Iterable[Awaitable[T]]) -> list[T]:
        """Every branch in turn; the calls all of them wait for are pending together."""
        items = list(awaitables)
        results: list[T] = []
        pending: list[PendingCall] = []
        done = 0
        try:
            for item in items:
                done += 1
                try:
                    results.append(await item)
                except Pending as signal:
                    pending.extend(signal.calls)
        finally:
            for item in items[done:]:
                if inspect.iscoroutine(item):
                    item.close()  # a branch failed first: the rest never start
        if pending:
            raise Pending(pending)
        return results


@dataclass
class Replayed:
    """Where a program stands over some outcomes: its output, or the calls it waits for."""

    output: dict[str, Any] | None
    pending: list[PendingCall]
    asked: dict[str, int] = field(default_factory=dict)  # how often it asked for each key


async def replay(
    kind: TopologyKind,
    config: Any,
    agents: Mapping[str, Any],
    input: dict[str, Any],
    outcomes: Mapping[str, list[Outcome]],
) -> Replayed:
    """Run the program over `outcomes`; a topology failure (a QmcpError) propagates."""
    ctx = ReplayContext(agents, outcomes)
    try:
        output = await kind.run(ctx, config, input)
    except Pending as signal:
        return Replayed(None, signal.calls, ctx.asked)
    return Replayed(output, [], ctx.asked)


def owned(calls: list[PendingCall], step: FlowStep, branch: str | None = None) -> list[PendingCall]:
    """The calls `step` owns (in `branch` only, if given), in the order the program asked."""
    mine = []
    for call in calls:
        matched = step.match(call.key)
        if matched is not None and (branch is None or matched == branch):
            mine.append(call)
    return mine


def branches(calls: list[PendingCall], step: FlowStep) -> list[str]:
    """The distinct branches of the calls `step` owns, in order: a foreach step's work list."""
    found: list[str] = []
    for call in calls:
        matched = step.match(call.key)
        if matched is not None and matched not in found:
            found.append(matched)
    return found


def resolve_agent(agents: Mapping[str, Any], path: list[str] | tuple[str, ...], slot: str) -> Any:
    """The agent a pending call names, through the nested topologies on its path."""
    scope: Mapping[str, Any] = agents
    for outer in path:
        scope = scope[outer].agents
    return scope[slot]
