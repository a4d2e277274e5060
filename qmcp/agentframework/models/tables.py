"""The database tables: agent types, topologies, memberships, executions, invocations, turns,
tool calls, memories and approvals.

A change here is a schema change: it needs a migration in `qmcp/agentframework/store/migrations`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel
from sqlmodel.main import SQLModelConfig

from qmcp.agentframework.models.enums import (
    AgentRole,
    ExecutionStatus,
    InvocationStatus,
    TopologyType,
)


class _Table(SQLModel):
    """The tables' common base: pydantic builds a table's validator and serializer the first
    time they are used, not at import. The store writes with Core statements and loads rows
    through the ORM, neither of which validates, so most processes never build them."""

    model_config = SQLModelConfig(defer_build=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kw: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True), **kw)


class AgentType(_Table, table=True):
    """A named agent: its role and its `AgentConfig` (as JSON)."""

    __tablename__ = "agent_types"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=100)
    description: str = Field(default="", sa_type=Text)
    role: AgentRole = Field(default=AgentRole.EXECUTOR)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    version: int = Field(default=1)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Topology(_Table, table=True):
    """A named collaboration pattern: its kind and its typed config (as JSON)."""

    __tablename__ = "topologies"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=100)
    description: str = Field(default="", sa_type=Text)
    topology_type: TopologyType
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    version: int = Field(default=1)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class TopologyMembership(_Table, table=True):
    """One slot of a stored topology, filled by an agent type or by another topology."""

    __tablename__ = "topology_memberships"
    __table_args__ = (UniqueConstraint("topology_id", "slot_name"),)

    id: int | None = Field(default=None, primary_key=True)
    topology_id: int = Field(
        sa_column=Column(Integer, ForeignKey("topologies.id", ondelete="CASCADE"), nullable=False)
    )
    slot_name: str = Field(max_length=100)
    position: int = Field(default=0)
    agent_type_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("agent_types.id", ondelete="RESTRICT"), nullable=True),
    )
    sub_topology_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("topologies.id", ondelete="RESTRICT"), nullable=True),
    )


class Execution(_Table, table=True):
    """One run of a topology. The row exists before the first invocation."""

    __tablename__ = "executions"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    topology_name: str = Field(index=True, max_length=100)
    topology_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("topologies.id", ondelete="SET NULL"), nullable=True),
    )
    runner_type: str = Field(max_length=50)
    status: ExecutionStatus = Field(default=ExecutionStatus.PENDING, index=True)
    input: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    output: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    error: str | None = Field(default=None, sa_type=Text)
    correlation_id: str | None = Field(default=None, index=True, max_length=200)
    # What is needed to resume without the original objects: topology, agents, run config.
    snapshot: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    owner: str | None = Field(default=None, max_length=200)
    created_at: datetime = _ts(index=True)
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    completed_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    duration_ms: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    invocation_count: int = 0
    # The owner's lease, renewed while it runs: lapsed means interrupted, on any host.
    lease_expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # A cancel asked for by any process; the owner honours it at its next heartbeat.
    cancel_requested_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # Where a Metaflow run of it is: the flow file, the run, and the step running last.
    metaflow_flow_file: str | None = Field(default=None, sa_type=Text)
    metaflow_run_id: str | None = Field(default=None, max_length=100)
    metaflow_pathspec: str | None = Field(default=None, max_length=300)
    metaflow_step: str | None = Field(default=None, max_length=100)
    # The invocations in flight at the owner's last heartbeat ({key: started_at ISO}), for views
    # in other processes; cleared when the run ends. NULL (not JSON null) when none.
    in_flight: dict[str, str] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True), nullable=True)
    )


class Invocation(_Table, table=True):
    """One attempt at one agent call; the completed row for a key is its checkpoint."""

    __tablename__ = "invocations"
    __table_args__ = (Index("ix_invocations_execution_key", "execution_id", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    execution_id: uuid.UUID = Field(
        sa_column=Column(
            ForeignKey("executions.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    key: str = Field(max_length=500)
    slot: str = Field(max_length=100)
    agent_name: str = Field(max_length=100)
    provider: str = Field(max_length=50)
    model: str = Field(max_length=200)
    input: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    output: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    error: str | None = Field(default=None, sa_type=Text)
    attempt: int = 1
    status: InvocationStatus
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    duration_ms: float = 0.0
    started_at: datetime = Field(sa_type=DateTime(timezone=True))
    completed_at: datetime = Field(sa_type=DateTime(timezone=True))
    flow_step: str | None = Field(default=None, max_length=100)  # the Metaflow step that ran it


class InvocationTurn(_Table, table=True):
    """One model turn of a multi-turn invocation (a conversation with tool calls).

    Each turn is recorded as it completes, so an invocation interrupted between turns resumes
    from its last recorded turn. `content` holds content blocks: `{"type": "text", "text"}`,
    `{"type": "tool_use", "id", "name", "input"}`, `{"type": "tool_result", "tool_use_id",
    "content", "is_error"}`.
    """

    __tablename__ = "invocation_turns"
    __table_args__ = (UniqueConstraint("execution_id", "key", "turn"),)

    id: int | None = Field(default=None, primary_key=True)
    execution_id: uuid.UUID = Field(
        sa_column=Column(
            ForeignKey("executions.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    key: str = Field(max_length=500)
    turn: int  # 0-based position in the conversation
    role: str = Field(max_length=20)  # "assistant" | "user"
    content: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    model: str = Field(default="", max_length=200)
    input_tokens: int = 0
    output_tokens: int = 0
    created_at: datetime = _ts()


class ToolCall(_Table, table=True):
    """One tool call of an invocation: recorded as `running` before the call and completed
    after it, so a resumed run replays a finished call instead of making it again, and knows
    which calls were in flight when the process stopped."""

    __tablename__ = "tool_calls"
    __table_args__ = (UniqueConstraint("execution_id", "key", "call_id"),)

    id: int | None = Field(default=None, primary_key=True)
    execution_id: uuid.UUID = Field(
        sa_column=Column(
            ForeignKey("executions.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    key: str = Field(max_length=500)  # the invocation's key
    call_id: str = Field(max_length=200)  # the model's tool-use id
    server: str = Field(max_length=64)
    tool: str = Field(max_length=128)
    arguments: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(max_length=20)  # running | completed | failed | skipped | rejected
    result: str | None = Field(default=None, sa_type=Text)  # what the model was given
    is_error: bool = False
    error: str | None = Field(default=None, sa_type=Text)
    duration_ms: float | None = None
    started_at: datetime = _ts()
    completed_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class AgentMemory(_Table, table=True):
    """What the `memory` mixin keeps for an agent across executions."""

    __tablename__ = "agent_memories"

    id: int | None = Field(default=None, primary_key=True)
    owner: str = Field(index=True, max_length=100)
    execution_id: uuid.UUID
    key: str = Field(max_length=500)
    content: str = Field(sa_type=Text)
    created_at: datetime = _ts()


class Approval(_Table, table=True):
    """A human decision the `human_in_loop` mixin asked for: pending until someone answers."""

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("execution_id", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    execution_id: uuid.UUID = Field(index=True)
    key: str = Field(max_length=500)
    agent_name: str = Field(max_length=100)
    question: str = Field(sa_type=Text)
    proposed: str = Field(sa_type=Text)
    status: str = Field(default="pending", max_length=20, index=True)  # pending|approved|rejected
    comment: str | None = Field(default=None, sa_type=Text)
    edited: str | None = Field(default=None, sa_type=Text)
    decided_by: str | None = Field(default=None, max_length=50)  # cli | mcp-tool | elicitation
    created_at: datetime = _ts()
    decided_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
