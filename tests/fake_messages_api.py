"""A local HTTP server that speaks the Anthropic Messages API, for tests of the real SDK path.

Standard library only; bound to 127.0.0.1 on a free port. Faults are scripted per request:
`enqueue(Fault.rate_limited(0.1), Fault.overloaded(), …)` are used in order, and `fault_for`
can pick one from the request body (e.g. only for one agent's system prompt).
"""

from __future__ import annotations

import json
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
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

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

    def _next_fault(self, body: dict[str, Any]) -> Fault | None:
        with self._lock:
            if self.faults:
                return self.faults.popleft()
        return self.fault_for(body) if self.fault_for else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

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
                prompt = json.dumps(body.get("messages")) + str(body.get("system", ""))
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
                        "usage": {
                            "input_tokens": max(1, len(prompt) // 4),
                            "output_tokens": max(1, len(text) // 4),
                        },
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
