"""The run context runners give topologies: invoke with retries, record, checkpoint, report.

`invoke` is the only way an agent is called. Its `key` makes an invocation a checkpoint: a key
that already completed in this execution returns its stored output without calling the model.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from qmcp.agentframework.errors import (
    InvocationFailed,
    ProviderError,
    QmcpError,
)
from qmcp.agentframework.human import AwaitingHuman
from qmcp.agentframework.llm import (
    LLMRequest,
    LLMResponse,
    Message,
    ProviderRegistry,
    estimate_cost,
)
from qmcp.agentframework.mixins import Mixin, MixinContext, MixinRegistry, OutputRejected
from qmcp.agentframework.models import AgentConfig, AgentType, InvocationStatus, utcnow
from qmcp.agentframework.prompts import system_prompt_for
from qmcp.agentframework.topologies.base import Slots, SubTopology, run_nested
from qmcp.agentframework.topologies.text import render_payload

if TYPE_CHECKING:
    from qmcp.agentframework.runners.base import RunConfig
    from qmcp.agentframework.store import Store

T = TypeVar("T")
log = logging.getLogger("qmcp.run")


def run_log(config: RunConfig, level: int, message: str, *args: Any) -> None:
    """Log for one run: `RunConfig.log_level` filters this run's lines; the application's
    logging configuration decides where the rest go (a per-run filter, not a global setting)."""
    if level >= logging.getLevelName(config.log_level) and log.isEnabledFor(level):
        log.log(level, message, *args)


BACKOFF_BASE_SECONDS = 0.25
BACKOFF_MAX_SECONDS = 8.0


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


class AgentSetup(NamedTuple):
    """What an agent's config resolves to, computed once per run."""

    config: AgentConfig
    mixins: list[Mixin]
    system_prompt: str


def agent_setup(agent: AgentType) -> AgentSetup:
    config = AgentConfig.model_validate(agent.config or {})
    mixins = MixinRegistry.resolve(config.capabilities)
    return AgentSetup(config, mixins, system_prompt_for(agent, config))


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
    ) -> None:
        self.execution_id = execution_id
        self.agents = agents
        self.config = config
        self.store = store
        self.checkpoints = checkpoints
        self.concurrency = concurrency
        self.limiter = asyncio.Semaphore(concurrency) if concurrency else None
        self.on_event = on_event
        self.total = max(total, 1)
        self.done = 0
        self.pending_rows: list[dict[str, Any]] = []
        self._attempts: dict[str, int] = {}
        self._setups: dict[int, AgentSetup] = dict(setups or {})
        self.root = Scope(self, agents)

    # -- RunContext (the root scope) ---------------------------------------------------------

    def slots(self, prefix: str | None = None) -> list[str]:
        return self.root.slots(prefix)

    def agent(self, slot: str) -> Any:
        return self.root.agent(slot)

    async def gather(self, awaitables: Iterable[Awaitable[T]]) -> list[T]:
        items = list(awaitables)
        if self.concurrency is None:
            return [await item for item in items]
        return list(await asyncio.gather(*items))

    async def try_invoke(
        self, slot: str, payload: Any, *, key: str | None = None
    ) -> dict[str, Any] | InvocationFailed:
        return await self.root.try_invoke(slot, payload, key=key)

    async def invoke(self, slot: str, payload: Any, *, key: str | None = None) -> dict[str, Any]:
        return await self.root.invoke(slot, payload, key=key)

    async def invoke_agent(
        self, agent: AgentType, slot: str, payload: Any, key: str
    ) -> dict[str, Any]:
        """Call one agent under a full invocation key: checkpoint, retries, mixins, record."""
        cached = self.checkpoints.get(key)
        if cached is not None:
            self.done += 1
            await self._emit("cached", key, slot, agent.name, self._attempts.get(key, 0))
            return await self._gated(agent, slot, key, cached)
        agent_config, mixins, system_prompt = self._agent_setup(agent)
        model = agent_config.model_config_obj
        provider = ProviderRegistry.get(model.provider)
        cfg = self.config
        retries = cfg.max_retries if cfg.retry_on_failure else 0
        # A self-retrying provider (the Anthropic SDK) backs off inside one attempt.
        transient_left = 0 if provider.self_retrying else retries
        repairs_left = max((getattr(m, "max_repairs", 0) for m in mixins), default=0)
        prompt = render_payload(payload)
        request = LLMRequest(
            model=model.model,
            system=system_prompt,
            messages=[Message(role="user", content=prompt)],
            max_tokens=agent_config.max_tokens,
            temperature=agent_config.temperature,
            timeout_seconds=agent_config.timeout_seconds,
            max_retries=retries if provider.self_retrying else 0,
            agent_name=agent.name,
            role=str(agent.role),
            slot=slot,
        )
        mixin_ctx = MixinContext(self.execution_id, self.store, agent, slot, key)
        for mixin in mixins:
            request = await mixin.prepare(request, mixin_ctx)
        # The SDK applies its timeout per try; bound the whole attempt including its backoff.
        # A provider with its own timeout (the SDK) gets a moment to report it in its words.
        deadline = agent_config.timeout_seconds * (request.max_retries + 1) + (
            BACKOFF_MAX_SECONDS * request.max_retries
        )
        if provider.self_retrying:
            deadline += 1.0
        backoff_step = 0
        while True:
            attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
            await self._emit("started", key, slot, agent.name, attempt)
            started = utcnow()
            t0 = time.perf_counter()
            error: str | None = None
            retryable = False
            repair: str | None = None
            response = None
            output: dict[str, Any] | None = None
            try:
                response = await self._call(provider, request, deadline)
                output = {"content": response.text, "agent": agent.name, "slot": slot}
                for mixin in mixins:
                    await mixin.finish(output, mixin_ctx)
            except OutputRejected as exc:
                error, repair = str(exc), exc.repair
            except ProviderError as exc:
                error, retryable = str(exc), exc.retryable
            except TimeoutError:
                error, retryable = f"no answer within {deadline:g} s", True
            except QmcpError as exc:
                error = str(exc)
            except Exception as exc:  # a provider bug or a failing test function
                error, retryable = f"{type(exc).__name__}: {exc}", True
            duration_ms = (time.perf_counter() - t0) * 1000
            trace = (
                {"system": request.system, "messages": [m.content for m in request.messages]}
                if cfg.trace_enabled
                else {}
            )
            row: dict[str, Any] = {
                "execution_id": self.execution_id,
                "key": key,
                "slot": slot,
                "agent_name": agent.name,
                "provider": model.provider,
                "model": model.label,
                "input": trace,
                "attempt": attempt,
                "started_at": started,
                "completed_at": utcnow(),
                "duration_ms": round(duration_ms, 3),
                "input_tokens": 0,
                "output_tokens": 0,
                "cost_usd": None,
            }
            if response is not None:
                label = model.label if model.provider != "anthropic" else response.model
                row.update(
                    input_tokens=response.input_tokens,
                    output_tokens=response.output_tokens,
                    cost_usd=estimate_cost(label, response.input_tokens, response.output_tokens),
                )
            if error is None and output is not None:
                row.update(status=InvocationStatus.COMPLETED, output=output, error=None)
                await self._record(row)
                self.checkpoints[key] = output
                self.done += 1
                for mixin in mixins:
                    await mixin.after_commit(output, mixin_ctx)
                await self._emit("completed", key, slot, agent.name, attempt, duration_ms)
                return await self._gated(agent, slot, key, output)
            row.update(status=InvocationStatus.FAILED, output=None, error=error)
            await self._record(row)
            run_log(
                cfg, logging.WARNING, "invocation %s attempt %d failed: %s", key, attempt, error
            )
            if repair is not None and repairs_left > 0 and response is not None:
                repairs_left -= 1
                request = request.model_copy(
                    update={
                        "messages": [
                            *request.messages,
                            Message(role="assistant", content=response.text),
                            Message(role="user", content=repair),
                        ]
                    }
                )
                await self._emit("retrying", key, slot, agent.name, attempt, duration_ms, error)
                continue
            if retryable and transient_left > 0:
                transient_left -= 1
                await self._emit("retrying", key, slot, agent.name, attempt, duration_ms, error)
                delay = BACKOFF_BASE_SECONDS * 2**backoff_step
                backoff_step += 1
                await asyncio.sleep(min(BACKOFF_MAX_SECONDS, delay))
                continue
            await self._emit("failed", key, slot, agent.name, attempt, duration_ms, error)
            raise InvocationFailed(key, slot, error or "unknown error")

    async def _call(self, provider: Any, request: LLMRequest, deadline: float) -> LLMResponse:
        """One provider call under the concurrency bound and the deadline.

        A provider with `begin` may answer synchronously (offline, a sync function): then there is
        nothing a timeout could interrupt, and arming one would be most of the call's cost.
        """
        begin = getattr(provider, "begin", None)
        async with self.limiter or nullcontext():
            started = begin(request) if begin is not None else provider.complete(request)
            if isinstance(started, LLMResponse):
                return started
            async with asyncio.timeout(deadline):
                return await started  # type: ignore[no-any-return]

    async def _gated(
        self, agent: AgentType, slot: str, key: str, output: dict[str, Any]
    ) -> dict[str, Any]:
        """Apply gates (human approval) to a recorded answer; the checkpoint stays the model's."""
        _, mixins, _ = self._agent_setup(agent)
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
        """Checkpointing commits each row as it finishes; otherwise rows are batched to the end."""
        if self.config.checkpoint_enabled:
            await self.store.record_invocations([row])
        else:
            self.pending_rows.append(row)

    async def flush(self) -> None:
        rows, self.pending_rows = self.pending_rows, []
        await self.store.record_invocations(rows)

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
        result = self.on_event(event)
        if inspect.isawaitable(result):
            await result


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

    async def invoke(self, slot: str, payload: Any, *, key: str | None = None) -> dict[str, Any]:
        full_key = self.prefix + (key or slot)
        member = self.agent(slot)
        if not isinstance(member, SubTopology):
            return await self.engine.invoke_agent(member, slot, payload, full_key)
        child = Scope(self.engine, member.agents, f"{full_key}/", self.depth + 1)
        return await run_nested(child, self.depth + 1, slot, member, payload, full_key)
