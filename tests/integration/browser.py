"""A small headless-Chromium driver over the Chrome DevTools Protocol, for integration tests.

Only aiohttp (for the websocket) and the standard library: no playwright, no selenium.

    browser = Browser().start()
    try:
        page = browser.open("http://127.0.0.1:9901/__backworks")
        page.wait_for("document.documentElement.dataset.loaded === 'true'", timeout=10)
        page.screenshot("test-artifacts/page.png")
    finally:
        browser.close()

The API is synchronous: the DevTools websocket lives on an asyncio loop in a daemon thread, and
every call waits for its answer with a bound. One browser-level websocket carries every page
(Target.attachToTarget with flatten=true: each command names its session). Chromium's stderr is
drained for as long as it runs (it is chatty: a full pipe would block it) and the last lines are
kept for error messages. JavaScript dialogs (alert/confirm/prompt) are recorded in Page.dialogs
and dismissed, so a page can never hang the driver on one.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DEVTOOLS_LINE = re.compile(r"DevTools listening on (ws://\S+)")


def chromium_path() -> str | None:
    """The Chromium binary: $CHROMIUM if set (and executable), else the first known path or PATH hit."""
    override = os.environ.get("CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    """Chromium did not start, died, or answered a DevTools command with an error."""


class JavaScriptError(RuntimeError):
    """The evaluated expression threw (or its promise rejected)."""


class Browser:
    def __init__(
        self,
        binary: str | None = None,
        *,
        window_size: tuple[int, int] = (1280, 900),
        start_timeout: float = 20.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary or chromium_path()
        self.extra_args = list(extra_args)
        self.window_size = window_size
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.profile_dir: str | None = None
        self.ws_url: str | None = None
        self.pages: list[Page] = []
        self._stderr: collections.deque[str] = collections.deque(maxlen=200)
        self._stderr_thread: threading.Thread | None = None
        self._devtools_found = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._sessions: dict[str, Page] = {}
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Browser:
        if self.binary is None:
            raise BrowserError("no Chromium binary found (set $CHROMIUM or install chromium)")
        self.profile_dir = tempfile.mkdtemp(prefix="backworks-chromium-")
        width, height = self.window_size
        command = [
            self.binary,
            "--headless",
            "--no-sandbox",  # we run as root here; the sandbox refuses root
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile_dir}",
            f"--window-size={width},{height}",
            *self.extra_args,
            "about:blank",
        ]
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group: close() kills renderers and zygotes too
            )
            self._stderr_thread = threading.Thread(target=self._drain_stderr, name="chromium-stderr", daemon=True)
            self._stderr_thread.start()
            deadline = time.monotonic() + self.start_timeout
            while not self._devtools_found.wait(0.05):
                if self.process.poll() is not None:
                    self._stderr_thread.join(2)
                    raise BrowserError(f"chromium exited with {self.process.returncode} before DevTools listened:\n{self.stderr()}")
                if time.monotonic() > deadline:
                    raise BrowserError(f"no 'DevTools listening on ws://…' from chromium after {self.start_timeout}s:\n{self.stderr()}")
            self._start_loop()
            self._run(self._connect(), timeout=10)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Idempotent. Closes the websocket, kills Chromium's process group, removes the profile."""
        if self._closed:
            return
        self._closed = True
        graceful = False
        if self._loop is not None and self._loop.is_running():
            if self.process is not None and self.process.poll() is None:
                try:  # a graceful exit first: Chromium reaps most of its children itself
                    self._run(self._send("Browser.close", timeout=2), timeout=3)
                    graceful = True
                except Exception:
                    pass
            try:
                self._run(self._disconnect(), timeout=5)
            except Exception:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(5)
        if self.process is not None:
            try:
                self.process.wait(3 if graceful else 0)
            except subprocess.TimeoutExpired:
                self._kill_group(signal.SIGTERM)
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self._kill_group(signal.SIGKILL)
                    self.process.wait(5)
            self._kill_group(signal.SIGKILL)  # stragglers (renderers, zygotes, crashpad) in the group
            deadline = time.monotonic() + 5
            while self._group_alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        if self._stderr_thread is not None:
            self._stderr_thread.join(2)
        if self.profile_dir is not None:
            for _ in range(10):  # a dying child may still be writing into the profile
                shutil.rmtree(self.profile_dir, ignore_errors=True)
                if not os.path.exists(self.profile_dir):
                    break
                time.sleep(0.1)

    def __enter__(self) -> Browser:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stderr(self) -> str:
        """The last lines Chromium wrote to stderr (up to 200)."""
        return "\n".join(self._stderr)

    def open(self, url: str, timeout: float = 15.0) -> Page:
        """A new tab at `url`; returns once its load event fired (bounded by `timeout`)."""
        return self._run(self._open(url, timeout), timeout=timeout + 5)

    # -- internals -----------------------------------------------------------------------------

    def _kill_group(self, sig: signal.Signals) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _group_alive(self) -> bool:
        """Whether a live (not zombie) process is left in Chromium's process group.

        Orphaned children are reparented to PID 1, which may reap them late: zombies don't count.
        """
        assert self.process is not None
        pgid = self.process.pid
        if not os.path.isdir("/proc/self"):
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return False
            return True
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            # after "(comm)": state, ppid, pgrp
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
        return False

    def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr.append(line)
            if self.ws_url is None:
                match = DEVTOOLS_LINE.search(line)
                if match:
                    self.ws_url = match.group(1)
                    self._devtools_found.set()
        self.process.stderr.close()

    def _start_loop(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop_thread = threading.Thread(target=run, name="chromium-cdp", daemon=True)
        self._loop_thread.start()
        if not ready.wait(5):
            raise BrowserError("the CDP event loop did not start")

    def _run(self, coroutine: Any, timeout: float) -> Any:
        if self._loop is None or not self._loop.is_running():
            coroutine.close()
            raise BrowserError("the browser is not running")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.done():  # the coroutine's own (more precise) timeout
                raise
            future.cancel()
            raise TimeoutError(f"no answer from chromium within {timeout}s") from None

    async def _connect(self) -> None:
        assert self.ws_url is not None
        self._http = aiohttp.ClientSession()
        # max_msg_size=0: screenshots arrive as one large base64 message
        self._ws = await self._http.ws_connect(self.ws_url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    async def _disconnect(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        if self._http is not None:
            await self._http.close()

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(message.data)
                if "id" in data:
                    future = self._pending.pop(data["id"], None)
                    if future is not None and not future.done():
                        future.set_result(data)
                else:
                    page = self._sessions.get(data.get("sessionId", ""))
                    if page is not None:
                        page._event(data["method"], data.get("params", {}))
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(BrowserError(f"the DevTools connection closed:\n{self.stderr()[-3000:]}"))
            self._pending.clear()

    async def _send(self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        if self._ws is None or self._ws.closed:
            raise BrowserError(f"the DevTools connection is closed (chromium exit code {self.process and self.process.poll()}):\n{self.stderr()[-3000:]}")
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        try:
            await self._ws.send_str(json.dumps(message))
            answer = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(f"{method}: no answer from chromium within {timeout}s") from None
        finally:
            self._pending.pop(message_id, None)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')} {answer['error'].get('data', '')}".rstrip())
        return answer.get("result", {})

    async def _open(self, url: str, timeout: float) -> Page:
        target = await self._send("Target.createTarget", {"url": "about:blank"})
        attached = await self._send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, target["targetId"], attached["sessionId"])
        self._sessions[page.session_id] = page
        self.pages.append(page)
        width, height = self.window_size
        await page._send("Page.enable")
        await page._send("Runtime.enable")
        await page._send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        await page._navigate(url, timeout)
        return page


class Page:
    """One tab. Every method is synchronous and bounded."""

    def __init__(self, browser: Browser, target_id: str, session_id: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session_id = session_id
        self.console: list[str] = []  # "level: text" for each console.* call
        self.errors: list[str] = []  # uncaught exceptions
        self.dialogs: list[str] = []  # "alert: text" for each alert/confirm/prompt (dismissed)
        self.closed = False
        self._load: asyncio.Event = asyncio.Event()

    # -- public API ----------------------------------------------------------------------------

    def evaluate(self, expression: str, timeout: float = 10.0) -> Any:
        """The JSON value of `expression` (promises awaited); raises JavaScriptError if it throws."""
        return self.browser._run(self._evaluate(expression, timeout), timeout=timeout + 2)

    def wait_for(self, expression: str, timeout: float = 10.0, interval: float = 0.1) -> Any:
        """Poll `expression` until it is truthy and return that value; TimeoutError shows the last value."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = self.evaluate(expression, timeout=max(1.0, min(5.0, deadline - time.monotonic())))
                if last:
                    return last
            except JavaScriptError as error:
                last = error
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{expression!r} still not truthy after {timeout}s; last value: {last!r}")
            time.sleep(interval)

    def screenshot(self, path: str | os.PathLike[str], full_page: bool = False, timeout: float = 15.0) -> Path:
        """A PNG of the viewport (or of the whole page); parent directories are created."""
        data = self.browser._run(self._screenshot(full_page, timeout), timeout=timeout + 2)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def navigate(self, url: str, timeout: float = 15.0) -> None:
        self.browser._run(self._navigate(url, timeout), timeout=timeout + 2)

    def reload(self, timeout: float = 15.0) -> None:
        self.navigate(self.evaluate("location.href"), timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Close this tab (idempotent; a no-op once the browser is gone)."""
        if self.closed:
            return
        self.closed = True
        self.browser._sessions.pop(self.session_id, None)
        if self in self.browser.pages:
            self.browser.pages.remove(self)
        try:
            self.browser._run(self.browser._send("Target.closeTarget", {"targetId": self.target_id}, timeout=timeout), timeout=timeout + 1)
        except BrowserError:
            pass

    # -- internals -----------------------------------------------------------------------------

    async def _send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
        return await self.browser._send(method, params, session_id=self.session_id, timeout=timeout)

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._load.set()
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            self.console.append(f"{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append(_describe_exception(details))
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(f"{params.get('type')}: {params.get('message')}")
            asyncio.get_running_loop().create_task(self._send("Page.handleJavaScriptDialog", {"accept": False}))

    async def _navigate(self, url: str, timeout: float) -> None:
        self._load.clear()
        result = await self._send("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        try:
            await asyncio.wait_for(self._load.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{url}: no load event within {timeout}s") from None

    async def _evaluate(self, expression: str, timeout: float) -> Any:
        result = await self._send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True, "timeout": int(timeout * 1000)},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise JavaScriptError(f"{expression!r} threw: {_describe_exception(result['exceptionDetails'])}")
        return result.get("result", {}).get("value")

    async def _screenshot(self, full_page: bool, timeout: float) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self._send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        result = await self._send("Page.captureScreenshot", params, timeout=timeout)
        return base64.b64decode(result["data"])


def _describe_exception(details: dict[str, Any]) -> str:
    exception = details.get("exception") or {}
    return str(exception.get("description") or exception.get("value") or details.get("text") or details)
