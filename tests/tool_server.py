"""A real MCP server for the tool tests, over stdio or streamable HTTP.

    python tests/tool_server.py                      # stdio
    python tests/tool_server.py http PORT            # streamable HTTP on 127.0.0.1:PORT/mcp

Every call is appended to the file named by `TOOL_SERVER_LOG` (one JSON line: tool, arguments,
pid), so tests count calls at the server. `gate` blocks while the file named by `TOOL_SERVER_GATE`
exists, so a test can kill the run while a call is in flight. `TOOL_SERVER_SECRET` is echoed by
`whoami` only as a hash, so a test can check that an `${VAR}` reached the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False)
DESTROYS = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False)

server = MCPServer("qmcp-test-tools")


def _log(tool: str, arguments: dict[str, object]) -> None:
    path = os.environ.get("TOOL_SERVER_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"tool": tool, "arguments": arguments, "pid": os.getpid()}) + "\n")


@server.tool(annotations=READ_ONLY)
def lookup(term: str) -> str:
    """Look a term up in a small glossary."""
    _log("lookup", {"term": term})
    glossary = {"mcp": "Model Context Protocol", "qmcp": "multi-agent topologies over MCP"}
    return glossary.get(term.lower(), f"no entry for {term}")


@server.tool(annotations=READ_ONLY)
def add(a: int, b: int) -> int:
    """Add two integers."""
    _log("add", {"a": a, "b": b})
    return a + b


@server.tool(annotations=WRITES)
def append_line(text: str) -> str:
    """Append a line to the server's notebook (not idempotent: each call adds one)."""
    _log("append_line", {"text": text})
    return f"appended: {text}"


@server.tool(annotations=WRITES)
def gate(label: str) -> str:
    """Wait while the gate file exists, then answer (lets a test stop a run mid-call)."""
    _log("gate", {"label": label})
    path = os.environ.get("TOOL_SERVER_GATE")
    while path and Path(path).exists():
        time.sleep(0.05)
    return f"passed the gate: {label}"


@server.tool(annotations=READ_ONLY)
def peek(label: str) -> str:
    """Like `gate`, but read-only: safe to make again."""
    _log("peek", {"label": label})
    path = os.environ.get("TOOL_SERVER_GATE")
    while path and Path(path).exists():
        time.sleep(0.05)
    return f"peeked: {label}"


@server.tool(annotations=DESTROYS)
def delete_everything(reason: str) -> str:
    """Delete every note (destructive)."""
    _log("delete_everything", {"reason": reason})
    return "deleted everything"


@server.tool(annotations=READ_ONLY)
def broken(reason: str) -> str:
    """Always fails (the tool reports an error)."""
    _log("broken", {"reason": reason})
    raise ToolError(f"broken on purpose: {reason}")


@server.tool(annotations=READ_ONLY)
def huge(size: int) -> str:
    """Return `size` characters."""
    _log("huge", {"size": size})
    return "x" * size


@server.tool(annotations=READ_ONLY)
def whoami() -> str:
    """Which process answers, and a hash of TOOL_SERVER_SECRET."""
    _log("whoami", {})
    secret = os.environ.get("TOOL_SERVER_SECRET", "")
    return json.dumps(
        {"pid": os.getpid(), "secret_sha": hashlib.sha256(secret.encode()).hexdigest()}
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
