"""debate: debaters argue in rounds over a transcript; a mediator judges after each round.

Within a round debaters speak in slot order, and each sees the topic and the whole transcript so
far, including earlier turns of the same round. After each round the mediator answers JSON with
its agreement estimate; the debate stops early once agreement reaches `convergence_threshold`
(when `allow_early_termination`). The final output carries the last verdict, the rounds and the
transcript.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from qmcp.agentframework.errors import ValidationError
from qmcp.agentframework.models import TopologyType
from qmcp.agentframework.models.topology_configs import TopologyConfigBase
from qmcp.agentframework.text import TEXT_KEYS, parse_json_object
from qmcp.agentframework.topologies.base import (
    Output,
    RunContext,
    TopologyKind,
    reject_unexpected,
    require_slots,
)
from qmcp.agentframework.topologies.flow import FlowStep

MEDIATOR = "mediator"
JUDGMENT_FORMAT = (
    '{"converged": true|false, "agreement": 0.0-1.0, "verdict": "…", "winner": "<slot>"|null}'
)
TOPIC_KEYS = ("topic", "question", *TEXT_KEYS)


class DebateConfig(TopologyConfigBase):
    """How long the debate may go on, and when agreement ends it."""

    max_rounds: int = Field(default=3, ge=1, le=10)
    convergence_threshold: float = Field(
        default=0.8, ge=0.0, le=1.0, description="mediator agreement that ends the debate"
    )
    allow_early_termination: bool = True


def debaters(slots: list[str]) -> list[str]:
    if "proponent" in slots or "opponent" in slots:
        return [s for s in ("proponent", "opponent") if s in slots]
    return [s for s in slots if s.startswith("debater_")]


def check_slots(config: DebateConfig, slots: list[str]) -> None:
    require_slots("debate", slots, [MEDIATOR])
    speakers = debaters(slots)
    if "proponent" in speakers or "opponent" in speakers:
        require_slots("debate", slots, ["proponent", "opponent"])
    elif len(speakers) < 2:
        raise ValidationError(
            "debate needs proponent and opponent slots, or at least 2 debater_* slots"
        )
    reject_unexpected(
        "debate",
        [s for s in slots if s != MEDIATOR and s not in speakers],
        "proponent + opponent (or debater_*) and mediator",
    )


def topic_of(input: dict[str, Any]) -> str:
    for key in TOPIC_KEYS:
        value = input.get(key)
        if isinstance(value, str) and value.strip():
            return value
    raise ValidationError("debate input needs a 'topic' or 'question' (or 'prompt') text")


def render(transcript: list[dict[str, Any]]) -> str:
    return (
        "\n\n".join(
            f"[round {t['round']}] {t['slot']} ({t['agent']}):\n{t['content']}" for t in transcript
        )
        or "(nobody has spoken yet)"
    )


def judgment_of(text: str) -> dict[str, Any]:
    """The mediator's JSON; an unreadable answer is agreement 0 with its text as the verdict."""
    data = parse_json_object(text) or {}
    agreement = data.get("agreement")
    if not isinstance(agreement, int | float) or isinstance(agreement, bool):
        agreement = 0.0
    verdict = data.get("verdict")
    return {
        "converged": bool(data.get("converged", False)),
        "agreement": min(1.0, max(0.0, float(agreement))),
        "verdict": verdict if isinstance(verdict, str) and verdict else text,
        "winner": data.get("winner") if isinstance(data.get("winner"), str) else None,
        "parsed": bool(data),
    }


def flow_shape(config: DebateConfig, slots: list[str]) -> list[FlowStep]:
    """One step per round: its speakers in order, then the mediator (`round-{n}/{slot}`)."""
    return [FlowStep(f"round_{n}", (f"round-{n}/*",)) for n in range(1, config.max_rounds + 1)]


async def run(ctx: RunContext, config: DebateConfig, input: dict[str, Any]) -> Output:
    topic = topic_of(input)
    speakers = debaters(ctx.slots())
    transcript: list[dict[str, Any]] = []
    judgments: list[dict[str, Any]] = []
    stopped_early = False
    for round_number in range(1, config.max_rounds + 1):
        for slot in speakers:
            # The transcript before the call's own instruction: each round repeats and extends
            # it, so providers can cache it as a shared prefix.
            prompt = (
                f"Debate topic: {topic}\n\nTranscript so far:\n{render(transcript)}\n\n"
                f"You are {slot} in round {round_number} of at most {config.max_rounds}. "
                "Make your case and answer the other side."
            )
            said = await ctx.invoke(slot, {"prompt": prompt}, key=f"round-{round_number}/{slot}")
            transcript.append(
                {
                    "round": round_number,
                    "slot": slot,
                    "agent": said.get("agent"),
                    "content": said["content"],
                }
            )
        ask = (
            f"You mediate a debate on: {topic}\n\nTranscript:\n{render(transcript)}\n\n"
            f"Judge the debate so far. Answer only with JSON of the form {JUDGMENT_FORMAT}."
        )
        answer = await ctx.invoke(MEDIATOR, {"prompt": ask}, key=f"round-{round_number}/{MEDIATOR}")
        judgment = {"round": round_number, **judgment_of(answer["content"])}
        judgments.append(judgment)
        if config.allow_early_termination and judgment["agreement"] >= config.convergence_threshold:
            stopped_early = round_number < config.max_rounds
            break
    final = judgments[-1]
    return {
        "content": final["verdict"],
        "verdict": final["verdict"],
        "winner": final["winner"],
        "conclusion": {"agreement": final["agreement"], "converged": final["converged"]},
        "rounds": len(judgments),
        "stopped_early": stopped_early,
        "transcript": transcript,
        "judgments": judgments,
    }


KIND = TopologyKind(
    type=TopologyType.DEBATE,
    config_model=DebateConfig,
    run=run,
    check_slots=check_slots,
    estimate=lambda config, slots: config.max_rounds * len(slots),
    summary="debaters argue in rounds; a mediator judges and stops it on convergence",
    flow_shape=flow_shape,
    input_field=TOPIC_KEYS[0],
)
