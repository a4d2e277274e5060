"""A local HTTP server that speaks the Anthropic Messages API, for tests of the real SDK path.

Standard library only; bound to 127.0.0.1 on a free port. Faults are scripted per request:
`enqueue(Fault.rate_limited(0.1), Fault.overloaded(), …)` are used in order, and `fault_for`
can pick one from the request body (e.g. only for one agent's system prompt).

`max_concurrent` makes it admit that many requests at once and answer 429 beyond (Retry-After:
when the first admitted one will end), as a provider's concurrency limit does. Prompt caching
is modelled as the Messages API does it: a request with `cache_control` breakpoints reads the
longest prefix, ending at a block boundary at most 20 blocks before a breakpoint, that an earlier
request wrote, and writes the prefix up to its last breakpoint; prefixes shorter than
`min_cache_tokens` are not cached. Tokens are counted as characters / 4 per block.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Fault:
    status: int = 0
    error_type: str = ""
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    delay: float = 0.0

    @staticmethod
    def rate_limited(retry_after: float = 0.1) -> Fault:
        return Fault(
            429,
            "rate_limit_error",
            "Number of requests has exceeded your rate limit",
            {"retry-after": f"{retry_after:g}"},
        )

    @staticmethod
    def overloaded() -> Fault:
        return Fault(529, "overloaded_error", "Overloaded")

    @staticmethod
    def server_error() -> Fault:
        return Fault(500, "api_error", "Internal server error")

    @staticmethod
    def unauthorized() -> Fault:
        return Fault(401, "authentication_error", "invalid x-api-key")

    @staticmethod
    def dropped() -> Fault:
        return Fault(drop=True)

    @staticmethod
    def slow(seconds: float) -> Fault:
        return Fault(delay=seconds)


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # a wide fan-out connects at once; the default backlog is 5


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


class MessagesAPIServer:
    """`with MessagesAPIServer() as api:` then point ANTHROPIC_BASE_URL at `api.base_url`."""

    def __init__(self, responder: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.responder = responder or self.echo
        self.requests: list[dict[str, Any]] = []
        self.faults: deque[Fault] = deque()
        self.fault_for: Callable[[dict[str, Any]], Fault | None] | None = None
        self.latency = 0.0
        self.max_concurrent: int | None = None  # admit this many at once, 429 beyond
        self.active = self.peak = self.refused = 0
        self._ends: list[float] = []  # when the admitted requests will end (monotonic)
        self.min_cache_tokens = 1024  # as the Messages API's minimum for Sonnet and Opus
        self._cache: set[str] = set()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # A short poll, as in fake_chat_api.py: `shutdown` waits for the loop to notice, once per
        # test (the default 0.5 s poll made every test using this server half a second longer).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @staticmethod
    def echo(body: dict[str, Any]) -> str:
        last = body["messages"][-1]["content"]
        text = last if isinstance(last, str) else " ".join(b.get("text", "") for b in last)
        return f"echo: {text}"

    def enqueue(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def __enter__(self) -> MessagesAPIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _admit(self) -> float | None:
        """Take a slot, or None and how long until one frees (seconds) when all are taken."""
        with self._lock:
            if self.max_concurrent is None:
                return None
            now = time.monotonic()
            if self.active >= self.max_concurrent:
                self.refused += 1
                return max(0.001, min(self._ends, default=now) - now)
            self.active += 1
            self.peak = max(self.peak, self.active)
            self._ends.append(now + self.latency)
            return None

    def _leave(self) -> None:
        with self._lock:
            if self.max_concurrent is not None and self.active:
                self.active -= 1
                self._ends.remove(min(self._ends))

    def usage(self, body: dict[str, Any], text: str) -> dict[str, int]:
        """The usage a response reports, with prompt-cache reads and writes when the request has
        `cache_control` breakpoints."""
        segments = _segments(body)
        if not any(breakpoint for _, _, breakpoint in segments):
            prompt = json.dumps(body.get("messages")) + str(body.get("system", ""))
            return {"input_tokens": max(1, len(prompt) // 4), "output_tokens": _tokens(text)}
        keys, sizes, digest = [], [], hashlib.sha256(str(body["model"]).encode())
        for identity, tokens, _ in segments:
            digest.update(identity.encode())
            keys.append(digest.hexdigest())
            sizes.append(tokens)
        prefix = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        breakpoints = [i for i, (_, _, b) in enumerate(segments) if b]
        with self._lock:
            hit = -1
            for point in breakpoints:
                for i in range(point, max(-1, point - 20), -1):
                    if keys[i] in self._cache:
                        hit = max(hit, i)
                        break
            read = prefix[hit] if hit >= 0 else 0
            written = [p for p in breakpoints if prefix[p] >= self.min_cache_tokens]
            write = prefix[written[-1]] - read if written and written[-1] > hit else 0
            self._cache.update(keys[p] for p in written)
        return {
            "input_tokens": prefix[-1] - read - write,
            "output_tokens": _tokens(text),
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": write,
        }

    def _next_fault(self, body: dict[str, Any]) -> Fault | None:
        with self._lock:
            if self.faults:
                return self.faults.popleft()
        return self.fault_for(body) if self.fault_for else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as separate writes: without TCP_NODELAY, Nagle's algorithm
            # holds the body until the client's delayed ACK (~40 ms a response), as no real API
            # server does.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(
                self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_{uuid.uuid4().hex[:12]}")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._send(400, _error("invalid_request_error", "body is not JSON"))
                    return
                with api._lock:
                    api.requests.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                if self.path != "/v1/messages":
                    self._send(404, _error("not_found_error", f"no route {self.path}"))
                    return
                bearer = self.headers.get("authorization", "").startswith("Bearer ")
                if not (self.headers.get("x-api-key") or bearer):
                    self._send(401, _error("authentication_error", "an API key is required"))
                    return
                if "temperature" in body or "top_p" in body or "top_k" in body:
                    self._send(
                        400,
                        _error(
                            "invalid_request_error", "temperature: Extra inputs are not permitted"
                        ),
                    )
                    return
                problem = self._invalid(body)
                if problem:
                    self._send(400, _error("invalid_request_error", problem))
                    return
                wait = api._admit()
                if wait is not None:
                    self._send(
                        429,
                        _error("rate_limit_error", "Number of concurrent requests exceeded"),
                        {
                            "retry-after-ms": f"{wait * 1000:.0f}",
                            "retry-after": str(math.ceil(wait)),
                        },
                    )
                    return
                try:
                    self._answer(body)
                finally:
                    api._leave()

            def _answer(self, body: dict[str, Any]) -> None:
                if api.latency:
                    time.sleep(api.latency)
                fault = api._next_fault(body)
                if fault is not None and fault.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault is not None and fault.delay:
                    time.sleep(fault.delay)
                if fault is not None and fault.status:
                    self._send(fault.status, _error(fault.error_type, fault.message), fault.headers)
                    return
                answer = api.responder(body)
                # A responder answers text, or content blocks (tool_use blocks, for tool tests).
                content = [{"type": "text", "text": answer}] if isinstance(answer, str) else answer
                text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
                self._send(
                    200,
                    {
                        "id": f"msg_{uuid.uuid4().hex[:24]}",
                        "type": "message",
                        "role": "assistant",
                        "model": body["model"],
                        "content": content,
                        "stop_reason": (
                            "tool_use"
                            if any(b.get("type") == "tool_use" for b in content)
                            else "end_turn"
                        ),
                        "stop_sequence": None,
                        "usage": api.usage(body, text),
                    },
                )

            @staticmethod
            def _invalid(body: dict[str, Any]) -> str | None:
                for name in ("model", "max_tokens", "messages"):
                    if name not in body:
                        return f"{name}: Field required"
                expected = "user"
                for message in body["messages"]:
                    if message.get("role") == "system":
                        return "messages: 'system' is not a role; use the top-level system"
                    if message.get("role") != expected:
                        return "messages: roles must alternate, starting with user"
                    expected = "assistant" if expected == "user" else "user"
                return None

        return Handler


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _segments(body: dict[str, Any]) -> list[tuple[str, int, bool]]:
    """The request as the cache sees it, in order (tools, system, messages): each block's
    identity (without its cache_control), its tokens, and whether it is a breakpoint."""
    out: list[tuple[str, int, bool]] = []

    def add(where: str, block: dict[str, Any]) -> None:
        plain = {k: v for k, v in block.items() if k != "cache_control"}
        identity = where + json.dumps(plain, sort_keys=True)
        text = block.get("text") if isinstance(block.get("text"), str) else json.dumps(plain)
        out.append((identity, _tokens(text), "cache_control" in block))

    for tool in body.get("tools") or []:
        add("tool:", tool)
    system = body.get("system")
    for block in [{"type": "text", "text": system}] if isinstance(system, str) else system or []:
        add("system:", block)
    for index, message in enumerate(body["messages"]):
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            add(f"{index}:{message['role']}:", block)
    return out
