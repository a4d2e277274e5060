"""qmcp-server: the MCP server over the qmcp library."""
