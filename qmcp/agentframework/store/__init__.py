"""The database: one configuration, numbered migrations, one write path per backend.

One configuration everywhere: the URL passed in, else `QMCP_DATABASE_URL`, else `qmcp.db` in
the per-user data directory (platformdirs). SQLite runs in WAL mode with a busy timeout, foreign
keys and `synchronous=NORMAL`; PostgreSQL runs on asyncpg.

- `core`: `Store`, every query and write of the project;
- `database`: one URL's connections in this process and the single write path of each backend;
- `migrations`: the numbered Alembic revisions and the upgrade run at first use;
- `owners`: the token naming the process that runs an execution, and whether it still lives;
- `leases`: how long the lease its owner renews lasts (`QMCP_LEASE_SECONDS`).
"""

from qmcp.agentframework.store.core import LeaseState, Store, parse_execution_id
from qmcp.agentframework.store.database import (
    DEFAULT_DATABASE_URL,
    SQLITE_BUSY_TIMEOUT_MS,
    DatabaseError,
    database_url,
)
from qmcp.agentframework.store.leases import LEASE_VARIABLE, lease_seconds
from qmcp.agentframework.store.owners import owner_alive, owner_token

__all__ = [
    "DEFAULT_DATABASE_URL",
    "LEASE_VARIABLE",
    "SQLITE_BUSY_TIMEOUT_MS",
    "DatabaseError",
    "LeaseState",
    "Store",
    "database_url",
    "lease_seconds",
    "owner_alive",
    "owner_token",
    "parse_execution_id",
]
