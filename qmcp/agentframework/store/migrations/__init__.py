"""Numbered schema migrations (Alembic) and the upgrade `Store.init()` runs at first use.

Revisions live in `versions/`, one file each, numbered: `0001` is the schema of qmcp 0.1.0 (which
kept no version), `0002` adds `invocation_turns`. The version is stored in `alembic_version`.

`upgrade(connection)` brings any database to the head revision, inside the caller's write
transaction (so two processes starting at once upgrade it once):

- at the head already: one `SELECT`, nothing else; Alembic is not even imported;
- empty: the tables are created from the models and stamped with the head revision, as fast as
  `create_all` (a test checks that this schema equals the one the migrations build);
- made by 0.1.0 (qmcp's tables, no version table): stamped `0001`, then upgraded by Alembic;
- at an older revision: upgraded by Alembic;
- at a revision this qmcp does not know (made by a newer one): refused with a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    select,
    text,
)

REVISIONS = ("0001", "0002", "0003", "0004", "0005")
HEAD = REVISIONS[-1]
BASELINE = "0001"  # qmcp 0.1.0
VERSION_TABLE = "alembic_version"
DIRECTORY = Path(__file__).parent
# Any one of 0.1.0's tables marks a database made by it.
BASELINE_MARKER = "executions"
# Serializes upgrades across PostgreSQL clients (SQLite serializes them with its write lock).
_PG_LOCK_KEY = 0x716D6370  # "qmcp"

# The version table exactly as Alembic creates it.
_version_table = Table(
    VERSION_TABLE,
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
)


def target_metadata() -> MetaData:
    """The models' metadata: what the head revision's schema is."""
    from sqlmodel import SQLModel

    import qmcp.agentframework.models  # noqa: F401  (registers the tables)

    return SQLModel.metadata


def model_tables() -> list[Table]:
    """qmcp's own tables (the metadata is shared with anything else built on SQLModel)."""
    from qmcp.agentframework.models import tables

    return [
        model.__table__  # type: ignore[attr-defined]
        for model in vars(tables).values()
        if isinstance(getattr(model, "__table__", None), Table)
        and model.__module__ == tables.__name__
    ]


def current_revision(connection: Connection) -> str | None:
    if not connection.dialect.has_table(connection, VERSION_TABLE):
        return None
    return connection.execute(select(_version_table.c.version_num)).scalar()


def upgrade(connection: Connection) -> str | None:
    """Bring the database to HEAD; returns the revision it was at (None: new or 0.1.0)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    found = current_revision(connection)
    if found == HEAD:
        return found
    if found is not None and found not in REVISIONS:
        from qmcp.agentframework.store.database import DatabaseError

        raise DatabaseError(
            f"the database's schema is at revision {found!r}, which this version of qmcp does not "
            f"know (its newest is {HEAD!r}): it was made by a newer qmcp; upgrade qmcp"
        )
    if found is None and not connection.dialect.has_table(connection, BASELINE_MARKER):
        target_metadata().create_all(connection, tables=model_tables())
        _version_table.create(connection, checkfirst=True)
        connection.execute(_version_table.insert().values(version_num=HEAD))
        return None
    run_alembic(connection, "upgrade", "head", start=found or BASELINE)
    return found


def run_alembic(connection: Connection, command_name: str, revision: str, **kw: Any) -> None:
    """Run an Alembic command (upgrade, downgrade, stamp) on `connection`, in its transaction.

    `start`: stamp this revision first (a 0.1.0 database has no version table).
    """
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(DIRECTORY))
    config.attributes["connection"] = connection
    start = kw.pop("start", None)
    if start is not None and current_revision(connection) is None:
        command.stamp(config, start)
    getattr(command, command_name)(config, revision, **kw)
