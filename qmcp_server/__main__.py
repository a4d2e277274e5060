"""Entry point: `qmcp-server`, `python -m qmcp_server`, `qmcp serve`."""

from __future__ import annotations

import sys


def serve(transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765) -> None:
    from qmcp_server.server import run

    run(transport=transport, host=host, port=port)


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
