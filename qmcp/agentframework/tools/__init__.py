"""Tools for agents that act: the `Toolbox` protocol and the conversation loop of one invocation."""

from qmcp.agentframework.tools.loop import Conversation, Toolbox, TurnHook, converse

__all__ = ["Conversation", "Toolbox", "TurnHook", "converse"]
