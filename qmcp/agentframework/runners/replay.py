"""Run a topology program step by step: what the Metaflow runner's generated steps are made of.

A `ReplayContext` answers `invoke` from recorded outcomes; where none is recorded it stops the
program with `Pending`, naming every call the program is waiting for (all branches of a `gather`
at once). Running the program again after those calls are answered moves it forward. Because the
program is the same one LocalRunner and AsyncRunner run, the output is the same on every runner.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from qmcp.agentframework.errors import InvocationFailed
from qmcp.agentframework.topologies.base import Slots, SubTopology, run_nested

T = TypeVar("T")
Outcome = dict[str, Any]  # {"ok": output} or {"failed": reason}


@dataclass(frozen=True)
class PendingCall:
    key: str
    slot: str
    payload: Any
    path: tuple[str, ...] = ()  # the outer slots, for a call inside nested topologies

    def as_dict(self) -> dict[str, Any]:
    retries: int | None = None  # the call's own retry cap (a pipeline stage's budget)
        return {
            "key": self.key,
            "slot": self.slot,
            "payload": self.payload,
            "path": list(self.path),
        }

            "retries": self.retries,

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
        outcomes: dict[str, list[Outcome]],
        prefix: str = "",
        path: tuple[str, ...] = (),
        seen: dict[str, int] | None = None,
    ) -> None:
        self.agents = agents
        self.outcomes = outcomes
        self.prefix = prefix
        self.path = path
        self._seen: dict[str, int] = {} if seen is None else seen

    async def invoke(
        self, slot: str, payload: Any, *, key: str | None = None, retries: int | None = None
    ) -> dict[str, Any]:
        key = self.prefix + (key or slot)
        member = self.agent(slot)
        if isinstance(member, SubTopology):
            return await self._nested(slot, member, payload, key)
        index = self._seen.get(key, 0)
        self._seen[key] = index + 1
        recorded = self.outcomes.get(key, [])
        if index >= len(recorded):
            raise Pending([PendingCall(key, slot, payload, self.path, retries)])
        outcome = recorded[index]
        if "ok" in outcome:
            return dict(outcome["ok"])
        raise InvocationFailed(key, slot, str(outcome.get("failed", "unknown error")))

    async def _nested(self, slot: str, sub: SubTopology, payload: Any, key: str) -> dict[str, Any]:
        child = ReplayContext(sub.agents, self.outcomes, f"{key}/", (*self.path, slot), self._seen)
        return await run_nested(child, len(self.path) + 1, slot, sub, payload, key)

    async def gather(self, awaitables: Iterable[Awaitable[T]]) -> list[T]:
        results: list[T] = []
        pending: list[PendingCall] = []
        for item in list(awaitables):
            try:
                results.append(await item)
            except Pending as signal:
                pending.extend(signal.calls)
        if pending:
            raise Pending(pending)
        return results


def owned(calls: list[PendingCall], patterns: list[str]) -> list[PendingCall]:
    """The calls whose keys match one of `patterns` (shell-style: `stage-0/*`, `checker_*`)."""
    return [c for c in calls if any(fnmatch.fnmatchcase(c.key, p) for p in patterns)]


def resolve_agent(agents: Mapping[str, Any], path: list[str] | tuple[str, ...], slot: str) -> Any:
    """The agent a pending call names, through the nested topologies on its path."""
    scope: Mapping[str, Any] = agents
    for outer in path:
        scope = scope[outer].agents
    return scope[slot]
