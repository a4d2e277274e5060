"""Alembic's environment: run the migrations on the connection qmcp hands over.

`Store.init()` calls Alembic with `config.attributes["connection"]` set to a connection already
inside a write transaction, and commits it. Alembic's command line (see alembic.ini) has no such
connection: it opens `QMCP_DATABASE_URL` (an async URL, as qmcp uses) and runs the migrations
through `connection.run_sync`.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from qmcp.agentframework.store.database import database_url
from qmcp.agentframework.store.migrations import VERSION_TABLE, target_metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata(),
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_from_command_line() -> None:
    engine = create_async_engine(database_url())
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


given = context.config.attributes.get("connection")
if context.is_offline_mode():
    raise SystemExit("qmcp's migrations run online only: set QMCP_DATABASE_URL")
if given is not None:
    run(given)
else:
    asyncio.run(run_from_command_line())
