"""The run context runners give topologies: invoke through the provider chain, record, checkpoint,
report.

`invoke` is the only way an agent is called. Its `key` makes an invocation a checkpoint: a key
that already completed in this execution returns its stored output without calling the model.
An invocation is a conversation (`tools.converse`): model turns and, for agents with tools, the
tool calls between them; each turn of a multi-turn conversation is recorded as it completes, so a
resumed run continues from the last recorded turn.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from qmcp.agentframework import telemetry
from qmcp.agentframework.errors import InvocationFailed, ProviderError, QmcpError
from qmcp.agentframework.human import AwaitingHuman
from qmcp.agentframework.llm import (
    AdaptiveLimitedProvider,
    Attempt,
    Candidate,
    FallbackProvider,
    LimitedProvider,
    LLMRequest,
    LLMResponse,
    Message,
    Provider,
    ProviderRegistry,
    RecordingProvider,
    RetryingProvider,
    RetryPolicy,
    TimeoutProvider,
    estimate_cost,
    limiter_for,
)
from qmcp.agentframework.llm.awaiting import (
    AwaitingSamples,
    Paused,
    carry_pause,
    release_pause,
)
from qmcp.agentframework.mixins import (
    Mixin,
    MixinContext,
    MixinRegistry,
    OutputRejected,
    ToolUse,
)
from qmcp.agentframework.models import (
    AgentConfig,
    AgentType,
    CapabilityConfig,
    InvocationStatus,
    utcnow,
)
from qmcp.agentframework.prompts import system_prompt_for
from qmcp.agentframework.runners.config import BudgetExceeded
from qmcp.agentframework.text import render_payload
from qmcp.agentframework.tools import (
    Conversation,
    McpToolbox,
    Toolbox,
    ToolJournal,
    ToolServerError,
    ToolSessions,
    converse,
)
from qmcp.agentframework.topologies.base import Slots, SubTopology, run_nested

if TYPE_CHECKING:
    from qmcp.agentframework.runners.config import RunConfig
    from qmcp.agentframework.store import Store

T = TypeVar("T")
log = logging.getLogger("qmcp.run")


def run_log(config: RunConfig, level: int, message: str, *args: Any) -> None:
    """Log for one run: `RunConfig.log_level` filters this run's lines; the application's
    logging configuration decides where the rest go (a per-run filter, not a global setting)."""
    if level >= logging.getLevelName(config.log_level) and log.isEnabledFor(level):
        log.log(level, message, *args)


@dataclass(frozen=True)
class InvocationEvent:
    """Progress of a run, one event per invocation step."""

    kind: Literal["started", "completed", "failed", "retrying", "cached"]
    execution_id: uuid.UUID
    key: str
    slot: str
    agent: str
    attempt: int
    done: int
    total: int
    duration_ms: float | None = None
    error: str | None = None


EventHandler = Callable[[InvocationEvent], Awaitable[None] | None]


async def deliver(on_event: EventHandler, event: InvocationEvent) -> None:
    """Hand `event` to a handler, which may be a plain function or a coroutine function."""
    result = on_event(event)
    if inspect.isawaitable(result):
        await result


# Rows a run without checkpointing hands to the store in the background, at a time.
BACKGROUND_BATCH_ROWS = 16


class AgentSetup(NamedTuple):
    """What an agent's config resolves to, computed once per run."""

    config: AgentConfig
    mixins: list[Mixin]
    system_prompt: str
    # A toolbox given in code (embedding, tests); else the agent's MCP servers, per invocation.
    toolbox: Toolbox | None = None


_SETUPS: OrderedDict[tuple[Any, ...], AgentSetup] = OrderedDict()
_SETUPS_KEPT = 512


def agent_setup(agent: AgentType) -> AgentSetup:
    """What an agent resolves to: its validated config, its mixins and its system prompt.

    Resolved once per distinct agent (name, role, description and config, compared by value)
    and kept in a small LRU, so a process that runs the same agents again does not validate
    them again.
    """
    key = (
        agent.name,
        str(agent.role),
        agent.description,
        _frozen(agent.config or {}),
        # What resolving depends on besides the agent: the registries and the default model.
        MixinRegistry.version,
        ProviderRegistry.version,
        os.environ.get("QMCP_DEFAULT_MODEL"),
    )
    setup = _SETUPS.get(key)
    if setup is not None:
        _SETUPS.move_to_end(key)
        return setup
    config = AgentConfig.model_validate(agent.config or {})
    ProviderRegistry.get(config.model_config_obj.provider)  # unknown: fails at the start
    capabilities = config.capabilities
    if config.tools and not any(c.name == ToolUse.name for c in capabilities):
        capabilities = [CapabilityConfig(name=ToolUse.name), *capabilities]  # tools imply it
    mixins = MixinRegistry.resolve(capabilities)
    setup = _SETUPS[key] = AgentSetup(config, mixins, system_prompt_for(agent, config))
    if len(_SETUPS) > _SETUPS_KEPT:
        _SETUPS.popitem(last=False)
    return setup


def _frozen(value: Any) -> Any:
    """A hashable copy of a JSON value (dict keys in order; a dict is not a list of pairs)."""
    if isinstance(value, dict):
        return ("{", tuple((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("[", tuple(_frozen(v) for v in value))
    return value


async def _settled(item: Awaitable[T], waits: list[AwaitingSamples]) -> T | None:
    """A branch that stops to wait for answers from outside the run (`AwaitingSamples`) lets its
    siblings go on to their own questions, so that `gather` asks them all in one round."""
    try:
        return await item
    except AwaitingSamples as wait:
        waits.append(wait)
        return None


def _first(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error a failed task group stands for: the first that is not a sibling's cancel."""
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            error = _first(error)
        if not isinstance(error, asyncio.CancelledError):
            return error
    return group.exceptions[0]


class Engine:
    """A `RunContext` for one execution."""

    def __init__(
        self,
        *,
        execution_id: uuid.UUID,
        agents: dict[str, AgentType],
        config: RunConfig,
        store: Store,
        checkpoints: dict[str, dict[str, Any]],
        concurrency: int | None,
        on_event: EventHandler | None,
        total: int,
        setups: Mapping[int, AgentSetup] | None = None,
        turns: Mapping[str, list[dict[str, Any]]] | None = None,
        attempts: Mapping[str, int] | None = None,
        tool_calls: Mapping[tuple[str, str], dict[str, Any]] | None = None,
    ) -> None:
        self.execution_id = execution_id
        self.agents = agents
        self.config = config
        self.store = store
        self.checkpoints = checkpoints
        self.turns = dict(turns or {})
        self.tool_calls = dict(tool_calls or {})  # recorded before a resume: (key, call id)
        self.tool_sessions: ToolSessions | None = None  # started on the first tool use
        self.concurrency = concurrency
        self.limiter = asyncio.Semaphore(concurrency) if concurrency else None
        self.on_event = on_event
        self.total = max(total, 1)
        self.done = 0
        self.pending_rows: list[dict[str, Any]] = []
        self.pending_turns: list[dict[str, Any]] = []
        self._batch: list[dict[str, Any]] = []
        self._batch_done: asyncio.Future[None] | None = None
        self._commits: set[asyncio.Future[None]] = set()
        self._attempts: dict[str, int] = dict(attempts or {})  # a resume numbers on
        self._setups: dict[int, AgentSetup] = dict(setups or {})
        self._inline: dict[tuple[str, str], bool] = {}  # per model: does it answer inline
        # The budget's account: what this run spent (the execution's earlier spending is read
        # from the store at the first check).
        self.spent_usd = 0.0
        self.spent_tokens = 0
        self._spent_before: asyncio.Future[dict[str, Any]] | None = None
        # Awaited before each model call: the owner's lease check, which may stop the run.
        self.boundary: Callable[[], Awaitable[None]] | None = None
        self.flow_step: str | None = None  # the Metaflow step answering, recorded on each row
        # The invocations in progress: key -> when it started (the provider chain may be in a
        # model call, a retry's wait or a tool call). Read by the run view, in this process
        # through `live_engine`, in others through the lease heartbeat's `in_flight` column.
        self.in_flight: dict[str, datetime] = {}
        self.root = Scope(self, agents)

    # -- RunContext (the root scope) ---------------------------------------------------------

    def slots(self, prefix: str | None = None) -> list[str]:
        return self.root.slots(prefix)

    def agent(self, slot: str) -> Any:
        return self.root.agent(slot)

    async def gather(self, awaitables: Iterable[Awaitable[T]]) -> list[T]:
        """Await all, results in order. Concurrent runners use a task group: when one branch
        raises (a failure, an approval to wait for, a cancel), the others are cancelled before
        the error propagates, so no branch outlives its run."""
        items = list(awaitables)
        waits: list[AwaitingSamples] = []
        if self.concurrency is None:
            results: list[Any] = []
            try:
                for item in items:
                    results.append(await _settled(item, waits))
            finally:
                for item in items[len(results) + 1 :]:
                    if inspect.iscoroutine(item):
                        item.close()  # never started: no "was never awaited" warning
        else:
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(_settled(item, waits)) for item in items]
            except BaseExceptionGroup as failed:
                raise _first(failed) from None
            results = [task.result() for task in tasks]
        if waits:  # the branches that must wait for answers have all asked: one round
            raise AwaitingSamples.merge(waits)
        return results

    async def try_invoke(
        self, slot: str, payload: Any, *, key: str | None = None, retries: int | None = None
    ) -> dict[str, Any] | InvocationFailed:
        return await self.root.try_invoke(slot, payload, key=key, retries=retries)

    async def invoke(
        self, slot: str, payload: Any, *, key: str | None = None, retries: int | None = None
    ) -> dict[str, Any]:
        return await self.root.invoke(slot, payload, key=key, retries=retries)

    async def invoke_agent(
        self,
        agent: AgentType,
        slot: str,
        payload: Any,
        key: str,
        retries: int | None = None,
    ) -> dict[str, Any]:
        """`_invoke_agent` in an `invoke_agent` span (a wait for a human is no failure)."""
        cached = key in self.checkpoints
        span = telemetry.agent_span(
            agent.name, key, slot, self.execution_id, cached, (AwaitingHuman,)
        )
        with span:
            return await self._invoke_agent(agent, slot, payload, key, retries)

    async def _invoke_agent(
        self,
        agent: AgentType,
        slot: str,
        payload: Any,
        key: str,
        retries: int | None = None,
    ) -> dict[str, Any]:
        """Call one agent under a full invocation key: checkpoint lookup, mixins, the provider
        chain (retry → record → limit → timeout → provider), record the outcome.

        `retries` lowers the run's retry budget (`RunConfig.max_retries`) for this invocation (a
        pipeline stage's own budget); either way there is one retry policy, and it retries
        transient errors only.
        """
        cached = self.checkpoints.get(key)
        if cached is not None:
            self.done += 1
            await self._emit("cached", key, slot, agent.name, self._attempts.get(key, 0))
            return await self._gated(agent, slot, key, cached)
        if self.boundary is not None:
            await self.boundary()
        setup = self._agent_setup(agent)
        await self._check_budget(agent, slot, key, setup)
        model = setup.config.model_config_obj
        mixin_ctx = MixinContext(self.execution_id, self.store, agent, slot, key)
        request = LLMRequest(
            model=model.model,
            system=setup.system_prompt,
            messages=[Message(role="user", content=render_payload(payload))],
            max_tokens=setup.config.max_tokens,
            temperature=setup.config.temperature,
            timeout_seconds=setup.config.timeout_seconds,
            base_url=model.base_url,
            api_key_env=model.api_key_env,
            agent_name=agent.name,
            role=str(agent.role),
            slot=slot,
            key=key,
        )
        for mixin in setup.mixins:
            request = await mixin.prepare(request, mixin_ctx)
        call = _Call(self, agent, slot, key, model.provider, model.label)
        chain = self._chain(setup, call, retries)
        repairs_left = max((m.max_repairs for m in setup.mixins), default=0)
        recorded, usage = self._recorded_turns(key)
        # In flight from here until the invocation ends, however it ends (the live view's
        # `running`; the lease heartbeat writes the keys for other processes).
        self.in_flight[key] = call.started
        try:
            while True:
                await self._emit("started", key, slot, agent.name, call.attempt + 1)
                call.begin(request)
                try:
                    conversation = await converse(
                        chain,
                        request,
                        toolbox=self._toolbox(setup, agent, key),
                        max_tool_calls=setup.config.max_tool_calls,
                        recorded=recorded,
                        recorded_usage=usage,
                        on_turn=call.record_turn,
                    )
                except ToolServerError as exc:  # a server that does not start: no model attempt
                    await call.record_failure(str(exc))
                    raise await call.failed(str(exc)) from None
                except ProviderError as exc:  # permanent, or transient with its retries spent
                    raise await call.failed(str(exc)) from None
                response = conversation.response
                assert response is not None
                output: dict[str, Any] = {
                    "content": response.text,
                    "agent": agent.name,
                    "slot": slot,
                }
                if conversation.tool_calls:
                    output["tool_calls"] = conversation.tool_calls
                if conversation.limited:
                    output["tool_limit_reached"] = True
                try:
                    for mixin in setup.mixins:
                        await mixin.finish(output, mixin_ctx)
                except OutputRejected as exc:
                    await call.record(None, str(exc), response, conversation)
                    if repairs_left <= 0:
                        raise await call.failed(str(exc)) from None
                    repairs_left -= 1
                    # The repair goes on with the same conversation: the rejected answer and the
                    # repair request are its next turns (their usage is on the rejected row).
                    rejected = response.message()
                    repair = Message(role="user", content=exc.repair)
                    turn = len(conversation.turns)
                    await call.record_turn(turn, rejected, None)
                    await call.record_turn(turn + 1, repair, None)
                    recorded, usage = [*conversation.turns, rejected, repair], (0, 0)
                    await self._emit(
                        "retrying", key, slot, agent.name, call.attempt, call.ms(), str(exc)
                    )
                    continue
                except QmcpError as exc:
                    await call.record(None, str(exc), response, conversation)
                    raise await call.failed(str(exc)) from None
                await call.record(output, None, response, conversation)
                self.checkpoints[key] = output
                self.done += 1
                for mixin in setup.mixins:
                    await mixin.after_commit(output, mixin_ctx)
                await self._emit("completed", key, slot, agent.name, call.attempt, call.ms())
                return await self._gated(agent, slot, key, output)
        finally:
            self.in_flight.pop(key, None)

    async def _check_budget(self, agent: AgentType, slot: str, key: str, setup: AgentSetup) -> None:
        """Stop the run before an invocation its budget no longer covers: once the execution
        (earlier segments of a resume included) has spent `RunConfig.max_cost_usd` or used
        `max_total_tokens`. Recorded as this invocation's failed attempt; the whole run fails,
        resumable with a larger budget."""
        cfg = self.config
        if cfg.max_cost_usd is None and cfg.max_total_tokens is None:
            return
        if self._spent_before is None:
            self._spent_before = asyncio.ensure_future(self.store.totals(self.execution_id))
        before = await asyncio.shield(self._spent_before)
        usd = float(before["cost_usd"] or 0.0) + self.spent_usd
        tokens = int(before["input_tokens"]) + int(before["output_tokens"]) + self.spent_tokens
        if cfg.max_cost_usd is not None and usd >= cfg.max_cost_usd:
            spent, option = f"${usd:.6f} spent of max_cost_usd ${cfg.max_cost_usd:g}", "cost-usd"
        elif cfg.max_total_tokens is not None and tokens >= cfg.max_total_tokens:
            spent = f"{tokens} tokens used of max_total_tokens {cfg.max_total_tokens}"
            option = "total-tokens"
        else:
            return
        error = (
            f"budget exceeded: {spent}, before invocation {key!r}; resume with a larger "
            f"budget: `qmcp executions resume {self.execution_id} --max-{option} …`"
        )
        model = setup.config.model_config_obj
        call = _Call(self, agent, slot, key, model.provider, model.label)
        row = call._row(error, 0.0, utcnow(), [])
        await self._record(row)
        await call.failed(error)
        raise BudgetExceeded(error)

    def _chain(self, setup: AgentSetup, call: _Call, retries: int | None) -> Provider:
        """The agent's provider wrapped for this invocation: retry → record → the run's limit →
        the endpoint's adaptive limit → timeout → provider, one such chain per model when the
        agent has fallback models (each with its own retries). A provider that answers inline
        gets no timeout and no limits: there is nothing they could bound."""
        cfg = self.config
        budget = cfg.max_retries if cfg.retry_on_failure else 0
        if retries is not None:
            budget = min(budget, retries)
        models = [setup.config.model_config_obj, *setup.config.fallback_models]
        candidates: list[Candidate] = []
        for index, model in enumerate(models):
            provider: Provider = ProviderRegistry.provider(model.provider)
            pauses = provider.capabilities(model.model).pauses
            if pauses:  # a pause passes the wrappers below as a permanent error, unrecorded
                provider = carry_pause(provider)
            inline = self._inline.get((model.provider, model.model))
            if inline is None:
                inline = provider.capabilities(model.model).answers_inline
                self._inline[(model.provider, model.model)] = inline
            if not inline:
                # A moment beyond the agent's timeout, so a provider that times its own requests
                # (an SDK) reports it in its own words.
                provider = TimeoutProvider(provider, setup.config.timeout_seconds + 1.0)
                provider = AdaptiveLimitedProvider(
                    provider, limiter_for(model.provider, model.base_url)
                )
                if self.limiter is not None:
                    provider = LimitedProvider(provider, self.limiter)
            provider = RecordingProvider(provider, call.attempted)
            # Flow-control retries (a refusal the endpoint's limiter answered) need the retrying
            # wrapper even with no retries left for failures.
            if budget > 0 or (cfg.retry_on_failure and not inline):
                provider = RetryingProvider(
                    provider, RetryPolicy(max_retries=budget), call.retrying
                )
            if pauses:
                provider = release_pause(provider)
            if len(models) == 1:
                return provider
            changes = (
                {}
                if index == 0
                else {
                    "model": model.model,
                    "base_url": model.base_url,
                    "api_key_env": model.api_key_env,
                }
            )
            candidates.append(Candidate(model.label, provider, changes))
        return FallbackProvider(candidates, call.falling_back)

    def _toolbox(self, setup: AgentSetup, agent: AgentType, key: str) -> Toolbox | None:
        """The tools of this invocation: a toolbox given in code, else the agent's MCP servers
        through this run's sessions, recorded under `key`."""
        if setup.toolbox is not None or not setup.config.tools:
            return setup.toolbox
        if self.tool_sessions is None:
            self.tool_sessions = ToolSessions()
        recorded = {call: row for (k, call), row in self.tool_calls.items() if k == key}
        journal = ToolJournal(self.store, self.execution_id, key, agent.name, recorded)
        limit = next(
            (m.max_result_chars for m in setup.mixins if hasattr(m, "max_result_chars")), None
        )
        options = {} if limit is None else {"max_result_chars": limit}
        return McpToolbox(setup.config.tools, self.tool_sessions, journal, **options)

    async def close(self) -> None:
        """The run is over: it is no longer live in this process (`live_engine`), and its tool
        sessions end (their servers stop)."""
        unregister_live(self)
        if self.tool_sessions is not None:
            await self.tool_sessions.aclose()

    def _recorded_turns(self, key: str) -> tuple[list[Message], tuple[int, int]]:
        """The turns a previous run of this execution recorded for `key`, and their usage."""
        rows = self.turns.get(key) or []
        messages = [Message(role=r["role"], content=r["content"]) for r in rows]
        usage = (
            sum(int(r.get("input_tokens") or 0) for r in rows),
            sum(int(r.get("output_tokens") or 0) for r in rows),
        )
        return messages, usage

    async def _gated(
        self, agent: AgentType, slot: str, key: str, output: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply gates (human approval) to a recorded answer; the checkpoint stays the model's."""
        mixins = self._agent_setup(agent).mixins
        gates = [m for m in mixins if type(m).gate is not Mixin.gate]
        if not gates:
            return output
        gated = dict(output)
        ctx = MixinContext(self.execution_id, self.store, agent, slot, key)
        for mixin in gates:
            try:
                await mixin.gate(gated, ctx)
            except AwaitingHuman:
                raise
            except QmcpError as exc:
                raise InvocationFailed(key, slot, str(exc)) from None
        return gated

    # -- recording --------------------------------------------------------------------------

    async def _record(self, row: dict[str, Any]) -> None:
        """Checkpointing commits each row before its invocation returns; otherwise rows are kept
        for the end of the run.

        Concurrent branches share commits (group commit): rows recorded while the event loop
        turns once go into one transaction, and each branch goes on once its row is committed.
        """
        if not self.config.checkpoint_enabled:
            self.pending_rows.append(row)
            if len(self.pending_rows) >= BACKGROUND_BATCH_ROWS:
                # A long run without checkpointing writes its rows in the background as it goes
                # (nothing waits for them), so its end has only the last few left to write.
                rows, self.pending_rows = self.pending_rows, []
                task = asyncio.ensure_future(self._write_later(rows))
                self._commits.add(task)
                task.add_done_callback(self._commits.discard)
            return
        if self.concurrency is None:
            await self.store.record_invocations([row])
            return
        self._batch.append(row)
        if self._batch_done is None:
            loop = asyncio.get_running_loop()
            self._batch_done = loop.create_future()
            loop.call_soon(self._commit_batch)
        await asyncio.shield(self._batch_done)

    async def _write_later(self, rows: list[dict[str, Any]]) -> None:
        """A background batch; if it is not written (an error, a cancel), its rows go back to
        the end's write, which then records them or reports the database's error."""
        try:
            await self.store.record_invocations(rows)
        except BaseException:
            self.pending_rows[:0] = rows
            raise

    def _commit_batch(self) -> None:
        rows, self._batch = self._batch, []
        done, self._batch_done = self._batch_done, None
        assert done is not None
        task = asyncio.ensure_future(self.store.record_invocations(rows))
        self._commits.add(task)

        def settle(task: asyncio.Future[None]) -> None:
            self._commits.discard(task)
            error = None if task.cancelled() else task.exception()
            if task.cancelled() or error is not None:
                # Not committed: the rows go to the end's transaction, so none is lost even
                # when every branch that waited for them has been cancelled.
                self.pending_rows.extend(rows)
            if done.cancelled():
                return
            if task.cancelled():
                done.cancel()
            elif error is not None:
                done.set_exception(error)
                done.exception()  # marked retrieved: no waiter left is not a loop error
            else:
                done.set_result(None)

        task.add_done_callback(settle)

    async def settle(self) -> None:
        """Wait for commits still in flight (group commits, background batches), so every row
        lands before the run records its end and the execution's counts equal its rows.
        Waiting never cancels them: a cancel here leaves them to finish."""
        while self._commits:
            await asyncio.wait(set(self._commits))

    async def _record_turn(self, row: dict[str, Any]) -> None:
        if self.config.checkpoint_enabled:
            await self.store.record_turns([row])
        else:
            self.pending_turns.append(row)

    async def flush(self) -> None:
        """Write the rows kept for the end (a Metaflow step writes them when it ends)."""
        await self.settle()
        rows, turns = self.take_pending()
        if turns:
            await self.store.record_turns(turns)
        await self.store.record_invocations(rows)

    def take_pending(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The invocation and turn rows a run without checkpointing kept for its end."""
        rows, self.pending_rows = self.pending_rows, []
        turns, self.pending_turns = self.pending_turns, []
        return rows, turns

    def _agent_setup(self, agent: AgentType) -> AgentSetup:
        setup = self._setups.get(id(agent))
        if setup is None:
            setup = self._setups[id(agent)] = agent_setup(agent)
        return setup

    async def _emit(
        self,
        kind: Any,
        key: str,
        slot: str,
        agent: str,
        attempt: int,
        duration_ms: float | None = None,
        error: str | None = None,
    ) -> None:
        if self.on_event is None:
            return
        event = InvocationEvent(
            kind=kind,
            execution_id=self.execution_id,
            key=key,
            slot=slot,
            agent=agent,
            attempt=attempt,
            done=self.done,
            total=max(self.total, self.done),
            duration_ms=duration_ms,
            error=error,
        )
        await deliver(self.on_event, event)


# The engines of the runs going on in this process, by execution id: a runner registers its
# engine when the run starts and unregisters it when the run ends. Weak, so an engine is never
# kept alive by this map, even by a runner that failed to unregister it.
_LIVE: weakref.WeakValueDictionary[uuid.UUID, Engine] = weakref.WeakValueDictionary()


def register_live(engine: Engine) -> None:
    """`engine` runs its execution in this process from now on (its keys in flight are live)."""
    _LIVE[engine.execution_id] = engine


def unregister_live(engine: Engine) -> None:
    """`engine`'s run ended; a newer engine of the same execution (a resume) stays."""
    if _LIVE.get(engine.execution_id) is engine:
        del _LIVE[engine.execution_id]


def live_engine(execution_id: uuid.UUID) -> Engine | None:
    """The engine running `execution_id` in this process, if it runs here."""
    return _LIVE.get(execution_id)


def live_executions() -> list[uuid.UUID]:
    """The executions running in this process."""
    return list(_LIVE)


class Scope(Slots):
    """The slots of one topology level; a slot filled by a topology opens a nested scope.

    Keys inside a nested topology are prefixed with the outer invocation's key
    (`stage-1/review/checker_1`), so every invocation key stays unique and checkpointable.
    """

    def __init__(self, engine: Engine, agents: Mapping[str, Any], prefix: str = "", depth: int = 0):
        self.engine = engine
        self.agents = agents
        self.prefix = prefix
        self.depth = depth

    async def gather(self, awaitables: Iterable[Awaitable[T]]) -> list[T]:
        return await self.engine.gather(awaitables)

    async def invoke(
        self, slot: str, payload: Any, *, key: str | None = None, retries: int | None = None
    ) -> dict[str, Any]:
        full_key = self.prefix + (key or slot)
        member = self.agent(slot)
        if not isinstance(member, SubTopology):
            return await self.engine.invoke_agent(member, slot, payload, full_key, retries)
        child = Scope(self.engine, member.agents, f"{full_key}/", self.depth + 1)
        return await run_nested(child, self.depth + 1, slot, member, payload, full_key)


class _Call:
    """One invocation's attempts and turns, as the engine records them."""

    def __init__(
        self, engine: Engine, agent: AgentType, slot: str, key: str, provider: str, label: str
    ) -> None:
        self.engine = engine
        self.agent = agent
        self.slot = slot
        self.key = key
        self.provider = provider
        self.label = label
        self.request: LLMRequest | None = None
        self.started: datetime = utcnow()
        self.t0 = time.perf_counter()
        self.fallbacks: list[dict[str, str]] = []  # the models that did not answer, and why
        self.cache_read = self.cache_write = 0  # prompt-cache tokens of the answered calls

    def begin(self, request: LLMRequest) -> None:
        self.request, self.started, self.t0 = request, utcnow(), time.perf_counter()

    @property
    def attempt(self) -> int:
        return self.engine._attempts.get(self.key, 0)

    def ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    def _row(
        self, error: str | None, duration_ms: float, started: datetime, messages: list[Message]
    ) -> dict[str, Any]:
        engine = self.engine
        attempt = engine._attempts[self.key] = engine._attempts.get(self.key, 0) + 1
        trace: dict[str, Any] = {}
        if engine.config.trace_enabled and self.request is not None:
            trace = {"system": self.request.system, "messages": [_traced(m) for m in messages]}
        return {
            "execution_id": engine.execution_id,
            "key": self.key,
            "slot": self.slot,
            "agent_name": self.agent.name,
            "provider": self.provider,
            "model": self.label,
            "input": trace,
            "attempt": attempt,
            "started_at": started,
            "completed_at": utcnow(),
            "duration_ms": round(duration_ms, 3),
            "input_tokens": 0,
            "output_tokens": 0,
            "cost_usd": None,
            "status": InvocationStatus.FAILED if error is not None else InvocationStatus.COMPLETED,
            "output": None,
            "error": error,
            "flow_step": engine.flow_step,
        }

    async def attempted(self, attempt: Attempt) -> None:
        """The provider chain reports each call; a failed one is a failed attempt's row."""
        if attempt.response is not None:
            self.cache_read += attempt.response.cache_read_tokens
            self.cache_write += attempt.response.cache_write_tokens
        if attempt.error is None or isinstance(attempt.error, Paused):
            return  # a pause to wait for answers is no failed attempt
        error = str(attempt.error)
        row = self._row(error, attempt.duration_ms, attempt.started_at, attempt.request.messages)
        await self.engine._record(row)
        self._log(row["attempt"], error)

    async def record_failure(self, error: str) -> None:
        """A failure before any model attempt (a tool server that does not start)."""
        asked = self.request.messages if self.request is not None else []
        row = self._row(error, self.ms(), self.started, asked)
        await self.engine._record(row)
        self._log(row["attempt"], error)

    async def retrying(self, error: Exception, retry: int, delay: float) -> None:
        await self.engine._emit(
            "retrying", self.key, self.slot, self.agent.name, self.attempt, None, str(error)
        )

    async def falling_back(self, failed: Candidate, error: ProviderError, to: Candidate) -> None:
        """A model failed for good and the next answers: the rows from here on are its own."""
        self.fallbacks.append({"model": failed.label, "error": str(error)})
        self.provider, self.label = to.provider.name, to.label
        await self.engine._emit(
            "retrying",
            self.key,
            self.slot,
            self.agent.name,
            self.attempt,
            None,
            f"{failed.label} failed ({error}); falling back to {to.label}",
        )

    async def record(
        self,
        output: dict[str, Any] | None,
        error: str | None,
        response: LLMResponse,
        conversation: Conversation,
    ) -> None:
        """The outcome of a conversation: completed, or rejected by a mixin."""
        asked = self.request.messages if self.request is not None else []
        row = self._row(error, self.ms(), self.started, [*asked, *conversation.turns])
        label = self.label if self.provider != "anthropic" else response.model
        tokens_in, tokens_out = conversation.input_tokens, conversation.output_tokens
        cache_read, cache_write = self.cache_read, self.cache_write
        self.cache_read = self.cache_write = 0  # a repair goes on with a row of its own
        cost = estimate_cost(label, tokens_in, tokens_out, cache_read, cache_write)
        if output is not None:
            if self.fallbacks:
                output["fallbacks"] = list(self.fallbacks)
            if cache_read or cache_write:
                # No columns for these yet: the output keeps them.
                output["usage"] = {
                    "cache_read_tokens": cache_read,
                    "cache_write_tokens": cache_write,
                }
        row.update(
            output=output,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cost_usd=cost,
        )
        self.engine.spent_tokens += tokens_in + tokens_out
        self.engine.spent_usd += cost or 0.0
        await self.engine._record(row)
        if error is not None:
            self._log(row["attempt"], error)

    async def record_turn(self, index: int, message: Message, response: LLMResponse | None) -> None:
        """A completed turn of a multi-turn (tool-using) conversation: a checkpoint inside it."""
        await self.engine._record_turn(
            {
                "execution_id": self.engine.execution_id,
                "key": self.key,
                "turn": index,
                "role": message.role,
                "content": [b.model_dump(mode="json") for b in message.blocks],
                "model": response.model if response is not None else "",
                "input_tokens": response.input_tokens if response is not None else 0,
                "output_tokens": response.output_tokens if response is not None else 0,
            }
        )

    async def failed(self, error: str) -> InvocationFailed:
        """Report the invocation's end; the error for the caller to raise."""
        await self.engine._emit(
            "failed", self.key, self.slot, self.agent.name, self.attempt, self.ms(), error
        )
        return InvocationFailed(self.key, self.slot, error)

    def _log(self, attempt: int, error: str) -> None:
        run_log(
            self.engine.config,
            logging.WARNING,
            "invocation %s attempt %d failed: %s",
            self.key,
            attempt,
            error,
        )


def _traced(message: Message) -> Any:
    """A message as a trace keeps it: its text, or its blocks when it carries tool traffic."""
    if isinstance(message.content, str):
        return message.content
    return [b.model_dump(mode="json") for b in message.content]
