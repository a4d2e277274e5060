"""Typed configs of the topology kinds, validated when a topology is created."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qmcp.agentframework.models.enums import AggregationMethod


class TopologyConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PipelineConfig(TopologyConfigBase):
    """Stages run in order; each stage reads the previous stage's output."""

    stages: list[str] | None = Field(
        default=None, description="slot names in order; default: the slots in insertion order"
    )
    retry_failed_stages: bool = Field(
        default=True,
        description="retry a stage's invocation after a transient error (429, 5xx, timeout); "
        "false: one attempt per stage",
    )
    max_stage_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="retries per stage, at most RunConfig.max_retries (retries never stack)",
    )

    @field_validator("stages")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("stages must name at least one slot")
            if len(set(value)) != len(value):
                raise ValueError("stages must not repeat a slot")
        return value


class EnsembleConfig(TopologyConfigBase):
    """`ensemble_*` members answer the same prompt in parallel; their answers are aggregated."""

    aggregation_method: AggregationMethod = AggregationMethod.SYNTHESIS
    failure_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="largest fraction of members that may fail"
    )
    min_successes: int | None = Field(
        default=None, ge=1, description="fewest members that must succeed (overrides the threshold)"
    )
