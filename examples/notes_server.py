"""A small MCP server for the demo's tool-using agent: a glossary to look terms up in (read-only)
and a notebook to write to (which changes the world, so an agent needs approval to use it).

    qmcp agents create researcher executor --tools-json \
      '[{"name": "notes", "command": "python", "args": ["examples/notes_server.py"]}]'
"""

from __future__ import annotations

import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

GLOSSARY = {
    "mcp": "the Model Context Protocol: how LLM clients reach tools, resources and prompts",
    "topology": "how agents collaborate: pipeline, ensemble, debate, cross-check, chain of "
    "command or delegation",
    "checkpoint": "a completed invocation's recorded answer, reused when a run resumes",
    "metaflow": "a workflow framework whose flows run locally, on Kubernetes or on AWS Batch",
}

server = MCPServer("qmcp-notes")


@server.tool(
    annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True)
)
def define(term: str) -> str:
    """Define a term of multi-agent work (mcp, topology, checkpoint, metaflow, ...)."""
    words = term.lower().split()
    for word in (term.lower(), *words):
        if word in GLOSSARY:
            return f"{word}: {GLOSSARY[word]}"
    return f"no definition of {term!r}; known terms: {', '.join(sorted(GLOSSARY))}"


@server.tool(
    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False)
)
def save_note(text: str) -> str:
    """Append a note to the notebook file (NOTES_FILE, default ./notes.txt)."""
    path = Path(os.environ.get("NOTES_FILE", "notes.txt"))
    with path.open("a", encoding="utf-8") as notes:
        notes.write(text.rstrip("\n") + "\n")
    return f"saved to {path}"


if __name__ == "__main__":
    server.run()
