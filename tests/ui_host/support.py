"""What the run view's tests share: debates made of `function` agents (one that waits on a gate
keeps a run in progress), and the HTTP transport served for real on 127.0.0.1 in a thread."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from qmcp.agentframework import service
from qmcp.agentframework.llm import LLMRequest, register_function, unregister_function

HOST_PAGE = Path(__file__).resolve().parent / "host.html"
TOKEN = "view-test-token-0123456789-abcdefghijkl"


class Gate:
    """A debate whose mediator waits at round `hold` until `open()`: the run stays running."""

    def __init__(self, name: str, hold: int | None = None, agree_at: int = 2) -> None:
        self.name = name
        self.hold = hold
        self.agree_at = agree_at
        self.event = threading.Event()
        self.waiting = threading.Event()

    def open(self) -> None:
        self.event.set()

    async def answer(self, request: LLMRequest) -> str:
        text = request.messages[-1].content if request.messages else ""
        rendered = text if isinstance(text, str) else json.dumps(text, default=str)
        # The mediator judges after each round; its transcript has two turns per round.
        round_number = rendered.count("[round ") // 2
        if request.slot == "mediator":
            if self.hold is not None and round_number >= self.hold and not self.event.is_set():
                self.waiting.set()
                await asyncio.to_thread(self.event.wait, 60)
            agreement = 0.9 if round_number >= self.agree_at else 0.3
            return json.dumps(
                {
                    "converged": agreement > 0.8,
                    "agreement": agreement,
                    "verdict": f"Tea wins on balance (round {round_number}).",
                    "winner": "proponent",
                }
            )
        side = "for" if request.slot == "proponent" else "against"
        return f"{request.slot} argues {side} tea, <b>bold</b> claim & more"

    def __enter__(self) -> Gate:
        register_function(self.name, self.answer)
        return self

    def __exit__(self, *exc: object) -> None:
        self.event.set()
        unregister_function(self.name)


async def make_debate(db_url: str, fn: str, name: str = "tea", max_rounds: int = 3) -> None:
    for agent in ("pro", "con", "judge"):
        await service.create_agent(
            f"{name}_{agent}", "critic", model=f"function:{fn}", db_url=db_url
        )
    await service.create_topology(
        name,
        "debate",
        {"proponent": f"{name}_pro", "opponent": f"{name}_con", "mediator": f"{name}_judge"},
        config={"max_rounds": max_rounds},
        db_url=db_url,
    )


class RunInThread:
    """A topology run in its own thread and event loop (the server answers meanwhile)."""

    def __init__(self, db_url: str, topology: str, input: dict[str, Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(db_url, topology, input), daemon=True
        )
        self.thread.start()

    def _run(self, db_url: str, topology: str, input: dict[str, Any]) -> None:
        try:
            self.result = asyncio.run(service.run_topology(topology, input, db_url=db_url))
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float = 60) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def execution_ids(db_url: str) -> list[str]:
    return [str(e.id) for e in asyncio.run(service.list_executions(50, db_url=db_url))]


def wait_for(predicate: Any, timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def with_host_page(app: ASGIApp) -> ASGIApp:
    """`app` plus the minimal MCP Apps host page at /host (same origin as /mcp)."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/host":
            body = HOST_PAGE.read_bytes()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return serve


@contextmanager
def serving(app: ASGIApp) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "the server to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
