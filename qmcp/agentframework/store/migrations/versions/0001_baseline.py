"""Baseline: the schema of qmcp 0.1.0, which kept no version number.

A database without a version table but with qmcp's tables was made by 0.1.0: it is stamped with
this revision and upgraded from here.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AGENT_ROLES = (
    "PLANNER",
    "EXECUTOR",
    "REVIEWER",
    "CRITIC",
    "SYNTHESIZER",
    "SPECIALIST",
    "COORDINATOR",
    "OBSERVER",
)
TOPOLOGY_TYPES = ("PIPELINE", "ENSEMBLE", "DEBATE", "CROSS_CHECK", "CHAIN_OF_COMMAND", "DELEGATION")
EXECUTION_STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED")
INVOCATION_STATUSES = ("COMPLETED", "FAILED")
ENUMS = (
    ("agentrole", AGENT_ROLES),
    ("topologytype", TOPOLOGY_TYPES),
    ("executionstatus", EXECUTION_STATUSES),
    ("invocationstatus", INVOCATION_STATUSES),
)


def _enum(name: str) -> sa.Enum:
    return sa.Enum(*dict(ENUMS)[name], name=name)


def _timestamp(nullable: bool = False, name: str = "created_at") -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "agent_memories",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("execution_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=500), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        _timestamp(),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_agent_memories_owner", "agent_memories", ["owner"], unique=False)
    op.create_table(
        "agent_types",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("role", _enum("agentrole"), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _timestamp(),
        _timestamp(name="updated_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_agent_types_name", "agent_types", ["name"], unique=True)
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("execution_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=500), nullable=False),
        sa.Column("agent_name", sa.String(length=100), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("proposed", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("edited", sa.Text(), nullable=True),
        sa.Column("decided_by", sa.String(length=50), nullable=True),
        _timestamp(),
        _timestamp(nullable=True, name="decided_at"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("execution_id", "key"),
    )
    op.create_index("ix_approvals_execution_id", "approvals", ["execution_id"], unique=False)
    op.create_index("ix_approvals_status", "approvals", ["status"], unique=False)
    op.create_table(
        "topologies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("topology_type", _enum("topologytype"), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _timestamp(),
        _timestamp(name="updated_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_topologies_name", "topologies", ["name"], unique=True)
    op.create_table(
        "executions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("topology_name", sa.String(length=100), nullable=False),
        sa.Column("topology_id", sa.Integer(), nullable=True),
        sa.Column("runner_type", sa.String(length=50), nullable=False),
        sa.Column("status", _enum("executionstatus"), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("correlation_id", sa.String(length=200), nullable=True),
        sa.Column("snapshot", sa.JSON(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        _timestamp(),
        _timestamp(nullable=True, name="started_at"),
        _timestamp(nullable=True, name="completed_at"),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("invocation_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["topology_id"], ["topologies.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("correlation_id", "created_at", "status", "topology_name"):
        op.create_index(f"ix_executions_{column}", "executions", [column], unique=False)
    op.create_table(
        "topology_memberships",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topology_id", sa.Integer(), nullable=False),
        sa.Column("slot_name", sa.String(length=100), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("agent_type_id", sa.Integer(), nullable=True),
        sa.Column("sub_topology_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["agent_type_id"], ["agent_types.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["sub_topology_id"], ["topologies.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["topology_id"], ["topologies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("topology_id", "slot_name"),
    )
    op.create_table(
        "invocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("execution_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=500), nullable=False),
        sa.Column("slot", sa.String(length=100), nullable=False),
        sa.Column("agent_name", sa.String(length=100), nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", _enum("invocationstatus"), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        _timestamp(name="started_at"),
        _timestamp(name="completed_at"),
        sa.ForeignKeyConstraint(["execution_id"], ["executions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_invocations_execution_id", "invocations", ["execution_id"], unique=False)
    op.create_index(
        "ix_invocations_execution_key", "invocations", ["execution_id", "key"], unique=False
    )


def downgrade() -> None:
    for table in (
        "invocations",
        "topology_memberships",
        "executions",
        "topologies",
        "approvals",
        "agent_types",
        "agent_memories",
    ):
        op.drop_table(table)
    for name, _ in ENUMS:  # PostgreSQL keeps enum types apart from tables
        sa.Enum(name=name).drop(op.get_bind(), checkfirst=True)
