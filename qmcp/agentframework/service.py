"""Every operation the CLI and the MCP server offer, as one library call each.

Both front ends are thin wrappers over these functions, so they can never disagree.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypedDict, TypeVar, Unpack

from pydantic import ValidationError as PydanticValidationError

from qmcp.agentframework.diagram import mermaid
from qmcp.agentframework.errors import (
    ConflictError,
    NotFoundError,
    ValidationError,
    describe_validation_error,
)
from qmcp.agentframework.mixins import MixinRegistry
from qmcp.agentframework.models import (
    AgentConfig,
    AgentRole,
    AgentType,
    Approval,
    CapabilityConfig,
    Execution,
    ExecutionStatus,
    Invocation,
    ModelConfig,
    Models,
    Topology,
    TopologyType,
)
from qmcp.agentframework.runners import (
    BaseRunner,
    PreparedRun,
    RunConfig,
    RunnerRegistry,
    RunResult,
)

# RunConfig, RunResult and InvocationEvent are the run vocabulary the CLI and the MCP server
# speak; they import them from here, the layer they call.
from qmcp.agentframework.runners.engine import EventHandler, live_engine
from qmcp.agentframework.runners.engine import InvocationEvent as InvocationEvent
from qmcp.agentframework.store import Store, lease_seconds
from qmcp.agentframework.store.core import PruneResult
from qmcp.agentframework.text import describe_bad_json, lone_surrogate
from qmcp.agentframework.topologies import SubTopology, TopologyRegistry

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SLOT_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_DESCRIPTION = 10_000
TOPOLOGY_PREFIX = "topology:"
MAX_ID = 2**63 - 1  # the largest INTEGER SQLite and PostgreSQL's BIGINT hold
MAX_PRUNE_DAYS = 36_500  # a century
INLINE_NAME = "inline"  # an inline topology's name when it is given none

T = TypeVar("T")


def check_text(what: str, value: T) -> T:
    """Refuse what JSON and UTF-8 cannot carry, anywhere in user input: a lone surrogate in a
    string or a key, and NaN, Infinity or -Infinity as a number; the message names where.

    Python strings can hold a lone surrogate (a JSON "\\ud800" escape, argv bytes decoded with
    surrogateescape) but UTF-8 cannot, so it would fail later, in SQLite or in a request body.
    Python's json reads and writes NaN and Infinity, but they are not JSON: SQLite would store
    them, PostgreSQL refuse them, and other readers choke on them.
    """
    pending: list[Any] = [value]
    seen: set[int] = set()
    while pending:  # no recursion: deep JSON must not raise RecursionError here
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and lone_surrogate(item) is not None:
                raise ValidationError(describe_bad_json(what, value) or f"{what} is not valid JSON")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValidationError(describe_bad_json(what, value) or f"{what} is not valid JSON")
        elif isinstance(item, Mapping | list | tuple) and id(item) not in seen:
            seen.add(id(item))  # containers of `value`: alive, so their ids stay theirs
            if isinstance(item, Mapping):
                pending.extend(item.keys())
                pending.extend(item.values())
            else:
                pending.extend(item)
    return value


def check_name(kind: str, name: str) -> str:
    check_text(f"{kind} name", name)
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValidationError(
            f"invalid {kind} name {str(name)[:120]!r}: use 1-100 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def check_slot(slot: str) -> str:
    check_text("slot name", slot)
    if not isinstance(slot, str) or not SLOT_PATTERN.match(slot):
        raise ValidationError(
            f"invalid slot name {str(slot)[:120]!r}: use letters, digits and '_', starting with a "
            "letter or '_' (for example ensemble_0, aggregator, stage_1)"
        )
    return slot


def check_description(description: str | None) -> str:
    text = check_text("description", description or "")
    if len(text) > MAX_DESCRIPTION:
        raise ValidationError(
            f"description is {len(text)} characters; the limit is {MAX_DESCRIPTION}"
        )
    return text


def parse_json(text: str, what: str) -> Any:
    """Parse user JSON, with a one-line message that says what was wrong."""
    check_text(what, text)
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValidationError(f"{what} is nested too deeply") from None
    except ValueError as exc:
        raise ValidationError(f"{what} is not valid JSON: {exc}") from None
    return check_text(what, value)  # "\\ud800" escapes decode to lone surrogates


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """Parse user JSON that must be an object, with a message that says what was wrong."""
    value = parse_json(text, what)
    if not isinstance(value, dict):
        raise ValidationError(f'{what} must be a JSON object such as {{"prompt": "…"}}')
    return value


# -- agents ---------------------------------------------------------------------------------


class AgentFields(TypedDict, total=False):
    """What an agent is made of besides its name and role (`build_agent`'s keywords)."""

    description: str | None
    model: str | ModelConfig | None
    system_prompt: str | None
    temperature: float | None
    max_tokens: int | None
    capabilities: list[dict[str, Any]] | None
    tools: list[dict[str, Any]] | None
    max_tool_calls: int | None
    fallback_models: list[str] | None
    base_url: str | None
    api_key_env: str | None


async def create_agent(
    name: str, role: str | AgentRole, *, db_url: str | None = None, **fields: Unpack[AgentFields]
) -> AgentType:
    """Create an agent type (checked as `build_agent` checks it). `tools` are MCP servers (see
    `ToolServer`); `base_url` and `api_key_env` set the endpoint of its model (openai);
    `fallback_models` are model specs that answer, in order, when the primary fails for good."""
    return await Store(db_url).add_agent(build_agent(name, role, **fields))


def build_agent(
    name: str,
    role: str | AgentRole,
    *,
    description: str | None = None,
    model: str | ModelConfig | None = None,
    system_prompt: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    capabilities: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
    max_tool_calls: int | None = None,
    fallback_models: list[str] | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
) -> AgentType:
    """An agent type checked as `create_agent` checks it, not stored (an inline topology's)."""
    check_name("agent", name)
    check_text("role", role)
    parsed_role = AgentRole.parse(role)
    config = _agent_config(
        {"model_config_obj": Models.default()} if model is None else {},
        model=model,
        system_prompt=system_prompt,
        temperature=temperature,
        max_tokens=max_tokens,
        capabilities=capabilities or None,
        tools=tools,
        max_tool_calls=max_tool_calls,
        fallback_models=fallback_models,
        base_url=base_url,
        api_key_env=api_key_env,
    )
    return AgentType(
        name=name,
        description=check_description(description),
        role=parsed_role,
        config=config.model_dump(mode="json"),
    )


async def update_agent(
    name: str,
    *,
    description: str | None = None,
    role: str | AgentRole | None = None,
    model: str | ModelConfig | None = None,
    system_prompt: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    capabilities: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
    max_tool_calls: int | None = None,
    fallback_models: list[str] | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
    db_url: str | None = None,
) -> AgentType:
    """Change the given fields of an agent (None: keep), checked as `create_agent` checks them;
    its version goes up by one. Executions keep the agent as it was when they ran."""
    check_text("agent name", name)
    check_text("role", role)
    given = (
        description,
        role,
        model,
        system_prompt,
        temperature,
        max_tokens,
        capabilities,
        tools,
        max_tool_calls,
        fallback_models,
        base_url,
        api_key_env,
    )
    if all(value is None for value in given):
        raise ValidationError(
            f"nothing to change in agent {name!r}: give a description, role, model, system "
            "prompt, temperature, max tokens, capabilities, tools, max tool calls, fallback "
            "models, base URL or API key variable"
        )
    store = Store(db_url)
    current = await store.get_agent(name)
    config = _agent_config(
        dict(current.config or {}),
        model=model,
        system_prompt=system_prompt,
        temperature=temperature,
        max_tokens=max_tokens,
        capabilities=capabilities,
        tools=tools,
        max_tool_calls=max_tool_calls,
        fallback_models=fallback_models,
        base_url=base_url,
        api_key_env=api_key_env,
    )
    values: dict[str, Any] = {"config": config.model_dump(mode="json")}
    if role is not None:
        values["role"] = AgentRole.parse(role)
    if description is not None:
        values["description"] = check_description(description)
    return await store.update_agent(name, values)


def _agent_config(
    fields: dict[str, Any],
    *,
    model: str | ModelConfig | None,
    system_prompt: str | None,
    temperature: float | None,
    max_tokens: int | None,
    capabilities: list[dict[str, Any]] | None,
    tools: list[dict[str, Any]] | None = None,
    max_tool_calls: int | None = None,
    fallback_models: list[str] | None = None,
    base_url: str | None = None,
    api_key_env: str | None = None,
) -> AgentConfig:
    """`fields` (an agent's config so far) with the given values set (None: keep), validated:
    strict text, known model and mixins. What creating and updating an agent both check."""
    check_text("model", model)
    check_text("system prompt", system_prompt)
    check_text("capabilities", capabilities)
    check_text("temperature", temperature)
    check_text("tools", tools)
    check_text("fallback models", fallback_models)
    check_text("base URL", base_url)
    check_text("API key variable", api_key_env)
    given = {
        "model_config_obj": Models.parse(model) if isinstance(model, str) else model,
        "system_prompt": system_prompt,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "tools": tools,
        "max_tool_calls": max_tool_calls,
        "fallback_models": (
            None if fallback_models is None else [Models.parse(m) for m in fallback_models]
        ),
    }
    fields = fields | {key: value for key, value in given.items() if value is not None}
    endpoint = {"base_url": base_url, "api_key_env": api_key_env}
    endpoint = {key: value or None for key, value in endpoint.items() if value is not None}
    try:
        if endpoint:  # "" clears a setting
            primary = fields.get("model_config_obj") or Models.default()
            if not isinstance(primary, ModelConfig):
                primary = ModelConfig.model_validate(primary)
            fields["model_config_obj"] = ModelConfig.model_validate(primary.model_dump() | endpoint)
        if capabilities is not None:
            fields["capabilities"] = [CapabilityConfig.model_validate(c) for c in capabilities]
        config = AgentConfig(**fields)
    except PydanticValidationError as exc:
        raise ValidationError(f"invalid agent config: {describe_validation_error(exc)}") from None
    MixinRegistry.resolve(config.capabilities)
    check_text("agent config", config.model_dump())  # a ModelConfig object, a mixin's defaults
    return config


async def delete_agent(name: str, db_url: str | None = None) -> None:
    """Delete an agent that no topology holds (else a ConflictError names the topologies)."""
    await Store(db_url).delete_agent(check_text("agent name", name))


async def list_agents(role: str | None = None, db_url: str | None = None) -> list[AgentType]:
    return await Store(db_url).list_agents(
        AgentRole.parse(check_text("role", role)).value if role else None
    )


async def get_agent(name: str, db_url: str | None = None) -> AgentType:
    return await Store(db_url).get_agent(check_text("agent name", name))


async def discover_tools(agent: AgentType) -> list[dict[str, Any]]:
    """The agent's tool servers as they answer now: each server's tools (with what needs a
    human's approval), or why the server could not be reached. Starts each server once."""
    from qmcp.agentframework.tools import describe_servers

    servers = AgentConfig.model_validate(agent.config or {}).tools
    return await describe_servers(servers) if servers else []


def agent_to_dict(agent: AgentType) -> dict[str, Any]:
    config = agent.config or {}
    model = config.get("model_config_obj") or {}
    return {
        "name": agent.name,
        "description": agent.description,
        "role": str(agent.role),
        "model": ModelConfig.model_validate(model).label if model else None,
        "config": config,
        "version": agent.version,
        "created_at": _iso(agent.created_at),
        "updated_at": _iso(agent.updated_at),
    }


# -- topologies -----------------------------------------------------------------------------


async def create_topology(
    name: str,
    topology_type: str | TopologyType,
    slots: Mapping[str, str],
    *,
    config: Mapping[str, Any] | None = None,
    description: str | None = None,
    db_url: str | None = None,
) -> Topology:
    """Validate config and slots now, so a topology that exists can run.

    A slot names an agent, or `topology:<name>` for a stored topology (a compound topology);
    the store refuses one that would nest deeper than MAX_NESTING or hold a cycle.
    """
    check_name("topology", name)
    check_text("topology type", topology_type)
    for slot, member_name in slots.items():
        check_slot(slot)
        check_text(f"slot {slot!r}", member_name)
    check_text("config", config)
    description = check_description(description)
    kind = TopologyRegistry.get(topology_type)
    parsed = kind.validate(dict(config or {}), list(slots))
    store = Store(db_url)
    members = await _resolve_slots(store, name, slots)
    topology = Topology(
        name=name,
        description=description,
        topology_type=kind.type,
        config=parsed.model_dump(mode="json"),
    )
    return await store.add_topology(topology, members)


async def _resolve_slots(
    store: Store, name: str, slots: Mapping[str, str]
) -> dict[str, AgentType | Topology]:
    """Each slot's member: an agent, or a stored topology for `topology:<name>`."""
    members: dict[str, AgentType | Topology] = {}
    for slot, member_name in slots.items():
        if member_name.startswith(TOPOLOGY_PREFIX):
            sub_name = member_name[len(TOPOLOGY_PREFIX) :]
            if sub_name == name:
                raise ValidationError(
                    f"slot {slot!r}: a topology cannot contain itself ({name!r} -> {name!r})"
                )
            members[slot] = await store.get_topology_row(sub_name)
        else:
            members[slot] = await store.get_agent(member_name)
    return members


async def update_topology(
    name: str,
    *,
    description: str | None = None,
    config: Mapping[str, Any] | None = None,
    slots: Mapping[str, str] | None = None,
    db_url: str | None = None,
) -> tuple[Topology, dict[str, str]]:
    """Change a topology's description, config or slots (None: keep; `slots` replaces them
    all, in order), checked as `create_topology` checks them, nesting and cycles included;
    its version goes up by one. The topology and its slots (slot -> member name)."""
    check_text("topology name", name)
    for slot, member_name in (slots or {}).items():
        check_slot(slot)
        check_text(f"slot {slot!r}", member_name)
    check_text("config", config)
    if description is None and config is None and slots is None:
        raise ValidationError(
            f"nothing to change in topology {name!r}: give a description, config or slots"
        )
    store = Store(db_url)
    current, current_members = await store.get_topology(name)
    current_slots = {slot: _member_label(member) for slot, member in current_members.items()}
    new_slots = dict(current_slots if slots is None else slots)
    kind = TopologyRegistry.get(current.topology_type)
    parsed = kind.validate(dict(current.config if config is None else config), list(new_slots))
    values: dict[str, Any] = {"config": parsed.model_dump(mode="json")}
    if description is not None:
        values["description"] = check_description(description)
    members = None if slots is None else await _resolve_slots(store, name, new_slots)
    topology = await store.update_topology(name, values, members)
    return topology, new_slots


async def delete_topology(name: str, db_url: str | None = None) -> None:
    """Delete a topology that no other topology holds (else a ConflictError names them);
    its executions and their snapshots stay."""
    await Store(db_url).delete_topology(check_text("topology name", name))


async def list_topologies(db_url: str | None = None) -> list[tuple[Topology, dict[str, str]]]:
    return await Store(db_url).list_topologies()


async def get_topology(
    name: str, db_url: str | None = None
) -> tuple[Topology, dict[str, AgentType]]:
    return await Store(db_url).get_topology(check_text("topology name", name))


def topology_to_dict(
    topology: Topology,
    slots: Mapping[str, AgentType] | Mapping[str, str],
    *,
    diagram: bool = False,
) -> dict[str, Any]:
    """A topology as plain data; `slots` maps slot -> agent or agent name.

    `diagram` adds a Mermaid flowchart of who talks to whom under "mermaid".
    """
    slot_map = {slot: _member_label(member) for slot, member in slots.items()}
    data: dict[str, Any] = {
        "name": topology.name,
        "description": topology.description,
        "topology_type": str(topology.topology_type),
        "config": topology.config,
        "slots": slot_map,
        "version": topology.version,
        "created_at": _iso(topology.created_at),
        "updated_at": _iso(topology.updated_at),
    }
    if diagram:
        data["mermaid"] = mermaid(data["topology_type"], topology.config, slot_map)
    return data


def topology_kinds() -> list[dict[str, str]]:
    """The topology kinds this installation runs, in registration order, with their summaries
    and the input field each reads its request from."""
    return [
        {"topology_type": kind.type.value, "summary": kind.summary, "input_field": kind.input_field}
        for kind in TopologyRegistry.items()
    ]


def input_field(topology_type: str) -> str:
    """The input key a topology of this kind reads its request from (`prompt`, `topic`, …)."""
    return TopologyRegistry.get(topology_type).input_field


# -- runs -----------------------------------------------------------------------------------


def make_runner(
    runner_type: str = "local",
    *,
    config: RunConfig | None = None,
    max_concurrent: int | None = None,
    db_url: str | None = None,
) -> BaseRunner:
    kwargs: dict[str, Any] = {"db_url": db_url}
    if max_concurrent is not None:
        if runner_type != "async":
            raise ValidationError("max_concurrent applies to the async runner only")
        kwargs["max_concurrent"] = max_concurrent
    return RunnerRegistry.create(runner_type, config, **kwargs)


def _run_config(values: RunConfig | Mapping[str, Any] | None) -> RunConfig | None:
    """A `RunConfig` from one or from some of its fields (e.g. {"timeout_seconds": 60})."""
    if values is None or isinstance(values, RunConfig):
        return values
    check_text("run options", values)
    try:
        return RunConfig.model_validate(dict(values))
    except PydanticValidationError as exc:
        raise ValidationError(f"invalid run option: {describe_validation_error(exc)}") from None


@dataclass(frozen=True)
class StartedRun:
    """An execution that is recorded (new, or claimed for resume) and the runner that owns it.

    `finish_run` takes it to its end; a caller that must answer at once (the MCP server's
    `wait=false`) starts a run, returns its execution id, and finishes it in the background.
    """

    runner: BaseRunner
    prepared: PreparedRun

    @property
    def execution(self) -> Execution:
        return self.prepared.execution

    @property
    def execution_id(self) -> uuid.UUID:
        return self.prepared.execution_id


async def start_run(
    name: str,
    input_data: Mapping[str, Any] | str,
    *,
    runner_type: str = "local",
    config: RunConfig | Mapping[str, Any] | None = None,
    max_concurrent: int | None = None,
    db_url: str | None = None,
) -> StartedRun:
    """Validate everything and record a new execution of the topology `name`.

    `input_data` is an object or its JSON text; `config` a `RunConfig` or some of its fields.
    Nothing is written on bad input.
    """
    data = parse_json_object(input_data, "input") if isinstance(input_data, str) else input_data
    runner = make_runner(
        runner_type, config=_run_config(config), max_concurrent=max_concurrent, db_url=db_url
    )
    topology, agents = await get_topology(name, db_url)
    return StartedRun(runner, await runner.start(topology, agents, data))


async def start_inline_run(
    topology_type: str,
    slots: Mapping[str, str | Mapping[str, Any]],
    input_data: Mapping[str, Any] | str,
    *,
    name: str = INLINE_NAME,
    config: Mapping[str, Any] | None = None,
    description: str | None = None,
    save: bool = False,
    runner_type: str = "local",
    run_config: RunConfig | Mapping[str, Any] | None = None,
    max_concurrent: int | None = None,
    db_url: str | None = None,
) -> StartedRun:
    """Run a topology given whole in the call: each slot names a stored agent (or
    `topology:<name>`) or defines an agent inline (`build_agent`'s fields, `name` defaulting to
    the slot's). Nothing but the execution is stored, and its snapshot holds every definition,
    so it resumes like any other; `save` stores the inline agents and the topology under their
    names first (all checked before anything is written; none kept if one is refused).
    """
    check_name("topology", name)
    check_text("topology type", topology_type)
    check_text("config", config)
    description = check_description(description)
    kind = TopologyRegistry.get(topology_type)
    parsed = kind.validate(dict(config or {}), list(slots))
    data = parse_json_object(input_data, "input") if isinstance(input_data, str) else input_data
    runner = make_runner(
        runner_type, config=_run_config(run_config), max_concurrent=max_concurrent, db_url=db_url
    )
    store = Store(db_url)
    members: dict[str, Any] = {}  # slot -> AgentType or SubTopology, as the store gives them
    inline: list[AgentType] = []
    for slot, member in slots.items():
        check_slot(slot)
        if isinstance(member, str):
            check_text(f"slot {slot!r}", member)
            if member.startswith(TOPOLOGY_PREFIX):
                sub_name = member[len(TOPOLOGY_PREFIX) :]
                members[slot] = SubTopology(*await get_topology(sub_name, db_url))
            else:
                members[slot] = await store.get_agent(member)
            continue
        fields = dict(member)
        agent_name = fields.pop("name", None) or slot
        try:
            members[slot] = build_agent(agent_name, fields.pop("role", ""), **fields)
        except (TypeError, ValidationError) as exc:  # TypeError: a field it does not take
            raise ValidationError(f"slot {slot!r}: {exc}") from None
        inline.append(members[slot])
    topology = Topology(
        name=name,
        description=description,
        topology_type=kind.type,
        config=parsed.model_dump(mode="json"),
    )
    if save:
        topology, members = await _save_inline(store, topology, members, inline)
    elif await _topology_exists(store, name):
        raise ConflictError(
            f"a stored topology is named {name!r}; run it by name, or give the inline topology "
            "another name (or none) so its executions are not taken for that one's"
        )
    return StartedRun(runner, await runner.start(topology, members, data))


async def _topology_exists(store: Store, name: str) -> bool:
    try:
        await store.get_topology_row(name)
    except NotFoundError:
        return False
    return True


async def _save_inline(
    store: Store,
    topology: Topology,
    members: dict[str, Any],
    inline: list[AgentType],
) -> tuple[Topology, dict[str, Any]]:
    """Store an inline topology's new agents, then the topology; a refusal on the way takes
    back the agents already stored, so a failed save leaves nothing behind."""
    saved: list[AgentType] = []
    try:
        for agent in inline:
            saved.append(await store.add_agent(agent))
        by_name = {agent.name: agent for agent in saved}
        stored_members = {
            slot: by_name.get(member.name, member) if isinstance(member, AgentType) else member
            for slot, member in members.items()
        }
        slots = {
            slot: member.topology if isinstance(member, SubTopology) else member
            for slot, member in stored_members.items()
        }
        stored = await store.add_topology(topology, slots)
    except BaseException:
        for agent in saved:
            await store.delete_agent(agent.name)
        raise
    return stored, stored_members


async def claim_run(
    execution_id: str | uuid.UUID,
    *,
    runner_type: str | None = None,
    config: RunConfig | Mapping[str, Any] | None = None,
    max_concurrent: int | None = None,
    db_url: str | None = None,
) -> StartedRun:
    """Take a failed, cancelled, interrupted or pending execution for this process, to finish it
    (a stateless client's next sampling round claims its run this way too).

    It runs on `runner_type`, by default the runner it ran on, with the options it started with
    except those `config` sets; finished invocations are reused. On the async runner it makes at
    most `max_concurrent` model calls at once, by default as many as when it started.
    `execution_id` may be a unique prefix of the id.
    """
    execution = await Store(db_url).get_execution(execution_id)
    runner_type = runner_type or execution.runner_type
    if max_concurrent is None and runner_type == "async":
        max_concurrent = _started_concurrency(execution)
    runner = make_runner(
        runner_type,
        config=_resumed_config(execution, config),
        max_concurrent=max_concurrent,
        db_url=db_url,
    )
    return StartedRun(runner, await runner.claim(execution.id))


def _resumed_config(
    execution: Execution, given: RunConfig | Mapping[str, Any] | None
) -> RunConfig | None:
    """The options a claimed run goes on with: those it started with (the snapshot's
    `run_config`: its budget, timeout, retries…), with the ones `given` changed (a `RunConfig`'s
    fields that were set, or a mapping's keys). A resume that names no budget keeps the old one."""
    stored = (execution.snapshot or {}).get("run_config")
    if isinstance(given, RunConfig):
        changes = given.model_dump(exclude_unset=True)
    else:
        changes = dict(given or {})
    if not isinstance(stored, Mapping):
        return _run_config(changes) if given is not None else None
    return _run_config({**stored, **changes})


def _started_concurrency(execution: Execution) -> int | None:
    """The model calls at once an execution started with on a concurrent runner (its snapshot
    records the runner's `concurrency`); None when it ran one call at a time, or its snapshot
    predates the record."""
    value = (execution.snapshot or {}).get("concurrency")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


async def finish_run(started: StartedRun, *, on_event: EventHandler | None = None) -> RunResult:
    """Run a started or claimed execution to its end and record the outcome."""
    return await started.runner.finish(started.prepared, on_event=on_event)


async def run_topology(
    name: str,
    input_data: Mapping[str, Any],
    *,
    runner_type: str = "local",
    config: RunConfig | None = None,
    max_concurrent: int | None = None,
    on_event: EventHandler | None = None,
    db_url: str | None = None,
) -> RunResult:
    started = await start_run(
        name,
        input_data,
        runner_type=runner_type,
        config=config,
        max_concurrent=max_concurrent,
        db_url=db_url,
    )
    return await finish_run(started, on_event=on_event)


async def generate_flow(
    name: str,
    *,
    environment: str = "local",
    output: str | None = None,
    output_dir: str | None = None,
    db_url: str | None = None,
) -> tuple[str, str]:
    """Write the Metaflow flow for a stored topology; returns (path, source).

    Without `output_dir` the flow goes where the runner keeps flows (`QMCP_FLOW_DIR`, else the
    user cache directory), never into the working directory.
    """
    from qmcp.agentframework.runners import MetaflowRunner

    runner = MetaflowRunner(output_dir=output_dir, environment=environment, db_url=db_url)  # type: ignore[arg-type]
    topology, agents = await get_topology(name, db_url)
    path = runner.write_flow(topology, agents, output)
    return str(path), path.read_text(encoding="utf-8")


async def resume_execution(
    execution_id: str | uuid.UUID,
    *,
    runner_type: str | None = None,
    config: RunConfig | None = None,
    on_event: EventHandler | None = None,
    db_url: str | None = None,
) -> RunResult:
    started = await claim_run(execution_id, runner_type=runner_type, config=config, db_url=db_url)
    return await finish_run(started, on_event=on_event)


class RunsInProcess(Protocol):
    """The runs this process carries on in the background (the MCP server's `wait=false`)."""

    async def cancel(self, execution_id: uuid.UUID) -> bool:
        """Cancel the run if it is one of ours and wait until it has recorded itself."""
        ...


async def cancel_execution(
    execution_id: str | uuid.UUID,
    *,
    runs: RunsInProcess | None = None,
    db_url: str | None = None,
    wait_seconds: float | None = None,
) -> uuid.UUID:
    """Cancel a running execution, wherever it runs; it stays resumable.

    A run of this process (one of `runs`) is cancelled at once. Any other is asked through the
    database: its owner, on any host, honours the flag at its next heartbeat (within a third of
    `QMCP_LEASE_SECONDS`) or invocation, stops its in-flight calls and records `cancelled`; this
    waits for that record (by default up to two lease lengths). A run whose owner stopped (its
    lease lapsed) is recorded as cancelled at once. `execution_id` may be a unique prefix.
    """
    store = Store(db_url)
    ident = await store.resolve_execution_id(execution_id)
    if runs is not None and await runs.cancel(ident):
        return ident
    status = await store.request_cancel(ident)
    if status == ExecutionStatus.RUNNING:
        status = await _cancelled_by_owner(store, ident, wait_seconds)
    if status != ExecutionStatus.CANCELLED:
        raise ConflictError(
            f"execution {ident} ended as {status.value} before its owner saw the cancel"
        )
    return ident


async def _cancelled_by_owner(
    store: Store, ident: uuid.UUID, wait_seconds: float | None
) -> ExecutionStatus:
    """Wait for the owner to record the cancel; asking again each time, so an owner that stopped
    meanwhile (its lease lapses) is cancelled for it."""
    limit = 2 * lease_seconds() + 1 if wait_seconds is None else wait_seconds
    deadline = asyncio.get_running_loop().time() + limit
    status = ExecutionStatus.RUNNING
    while status == ExecutionStatus.RUNNING:
        if asyncio.get_running_loop().time() >= deadline:
            execution = await store.get_execution(ident)
            raise ConflictError(
                f"asked the owner of execution {ident} ({execution.owner}) to cancel it; it has "
                f"not done so within {limit:g} s. The request stands: the owner honours it at "
                "its next heartbeat, or the run is cancelled for it once its lease lapses"
            )
        await asyncio.sleep(min(0.2, lease_seconds() / 10))
        status = await store.request_cancel(ident, again=True)
    return status


async def cancel_waiting(
    execution_id: str | uuid.UUID, reason: str, db_url: str | None = None
) -> Execution:
    """Record a pending (waiting for approval) or interrupted execution as cancelled: no process
    runs it, so there is nothing to stop. It stays resumable.

    The execution is claimed first (atomically, as a resume would), so a resume racing this
    cancel either wins or is refused; it is never overwritten half-way.
    """
    from qmcp.agentframework.store.owners import owner_token

    store = Store(db_url)
    execution = await store.get_execution(execution_id)
    if execution.status not in (ExecutionStatus.PENDING, ExecutionStatus.INTERRUPTED):
        raise ConflictError(
            f"execution {execution.id} is {execution.status.value}; only pending or interrupted "
            "executions are cancelled this way"
        )
    await store.claim_execution(execution.id, owner_token())
    await store.finish_execution(
        execution.id,
        status=ExecutionStatus.CANCELLED,
        output=execution.output,
        error=reason,
        duration_ms=execution.duration_ms or 0,
    )
    return await store.get_execution(execution.id)


async def list_executions(
    limit: int = 20,
    status: str | None = None,
    topology: str | None = None,
    db_url: str | None = None,
) -> list[Execution]:
    if not 1 <= limit <= 1000:
        raise ValidationError("limit must be between 1 and 1000")
    check_text("status", status)
    check_text("topology name", topology)
    return await Store(db_url).list_executions(limit=limit, status=status, topology=topology)


async def execution_ids(prefix: str, limit: int = 100, db_url: str | None = None) -> list[str]:
    """The ids of the executions whose id starts with `prefix` (dashes optional), newest first:
    what completing an execution id offers. Not an id's start: none."""
    digits = prefix.strip().lower().replace("-", "")
    if not re.fullmatch(r"[0-9a-f]{0,32}", digits):
        return []
    return [str(ident) for ident in await Store(db_url).execution_ids(digits, limit)]


async def get_execution(
    execution_id: str | uuid.UUID, db_url: str | None = None
) -> tuple[Execution, list[Invocation]]:
    """An execution and its invocations, by id or a unique prefix of it (`Store.get_execution`)."""
    store = Store(db_url)
    execution = await store.get_execution(execution_id)
    return execution, await store.invocations(execution.id)


async def prune_executions(older_than_days: float, db_url: str | None = None) -> PruneResult:
    """Delete finished executions older than `older_than_days` and give the space back.

    The result is the number of executions deleted (an int), with the rows and bytes freed
    (`PruneResult.summary()` says it in one line).
    """
    # NaN fails every comparison; inf and 1e300 would overflow the date arithmetic.
    if not 0 <= older_than_days <= MAX_PRUNE_DAYS:
        raise ValidationError(
            f"older_than_days must be a number of days from 0 to {MAX_PRUNE_DAYS} (100 years)"
        )
    return await Store(db_url).prune(timedelta(days=older_than_days))


async def list_approvals(
    status: str | None = None, limit: int = 50, db_url: str | None = None
) -> list[Approval]:
    if status is not None and status not in ("pending", "approved", "rejected"):
        raise ValidationError(
            f"unknown approval status {status!r}; use pending, approved or rejected"
        )
    return await Store(db_url).list_approvals(status, limit)


async def execution_approvals(
    execution_id: str | uuid.UUID, db_url: str | None = None
) -> list[Approval]:
    """Every approval an execution asked for (pending and decided), oldest first."""
    store = Store(db_url)
    return await store.approvals_of(await store.resolve_execution_id(execution_id))


async def answer_approval(
    approval_id: int,
    approved: bool,
    *,
    comment: str | None = None,
    edited: str | None = None,
    decided_by: str = "cli",
    db_url: str | None = None,
) -> Approval:
    """Record a human decision; the execution goes on when it is resumed."""
    if not 1 <= approval_id <= MAX_ID:  # no repr: a huge int can exceed str()'s digit limit
        raise ValidationError(
            f"invalid approval id: ids are whole numbers from 1 to {MAX_ID} "
            "(see `qmcp approvals list`)"
        )
    check_text("comment", comment)
    check_text("edited answer", edited)
    return await Store(db_url).decide_approval(
        approval_id, approved, comment=comment, edited=edited, decided_by=decided_by
    )


def approval_to_dict(approval: Approval) -> dict[str, Any]:
    return {
        "id": approval.id,
        "execution_id": str(approval.execution_id),
        "key": approval.key,
        "agent_name": approval.agent_name,
        "question": approval.question,
        "proposed": approval.proposed,
        "status": approval.status,
        "comment": approval.comment,
        "edited": approval.edited,
        "decided_by": approval.decided_by,
        "created_at": _iso(approval.created_at),
        "decided_at": _iso(approval.decided_at),
    }


def result_to_dict(result: RunResult) -> dict[str, Any]:
    return result.model_dump(mode="json")


def execution_to_dict(
    execution: Execution, invocations: list[Invocation] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(execution.id),
        "topology_name": execution.topology_name,
        "runner_type": execution.runner_type,
        "status": str(execution.status),
        "input": execution.input,
        "output": execution.output,
        "error": execution.error,
        "correlation_id": execution.correlation_id,
        "created_at": _iso(execution.created_at),
        "started_at": _iso(execution.started_at),
        "completed_at": _iso(execution.completed_at),
        "duration_ms": execution.duration_ms,
        "invocation_count": execution.invocation_count,
        "input_tokens": execution.input_tokens,
        "output_tokens": execution.output_tokens,
        "cost_usd": execution.cost_usd,
    }
    if invocations is not None:
        data["invocations"] = [invocation_to_dict(i) for i in invocations]
    return data


def invocation_to_dict(invocation: Invocation) -> dict[str, Any]:
    return {
        "key": invocation.key,
        "slot": invocation.slot,
        "agent_name": invocation.agent_name,
        "provider": invocation.provider,
        "model": invocation.model,
        "status": str(invocation.status),
        "attempt": invocation.attempt,
        "input": invocation.input,
        "output": invocation.output,
        "error": invocation.error,
        "input_tokens": invocation.input_tokens,
        "output_tokens": invocation.output_tokens,
        "cost_usd": invocation.cost_usd,
        "duration_ms": invocation.duration_ms,
        "started_at": _iso(invocation.started_at),
        "completed_at": _iso(invocation.completed_at),
    }


def list_mixins() -> list[dict[str, Any]]:
    """The capability mixins an agent can use: name, version, description, config schema."""
    return MixinRegistry.describe()


def runners_list() -> list[dict[str, Any]]:
    rows = []
    for name in RunnerRegistry.list():
        doc = (RunnerRegistry.get(name).__doc__ or "").strip()
        rows.append({"runner_type": name, "description": doc.splitlines()[0] if doc else ""})
    return rows


def _member_label(member: Any) -> str:
    if isinstance(member, str):
        return member
    if isinstance(member, SubTopology):
        return f"{TOPOLOGY_PREFIX}{member.name}"
    return str(member.name)


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


# -- the run view ---------------------------------------------------------------------------


async def execution_view(
    execution_id: str | uuid.UUID, db_url: str | None = None
) -> dict[str, Any]:
    """An execution as the run view shows it (`qmcp.agentframework.view`): the topology as a
    graph, the invocations as a timeline, debate rounds, cross-check verdicts, ensemble
    answers and approvals. By id or a unique prefix of it; read again to follow a running one.

    A running execution's invocations in flight (a model call made, no answer recorded yet) are
    `running`, with when they started. A run going on in this process is read from its engine:
    exact and immediate. A run in another process (another terminal, a fleet) is read from the
    execution's `in_flight` column. Its owner's lease heartbeat writes it: up to a heartbeat
    interval (a third of `QMCP_LEASE_SECONDS`) stale, and empty during the run's first
    heartbeat interval. A Metaflow flow's steps, whose calls are in their own task processes,
    put each call in it as it starts and take it out as it ends (`Store.mark_in_flight`).
    """
    from qmcp.agentframework.view import build_view

    store = Store(db_url)
    execution = await store.get_execution(execution_id)
    rows = await store.invocations(execution.id)
    # Its approvals in one read: human_in_loop's at an invocation's key, a tool call's at
    # `key#tool:…` (the view puts each on its invocation).
    approvals = [approval_to_dict(a) for a in await store.approvals_of(execution.id)]
    in_flight: dict[str, dict[str, Any]] = {}
    if execution.status == ExecutionStatus.RUNNING:
        engine = live_engine(execution.id)
        if engine is not None:  # running here: the engine's own map, as it is now
            # (copied first: the run may go on in another thread, changing the map meanwhile)
            calls = {key: started.isoformat() for key, started in dict(engine.in_flight).items()}
        else:  # running elsewhere: as its owner's last heartbeat, or a flow's steps, wrote it
            calls = dict(execution.in_flight or {})
        for key, started in calls.items():
            in_flight[key] = {"started_at": started}
    if execution.status in (ExecutionStatus.RUNNING, ExecutionStatus.PENDING):
        for key, turns in (await store.turns(execution.id)).items():
            info = in_flight.setdefault(key, {})
            info["turns"] = len(turns)
            info["tool_calls"] = sum(
                1
                for turn in turns
                if turn.get("role") == "assistant"
                for block in turn.get("content") or []
                if isinstance(block, dict) and block.get("type") == "tool_use"
            )
    return build_view(
        execution_to_dict(execution),
        execution.snapshot or {},
        [invocation_to_dict(r) for r in rows],
        approvals,
        in_flight,
    )


async def execution_totals(
    execution_id: str | uuid.UUID, db_url: str | None = None
) -> dict[str, Any]:
    """What an execution's recorded invocations add up to so far: invocation_count,
    input_tokens, output_tokens, cost_usd (None while no invocation has a known cost)."""
    store = Store(db_url)
    return await store.totals(await store.resolve_execution_id(execution_id))
