"""Async engine and session factory, and the few queries everything shares.

One configuration everywhere: the URL passed in, else `QMCP_DATABASE_URL`, else
`sqlite+aiosqlite:///./agent.db`. SQLite runs in WAL mode with a busy timeout and foreign keys.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Integer, delete, event, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel import SQLModel

from qmcp.agentframework.errors import ConflictError, NotFoundError, ValidationError
from qmcp.agentframework.models import (
    AgentMemory,
    AgentType,
    Approval,
    Execution,
    ExecutionStatus,
    Invocation,
    InvocationStatus,
    Topology,
    TopologyMembership,
    utcnow,
)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./agent.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# The in-loop fast path for invocation rows waits at most this long for the write lock before
# handing the write to the async path, so another process's long write never stalls the loop.
SQLITE_FAST_PATH_BUSY_MS = 100


def database_url(url: str | None = None) -> str:
    return url or os.environ.get("QMCP_DATABASE_URL") or DEFAULT_DATABASE_URL


def _process_start_token(pid: int) -> str | None:
    """The kernel's start time of a process, so a reused pid is not taken for the old one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_token() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start_token(pid) or '-'}"


def owner_alive(owner: str | None) -> bool | None:
    """True/False for an owner on this host; None when it cannot be told (another host)."""
    if not owner:
        return False
    try:
        host, pid_text, start = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return None
    token = _process_start_token(pid)
    if token is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return start == "-"
    return token == start


def _sqlite_pragmas(busy_ms: int) -> Any:
    def apply(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return apply


class Store:
    """The project's database: one async engine per URL, tables created on first use."""

    _engines: dict[str, AsyncEngine] = {}
    _fast_connections: dict[str, sqlite3.Connection] = {}
    _ready: dict[str, bool] = {}

    def __init__(self, url: str | None = None) -> None:
        self.url = database_url(url)
        try:
            parsed = make_url(self.url)
        except Exception as exc:
            raise ValidationError(
                f"invalid database URL {self.url!r}: {exc}; "
                "use e.g. sqlite+aiosqlite:///./agent.db or postgresql+asyncpg://…"
            ) from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self._parsed = parsed

    # -- engine -----------------------------------------------------------------------------

    @property
    def engine(self) -> AsyncEngine:
        engine = Store._engines.get(self.url)
        if engine is None:
            kwargs: dict[str, Any] = {}
            if self.is_sqlite:
                database = self._parsed.database
                if database and database != ":memory:":
                    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
            engine = create_async_engine(self.url, **kwargs)
            if self.is_sqlite:
                event.listen(engine.sync_engine, "connect", _sqlite_pragmas(SQLITE_BUSY_TIMEOUT_MS))
            Store._engines[self.url] = engine
        return engine

    @property
    def fast_connection(self) -> sqlite3.Connection | None:
        """A plain sqlite3 connection for small writes on the event loop thread.

        An invocation row commits in tens of microseconds this way, against hundreds through
        aiosqlite's worker thread and SQLAlchemy's pool; that is most of the cost of
        checkpointing. It waits for the write lock at most SQLITE_FAST_PATH_BUSY_MS.
        """
        if not self.is_sqlite or self._parsed.database in (None, "", ":memory:"):
            return None
        connection = Store._fast_connections.get(self.url)
        if connection is None:
            connection = sqlite3.connect(
                str(Path(str(self._parsed.database)).expanduser()),
                timeout=SQLITE_FAST_PATH_BUSY_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            _sqlite_pragmas(SQLITE_FAST_PATH_BUSY_MS)(connection, None)
            Store._fast_connections[self.url] = connection
        return connection

    async def init(self) -> Store:
        """Create tables once per process and mark executions whose process died."""
        if Store._ready.get(self.url):
            return self
        async with self.engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all)
        Store._ready[self.url] = True
        await self.mark_interrupted()
        return self

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        await self.init()
        maker = async_sessionmaker(self.engine, expire_on_commit=False)
        async with maker() as session:
            yield session

    # -- agents -----------------------------------------------------------------------------

    async def add_agent(self, agent: AgentType) -> AgentType:
        async with self.session() as s:
            s.add(agent)
            try:
                await s.commit()
            except IntegrityError:
                raise ConflictError(
                    f"an agent named {agent.name!r} already exists; choose another name"
                ) from None
            await s.refresh(agent)
            return agent

    async def get_agent(self, name: str) -> AgentType:
        async with self.session() as s:
            agent = (await s.execute(select(AgentType).where(AgentType.name == name))).scalar()
        if agent is None:
            raise NotFoundError(f"no agent named {name!r}; see `qmcp agents list`")
        return agent

    async def list_agents(self, role: str | None = None) -> list[AgentType]:
        query = select(AgentType).order_by(AgentType.name)
        if role:
            query = query.where(AgentType.role == role)
        async with self.session() as s:
            return list((await s.execute(query)).scalars())

    # -- topologies -------------------------------------------------------------------------

    async def add_topology(
        self, topology: Topology, slots: Mapping[str, AgentType | Topology]
    ) -> Topology:
        """Store a topology; a slot holds an agent type or a stored topology (compound)."""
        async with self.session() as s:
            s.add(topology)
            try:
                await s.flush()
                for position, (slot, member) in enumerate(slots.items()):
                    nested = isinstance(member, Topology)
                    s.add(
                        TopologyMembership(
                            topology_id=topology.id,  # type: ignore[arg-type]
                            slot_name=slot,
                            position=position,
                            agent_type_id=None if nested else member.id,
                            sub_topology_id=member.id if nested else None,
                        )
                    )
                await s.commit()
            except IntegrityError:
                await s.rollback()
                raise ConflictError(
                    f"a topology named {topology.name!r} already exists; choose another name"
                ) from None
            await s.refresh(topology)
            return topology

    async def get_topology(self, name: str) -> tuple[Topology, dict[str, Any]]:
        """A stored topology and its slots (slot -> agent or SubTopology), in slot order."""
        async with self.session() as s:
            topology = (await s.execute(select(Topology).where(Topology.name == name))).scalar()
            if topology is None:
                raise NotFoundError(
                    f"no topology named {name!r}; see `qmcp agents topologies list`"
                )
            return topology, await self._members(s, topology, (topology.id,))

    async def _members(
        self, s: AsyncSession, topology: Topology, path: tuple[Any, ...]
    ) -> dict[str, Any]:
        from qmcp.agentframework.topologies.base import MAX_NESTING, SubTopology

        rows = await s.execute(
            select(TopologyMembership, AgentType, Topology)
            .outerjoin(AgentType, AgentType.id == TopologyMembership.agent_type_id)
            .outerjoin(Topology, Topology.id == TopologyMembership.sub_topology_id)
            .where(TopologyMembership.topology_id == topology.id)
            .order_by(TopologyMembership.position)
        )
        members: dict[str, Any] = {}
        for membership, agent, sub in rows.all():
            if sub is None:
                members[membership.slot_name] = agent
                continue
            if sub.id in path:
                raise ValidationError(
                    f"topology {topology.name!r} contains itself through {sub.name!r}"
                )
            if len(path) > MAX_NESTING:
                raise ValidationError(
                    f"topology {topology.name!r} nests deeper than {MAX_NESTING} levels"
                )
            members[membership.slot_name] = SubTopology(
                sub, await self._members(s, sub, (*path, sub.id))
            )
        return members

    async def get_topology_row(self, name: str) -> Topology:
        async with self.session() as s:
            topology = (await s.execute(select(Topology).where(Topology.name == name))).scalar()
        if topology is None:
            raise NotFoundError(f"no topology named {name!r}; see `qmcp agents topologies list`")
        return topology

    async def list_topologies(self) -> list[tuple[Topology, dict[str, str]]]:
        """Every topology with its slots (slot -> agent name, or `topology:<name>`), in order."""
        async with self.session() as s:
            topologies = list((await s.execute(select(Topology).order_by(Topology.name))).scalars())
            by_id = {t.id: t.name for t in topologies}
            rows = await s.execute(
                select(
                    TopologyMembership.topology_id,
                    TopologyMembership.slot_name,
                    AgentType.name,
                    TopologyMembership.sub_topology_id,
                )
                .outerjoin(AgentType, AgentType.id == TopologyMembership.agent_type_id)
                .order_by(TopologyMembership.position)
            )
            slots: dict[int, dict[str, str]] = {}
            for topology_id, slot, agent_name, sub_id in rows:
                label = agent_name if sub_id is None else f"topology:{by_id.get(sub_id)}"
                slots.setdefault(topology_id, {})[slot] = label
        return [(t, slots.get(t.id or -1, {})) for t in topologies]

    # -- executions -------------------------------------------------------------------------

    def _fast_write(self, sql: str, rows: list[tuple[Any, ...]]) -> bool:
        """Write on the fast SQLite connection; False when another process holds the lock."""
        fast = self.fast_connection
        if fast is None:
            return False
        try:
            fast.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False  # the caller waits for the lock on the async path instead
        try:
            fast.executemany(sql, rows)
            fast.execute("COMMIT")
        except BaseException:
            fast.execute("ROLLBACK")
            raise
        return True

    async def add_execution(self, execution: Execution) -> Execution:
        await self.init()
        if self.fast_connection is not None:
            table = _execution_rows()
            row = tuple(table.value(c, getattr(execution, c)) for c in table.columns)
            if self._fast_write(table.insert(table.columns), [row]):
                return execution
        async with self.session() as s:
            s.add(execution)
            await s.commit()
            return execution

    async def update_execution(self, execution_id: uuid.UUID, **values: Any) -> None:
        await self.init()
        if self.fast_connection is not None:
            table = _execution_rows()
            columns = list(values)
            row = (*(table.value(c, values[c]) for c in columns), table.value("id", execution_id))
            if self._fast_write(table.update(columns, "id"), [row]):
                return
        async with self.session() as s:
            await s.execute(update(Execution).where(Execution.id == execution_id).values(**values))  # type: ignore[arg-type]
            await s.commit()

    async def claim_execution(self, execution_id: uuid.UUID, owner: str) -> Execution:
        """Mark a resumable execution running under this process, atomically."""
        resumable = [s.value for s in ExecutionStatus if s.resumable]
        async with self.session() as s:
            result = await s.execute(
                update(Execution)
                .where(Execution.id == execution_id)  # type: ignore[arg-type]
                .where(Execution.status.in_(resumable))  # type: ignore[attr-defined]
                .values(status=ExecutionStatus.RUNNING, owner=owner, error=None, completed_at=None)
            )
            await s.commit()
            execution = await s.get(Execution, execution_id)
        if execution is None:
            raise NotFoundError(f"no execution {execution_id}; see `qmcp executions list`")
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise ConflictError(
                f"execution {execution_id} is {execution.status.value}; only failed, cancelled, "
                "interrupted or pending (waiting for approval) executions can be resumed"
            )
        return execution

    async def get_execution(self, execution_id: uuid.UUID | str) -> Execution:
        ident = parse_execution_id(execution_id)
        async with self.session() as s:
            execution = await s.get(Execution, ident)
        if execution is None:
            raise NotFoundError(f"no execution {execution_id}; see `qmcp executions list`")
        return execution

    async def list_executions(
        self, limit: int = 20, status: str | None = None, topology: str | None = None
    ) -> list[Execution]:
        query = select(Execution).order_by(Execution.created_at.desc()).limit(limit)  # type: ignore[attr-defined]
        if status:
            query = query.where(Execution.status == status)
        if topology:
            query = query.where(Execution.topology_name == topology)
        async with self.session() as s:
            return list((await s.execute(query)).scalars())

    async def invocations(self, execution_id: uuid.UUID) -> list[Invocation]:
        async with self.session() as s:
            rows = await s.execute(
                select(Invocation)
                .where(Invocation.execution_id == execution_id)  # type: ignore[arg-type]
                .order_by(Invocation.id)  # type: ignore[arg-type]
            )
            return list(rows.scalars())

    async def checkpoints(self, execution_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        """Completed outputs by invocation key: what a resume must not pay for again."""
        async with self.session() as s:
            rows = await s.execute(
                select(Invocation.key, Invocation.output)
                .where(Invocation.execution_id == execution_id)  # type: ignore[arg-type]
                .where(Invocation.status == InvocationStatus.COMPLETED)
            )
            return {key: output for key, output in rows if output is not None}

    async def record_invocations(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert invocation rows in one short transaction (one row: a durable checkpoint)."""
        if not rows:
            return
        await self.init()
        if self.fast_connection is not None:
            columns = [c for c in _invocation_rows().columns if c in rows[0]]
            values = [tuple(_invocation_rows().value(c, r.get(c)) for c in columns) for r in rows]
            if self._fast_write(_invocation_rows().insert(columns), values):
                return
        async with self.engine.begin() as conn:
            await conn.execute(insert(Invocation), list(rows))

    async def totals(self, execution_id: uuid.UUID) -> dict[str, Any]:
        fast = self.fast_connection
        if fast is not None:
            row = fast.execute(
                "SELECT count(id), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
                " sum(cost_usd) FROM invocations WHERE execution_id = ?",
                (execution_id.hex,),
            ).fetchone()
            return _totals(row)
        async with self.session() as s:
            row = (
                await s.execute(
                    select(
                        func.count(Invocation.id),  # type: ignore[arg-type]
                        func.coalesce(func.sum(Invocation.input_tokens), 0),
                        func.coalesce(func.sum(Invocation.output_tokens), 0),
                        func.sum(Invocation.cost_usd),
                    ).where(Invocation.execution_id == execution_id)  # type: ignore[arg-type]
                )
            ).one()
        return _totals(row)

    async def add_memory(self, owner: str, execution_id: uuid.UUID, key: str, content: str) -> None:
        async with self.session() as s:
            s.add(AgentMemory(owner=owner, execution_id=execution_id, key=key, content=content))
            await s.commit()

    async def recent_memories(self, owner: str, limit: int) -> list[AgentMemory]:
        """The newest `limit` memories of `owner`, oldest first."""
        async with self.session() as s:
            rows = await s.execute(
                select(AgentMemory)
                .where(AgentMemory.owner == owner)
                .order_by(AgentMemory.id.desc())
                .limit(limit)
            )
            return list(reversed(list(rows.scalars())))

    async def approval_for(self, execution_id: uuid.UUID, key: str) -> Approval | None:
        async with self.session() as s:
            return (
                await s.execute(
                    select(Approval).where(
                        Approval.execution_id == execution_id, Approval.key == key
                    )
                )
            ).scalar()

    async def add_approval(self, approval: Approval) -> Approval:
        async with self.session() as s:
            s.add(approval)
            await s.commit()
            await s.refresh(approval)
            return approval

    async def list_approvals(self, status: str | None = None, limit: int = 50) -> list[Approval]:
        query = select(Approval).order_by(Approval.id.desc()).limit(limit)
        if status:
            query = query.where(Approval.status == status)
        async with self.session() as s:
            return list((await s.execute(query)).scalars())

    async def decide_approval(
        self,
        approval_id: int,
        approved: bool,
        *,
        comment: str | None = None,
        edited: str | None = None,
        decided_by: str = "cli",
    ) -> Approval:
        """Answer a pending approval, once; a decided one cannot be changed."""
        async with self.session() as s:
            approval = await s.get(Approval, approval_id)
            if approval is None:
                raise NotFoundError(f"no approval {approval_id}; see `qmcp approvals list`")
            if approval.status != "pending":
                raise ConflictError(f"approval {approval_id} is already {approval.status}")
            approval.status = "approved" if approved else "rejected"
            approval.comment = comment
            approval.edited = edited if approved else None
            approval.decided_by = decided_by
            approval.decided_at = utcnow()
            await s.commit()
            await s.refresh(approval)
            return approval

    async def mark_interrupted(self) -> int:
        """Executions left `running` by a process that no longer exists become `interrupted`."""
        async with self.session() as s:
            rows = await s.execute(
                select(Execution.id, Execution.owner).where(
                    Execution.status == ExecutionStatus.RUNNING
                )
            )
            dead = [ident for ident, owner in rows if owner_alive(owner) is False]
            if dead:
                await s.execute(
                    update(Execution)
                    .where(Execution.id.in_(dead))  # type: ignore[attr-defined]
                    .where(Execution.status == ExecutionStatus.RUNNING)
                    .values(
                        status=ExecutionStatus.INTERRUPTED,
                        error="the process running this execution stopped before it finished; "
                        "resume it with `qmcp executions resume ID`",
                    )
                )
                await s.commit()
        return len(dead)

    async def prune(self, older_than: timedelta) -> int:
        """Delete finished executions (and their invocations) older than `older_than`."""
        cutoff: datetime = utcnow() - older_than
        finished = [s.value for s in ExecutionStatus if s.finished]
        async with self.session() as s:
            ids = list(
                (
                    await s.execute(
                        select(Execution.id)
                        .where(Execution.created_at < cutoff)  # type: ignore[arg-type]
                        .where(Execution.status.in_(finished))  # type: ignore[attr-defined]
                    )
                ).scalars()
            )
            if ids:
                await s.execute(delete(Invocation).where(Invocation.execution_id.in_(ids)))  # type: ignore[attr-defined]
                await s.execute(delete(Execution).where(Execution.id.in_(ids)))  # type: ignore[attr-defined]
                await s.commit()
        return len(ids)


class _SqliteRows:
    """Rows of a table as SQLAlchemy would bind them on SQLite, without its per-row machinery.

    The conversions are SQLAlchemy's own bind processors (UUID as hex, enums by name, JSON text,
    datetimes), applied directly: the hot path of recording executions and invocations.
    """

    def __init__(self, table: Any) -> None:
        from sqlalchemy.dialects import sqlite

        dialect = sqlite.dialect()
        self.table = table.name
        # Every column but an integer primary key, which SQLite assigns.
        self.columns = [
            c.name for c in table.columns if not (c.primary_key and isinstance(c.type, Integer))
        ]
        self.processors = {
            c.name: c.type.dialect_impl(dialect).bind_processor(dialect) for c in table.columns
        }

    def value(self, column: str, value: Any) -> Any:
        processor = self.processors[column]
        return value if value is None or processor is None else processor(value)

    def insert(self, columns: list[str]) -> str:
        names = ", ".join(f'"{c}"' for c in columns)
        return f'INSERT INTO "{self.table}" ({names}) VALUES ({", ".join("?" for _ in columns)})'

    def update(self, columns: list[str], key: str) -> str:
        sets = ", ".join(f'"{c}" = ?' for c in columns)
        return f'UPDATE "{self.table}" SET {sets} WHERE "{key}" = ?'


def _totals(row: Any) -> dict[str, Any]:
    return {
        "invocation_count": row[0],
        "input_tokens": row[1],
        "output_tokens": row[2],
        "cost_usd": None if row[3] is None else round(float(row[3]), 6),
    }


_ROWS: dict[str, _SqliteRows] = {}


def _invocation_rows() -> _SqliteRows:
    rows = _ROWS.get("invocations")
    if rows is None:
        rows = _ROWS["invocations"] = _SqliteRows(Invocation.__table__)
    return rows


def _execution_rows() -> _SqliteRows:
    rows = _ROWS.get("executions")
    if rows is None:
        rows = _ROWS["executions"] = _SqliteRows(Execution.__table__)
    return rows


def parse_execution_id(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        raise ValidationError(
            f"{value!r} is not an execution id; ids are UUIDs as shown by `qmcp executions list`"
        ) from None
