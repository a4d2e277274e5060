"""A topology kind's flow shape: how its invocations group into the steps of a scheduled flow.

Each kind declares its shape next to where it builds its invocation keys, as a function of
(config, slots) returning its steps in order. A step owns the keys that match one of its
patterns; the `MetaflowRunner` makes one flow step of each (`foreach` + join when `foreach`).

Patterns are matched segment by segment (segments are separated by `/`; shell-style wildcards
within a segment): `stage-0/*` owns `stage-0/plan`, `checker_*` owns `checker_1` but not
`revision-1/checker_1`. A key below a matching path belongs to the same step, so the calls of a
topology nested in a slot (`stage-1/panel/ensemble_0`) run in the step that owns the slot's call.

In a `foreach` step, each branch works the keys whose segment matched by the pattern's last
segment is the same (`ensemble_0`; `subtask-1` for `worker_*/subtask-*`): calls of one member,
including the ones that follow each other (a worker's answer, then its escalation), stay in one
branch, and branches run in parallel.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from qmcp.agentframework.errors import ValidationError

STEP_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


@dataclass(frozen=True)
class FlowStep:
    """One step of a flow: its name, the invocation keys it owns, and whether they fan out.

    `name` is a fixed word or a word with a number (`stage_0`, `checkers`); never a slot name or
    other user text, since it becomes an identifier in generated code.
    """

    name: str
    keys: tuple[str, ...]
    foreach: bool = False

    def __post_init__(self) -> None:
        if not STEP_NAME.match(self.name):
            raise ValidationError(
                f"flow step name {self.name!r} must be lowercase letters, digits and '_', "
                "starting with a letter (at most 48 characters)"
            )
        if not self.keys:
            raise ValidationError(f"flow step {self.name!r} owns no key pattern")

    def match(self, key: str) -> str | None:
        """The key's branch (the segment the pattern's last segment matched), None if not owned."""
        parts = key.split("/")
        for pattern in self.keys:
            segments = pattern.split("/")
            if len(parts) >= len(segments) and all(
                fnmatchcase(part, segment) for part, segment in zip(parts, segments, strict=False)
            ):
                return parts[len(segments) - 1]
        return None

    def owns(self, key: str) -> bool:
        return self.match(key) is not None


FlowShape = Callable[[Any, list[str]], list[FlowStep]]


def step_owning(shape: list[FlowStep], key: str) -> FlowStep | None:
    """The first step of `shape` that owns `key`."""
    return next((step for step in shape if step.owns(key)), None)


def check_shape(shape: list[FlowStep]) -> list[FlowStep]:
    """A shape with unique step names (the names become the flow's step names)."""
    names = [step.name for step in shape]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValidationError(f"flow step names repeat: {', '.join(repeated)}")
    return shape
