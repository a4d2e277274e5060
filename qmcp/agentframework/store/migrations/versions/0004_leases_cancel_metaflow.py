"""Leases, cancel from anywhere and Metaflow state in columns.

`executions` gains the lease its owner renews (`lease_expires_at`), a cancel asked for from any
process (`cancel_requested_at`), and where its Metaflow run is (`metaflow_flow_file`,
`metaflow_run_id`, `metaflow_pathspec`, `metaflow_step`), which 0003 kept inside the snapshot;
`invocations` gains the flow step that answered each row (`flow_step`).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EXECUTION_COLUMNS = (
    ("lease_expires_at", sa.DateTime(timezone=True)),
    ("cancel_requested_at", sa.DateTime(timezone=True)),
    ("metaflow_flow_file", sa.Text()),
    ("metaflow_run_id", sa.String(length=100)),
    ("metaflow_pathspec", sa.String(length=300)),
    ("metaflow_step", sa.String(length=100)),
)


_executions = sa.table(
    "executions",
    sa.column("id", sa.Uuid()),
    sa.column("snapshot", sa.JSON()),
    sa.column("metaflow_flow_file", sa.Text()),
    sa.column("metaflow_run_id", sa.String()),
)
_invocations = sa.table(
    "invocations",
    sa.column("execution_id", sa.Uuid()),
    sa.column("key", sa.String()),
    sa.column("flow_step", sa.String()),
)


def upgrade() -> None:
    for name, type_ in _EXECUTION_COLUMNS:
        op.add_column("executions", sa.Column(name, type_, nullable=True))
    op.add_column("invocations", sa.Column("flow_step", sa.String(length=100), nullable=True))
    # What 0003 kept in the snapshot moves to the columns (SQLite and PostgreSQL alike).
    executions, invocations = _executions, _invocations
    connection = op.get_bind()
    rows = connection.execute(sa.select(executions.c.id, executions.c.snapshot)).all()
    for ident, snapshot in rows:
        info = (snapshot or {}).get("metaflow") if isinstance(snapshot, dict) else None
        if not info:
            continue
        kept = {k: v for k, v in snapshot.items() if k != "metaflow"}
        connection.execute(
            executions.update()
            .where(executions.c.id == ident)
            .values(
                snapshot=kept,
                metaflow_flow_file=info.get("flow_file"),
                metaflow_run_id=None if info.get("run_id") is None else str(info["run_id"]),
            )
        )
        for key, step in (info.get("steps") or {}).items():
            connection.execute(
                invocations.update()
                .where(invocations.c.execution_id == ident, invocations.c.key == key)
                .values(flow_step=step)
            )


def downgrade() -> None:
    # The columns go back into the snapshot, where 0003 reads them.
    connection = op.get_bind()
    steps: dict[object, dict[str, str]] = {}
    for ident, key, step in connection.execute(
        sa.select(_invocations.c.execution_id, _invocations.c.key, _invocations.c.flow_step).where(
            _invocations.c.flow_step.is_not(None)
        )
    ):
        steps.setdefault(ident, {})[key] = step
    rows = connection.execute(
        sa.select(
            _executions.c.id,
            _executions.c.snapshot,
            _executions.c.metaflow_flow_file,
            _executions.c.metaflow_run_id,
        ).where(_executions.c.metaflow_flow_file.is_not(None))
    ).all()
    for ident, snapshot, flow_file, run_id in rows:
        info = {"flow_file": flow_file, "run_id": run_id, "steps": steps.get(ident)}
        kept = {k: v for k, v in info.items() if v}
        connection.execute(
            _executions.update()
            .where(_executions.c.id == ident)
            .values(snapshot={**(snapshot or {}), "metaflow": kept})
        )
    op.drop_column("invocations", "flow_step")
    for name, _ in reversed(_EXECUTION_COLUMNS):
        op.drop_column("executions", name)
