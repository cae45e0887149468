"""Real processes for integration tests: upstream HTTP servers, mitmdump/mitmweb, and an HTTP client.

Everything listens on 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "backworks.py"
BIN = Path(sys.executable).parent


def stop_process_group(process: subprocess.Popen | None) -> None:
    """SIGTERM to a process started with start_new_session=True and its children; SIGKILL after 10 s."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(
    method: str,
    url_or_path: str,
    *,
    port: int,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    proxy: bool = False,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> Reply:
    """One HTTP/1.1 request to 127.0.0.1:port: origin-form by default, absolute-form with proxy=True."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request(method, url_or_path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw_headers: list[tuple[str, str]]
    body: bytes


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Upstream:
    """A real aiohttp server in its own thread; records every request it receives."""

    name: str = "upstream"
    port: int = field(default_factory=free_port)
    routes: dict[str, Handler] = field(default_factory=dict)
    raw_routes: dict[str, Handler] = field(default_factory=dict)  # read the body themselves; not recorded
    received: list[Recorded] = field(default_factory=list)
    delay: float = 0.0
    ssl_context: Any = None  # serve https with this ssl.SSLContext
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _default(self, req: web.Request) -> web.StreamResponse:
        raw = self.raw_routes.get(req.path)
        if raw is not None:
            return await raw(req)
        body = await req.read()
        self.received.append(
            Recorded(req.method, req.path, req.query_string, dict(req.headers), [(k.decode(), v.decode()) for k, v in req.raw_headers], body)
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        handler = self.routes.get(req.path)
        if handler is not None:
            return await handler(req)
        return web.json_response(
            {"upstream": self.name, "method": req.method, "path": req.path, "query": req.query_string, "body": body.decode("utf-8", "replace")},
            headers={"X-Upstream": self.name},
        )

    def start(self) -> Upstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._default)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"upstream-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("upstream did not start")
        return self

    def stop(self) -> None:
        """Idempotent: tests may stop a server early to simulate an outage."""
        if self._thread is None or not self._thread.is_alive():
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@dataclass
class Proxy:
    """A real mitmdump (or mitmweb) running backworks.py."""

    blueprint: Path | None
    extra: list[str] = field(default_factory=list)
    tool: str = "mitmdump"
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    expect_failure: bool = False
    # The admin listener (status page, status API, metrics): a free port of its own, never 9901,
    # so that tests run side by side; a test that sets backworks_admin in `extra` chooses itself.
    admin_port: int = field(default_factory=free_port)

    def command(self) -> list[str]:
        command = [str(BIN / self.tool), "--listen-host", "127.0.0.1", "-p", str(self.port), "-s", str(SCRIPT)]
        if self.blueprint is not None:
            command += ["--set", f"blueprint={self.blueprint}"]
        if not any(arg.startswith("backworks_admin=") for arg in self.extra):
            command += ["--set", f"backworks_admin=127.0.0.1:{self.admin_port}"]
        if self.tool == "mitmweb":
            command += ["--set", "web_open_browser=false"]
        return command + self.extra

    def start(self, log_dir: Path) -> Proxy:
        self.log_path = log_dir / f"{self.tool}-{self.port}.log"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=log_dir,
            start_new_session=True,
        )
        if not self.expect_failure:
            try:
                wait_for_port(self.port, process=self.process)
                # mitmproxy 12 may accept connections before its scripts have loaded
                if self.blueprint is not None:
                    self.wait_for_log("backworks: loaded blueprint", timeout=20)
            except Exception:
                raise RuntimeError(f"{self.tool} did not start:\n{self.log()}") from None
        return self

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 15.0, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log[after:]:
                return log
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} not in the log after {timeout}s:\n{self.log()[-4000:]}")

    def get(self, path: str, **kwargs: Any) -> Reply:
        return request("GET", path, port=self.port, **kwargs)

    def send(self, method: str, path: str, **kwargs: Any) -> Reply:
        return request(method, path, port=self.port, **kwargs)

    def admin_get(self, path: str, **kwargs: Any) -> Reply:
        """GET on the admin listener (status page, status API, metrics).

        The listener opens just after the blueprint's "loaded" line: a refused connection is
        tried again for up to 5 s.
        """
        deadline = time.monotonic() + 5
        while True:
            try:
                return request("GET", path, port=self.admin_port, **kwargs)
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        stop_process_group(self.process)


class ResettingServer:
    """Accepts a connection, reads at least `read_at_least` bytes of the request (or until the
    client stops), then resets the connection (RST, not FIN) without answering."""

    def __init__(self, read_at_least: int = 1) -> None:
        self.read_at_least = read_at_least
        self.port = free_port()
        self.accepted = 0
        self.read: list[int] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.accepted += 1
            got = 0
            try:
                conn.settimeout(5)
                while got < self.read_at_least:
                    data = conn.recv(65536)
                    if not data:
                        break
                    got += len(data)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            finally:
                self.read.append(got)
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def start_capture(port: int, *args: str) -> subprocess.Popen:
    """`backworks capture -p PORT ARGS...` in a session of its own, returned once it records
    (mitmproxy 12 listens before its scripts have loaded); stopped again if it never gets there."""
    process = subprocess.Popen(
        [str(BIN / "backworks"), "capture", "-p", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_port(port, process=process)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if request("GET", "/__backworks/capture", port=port).status == 200:
                return process
            time.sleep(0.1)
        raise TimeoutError(f"backworks capture on {port} did not start recording in 20 s")
    except BaseException:
        stop_process_group(process)
        raise


def stop_capture(process: subprocess.Popen) -> str:
    """Ctrl-C to a capture started by start_capture, as a user stops it; its log once it has
    written its outputs and exited."""
    os.killpg(process.pid, signal.SIGINT)
    return process.communicate(timeout=60)[0].decode(errors="replace")


def write_atomically(path: Path, text: str) -> None:
    """Editors save by rename; the watcher must never see a half-written file."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def mitmweb_options(web_port: int) -> tuple[list[str], dict[str, str]]:
    """mitmweb's arguments for a test, and the headers its API wants (a password from mitmproxy 12)."""
    import mitmproxy.version

    extra = ["--set", f"web_port={web_port}", "--set", "web_host=127.0.0.1"]
    if int(mitmproxy.version.VERSION.split(".")[0]) >= 12:
        return extra + ["--set", "web_password=backworks-test"], {"Authorization": "Bearer backworks-test"}
    return extra, {}
