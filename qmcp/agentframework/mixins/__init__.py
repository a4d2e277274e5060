"""Capability mixins: named, versioned changes to how an agent is invoked."""

from qmcp.agentframework.mixins.base import (
    Mixin,
    MixinConfig,
    MixinContext,
    MixinRegistry,
    OutputRejected,
)
from qmcp.agentframework.mixins.human_in_loop import HumanInLoop
from qmcp.agentframework.mixins.memory import Memory
from qmcp.agentframework.mixins.reasoning import Reasoning
from qmcp.agentframework.mixins.structured_output import StructuredOutput
from qmcp.agentframework.mixins.tool_use import ToolUse

__all__ = [
    "HumanInLoop",
    "Memory",
    "Mixin",
    "MixinConfig",
    "MixinContext",
    "MixinRegistry",
    "OutputRejected",
    "Reasoning",
    "StructuredOutput",
    "ToolUse",
]
