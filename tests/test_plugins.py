"""One registry type, filled by plugins: the built-in one, `qmcp.plugins` entry points of installed
distributions, and `QMCP_PLUGINS` modules (issue 10, finding 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qmcp.agentframework.errors import NotFoundError, ValidationError
from qmcp.agentframework.llm import ProviderRegistry
from qmcp.agentframework.llm.function import FUNCTIONS
from qmcp.agentframework.mixins import MixinRegistry
from qmcp.agentframework.registry import Registry
from qmcp.agentframework.runners import RunnerRegistry
from qmcp.agentframework.topologies import TopologyRegistry

REGISTRIES = {
    "providers": ProviderRegistry,
    "kinds": TopologyRegistry,
    "mixins": MixinRegistry,
    "runners": RunnerRegistry,
    "functions": FUNCTIONS,
}


def test_every_registry_has_the_same_shape() -> None:
    for name, registry in REGISTRIES.items():
        assert isinstance(registry, Registry), name
        for method in ("register", "get", "find", "list", "items", "unregister", "reset"):
            assert callable(getattr(registry, method)), (name, method)
    assert ProviderRegistry.list()[:3] == ["anthropic", "offline", "function"]
    assert TopologyRegistry.list() == [
        "pipeline",
        "ensemble",
        "debate",
        "cross_check",
        "chain_of_command",
        "delegation",
    ]
    assert {"local", "async", "metaflow"} <= set(RunnerRegistry.list())
    assert set(MixinRegistry.list()) >= {"reasoning", "structured_output", "memory"}


def test_aliases_unknown_names_and_reset() -> None:
    assert TopologyRegistry.get("crosscheck") is TopologyRegistry.get("cross_check")
    with pytest.raises(ValidationError, match="unknown topology type 'nope'; known: chain_of"):
        TopologyRegistry.get("nope")
    with pytest.raises(NotFoundError, match="unknown runner 'x'"):
        RunnerRegistry.get("x")
    MixinRegistry.register("reasoning", MixinRegistry.get("memory"))
    assert MixinRegistry.get("reasoning").name == "memory"
    MixinRegistry.reset()
    assert MixinRegistry.get("reasoning").name == "reasoning", "reset returns to the built-ins"


PLUGIN = """
from qmcp.agentframework.llm import LLMResponse, ProviderCapabilities, ProviderRegistry


class Echo:
    name = "echo"

    def capabilities(self, model):
        return ProviderCapabilities(answers_inline=True)

    async def complete(self, request):
        return LLMResponse(text="echo " + request.prompt, model=request.model, provider="echo")


def register():
    ProviderRegistry.register("echo", Echo)
"""

CHECK = """
import asyncio, json
from qmcp.agentframework.models import AgentConfig, AgentType, ModelConfig, Topology
from qmcp.agentframework.llm import ProviderRegistry
from qmcp.agentframework.runners import LocalRunner

agent = AgentType(name="e", config=AgentConfig(
    model_config_obj=ModelConfig(provider="echo", model="m")).model_dump(mode="json"))
result = asyncio.run(LocalRunner().run(
    Topology(name="t", topology_type="pipeline", config={}), {"only": agent}, {"prompt": "hi"}))
print(json.dumps({"providers": ProviderRegistry.list(), "content": result.output["content"]}))
"""


@pytest.mark.slow  # a fresh interpreter
def test_an_installed_distribution_adds_a_provider_through_its_entry_point(tmp_path: Path) -> None:
    """A distribution on sys.path whose metadata declares a `qmcp.plugins` entry point."""
    site = tmp_path / "site"
    (site / "echo_plugin").mkdir(parents=True)
    (site / "echo_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "echo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[qmcp.plugins]\necho = echo_plugin:register\n")
    env = {**os.environ, "PYTHONPATH": str(site), "QMCP_PLUGINS": ""}
    env["QMCP_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path}/agent.db"
    done = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert "echo" in seen["providers"] and seen["content"] == "echo hi"


@pytest.mark.slow  # a fresh interpreter
def test_a_broken_entry_point_is_a_clear_error(tmp_path: Path) -> None:
    site = tmp_path / "site"
    info = site / "broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[qmcp.plugins]\nbad = no_such_module:register\n")
    env = {**os.environ, "PYTHONPATH": str(site), "QMCP_PLUGINS": ""}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from qmcp.agentframework.llm import ProviderRegistry; ProviderRegistry.list()",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "qmcp.plugins entry point 'bad' (no_such_module:register) failed" in done.stderr
