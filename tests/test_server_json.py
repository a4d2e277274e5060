"""server.json describes the package the way the MCP registry expects, and matches the project."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_server_json_matches_the_project() -> None:
    manifest = json.loads((ROOT / "server.json").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert manifest["$schema"].endswith("/2025-12-11/server.schema.json")
    assert re.fullmatch(r"io\.github\.[\w-]+/qmcp-server", manifest["name"])
    package = manifest["packages"][0]
    assert package["registryType"] == "pypi"
    assert package["identifier"] == project["name"]
    assert package["version"] == manifest["version"] == project["version"]
    assert package["transport"] == {"type": "stdio"}
    secrets = {e["name"] for e in package["environmentVariables"] if e["isSecret"]}
    assert "ANTHROPIC_API_KEY" in secrets
    readme = (ROOT / "README.md").read_text()
    assert f"mcp-name: {manifest['name']}" in readme
