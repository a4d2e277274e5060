"""A throwaway PostgreSQL cluster for the tests: initdb into a temp dir, on 127.0.0.1, a free port.

The tests start one cluster per session (tests/conftest.py) and give each test that asks for
PostgreSQL a database of its own on it. The binaries are Debian's `postgresql` package
(scripts/test.sh installs it); `QMCP_TEST_PG_BINDIR` names another directory holding `initdb`
and `pg_ctl`. initdb refuses to run as root, so as root the cluster runs as the `postgres` user.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

# Durability is not what these tests exercise (a crash test kills a qmcp process, never the
# server), so the cluster skips fsync: creating a database per test stays cheap.
SERVER_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
)


def find_bindir() -> Path | None:
    """The directory holding `initdb` and `pg_ctl`: `QMCP_TEST_PG_BINDIR` if set (and only
    it), else the newest Debian version, else the one on PATH; None if there is none."""
    explicit = os.environ.get("QMCP_TEST_PG_BINDIR")
    if explicit:
        found = Path(explicit)
        return found if (found / "initdb").is_file() and (found / "pg_ctl").is_file() else None
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A running cluster; `url(name)` is an asyncpg URL for one of its databases."""

    bindir: Path
    root: Path
    port: int
    user: str | None  # the OS user the server runs as, when it is not the current one

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}\n{tail}"
            )

    @classmethod
    def start(cls, bindir: Path) -> Cluster:
        """initdb and start a cluster in a new temp dir, listening on 127.0.0.1 only."""
        root = Path(tempfile.mkdtemp(prefix="qmcp-pg-"))
        user = None
        if os.geteuid() == 0:
            user = "postgres"
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                shutil.rmtree(root, ignore_errors=True)
                raise RuntimeError(
                    "initdb refuses to run as root and there is no 'postgres' user to run it as: "
                    "install Debian's postgresql (it creates one) or run the tests as another user"
                ) from None
            os.chown(root, entry.pw_uid, entry.pw_gid)
        cluster = cls(bindir, root, free_port(), user)
        try:
            cluster._run(
                "initdb", "-D", str(cluster.data), "-U", "postgres", "--auth=trust",
                "--no-sync", "-E", "UTF8", "--locale=C.UTF-8",
            )  # fmt: skip
            options = f"-h 127.0.0.1 -p {cluster.port} -k {root} {SERVER_OPTIONS}"
            log = str(root / "server.log")
            cluster._run("pg_ctl", "-D", str(cluster.data), "-l", log, "-w", "-o", options, "start")
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cluster

    def stop(self) -> None:
        """Stop the server at once and remove its files."""
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _admin(self, statement: str) -> None:
        """One statement on the maintenance database, on a thread of its own: a test's event
        loop (and the thread's current loop) stays untouched."""
        import asyncpg

        async def run() -> None:
            connection = await asyncpg.connect(
                host="127.0.0.1", port=self.port, user="postgres", database="postgres"
            )
            try:
                await connection.execute(statement)
            finally:
                await connection.close()

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run()).result(timeout=60)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"qmcp_test_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database, ending any connection a test left open."""
        name = url.rsplit("/", 1)[1]
        with contextlib.suppress(Exception):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
