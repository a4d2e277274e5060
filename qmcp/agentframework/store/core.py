"""`Store`: every query and write of the project, over one `Database` per URL.

Writes are small functions of a SQLAlchemy `Connection` (Core statements) that `Database.write`
runs in one transaction, on every backend the same way; reads are async ORM sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from sqlalchemy import (
    Connection,
    Numeric,
    Table,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session, configure_mappers
from sqlmodel import SQLModel, col

from qmcp.agentframework.errors import ConflictError, NotFoundError, ValidationError
from qmcp.agentframework.models import (
    MAX_NESTING,
    AgentMemory,
    AgentType,
    Approval,
    Execution,
    ExecutionStatus,
    Invocation,
    InvocationStatus,
    InvocationTurn,
    SubTopology,
    ToolCall,
    Topology,
    TopologyMembership,
    utcnow,
)
from qmcp.agentframework.store.database import (
    SQLITE_BUSY_TIMEOUT_MS,
    Database,
    DatabaseError,
    close_database,
    database_for,
    database_url,
    describe,
    parse_url,
)
from qmcp.agentframework.store.leases import lease_seconds, lease_until
from qmcp.agentframework.store.migrations import upgrade
from qmcp.agentframework.store.owners import owner_alive

if TYPE_CHECKING:  # a process on a SQLite file never loads the asyncio engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

M = TypeVar("M", bound=SQLModel)
T = TypeVar("T")


def _table(model: type[SQLModel]) -> Table:
    return model.__table__  # type: ignore[attr-defined,no-any-return]


AGENTS = _table(AgentType)
TOPOLOGIES = _table(Topology)
MEMBERSHIPS = _table(TopologyMembership)
EXECUTIONS = _table(Execution)
INVOCATIONS = _table(Invocation)
TURNS = _table(InvocationTurn)
TOOL_CALLS = _table(ToolCall)
MEMORIES = _table(AgentMemory)
APPROVALS = _table(Approval)
# The statements of the hot path, built once with their parameters left open: building a
# statement costs more than running it, and SQLAlchemy finds a built one's compiled form at once.
_INSERT_INVOCATIONS = insert(INVOCATIONS)
_INSERT_TURNS = insert(TURNS)
_INSERT_EXECUTION = insert(EXECUTIONS)
# The columns to set are the parameters given with it, besides `ident`.
_UPDATE_EXECUTION = update(EXECUTIONS).where(EXECUTIONS.c.id == bindparam("ident"))
_TOTALS = (
    func.count(INVOCATIONS.c.id),
    func.coalesce(func.sum(INVOCATIONS.c.input_tokens), 0),
    func.coalesce(func.sum(INVOCATIONS.c.output_tokens), 0),
    func.sum(INVOCATIONS.c.cost_usd),
)
_SELECT_TOTALS = select(*_TOTALS).where(INVOCATIONS.c.execution_id == bindparam("ident"))


def _summed(column: Any) -> Any:
    """One total of the updated execution's invocation rows, inside its UPDATE."""
    of_this = INVOCATIONS.c.execution_id == EXECUTIONS.c.id
    return select(column).where(of_this).scalar_subquery()


# Finishing with totals: the totals are summed by the UPDATE itself (one statement, not two).
# The cost is rounded as `_totals` rounds it (NUMERIC: PostgreSQL rounds no double precision).
_FINISH_WITH_TOTALS = _UPDATE_EXECUTION.values(
    invocation_count=_summed(_TOTALS[0]),
    input_tokens=_summed(_TOTALS[1]),
    output_tokens=_summed(_TOTALS[2]),
    cost_usd=_summed(func.round(cast(_TOTALS[3], Numeric), 6)),
)
INTERRUPTED_ERROR = (
    "the process running this execution stopped before it finished; "
    "resume it with `qmcp executions resume ID`"
)
CANCELLED_ERROR = "cancelled"
# A run whose owner stopped (its lease lapsed) cannot honour a cancel: it is cancelled for it.
CANCELLED_LAPSED_ERROR = "cancelled (its owner had stopped: the lease had lapsed)"
# At most this many rows make a small write (see `Database.write`): tens of microseconds each.
SMALL_WRITE_ROWS = 16
_TURN_FIELDS = ("turn", "role", "content", "model", "input_tokens", "output_tokens")


def _values(obj: SQLModel) -> dict[str, Any]:
    """An object's column values, leaving out a primary key the database assigns."""
    table = _table(type(obj))
    values = {c.name: getattr(obj, c.name) for c in table.columns}
    for c in table.primary_key.columns:
        if values.get(c.name) is None:
            values.pop(c.name, None)
    return values


def _insert(connection: Connection, table: Table, values: dict[str, Any]) -> Any:
    """Insert one row; its primary key."""
    key = connection.execute(insert(table).values(values)).inserted_primary_key
    assert key is not None
    return key[0]


Membership = tuple[str, int, bool, Any]  # slot, position, nested (a topology), member id


def _memberships(slots: Mapping[str, AgentType | Topology]) -> list[Membership]:
    """A topology's slots as membership rows to write, in slot order."""
    return [
        (slot, position, isinstance(member, Topology), member.id)
        for position, (slot, member) in enumerate(slots.items())
    ]


def _insert_memberships(connection: Connection, ident: Any, members: list[Membership]) -> None:
    if members:
        connection.execute(
            insert(MEMBERSHIPS),
            [
                {
                    "topology_id": ident,
                    "slot_name": slot,
                    "position": position,
                    "agent_type_id": None if nested else member_id,
                    "sub_topology_id": member_id if nested else None,
                }
                for slot, position, nested, member_id in members
            ],
        )


def _agent_id(connection: Connection, name: str) -> Any:
    ident = connection.execute(select(AGENTS.c.id).where(AGENTS.c.name == name)).scalar()
    if ident is None:
        raise NotFoundError(f"no agent named {name!r}; see `qmcp agents list`")
    return ident


def _topology_id(connection: Connection, name: str) -> Any:
    ident = connection.execute(select(TOPOLOGIES.c.id).where(TOPOLOGIES.c.name == name)).scalar()
    if ident is None:
        raise NotFoundError(f"no topology named {name!r}; see `qmcp agents topologies list`")
    return ident


def _fetch(connection: Connection, model: type[M], ident: Any) -> M | None:
    """One row as a model object, as a session would load it."""
    table = _table(model)
    row = connection.execute(select(table).where(table.c.id == ident)).mappings().first()
    return None if row is None else model(**row)


def _totals(row: Any) -> dict[str, Any]:
    return {
        "invocation_count": row[0],
        "input_tokens": row[1],
        "output_tokens": row[2],
        "cost_usd": None if row[3] is None else round(float(row[3]), 6),
    }


def _initialize(connection: Connection) -> None:
    upgrade(connection)
    _mark_interrupted(connection)


def _stopped(owner: str | None, lease_expires_at: datetime | None, now: datetime) -> bool:
    """Whether a running execution's owner stopped: a dead process on this host (the fast
    path, no waiting), or a lapsed lease on any host (unless its owner lives on this host:
    then it is only slow, and finds at its next renewal whether it kept the run)."""
    alive = owner_alive(owner)
    if alive is False:
        return True
    return alive is None and _lapsed(lease_expires_at, now)


def _lapsed(lease_expires_at: datetime | None, now: datetime) -> bool:
    if lease_expires_at is None:  # a row from before leases: only host:pid can tell
        return False
    return _naive(lease_expires_at) < _naive(now)


def _iso(moment: datetime) -> str:
    """A moment as ISO text in UTC (a naive one is UTC already, as `utcnow` gives them)."""
    return (moment if moment.tzinfo is None else moment.astimezone(UTC)).isoformat()


def _naive(moment: datetime) -> datetime:
    """UTC without tzinfo: SQLite gives stored times back naive, PostgreSQL aware."""
    return (
        moment.replace(tzinfo=None)
        if moment.tzinfo is None
        else moment.astimezone(UTC).replace(tzinfo=None)
    )


# What a run that ended (or stopped) no longer has: an owner, a lease, a cancel to hear, calls
# in flight.
_UNLEASED = {
    "owner": None,
    "lease_expires_at": None,
    "cancel_requested_at": None,
    "in_flight": None,
}


# The running executions and who holds them: what `_mark_interrupted` and `Store.sweep` judge.
_RUNNING_LEASES = select(EXECUTIONS.c.id, EXECUTIONS.c.owner, EXECUTIONS.c.lease_expires_at).where(
    EXECUTIONS.c.status == ExecutionStatus.RUNNING
)


def _mark_interrupted(connection: Connection) -> int:
    now = utcnow()
    counted = 0
    for ident, owner, expires in connection.execute(_RUNNING_LEASES).all():
        if not _stopped(owner, expires, now):
            continue
        # Conditional on what was read: an owner that renewed meanwhile keeps its run.
        counted += connection.execute(
            update(EXECUTIONS)
            .where(EXECUTIONS.c.id == ident)
            .where(EXECUTIONS.c.status == ExecutionStatus.RUNNING)
            .where(_same_lease(owner, expires))
            .values(status=ExecutionStatus.INTERRUPTED, error=INTERRUPTED_ERROR, **_UNLEASED)
        ).rowcount
    return counted


def _same_lease(owner: str | None, expires: datetime | None) -> Any:
    """The row still has the owner and lease that were read (nobody renewed or took it)."""
    owned = EXECUTIONS.c.owner.is_(None) if owner is None else EXECUTIONS.c.owner == owner
    if expires is None:
        return owned & EXECUTIONS.c.lease_expires_at.is_(None)
    return owned & (EXECUTIONS.c.lease_expires_at == expires)


# The reads every run of a stored topology starts with, built once (building a statement costs
# more than SQLAlchemy's cached compilation of it); the values are bound parameters.
_TOPOLOGY_BY_NAME = select(Topology).where(col(Topology.name) == bindparam("name"))
_MEMBERS_OF = (
    select(TopologyMembership, AgentType, Topology)
    .outerjoin(AgentType, col(AgentType.id) == col(TopologyMembership.agent_type_id))
    .outerjoin(Topology, col(Topology.id) == col(TopologyMembership.sub_topology_id))
    .where(col(TopologyMembership.topology_id) == bindparam("topology_id"))
    .order_by(col(TopologyMembership.position))
)


class LeaseState(NamedTuple):
    """What an owner's renewal found: whether it still holds the run, and whether a cancel was
    asked for. `status` is the execution's (a step process may have finished it meanwhile)."""

    held: bool
    cancel_requested: bool
    status: ExecutionStatus | None
    owner: str | None


class Store:
    """The project's database: created or upgraded on first use, closed with `close()`.

    Store objects are cheap; all of them for one URL share that URL's connections in this
    process (`Database`). `close()` closes those connections; the next use opens them again.
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = database_url(url)
        self._parsed = parse_url(self.url)
        self.is_sqlite = self._parsed.get_backend_name() == "sqlite"

    # -- connections ------------------------------------------------------------------------

    @property
    def database(self) -> Database:
        return database_for(self.url)

    @property
    def engine(self) -> AsyncEngine:
        return self.database.engine

    async def init(self) -> Store:
        """Upgrade the schema to this version's (creating it in a new database) once per
        process, and mark executions whose process died as interrupted."""
        database = self.database
        if not database.ready:
            # Rows built with `model_construct` (as runs build theirs) skip the constructor that
            # would configure the ORM's mappers; reading one before that fails in SQLAlchemy.
            configure_mappers()
            await database.write(_initialize)
            database.ready = True
            database.swept_at = time.monotonic()  # `_initialize` marked the stopped runs
        return self

    async def close(self) -> None:
        """Finish queued writes and close this URL's connections (engines, writer thread)."""
        await close_database(self.url)

    async def __aenter__(self) -> Store:
        return await self.init()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """An ORM session for reads."""
        await self.init()
        async with self.database.session() as session:
            yield session

    async def _read(self, fn: Callable[[Session], T]) -> T:
        """Run a read function with an ORM session (see `Database.read`)."""
        await self.init()
        return await self.database.read(fn)

    async def _write(self, fn: Any, *, conflict: str | None = None, now: bool = False) -> Any:
        """Run a write function in one transaction; `now`: a small one (see `Database.write`)."""
        await self.init()
        return await self.database.write(fn, conflict=conflict, now=now)

    # -- agents -----------------------------------------------------------------------------

    async def _add(self, table: Table, obj: M, conflict: str) -> M:
        """Insert one object's row and read it back as stored (its id, its defaults)."""
        values = _values(obj)

        def add(connection: Connection) -> M | None:
            return _fetch(connection, type(obj), _insert(connection, table, values))

        stored: M = await self._write(add, conflict=conflict)
        return stored

    async def add_agent(self, agent: AgentType) -> AgentType:
        return await self._add(
            AGENTS, agent, f"an agent named {agent.name!r} already exists; choose another name"
        )

    async def get_agent(self, name: str) -> AgentType:
        async with self.session() as s:
            agent = (await s.execute(select(AgentType).where(col(AgentType.name) == name))).scalar()
        if agent is None:
            raise NotFoundError(f"no agent named {name!r}; see `qmcp agents list`")
        return agent

    async def list_agents(self, role: str | None = None) -> list[AgentType]:
        query = select(AgentType).order_by(col(AgentType.name))
        if role:
            query = query.where(col(AgentType.role) == role)
        async with self.session() as s:
            return list((await s.execute(query)).scalars())

    # -- topologies -------------------------------------------------------------------------

    async def add_topology(
        self, topology: Topology, slots: Mapping[str, AgentType | Topology]
    ) -> Topology:
        """Store a topology; a slot holds an agent type or a stored topology (compound)."""
        values = _values(topology)
        members = _memberships(slots)
        nested_ids = [int(member_id or 0) for _, _, nested, member_id in members if nested]

        def add(connection: Connection) -> Topology | None:
            if nested_ids:  # in the transaction: what it checks is what it stores beside
                _check_nesting(connection, topology.name, nested_ids)
            ident = _insert(connection, TOPOLOGIES, values)
            _insert_memberships(connection, ident, members)
            return _fetch(connection, Topology, ident)

        stored: Topology = await self._write(
            add,
            conflict=f"a topology named {topology.name!r} already exists; choose another name",
        )
        return stored

    async def update_agent(self, name: str, values: Mapping[str, Any]) -> AgentType:
        """Set an agent's columns `values`, bump its version and `updated_at`; the row as stored."""

        def change(connection: Connection) -> AgentType | None:
            ident = _agent_id(connection, name)
            connection.execute(
                update(AGENTS)
                .where(AGENTS.c.id == ident)
                .values(**values, version=AGENTS.c.version + 1, updated_at=utcnow())
            )
            return _fetch(connection, AgentType, ident)

        stored: AgentType = await self._write(change)
        return stored

    async def delete_agent(self, name: str) -> None:
        """Delete an agent no topology holds; refused naming the topologies that hold it."""

        def remove(connection: Connection) -> None:
            ident = _agent_id(connection, name)
            holders = _holders(connection, MEMBERSHIPS.c.agent_type_id == ident)
            if holders:
                raise ConflictError(
                    f"agent {name!r} is still used by topology {holders}; delete those "
                    "topologies or give their slots another agent "
                    "(`qmcp agents topologies update NAME --slot SLOT=AGENT`) first"
                )
            connection.execute(delete(AGENTS).where(AGENTS.c.id == ident))

        await self._write(remove)

    async def update_topology(
        self,
        name: str,
        values: Mapping[str, Any],
        slots: Mapping[str, AgentType | Topology] | None = None,
    ) -> Topology:
        """Set a topology's columns `values` and, given `slots`, replace its slots; bump its
        version and `updated_at`. Nesting and cycles are checked as at creation, for it and
        for every topology that holds it, in the transaction that writes."""
        members = None if slots is None else _memberships(slots)

        def change(connection: Connection) -> Topology | None:
            ident = _topology_id(connection, name)
            connection.execute(
                update(TOPOLOGIES)
                .where(TOPOLOGIES.c.id == ident)
                .values(**values, version=TOPOLOGIES.c.version + 1, updated_at=utcnow())
            )
            if members is not None:
                connection.execute(delete(MEMBERSHIPS).where(MEMBERSHIPS.c.topology_id == ident))
                _insert_memberships(connection, ident, members)
                try:
                    _recheck_nesting(connection, ident)
                except ValidationError as exc:
                    raise ValidationError(
                        f"cannot give topology {name!r} these slots: {exc}"
                    ) from None
            return _fetch(connection, Topology, ident)

        stored: Topology = await self._write(change)
        return stored

    async def delete_topology(self, name: str) -> None:
        """Delete a topology no other topology holds; refused naming the ones that hold it.
        Its executions stay, with their snapshots (their `topology_id` becomes NULL)."""

        def remove(connection: Connection) -> None:
            ident = _topology_id(connection, name)
            holders = _holders(connection, MEMBERSHIPS.c.sub_topology_id == ident)
            if holders:
                raise ConflictError(
                    f"topology {name!r} is still nested in topology {holders}; delete those "
                    "or give their slots another member first"
                )
            connection.execute(
                update(EXECUTIONS).where(EXECUTIONS.c.topology_id == ident).values(topology_id=None)
            )
            connection.execute(delete(MEMBERSHIPS).where(MEMBERSHIPS.c.topology_id == ident))
            connection.execute(delete(TOPOLOGIES).where(TOPOLOGIES.c.id == ident))

        await self._write(remove)

    async def get_topology(self, name: str) -> tuple[Topology, dict[str, Any]]:
        """A stored topology and its slots (slot -> agent or SubTopology), in slot order."""

        def read(s: Session) -> tuple[Topology, dict[str, Any]]:
            topology = s.execute(_TOPOLOGY_BY_NAME, {"name": name}).scalar()
            if topology is None:
                raise NotFoundError(
                    f"no topology named {name!r}; see `qmcp agents topologies list`"
                )
            return topology, self._members(s, topology, (topology.id,))

        return await self._read(read)

    def _members(self, s: Session, topology: Topology, path: tuple[Any, ...]) -> dict[str, Any]:
        rows = s.execute(_MEMBERS_OF, {"topology_id": topology.id})
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
            members[membership.slot_name] = SubTopology(sub, self._members(s, sub, (*path, sub.id)))
        return members

    async def get_topology_row(self, name: str) -> Topology:
        async with self.session() as s:
            topology = (
                await s.execute(select(Topology).where(col(Topology.name) == name))
            ).scalar()
        if topology is None:
            raise NotFoundError(f"no topology named {name!r}; see `qmcp agents topologies list`")
        return topology

    async def list_topologies(self) -> list[tuple[Topology, dict[str, str]]]:
        """Every topology with its slots (slot -> agent name, or `topology:<name>`), in order."""
        async with self.session() as s:
            topologies = list(
                (await s.execute(select(Topology).order_by(col(Topology.name)))).scalars()
            )
            by_id = {t.id: t.name for t in topologies}
            rows = await s.execute(
                select(
                    MEMBERSHIPS.c.topology_id,
                    MEMBERSHIPS.c.slot_name,
                    AGENTS.c.name,
                    MEMBERSHIPS.c.sub_topology_id,
                )
                .outerjoin(AGENTS, AGENTS.c.id == MEMBERSHIPS.c.agent_type_id)
                .order_by(MEMBERSHIPS.c.position)
            )
            slots: dict[int, dict[str, str]] = {}
            for topology_id, slot, agent_name, sub_id in rows:
                label = agent_name if sub_id is None else f"topology:{by_id.get(sub_id)}"
                slots.setdefault(topology_id, {})[slot] = label
        return [(t, slots.get(t.id or -1, {})) for t in topologies]

    # -- executions -------------------------------------------------------------------------

    async def add_execution(self, execution: Execution) -> Execution:
        values = _values(execution)
        await self._write(
            lambda connection: connection.execute(_INSERT_EXECUTION, values), now=True
        )
        return execution

    async def update_execution(self, execution_id: uuid.UUID, **values: Any) -> None:
        if not values:
            return
        params = {**values, "ident": execution_id}
        await self._write(
            lambda connection: connection.execute(_UPDATE_EXECUTION, params), now=True
        )

    async def finish_execution(
        self,
        execution_id: uuid.UUID,
        *,
        status: ExecutionStatus,
        output: dict[str, Any] | None,
        error: str | None,
        duration_ms: int,
        metrics: bool = True,
        invocations: Sequence[dict[str, Any]] = (),
        turns: Sequence[dict[str, Any]] = (),
    ) -> datetime:
        """Record how an execution ended, in one transaction; returns its `completed_at`.

        `duration_ms` is the summed wall time of every run segment of the execution (a resumed
        execution's earlier segments plus this one). With `metrics`, the totals (invocation
        count, tokens, cost) are summed from its invocation rows. The owner is cleared.
        `invocations` and `turns` are rows a run without checkpointing kept until its end: they
        are written in the same transaction.
        """
        completed_at = utcnow()
        values: dict[str, Any] = {
            "status": status,
            "output": output,
            "error": error,
            "completed_at": completed_at,
            "duration_ms": duration_ms,
            **_UNLEASED,
            "ident": execution_id,
        }

        rows, turn_rows = list(invocations), list(turns)

        def finish(connection: Connection) -> int:
            if turn_rows:
                connection.execute(_INSERT_TURNS, turn_rows)
            if rows:
                connection.execute(_INSERT_INVOCATIONS, rows)
            finishing = _FINISH_WITH_TOTALS if metrics else _UPDATE_EXECUTION
            return connection.execute(finishing, values).rowcount

        small = len(rows) + len(turn_rows) <= SMALL_WRITE_ROWS
        if await self._write(finish, now=small) == 0:
            raise NotFoundError(f"no execution {execution_id}; see `qmcp executions list`")
        return completed_at

    async def claim_execution(self, execution_id: uuid.UUID, owner: str) -> Execution:
        """Take a resumable execution for `owner`, with a fresh lease, atomically: a failed,
        cancelled, interrupted or pending one, or a running one whose owner stopped (a dead
        process on this host, or a lapsed lease on any host).

        The UPDATE is conditional on the state read, checked by its row count, so of two
        processes taking over the same run exactly one wins, on SQLite and PostgreSQL alike.
        """
        resumable = [s for s in ExecutionStatus if s.resumable]

        def claim(connection: Connection) -> tuple[int, Execution | None]:
            now = utcnow()
            took = update(EXECUTIONS).where(EXECUTIONS.c.id == execution_id)
            current = _fetch(connection, Execution, execution_id)
            if current is not None and current.status == ExecutionStatus.RUNNING:
                if not _stopped(current.owner, current.lease_expires_at, now):
                    return 0, current
                took = took.where(EXECUTIONS.c.status == ExecutionStatus.RUNNING).where(
                    _same_lease(current.owner, current.lease_expires_at)
                )
            else:
                took = took.where(EXECUTIONS.c.status.in_(resumable))
            claimed = connection.execute(
                took.values(
                    status=ExecutionStatus.RUNNING,
                    owner=owner,
                    lease_expires_at=lease_until(now),
                    cancel_requested_at=None,
                    in_flight=None,  # the stopped owner's calls are not in flight
                    error=None,
                    completed_at=None,
                )
            ).rowcount
            return claimed, _fetch(connection, Execution, execution_id)

        claimed, execution = await self._write(claim, now=True)
        if execution is None:
            raise NotFoundError(f"no execution {execution_id}; see `qmcp executions list`")
        if claimed == 0:
            if execution.status == ExecutionStatus.RUNNING:
                raise ConflictError(
                    f"execution {execution_id} is running in another process "
                    f"({execution.owner}), whose lease is current; cancel it with "
                    "`qmcp executions cancel ID`, or resume it once its lease has lapsed"
                )
            raise ConflictError(
                f"execution {execution_id} is {execution.status.value}; only failed, cancelled, "
                "interrupted or pending (waiting for approval) executions can be resumed"
            )
        return execution

    async def mark_in_flight(
        self, execution_id: uuid.UUID, key: str, started_at: datetime | None
    ) -> None:
        """Add one key to a running execution's `in_flight` map (`started_at`), or take it
        out (None), reading and writing the map in one transaction with its row locked.

        For the processes that share a run without owning it: a Metaflow flow's steps, whose
        foreach branches call their models at the same time, each changing only its own keys.
        (The owner's heartbeat writes the whole map instead: `renew_lease`.)"""

        def change(connection: Connection) -> None:
            row = connection.execute(
                select(EXECUTIONS.c.status, EXECUTIONS.c.in_flight)
                .where(EXECUTIONS.c.id == execution_id)
                .with_for_update()
            ).one_or_none()
            if row is None or row.status != ExecutionStatus.RUNNING:
                return  # ended meanwhile: its end cleared the map
            calls = dict(row.in_flight or {})
            if started_at is not None:
                calls[key] = _iso(started_at)
            elif calls.pop(key, None) is None:
                return
            connection.execute(
                update(EXECUTIONS)
                .where(EXECUTIONS.c.id == execution_id)
                .values(in_flight=calls or None)
            )

        await self._write(change, now=True)

    async def renew_lease(
        self,
        execution_id: uuid.UUID,
        owner: str,
        in_flight: Mapping[str, datetime] | None = None,
    ) -> LeaseState:
        """The owner's heartbeat: extend its lease while the run is still its own and running;
        one small transaction, which also reads whether a cancel was asked for.

        `in_flight` (the keys whose invocations are in progress, with when each started) goes
        into the `in_flight` column in the same UPDATE, for views in other processes (empty:
        NULL); None leaves the column as it is (an owner that runs no invocations itself)."""
        values: dict[str, Any] = {}
        if in_flight is not None:
            values["in_flight"] = {k: _iso(v) for k, v in in_flight.items()} or None

        def renew(connection: Connection) -> LeaseState:
            held = connection.execute(
                update(EXECUTIONS)
                .where(EXECUTIONS.c.id == execution_id)
                .where(EXECUTIONS.c.status == ExecutionStatus.RUNNING)
                .where(EXECUTIONS.c.owner == owner)
                .values(lease_expires_at=lease_until(utcnow()), **values)
            ).rowcount
            row = connection.execute(
                select(
                    EXECUTIONS.c.status, EXECUTIONS.c.cancel_requested_at, EXECUTIONS.c.owner
                ).where(EXECUTIONS.c.id == execution_id)
            ).first()
            if row is None:
                return LeaseState(False, False, None, None)
            return LeaseState(bool(held), row[1] is not None, ExecutionStatus(row[0]), row[2])

        state: LeaseState = await self._write(renew, now=True)
        return state

    async def cancel_requested(self, execution_id: uuid.UUID) -> bool:
        """Whether a cancel was asked for (a read: the owner's check between invocations)."""
        query = select(EXECUTIONS.c.cancel_requested_at).where(EXECUTIONS.c.id == execution_id)
        found = await self._read(lambda s: s.execute(query).scalar())
        return found is not None

    async def request_cancel(
        self, execution_id: uuid.UUID, *, again: bool = False
    ) -> ExecutionStatus:
        """Ask a running execution's owner, wherever it runs, to cancel it: a flag it honours
        at its next heartbeat or invocation. A run whose owner stopped (a dead process here, a
        lapsed lease anywhere) cannot honour it: it is recorded as cancelled at once.

        Returns the execution's status after the request (running: the owner will act). One
        that is not running is refused, unless `again` (asking again while waiting for it).
        """

        def request(connection: Connection) -> tuple[ExecutionStatus, bool] | None:
            now = utcnow()
            current = _fetch(connection, Execution, execution_id)
            if current is None:
                return None
            if current.status != ExecutionStatus.RUNNING:
                return current.status, False
            where = (
                (EXECUTIONS.c.id == execution_id)
                & (EXECUTIONS.c.status == ExecutionStatus.RUNNING)
                & _same_lease(current.owner, current.lease_expires_at)
            )
            if _stopped(current.owner, current.lease_expires_at, now):
                done = connection.execute(
                    update(EXECUTIONS)
                    .where(where)
                    .values(
                        status=ExecutionStatus.CANCELLED,
                        error=CANCELLED_LAPSED_ERROR,
                        completed_at=now,
                        **_UNLEASED,
                    )
                ).rowcount
                if done:
                    return ExecutionStatus.CANCELLED, True
            elif current.cancel_requested_at is None:
                connection.execute(
                    update(EXECUTIONS)
                    .where(EXECUTIONS.c.id == execution_id)
                    .where(EXECUTIONS.c.status == ExecutionStatus.RUNNING)
                    .values(cancel_requested_at=now)
                )
            status = connection.execute(
                select(EXECUTIONS.c.status).where(EXECUTIONS.c.id == execution_id)
            ).scalar()
            return None if status is None else (ExecutionStatus(status), True)

        found: tuple[ExecutionStatus, bool] | None = await self._write(request, now=True)
        if found is None:
            raise NotFoundError(f"no execution {execution_id}; see `qmcp executions list`")
        status, was_running = found
        if not (was_running or again):
            raise ConflictError(
                f"execution {execution_id} is {status.value}, not running; nothing to cancel"
            )
        return status

    async def set_metaflow(self, execution_id: uuid.UUID, **values: str | None) -> None:
        """Set where the execution's Metaflow run is (`metaflow_flow_file`, `metaflow_run_id`,
        `metaflow_pathspec`, `metaflow_step`): plain column updates, no read of the row first,
        so concurrent step processes never undo each other's writes."""
        unknown = set(values) - {"flow_file", "run_id", "pathspec", "step"}
        if unknown:
            raise ValidationError(f"no Metaflow column for {sorted(unknown)}")
        await self.update_execution(
            execution_id, **{f"metaflow_{name}": value for name, value in values.items()}
        )

    async def record_flow_steps(self, execution_id: uuid.UUID, steps: Mapping[str, str]) -> None:
        """Name the flow step that answered each key on its rows that name none yet (a key a
        step answered from a checkpoint recorded before, by another runner or run)."""
        params = [{"ident": execution_id, "k": key, "step": step} for key, step in steps.items()]
        if not params:
            return
        statement = (
            update(INVOCATIONS)
            .where(INVOCATIONS.c.execution_id == bindparam("ident"))
            .where(INVOCATIONS.c.key == bindparam("k"))
            .where(INVOCATIONS.c.flow_step.is_(None))
            .values(flow_step=bindparam("step"))
        )
        await self._write(lambda connection: connection.execute(statement, params))

    async def flow_steps(self, execution_id: uuid.UUID) -> dict[str, str]:
        """Which Metaflow step answered each invocation key (the step of its last row)."""
        query = (
            select(INVOCATIONS.c.key, INVOCATIONS.c.flow_step)
            .where(INVOCATIONS.c.execution_id == execution_id)
            .where(INVOCATIONS.c.flow_step.is_not(None))
            .order_by(INVOCATIONS.c.id)
        )
        rows = await self._read(lambda s: s.execute(query).all())
        return {key: step for key, step in rows}

    async def invocations_after(
        self, execution_id: uuid.UUID, after_id: int = 0
    ) -> list[Invocation]:
        """An execution's invocation rows with an id above `after_id`, in order (a poller
        following a run reads each row once)."""
        async with self.session() as s:
            rows = await s.execute(
                select(Invocation)
                .where(col(Invocation.execution_id) == execution_id)
                .where(col(Invocation.id) > after_id)
                .order_by(col(Invocation.id))
            )
            return list(rows.scalars())

    async def resolve_execution_id(self, execution_id: uuid.UUID | str) -> uuid.UUID:
        """The execution id that `execution_id` names: a whole id, or a unique prefix of one
        (at least MIN_ID_PREFIX hex characters, dashes optional, as git takes commit ids).

        A whole id is returned as given, without a query; a prefix that matches no execution,
        or several, is refused with the ids it matches.
        """
        parsed = parse_execution_ref(execution_id)
        if isinstance(parsed, uuid.UUID):
            return parsed
        found = await self._ids_from(parsed, EXECUTIONS.c.id, AMBIGUOUS_SHOWN + 1)
        if len(found) == 1:
            return found[0]
        if not found:
            raise NotFoundError(
                f"no execution matches {str(execution_id).strip()!r}; see `qmcp executions list`"
            )
        shown = ", ".join(str(i) for i in found[:AMBIGUOUS_SHOWN])
        more = " and more" if len(found) > AMBIGUOUS_SHOWN else ""
        raise ValidationError(
            f"execution id prefix {str(execution_id).strip()!r} is ambiguous: it matches "
            f"{shown}{more}; give more of the id"
        )

    async def execution_ids(self, digits: str, limit: int) -> list[uuid.UUID]:
        """The ids of the executions that start with the hex `digits` (lowercase, no dashes),
        newest first: what completing an execution id offers."""
        return await self._ids_from(digits, EXECUTIONS.c.created_at.desc(), limit)

    async def _ids_from(self, digits: str, order: Any, limit: int) -> list[uuid.UUID]:
        # The ids that start with `digits` are one range of the primary key, on every backend:
        # SQLite stores 32 lowercase hex characters, PostgreSQL's uuid orders by its bytes.
        low, high = uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
        query = (
            select(EXECUTIONS.c.id)
            .where(EXECUTIONS.c.id.between(low, high))
            .order_by(order)
            .limit(limit)
        )
        return await self._read(lambda s: [uuid.UUID(str(i)) for i in s.execute(query).scalars()])

    async def get_execution(self, execution_id: uuid.UUID | str) -> Execution:
        """One execution, by its id or a unique prefix of it."""
        await self.sweep()
        ident = await self.resolve_execution_id(execution_id)
        async with self.session() as s:
            execution = await s.get(Execution, ident)
        if execution is None:
            raise NotFoundError(f"no execution {execution_id}; see `qmcp executions list`")
        return execution

    async def list_executions(
        self, limit: int = 20, status: str | None = None, topology: str | None = None
    ) -> list[Execution]:
        query = select(Execution).order_by(col(Execution.created_at).desc()).limit(limit)
        if status:
            query = query.where(col(Execution.status) == status)
        if topology:
            query = query.where(col(Execution.topology_name) == topology)
        await self.sweep()
        async with self.session() as s:
            return list((await s.execute(query)).scalars())

    async def invocations(self, execution_id: uuid.UUID) -> list[Invocation]:
        async with self.session() as s:
            rows = await s.execute(
                select(Invocation)
                .where(col(Invocation.execution_id) == execution_id)
                .order_by(col(Invocation.id))
            )
            return list(rows.scalars())

    async def checkpoints(self, execution_id: uuid.UUID) -> dict[str, dict[str, Any]]:
        """Completed outputs by invocation key: what a resume must not pay for again."""
        async with self.session() as s:
            rows = await s.execute(
                select(INVOCATIONS.c.key, INVOCATIONS.c.output)
                .where(INVOCATIONS.c.execution_id == execution_id)
                .where(INVOCATIONS.c.status == InvocationStatus.COMPLETED)
            )
            return {key: output for key, output in rows if output is not None}

    async def attempts(self, execution_id: uuid.UUID) -> dict[str, int]:
        """The last attempt number recorded for each invocation key (a resume goes on from it)."""

        def read(s: Session) -> dict[str, int]:
            rows = s.execute(
                select(INVOCATIONS.c.key, func.max(INVOCATIONS.c.attempt))
                .where(INVOCATIONS.c.execution_id == execution_id)
                .group_by(INVOCATIONS.c.key)
            )
            return {key: int(attempt or 0) for key, attempt in rows}

        return await self._read(read)

    async def record_invocations(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert invocation rows in one short transaction (one row: a durable checkpoint)."""
        if not rows:
            return
        params = list(rows)
        await self._write(
            lambda connection: connection.execute(_INSERT_INVOCATIONS, params),
            now=len(params) <= SMALL_WRITE_ROWS,
        )

    async def record_turns(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert turns of multi-turn invocations in one short transaction, as durable as
        `record_invocations`: a recorded turn is not asked of the model again on resume."""
        if not rows:
            return
        params = list(rows)
        named = ", ".join(f"{r.get('key')!r} turn {r.get('turn')}" for r in params[:3])
        await self._write(
            lambda connection: connection.execute(_INSERT_TURNS, params),
            now=len(params) <= SMALL_WRITE_ROWS,
            conflict=f"a turn is already recorded (among {named}); turns are written once",
        )

    async def turns(self, execution_id: uuid.UUID) -> dict[str, list[dict[str, Any]]]:
        """Recorded turns by invocation key, in order, for keys with no completed invocation
        (a completed key is a checkpoint already): where a resumed invocation picks up."""
        completed = (
            select(INVOCATIONS.c.key)
            .where(INVOCATIONS.c.execution_id == execution_id)
            .where(INVOCATIONS.c.status == InvocationStatus.COMPLETED)
        )
        query = (
            select(TURNS.c.key, *(TURNS.c[name] for name in _TURN_FIELDS))
            .where(TURNS.c.execution_id == execution_id)
            .where(TURNS.c.key.not_in(completed))
            .order_by(TURNS.c.key, TURNS.c.turn)
        )
        found: dict[str, list[dict[str, Any]]] = {}
        async with self.session() as s:
            for row in (await s.execute(query)).mappings():
                found.setdefault(row["key"], []).append({k: row[k] for k in _TURN_FIELDS})
        return found

    async def record_tool_call(self, row: dict[str, Any]) -> None:
        """Record a tool call as it starts (`running`) or ends, in one short transaction: the row
        of its (execution, key, call id) is updated when it exists, else inserted."""
        values = dict(row)
        where = (
            (TOOL_CALLS.c.execution_id == values["execution_id"])
            & (TOOL_CALLS.c.key == values["key"])
            & (TOOL_CALLS.c.call_id == values["call_id"])
        )

        def record(connection: Connection) -> None:
            changed = {k: v for k, v in values.items() if k not in ("execution_id", "key")}
            if connection.execute(update(TOOL_CALLS).where(where).values(changed)).rowcount:
                return
            connection.execute(insert(TOOL_CALLS).values(values))

        await self._write(record, now=True)

    async def tool_calls(self, execution_id: uuid.UUID) -> dict[tuple[str, str], dict[str, Any]]:
        """The recorded tool calls of an execution by (invocation key, call id)."""
        query = (
            select(TOOL_CALLS)
            .where(TOOL_CALLS.c.execution_id == execution_id)
            .order_by(TOOL_CALLS.c.id)
        )
        async with self.session() as s:
            rows = (await s.execute(query)).mappings().all()
        return {(r["key"], r["call_id"]): dict(r) for r in rows}

    async def totals(self, execution_id: uuid.UUID) -> dict[str, Any]:
        async with self.session() as s:
            row = (await s.execute(_SELECT_TOTALS, {"ident": execution_id})).one()
        return _totals(row)

    # -- memories and approvals -------------------------------------------------------------

    async def add_memory(self, owner: str, execution_id: uuid.UUID, key: str, content: str) -> None:
        values = _values(
            AgentMemory(owner=owner, execution_id=execution_id, key=key, content=content)
        )
        await self._write(
            lambda connection: connection.execute(insert(MEMORIES).values(values)), now=True
        )

    async def recent_memories(self, owner: str, limit: int) -> list[AgentMemory]:
        """The newest `limit` memories of `owner`, oldest first."""
        async with self.session() as s:
            rows = await s.execute(
                select(AgentMemory)
                .where(col(AgentMemory.owner) == owner)
                .order_by(col(AgentMemory.id).desc())
                .limit(limit)
            )
            return list(reversed(list(rows.scalars())))

    async def approval_for(self, execution_id: uuid.UUID, key: str) -> Approval | None:
        async with self.session() as s:
            return (
                await s.execute(
                    select(Approval).where(
                        col(Approval.execution_id) == execution_id, col(Approval.key) == key
                    )
                )
            ).scalar()

    async def approvals_of(self, execution_id: uuid.UUID) -> list[Approval]:
        """Every approval an execution asked for (pending and decided), oldest first."""
        query = (
            select(Approval)
            .where(col(Approval.execution_id) == execution_id)
            .order_by(col(Approval.id))
        )
        async with self.session() as s:
            return list((await s.execute(query)).scalars())

    async def add_approval(self, approval: Approval) -> Approval:
        return await self._add(
            APPROVALS,
            approval,
            f"an approval for invocation {approval.key!r} of execution "
            f"{approval.execution_id} already exists",
        )

    async def list_approvals(self, status: str | None = None, limit: int = 50) -> list[Approval]:
        query = select(Approval).order_by(col(Approval.id).desc()).limit(limit)
        if status:
            query = query.where(col(Approval.status) == status)
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

        def decide(connection: Connection) -> Approval | None:
            approval = _fetch(connection, Approval, approval_id)
            if approval is None:
                raise NotFoundError(f"no approval {approval_id}; see `qmcp approvals list`")
            if approval.status != "pending":
                raise ConflictError(f"approval {approval_id} is already {approval.status}")
            connection.execute(
                update(APPROVALS)
                .where(APPROVALS.c.id == approval_id)
                .values(
                    status="approved" if approved else "rejected",
                    comment=comment,
                    edited=edited if approved else None,
                    decided_by=decided_by,
                    decided_at=utcnow(),
                )
            )
            return _fetch(connection, Approval, approval_id)

        decided: Approval = await self._write(decide)
        return decided

    # -- upkeep -----------------------------------------------------------------------------

    async def sweep(self) -> int:
        """What an execution's status says is current: a long-lived process (the MCP server)
        marks runs whose owner stopped since it opened the database (a dead process on this
        host, a lapsed lease on any host) as interrupted before it shows executions, at most
        once a third of a lease; opening the database did it once at the start. One read, and a
        write only when some owner stopped. Returns how many it marked."""
        database = self.database
        now = time.monotonic()
        if now - database.swept_at < lease_seconds() / 3:
            return 0
        database.swept_at = now

        def stopped(session: Session) -> bool:
            moment = utcnow()
            rows = session.execute(_RUNNING_LEASES).all()
            return any(_stopped(owner, expires, moment) for _, owner, expires in rows)

        if not await self._read(stopped):
            return 0
        return await self.mark_interrupted()

    async def mark_interrupted(self) -> int:
        """Executions left `running` by a process that no longer exists become `interrupted`."""
        counted: int = await self._write(_mark_interrupted)
        return counted

    async def prune(self, older_than: timedelta) -> PruneResult:
        """Delete finished executions older than `older_than`, with every row kept for them
        (invocations, turns, approvals, memories), in one transaction; then give the space
        back to the file system (SQLite: checkpoint the WAL, VACUUM).

        Returns the number of executions deleted, an `int` that also says how many rows went
        and how many bytes the database file and its WAL shrank by.
        """
        cutoff: datetime = utcnow() - older_than
        finished = [s for s in ExecutionStatus if s.finished]
        tables = (TURNS, TOOL_CALLS, APPROVALS, MEMORIES, INVOCATIONS)

        def prune(connection: Connection) -> dict[str, int]:
            ids = list(
                connection.execute(
                    select(EXECUTIONS.c.id)
                    .where(EXECUTIONS.c.created_at < cutoff)
                    .where(EXECUTIONS.c.status.in_(finished))
                ).scalars()
            )
            rows = dict.fromkeys([EXECUTIONS.name, *(t.name for t in tables)], 0)
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                for table in tables:
                    deleted = connection.execute(
                        delete(table).where(table.c.execution_id.in_(chunk))
                    )
                    rows[table.name] += deleted.rowcount
                deleted = connection.execute(delete(EXECUTIONS).where(EXECUTIONS.c.id.in_(chunk)))
                rows[EXECUTIONS.name] += deleted.rowcount
            return rows

        file = self.database.file
        before = _file_bytes(file)
        rows: dict[str, int] = await self._write(prune)
        if file is not None:
            await asyncio.to_thread(_compact, file, vacuum=rows[EXECUTIONS.name] > 0)
        return PruneResult(
            rows[EXECUTIONS.name], rows=rows, bytes_before=before, bytes_after=_file_bytes(file)
        )


class PruneResult(int):
    """What `Store.prune` did: the int is the number of executions deleted (as it always was);
    `rows` counts the rows deleted per table; `bytes_before` and `bytes_after` are the sizes of
    the SQLite file with its WAL (None for other databases)."""

    rows: dict[str, int]
    bytes_before: int | None
    bytes_after: int | None

    def __new__(
        cls,
        executions: int,
        *,
        rows: Mapping[str, int] | None = None,
        bytes_before: int | None = None,
        bytes_after: int | None = None,
    ) -> PruneResult:
        result = super().__new__(cls, executions)
        result.rows = dict(rows or {EXECUTIONS.name: executions})
        result.bytes_before, result.bytes_after = bytes_before, bytes_after
        return result

    @property
    def executions(self) -> int:
        return int(self)

    @property
    def rows_deleted(self) -> int:
        return sum(self.rows.values())

    @property
    def bytes_freed(self) -> int | None:
        """How much smaller the database file and its WAL are (0 if they grew meanwhile)."""
        if self.bytes_before is None or self.bytes_after is None:
            return None
        return max(0, self.bytes_before - self.bytes_after)

    def summary(self) -> str:
        """One line for people: what was deleted and the space given back."""
        text = f"deleted {int(self)} execution(s), {self.rows_deleted} row(s) in all"
        if self.bytes_freed is not None and self.bytes_before is not None:
            text += (
                f"; freed {_human_bytes(self.bytes_freed)} (database and WAL: "
                f"{_human_bytes(self.bytes_before)} -> {_human_bytes(self.bytes_after or 0)})"
            )
        return text


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError  # unreachable


def _file_bytes(file: Path | None) -> int | None:
    """The size of a SQLite file and its WAL, or None when there is no file."""
    if file is None:
        return None
    total = 0
    for path in (file, file.with_name(file.name + "-wal")):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def _compact(file: Path, *, vacuum: bool) -> None:
    """Give a SQLite file's free pages back: checkpoint the WAL into the file and truncate it,
    VACUUM (it writes through the WAL), and truncate the WAL again.

    On a connection of its own, outside any transaction (VACUUM cannot run inside one); it
    waits for other writers as long as any write does.
    """
    connection = sqlite3.connect(
        file, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if vacuum:
            connection.execute("VACUUM")
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise DatabaseError(describe(exc, f"sqlite:///{file}")) from exc
    finally:
        connection.close()


def _holders(connection: Connection, where: Any) -> str:
    """The names of the topologies with a slot matching `where`, quoted, comma-separated."""
    rows = connection.execute(
        select(TOPOLOGIES.c.name)
        .join(MEMBERSHIPS, MEMBERSHIPS.c.topology_id == TOPOLOGIES.c.id)
        .where(where)
        .distinct()
        .order_by(TOPOLOGIES.c.name)
    )
    return ", ".join(repr(name) for (name,) in rows)


def _recheck_nesting(connection: Connection, ident: int) -> None:
    """After topology `ident`'s slots changed: check it and every topology holding it, directly
    or through others, as `_check_nesting` checks a new one."""
    seen: set[int] = set()
    frontier = {ident}
    while frontier:  # `ident` and its holders, a level per query
        seen |= frontier
        rows = connection.execute(
            select(MEMBERSHIPS.c.topology_id).where(MEMBERSHIPS.c.sub_topology_id.in_(frontier))
        )
        frontier = {parent for (parent,) in rows} - seen
    for top in sorted(seen):
        subs = [
            child
            for (child,) in connection.execute(
                select(MEMBERSHIPS.c.sub_topology_id)
                .where(MEMBERSHIPS.c.topology_id == top)
                .where(MEMBERSHIPS.c.sub_topology_id.is_not(None))
            )
        ]
        if subs:
            top_name = connection.execute(
                select(TOPOLOGIES.c.name).where(TOPOLOGIES.c.id == top)
            ).scalar_one()
            _check_nesting(connection, top_name, subs)


def _check_nesting(connection: Connection, name: str, sub_ids: Sequence[int]) -> None:
    """Refuse a topology `name` holding the stored topologies `sub_ids` if that would nest
    deeper than MAX_NESTING levels or if one of them contains itself (so a topology that
    exists can run); the message names the topology at fault and the chain."""
    names: dict[int, str] = {}
    children: dict[int, list[int]] = {}
    frontier = set(sub_ids)
    while frontier:  # every stored topology reachable from sub_ids, a level per query
        found = connection.execute(
            select(TOPOLOGIES.c.id, TOPOLOGIES.c.name).where(TOPOLOGIES.c.id.in_(frontier))
        )
        names.update((ident, name) for ident, name in found)
        for ident in frontier:
            children.setdefault(ident, [])
        rows = connection.execute(
            select(MEMBERSHIPS.c.topology_id, MEMBERSHIPS.c.sub_topology_id)
            .where(MEMBERSHIPS.c.topology_id.in_(frontier))
            .where(MEMBERSHIPS.c.sub_topology_id.is_not(None))
        )
        for parent, child in rows:
            children[parent].append(child)
        frontier = {c for kids in children.values() for c in kids} - children.keys()

    # The longest chain below each topology (depth: 0 holds agents only), without recursion.
    longest: dict[int, list[int]] = {}
    for root in sub_ids:
        path: list[int] = []
        stack: list[tuple[int, bool]] = [(root, False)]
        while stack:
            ident, done = stack.pop()
            if done:
                path.pop()
                below = [longest[c] for c in children[ident]]
                longest[ident] = [ident, *max(below, key=len, default=[])]
                continue
            if ident in longest:
                continue
            if ident in path:
                loop = " > ".join(names.get(i, "?") for i in [*path[path.index(ident) :], ident])
                raise ValidationError(
                    f"topology {names.get(ident)!r} contains itself ({loop}); "
                    "a stored topology cannot run until that is undone"
                )
            path.append(ident)
            stack.append((ident, True))
            stack.extend((c, False) for c in children[ident])
    chain = max((longest[i] for i in sub_ids), key=len)
    if len(chain) > MAX_NESTING:
        shown = " > ".join([name, *(names.get(i, "?") for i in chain)])
        raise ValidationError(
            f"topology {name!r} would nest {len(chain)} levels deep ({shown}); "
            f"topologies nest at most {MAX_NESTING} levels (MAX_NESTING)"
        )


MIN_ID_PREFIX = 4  # hex characters: fewer would match too much to be worth typing
AMBIGUOUS_SHOWN = 5  # ids listed when a prefix matches several
_HEX = frozenset("0123456789abcdef")


def parse_execution_ref(value: uuid.UUID | str) -> uuid.UUID | str:
    """A whole execution id as a UUID, or a prefix of one as lowercase hex without dashes."""
    if isinstance(value, uuid.UUID):
        return value
    text = str(value).strip()
    with contextlib.suppress(ValueError):
        return uuid.UUID(text)
    prefix = text.replace("-", "").lower()
    if MIN_ID_PREFIX <= len(prefix) < 32 and _HEX.issuperset(prefix):
        return prefix
    raise ValidationError(
        f"{text[:80]!r} is not an execution id: give an id as shown by `qmcp executions list`, "
        f"or at least its first {MIN_ID_PREFIX} hex characters"
    )


def parse_execution_id(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        raise ValidationError(
            f"{value!r} is not an execution id; ids are UUIDs as shown by `qmcp executions list`"
        ) from None
