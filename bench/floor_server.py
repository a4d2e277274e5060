"""The one-tool floor: a minimal MCP server with one trivial tool, over stdio.

bench/external.py times `topologies_run` on qmcp's stdio server against a call of this server's
`echo` tool, with the same client and the same method, so the ratio is what qmcp adds on top of
what any MCP server costs over stdio (JSON-RPC framing, the SDK's dispatch, validation, pipes).
"""

from __future__ import annotations

import logging
import sys

# Plain log lines on stderr, configured before the SDK would configure its own, as qmcp's server
# does (qmcp_server.server.configure_logging); nothing is logged at WARNING on a good call.
handler = logging.StreamHandler(sys.stderr)
logging.basicConfig(level=logging.WARNING, handlers=[handler])

from mcp.server.mcpserver import MCPServer  # noqa: E402

server = MCPServer("one-tool-floor", log_level="WARNING")


@server.tool()
async def echo(prompt: str) -> dict[str, str]:
    """Return the prompt, as a finished run would."""
    return {"status": "completed", "output": prompt}


if __name__ == "__main__":
    server.run()
