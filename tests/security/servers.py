"""Upstream servers that resolve request paths themselves, as real applications do.

Each serves the same small tree (see TREE) and records every path it received, raw and as it
resolved it, so a test can tell whether anything outside what the gateway allowed was reached:
- aiohttp (yarl resolves dot segments and decodes the path),
- http.server's SimpleHTTPRequestHandler (posixpath.normpath over the unquoted path, on disk),
- a WSGI application under wsgiref (PATH_INFO is the unquoted path; `HTTP_*` environ keys show
  how a WSGI server folds header names: `X-User` and `X_User` both become HTTP_X_USER).

Every answer is JSON with the server kind, the resolved path, the file's content (or 404) and the
identity headers the application saw, so tests assert on what the upstream *did*.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import posixpath
import socketserver
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from aiohttp import web

from tests.integration.harness import free_port

# path -> content; "SECRET" marks what an attacker must never get
TREE = {
    "/public/index.txt": "public index",
    "/public/files/readme.txt": "public readme",
    "/admin/secret": "SECRET admin file",
    "/config.txt": "SECRET config file",
}
SECRET_MARK = "SECRET"


def resolve(raw_path: str) -> str:
    """What a path-normalising server makes of a request path: decoded, dot segments resolved."""
    path = unquote(urlsplit(raw_path).path)
    resolved = posixpath.normpath("/" + path.lstrip("/")) if path else "/"
    return "/" + resolved.lstrip("/")


@dataclass
class Hit:
    kind: str
    raw: str
    resolved: str
    headers: dict[str, str]


@dataclass
class FileServer:
    kind: str
    port: int = field(default_factory=free_port)
    hits: list[Hit] = field(default_factory=list)
    _stop: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, raw: str, headers: dict[str, str]) -> tuple[int, bytes]:
        resolved = resolve(raw)
        self.hits.append(Hit(self.kind, raw, resolved, headers))
        content = TREE.get(resolved)
        body = {"server": self.kind, "raw": raw, "resolved": resolved, "content": content, "headers": headers}
        return (200 if content is not None else 404), json.dumps(body).encode()

    def secrets_served(self) -> list[Hit]:
        return [hit for hit in self.hits if SECRET_MARK in (TREE.get(hit.resolved) or "")]

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def _identity(headers: Any) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().replace("_", "-").startswith(("x-", "forwarded", "authorization"))}


def _aiohttp_server() -> FileServer:
    server = FileServer("aiohttp")
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def handle(request: web.Request) -> web.Response:
        # request.path is yarl's: decoded, dot segments resolved; raw_path is what arrived
        status, body = server.answer(request.raw_path, _identity(request.headers))
        return web.Response(status=status, body=body, content_type="application/json")

    def run() -> None:
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", server.port).start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True, name="aiohttp-file-server")
    thread.start()
    ready.wait(10)

    def stop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    server._stop = stop
    return server


class _ThreadingHTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def _http_server() -> FileServer:
    """SimpleHTTPRequestHandler over a real folder holding TREE: it resolves paths on disk."""
    server = FileServer("http.server")
    root = Path(tempfile.mkdtemp(prefix="backworks-fileserver-"))
    for path, content in TREE.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_text(content)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:  # noqa: N802
            # What it serves is what translate_path resolves on disk; record that.
            disk = Path(self.translate_path(self.path))
            resolved = "/" + str(disk.relative_to(root)) if disk.is_relative_to(root) else str(disk)
            server.hits.append(Hit(server.kind, self.path, resolved if resolved != "/." else "/", _identity(self.headers)))
            content = disk.read_text() if disk.is_file() else None
            body = json.dumps({"server": server.kind, "raw": self.path, "resolved": resolved, "content": content, "headers": _identity(self.headers)}).encode()
            self.send_response(200 if content is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    httpd = _ThreadingHTTPServer(("127.0.0.1", server.port), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True, name="http-server-file-server")
    thread.start()

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()

    server._stop = stop
    return server


class _QuietWSGIHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _wsgi_server() -> FileServer:
    server = FileServer("wsgi")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raw = environ.get("RAW_URI") or (environ.get("PATH_INFO", "") + (("?" + environ["QUERY_STRING"]) if environ.get("QUERY_STRING") else ""))
        # The environ keys are what the application sees: X-User and X_User both land in HTTP_X_USER.
        headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_X_") or k in ("HTTP_FORWARDED", "HTTP_AUTHORIZATION")}
        status, body = server.answer(environ.get("PATH_INFO", "/"), headers)
        start_response(f"{status} {'OK' if status == 200 else 'Not Found'}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    httpd = make_server("127.0.0.1", server.port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietWSGIHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True, name="wsgi-file-server")
    thread.start()

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()

    server._stop = stop
    return server


def start_file_servers() -> list[FileServer]:
    return [_aiohttp_server(), _http_server(), _wsgi_server()]
