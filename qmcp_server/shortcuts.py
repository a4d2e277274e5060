"""Fewer calls for a client: a topology run given whole in `topologies_run` (an inline topology,
nothing stored but the execution), and every stored topology offered as a tool of its own,
`run_<name>`, whose input is what its kind reads (`prompt`, `topic` or `task`).

The `run_<name>` tools are read from the database when a client lists the tools, never when the
server is built: until the service layer has loaded (the server's start-up check loads it in the
background) a listing leaves them out, and the server says `notifications/tools/list_changed` once
they are there. Creating, changing or deleting a topology says it too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import Context
from mcp_types import CallToolResult, InputRequiredResult, TextContent, Tool

from qmcp_server.annotations import RUN
from qmcp_server.notify import Origin
from qmcp_server.runs import launch
from qmcp_server.sampling import resumed_execution
from qmcp_server.schemas import InlineTopology, RunOutcome
from qmcp_server.state import ServerState
from qmcp_server.ui import TOOL_META

if TYPE_CHECKING:
    from qmcp.agentframework.models import Topology
    from qmcp.agentframework.service import StartedRun

log = logging.getLogger("qmcp.server")

PREFIX = "run_"
SERVICE = "qmcp.agentframework.service"
OPTIONS = ("runner", "wait")


async def tools_changed(state: ServerState, ctx: Context[Any, Any] | None) -> None:
    """The tool list changed (a topology was created, changed or deleted)."""
    await state.notifier.list_changed("tools", Origin.of(ctx) if ctx is not None else None)


async def start_inline(
    state: ServerState,
    ctx: Context[Any, Any],
    topology: InlineTopology,
    input: dict[str, Any] | str,
    runner: str,
    run_config: dict[str, Any] | None,
    max_concurrent: int | None,
) -> StartedRun:
    """Record the execution of an inline topology (and, with `save`, store it first)."""
    from qmcp.agentframework import service
    from qmcp.agentframework.errors import ValidationError

    if topology.save and not topology.name:
        raise ValidationError("an inline topology saved for later needs a name")
    slots: dict[str, str | dict[str, Any]] = {}
    for slot, member in topology.slots.items():
        if isinstance(member, str):
            slots[slot] = member
            continue
        fields = member.model_dump(exclude_none=True, exclude={"capabilities"})
        if member.capabilities is not None:
            fields["capabilities"] = [c.model_dump() for c in member.capabilities]
        slots[slot] = fields
    started = await service.start_inline_run(
        topology.topology_type,
        slots,
        input,
        name=topology.name or service.INLINE_NAME,
        config=topology.config,
        description=topology.description,
        save=topology.save,
        runner_type=runner,
        run_config=run_config,
        max_concurrent=max_concurrent,
        db_url=state.db_url,
    )
    if topology.save:
        await tools_changed(state, ctx)
    return started


class RunTools:
    """The `run_<name>` tools of one server: listed from the database, called by name."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._load: asyncio.Task[None] | None = None
        self._announcing: asyncio.Task[None] | None = None

    async def list(self) -> list[Tool]:
        if not self._loaded():  # cold start: answer now, announce them once loaded
            return []
        from qmcp.agentframework import service
        from qmcp.agentframework.errors import QmcpError

        try:
            rows = await service.list_topologies(self.state.db_url)
        except QmcpError:  # no database: the start-up check said why; the tools say it too
            return []
        return [tool_for(topology) for topology, _ in rows]

    def _loaded(self) -> bool:
        """Whether the service layer is imported; if not, it is imported now, off the event
        loop (it takes about a second), and the tools are announced after it."""
        if _imported(SERVICE):
            return True
        if self._load is None:
            self._load = asyncio.get_running_loop().create_task(asyncio.to_thread(_import_service))
            self._load.add_done_callback(self._announce)
        return False

    def _announce(self, load: asyncio.Task[None]) -> None:
        if not load.cancelled() and load.exception() is None:
            self._announcing = asyncio.get_running_loop().create_task(self._announce_tools())

    async def _announce_tools(self) -> None:
        if await self.list():
            await self.state.notifier.list_changed("tools")

    async def call(
        self, name: str, arguments: dict[str, Any], ctx: Context[Any, Any]
    ) -> CallToolResult | InputRequiredResult | None:
        """Run the topology `name` names; None when no stored topology has that tool name."""
        if not name.startswith(PREFIX):
            return None
        from qmcp.agentframework import service
        from qmcp.agentframework.errors import NotFoundError, QmcpError

        try:
            topology, _ = await service.get_topology(name[len(PREFIX) :], self.state.db_url)
        except NotFoundError:
            return None
        except QmcpError as exc:
            return error_result(str(exc))
        field = service.input_field(str(topology.topology_type))
        try:
            text, runner, wait = parse_arguments(name, field, arguments)
            resumed = resumed_execution(ctx)  # a stateless client answering the run's questions
            if resumed is not None:
                started = await service.claim_run(
                    resumed, runner_type=runner, db_url=self.state.db_url
                )
            else:
                started = await service.start_run(
                    topology.name, {field: text}, runner_type=runner, db_url=self.state.db_url
                )
            result = await launch(ctx, self.state.runs, started, wait)
        except QmcpError as exc:
            return error_result(str(exc))
        if isinstance(result, InputRequiredResult):
            return result
        return outcome_result(result)


def _imported(name: str) -> bool:
    """Whether module `name` is imported in full: a module another thread is still importing
    is in `sys.modules` already, marked as importlib marks it (`__spec__._initializing`), and
    touching it would block the event loop until that import ends."""
    module = sys.modules.get(name)
    return module is not None and not getattr(module.__spec__, "_initializing", False)


def _import_service() -> None:
    from qmcp.agentframework import service  # noqa: F401


def tool_for(topology: Topology) -> Tool:
    from qmcp.agentframework import service  # loaded already: tools are listed after it is

    kind = str(topology.topology_type)
    field = service.input_field(kind)
    about = topology.description.strip() or f"Run the {kind} topology {topology.name!r}."
    return Tool(
        name=f"{PREFIX}{topology.name}",
        title=f"Run {topology.name}",
        description=f"{about} Records an execution (qmcp://executions/{{id}}); the same as "
        f'topologies_run with topology={topology.name!r} and input {{"{field}": …}}.',
        input_schema={
            "type": "object",
            "properties": {
                field: {"type": "string", "minLength": 1, "description": f"the {field} it reads"},
                "runner": {
                    "type": "string",
                    "default": "local",
                    "description": "local, async or metaflow (see runners_list)",
                },
                "wait": {
                    "type": "boolean",
                    "default": True,
                    "description": "false: return the execution id at once and run on",
                },
            },
            "required": [field],
            "additionalProperties": False,
        },
        output_schema=RunOutcome.model_json_schema(),
        annotations=RUN,
        _meta=TOOL_META,
    )


def parse_arguments(name: str, field: str, arguments: dict[str, Any]) -> tuple[str, str, bool]:
    """The request text, runner and wait of a `run_<name>` call, or one message saying what
    is wrong with them."""
    from qmcp.agentframework.errors import ValidationError

    unknown = sorted(set(arguments) - {field, *OPTIONS})
    if unknown:
        raise ValidationError(
            f"{name} takes no argument(s) {', '.join(unknown)}; it takes: {field}, runner, wait"
        )
    text = arguments.get(field)
    if not isinstance(text, str) or not text.strip():
        raise ValidationError(f"{name} needs {field!r}: the non-empty text the topology reads")
    runner = arguments.get("runner", "local")
    wait = arguments.get("wait", True)
    if not isinstance(runner, str):
        raise ValidationError(f"{name}: runner must be a runner's name such as 'local'")
    if not isinstance(wait, bool):
        raise ValidationError(f"{name}: wait must be true or false")
    return text, runner, wait


def outcome_result(outcome: RunOutcome) -> CallToolResult:
    data = outcome.model_dump(mode="json")
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(data, indent=2))],
        structured_content=data,
    )


def error_result(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)
