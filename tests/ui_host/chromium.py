"""Headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol: a small
synchronous client over one websocket, enough to load pages, read their DOM (frames included),
click, and write screenshots. No downloaded browser, no driver library."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless browser with one page; `close()` ends the process it started."""

    def __init__(self, width: int = 1280, height: int = 800) -> None:
        if CHROMIUM is None:
            raise BrowserError("chromium is not installed (apt-get install chromium)")
        self.profile = tempfile.mkdtemp(prefix="qmcp-chromium-")
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
                # sandboxed frames in this process, so the tests can reach the MCP App's DOM
                "--disable-features=IsolateSandboxedIframes",
                "--disable-site-isolation-trials",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.stack = ExitStack()
        self.ws = self.stack.enter_context(
            connect(self._page_socket(), max_size=64 * 2**20, open_timeout=20)
        )
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.resize(width, height)

    def _page_socket(self) -> str:
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with {self.process.returncode}")
            if port_file.exists() and port_file.read_text().strip():
                port = port_file.read_text().split()[0]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
                        targets = json.load(r)
                except OSError:
                    targets = []
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
            time.sleep(0.1)
        raise BrowserError("chromium did not open its DevTools port in 30 s")

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"{method}: no answer in {timeout} s")
            message = json.loads(self.ws.recv(timeout=left))
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def resize(self, width: int, height: int) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def navigate(self, url: str) -> None:
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait("document.readyState === 'complete'")

    def evaluate(self, expression: str, context: int | None = None) -> Any:
        params: dict[str, Any] = {
            "expression": expression,
            "returnByValue": True,
            "awaitPromise": True,
        }
        if context is not None:
            params["contextId"] = context
        result = self.send("Runtime.evaluate", params)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 20, context: int | None = None) -> Any:
        """Wait until `expression` is truthy in the page (or frame context); its value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression, context)
            except BrowserError as exc:  # a navigation in between: try again
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.1)
        raise BrowserError(f"timed out waiting for {expression!r} (last: {last!r})")

    def frame_context(self, url_prefix: str = "about:srcdoc", timeout: float = 20) -> int:
        """An execution context in the first child frame whose URL starts with `url_prefix`
        (an isolated world: same DOM, its own globals), for frames the page cannot reach."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tree = self.send("Page.getFrameTree")["frameTree"]
            for child in tree.get("childFrames", []):
                frame = child["frame"]
                if frame.get("url", "").startswith(url_prefix):
                    world = self.send(
                        "Page.createIsolatedWorld",
                        {"frameId": frame["id"], "worldName": "qmcp-tests"},
                    )
                    return int(world["executionContextId"])
            time.sleep(0.1)
        raise BrowserError(f"no child frame at {url_prefix!r}")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            size = self.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
            )
            params["clip"] = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        data = self.send("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.stack.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def artifacts_dir() -> Path:
    """Where screenshots go: $QMCP_TEST_ARTIFACTS, else tests/artifacts (ignored by git)."""
    configured = os.environ.get("QMCP_TEST_ARTIFACTS")
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / "artifacts"
