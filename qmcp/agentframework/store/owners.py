"""Who runs an execution: a token naming this process, and whether a token's process lives."""

from __future__ import annotations

import os
import socket
from pathlib import Path

_OWNER: tuple[int, str] | None = None  # (pid, token) of this process, computed once per pid


def _process_start_token(pid: int) -> str | None:
    """The kernel's start time of a process, so a reused pid is not taken for the old one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_token() -> str:
    """`host:pid:start`: names this process, and no other process ever again."""
    global _OWNER
    pid = os.getpid()
    if _OWNER is None or _OWNER[0] != pid:  # a forked child is another process
        _OWNER = (pid, f"{socket.gethostname()}:{pid}:{_process_start_token(pid) or '-'}")
    return _OWNER[1]


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
