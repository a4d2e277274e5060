"""Tools for agents that act: the `Toolbox` protocol, the conversation loop of one invocation,
and the MCP servers agents use as tools (sessions per run, durable and approved calls)."""

from qmcp.agentframework.tools.loop import Conversation, Toolbox, TurnHook, converse
from qmcp.agentframework.tools.mcp import (
    DiscoveredTool,
    McpToolbox,
    ToolJournal,
    ToolServerError,
    ToolSessions,
    describe_servers,
)

__all__ = [
    "Conversation",
    "DiscoveredTool",
    "McpToolbox",
    "ToolJournal",
    "ToolServerError",
    "ToolSessions",
    "Toolbox",
    "TurnHook",
    "converse",
    "describe_servers",
]
