"""Runners execute topologies: in-process, concurrently, or as generated Metaflow flows."""

from qmcp.agentframework.runners.async_runner import AsyncRunner
from qmcp.agentframework.runners.base import (
    BaseRunner,
    PreparedRun,
    RunConfig,
    RunnerRegistry,
    RunResult,
    runner,
)
from qmcp.agentframework.runners.engine import InvocationEvent
from qmcp.agentframework.runners.local import LocalRunner
from qmcp.agentframework.runners.metaflow_runner import MetaflowRunner

__all__ = [
    "AsyncRunner",
    "BaseRunner",
    "InvocationEvent",
    "LocalRunner",
    "MetaflowRunner",
    "PreparedRun",
    "RunConfig",
    "RunResult",
    "RunnerRegistry",
    "runner",
]
