"""Backworks' own pages (the status page, its JSON API, metrics): on the admin listener.

A page is a function of the request headers. It answers on the admin listener (`server.admin`,
addons/admin.py), an aiohttp server inside mitmproxy's event loop, and, only with
`server.admin.expose_on_api`, also as an internal endpoint of the gateway on the API's listener.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from mitmproxy import http

from backworks_core.context import Answer, RequestContext
from backworks_core.relay import close_listener

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


PageFunction = Callable[[Mapping[str, str]], Page]


@dataclass(frozen=True)
class InternalEndpoint:
    """A page the gateway routes like an endpoint (middlewares with a matching filter apply).

    `loc` is where the path is configured, for the error when an endpoint of the blueprint
    already has it.
    """

    path: str
    page: PageFunction
    handler_name: str
    loc: tuple[str | int, ...]
    description: str = ""


def page_response(page: Page) -> http.Response:
    """A page as the gateway answers it: never cached by browsers or proxies."""
    response = http.Response.make(page.status, page.body, {"Content-Type": page.content_type, "Cache-Control": "no-store"})
    for name, value in page.headers.items():
        response.headers[name] = value
    return response


class PageHandler:
    """An internal endpoint's handler."""

    def __init__(self, page: PageFunction) -> None:
        self.page = page

    async def __call__(self, ctx: RequestContext) -> Answer:
        return page_response(self.page(ctx.request.headers))


class SidePort:
    """Pages on a listener of their own; `serve` again with another address moves it."""

    def __init__(self, what: str, taken_hint: str = "") -> None:
        self.what = what
        self.taken_hint = taken_hint  # what to do when the address is taken
        self.routes: dict[str, PageFunction] = {}
        self.address: tuple[str, int] | None = None
        self._server: asyncio.base_events.Server | None = None
        self._web: web.Server | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def apply(self, host: str, port: int | None, routes: Mapping[str, PageFunction]) -> None:
        """From a synchronous hook (a blueprint went live): listen there, or stop when `port` is None.

        Without a running loop (a tool compiling the blueprint) there is nothing to listen with.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        previous = self._task

        async def change() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)  # in order, whatever reloads come
            await (self.stop() if port is None else self.serve(host, port, routes))

        self._task = loop.create_task(change())

    @property
    def port(self) -> int | None:
        return self._server.sockets[0].getsockname()[1] if self._server is not None else None

    async def serve(self, host: str, port: int, routes: Mapping[str, PageFunction]) -> None:
        async with self._lock:
            self.routes = dict(routes)
            if self._server is not None and self.address == (host, port):
                return
            await self._close()
            self._web = web.Server(self._handle, access_log=None)
            try:
                self._server = await asyncio.get_running_loop().create_server(self._web, host, port)
            except OSError as exc:
                self._web = None
                # A warning, never an error: mitmproxy exits on an error logged while it starts, and
                # the API must be served whatever happens to the pages beside it.
                hint = f"; {self.taken_hint}" if self.taken_hint else ""
                logger.warning("backworks: the %s is not listening: cannot listen on %s: %s%s", self.what, _url(host, port), exc.strerror or exc, hint)
                return
            self.address = (host, port)
            logger.info("backworks: %s on %s (%s)", self.what, _url(host, self.port or port), ", ".join(sorted(self.routes)) or "nothing to serve")

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        page_function = self.routes.get(request.path.rstrip("/") or "/")
        if page_function is None:
            return web.json_response({"error": f"nothing at {request.path}; try {', '.join(sorted(self.routes))}", "status": 404}, status=404)
        if request.method not in ("GET", "HEAD"):
            return web.json_response({"error": f"method {request.method} is not allowed here (allowed: GET, HEAD)", "status": 405}, status=405, headers={"Allow": "GET, HEAD"})
        page = page_function(request.headers)
        response = web.Response(status=page.status, body=page.body, headers={"Content-Type": page.content_type, "Cache-Control": "no-store", **page.headers})
        return response

    async def stop(self) -> None:
        async with self._lock:
            await self._close()

    async def done(self) -> None:
        """At shutdown: after any change still under way, close."""
        if self._task is not None and self._task is not asyncio.current_task():
            await asyncio.gather(self._task, return_exceptions=True)
        await self.stop()

    async def _close(self) -> None:
        await close_listener(self._server, self._web)
        self._server = self._web = None
        self.address = None


def _url(host: str, port: int) -> str:
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"
