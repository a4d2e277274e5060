"""pipeline: stages in order; each reads the previous stage's output and the original input."""

from __future__ import annotations

from typing import Any

from qmcp.agentframework.models import PipelineConfig, TopologyType
from qmcp.agentframework.text import main_text
from qmcp.agentframework.topologies.base import (
    Output,
    RunContext,
    TopologyKind,
    reject_unexpected,
    require_slots,
)
from qmcp.agentframework.topologies.flow import FlowStep


def stage_order(config: PipelineConfig, slots: list[str]) -> list[str]:
    return list(config.stages) if config.stages else list(slots)


def check_slots(config: PipelineConfig, slots: list[str]) -> None:
    stages = stage_order(config, slots)
    require_slots("pipeline", slots, stages or ["<at least one stage>"])
    reject_unexpected(
        "pipeline", [s for s in slots if s not in stages], f"the stages {', '.join(stages)}"
    )


def stage_payload(previous: Output | None, original: dict[str, Any], index: int) -> Any:
    """Stage 0 reads the input as given; later stages read the previous output."""
    if previous is None:
        return original
    return {
        "prompt": previous["content"],
        "original_request": main_text(original),
        "previous_stage": index - 1,
    }


def flow_shape(config: PipelineConfig, slots: list[str]) -> list[FlowStep]:
    """One step per stage: stage i owns the key `stage-{i}/{slot}` that `run` builds."""
    return [
        FlowStep(f"stage_{i}", (f"stage-{i}/*",)) for i in range(len(stage_order(config, slots)))
    ]


async def run(ctx: RunContext, config: PipelineConfig, input: dict[str, Any]) -> Output:
    stages = stage_order(config, ctx.slots())
    # A stage's retry budget is its invocation's: one policy, transient errors only.
    retries = config.max_stage_retries if config.retry_failed_stages else 0
    previous: Output | None = None
    results = []
    for index, slot in enumerate(stages):
        payload = stage_payload(previous, input, index)
        previous = await ctx.invoke(slot, payload, key=f"stage-{index}/{slot}", retries=retries)
        results.append(
            {"stage": slot, "agent": previous.get("agent"), "content": previous["content"]}
        )
    assert previous is not None
    return {"content": previous["content"], "stages": results, "final_stage": stages[-1]}


KIND = TopologyKind(
    type=TopologyType.PIPELINE,
    config_model=PipelineConfig,
    run=run,
    check_slots=check_slots,
    estimate=lambda config, slots: len(stage_order(config, slots)),
    summary="stages in order; each reads the previous stage's output",
    flow_shape=flow_shape,
)
