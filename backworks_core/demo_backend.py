"""A small upstream API for demos, examples and benchmarks (`backworks demo-backend`).

Every answer names the backend that produced it, so load balancing is visible with curl.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

logger = logging.getLogger(__name__)

USERS = [
    {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"},
    {"id": 2, "name": "Grace Hopper", "email": "grace@example.com"},
    {"id": 3, "name": "Alan Turing", "email": "alan@example.com"},
]
ORDERS = [
    {"id": 100, "user_id": 1, "total": 42.5, "status": "shipped"},
    {"id": 101, "user_id": 2, "total": 13.0, "status": "pending"},
]
PRODUCTS = [
    {"id": 7, "name": "Keyboard", "price": 49.0},
    {"id": 8, "name": "Mouse", "price": 19.0},
]
COLLECTIONS: dict[str, list[dict[str, Any]]] = {"users": USERS, "orders": ORDERS, "products": PRODUCTS}


def make_app(name: str) -> web.Application:
    async def reply(request: web.Request, body: Any, status: int = 200) -> web.Response:
        return web.json_response(body, status=status, headers={"X-Backend": name}, dumps=json.dumps)

    async def health(request: web.Request) -> web.Response:
        return await reply(request, {"status": "healthy", "backend": name})

    async def listing(request: web.Request) -> web.Response:
        items = COLLECTIONS[request.match_info["collection"]]
        return await reply(request, {"backend": name, "items": items})

    async def item(request: web.Request) -> web.Response:
        items = COLLECTIONS[request.match_info["collection"]]
        wanted = request.match_info["id"]
        for entry in items:
            if str(entry["id"]) == wanted:
                return await reply(request, {"backend": name, **entry})
        return await reply(request, {"backend": name, "error": "not found"}, 404)

    async def create(request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        # RecursionError: `[[[…` nested too deep; RequestPayloadError: a Content-Encoding the body does not match
        except (ValueError, RecursionError, RequestPayloadError):
            return await reply(request, {"backend": name, "error": "expected a JSON body"}, 400)
        return await reply(request, {"backend": name, "created": payload}, 201)

    async def echo(request: web.Request) -> web.Response:
        try:
            body = await request.read()
        except RequestPayloadError:
            return await reply(request, {"backend": name, "error": "the body does not match its Content-Encoding"}, 400)
        return await reply(
            request,
            {
                "backend": name,
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": dict(request.headers),
                "body": body.decode("utf-8", "replace"),
            },
        )

    app = web.Application()
    collections = "{collection:users|orders|products}"
    app.router.add_get("/health", health)
    app.router.add_get(f"/{collections}", listing)
    app.router.add_post(f"/{collections}", create)
    app.router.add_get(f"/{collections}/{{id}}", item)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def serve(host: str, port: int, name: str) -> None:
    runner = web.AppRunner(make_app(name), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"demo backend {name!r} listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(host: str, port: int, name: str) -> int:
    try:
        asyncio.run(serve(host, port, name))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"demo backend {name!r}: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        print("  another process uses the port; choose another with --port (./run.sh: DEMO_BACKEND_PORT=...)", file=sys.stderr)
        return 1
    return 0
