"""One database URL's connections in this process, and the one way every write reaches it.

Writes are functions of a SQLAlchemy `Connection` (Core statements) that run inside one
transaction; `Database.write` runs them, the same functions on every backend:

- SQLite (a file): `SqliteWriter` owns the only writing connection of this process, on a
  synchronous engine. A small write runs at once on the caller's thread when nothing is queued
  and SQLite's write lock is free (tried without waiting); otherwise, and for every large write,
  it queues for the writer thread, which waits for the lock, runs all that is queued in one
  `BEGIN IMMEDIATE` transaction and answers each caller on its own event loop. The event loop
  never waits on SQLite's lock, so another process's long write cannot stall it. A function that
  fails in a shared transaction is retried alone, so only its own caller sees the error.
- PostgreSQL (asyncpg), and in-memory SQLite: the async engine, `connection.run_sync(function)`
  inside `engine.begin()`.

Reads of a SQLite file run on the caller's thread through a plain connection (in WAL mode a
reader never waits for a writer, and a read of a few rows costs less than a hand-off to
aiosqlite's thread), so a process on a SQLite file, such as a Metaflow step, never loads the
asyncio engine; other databases read through the async engine's sessions. Database errors
surface as `DatabaseError` (a `QmcpError`) naming the database and what to do; an integrity
error that means "this already exists" becomes the `ConflictError` the caller names.

The per-URL `Database` objects are owned by this module's registry until `close_database` (or
`Store.close()`) disposes their engines and stops their writer; the next use opens them again.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import queue
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import platformdirs
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, SingletonThreadPool

from qmcp.agentframework.errors import ConflictError, QmcpError, ValidationError

if TYPE_CHECKING:  # imported where used: a process on a SQLite file needs no asyncio engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

T = TypeVar("T")

# Where the database lives when no URL is given: the per-user data directory, never the working
# directory (an MCP client may start the server in `/` or a read-only place).
DATA_DIR = Path(platformdirs.user_data_dir("qmcp", appauthor=False))
DEFAULT_DATABASE_URL = f"sqlite+aiosqlite:///{DATA_DIR / 'qmcp.db'}"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# A read on the caller's thread waits this long at most (WAL readers wait only in rare cases,
# such as another process recovering the WAL).
SQLITE_READ_BUSY_MS = 2_000
# A writer thread with nothing to do for this long closes its connection and exits.
WRITER_IDLE_SECONDS = 2.0
# The writer thread checkpoints the WAL after this many commits (SQLite's automatic checkpoint is
# off on the writing connection: it would run inside a commit made on the event loop's thread).
WAL_CHECKPOINT_COMMITS = 200


# What to install for a driver that is missing, by the module's name.
DRIVER_EXTRAS = {
    "asyncpg": "pip install 'qmcp-server[postgres]'",
    "aiosqlite": "pip install --force-reinstall qmcp-server (aiosqlite is one of its dependencies)",
}
URL_EXAMPLES = (
    "sqlite+aiosqlite:///PATH/qmcp.db or postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE"
)
SET_URL = "set QMCP_DATABASE_URL (or --database-url) to"


class DatabaseError(QmcpError):
    """The database failed (locked too long, unreadable, full, or of an unknown schema)."""


def database_url(url: str | None = None) -> str:
    """The URL given, else `QMCP_DATABASE_URL`, else `DEFAULT_DATABASE_URL` in the per-user data
    directory (created here; if it cannot be, opening the database says why)."""
    explicit = url or os.environ.get("QMCP_DATABASE_URL")
    if explicit:
        return explicit
    with contextlib.suppress(OSError):
        DATA_DIR.mkdir(parents=True, exist_ok=True)
    return DEFAULT_DATABASE_URL


def parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except Exception as exc:
        raise ValidationError(
            f"invalid database URL {url!r}: {exc}; {SET_URL} a URL such as {URL_EXAMPLES}"
        ) from None


def _sqlite_pragmas(busy_ms: int, *, writer: bool = False) -> Any:
    def apply(dbapi_connection: Any, _record: Any) -> None:
        if writer:  # transactions are begun explicitly (BEGIN IMMEDIATE), never implicitly
            dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if writer:
            cursor.execute("PRAGMA wal_autocheckpoint=0")  # the writer thread checkpoints
            cursor.execute("PRAGMA busy_timeout=0")  # waiting is for the thread's batches only
        cursor.close()

    return apply


def _begin_immediate(connection: Connection) -> None:
    # Take the write lock when the transaction starts: a transaction that reads and then writes
    # cannot then fail on a lock another process took in between (SQLITE_BUSY_SNAPSHOT).
    # Straight to the driver: this runs before every write, and the full statement machinery
    # costs more than the statement.
    connection.connection.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]


def _cause_and_fix(exc: BaseException, url: URL) -> tuple[str, str]:
    """What went wrong, in the driver's or the system's words, and what to do about it."""
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split()) or type(orig).__name__
    lowered = text.lower()
    if isinstance(orig, ImportError):
        name = (orig.name or "").split(".")[0]
        if name in DRIVER_EXTRAS:
            return (
                f"the database driver {name} is not installed",
                f"install it: {DRIVER_EXTRAS[name]}",
            )
        if url.get_backend_name() == "postgresql":
            return (
                f"the database driver {name or text} is not installed",
                "qmcp uses asyncpg: write the URL as postgresql+asyncpg://… and install it: "
                + DRIVER_EXTRAS["asyncpg"],
            )
        return (
            f"the database driver {name or text} is not installed",
            f"install it: pip install {name}",
        )
    if "can't load plugin" in lowered:
        return (
            f"unknown kind of database {url.drivername!r}",
            f"{SET_URL} a URL such as {URL_EXAMPLES}",
        )
    if "requires an async driver" in lowered or "is not async" in lowered:
        return (
            f"the driver of {url.drivername!r} is not an asyncio driver",
            f"use sqlite+aiosqlite:// or postgresql+asyncpg:// ({DRIVER_EXTRAS['asyncpg']})",
        )
    if isinstance(orig, ArgumentError):
        return text, f"{SET_URL} a URL such as {URL_EXAMPLES}"
    if "locked" in lowered or "busy" in lowered:
        return text, (
            f"another process held the write lock for more than "
            f"{SQLITE_BUSY_TIMEOUT_MS / 1000:g} s, try again"
        )
    if url.get_backend_name() == "sqlite" and (
        isinstance(orig, OSError)
        or "unable to open" in lowered
        or "readonly" in lowered
        or "read-only" in lowered
        or "disk i/o" in lowered
    ):
        database = Path(url.database or "qmcp.db").expanduser()
        return text, (
            f"the database's directory {str(database.parent)!r} must exist (or be possible to "
            f"create) and be writable: fix that, or {SET_URL} "
            f"sqlite+aiosqlite:///PATH/{database.name} in a writable directory"
        )
    if (
        isinstance(orig, (ConnectionError, TimeoutError, socket.gaierror))
        or "connect call failed" in lowered
        or "could not connect" in lowered
        or "name or service not known" in lowered
    ):
        return text, (
            f"is the database server running and reachable at {url.host or 'localhost'}"
            f"{':' + str(url.port) if url.port else ''}? check the host and port in the URL"
        )
    if "password authentication" in lowered or ("role" in lowered and "does not exist" in lowered):
        return text, "check the user name and password in the URL"
    if "no such table" in lowered or "no such column" in lowered or "does not exist" in lowered:
        return (
            text,
            "the schema is not what this qmcp expects, is the database from a newer version?",
        )
    return text, ""


def describe(exc: BaseException, url: str) -> str:
    """A database error as one line: where, what went wrong, and what to do."""
    parsed = parse_url(url)
    where = parsed.render_as_string(hide_password=True)
    cause, fix = _cause_and_fix(exc, parsed)
    return f"database error in {where}: {cause}" + (f"; {fix}" if fix else "")


def translate(exc: BaseException, url: str, conflict: str | None = None) -> BaseException:
    """What a caller of the store sees for an exception raised by the database layer: a
    `DatabaseError` saying what failed and what to do, also for a driver that is not installed
    or a URL that names no database SQLAlchemy knows."""
    if isinstance(exc, QmcpError):
        return exc
    if conflict is not None and isinstance(exc, IntegrityError):
        return ConflictError(conflict)
    if isinstance(exc, (SQLAlchemyError, sqlite3.Error, OSError, ImportError)):
        return DatabaseError(describe(exc, url))
    return exc


@dataclass
class _Request:
    fn: Callable[[Connection], Any] | None  # None: a checkpoint of the WAL, nobody waits for it
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[Any] | None = None


def _deliver_all(answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in answers:
        if future.done():  # the caller was cancelled; the write happened all the same
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


_LOCKED = (OperationalError, sqlite3.OperationalError)


class SqliteWriter:
    """The one writing connection of a SQLite file in this process.

    A write runs at once on the caller's thread when it can start without waiting: nothing is
    queued before it, the connection is free, and SQLite's write lock is free (the connection's
    busy timeout is zero, except while the thread runs a batch). Otherwise it queues for the
    writer thread, which waits for the lock (up to the busy timeout), runs every queued write in
    one transaction, commits, and answers each caller on its own event loop. So the event loop
    never waits on another process's lock, an uncontended write costs no thread switch, and
    writes queued together share one commit.

    The WAL is checkpointed only by the writer thread, every WAL_CHECKPOINT_COMMITS commits
    (automatic checkpoints are off, as they would run inside a commit on the caller's thread).
    The thread ends when idle, closing the connection; the next write opens it again.
    """

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _thread, _closed, _pending
        self._use = threading.Lock()  # held by whoever uses the connection
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pending = 0  # writes queued or running on the thread
        self._connection: Connection | None = None
        self._commits = 0

    # -- on the caller's thread -------------------------------------------------------------

    def run_now(self, fn: Callable[[Connection], T]) -> tuple[bool, T | None]:
        """Run `fn` in a transaction here if that needs no waiting: (True, its result).

        (False, None) when it would wait (a write queued before it, the connection busy, or the
        lock held by another process): the caller submits it to the thread instead.
        """
        if self._pending or self._connection is None or not self._use.acquire(blocking=False):
            return False, None
        try:
            connection = self._connection
            if self._pending or connection is None:
                return False, None
            try:  # the connection's busy timeout is zero outside the thread's batches
                transaction = connection.begin()
            except _LOCKED:
                return False, None
            with transaction:
                result = fn(connection)
            self._committed()
            return True, result
        finally:
            self._use.release()

    def submit(self, fn: Callable[[Connection], T]) -> asyncio.Future[T]:
        """Queue `fn` for the writer thread; the future resolves on the caller's loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._enqueue(_Request(fn, loop, future))
        return future

    def _enqueue(self, request: _Request) -> None:
        with self._lock:  # the idle thread decides to exit under this lock, so none is lost
            if self._closed:
                raise DatabaseError(f"the database {self.url} was closed")
            self._queue.put(request)
            if request.fn is not None:  # a checkpoint orders nothing: writes need not wait
                self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="qmcp-sqlite-writer", daemon=True
                )
                self._thread.start()

    def _committed(self) -> None:
        """Count a commit; every WAL_CHECKPOINT_COMMITS, ask the thread for a checkpoint."""
        self._commits += 1
        if self._commits % WAL_CHECKPOINT_COMMITS == 0:
            with contextlib.suppress(DatabaseError):  # closing: the thread checkpoints at exit
                self._enqueue(_Request(None))

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued write, then close the connection and end the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self._use.acquire(timeout=0.1 if timeout is not None else -1):
            try:  # the thread had already gone idle, or never ran
                self._close_connection()
            finally:
                self._use.release()

    # -- on the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=WRITER_IDLE_SECONDS)
            except queue.Empty:
                with self._use, self._lock:  # idle: exit unless a write arrived meanwhile
                    if self._queue.empty():
                        self._thread = None
                        self._close_connection()
                        return
                continue
            batch = [first]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            requests = [r for r in batch if r is not None and r.fn is not None]
            checkpoint = len(requests) + (None in batch) < len(batch)
            if checkpoint:  # the bulk of it while writes go on, on a connection of its own
                with contextlib.suppress(Exception), self.engine.connect() as side:
                    side.connection.driver_connection.execute(  # type: ignore[union-attr]
                        "PRAGMA wal_checkpoint(PASSIVE)"
                    )
            with self._use:
                if checkpoint:
                    self._checkpoint()
                try:
                    self._execute(requests)
                except Exception as exc:  # a defect here must not leave callers waiting
                    self._answer(requests, [None] * len(requests), [exc] * len(requests))
                if None in batch:  # stop
                    self._close_connection()
            with self._lock:
                self._pending -= len(requests)
                if None in batch:
                    self._thread = None
                    return

    def _execute(self, writes: list[_Request]) -> None:
        if not writes:
            return
        if self._connection is None:
            try:
                self._connection = self.engine.connect()
            except Exception as exc:
                self._answer(writes, [None] * len(writes), [exc] * len(writes))
                return
        connection = self._connection
        raw = connection.connection.driver_connection
        assert raw is not None
        raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # the thread may wait
        try:
            self._run_batch(connection, writes)
        finally:
            raw.execute("PRAGMA busy_timeout=0")

    def _run_batch(self, connection: Connection, writes: list[_Request]) -> None:
        if len(writes) > 1:
            try:
                with connection.begin():
                    results = [r.fn(connection) for r in writes if r.fn is not None]
            except _LOCKED as exc:  # locked past the busy timeout, I/O: all would fail alike
                self._answer(writes, [None] * len(writes), [exc] * len(writes))
                return
            except Exception:
                pass  # one of them failed: run each alone so only its caller gets its error
            else:
                self._committed()
                self._answer(writes, results, [None] * len(writes))
                return
        for request in writes:
            assert request.fn is not None
            try:
                with connection.begin():
                    result = request.fn(connection)
            except Exception as exc:
                self._answer([request], [None], [exc])
            else:
                self._committed()
                self._answer([request], [result], [None])

    def _checkpoint(self) -> None:
        """Copy the WAL into the database without waiting for anyone (PASSIVE).

        Run with the connection held, so that no write of this process lands meanwhile: the
        checkpoint then completes and the next write starts the WAL over instead of growing it.
        It is short, as a checkpoint on another connection has just copied all but the last
        frames; writes arriving meanwhile queue for the thread, the event loop does not wait.
        """
        if self._connection is not None:
            raw = self._connection.connection.driver_connection
            with contextlib.suppress(sqlite3.Error):
                raw.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]

    def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.connection.driver_connection.execute(  # type: ignore[union-attr]
                    "PRAGMA wal_checkpoint(PASSIVE)"
                )
            with contextlib.suppress(Exception):
                connection.close()

    def _answer(
        self, batch: list[_Request], results: list[Any], errors: list[BaseException | None]
    ) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, ...]]] = {}
        for request, result, error in zip(batch, results, errors, strict=True):
            if request.loop is not None:
                by_loop.setdefault(request.loop, []).append((request.future, result, error))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_deliver_all, answers)


class _ReadSession:
    """`AsyncSession`'s read methods over a plain `Session` of a SQLite file, run on the caller's
    thread: what `Database.session` gives on a SQLite file (see `Database.read`). As with
    `AsyncSession`, results are buffered (`prebuffer_rows`), readable after the session closes."""

    def __init__(self, session: Session) -> None:
        self.sync_session = session

    async def execute(
        self,
        statement: Any,
        params: Any = None,
        *,
        execution_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        options = {**(execution_options or {}), "prebuffer_rows": True}
        return self.sync_session.execute(statement, params, execution_options=options, **kwargs)

    async def scalars(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        return (await self.execute(statement, params, **kwargs)).scalars()

    async def scalar(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        return (await self.execute(statement, params, **kwargs)).scalar()

    async def get(self, entity: Any, ident: Any, **kwargs: Any) -> Any:
        return self.sync_session.get(entity, ident, **kwargs)

    async def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(self.sync_session, *args, **kwargs)


class Database:
    """The connections of one database URL in this process: created on first use, closed once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.parsed = parse_url(url)
        self.is_sqlite = self.parsed.get_backend_name() == "sqlite"
        database = self.parsed.database
        self.file: Path | None = None
        if self.is_sqlite and database and database != ":memory:" and "mode=memory" not in url:
            self.file = Path(database).expanduser()
        self.pid = os.getpid()
        self.ready = False
        # When (monotonic) this process last looked for runs whose owner stopped (`Store`).
        self.swept_at = 0.0
        self._engine: AsyncEngine | None = None
        # The event loop `_engine` belongs to (PostgreSQL: asyncpg's connections are the loop's).
        self._engine_loop: asyncio.AbstractEventLoop | None = None
        self._writer: SqliteWriter | None = None
        self._reader: Engine | None = None

    @property
    def engine(self) -> AsyncEngine:
        """The async engine: the reads and writes of PostgreSQL and in-memory SQLite.

        On PostgreSQL it is the running event loop's: asyncpg's connections belong to the loop
        that opened them, so a `Store` used again under another loop (successive `asyncio.run`
        calls in one program) gets an engine of its own, and the old one's connections, whose
        loop has ended, are let go. (In-memory SQLite keeps its one engine: its data lives in
        its connection.)"""
        loop = _running_loop()
        if self._engine is not None and not self.is_sqlite and self._engine_loop is not loop:
            stale, self._engine = self._engine, None
            stale.sync_engine.dispose(close=False)
        if self._engine is None:
            from sqlalchemy.ext.asyncio import create_async_engine

            kwargs: dict[str, Any] = {}
            url: URL | str = self.url
            if self.is_sqlite:
                if self.file is not None:
                    self.file.parent.mkdir(parents=True, exist_ok=True)
                if self.parsed.get_driver_name() != "aiosqlite":
                    url = self.parsed.set(drivername="sqlite+aiosqlite")
                kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
            engine = create_async_engine(url, **kwargs)
            if self.is_sqlite:
                event.listen(engine.sync_engine, "connect", _sqlite_pragmas(SQLITE_BUSY_TIMEOUT_MS))
            self._engine, self._engine_loop = engine, loop
        return self._engine

    def _sqlite_writer(self) -> SqliteWriter:
        if self._writer is None:
            assert self.file is not None
            self.file.parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                self.parsed.set(drivername="sqlite+pysqlite"),
                poolclass=NullPool,
                connect_args={
                    "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
                    "check_same_thread": False,
                },
            )
            event.listen(engine, "connect", _sqlite_pragmas(SQLITE_BUSY_TIMEOUT_MS, writer=True))
            event.listen(engine, "begin", _begin_immediate)
            self._writer = SqliteWriter(engine, self.url)
        return self._writer

    async def write(
        self, fn: Callable[[Connection], T], *, conflict: str | None = None, now: bool = False
    ) -> T:
        """Run `fn(connection)` in one write transaction and return what it returns.

        `now`: a small write (microseconds of work) that may run on the caller's thread when
        SQLite's lock is free at once; large or slow ones (migrations, pruning) always run on
        the writer thread, so the event loop never does more than a small write's work.
        """
        try:
            if self.file is not None:
                writer = self._sqlite_writer()
                if now:
                    done, result = writer.run_now(fn)
                    if done:
                        await asyncio.sleep(0)  # a write is a turn: let other tasks run
                        return result  # type: ignore[return-value]
                return await writer.submit(fn)
            async with self.engine.begin() as connection:
                return await connection.run_sync(fn)
        except Exception as exc:
            translated = translate(exc, self.url, conflict)
            if translated is exc:
                raise
            raise translated from exc

    async def read(self, fn: Callable[[Session], T]) -> T:
        """Run `fn(session)`, a read, and return what it returns.

        A SQLite file is read on the caller's thread through a plain connection: in WAL mode a
        reader never waits for a writer, and a read of a few rows costs less than the hand-offs
        to aiosqlite's thread. Other databases read through the async engine.
        """
        try:
            if self.file is not None:
                with Session(self._sqlite_reader(), expire_on_commit=False) as session:
                    return fn(session)
            from sqlalchemy.ext.asyncio import AsyncSession

            async with AsyncSession(self.engine, expire_on_commit=False) as async_session:
                return await async_session.run_sync(fn)
        except Exception as exc:
            translated = translate(exc, self.url)
            if translated is exc:
                raise
            raise translated from exc

    def _sqlite_reader(self) -> Engine:
        if self._reader is None:
            assert self.file is not None
            # One connection per thread (SQLite connections are not shared across threads).
            engine = create_engine(
                self.parsed.set(drivername="sqlite+pysqlite"),
                poolclass=SingletonThreadPool,
                connect_args={"timeout": SQLITE_READ_BUSY_MS / 1000, "check_same_thread": False},
            )
            event.listen(engine, "connect", _sqlite_pragmas(SQLITE_READ_BUSY_MS))
            self._reader = engine
        return self._reader

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """An ORM session for reads; database errors become `DatabaseError`.

        On a SQLite file it is `_ReadSession`, the read methods of `AsyncSession` (`execute`,
        `scalars`, `scalar`, `get`, `run_sync`) over a plain session on the caller's thread, as
        `read` does; elsewhere an `AsyncSession`.
        """
        try:
            if self.file is not None:
                with Session(self._sqlite_reader(), expire_on_commit=False) as plain:
                    yield cast("AsyncSession", _ReadSession(plain))
                return
            from sqlalchemy.ext.asyncio import AsyncSession

            async with AsyncSession(self.engine, expire_on_commit=False) as session:
                yield session
        except Exception as exc:
            translated = translate(exc, self.url)
            if translated is exc:
                raise
            raise translated from exc

    def stop_writer(self, timeout: float | None = None) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop(timeout)
            writer.engine.dispose()

    async def close(self) -> None:
        """Finish queued writes, stop the writer, dispose the engines."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.dispose()
        if self._writer is not None:
            await asyncio.to_thread(self.stop_writer)
        engine, self._engine = self._engine, None
        if engine is not None:
            if self._engine_loop is _running_loop():
                await engine.dispose()
            else:  # opened under a loop that has ended: nothing of it can be awaited here
                engine.sync_engine.dispose(close=False)
        self.ready = False


_DATABASES: dict[str, Database] = {}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def database_for(url: str) -> Database:
    """This process's `Database` for `url` (a new one in a forked child)."""
    database = _DATABASES.get(url)
    if database is None or database.pid != os.getpid():
        database = _DATABASES[url] = Database(url)
    return database


async def close_database(url: str) -> None:
    database = _DATABASES.pop(url, None)
    if database is not None and database.pid == os.getpid():
        await database.close()


@atexit.register
def _stop_writers() -> None:
    """At exit, let each writer finish what is queued and close its connection cleanly."""
    for database in list(_DATABASES.values()):
        if database.pid == os.getpid():
            with contextlib.suppress(Exception):
                database.stop_writer(timeout=5)


__all__ = [
    "DATA_DIR",
    "DEFAULT_DATABASE_URL",
    "SQLITE_BUSY_TIMEOUT_MS",
    "Database",
    "DatabaseError",
    "database_for",
    "database_url",
]
