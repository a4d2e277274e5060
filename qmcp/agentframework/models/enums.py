"""Enumerations shared by tables, configs and the CLI."""

from __future__ import annotations

from enum import StrEnum

from qmcp.agentframework.errors import ValidationError, known


class AgentRole(StrEnum):
    PLANNER = "planner"
    EXECUTOR = "executor"
    REVIEWER = "reviewer"
    CRITIC = "critic"
    SYNTHESIZER = "synthesizer"
    SPECIALIST = "specialist"
    COORDINATOR = "coordinator"
    OBSERVER = "observer"

    @classmethod
    def parse(cls, value: str | AgentRole) -> AgentRole:
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ValidationError(
                f"unknown role {value!r}; known: {known(r.value for r in cls)}"
            ) from None


class TopologyType(StrEnum):
    PIPELINE = "pipeline"
    ENSEMBLE = "ensemble"
    DEBATE = "debate"
    CROSS_CHECK = "cross_check"
    CHAIN_OF_COMMAND = "chain_of_command"
    DELEGATION = "delegation"

    @classmethod
    def parse(cls, value: str | TopologyType) -> TopologyType:
        text = str(value).strip().lower()
        text = _TOPOLOGY_ALIASES.get(text, text)
        try:
            return cls(text)
        except ValueError:
            raise ValidationError(
                f"unknown topology type {value!r}; known: {known(t.value for t in cls)}"
            ) from None


# The reference design spelled two kinds inconsistently; accept its spellings as aliases.
_TOPOLOGY_ALIASES = {"chain": "chain_of_command", "crosscheck": "cross_check"}


class ExecutionStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self in (
            ExecutionStatus.COMPLETED,
            ExecutionStatus.FAILED,
            ExecutionStatus.CANCELLED,
        )

    @property
    def resumable(self) -> bool:
        return self in (
            ExecutionStatus.PENDING,  # waiting for a human decision
            ExecutionStatus.FAILED,
            ExecutionStatus.CANCELLED,
            ExecutionStatus.INTERRUPTED,
        )


class InvocationStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"


class AggregationMethod(StrEnum):
    VOTE = "vote"
    AVERAGE = "average"
    CONCAT = "concat"
    BEST_OF = "best_of"
    SYNTHESIS = "synthesis"


class ConsensusMethod(StrEnum):
    MAJORITY = "majority"
    UNANIMOUS = "unanimous"
    WEIGHTED = "weighted"
