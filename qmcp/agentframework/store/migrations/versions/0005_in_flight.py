"""The invocations in flight, for views in other processes.

`executions` gains `in_flight`: the keys whose model calls were in progress at the owner's last
heartbeat, with when each started (`{key: started_at ISO}`), written by the same UPDATE that
renews the lease and cleared when the run ends.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("executions", sa.Column("in_flight", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("executions", "in_flight")
