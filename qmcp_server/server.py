"""The MCP server: tools by area (`qmcp_server.tools`), resources and prompts, each a thin call
into the service layer (`qmcp.agentframework.service`), which the CLI calls too.

Building a server imports neither SQLModel nor SQLAlchemy nor any plugin: the service layer is
imported by the first tool call that needs it, and the registries load the plugins on their first
look-up, so a stdio client gets `initialize` and `tools/list` answered about as fast as by an
empty MCPServer. The transports live elsewhere: `server.run_stdio()` here, HTTP in
`qmcp_server.http`, which wraps a server built here; neither module imports the other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, CallToolResult, GetPromptResult, InputRequiredResult, Tool

from qmcp import __version__
from qmcp.agentframework import telemetry
from qmcp.agentframework.llm import ProviderRegistry
from qmcp_server import completions, prompts, resources, tasks, tools, ui
from qmcp_server.errors import invalid_params
from qmcp_server.sampling import SamplingProvider, request_state_security
from qmcp_server.shortcuts import RunTools
from qmcp_server.state import ServerState

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

INSTRUCTIONS = """\
qmcp-server runs multi-agent LLM workflows. Typical flow: mixins_list and agents_list to see what
exists; agents_create for each agent (role + model: 'offline' needs no key, claude-… ids need
ANTHROPIC_API_KEY on the server, 'sampling' asks your own model); topologies_create to put agents
in slots (see topologies_create for each kind's slots); topologies_run with
an input object such as {"prompt": "..."}; read qmcp://executions/{id} for the full record. In
one call: topologies_run with topology={"topology_type": ..., "slots": {slot: {"role": ...,
"model": ...}}} stores nothing but the execution; a stored topology is also the tool
run_<name>. Long runs: topologies_run and executions_resume run as MCP tasks for clients that
support them (the task id is the execution id); otherwise pass wait=false to get the execution id
at once and read executions_get until it ends."""


class QmcpServer(MCPServer):
    """MCPServer answering requests it cannot take with JSON-RPC's -32602 (Invalid params), as the
    MCP spec has it: an unknown tool (the SDK returns an error result), an unknown prompt or a
    prompt's missing or unknown arguments (the SDK sends code 0, or a bare -32603 on 2026-07-28).
    It also offers each stored topology as a tool, `run_<name>` (`qmcp_server.shortcuts`).
    """

    run_tools: RunTools | None = None

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        if self._tool_manager.get_tool(name) is None:
            if self.run_tools is not None and context is not None:
                result = await self.run_tools.call(name, arguments, context)
                if result is not None:
                    return result
            known = ", ".join(sorted(t.name for t in self._tool_manager.list_tools()))
            raise invalid_params(f"unknown tool {name!r}; known: {known}")
        return await super().call_tool(name, arguments, context)

    async def list_tools(self) -> list[Tool]:
        listed = await super().list_tools()
        if self.run_tools is not None:
            listed += await self.run_tools.list()
        return tasks.with_task_support(listed)

    async def get_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        context: Context[Any, Any] | None = None,
    ) -> GetPromptResult | InputRequiredResult:
        prompt = self._prompt_manager.get_prompt(name)
        if prompt is None:
            known = ", ".join(sorted(p.name for p in self._prompt_manager.list_prompts()))
            raise invalid_params(f"unknown prompt {name!r}; known: {known}")
        declared = {a.name: a.required for a in prompt.arguments or []}
        given = set(arguments or {})
        if missing := sorted(a for a, required in declared.items() if required and a not in given):
            raise invalid_params(f"prompt {name!r} needs the argument(s): {', '.join(missing)}")
        if unknown := sorted(given - set(declared)):
            raise invalid_params(
                f"prompt {name!r} takes no argument(s) {', '.join(unknown)}; "
                f"it takes: {', '.join(declared)}"
            )
        try:
            return await super().get_prompt(name, arguments, context)
        except ValueError as exc:  # how the SDK reports a prompt that failed to render
            raise MCPError(code=INTERNAL_ERROR, message=str(exc)) from None


def build_server(db_url: str | None = None, *, remote: bool = False) -> MCPServer:
    """A server over the database at `db_url` (default: QMCP_DATABASE_URL, else qmcp.db in the
    per-user data directory). `remote`: its clients reach it over HTTP, so agents they create
    may not start programs on this machine (tool servers with a command) unless
    QMCP_ALLOW_REMOTE_TOOL_COMMANDS=1."""
    state = ServerState(db_url, remote=remote)
    telemetry.setup()  # OTLP export when configured, so the SDK's request spans go out too
    # Registering loads no plugins; the registries load them (QMCP_PLUGINS included) on their
    # first look-up, which a tool call makes, so `tools/list` pays for none of them.
    ProviderRegistry.register("sampling", SamplingProvider)

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        check = asyncio.create_task(check_database(state.db_url))
        try:
            yield
        finally:
            # Let the check say its line (a client may close at once); it cannot hold us long.
            await asyncio.wait([check], timeout=CHECK_WAIT_SECONDS)
            check.cancel()
            await state.runs.shutdown()

    long_runs = tasks.extension(state)  # MCP tasks, both eras (qmcp_server.tasks)
    mcp = QmcpServer(
        name="qmcp-server",
        title="qmcp: multi-agent LLM topologies",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        log_level=log_level(),
        extensions=[ui.apps_extension(), long_runs],  # the run view as an MCP App; tasks
        subscriptions=state.notifier.bus,  # 2026-07-28 `subscriptions/listen` (qmcp_server.notify)
        # Sealing of stateless rounds' request_state: this process's key unless
        # QMCP_REQUEST_STATE_KEYS shares one between processes (qmcp_server.sampling).
        request_state_security=request_state_security(),
    )
    # The 2025-era subscribe, unsubscribe and setLevel have no MCPServer decorator; the SDK
    # keeps its low-level server private for now (its own in-memory transport reaches it so).
    state.notifier.install(mcp._lowlevel_server)
    mcp.run_tools = RunTools(state)
    completions.register(mcp, state)
    tasks.register(mcp, long_runs)
    tools.register(mcp, state)
    resources.register(mcp, state)
    prompts.register(mcp, state)
    return mcp


CHECK_WAIT_SECONDS = 5.0
log = logging.getLogger("qmcp.server")


async def check_database(db_url: str | None) -> bool:
    """Open the database once as the server starts and log one line on stderr saying where it is.

    A database that cannot be opened does not stop the server: the line says why and what to do,
    and every tool that needs the database answers the same error. An MCP client shows a server
    that exits at start as a bare "disconnected" (its stderr in a log file few users open), while
    a tool error reaches the user, and the model, in the conversation.
    """
    from qmcp.agentframework.errors import QmcpError

    # The service layer's import is the slow part of a cold start: off the event loop, so that
    # `initialize` and `tools/list` are answered meanwhile.
    service = await asyncio.to_thread(_import_service)
    try:
        store = service.Store(db_url)
        where = store.database.parsed.render_as_string(hide_password=True)
        await store.init()
    except QmcpError as exc:
        log.error("qmcp-server: %s (every tool that needs the database answers this)", exc)
        return False
    except Exception as exc:  # a defect: say so in one line, the tools report it when called
        log.error("qmcp-server: checking the database failed: %s: %s", type(exc).__name__, exc)
        return False
    log.info("qmcp-server: database %s", where)
    return True


def _import_service() -> Any:
    from qmcp.agentframework import service

    return service


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
