"""`completion/complete`: the values an argument can take, as the user types them.

The protocol completes the arguments of prompts (`ref/prompt`) and of resource templates
(`ref/resource`), in both eras; it has no completion for tool arguments, so the tools' own
arguments are described in their input schemas (`Role` is an enum there) instead.

What completes: agent names (`qmcp://agents/{name}`), topology names (`qmcp://topologies/{name}`),
execution ids by prefix (`qmcp://executions/{execution_id}`, its view, `explain_execution`), and
in the prompts: roles, model specs, runner types and topology types.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from mcp.server.mcpserver import MCPServer
from mcp_types import (
    Completion,
    CompletionArgument,
    CompletionContext,
    PromptReference,
    ResourceTemplateReference,
)

from qmcp_server.prompts import PROMPT_ARGUMENTS, ROLES, STYLES
from qmcp_server.state import ServerState
from qmcp_server.ui import VIEW_RESOURCE

MAX_VALUES = 100  # the most a completion result may carry (the spec's bound)

Source = Callable[[str | None, str], Awaitable[Iterable[str]]]  # (database, what was typed)


async def agent_names(db_url: str | None, _: str) -> Iterable[str]:
    from qmcp.agentframework import service

    return [agent.name for agent in await service.list_agents(db_url=db_url)]


async def topology_names(db_url: str | None, _: str) -> Iterable[str]:
    from qmcp.agentframework import service

    return [topology.name for topology, _ in await service.list_topologies(db_url)]


async def execution_ids(db_url: str | None, typed: str) -> Iterable[str]:
    """The ids that start with what was typed, newest first (one more than shown, so the
    result can say there are more)."""
    from qmcp.agentframework import service

    return await service.execution_ids(typed, MAX_VALUES + 1, db_url)


async def runner_types(*_: str | None) -> Iterable[str]:
    from qmcp.agentframework import service

    return [runner["runner_type"] for runner in service.runners_list()]


async def topology_types(*_: str | None) -> Iterable[str]:
    from qmcp.agentframework import service

    return [kind["topology_type"] for kind in service.topology_kinds()]


async def styles(*_: str | None) -> Iterable[str]:
    return STYLES


async def roles(*_: str | None) -> Iterable[str]:
    return ROLES


async def model_specs(*_: str | None) -> Iterable[str]:
    """What `model` takes: the named models, their ids, the built-in providers and the
    registered functions (`function:<name>`)."""
    from qmcp.agentframework.llm.function import FUNCTIONS
    from qmcp.agentframework.models import Models

    named = Models.all()
    ids = dict.fromkeys(c.model for c in named.values() if c.provider == "anthropic")
    functions = [f"function:{name}" for name in FUNCTIONS.list()]
    return ["offline", "sampling", *ids, *named, "openai:", "anthropic:", *functions]


SOURCES: dict[str, Source] = {
    "agent": agent_names,
    "topology": topology_names,
    "execution": execution_ids,
    "runner": runner_types,
    "topology_type": topology_types,
    "style": styles,
    "role": roles,
    "model": model_specs,
}

# Each template's and each prompt's arguments, by the kind of value they take.
TEMPLATE_ARGUMENTS: dict[str, dict[str, str]] = {
    "qmcp://agents/{name}": {"name": "agent"},
    "qmcp://topologies/{name}": {"name": "topology"},
    "qmcp://executions/{execution_id}": {"execution_id": "execution"},
    VIEW_RESOURCE: {"execution_id": "execution"},
}


def matching(values: Iterable[str], typed: str) -> Completion:
    """The values that start with what was typed (case aside; an execution id's dashes are
    optional, as everywhere ids are taken), first come first, at most MAX_VALUES of them."""
    prefix = typed.strip().lower()
    bare = prefix.replace("-", "")
    found = [
        value
        for value in dict.fromkeys(values)
        if value.lower().startswith(prefix) or (bare and value.replace("-", "").startswith(bare))
    ]
    more = len(found) > MAX_VALUES  # then how many there are is not known (a source may cap)
    return Completion(values=found[:MAX_VALUES], total=None if more else len(found), has_more=more)


def kind_of(ref: PromptReference | ResourceTemplateReference, argument: str) -> str | None:
    """What kind of value `argument` of `ref` takes; None (no suggestions) for free text and for
    a prompt or template this server does not have. The spec says such a ref SHOULD be -32602,
    but the official conformance suite completes a prompt of its own fixture server and expects
    an answer, and an empty completion misleads no one."""
    if isinstance(ref, PromptReference):
        return PROMPT_ARGUMENTS.get(ref.name, {}).get(argument)
    return TEMPLATE_ARGUMENTS.get(ref.uri, {}).get(argument)


def register(mcp: MCPServer, state: ServerState) -> None:
    db_url = state.db_url

    @mcp.completion()
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion | None:
        """Complete one argument; free-text arguments (a request, a purpose) have none."""
        kind = kind_of(ref, argument.name)
        if kind is None:
            return None
        return matching(await _values(kind, db_url, argument.value), argument.value)


async def _values(kind: str, db_url: str | None, typed: str) -> Iterable[str]:
    from qmcp.agentframework.errors import QmcpError

    try:
        return await SOURCES[kind](db_url, typed)
    except QmcpError:  # no database: nothing to offer, and no reason to fail the keystroke
        return []
