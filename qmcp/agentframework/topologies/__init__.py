"""Topology kinds (one module each), aggregation, and the `TopologyRegistry`."""

from qmcp.agentframework.topologies import (
    chain_of_command,
    cross_check,
    debate,
    delegation,
    ensemble,
    pipeline,
)
from qmcp.agentframework.topologies.aggregation import aggregate, synthesis_prompt
from qmcp.agentframework.topologies.base import (
    MAX_NESTING,
    Output,
    RunContext,
    SubTopology,
    TopologyKind,
    TopologyRegistry,
)
from qmcp.agentframework.topologies.chain_of_command import ChainOfCommandConfig
from qmcp.agentframework.topologies.cross_check import CrossCheckConfig
from qmcp.agentframework.topologies.debate import DebateConfig
from qmcp.agentframework.topologies.delegation import DelegationConfig

BUILTIN_KINDS = (
    pipeline.KIND,
    ensemble.KIND,
    debate.KIND,
    cross_check.KIND,
    chain_of_command.KIND,
    delegation.KIND,
)

__all__ = [
    "BUILTIN_KINDS",
    "MAX_NESTING",
    "ChainOfCommandConfig",
    "CrossCheckConfig",
    "DebateConfig",
    "DelegationConfig",
    "Output",
    "RunContext",
    "SubTopology",
    "TopologyKind",
    "TopologyRegistry",
    "aggregate",
    "synthesis_prompt",
]
