"""The MCP server: tools by area (`qmcp_server.tools`), resources and prompts, each a thin call
into the service layer (`qmcp.agentframework.service`), which the CLI calls too.

Building a server imports neither SQLModel nor SQLAlchemy nor any plugin: the service layer is
imported by the first tool call that needs it, and the registries load the plugins on their first
look-up, so a stdio client gets `initialize` and `tools/list` answered about as fast as by an
empty MCPServer. The transports live elsewhere: `server.run_stdio()` here, HTTP in
`qmcp_server.http`, which wraps a server built here; neither module imports the other.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from mcp.server.mcpserver import MCPServer

from qmcp import __version__
from qmcp.agentframework.llm import ProviderRegistry
from qmcp_server import prompts, resources, tools
from qmcp_server.sampling import SamplingProvider
from qmcp_server.state import ServerState

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

INSTRUCTIONS = """\
qmcp-server runs multi-agent LLM workflows. Typical flow: mixins_list and agents_list to see what
exists; agents_create for each agent (role + model: 'offline' needs no key, claude-… ids need
ANTHROPIC_API_KEY on the server, 'sampling' asks your own model); topologies_create to put agents
in slots (see topologies_create for each kind's slots); topologies_run with
an input object such as {"prompt": "..."}; read qmcp://executions/{id} for the full record. Long
runs: topologies_run with wait=false returns an execution id at once; poll executions_get."""


def build_server(db_url: str | None = None) -> MCPServer:
    """A server over the database at `db_url` (default: QMCP_DATABASE_URL, else qmcp.db in the per-user data directory)."""
    state = ServerState(db_url)
    # Registering loads no plugins; the registries load them (QMCP_PLUGINS included) on their
    # first look-up, which a tool call makes, so `tools/list` pays for none of them.
    ProviderRegistry.register("sampling", SamplingProvider)

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.runs.shutdown()

    mcp: MCPServer = MCPServer(
        name="qmcp-server",
        title="qmcp: multi-agent LLM topologies",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        log_level=log_level(),
    )
    tools.register(mcp, state)
    resources.register(mcp, state)
    prompts.register(mcp, state)
    return mcp


def log_level() -> LogLevel:
    level = os.environ.get("QMCP_LOG_LEVEL", "INFO").upper()
    if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        return level  # type: ignore[return-value]
    return "INFO"


def configure_logging() -> None:
    """Plain log lines on stderr: under stdio, stdout carries only JSON-RPC.

    Configured before the SDK's own (rich) handler would be, which costs milliseconds a line.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level(), handlers=[handler])
    logging.getLogger("qmcp").setLevel(log_level())


def run_stdio(server: MCPServer) -> None:
    """Serve over stdio (Claude Desktop) until the client closes stdin."""
    server.run()
