"""Tables and config models: agents, topologies, executions, invocations and their turns."""

from qmcp.agentframework.models.composition import MAX_NESTING, SubTopology
from qmcp.agentframework.models.config import (
    AgentConfig,
    CapabilityConfig,
    ModelConfig,
    Models,
    ToolServer,
)
from qmcp.agentframework.models.enums import (
    AgentRole,
    AggregationMethod,
    ConsensusMethod,
    ExecutionStatus,
    InvocationStatus,
    TopologyType,
)
from qmcp.agentframework.models.tables import (
    AgentMemory,
    AgentType,
    Approval,
    Execution,
    Invocation,
    InvocationTurn,
    ToolCall,
    Topology,
    TopologyMembership,
    utcnow,
)
from qmcp.agentframework.models.topology_configs import EnsembleConfig, PipelineConfig

__all__ = [
    "MAX_NESTING",
    "AgentConfig",
    "AgentMemory",
    "AgentRole",
    "AgentType",
    "AggregationMethod",
    "Approval",
    "CapabilityConfig",
    "ConsensusMethod",
    "EnsembleConfig",
    "Execution",
    "ExecutionStatus",
    "Invocation",
    "InvocationStatus",
    "InvocationTurn",
    "ModelConfig",
    "Models",
    "PipelineConfig",
    "SubTopology",
    "ToolCall",
    "ToolServer",
    "Topology",
    "TopologyMembership",
    "TopologyType",
    "utcnow",
]
