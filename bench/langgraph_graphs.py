"""The LangGraph side of the comparison: the same topologies as qmcp's, written as a LangGraph
user would write them, calling the same model function.

- pipeline(n): a StateGraph of n nodes in a line; each passes the previous node's text to the model.
- fan_out(n): n nodes in parallel from START (one superstep), then a `join` node that waits for all
  of them and concatenates their texts (qmcp's ensemble with `concat`). `send=True` builds the
  other way LangGraph offers, one `member` node sent n times with the Send API.
- durable_saver(): an AsyncSqliteSaver on its own aiosqlite connection, with `synchronous` set to
  the same value as qmcp's store (WAL mode is set by the saver's own setup).

Needs the `bench` extra: `pip install -e '.[bench]'`.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

Model = Callable[[Any], Awaitable[str]]
SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


class State(TypedDict):
    text: str
    outputs: Annotated[list[str], operator.add]


def version() -> str:
    from importlib.metadata import version as installed

    return installed("langgraph")


def pipeline(n: int, model: Model, checkpointer: Any = None) -> Any:
    from langgraph.graph import END, START, StateGraph

    builder = StateGraph(State)
    previous = START
    for i in range(n):

        async def stage(state: State) -> dict[str, Any]:
            return {"text": await model(state["text"])}

        builder.add_node(f"stage_{i}", stage)
        builder.add_edge(previous, f"stage_{i}")
        previous = f"stage_{i}"
    builder.add_edge(previous, END)
    return builder.compile(checkpointer=checkpointer)


def _join(state: State) -> dict[str, Any]:
    return {"text": "\n\n".join(state["outputs"])}


def fan_out(n: int, model: Model, checkpointer: Any = None, send: bool = False) -> Any:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    async def member(state: State) -> dict[str, Any]:
        return {"outputs": [await model(state["text"])]}

    builder = StateGraph(State)
    builder.add_node("join", _join)
    if send:
        builder.add_node("member", member)
        builder.add_conditional_edges(
            START,
            lambda s: [Send("member", {"text": s["text"], "outputs": []}) for _ in range(n)],
            ["member"],
        )
        builder.add_edge("member", "join")
    else:
        names = [f"member_{i}" for i in range(n)]
        for name in names:
            builder.add_node(name, member)
            builder.add_edge(START, name)
        builder.add_edge(names, "join")  # waits for every member
    builder.add_edge("join", END)
    return builder.compile(checkpointer=checkpointer)


async def durable_saver(path: Path, synchronous: str) -> tuple[Any, Any, dict[str, str]]:
    """(saver, connection, the settings read back from the connection after setup)."""
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    connection = await aiosqlite.connect(str(path))
    await connection.execute(f"PRAGMA synchronous={synchronous}")
    saver = AsyncSqliteSaver(connection)
    await saver.setup()  # creates the tables and sets journal_mode=WAL
    settings = await sqlite_settings(connection)
    return saver, connection, settings


async def sqlite_settings(connection: Any) -> dict[str, str]:
    async with connection.execute("PRAGMA synchronous") as cursor:
        synchronous = (await cursor.fetchone())[0]
    async with connection.execute("PRAGMA journal_mode") as cursor:
        journal = (await cursor.fetchone())[0]
    return {"synchronous": SYNCHRONOUS.get(synchronous, str(synchronous)), "journal_mode": journal}


def invoke(
    graph: Any, durable: bool, durability: str = "sync", max_concurrency: int | None = None
) -> Awaitable[Any]:
    """One run: a fresh thread per run when durable (as qmcp makes a new execution per run)."""
    config: dict[str, Any] = {}
    if max_concurrency is not None:
        config["max_concurrency"] = max_concurrency
    kwargs: dict[str, Any] = {}
    if durable:
        config["configurable"] = {"thread_id": uuid.uuid4().hex}
        kwargs["durability"] = durability
    return graph.ainvoke({"text": "x", "outputs": []}, config, **kwargs)
