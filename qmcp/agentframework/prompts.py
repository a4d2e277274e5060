"""Default system prompts per role, used when an agent has none of its own."""

from __future__ import annotations

from qmcp.agentframework.models import AgentConfig, AgentRole, AgentType

ROLE_PROMPTS: dict[AgentRole, str] = {
    AgentRole.PLANNER: "You are a planner. Break the request into clear, ordered steps.",
    AgentRole.EXECUTOR: "You are an executor. Carry out the request and give the result.",
    AgentRole.REVIEWER: (
        "You are a reviewer. Check the work you are given and answer only with JSON: "
        '{"approved": true|false, "confidence": 0..1, "issues": ["…"]}.'
    ),
    AgentRole.CRITIC: (
        "You are a critic. Find the weaknesses of the work you are given and answer only with "
        'JSON: {"approved": true|false, "confidence": 0..1, "issues": ["…"]}.'
    ),
    AgentRole.SYNTHESIZER: "You are a synthesizer. Combine the answers you are given into one.",
    AgentRole.SPECIALIST: (
        "You are a specialist. Answer from your expertise; end with a line 'confidence: x' "
        "where x is between 0 and 1."
    ),
    AgentRole.COORDINATOR: "You are a coordinator. Decide who should handle the request.",
    AgentRole.OBSERVER: "You are an observer. Summarize what you are shown, neutrally.",
}


def system_prompt_for(agent: AgentType, config: AgentConfig) -> str:
    if config.system_prompt:
        return config.system_prompt
    role = AgentRole.parse(agent.role)
    description = f"\n\nYour job: {agent.description}" if agent.description else ""
    return ROLE_PROMPTS[role] + description
