"""A local HTTP server that speaks OpenAI's Chat Completions, for tests of the real `openai` SDK.

Standard library only; bound to 127.0.0.1 on a free port; the same shape as
`fake_messages_api.py`. Answers come from `responder(body)`: a string, or a `Reply` with tool
calls; `script(...)` queues replies used in order before the responder. Faults are queued with
`enqueue(Fault.rate_limited(0.1), Fault.dropped(), …)` or picked per request by `fault_for`.
Every request is recorded (`requests`: path, headers, body) so tests can assert on what was sent.
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
    code: str | None = None
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    delay: float = 0.0

    @staticmethod
    def rate_limited(retry_after: float = 0.1, *, milliseconds: bool = False) -> Fault:
        header = (
            {"retry-after-ms": f"{retry_after * 1000:g}"}
            if milliseconds
            else {"retry-after": f"{retry_after:g}"}
        )
        return Fault(
            429, "requests", "rate_limit_exceeded", "Rate limit reached for requests", header
        )

    @staticmethod
    def server_error() -> Fault:
        return Fault(500, "server_error", None, "The server had an error processing your request")

    @staticmethod
    def unauthorized(message: str = "Incorrect API key provided") -> Fault:
        return Fault(401, "invalid_request_error", "invalid_api_key", message)

    @staticmethod
    def not_found(model: str) -> Fault:
        return Fault(404, "api_error", None, f'model "{model}" not found, try pulling it first')

    @staticmethod
    def dropped() -> Fault:
        return Fault(drop=True)

    @staticmethod
    def slow(seconds: float) -> Fault:
        return Fault(delay=seconds)


@dataclass(frozen=True)
class Reply:
    """One answer: text and/or tool calls. A tool call is `(name, arguments)`, where arguments
    are a dict (sent as JSON) or a string (sent as is, to test malformed arguments)."""

    text: str | None = None
    tool_calls: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: bool = True


def _error(kind: str, code: str | None, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class ChatAPIServer:
    """`with ChatAPIServer() as api:` then point a base URL (`api.base_url`) at it.

    `key`: when set, requests must carry `Authorization: Bearer <key>` (else 401); when None,
    any bearer is accepted, as a local Ollama does.
    """

    def __init__(
        self,
        responder: Callable[[dict[str, Any]], str | Reply] | None = None,
        *,
        key: str | None = None,
        model_suffix: str = "",
    ) -> None:
        self.responder = responder or self.echo
        self.key = key
        self.model_suffix = model_suffix  # what the server reports beyond the asked model
        self.requests: list[dict[str, Any]] = []
        self.replies: deque[str | Reply] = deque()
        self.faults: deque[Fault] = deque()
        self.fault_for: Callable[[dict[str, Any]], Fault | None] | None = None
        self.latency = 0.0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # A short poll: `shutdown` waits for the loop to notice, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        """The endpoint's base, as the SDK and Ollama write it (`…/v1`)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def completions(self) -> list[dict[str, Any]]:
        """The bodies of the chat completion requests, in order."""
        return [r["body"] for r in self.requests if r["path"] == "/v1/chat/completions"]

    @staticmethod
    def echo(body: dict[str, Any]) -> str:
        content = body["messages"][-1].get("content") or ""
        text = (
            content
            if isinstance(content, str)
            else " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        )
        return f"echo: {text}"

    def script(self, *replies: str | Reply) -> None:
        with self._lock:
            self.replies.extend(replies)

    def enqueue(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def __enter__(self) -> ChatAPIServer:
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

    def _reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            scripted = self.replies.popleft() if self.replies else None
        answer = scripted if scripted is not None else self.responder(body)
        return Reply(text=answer) if isinstance(answer, str) else answer

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
                self.send_header("x-request-id", f"req_{uuid.uuid4().hex[:12]}")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _record(self, body: Any) -> None:
                with api._lock:
                    api.requests.append(
                        {
                            "path": self.path,
                            "method": self.command,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )

            def _authorized(self) -> bool:
                auth = self.headers.get("authorization", "")
                if not auth.startswith("Bearer ") or (
                    api.key is not None and auth != f"Bearer {api.key}"
                ):
                    self._send(401, _error("invalid_request_error", "invalid_api_key", "bad key"))
                    return False
                return True

            def do_GET(self) -> None:
                self._record(None)
                if self.path != "/v1/models":
                    self._send(404, _error("not_found", None, f"no route {self.path}"))
                    return
                if self._authorized():
                    self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._send(400, _error("invalid_request_error", None, "body is not JSON"))
                    return
                self._record(body)
                if self.path != "/v1/chat/completions":
                    self._send(404, _error("not_found", None, f"no route {self.path}"))
                    return
                if not self._authorized():
                    return
                problem = self._invalid(body)
                if problem:
                    self._send(400, _error("invalid_request_error", None, problem))
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
                    self._send(
                        fault.status,
                        _error(fault.error_type, fault.code, fault.message),
                        fault.headers,
                    )
                    return
                self._send(200, self._completion(body, api._reply(body)))

            @staticmethod
            def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
                calls = [
                    {
                        "id": f"call_{uuid.uuid4().hex[:16]}",
                        "type": "function",
                        "function": {
                            "name": name,
                            "arguments": args if isinstance(args, str) else json.dumps(args),
                        },
                    }
                    for name, args in reply.tool_calls
                ]
                message: dict[str, Any] = {"role": "assistant", "content": reply.text}
                if calls:
                    message["tool_calls"] = calls
                finish = reply.finish_reason or ("tool_calls" if calls else "stop")
                prompt = json.dumps(body.get("messages"))
                answer = (reply.text or "") + json.dumps(message.get("tool_calls", ""))
                completion: dict[str, Any] = {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"] + api.model_suffix,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                }
                if reply.usage:
                    prompt_tokens = max(1, len(prompt) // 4)
                    completion_tokens = max(1, len(answer) // 4)
                    completion["usage"] = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    }
                return completion

            @staticmethod
            def _invalid(body: dict[str, Any]) -> str | None:
                """What OpenAI would refuse: a missing field, an unknown role, tool messages
                that answer no pending call, tool_choice without tools, both token limits."""
                for name in ("model", "messages"):
                    if name not in body:
                        return f"Missing required parameter: '{name}'."
                if "max_tokens" in body and "max_completion_tokens" in body:
                    return "Use either max_tokens or max_completion_tokens, not both."
                if "tool_choice" in body and not body.get("tools"):
                    return "'tool_choice' is only allowed when 'tools' are specified."
                pending: set[str] = set()
                for index, message in enumerate(body["messages"]):
                    role = message.get("role")
                    if role not in ("system", "developer", "user", "assistant", "tool"):
                        return f"Invalid value for 'messages[{index}].role': {role!r}"
                    if role == "tool":
                        call_id = message.get("tool_call_id")
                        if call_id not in pending:
                            return (
                                f"messages[{index}]: a 'tool' message must answer a preceding "
                                "message with 'tool_calls'"
                            )
                        pending.discard(call_id)
                        continue
                    if pending:
                        return (
                            f"messages[{index}]: the tool_calls of an assistant message must "
                            f"each be answered by a tool message; missing: {sorted(pending)}"
                        )
                    if role == "assistant":
                        pending = {c["id"] for c in message.get("tool_calls") or []}
                return None

        return Handler
