"""Revision 0004 moves what 0003 kept in `snapshot.metaflow` into columns, and back down."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from qmcp.agentframework.store import migrations


def test_metaflow_state_moves_from_the_snapshot_to_columns_and_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/m.db")
    ident = uuid.uuid4().hex
    snapshot = {
        "topology": {"name": "t"},
        "metaflow": {"flow_file": "/flows/t_flow.py", "run_id": 5, "steps": {"k": "s0_a"}},
    }
    try:
        with engine.begin() as connection:
            migrations.run_alembic(connection, "upgrade", "0003")
            connection.execute(
                text(
                    "INSERT INTO executions (id, topology_name, runner_type, status, input, "
                    "snapshot, created_at, input_tokens, output_tokens, invocation_count) VALUES "
                    "(:i, 't', 'metaflow', 'FAILED', '{}', :s, '2026-01-01 00:00:00', 0, 0, 0)"
                ),
                {"i": ident, "s": json.dumps(snapshot)},
            )
            connection.execute(
                text(
                    "INSERT INTO invocations (execution_id, key, slot, agent_name, provider, "
                    "model, input, attempt, status, input_tokens, output_tokens, duration_ms, "
                    "started_at, completed_at) VALUES (:i, 'k', 'a', 'a', 'offline', 'm', '{}', "
                    "1, 'COMPLETED', 0, 0, 0, '2026-01-01', '2026-01-01')"
                ),
                {"i": ident},
            )
        with engine.begin() as connection:
            migrations.run_alembic(connection, "upgrade", "head")
            row = connection.execute(
                text("SELECT snapshot, metaflow_flow_file, metaflow_run_id FROM executions")
            ).one()
            assert json.loads(row[0]) == {"topology": {"name": "t"}}
            assert tuple(row[1:]) == ("/flows/t_flow.py", "5")
            steps = connection.execute(text("SELECT key, flow_step FROM invocations")).all()
            assert [tuple(r) for r in steps] == [("k", "s0_a")]
        with engine.begin() as connection:
            migrations.run_alembic(connection, "downgrade", "0003")
            (back,) = connection.execute(text("SELECT snapshot FROM executions")).one()
            assert json.loads(back)["metaflow"] == {**snapshot["metaflow"], "run_id": "5"}
    finally:
        engine.dispose()
