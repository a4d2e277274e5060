"""chain_of_command: a commander splits the task, lieutenants brief workers, results flow back up.

The commander's plan is parsed JSON (one repair retry, then the whole task as one subtask);
a worker result that failed or states a confidence below `escalation_threshold` is escalated up
the chain, one level at a time, at most `max_delegation_depth` levels per subtask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from qmcp.agentframework.errors import InvocationFailed, TopologyFailed, ValidationError
from qmcp.agentframework.models import TopologyType
from qmcp.agentframework.models.topology_configs import TopologyConfigBase
from qmcp.agentframework.text import confidence_of, parse_json_object
from qmcp.agentframework.topologies.base import (
    Output,
    RunContext,
    TopologyKind,
    reject_unexpected,
    require_slots,
)
from qmcp.agentframework.topologies.flow import FlowStep

COMMANDER = "commander"
LIEUTENANT = "lieutenant_"
WORKER = "worker_"
PLAN_FORMAT = '{"subtasks": [{"title": "…", "description": "…"}, …]}'
CONFIDENCE_LINE = "End with a line 'confidence: x' where x is between 0 and 1."
REQUEST_KEYS = ("task", "prompt", "content")


class ChainOfCommandConfig(TopologyConfigBase):
    """A commander decomposes, lieutenants refine, workers execute; weak results escalate."""

    escalation_threshold: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="a result that failed or states a confidence below this is escalated",
    )
    max_delegation_depth: int = Field(
        default=3,
        ge=1,
        le=5,
        description=(
            "levels a subtask may be worked at: the worker is level 1, each escalation one more "
            "(1 = never escalate)"
        ),
    )
    max_subtasks: int = Field(
        default=5, ge=1, le=20, description="most subtasks the commander's plan may fan out to"
    )


@dataclass(frozen=True)
class Subtask:
    title: str
    description: str


@dataclass(frozen=True)
class Attempt:
    """One agent's work on a subtask: its answer, or why it has none."""

    slot: str
    agent: str
    key: str
    content: str | None
    error: str | None
    confidence: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "agent": self.agent,
            "key": self.key,
            "content": self.content,
            "error": self.error,
            "confidence": self.confidence,
        }


def check_slots(config: ChainOfCommandConfig, slots: list[str]) -> None:
    require_slots("chain_of_command", slots, [COMMANDER])
    if not any(s.startswith(WORKER) for s in slots):
        require_slots("chain_of_command", slots, ["worker_1 (at least one worker_* slot)"])
    reject_unexpected(
        "chain_of_command",
        [s for s in slots if s != COMMANDER and not s.startswith((LIEUTENANT, WORKER))],
        "commander, lieutenant_* (optional) and worker_* (at least one)",
    )


def request_text(input: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The task to command, and the rest of the input as context."""
    for key in REQUEST_KEYS:
        value = input.get(key)
        if isinstance(value, str) and value.strip():
            return value, {k: v for k, v in input.items() if k != key}
    raise ValidationError(
        "chain_of_command reads the task from the input's 'task' (or 'prompt') field, as "
        f"non-empty text; got fields: {', '.join(sorted(input)) or 'none'}"
    )


def parse_plan(text: str, limit: int) -> tuple[list[Subtask], list[str]]:
    """A plan answer's subtasks and notes on what was trimmed; ValueError says what is wrong."""
    data = parse_json_object(text)
    if data is None:
        raise ValueError("the answer contains no JSON object")
    items = data.get("subtasks")
    if not isinstance(items, list):
        raise ValueError('the JSON object has no "subtasks" list')
    if not items:
        raise ValueError('"subtasks" is empty')
    subtasks = []
    for index, item in enumerate(items):
        if isinstance(item, str) and item.strip():
            subtasks.append(Subtask(item.strip(), item.strip()))
            continue
        if not isinstance(item, dict):
            raise ValueError(f"subtask {index} is not an object with a title and a description")
        title, description = item.get("title"), item.get("description", item.get("title"))
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"subtask {index} has no title")
        if not isinstance(description, str) or not description.strip():
            raise ValueError(f"subtask {index} ({title.strip()!r}) has no description")
        subtasks.append(Subtask(title.strip(), description.strip()))
    notes = []
    if len(subtasks) > limit:
        notes.append(
            f"the plan had {len(subtasks)} subtasks; kept the first {limit} (max_subtasks)"
        )
        subtasks = subtasks[:limit]
    return subtasks, notes


def context_block(context: dict[str, Any]) -> str:
    if not context:
        return ""
    rendered = json.dumps(context, ensure_ascii=False, indent=2, sort_keys=True, default=str)
    return f"\n\nContext:\n{rendered}"


def plan_prompt(task: str, context: dict[str, Any], config: ChainOfCommandConfig, team: str) -> str:
    return (
        f"You command {team}. Break the task below into at most {config.max_subtasks} "
        "subtasks that together accomplish it. Each subtask goes to one worker, who sees only "
        "its subtask and the task, so make each description self-contained.\n\n"
        f"Task:\n{task}{context_block(context)}\n\n"
        f"Answer only with JSON of the form {PLAN_FORMAT}"
    )


def repair_prompt(task: str, config: ChainOfCommandConfig, answer: str, problem: str) -> str:
    excerpt = answer if len(answer) <= 2000 else answer[:2000] + "…"
    return (
        f"Your plan could not be used: {problem}. Answer again, only with JSON of the form "
        f"{PLAN_FORMAT}, with between 1 and {config.max_subtasks} subtasks.\n\n"
        f"Task:\n{task}\n\nYour previous answer:\n{excerpt}"
    )


def subtask_header(index: int, total: int, subtask: Subtask) -> str:
    return f"Subtask {index + 1} of {total}: {subtask.title}"


def refine_prompt(task: str, index: int, total: int, subtask: Subtask) -> str:
    return (
        "You are a lieutenant. Turn the subtask below into clear, self-contained instructions "
        "for the worker who will carry it out: what to do, what to deliver, what to watch out "
        "for. Answer with the instructions only.\n\n"
        f"Overall task:\n{task}\n\n{subtask_header(index, total, subtask)}\n{subtask.description}"
    )


def work_prompt(task: str, index: int, total: int, subtask: Subtask, instructions: str) -> str:
    return (
        f"Carry out the subtask below and give its result. {CONFIDENCE_LINE}\n\n"
        f"Overall task:\n{task}\n\n{subtask_header(index, total, subtask)}\n"
        f"Instructions:\n{instructions}"
    )


def escalation_prompt(
    task: str, index: int, total: int, subtask: Subtask, instructions: str, prior: Attempt, why: str
) -> str:
    answer = prior.content if prior.content is not None else f"(no result: {prior.error})"
    return (
        f"Escalation: the result for subtask {index + 1} of {total} from {prior.slot} "
        f"({prior.agent}) was escalated to you because {why}. Resolve it: give the result for "
        f"this subtask yourself. {CONFIDENCE_LINE}\n\n"
        f"Overall task:\n{task}\n\n{subtask_header(index, total, subtask)}\n"
        f"Instructions:\n{instructions}\n\nEscalated result:\n{answer}"
    )


def synthesis_prompt(task: str, outcomes: list[dict[str, Any]]) -> str:
    parts = []
    for outcome in outcomes:
        head = f"### Subtask {outcome['subtask'] + 1}: {outcome['title']}"
        if outcome["content"] is None:
            parts.append(f"{head}\n(no result: {outcome['note']})")
            continue
        note = f"\n(note: {outcome['note']})" if outcome["note"] else ""
        parts.append(f"{head} (by {outcome['by']})\n{outcome['content']}{note}")
    return (
        "Your team has worked the subtasks of the task below. Synthesise their results into "
        "the final answer to the task.\n\n"
        f"Task:\n{task}\n\n" + "\n\n".join(parts)
    )


def escalation_reason(attempt: Attempt, threshold: float) -> str | None:
    """Why an attempt must go up the chain, or None when it stands."""
    if attempt.content is None:
        return f"it failed: {attempt.error}"
    if attempt.confidence is not None and attempt.confidence < threshold:
        return (
            f"its stated confidence {attempt.confidence:.2f} is below the escalation threshold "
            f"{threshold:.2f}"
        )
    return None


async def attempt(ctx: RunContext, slot: str, prompt: str, key: str) -> Attempt:
    outcome = await ctx.try_invoke(slot, {"prompt": prompt}, key=key)
    if isinstance(outcome, InvocationFailed):
        return Attempt(slot, ctx.agent(slot).name, key, None, outcome.reason, None)
    content = outcome["content"]
    return Attempt(slot, outcome.get("agent", slot), key, content, None, confidence_of(content))


async def plan(
    ctx: RunContext, config: ChainOfCommandConfig, task: str, context: dict[str, Any]
) -> tuple[list[Subtask], dict[str, Any]]:
    """The commander's subtasks: parsed, repaired once, else the whole task as one subtask."""
    lieutenants, workers = len(ctx.slots(LIEUTENANT)), len(ctx.slots(WORKER))
    team = f"{workers} worker(s)" + (f" led by {lieutenants} lieutenant(s)" if lieutenants else "")
    first = await ctx.invoke(
        COMMANDER, {"prompt": plan_prompt(task, context, config, team)}, key="commander/plan"
    )
    record: dict[str, Any] = {"plan": first["content"], "plan_repair": None}
    try:
        subtasks, notes = parse_plan(first["content"], config.max_subtasks)
    except ValueError as problem:
        repair = repair_prompt(task, config, first["content"], str(problem))
        second = await ctx.invoke(COMMANDER, {"prompt": repair}, key="commander/plan-repair")
        record["plan_repair"] = second["content"]
        try:
            subtasks, notes = parse_plan(second["content"], config.max_subtasks)
        except ValueError as again:
            reason = f"plan unusable ({problem}); repair unusable ({again})"
            record.update(fallback=True, fallback_reason=reason, notes=[])
            return [Subtask("Whole task", task)], record
    record.update(fallback=False, fallback_reason=None, notes=notes)
    return subtasks, record


async def work(
    ctx: RunContext,
    config: ChainOfCommandConfig,
    task: str,
    index: int,
    subtasks: list[Subtask],
    lieutenant: str | None,
    worker: str,
) -> dict[str, Any]:
    """One subtask down the chain (lieutenant, worker) and, if needed, back up (escalations)."""
    subtask, total, tag = subtasks[index], len(subtasks), f"subtask-{index}"
    instructions, briefing = subtask.description, None
    if lieutenant is not None:
        briefing = await attempt(
            ctx, lieutenant, refine_prompt(task, index, total, subtask), f"{lieutenant}/{tag}"
        )
        if briefing.content is not None and briefing.content.strip():
            instructions = briefing.content
    current = await attempt(
        ctx, worker, work_prompt(task, index, total, subtask, instructions), f"{worker}/{tag}"
    )
    worker_attempt, handled, escalations = current, [], []
    level = 1
    while (why := escalation_reason(current, config.escalation_threshold)) is not None:
        entry: dict[str, Any] = {"subtask": index, "level": level, "from": current.slot}
        entry["reason"] = why
        if level >= config.max_delegation_depth:
            entry.update(to=None, key=None, resolved=False)
            entry["note"] = f"not handled: max_delegation_depth {config.max_delegation_depth}"
            escalations.append(entry)
            break
        handler = lieutenant if level == 1 and lieutenant is not None else COMMANDER
        key = f"escalation/{tag}" if level == 1 else f"escalation-{level}/{tag}"
        prompt = escalation_prompt(task, index, total, subtask, instructions, current, why)
        current = await attempt(ctx, handler, prompt, key)
        handled.append(current)
        entry.update(to=handler, key=key)
        entry["resolved"] = escalation_reason(current, config.escalation_threshold) is None
        escalations.append(entry)
        level += 1
    answered = [a for a in [worker_attempt, *handled] if a.content is not None]
    final = answered[-1] if answered else None
    still = escalation_reason(current, config.escalation_threshold)
    if final is None:
        status, note = "failed", still
    elif not escalations:
        status, note = "completed", None
    elif still is None:
        status, note = "resolved", None
    else:
        status, note = "unresolved", f"unresolved escalation: {still}"
    return {
        "subtask": index,
        "title": subtask.title,
        "status": status,
        "by": final.slot if final else None,
        "content": final.content if final else None,
        "confidence": final.confidence if final else None,
        "note": note,
        "briefing": briefing,
        "worker": worker_attempt,
        "handled": handled,
        "escalations": escalations,
    }


def flow_shape(config: ChainOfCommandConfig, slots: list[str]) -> list[FlowStep]:
    """The commander's plan, then the subtasks in parallel, then the commander's synthesis.

    A subtask's branch works its keys in order (`{lieutenant}/subtask-{i}`,
    `{worker}/subtask-{i}`, then `escalation/subtask-{i}`, `escalation-{level}/subtask-{i}`),
    since each depends on the one before.
    """
    return [
        FlowStep("plan", (f"{COMMANDER}/plan", f"{COMMANDER}/plan-repair")),
        FlowStep(
            "subtasks",
            (
                f"{LIEUTENANT}*/subtask-*",
                f"{WORKER}*/subtask-*",
                "escalation/subtask-*",
                "escalation-*/subtask-*",
            ),
            foreach=True,
        ),
        FlowStep("synthesis", (f"{COMMANDER}/synthesis",)),
    ]


async def run(ctx: RunContext, config: ChainOfCommandConfig, input: dict[str, Any]) -> Output:
    task, context = request_text(input)
    subtasks, record = await plan(ctx, config, task, context)
    lieutenants, workers = ctx.slots(LIEUTENANT), ctx.slots(WORKER)
    chain = [
        (i, lieutenants[i % len(lieutenants)] if lieutenants else None, workers[i % len(workers)])
        for i in range(len(subtasks))
    ]
    outcomes = await ctx.gather(
        work(ctx, config, task, i, subtasks, lieutenant, worker) for i, lieutenant, worker in chain
    )
    assignments = [
        {"subtask": i, "title": subtasks[i].title, "lieutenant": lieutenant, "worker": worker}
        for i, lieutenant, worker in chain
    ]
    if all(o["status"] == "failed" for o in outcomes):
        raise TopologyFailed(
            "chain_of_command: no subtask produced a result; "
            + "; ".join(f"subtask {o['subtask'] + 1} ({o['title']}): {o['note']}" for o in outcomes)
        )
    synthesis = await ctx.invoke(
        COMMANDER, {"prompt": synthesis_prompt(task, outcomes)}, key="commander/synthesis"
    )
    return {
        "content": synthesis["content"],
        "strategy": [{"title": s.title, "description": s.description} for s in subtasks],
        "fallback": record["fallback"],
        "fallback_reason": record["fallback_reason"],
        "plan_notes": record["notes"],
        "assignments": assignments,
        "results": {
            "commander": {
                "plan": record["plan"],
                "plan_repair": record["plan_repair"],
                "synthesis": synthesis["content"],
            },
            "lieutenant": {
                f"subtask-{o['subtask']}": o["briefing"].as_dict()
                for o in outcomes
                if o["briefing"]
            },
            "worker": {f"subtask-{o['subtask']}": o["worker"].as_dict() for o in outcomes},
            "escalation": {
                f"subtask-{o['subtask']}": [a.as_dict() for a in o["handled"]]
                for o in outcomes
                if o["handled"]
            },
        },
        "escalations": [e for o in outcomes for e in o["escalations"]],
        "subtasks": [
            {k: o[k] for k in ("subtask", "title", "status", "by", "content", "confidence", "note")}
            for o in outcomes
        ],
    }


def estimate(config: ChainOfCommandConfig, slots: list[str]) -> int:
    """Invocations when nothing escalates and the plan uses every allowed subtask."""
    per_subtask = 2 if any(s.startswith(LIEUTENANT) for s in slots) else 1
    return 2 + config.max_subtasks * per_subtask


KIND = TopologyKind(
    type=TopologyType.CHAIN_OF_COMMAND,
    config_model=ChainOfCommandConfig,
    run=run,
    check_slots=check_slots,
    estimate=estimate,
    summary="commander plans subtasks, lieutenants brief workers, weak results escalate",
    flow_shape=flow_shape,
    input_field=REQUEST_KEYS[0],
)
