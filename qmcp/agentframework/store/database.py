"""One database URL's connections in this process, and the one way every write reaches it.

Writes are functions of a SQLAlchemy `Connection` that run inside one transaction; `Database.write`
runs them, the same functions on every backend:

- SQLite (a file): a writer thread owns the only writing connection of this process (SQLAlchemy
  Core on a synchronous engine). Callers queue their functions; the thread takes every function
  waiting, runs them in one `BEGIN IMMEDIATE` transaction, commits, and answers each caller on its
  own event loop. The event loop never waits on SQLite's lock, so another process's long write
  cannot stall it, and writes that arrive together share a commit. A function that fails is
  retried alone, so only its own caller sees the error. The thread exits when idle and starts
  again on the next write.
- PostgreSQL (asyncpg), and in-memory SQLite: the async engine, `connection.run_sync(function)`
  inside `engine.begin()`.

Reads go through the async engine's sessions on every backend. Database errors surface as
`DatabaseError` (a `QmcpError`) naming the database and what to do; integrity errors that mean
"this already exists" are mapped by the caller to `ConflictError`.

The per-URL `Database` objects are owned by this module's registry until `close()` (or
`Store.close()`) disposes their engines and stops their writer; the next use opens them again.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from qmcp.agentframework.errors import ConflictError, QmcpError, ValidationError

T = TypeVar("T")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./agent.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# A writer thread with nothing to do for this long closes its connection and exits.
WRITER_IDLE_SECONDS = 2.0


class DatabaseError(QmcpError):
    """The database failed (locked too long, unreadable, full, or of an unknown schema)."""


def database_url(url: str | None = None) -> str:
    return url or os.environ.get("QMCP_DATABASE_URL") or DEFAULT_DATABASE_URL


def parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except Exception as exc:
        raise ValidationError(
            f"invalid database URL {url!r}: {exc}; "
            "use e.g. sqlite+aiosqlite:///./agent.db or postgresql+asyncpg://…"
        ) from None


def _sqlite_pragmas(busy_ms: int, *, autocommit: bool = False) -> Any:
    def apply(dbapi_connection: Any, _record: Any) -> None:
        if autocommit:  # transactions are begun explicitly (BEGIN IMMEDIATE), never implicitly
            dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return apply


def _begin_immediate(connection: Connection) -> None:
    # Take the write lock when the transaction starts: a transaction that reads and then writes
    # cannot then fail on a lock another process took in between (SQLITE_BUSY_SNAPSHOT).
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def describe(exc: BaseException, url: str) -> str:
    """A database error as one clear sentence: where, what, and what to do."""
    where = parse_url(url).render_as_string(hide_password=True)
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip() or type(orig).__name__
    hint = ""
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        hint = (
            f"; another process held the write lock for more than "
            f"{SQLITE_BUSY_TIMEOUT_MS // 1000} s, try again"
        )
    elif "unable to open" in lowered or "readonly" in lowered or "read-only" in lowered:
        hint = "; check that the file's directory exists and is writable"
    elif "no such table" in lowered or "no such column" in lowered or "does not exist" in lowered:
        hint = "; the schema is not what this qmcp expects, is the database from a newer version?"
    return f"database error in {where}: {text}{hint}"


def translate(exc: BaseException, url: str, conflict: str | None = None) -> BaseException:
    """What a caller of the store sees for an exception raised by the database layer."""
    if isinstance(exc, QmcpError):
        return exc
    if conflict is not None and isinstance(exc, IntegrityError):
        return ConflictError(conflict)
    if isinstance(exc, (SQLAlchemyError, OSError)):
        return DatabaseError(describe(exc, url))
    return exc


@dataclass
class _Request:
    fn: Callable[[Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _deliver_all(answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in answers:
        if future.done():  # the caller was cancelled; the write happened all the same
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class SqliteWriter:
    """The one writing connection of a SQLite file in this process, on a thread of its own."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, fn: Callable[[Connection], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:  # the idle thread decides to exit under this lock, so none is lost
            if self._closed:
                raise DatabaseError(f"the database {self.url} was closed")
            self._queue.put(_Request(fn, loop, future))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="qmcp-sqlite-writer", daemon=True
                )
                self._thread.start()
        return future

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued write, then close the connection and end the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        connection: Connection | None = None
        try:
            while True:
                try:
                    first = self._queue.get(timeout=WRITER_IDLE_SECONDS)
                except queue.Empty:
                    with self._lock:  # idle: exit unless a write arrived meanwhile
                        if self._queue.empty():
                            self._thread = None
                            return
                    continue
                batch: list[_Request] = []
                stop = first is None
                if first is not None:
                    batch.append(first)
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                    else:
                        batch.append(item)
                if batch:
                    if connection is None:
                        try:
                            connection = self.engine.connect()
                        except BaseException as exc:
                            self._answer(batch, [None] * len(batch), [exc] * len(batch))
                            batch = []
                    if batch and connection is not None:
                        self._execute(connection, batch)
                if stop:
                    return
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()

    def _execute(self, connection: Connection, batch: list[_Request]) -> None:
        if len(batch) > 1:
            try:
                with connection.begin():
                    results = [request.fn(connection) for request in batch]
            except OperationalError as exc:  # locked, I/O: every write of the batch would fail
                self._answer(batch, [None] * len(batch), [exc] * len(batch))
                return
            except Exception:
                pass  # one of them failed: run each alone so only its caller gets its error
            else:
                self._answer(batch, results, [None] * len(batch))
                return
        for request in batch:
            try:
                with connection.begin():
                    result = request.fn(connection)
            except Exception as exc:
                self._answer([request], [None], [exc])
            else:
                self._answer([request], [result], [None])

    def _answer(
        self, batch: list[_Request], results: list[Any], errors: list[BaseException | None]
    ) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, ...]]] = {}
        for request, result, error in zip(batch, results, errors, strict=True):
            by_loop.setdefault(request.loop, []).append((request.future, result, error))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_deliver_all, answers)


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
        self._engine: AsyncEngine | None = None
        self._writer: SqliteWriter | None = None

    @property
    def engine(self) -> AsyncEngine:
        """The async engine: every read, and the writes of PostgreSQL and in-memory SQLite."""
        if self._engine is None:
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
            self._engine = engine
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
            event.listen(
                engine, "connect", _sqlite_pragmas(SQLITE_BUSY_TIMEOUT_MS, autocommit=True)
            )
            event.listen(engine, "begin", _begin_immediate)
            self._writer = SqliteWriter(engine, self.url)
        return self._writer

    async def write(self, fn: Callable[[Connection], T], *, conflict: str | None = None) -> T:
        """Run `fn(connection)` in one write transaction and return what it returns."""
        try:
            if self.file is not None:
                return await self._sqlite_writer().submit(fn)
            async with self.engine.begin() as connection:
                return await connection.run_sync(fn)
        except Exception as exc:
            translated = translate(exc, self.url, conflict)
            if translated is exc:
                raise
            raise translated from exc

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """An ORM session for reads; database errors become `DatabaseError`."""
        try:
            async with AsyncSession(self.engine, expire_on_commit=False) as session:
                yield session
        except SQLAlchemyError as exc:
            raise translate(exc, self.url) from exc

    def stop_writer(self, timeout: float | None = None) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.stop(timeout)
            writer.engine.dispose()

    async def close(self) -> None:
        """Finish queued writes, stop the writer, dispose the engines."""
        if self._writer is not None:
            await asyncio.to_thread(self.stop_writer)
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()
        self.ready = False


_DATABASES: dict[str, Database] = {}


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
    "DEFAULT_DATABASE_URL",
    "SQLITE_BUSY_TIMEOUT_MS",
    "Database",
    "DatabaseError",
    "database_for",
    "database_url",
]
