"""The mixin protocol and `MixinRegistry`: name, version, description, config, dependencies.

A mixin changes an invocation through hooks: `prepare` edits the request before the model is
called, `finish` checks or reshapes the answer (and may reject it for one repair attempt),
`after_commit` runs once the invocation is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from qmcp.agentframework.errors import QmcpError, ValidationError, describe_validation_error
from qmcp.agentframework.registry import Registry

if TYPE_CHECKING:
    import uuid

    from qmcp.agentframework.llm import LLMRequest
    from qmcp.agentframework.models import AgentType, CapabilityConfig
    from qmcp.agentframework.store import Store


class MixinConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputRejected(QmcpError):
    """A mixin refused an answer; `repair` is what the model is told when asked again."""

    def __init__(self, reason: str, repair: str) -> None:
        super().__init__(reason)
        self.repair = repair


@dataclass(frozen=True)
class MixinContext:
    execution_id: uuid.UUID
    store: Store
    agent: AgentType
    slot: str
    key: str


class Mixin:
    """A capability that changes an invocation through lifecycle hooks."""

    name: ClassVar[str]
    version: ClassVar[str] = "1.0"
    description: ClassVar[str] = ""
    dependencies: ClassVar[tuple[str, ...]] = ()
    config_model: ClassVar[type[MixinConfig]] = MixinConfig

    def __init__(self, config: MixinConfig) -> None:
        self.config = config

    @property
    def max_repairs(self) -> int:
        """How many times an answer `finish` rejected may be repaired (0: none)."""
        return 0

    async def prepare(self, request: LLMRequest, ctx: MixinContext) -> LLMRequest:
        return request

    async def finish(self, output: dict[str, Any], ctx: MixinContext) -> None:
        """Check or reshape `output` in place; raise `OutputRejected` to ask for a repair."""

    async def after_commit(self, output: dict[str, Any], ctx: MixinContext) -> None:
        """Runs after the invocation's row is recorded."""

    async def gate(self, output: dict[str, Any], ctx: MixinContext) -> None:
        """Runs on every use of a recorded answer, fresh or from a checkpoint (approvals)."""


class _Mixins(Registry[type[Mixin]]):
    """Mixin classes by name; `resolve` turns an agent's capabilities into instances."""

    def __init__(self) -> None:
        super().__init__("mixin", hint="`qmcp agents mixins`")

    def add(self, mixin: type[Mixin]) -> type[Mixin]:
        """Register a mixin class under its `name` (usable as a class decorator)."""
        return self.register(mixin.name, mixin)

    def resolve(self, capabilities: list[CapabilityConfig]) -> list[Mixin]:
        """Enabled mixins with their dependencies, dependencies first; cycles are rejected."""
        configs = {c.name: c.config for c in capabilities if c.enabled}
        ordered: list[str] = []
        visiting: list[str] = []

        def visit(name: str) -> None:
            if name in ordered:
                return
            if name in visiting:
                cycle = " -> ".join([*visiting[visiting.index(name) :], name])
                raise ValidationError(f"mixin dependencies form a cycle: {cycle}")
            visiting.append(name)
            for dependency in self.get(name).dependencies:
                visit(dependency)
            visiting.pop()
            ordered.append(name)

        for name in configs:
            visit(name)
        instances = []
        for name in ordered:
            mixin = self.get(name)
            try:
                config = mixin.config_model.model_validate(configs.get(name, {}))
            except PydanticValidationError as exc:
                raise ValidationError(
                    f"invalid config for mixin {name!r}: {describe_validation_error(exc)}"
                ) from None
            instances.append(mixin(config))
        return instances

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": m.name,
                "version": m.version,
                "description": m.description,
                "dependencies": list(m.dependencies),
                "config_schema": m.config_model.model_json_schema(),
            }
            for m in sorted(self.items(), key=lambda m: m.name)
        ]


MixinRegistry = _Mixins()
