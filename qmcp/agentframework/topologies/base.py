"""What a topology kind is, the run context it is written against, and the registry of kinds.

A kind is an async program over a `RunContext`; runners supply the context and decide how
`gather` schedules work, so the same program runs in-process, concurrently, or on Metaflow.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from qmcp.agentframework.errors import (
    InvocationFailed,
    NotFoundError,
    QmcpError,
    ValidationError,
    describe_validation_error,
    known,
)
from qmcp.agentframework.human import AwaitingHuman
from qmcp.agentframework.models import MAX_NESTING, AgentType, SubTopology, TopologyType
from qmcp.agentframework.registry import Registry
from qmcp.agentframework.topologies.flow import FlowShape

T = TypeVar("T")
Output = dict[str, Any]


class RunContext(Protocol):
    """The only way a topology touches agents."""

    def slots(self, prefix: str | None = None) -> list[str]:
        """Slot names in their declared order, optionally only those starting with `prefix`."""
        ...

    def agent(self, slot: str) -> AgentType: ...

    async def invoke(
        self, slot: str, payload: Any, *, key: str | None = None, retries: int | None = None
    ) -> Output:
        """Call the agent in `slot`; raises `InvocationFailed` once its retries are spent.

        `retries` caps the retries of this call (transient errors only) below the run's
        `RunConfig.max_retries`; retries never stack.
        """
        ...

    async def try_invoke(
        self, slot: str, payload: Any, *, key: str | None = None, retries: int | None = None
    ) -> Output | InvocationFailed:
        """Like `invoke`, but a failed invocation is returned instead of raised."""
        ...

    async def gather(self, awaitables: Iterable[Awaitable[T]]) -> list[T]:
        """Await all, in order of the results; the runner decides whether they overlap."""
        ...


Program = Callable[[RunContext, Any, dict[str, Any]], Awaitable[Output]]
SlotCheck = Callable[[Any, list[str]], None]
Estimate = Callable[[Any, list[str]], int]


@dataclass(frozen=True)
class TopologyKind:
    """One topology kind: its config model, its slot rules, its program and its flow shape.

    The program (`run`) is the kind's semantics, written once against a `RunContext`, and it must
    be deterministic given its recorded outcomes: with the same config, slots and input, and the
    same answer (or failure) for each invocation, it asks for the same invocations (same keys and
    payloads, in the same order for each key) and returns the same output. It reads no clock, no
    randomness, no environment and does no I/O except through `ctx`. Runners rely on this: a
    resume answers completed keys from their checkpoints, and each step of a Metaflow flow replays
    the program over the outcomes recorded so far to find the calls it owns.

    `flow_shape` declares how the program's invocations group into the steps of a scheduled flow
    (`topologies.flow`), next to where the kind builds its keys; None runs them all in one step.
    `input_field` is the input key a caller fills with the request (the first the program reads).
    """

    type: TopologyType
    config_model: builtins.type[BaseModel]
    run: Program
    check_slots: SlotCheck
    estimate: Estimate
    summary: str
    flow_shape: FlowShape | None = None
    input_field: str = "prompt"

    def parse_config(self, raw: Mapping[str, Any] | BaseModel | None) -> Any:
        if isinstance(raw, self.config_model):
            return raw
        data = raw.model_dump() if isinstance(raw, BaseModel) else dict(raw or {})
        try:
            return self.config_model.model_validate(data)
        except PydanticValidationError as exc:
            raise ValidationError(
                f"invalid {self.type.value} config: {describe_validation_error(exc)}"
            ) from None

    def validate(self, raw_config: Any, slots: Iterable[str]) -> Any:
        """Parse the config and check the slots against it; the parsed config on success."""
        config = self.parse_config(raw_config)
        self.check_slots(config, list(slots))
        return config


class _Kinds(Registry[TopologyKind]):
    """The topology kinds this installation can run, by type (aliases accepted)."""

    def __init__(self) -> None:
        super().__init__(
            "topology type",
            hint="`qmcp agents topologies create --help`",
            normalize=lambda name: TopologyType.parse(name).value,
        )

    def add(self, kind: TopologyKind) -> TopologyKind:
        return self.register(kind.type.value, kind)


TopologyRegistry = _Kinds()


def require_slots(kind: str, present: list[str], required: Iterable[str]) -> None:
    missing = [slot for slot in required if slot not in present]
    if missing:
        raise ValidationError(
            f"{kind} topology is missing slot(s) {known(missing)}; assign an agent to each "
            f"(slots given: {known(present) or 'none'})"
        )


def reject_unexpected(kind: str, unexpected: list[str], expected: str) -> None:
    if unexpected:
        raise ValidationError(
            f"{kind} topology does not use slot(s) {known(unexpected)}; its slots are {expected}"
        )


class Slots:
    """The slots of one topology level, in their declared order (shared by run contexts)."""

    agents: Mapping[str, Any]

    def slots(self, prefix: str | None = None) -> list[str]:
        return [s for s in self.agents if prefix is None or s.startswith(prefix)]

    def agent(self, slot: str) -> Any:
        try:
            return self.agents[slot]
        except KeyError:
            raise NotFoundError(f"no agent in slot {slot!r}") from None

    async def try_invoke(
        self, slot: str, payload: Any, *, key: str | None = None, retries: int | None = None
    ) -> dict[str, Any] | InvocationFailed:
        try:
            return await self.invoke(slot, payload, key=key, retries=retries)  # type: ignore[attr-defined,no-any-return]
        except InvocationFailed as exc:
            return exc


def nested_input(payload: Any) -> dict[str, Any]:
    """What a sub-topology receives: the payload as given, or a prompt if it is not an object."""
    from qmcp.agentframework.text import render_payload

    return dict(payload) if isinstance(payload, dict) else {"prompt": render_payload(payload)}


async def run_nested(
    child: RunContext, depth: int, slot: str, sub: SubTopology, payload: Any, key: str
) -> Output:
    """Run a nested topology in `child` (a context over its slots) and answer like an agent.

    Its own failure is a failed invocation of the outer slot, so outer failure policies apply.
    """
    if depth > MAX_NESTING:
        raise InvocationFailed(key, slot, f"topologies nest deeper than {MAX_NESTING} levels")
    kind = TopologyRegistry.get(sub.topology.topology_type)
    try:
        output = await kind.run(
            child, kind.parse_config(sub.topology.config), nested_input(payload)
        )
    except (InvocationFailed, AwaitingHuman):  # a wait (a human, the client's model) stays one
        raise
    except QmcpError as exc:
        raise InvocationFailed(key, slot, f"topology {sub.name!r}: {exc}") from None
    return {"content": output["content"], "agent": sub.name, "slot": slot, "topology": output}
