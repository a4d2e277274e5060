"""The `qmcp` command line: agents, topologies, runs, executions and the MCP server.

Library modules are imported inside commands so that `qmcp --help` stays fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from qmcp.agentframework.service import RunResult

T = TypeVar("T")

app = typer.Typer(
    name="qmcp",
    help="Define LLM agents, compose them into topologies, run them and read the records.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
agents_app = typer.Typer(help="Agent types, topologies and mixins.", no_args_is_help=True)
topologies_app = typer.Typer(
    help="Compose agents into topologies and run them.", no_args_is_help=True
)
executions_app = typer.Typer(
    help="Recorded executions: list, show, cancel, resume, prune.", no_args_is_help=True
)
app.add_typer(agents_app, name="agents")
agents_app.add_typer(topologies_app, name="topologies")
app.add_typer(executions_app, name="executions")
approvals_app = typer.Typer(
    help="Human decisions the human_in_loop mixin asked for.", no_args_is_help=True
)
app.add_typer(approvals_app, name="approvals")
models_app = typer.Typer(
    help="Model providers and the model specs agents can use; test one.",
    invoke_without_command=True,
)
app.add_typer(models_app, name="models")

FormatOption = Annotated[str, typer.Option("--format", "-f", help="table or json")]
ToolsOption = Annotated[
    str | None,
    typer.Option(
        help='MCP servers as tools: [{"name": "time", "command": "uvx", "args": '
        '["mcp-server-time"]}] or [{"name": "docs", "url": "http://…/mcp"}]; each may have '
        '"allow", "deny", "approve" (tool names), "env"/"headers" ("${VAR}" reads the '
        "environment); [] removes them"
    ),
]
MaxToolCallsOption = Annotated[
    int | None, typer.Option(help="tool calls one invocation may make at most (default 10)")
]
FallbackOption = Annotated[
    list[str] | None,
    typer.Option("--fallback-model", help="a model that answers when the one before fails; repeat"),
]
BaseUrlOption = Annotated[
    str | None,
    typer.Option(help="the model's OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1"),
]
ApiKeyEnvOption = Annotated[
    str | None,
    typer.Option(help="the NAME of the variable holding the endpoint's key (not the key)"),
]


def _text(*parts: str | tuple[str, str]) -> Any:
    """Literal text for Rich: `"a"` or `("a", "bold")` parts, never read as markup or emoji codes,
    so a name, description, prompt or output shows exactly as written."""
    from rich.text import Text

    return Text.assemble(*parts)


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Any:
    """A Rich table whose every cell is literal text."""
    from rich.table import Table
    from rich.text import Text

    table = Table(*columns)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def _fail(message: str, code: int = 2) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        _text(("error:", "bold red"), " ", message)
    )
    raise typer.Exit(code)


def _call(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one library call; a QmcpError becomes one clear line on stderr and exit code 2."""
    from qmcp.agentframework.errors import QmcpError

    try:
        return asyncio.run(make())
    except QmcpError as exc:
        _fail(str(exc))
        raise AssertionError from exc  # unreachable: _fail exits


def _check_format(fmt: str) -> str:
    if fmt not in ("table", "json"):
        _fail(f"unknown format {fmt!r}; use table or json")
    return fmt


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


@app.callback()
def main_options(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="QMCP_DATABASE_URL",
            help="database URL (default: qmcp.db in the per-user data directory; see `qmcp info`)",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log to stderr")] = False,
) -> None:
    if database_url:
        os.environ["QMCP_DATABASE_URL"] = database_url
    if os.environ.get("QMCP_PLUGINS"):
        from qmcp.agentframework.errors import QmcpError
        from qmcp.agentframework.plugins import load_plugins

        try:
            load_plugins()
        except QmcpError as exc:
            _fail(str(exc))
    if verbose:
        import logging

        from rich.logging import RichHandler

        handler = RichHandler(console=__import__("rich.console").console.Console(stderr=True))
        logging.getLogger("qmcp").addHandler(handler)
        logging.getLogger("qmcp").setLevel(logging.DEBUG)


# -- agents ---------------------------------------------------------------------------------


@agents_app.command("list")
def agents_list(
    role: Annotated[str | None, typer.Option(help="only agents with this role")] = None,
    fmt: FormatOption = "table",
) -> None:
    """List agent types."""
    from qmcp.agentframework import service

    _check_format(fmt)
    agents = _call(lambda: service.list_agents(role))
    rows = [service.agent_to_dict(a) for a in agents]
    if fmt == "json":
        _print_json(rows)
        return
    table = _table(
        ("name", "role", "model", "description"),
        [(r["name"], r["role"], r["model"] or "", r["description"]) for r in rows],
    )
    _console().print(
        table if rows else _text("no agents yet; create one with `qmcp agents create NAME ROLE`")
    )


@agents_app.command("create")
def agents_create(
    name: Annotated[str, typer.Argument(help="unique agent name")],
    role: Annotated[
        str,
        typer.Argument(
            help="planner, executor, reviewer, critic, synthesizer, specialist, coordinator, "
            "observer"
        ),
    ],
    description: Annotated[str, typer.Option(help="what the agent is for")] = "",
    model: Annotated[
        str | None,
        typer.Option(
            help="claude-… id, openai:<model>, a Models name, 'offline' or 'function:<name>'"
        ),
    ] = None,
    system_prompt: Annotated[
        str | None, typer.Option(help="replaces the role's default prompt")
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            help="0.0 to 1.0; sent to providers that take it (openai, sampling); the "
            "Anthropic API rejects it"
        ),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="largest answer, in tokens")] = None,
    mixin: Annotated[
        list[str] | None, typer.Option("--mixin", help="a mixin with its default config; repeat")
    ] = None,
    capabilities_json: Annotated[
        str | None,
        typer.Option(help='mixins with config: [{"name": "memory", "config": {...}}]'),
    ] = None,
    tools_json: ToolsOption = None,
    max_tool_calls: MaxToolCallsOption = None,
    fallback_model: FallbackOption = None,
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Create an agent type."""
    from qmcp.agentframework import service

    _check_format(fmt)
    capabilities: list[dict[str, Any]] = [{"name": name} for name in mixin or []]
    if capabilities_json:
        capabilities += _capabilities(capabilities_json)
    agent = _call(
        lambda: service.create_agent(
            name,
            role,
            description=description,
            model=model,
            system_prompt=system_prompt,
            temperature=temperature,
            max_tokens=max_tokens,
            capabilities=capabilities,
            tools=None if tools_json is None else _json_list(tools_json, "--tools-json"),
            max_tool_calls=max_tool_calls,
            fallback_models=fallback_model or None,
            base_url=base_url,
            api_key_env=api_key_env,
        )
    )
    data = service.agent_to_dict(agent)
    if fmt == "json":
        _print_json(data)
    else:
        _console().print(
            _text("created agent ", (agent.name, "bold"), f" ({data['role']}, {data['model']})")
        )


def _capabilities(text: str) -> list[dict[str, Any]]:
    """`--capabilities-json`: a JSON list of objects, or one clear error line (exit 2)."""
    return _json_list(text, "--capabilities-json", '{"name": "reasoning"}')


def _json_list(
    text: str,
    option: str,
    example: str = '{"name": "time", "command": "uvx", "args": ["mcp-server-time"]}',
) -> list[dict[str, Any]]:
    """A JSON list of objects given to `option`, or one clear error line (exit 2)."""
    from qmcp.agentframework import service
    from qmcp.agentframework.errors import QmcpError

    try:
        parsed = service.parse_json(text, option)
    except QmcpError as exc:
        _fail(str(exc))
    if not isinstance(parsed, list) or not all(isinstance(c, dict) for c in parsed):
        _fail(f"{option} must be a JSON list of objects like {example}")
    return parsed


@agents_app.command("show")
def agents_show(name: str, fmt: FormatOption = "json") -> None:
    """Show one agent type with its full config, and its tool servers' tools as discovered."""
    from qmcp.agentframework import service

    _check_format(fmt)
    agent = _call(lambda: service.get_agent(name))
    data = service.agent_to_dict(agent)
    discovered = _call(lambda: service.discover_tools(agent))
    if discovered:
        data["tools"] = discovered
    _print_json(data)


@agents_app.command("update")
def agents_update(
    name: Annotated[str, typer.Argument(help="the agent to change")],
    description: Annotated[str | None, typer.Option(help="what the agent is for")] = None,
    role: Annotated[str | None, typer.Option(help="a role, as in `agents create`")] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="claude-… id, openai:<model>, a Models name, 'offline' or 'function:<name>'"
        ),
    ] = None,
    system_prompt: Annotated[
        str | None, typer.Option(help="replaces the role's default prompt")
    ] = None,
    temperature: Annotated[
        float | None,
        typer.Option(help="0.0 to 1.0; sent to providers that take it (openai, sampling)"),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="largest answer, in tokens")] = None,
    capabilities_json: Annotated[
        str | None,
        typer.Option(help='replaces the mixins: [{"name": "memory", "config": {...}}]'),
    ] = None,
    tools_json: ToolsOption = None,
    max_tool_calls: MaxToolCallsOption = None,
    fallback_model: FallbackOption = None,
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    fmt: FormatOption = "table",
) -> None:
    """Change an agent type (options not given stay as they are); its version goes up by one."""
    from qmcp.agentframework import service

    _check_format(fmt)
    capabilities = None if capabilities_json is None else _capabilities(capabilities_json)
    agent = _call(
        lambda: service.update_agent(
            name,
            description=description,
            role=role,
            model=model,
            system_prompt=system_prompt,
            temperature=temperature,
            max_tokens=max_tokens,
            capabilities=capabilities,
            tools=None if tools_json is None else _json_list(tools_json, "--tools-json"),
            max_tool_calls=max_tool_calls,
            fallback_models=fallback_model,
            base_url=base_url,
            api_key_env=api_key_env,
        )
    )
    data = service.agent_to_dict(agent)
    if fmt == "json":
        _print_json(data)
    else:
        _console().print(
            _text("updated agent ", (agent.name, "bold"), f" (version {agent.version})")
        )


@agents_app.command("delete")
def agents_delete(name: Annotated[str, typer.Argument(help="the agent to delete")]) -> None:
    """Delete an agent type that no topology uses; executions keep their records."""
    from qmcp.agentframework import service

    _call(lambda: service.delete_agent(name))
    _console().print(_text("deleted agent ", (name, "bold")))


@agents_app.command("mixins")
def agents_mixins(fmt: FormatOption = "table") -> None:
    """List the capability mixins agents can use."""
    from qmcp.agentframework.mixins import MixinRegistry

    _check_format(fmt)
    rows = MixinRegistry.describe()
    if fmt == "json":
        _print_json(rows)
        return
    table = _table(
        ("name", "version", "depends on", "description"),
        [(r["name"], r["version"], ", ".join(r["dependencies"]), r["description"]) for r in rows],
    )
    _console().print(table)


# -- topologies -----------------------------------------------------------------------------


@topologies_app.command("list")
def topologies_list(fmt: FormatOption = "table") -> None:
    """List topologies."""
    from qmcp.agentframework import service

    _check_format(fmt)
    rows = [service.topology_to_dict(t, slots) for t, slots in _call(service.list_topologies)]
    if fmt == "json":
        _print_json(rows)
        return
    table = _table(
        ("name", "type", "slots", "description"),
        [(r["name"], r["topology_type"], ", ".join(r["slots"]), r["description"]) for r in rows],
    )
    _console().print(
        table
        if rows
        else _text("no topologies yet; create one with `qmcp agents topologies create`")
    )


@topologies_app.command("create")
def topologies_create(
    name: Annotated[str, typer.Argument(help="unique topology name")],
    topology_type: Annotated[
        str,
        typer.Argument(
            help="pipeline, ensemble, debate, cross_check, chain_of_command or delegation"
        ),
    ],
    slot: Annotated[
        list[str],
        typer.Option("--slot", "-s", help="SLOT=AGENT, repeat for each slot, in order"),
    ],
    config_json: Annotated[str, typer.Option("--config-json", help="the kind's config")] = "{}",
    description: Annotated[str, typer.Option(help="what the topology is for")] = "",
    fmt: FormatOption = "table",
) -> None:
    """Create a topology from agents: `--slot ensemble_0=alice --slot aggregator=bob`."""
    from qmcp.agentframework import service
    from qmcp.agentframework.errors import QmcpError

    _check_format(fmt)
    try:
        config = service.parse_json_object(config_json, "--config-json")
        slots: dict[str, str] = {}
        for item in slot:
            slot_name, sep, agent_name = item.partition("=")
            if not sep or not slot_name or not agent_name:
                _fail(f"--slot {item!r} must look like SLOT=AGENT, e.g. ensemble_0=researcher")
            if slot_name in slots:
                _fail(f"slot {slot_name!r} is given twice")
            slots[slot_name] = agent_name
    except QmcpError as exc:
        _fail(str(exc))
    topology = _call(
        lambda: service.create_topology(
            name, topology_type, slots, config=config, description=description
        )
    )
    data = service.topology_to_dict(topology, slots)
    if fmt == "json":
        _print_json(data)
    else:
        _console().print(
            _text(
                "created topology ",
                (topology.name, "bold"),
                f" ({data['topology_type']}; slots: {', '.join(slots)})",
            )
        )


@topologies_app.command("update")
def topologies_update(
    name: Annotated[str, typer.Argument(help="the topology to change")],
    description: Annotated[str | None, typer.Option(help="what the topology is for")] = None,
    config_json: Annotated[
        str | None, typer.Option("--config-json", help="the kind's whole new config")
    ] = None,
    slot: Annotated[
        list[str] | None,
        typer.Option("--slot", "-s", help="SLOT=AGENT, repeat; replaces all slots, in order"),
    ] = None,
    fmt: FormatOption = "table",
) -> None:
    """Change a topology (options not given stay); checked as at creation; its version goes up."""
    from qmcp.agentframework import service
    from qmcp.agentframework.errors import QmcpError

    _check_format(fmt)
    config: dict[str, Any] | None = None
    slots: dict[str, str] | None = None
    try:
        if config_json is not None:
            config = service.parse_json_object(config_json, "--config-json")
        if slot:
            slots = {}
            for item in slot:
                slot_name, sep, agent_name = item.partition("=")
                if not sep or not slot_name or not agent_name:
                    _fail(f"--slot {item!r} must look like SLOT=AGENT, e.g. ensemble_0=researcher")
                if slot_name in slots:
                    _fail(f"slot {slot_name!r} is given twice")
                slots[slot_name] = agent_name
    except QmcpError as exc:
        _fail(str(exc))
    topology, new_slots = _call(
        lambda: service.update_topology(name, description=description, config=config, slots=slots)
    )
    data = service.topology_to_dict(topology, new_slots)
    if fmt == "json":
        _print_json(data)
    else:
        _console().print(
            _text(
                "updated topology ",
                (topology.name, "bold"),
                f" (version {topology.version}; slots: {', '.join(new_slots)})",
            )
        )


@topologies_app.command("delete")
def topologies_delete(name: Annotated[str, typer.Argument(help="the topology to delete")]) -> None:
    """Delete a topology no other topology nests; its executions keep their records."""
    from qmcp.agentframework import service

    _call(lambda: service.delete_topology(name))
    _console().print(_text("deleted topology ", (name, "bold")))


@topologies_app.command("show")
def topologies_show(name: str) -> None:
    """Show a topology: its config and which agent fills each slot."""
    from qmcp.agentframework import service

    topology, agents = _call(lambda: service.get_topology(name))
    _print_json(service.topology_to_dict(topology, agents))


@topologies_app.command("run")
def topologies_run(
    name: Annotated[str, typer.Argument(help="the topology to run")],
    input_json: Annotated[
        str, typer.Option("--input-json", help="the input, a JSON object")
    ] = "{}",
    runner: Annotated[str, typer.Option(help="local, async or metaflow")] = "local",
    max_concurrent: Annotated[
        int | None, typer.Option(help="async runner: model calls at once (default 5)")
    ] = None,
    timeout: Annotated[int | None, typer.Option(help="seconds before the run stops")] = None,
    max_retries: Annotated[int | None, typer.Option(help="retries per failed invocation")] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option(help="budget: stop before an invocation once this much is spent")
    ] = None,
    max_total_tokens: Annotated[
        int | None, typer.Option(help="budget: stop before an invocation once this many are used")
    ] = None,
    output_dir: Annotated[
        str | None,
        typer.Option(
            "--output-dir",
            help="metaflow runner: where the flow file goes (default: the user cache directory)",
        ),
    ] = None,
    fmt: FormatOption = "table",
) -> None:
    """Run a topology and record the execution."""
    from pydantic import ValidationError as PydanticValidationError

    from qmcp.agentframework import service
    from qmcp.agentframework.errors import QmcpError, describe_validation_error
    from qmcp.agentframework.service import RunConfig

    _check_format(fmt)
    try:
        data = service.parse_json_object(input_json, "--input-json")
    except QmcpError as exc:
        _fail(str(exc))
    flags = {
        "timeout_seconds": "--timeout",
        "max_retries": "--max-retries",
        "max_cost_usd": "--max-cost-usd",
        "max_total_tokens": "--max-total-tokens",
    }
    given = {
        "timeout_seconds": timeout,
        "max_retries": max_retries,
        "max_cost_usd": max_cost_usd,
        "max_total_tokens": max_total_tokens,
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    try:
        config = RunConfig.model_validate(overrides)
    except PydanticValidationError as exc:
        named = {flags.get(str(e["loc"][0]), str(e["loc"][0])) for e in exc.errors() if e["loc"]}
        _fail(f"invalid run option {', '.join(sorted(named))}: {describe_validation_error(exc)}")
    if output_dir is not None:
        if runner != "metaflow":
            _fail("--output-dir applies to the metaflow runner only (it holds the flow file)")
        os.environ["QMCP_FLOW_DIR"] = output_dir  # MetaflowRunner's default; one run per process
    result = _run_with_progress(
        lambda on_event: service.run_topology(
            name,
            data,
            runner_type=runner,
            config=config,
            max_concurrent=max_concurrent,
            on_event=on_event,
        )
    )
    _show_result(result, fmt)


def _run_with_progress(start: Callable[[Any], Coroutine[Any, Any, RunResult]]) -> RunResult:
    """Run with a live progress line on stderr (invocations done / total, cost and tokens so
    far); Ctrl-C cancels and records the run."""
    import time
    from contextlib import suppress

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qmcp.agentframework import service
    from qmcp.agentframework.errors import QmcpError

    stderr = Console(stderr=True, highlight=False, soft_wrap=True)
    progress = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[cost]}", markup=False),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    )
    task = progress.add_task("starting", total=None, cost="")
    state: dict[str, Any] = {"read_at": 0.0}

    async def on_event(event: Any) -> None:
        state["execution_id"] = event.execution_id
        verb = {"started": "running", "retrying": "retrying", "cached": "reused"}.get(event.kind)
        description = f"{verb} {event.key} ({event.agent})" if verb else f"{event.kind} {event.key}"
        progress.update(task, description=description, completed=event.done, total=event.total)
        if event.kind in ("failed", "retrying"):
            progress.console.print(_text((event.kind, "yellow"), f" {event.key}: {event.error}"))
        # Cost so far, from the recorded invocations: read at most a few times a second.
        now = time.monotonic()
        if event.kind in ("completed", "failed") and now - state["read_at"] >= COST_READ_SECONDS:
            state["read_at"] = now
            with suppress(QmcpError):
                totals = await service.execution_totals(event.execution_id)
                progress.update(task, cost=_cost_so_far(totals))

    try:
        with progress:
            return asyncio.run(start(on_event))
    except QmcpError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        ident = state.get("execution_id")
        hint = f"; resume it with `qmcp executions resume {ident}`" if ident else ""
        stderr.print(_text(("cancelled", "yellow"), hint))
        raise typer.Exit(130) from None
    raise AssertionError("unreachable")


COST_READ_SECONDS = 0.25


def _cost_so_far(totals: dict[str, Any]) -> str:
    cost = totals.get("cost_usd")
    spent = "cost unknown" if cost is None else f"${cost:.4f}"
    return f"{spent} · {totals.get('input_tokens', 0)}+{totals.get('output_tokens', 0)} tokens"


def _show_result(result: RunResult, fmt: str) -> None:
    from qmcp.agentframework import service

    if fmt == "json":
        _print_json(service.result_to_dict(result))
    else:
        console = _console()
        colour = "green" if result.status == "completed" else "red"
        console.print(
            _text(
                (result.status, f"bold {colour}"),
                f" {result.topology_name} on {result.runner_type} in {result.duration_ms} ms"
                f" — execution {result.execution_id}",
            )
        )
        if result.output is not None:
            console.print(_text(str(result.output.get("content", ""))))
        if result.error:
            console.print(_text(("error:", "red"), " ", result.error))
    if result.status != "completed":
        raise typer.Exit(1)


@topologies_app.command("flow")
def topologies_flow(
    name: Annotated[str, typer.Argument(help="the topology")],
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="file (default OUTPUT_DIR/NAME_flow.py)"),
    ] = None,
    output_dir: Annotated[
        str | None,
        typer.Option(
            "--output-dir", help="directory (default $QMCP_FLOW_DIR, else the user cache's flows)"
        ),
    ] = None,
    environment: Annotated[str, typer.Option(help="local, kubernetes or batch")] = "local",
) -> None:
    """Generate the topology's Metaflow flow without running it."""
    from qmcp.agentframework import service

    directory = output_dir or _default_flow_dir()
    path, _ = _call(
        lambda: service.generate_flow(
            name, environment=environment, output=output, output_dir=directory
        )
    )
    _console().print(
        _text(f'wrote {path}; run it with: python {path} run --input-json \'{{"prompt": "…"}}\'')
    )


def _default_flow_dir() -> str:
    """MetaflowRunner's default flow directory (the CLI reaches runners only via the service)."""
    import platformdirs

    configured = os.environ.get("QMCP_FLOW_DIR")
    if configured:
        return configured
    return os.path.join(platformdirs.user_cache_dir("qmcp", appauthor=False), "flows")


# -- executions -----------------------------------------------------------------------------


@executions_app.command("list")
def executions_list(
    limit: Annotated[int, typer.Option(help="how many, newest first")] = 20,
    status: Annotated[str | None, typer.Option(help="only this status")] = None,
    topology: Annotated[str | None, typer.Option(help="only this topology")] = None,
    fmt: FormatOption = "table",
) -> None:
    """List recent executions."""
    from qmcp.agentframework import service
    from qmcp.agentframework.models import ExecutionStatus

    _check_format(fmt)
    if status is not None and status not in {s.value for s in ExecutionStatus}:
        _fail(f"unknown status {status!r}; known: {', '.join(s.value for s in ExecutionStatus)}")
    rows = [
        service.execution_to_dict(e)
        for e in _call(lambda: service.list_executions(limit, status, topology))
    ]
    if fmt == "json":
        _print_json(rows)
        return
    table = _table(
        ("id", "topology", "runner", "status", "invocations", "ms", "created"),
        [
            (
                r["id"],
                r["topology_name"],
                r["runner_type"],
                r["status"],
                str(r["invocation_count"]),
                str(r["duration_ms"] or ""),
                r["created_at"] or "",
            )
            for r in rows
        ],
    )
    _console().print(table if rows else _text("no executions yet"))


@executions_app.command("show")
def executions_show(
    execution_id: str,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="tree, or json for the full record")
    ] = "tree",
) -> None:
    """Show an execution: a tree of its topology, rounds, verdicts, members and invocations
    (tokens, cost), or with --format json the full record with every invocation."""
    from qmcp.agentframework import service

    if fmt not in ("tree", "table", "json"):
        _fail(f"unknown format {fmt!r}; use tree or json")
    if fmt == "json":
        execution, invocations = _call(lambda: service.get_execution(execution_id))
        _print_json(service.execution_to_dict(execution, invocations))
        return
    from qmcp_server.ui.tree import view_tree

    _console().print(view_tree(_call(lambda: service.execution_view(execution_id))))


@executions_app.command("view")
def executions_view(
    execution_id: str,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0: a free one)")] = 0,
    browser: Annotated[
        bool, typer.Option("--browser/--no-browser", help="open the page in the browser")
    ] = True,
) -> None:
    """Serve the live run view of an execution on 127.0.0.1 and open it in the browser (the
    link works once, in one browser); Ctrl-C stops."""
    from qmcp.agentframework import service
    from qmcp_server.ui.web import serve_view

    execution, _ = _call(lambda: service.get_execution(execution_id))
    try:
        serve_view(
            str(execution.id),
            port=port,
            open_browser=browser,
            db_url=os.environ.get("QMCP_DATABASE_URL") or None,
            announce=lambda line: _console().print(_text(line)),
        )
    except OSError as exc:
        _fail(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; pick another --port")
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@executions_app.command("resume")
def executions_resume(
    execution_id: str,
    runner: Annotated[str | None, typer.Option(help="default: the runner it ran on")] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option(help="budget for the whole execution, earlier spending included")
    ] = None,
    max_total_tokens: Annotated[
        int | None, typer.Option(help="token budget for the whole execution, earlier use included")
    ] = None,
    fmt: FormatOption = "table",
) -> None:
    """Finish a failed, cancelled or interrupted execution without repeating completed calls
    (one stopped by its budget: give a larger one)."""
    from pydantic import ValidationError as PydanticValidationError

    from qmcp.agentframework import service
    from qmcp.agentframework.errors import describe_validation_error
    from qmcp.agentframework.service import RunConfig

    _check_format(fmt)
    budget = {"max_cost_usd": max_cost_usd, "max_total_tokens": max_total_tokens}
    try:
        config = RunConfig.model_validate({k: v for k, v in budget.items() if v is not None})
    except PydanticValidationError as exc:
        _fail(f"invalid budget: {describe_validation_error(exc)}")
    result = _run_with_progress(
        lambda on_event: service.resume_execution(
            execution_id, runner_type=runner, config=config, on_event=on_event
        )
    )
    _show_result(result, fmt)


@executions_app.command("cancel")
def executions_cancel(
    execution_id: str,
    wait: Annotated[
        float | None,
        typer.Option(help="seconds to wait for the owner (default: two lease lengths)"),
    ] = None,
) -> None:
    """Cancel a running execution from any process or host sharing the database: its owner
    stops its calls and records it as cancelled (resumable)."""
    from qmcp.agentframework import service

    ident = _call(lambda: service.cancel_execution(execution_id, wait_seconds=wait))
    _console().print(_text(f"cancelled {ident}; resume it with `qmcp executions resume {ident}`"))


@executions_app.command("prune")
def executions_prune(
    older_than_days: Annotated[
        float, typer.Option(help="delete finished executions older than this")
    ] = 30,
) -> None:
    """Delete old finished executions and their invocations, and give the space back."""
    from qmcp.agentframework import service

    pruned = _call(lambda: service.prune_executions(older_than_days))
    _console().print(_text(f"{pruned.summary()}; cut-off {older_than_days:g} day(s)"))


@approvals_app.command("list")
def approvals_list(
    status: Annotated[str | None, typer.Option(help="pending, approved or rejected")] = "pending",
    fmt: FormatOption = "table",
) -> None:
    """List approvals (pending ones by default)."""
    from qmcp.agentframework import service

    _check_format(fmt)
    rows = [service.approval_to_dict(a) for a in _call(lambda: service.list_approvals(status))]
    if fmt == "json":
        _print_json(rows)
        return
    table = _table(
        ("id", "status", "execution", "question", "proposed answer"),
        [
            (str(r["id"]), r["status"], r["execution_id"], r["question"], r["proposed"][:200])
            for r in rows
        ],
    )
    _console().print(table if rows else _text(f"no {status or ''} approvals"))


@approvals_app.command("answer")
def approvals_answer(
    # At most 2**63 - 1, a 64-bit INTEGER (service.MAX_ID, not imported: --help stays fast).
    approval_id: Annotated[int, typer.Argument(help="the approval's id", min=1, max=2**63 - 1)],
    approve: Annotated[bool, typer.Option("--approve/--reject", help="the decision")],
    comment: Annotated[str | None, typer.Option(help="why")] = None,
    edit: Annotated[
        str | None, typer.Option(help="approve this text instead of the answer")
    ] = None,
) -> None:
    """Approve or reject; then `qmcp executions resume` goes on with the decision."""
    from qmcp.agentframework import service

    approval = _call(
        lambda: service.answer_approval(approval_id, approve, comment=comment, edited=edit)
    )
    _console().print(
        _text(
            f"approval {approval.id} {approval.status}; resume with "
            f"`qmcp executions resume {approval.execution_id}`"
        )
    )


# -- models ---------------------------------------------------------------------------------


@models_app.callback()
def models_default(ctx: typer.Context, fmt: FormatOption = "table") -> None:
    """Model providers and the model specs agents can use (alone: `qmcp models list`)."""
    if ctx.invoked_subcommand is None:
        models_list(fmt)


@models_app.command("list")
def models_list(fmt: FormatOption = "table") -> None:
    """List providers and named models, and which are configured here (a key set, an endpoint
    that answers)."""
    from qmcp.agentframework import models_catalog

    _check_format(fmt)
    data = _call(models_catalog.catalog)
    if fmt == "json":
        _print_json(data)
        return
    yes = {True: "yes", False: "no"}
    console = _console()
    console.print(
        _table(
            ("provider", "model specs", "configured", "status"),
            [
                (p["name"], ", ".join(p["specs"]), yes[p["configured"]], p["status"])
                for p in data["providers"]
            ],
        )
    )
    console.print(
        _table(
            ("name", "model", "configured"),
            [(m["name"], m["label"], yes[m["configured"]]) for m in data["models"]],
        )
    )
    console.print(
        _text(
            "a model is written claude-<id>, openai:<model>, offline, sampling, function:<name> "
            "or a name above; try one with `qmcp models test SPEC`"
        )
    )


@models_app.command("test")
def models_test(
    spec: Annotated[str, typer.Argument(help="a model spec, e.g. openai:llama3.2 or offline")],
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer")] = 30.0,
    fmt: FormatOption = "table",
) -> None:
    """Make one tiny call to a model and report how long it took (exit 1 if it fails)."""
    from qmcp.agentframework import models_catalog

    _check_format(fmt)
    result = _call(
        lambda: models_catalog.try_model(
            spec, base_url=base_url, api_key_env=api_key_env, timeout=timeout
        )
    )
    if fmt == "json":
        _print_json(result)
        if not result["ok"]:
            raise typer.Exit(1)
        return
    if not result["ok"]:
        _fail(f"{result['spec']} failed after {result['latency_ms']:g} ms: {result['error']}", 1)
    _console().print(
        _text(
            (result["spec"], "bold"),
            f" answered in {result['latency_ms']:g} ms ({result['answered_by']}): ",
            repr(result["answer"]),
        )
    )


# -- demo and server ------------------------------------------------------------------------


@app.command("demo")
def demo(
    fmt: FormatOption = "table",
) -> None:
    """Create demo agents and topologies on the offline model and run them end to end."""
    from qmcp.agentframework.demo import run_demo

    _check_format(fmt)
    _call(lambda: run_demo(json_output=fmt == "json"))


@app.command("info")
def info(fmt: FormatOption = "table") -> None:
    """Where the database is, the version, and which model providers are configured."""
    import platformdirs

    from qmcp import __version__
    from qmcp.agentframework import service
    from qmcp.agentframework.llm import ProviderRegistry

    _check_format(fmt)
    notes = {
        "anthropic": "configured (ANTHROPIC_API_KEY is set)"
        if os.environ.get("ANTHROPIC_API_KEY")
        else "not configured: set ANTHROPIC_API_KEY",
        "openai": "openai:<model>; see `qmcp models` for its endpoint and key",
        "offline": "always available (no network, deterministic)",
        "function": "registered Python callables (function:NAME)",
    }
    providers = {name: notes.get(name, "registered") for name in ProviderRegistry.list()}
    providers["sampling"] = "only in the MCP server (the client's own model answers)"
    data = {
        "version": __version__,
        "database_url": service.Store().url,
        "database_url_from": "QMCP_DATABASE_URL or --database-url"
        if os.environ.get("QMCP_DATABASE_URL")
        else "default",
        "data_directory": platformdirs.user_data_dir("qmcp", appauthor=False),
        "providers": providers,
    }
    if fmt == "json":
        _print_json(data)
        return
    console = _console()
    console.print(_text(f"qmcp {data['version']}"))
    console.print(_text(f"database: {data['database_url']} ({data['database_url_from']})"))
    console.print(_text(f"data directory: {data['data_directory']}"))
    console.print(
        _table(("provider", "status"), [(name, note) for name, note in providers.items()])
    )


@app.command("serve")
def serve(
    transport: Annotated[str, typer.Option(help="stdio or http")] = "stdio",
    host: Annotated[str, typer.Option(help="http: address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="http: port")] = 8765,
) -> None:
    """Run the MCP server (stdio for Claude Desktop, http for streamable HTTP)."""
    from qmcp_server.__main__ import serve as run_server

    if transport not in ("stdio", "http"):
        _fail(f"unknown transport {transport!r}; use stdio or http")
    run_server(transport=transport, host=host, port=port)


def main() -> None:
    from qmcp.agentframework.errors import QmcpError

    try:
        app()
    except QmcpError as exc:  # one raised outside `_call`, such as a malformed database URL
        try:
            _fail(str(exc))
        except typer.Exit as done:
            sys.exit(done.exit_code)


if __name__ == "__main__":
    main()
