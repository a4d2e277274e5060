"""Runners execute topologies: in-process, concurrently, or as generated Metaflow flows."""

from qmcp.agentframework.runners.async_runner import AsyncRunner
from qmcp.agentframework.runners.base import (
    BaseRunner,
    RunConfig,
    RunnerRegistry,
    RunResult,
    runner,
)
from qmcp.agentframework.runners.engine import InvocationEvent
from qmcp.agentframework.runners.local import LocalRunner

__all__ = [
    "AsyncRunner",
    "BaseRunner",
    "InvocationEvent",
    "LocalRunner",
    "RunConfig",
    "RunResult",
    "RunnerRegistry",
    "runner",
]
