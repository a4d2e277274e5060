"""Topology kinds (one module each), aggregation, and the `TopologyRegistry`."""

from qmcp.agentframework.topologies import ensemble, pipeline
from qmcp.agentframework.topologies.aggregation import aggregate, synthesis_prompt
from qmcp.agentframework.topologies.base import (
    Output,
    RunContext,
    TopologyKind,
    TopologyRegistry,
)

TopologyRegistry.register(pipeline.KIND)
TopologyRegistry.register(ensemble.KIND)

__all__ = [
    "Output",
    "RunContext",
    "TopologyKind",
    "TopologyRegistry",
    "aggregate",
    "synthesis_prompt",
]
