"""Capability mixins: named, versioned changes to how an agent is invoked."""

from qmcp.agentframework.mixins.base import (
    Mixin,
    MixinConfig,
    MixinContext,
    MixinRegistry,
    OutputRejected,
)
from qmcp.agentframework.mixins.memory import Memory
from qmcp.agentframework.mixins.reasoning import Reasoning
from qmcp.agentframework.mixins.structured_output import StructuredOutput

for _mixin in (Reasoning, StructuredOutput, Memory):
    MixinRegistry.register(_mixin)

__all__ = [
    "Memory",
    "Mixin",
    "MixinConfig",
    "MixinContext",
    "MixinRegistry",
    "OutputRejected",
    "Reasoning",
    "StructuredOutput",
]
