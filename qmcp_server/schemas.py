"""Typed tool arguments and structured results of the MCP tools."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal[
    "planner",
    "executor",
    "reviewer",
    "critic",
    "synthesizer",
    "specialist",
    "coordinator",
    "observer",
]
Status = Literal["pending", "running", "completed", "failed", "cancelled", "interrupted"]


class Capability(BaseModel):
    name: str = Field(description="a mixin name from mixins_list", max_length=100)
    config: dict[str, Any] = Field(default_factory=dict, description="the mixin's config")
    enabled: bool = True


class ToolServerArg(BaseModel):
    """An MCP server an agent uses as tools (checked in full by the service, as `ToolServer`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64, description="how the agent's records name this server")
    command: str | None = Field(default=None, description="stdio: the program to start")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description='"${VAR}" reads the environment')
    cwd: str | None = None
    url: str | None = Field(default=None, description="streamable HTTP: the MCP endpoint")
    headers: dict[str, str] = Field(
        default_factory=dict, description='"${VAR}" reads the environment'
    )
    allow: list[str] | None = Field(default=None, description="only these tools")
    deny: list[str] = Field(default_factory=list, description="never these tools")
    approve: list[str] = Field(
        default_factory=list, description="a human approves each call (destructive tools always)"
    )


class InlineAgent(BaseModel):
    """An agent defined where a topology runs it (`topologies_run` with an inline topology)."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    name: str | None = Field(default=None, max_length=100, description="default: the slot's name")
    model: str | None = Field(
        default=None,
        max_length=200,
        description="as in agents_create: 'offline', a claude-… id, 'sampling', a Models name",
    )
    system_prompt: str | None = Field(default=None, max_length=100_000)
    description: str = Field(default="", max_length=10_000)
    temperature: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=128_000)
    capabilities: list[Capability] | None = Field(
        default=None, max_length=20, description="mixins, see mixins_list"
    )


class InlineTopology(BaseModel):
    """A topology given whole in the call: run without storing it or its inline agents (the
    execution's record holds them, so it resumes), unless `save` is true."""

    model_config = ConfigDict(extra="forbid")

    topology_type: str = Field(
        max_length=50,
        description="pipeline, ensemble, debate, cross_check, chain_of_command or delegation",
    )
    slots: dict[str, str | InlineAgent] = Field(
        max_length=100,
        description="slot name -> an inline agent {role, model, system_prompt, …}, or the name "
        "of a stored agent (or 'topology:<name>'), in order; each kind's slots as in "
        "topologies_create",
    )
    config: dict[str, Any] | None = Field(default=None, description="the kind's config")
    name: str | None = Field(
        default=None,
        max_length=100,
        description="names the execution's topology (default 'inline'); required with save",
    )
    description: str = Field(default="", max_length=10_000)
    save: bool = Field(
        default=False,
        description="also store the inline agents and the topology under their names, to "
        "run again by name (or as run_<name>)",
    )


class AgentInfo(BaseModel):
    name: str
    role: str
    model: str | None
    description: str
    config: dict[str, Any]
    version: int
    tools: list[dict[str, Any]] | None = Field(
        default=None,
        description="agents_show: each tool server's tools as discovered now (which need a "
        "human's approval), or why the server could not be reached",
    )
    created_at: str | None
    updated_at: str | None = None


class Deleted(BaseModel):
    name: str
    message: str


class AgentList(BaseModel):
    agents: list[AgentInfo]


class MixinInfo(BaseModel):
    name: str
    version: str
    description: str
    dependencies: list[str]
    config_schema: dict[str, Any]


class MixinList(BaseModel):
    mixins: list[MixinInfo]


class TopologyInfo(BaseModel):
    name: str
    topology_type: str
    description: str
    config: dict[str, Any]
    slots: dict[str, str | None]
    version: int | None = None
    updated_at: str | None = None
    mermaid: str | None = None


class TopologyList(BaseModel):
    topologies: list[TopologyInfo]


class RunOutcome(BaseModel):
    execution_id: str
    status: Status
    topology_name: str
    runner_type: str
    output: dict[str, Any] | None = None
    error: str | None = None
    duration_ms: int | None = None
    correlation_id: str | None = None
    resource_uri: str = Field(description="read this resource for the full record")


class InvocationInfo(BaseModel):
    key: str
    slot: str
    agent_name: str
    provider: str
    model: str
    status: str
    attempt: int
    input: dict[str, Any]
    output: dict[str, Any] | None
    error: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    duration_ms: float
    started_at: str | None
    completed_at: str | None


class ExecutionInfo(BaseModel):
    id: str
    topology_name: str
    runner_type: str
    status: Status
    input: dict[str, Any]
    output: dict[str, Any] | None
    error: str | None
    correlation_id: str | None
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    duration_ms: int | None
    invocation_count: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    invocations: list[InvocationInfo] | None = None


class ExecutionList(BaseModel):
    executions: list[ExecutionInfo]


class RunnerInfo(BaseModel):
    runner_type: str
    description: str


class RunnerList(BaseModel):
    runners: list[RunnerInfo]


class CancelOutcome(BaseModel):
    execution_id: str
    status: Status
    message: str


class FlowInfo(BaseModel):
    path: str
    source: str
    run_command: str


class ApprovalInfo(BaseModel):
    id: int
    execution_id: str
    key: str
    agent_name: str
    question: str
    proposed: str
    status: str
    comment: str | None
    edited: str | None
    decided_by: str | None
    created_at: str | None
    decided_at: str | None


class ApprovalList(BaseModel):
    approvals: list[ApprovalInfo]
