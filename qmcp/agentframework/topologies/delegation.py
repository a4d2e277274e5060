"""delegation: a coordinator routes the request to specialists; their answers are combined.

Routing is by the coordinator's JSON answer (capability_match), by role named in the task, or to
all specialists. An unusable routing answer falls back to a deterministic keyword match, then to
`on_no_match`: the fallback specialist, or a clear failure.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from qmcp.agentframework.errors import InvocationFailed, TopologyFailed, ValidationError
from qmcp.agentframework.models import AgentConfig, TopologyType
from qmcp.agentframework.models.topology_configs import TopologyConfigBase
from qmcp.agentframework.text import parse_json_object
from qmcp.agentframework.topologies.aggregation import synthesis_prompt
from qmcp.agentframework.topologies.base import Output, RunContext, TopologyKind, require_slots
from qmcp.agentframework.topologies.flow import FlowStep

COORDINATOR = "coordinator"
ROUTE_FORMAT = '{"route": ["<slot>", …], "reason": "…"}'
REQUEST_KEYS = ("task", "prompt", "content")
# Words too common to say anything about who should handle a request.
_COMMON = (
    "the and for with that this from into your you are was were will would should could can "
    "about what which who whom when where why how all any each its our their them they then "
    "than there here have has had not but out use using please give make need needs want"
)
STOPWORDS = frozenset(_COMMON.split())
_SUFFIXES = ("ations", "ation", "ings", "ing", "ers", "er", "ed", "es", "s", "e")
_WORD = re.compile(r"[a-z0-9]+")


class DelegationConfig(TopologyConfigBase):
    """How the coordinator's request is routed to specialists, and what happens if none fits."""

    routing_strategy: Literal["capability_match", "role", "all"] = Field(
        default="capability_match",
        description=(
            "capability_match: the coordinator chooses from each specialist's description and "
            "capabilities; role: specialists whose role is named in the task; all: every one"
        ),
    )
    max_specialists: int = Field(
        default=1,
        ge=1,
        le=10,
        description="most specialists a request is routed to (not applied to routing 'all')",
    )
    fallback_slot: str | None = Field(
        default=None,
        description="specialist used when no routing fits (default: the first specialist)",
    )
    on_no_match: Literal["fallback", "fail"] = Field(
        default="fallback",
        description="when no routing fits: use the fallback specialist, or fail the run",
    )


def specialists_of(slots: list[str]) -> list[str]:
    return [s for s in slots if s != COORDINATOR]


def check_slots(config: DelegationConfig, slots: list[str]) -> None:
    require_slots("delegation", slots, [COORDINATOR])
    specialists = specialists_of(slots)
    if not specialists:
        raise ValidationError(
            "delegation topology needs at least one specialist slot besides 'coordinator'"
        )
    if config.fallback_slot is not None:
        if config.on_no_match == "fail":
            raise ValidationError(
                f"fallback_slot {config.fallback_slot!r} is never used with on_no_match='fail'; "
                "drop fallback_slot or set on_no_match='fallback'"
            )
        if config.fallback_slot not in specialists:
            raise ValidationError(
                f"fallback_slot {config.fallback_slot!r} is not a specialist slot of this "
                f"topology; specialists: {', '.join(specialists)}"
            )


def request_text(input: dict[str, Any]) -> str:
    for key in REQUEST_KEYS:
        value = input.get(key)
        if isinstance(value, str) and value.strip():
            return value
    raise ValidationError(
        "delegation reads the request from the input's 'task' or 'prompt' field, as non-empty "
        f"text; got fields: {', '.join(sorted(input)) or 'none'}"
    )


def profile(ctx: RunContext, slot: str) -> dict[str, Any]:
    """What the coordinator is told about a specialist, and what keyword routing matches on."""
    agent = ctx.agent(slot)
    config = AgentConfig.model_validate(agent.config or {})
    return {
        "slot": slot,
        "agent": agent.name,
        "role": str(agent.role),
        "description": agent.description,
        "capabilities": [c.name for c in config.capabilities if c.enabled],
    }


def route_prompt(task: str, profiles: list[dict[str, Any]], limit: int) -> str:
    lines = []
    for p in profiles:
        capabilities = ", ".join(p["capabilities"]) or "none declared"
        description = p["description"] or "no description"
        lines.append(
            f"- {p['slot']}: agent {p['agent']!r}, role {p['role']}; {description} "
            f"(capabilities: {capabilities})"
        )
    return (
        f"Route the request below to the specialist(s) best able to handle it: at least 1 and at "
        f"most {limit}, chosen by their descriptions and capabilities.\n\n"
        f"Specialists:\n" + "\n".join(lines) + f"\n\nRequest:\n{task}\n\n"
        f"Answer only with JSON of the form {ROUTE_FORMAT}, naming specialists by slot."
    )


def parse_route(
    text: str, specialists: list[str], limit: int
) -> tuple[list[str], str, list[str]] | str:
    """(route, reason, notes) from a routing answer, or what makes it unusable."""
    data = parse_json_object(text)
    if data is None:
        return "the routing answer contains no JSON object"
    raw = data.get("route")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        return 'the routing answer has no "route" list'
    route, notes = [], []
    for item in raw:
        if not isinstance(item, str):
            notes.append(f"dropped {item!r}: not a slot name")
        elif item.strip() not in specialists:
            notes.append(f"dropped {item!r}: not a specialist slot")
        elif item.strip() not in route:
            route.append(item.strip())
    if len(route) > limit:
        notes.append(f"kept the first {limit} of {len(route)} (max_specialists)")
        route = route[:limit]
    if not route:
        return "the routing answer names no specialist slot: " + "; ".join(notes or ["empty"])
    reason = data.get("reason")
    return route, reason if isinstance(reason, str) else "", notes


def stems(text: str) -> set[str]:
    """Words of at least 3 letters, minus stopwords, with one common suffix stripped."""
    words = set()
    for word in _WORD.findall(text.lower()):
        if len(word) < 3 or word in STOPWORDS:
            continue
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 4:
                word = word[: -len(suffix)]
                break
        words.add(word)
    return words


def related(a: str, b: str) -> bool:
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return len(short) >= 5 and long.startswith(short)


def keyword_scores(task: str, profiles: list[dict[str, Any]]) -> dict[str, int]:
    """How many of the task's words each specialist's description and capabilities share."""
    wanted = stems(task)
    scores = {}
    for p in profiles:
        offered = stems(
            " ".join([p["description"], *(c.replace("_", " ") for c in p["capabilities"])])
        )
        scores[p["slot"]] = sum(1 for w in wanted if any(related(w, o) for o in offered))
    return scores


def keyword_route(task: str, profiles: list[dict[str, Any]], limit: int) -> list[str]:
    scores = keyword_scores(task, profiles)
    ranked = sorted((s for s in scores if scores[s] > 0), key=lambda s: -scores[s])
    return ranked[:limit]


def role_route(task: str, profiles: list[dict[str, Any]], limit: int) -> list[str]:
    words = set(_WORD.findall(task.lower()))
    named = [p["slot"] for p in profiles if {p["role"], p["role"] + "s"} & words]
    return named[:limit]


async def decide(
    ctx: RunContext, config: DelegationConfig, task: str, profiles: list[dict[str, Any]]
) -> dict[str, Any]:
    """The routing decision: which specialists, why, and which rule made it."""
    specialists = [p["slot"] for p in profiles]
    limit = config.max_specialists
    problems: list[str] = []
    if config.routing_strategy == "all":
        return routing(specialists, "routing_strategy 'all'", "all")
    if config.routing_strategy == "role":
        route = role_route(task, profiles, limit)
        if route:
            return routing(route, "their role is named in the request", "role")
        problems.append("no specialist's role is named in the request")
    else:
        answer = await ctx.try_invoke(
            COORDINATOR, {"prompt": route_prompt(task, profiles, limit)}, key="coordinator/route"
        )
        if isinstance(answer, InvocationFailed):
            problems.append(f"the coordinator failed: {answer.reason}")
            raw = None
        else:
            raw = answer["content"]
            parsed = parse_route(raw, specialists, limit)
            if not isinstance(parsed, str):
                route, reason, notes = parsed
                return routing(route, reason, "coordinator", notes, raw)
            problems.append(parsed)
        route = keyword_route(task, profiles, limit)
        if route:
            scores = keyword_scores(task, profiles)
            reason = "keyword match: " + ", ".join(f"{s} ({scores[s]})" for s in route)
            return routing(route, reason, "keyword", problems, raw)
        problems.append("no specialist's description or capabilities share a word with it")
        return no_match(config, specialists, problems, raw)
    return no_match(config, specialists, problems, None)


def no_match(
    config: DelegationConfig, specialists: list[str], problems: list[str], raw: str | None
) -> dict[str, Any]:
    if config.on_no_match == "fail":
        raise TopologyFailed(
            f"delegation: no specialist fits the request ({'; '.join(problems)}) and "
            "on_no_match is 'fail'; set on_no_match='fallback' (optionally with fallback_slot) "
            "to route such requests to a default specialist"
        )
    slot = config.fallback_slot or specialists[0]
    reason = f"fallback to {slot}: " + "; ".join(problems)
    return routing([slot], reason, "fallback", problems, raw)


def routing(
    decision: list[str],
    reason: str,
    source: str,
    notes: list[str] | None = None,
    raw: str | None = None,
) -> dict[str, Any]:
    return {
        "decision": decision,
        "reason": reason,
        "source": source,
        "notes": list(notes or []),
        "coordinator_answer": raw,
    }


def flow_shape(config: DelegationConfig, slots: list[str]) -> list[FlowStep]:
    """The coordinator's routing, the chosen specialists in parallel, the coordinator's combine
    (the first only for capability_match, the last only when more than one can be chosen)."""
    shape = [FlowStep("specialists", ("specialist/*",), foreach=True)]
    if config.routing_strategy == "capability_match":
        shape.insert(0, FlowStep("route", (f"{COORDINATOR}/route",)))
    specialists = len(specialists_of(slots))
    routed = specialists if config.routing_strategy == "all" else config.max_specialists
    if min(routed, specialists) > 1:
        shape.append(FlowStep("combine", (f"{COORDINATOR}/combine",)))
    return shape


async def run(ctx: RunContext, config: DelegationConfig, input: dict[str, Any]) -> Output:
    task = request_text(input)
    profiles = [profile(ctx, slot) for slot in specialists_of(ctx.slots())]
    decision = await decide(ctx, config, task, profiles)
    chosen = decision["decision"]
    outcomes = await ctx.gather(
        ctx.try_invoke(slot, input, key=f"specialist/{slot}") for slot in chosen
    )
    succeeded = [(s, o) for s, o in zip(chosen, outcomes, strict=True) if isinstance(o, dict)]
    failed = {
        s: o.reason
        for s, o in zip(chosen, outcomes, strict=True)
        if isinstance(o, InvocationFailed)
    }
    if not succeeded:
        raise TopologyFailed(
            "delegation: every routed specialist failed; "
            + "; ".join(f"{slot}: {reason}" for slot, reason in failed.items())
        )
    if len(succeeded) > 1:
        combined = await ctx.invoke(
            COORDINATOR,
            {"prompt": synthesis_prompt(task, succeeded)},
            key="coordinator/combine",
        )
        content, combined_by = combined["content"], COORDINATOR
    else:
        content, combined_by = succeeded[0][1]["content"], None
    return {
        "content": content,
        "routing": {"strategy": config.routing_strategy, **decision},
        "specialists": {
            slot: {"agent": out.get("agent", slot), "content": out["content"]}
            for slot, out in succeeded
        },
        "failures": failed,
        "combined_by": combined_by,
    }


def estimate(config: DelegationConfig, slots: list[str]) -> int:
    specialists = len(specialists_of(slots))
    routed = (
        specialists
        if config.routing_strategy == "all"
        else min(config.max_specialists, specialists)
    )
    asks = 1 if config.routing_strategy == "capability_match" else 0
    return asks + routed + (1 if routed > 1 else 0)


KIND = TopologyKind(
    type=TopologyType.DELEGATION,
    config_model=DelegationConfig,
    run=run,
    check_slots=check_slots,
    estimate=estimate,
    summary="coordinator routes the request to specialists by capability or role; fallback",
    flow_shape=flow_shape,
    input_field=REQUEST_KEYS[0],
)
