"""Stateless sampling rounds across server processes: with `QMCP_REQUEST_STATE_KEYS` shared, a
round asked by one server instance is answered through another that shares the database (a load
balancer's other worker, or the server restarted mid-run); without shared keys the other
instance refuses the request_state it did not seal, saying what to do."""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from test_sampling_stateless import ClientModel, make_ensemble

from qmcp.agentframework.errors import ConfigurationError
from qmcp_server.sampling import KEYS_VARIABLE, request_state_security
from qmcp_server.server import build_server

pytestmark = pytest.mark.anyio
KEY = "k" * 40
ARGS = {"topology": "ens", "input": {"prompt": "name a colour"}}


async def first_round(db_url: str, model: ClientModel) -> Any:
    """Round 1 on one server instance: its questions and the request_state of round 2."""
    async with Client(build_server(db_url), sampling_callback=model) as client:
        await make_ensemble(client)
        result = await client.session.call_tool("topologies_run", ARGS, allow_input_required=True)
    assert result.result_type == "input_required", result
    return result


async def answer_elsewhere(db_url: str, model: ClientModel, asked: Any) -> Any:
    """The answers of a round, sent to another server instance over the same database."""
    answers = {k: await model(None, r.params) for k, r in asked.input_requests.items()}
    async with Client(build_server(db_url), sampling_callback=model) as client:
        return await client.session.call_tool(
            "topologies_run",
            ARGS,
            input_responses=answers,
            request_state=asked.request_state,
            allow_input_required=True,
        )


async def test_shared_keys_let_another_instance_answer_the_round(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEYS_VARIABLE, f"{KEY}, {'r' * 40}")
    model = ClientModel()
    result = await first_round(db_url, model)
    rounds = 1
    while result.result_type == "input_required":  # each round on a new instance
        result = await answer_elsewhere(db_url, model, result)
        rounds += 1
    assert result.structured_content["status"] == "completed", result.structured_content
    assert rounds == 3, "the members' round, the aggregator's round, the end"
    assert max(model.asked.values()) == 1, "no question asked twice"


async def test_without_shared_keys_another_instance_refuses_the_state(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEYS_VARIABLE, raising=False)
    model = ClientModel()
    asked = await first_round(db_url, model)
    with pytest.raises(Exception) as refused:  # the client wraps it in an exception group
        await answer_elsewhere(db_url, model, asked)
    errors = [refused.value]
    while isinstance(errors[-1], BaseExceptionGroup):
        errors.append(errors[-1].exceptions[0])
    assert isinstance(errors[-1], MCPError), errors
    assert "Invalid or expired requestState" in str(errors[-1])


def test_a_short_key_is_refused_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEYS_VARIABLE, f"{KEY},short")
    with pytest.raises(ConfigurationError, match="key 2 of 2 is shorter than 32") as refused:
        request_state_security()
    assert "secrets.token_urlsafe" in str(refused.value)
    monkeypatch.setenv(KEYS_VARIABLE, " , ")
    with pytest.raises(ConfigurationError, match="no key is given"):
        request_state_security()
    monkeypatch.setenv(KEYS_VARIABLE, KEY)
    assert request_state_security() is not None
