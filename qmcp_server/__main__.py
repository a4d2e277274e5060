"""Entry point: `qmcp-server`, `python -m qmcp_server`, `qmcp serve`.

This module puts the pieces together: it builds the server (`qmcp_server.server`) and hands it to
a transport, stdio there or streamable HTTP (`qmcp_server.http`).
"""

from __future__ import annotations

import sys


def serve(transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765) -> None:
    from qmcp.agentframework.errors import QmcpError
    from qmcp_server.server import build_server, configure_logging, run_stdio

    configure_logging()
    try:
        server = build_server(remote=transport != "stdio")
    except QmcpError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    if transport == "stdio":
        run_stdio(server)
        return
    from qmcp_server.http import serve_http

    serve_http(server, host, port)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="qmcp-server", description="The qmcp MCP server.")
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    serve(args.transport, args.host, args.port)
    sys.exit(0)


if __name__ == "__main__":
    main()
