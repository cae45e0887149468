"""The cors middleware in a real mitmdump: preflights answered at the gateway (the upstream never
sees them), and CORS as headless Chromium enforces it, with a page on one origin calling the
gateway on another (127.0.0.1 on another port is another origin)."""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.browser import Browser, Page, chromium_path
from tests.integration.harness import Proxy, Upstream
from tests.integration.prometheus import require

pytestmark = pytest.mark.integration

PAGE = "<!doctype html><html><head><title>cors page</title></head><body>cors test page</body></html>"


def page_server(name: str) -> Upstream:
    """A page on its own origin; it sets a cookie for 127.0.0.1 (cookies ignore the port)."""

    async def index(request: web.Request) -> web.StreamResponse:
        return web.Response(text=PAGE, content_type="text/html", headers={"Set-Cookie": f"session={name}; Path=/; SameSite=Lax"})

    return Upstream(name, routes={"/": index}).start()


@pytest.fixture
def pages() -> Iterator[tuple[Upstream, Upstream]]:
    allowed, other = page_server("allowed"), page_server("other")
    yield allowed, other
    allowed.stop()
    other.stop()


@pytest.fixture
def gateway(tmp_path: Path, start_proxy, upstream: Upstream, pages: tuple[Upstream, Upstream]) -> Proxy:  # type: ignore[no-untyped-def]
    allowed, _ = pages
    blueprint = tmp_path / "blueprint.yaml"
    blueprint.write_text(
        textwrap.dedent(
            f"""
            name: cors
            plugins:
              proxy: {{config: {{targets: [{{name: up-1, url: "{upstream.url}"}}]}}}}
            middlewares:
              - name: browsers
                plugin: cors
                config:
                  path: "/api/*"
                  origins: ["{allowed.url}"]
                  methods: [GET, PUT]
                  headers: [Content-Type, X-Trace]
                  expose_headers: [X-Upstream]
                  credentials: true
            endpoints:
              - {{path: /api/items, method: [GET, PUT], handler: proxy}}
              - {{path: "/api/items/{{id:int}}", method: DELETE, handler: proxy}}
            """
        )
    )
    return start_proxy(blueprint)  # type: ignore[no-any-return]


def test_preflight_is_answered_by_the_gateway(gateway: Proxy, upstream: Upstream, pages: tuple[Upstream, Upstream]) -> None:
    origin = pages[0].url
    reply = gateway.send(
        "OPTIONS",
        "/api/items",
        headers={"Origin": origin, "Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "content-type,x-trace"},
    )
    assert reply.status == 204
    assert reply.header("Access-Control-Allow-Origin") == origin
    assert reply.header("Access-Control-Allow-Credentials") == "true"
    assert reply.header("Access-Control-Allow-Methods") == "GET, PUT"
    assert reply.header("Access-Control-Allow-Headers") == "Content-Type, X-Trace"
    assert reply.header("Vary") == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    refused = gateway.send("OPTIONS", "/api/items", headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "PUT"})
    assert refused.status == 403
    assert refused.json["error"] == "CORS preflight refused: origin 'http://evil.test' is not allowed"
    assert refused.header("Access-Control-Allow-Origin") is None
    assert upstream.received == []  # neither preflight reached the upstream

    reply = gateway.send("PUT", "/api/items", body=b"{}", headers={"Origin": origin, "Content-Type": "application/json"})
    assert reply.status == 200
    assert reply.header("Access-Control-Allow-Origin") == origin
    assert reply.header("Access-Control-Expose-Headers") == "X-Upstream"
    assert reply.header("Vary") == "Origin"
    assert [(r.method, r.path, r.headers.get("Origin")) for r in upstream.received] == [("PUT", "/api/items", origin)]
    plain = gateway.get("/api/items")
    assert plain.status == 200 and plain.header("Access-Control-Allow-Origin") is None


# -- in a browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = require(chromium_path(), "chromium")
    with Browser(binary) as running:
        yield running


# The request line ends with the pool target's name when one answered (`→ default`, issue 21).
FLOW_LINE = re.compile(r"^\S+: (?P<method>[A-Z]+) http://127\.0\.0\.1:\d+(?P<path>\S*)(?: → \S+)?\n\s+<< (?P<status>\d{3}) ", re.MULTILINE)


def flows(log: str) -> list[tuple[str, str, int]]:
    """mitmdump's flow lines: (method, path, status) in order."""
    return [(m["method"], m["path"], int(m["status"])) for m in FLOW_LINE.finditer(log)]


def call(page: Page, url: str, init: dict[str, Any] | None = None) -> dict[str, Any]:
    """fetch() in the page: {ok, status, body, exposed} or {error: 'TypeError: …'}."""
    script = f"""
        fetch({json.dumps(url)}, {json.dumps(init or {})}).then(
            async (r) => ({{ok: true, status: r.status, body: await r.json(),
                            exposed: r.headers.get('X-Upstream'), hidden: r.headers.get('Content-Length')}}),
            (e) => ({{ok: false, error: e.name + ': ' + e.message}}))
    """
    result: dict[str, Any] = page.evaluate(script, timeout=15)
    return result


def test_cors_in_chromium(browser: Browser, gateway: Proxy, upstream: Upstream, pages: tuple[Upstream, Upstream]) -> None:
    allowed, other = pages
    api = f"http://127.0.0.1:{gateway.port}/api/items"
    page = browser.open(f"{allowed.url}/")
    page.wait_for("document.readyState === 'complete' && document.title === 'cors page'")

    # a simple GET: no preflight; the page reads the JSON and the exposed header
    simple = call(page, api)
    assert simple["ok"], simple
    assert simple["body"]["method"] == "GET"
    assert simple["exposed"] == "up-1"
    assert [(r.method, r.headers.get("Origin")) for r in upstream.received] == [("GET", allowed.url)]

    # a PUT with a custom header and credentials: preflighted, answered by the gateway
    put = call(
        page,
        api,
        {"method": "PUT", "credentials": "include", "headers": {"X-Trace": "t-1", "Content-Type": "application/json"}, "body": '{"a": 1}'},
    )
    assert put["ok"], put
    assert put["body"]["method"] == "PUT" and put["body"]["body"] == '{"a": 1}'
    sent = upstream.received[-1]
    assert (sent.method, sent.headers.get("X-Trace"), sent.headers.get("Cookie")) == ("PUT", "t-1", "session=allowed")
    assert [r.method for r in upstream.received] == ["GET", "PUT"]  # the preflight never reached it
    gateway.wait_for_log("OPTIONS")  # mitmdump logged the preflight it answered itself

    # a method outside `methods`: the DELETE preflight is refused (405 before any handler)
    refused = call(page, f"http://127.0.0.1:{gateway.port}/api/items/1", {"method": "DELETE"})
    assert refused == {"ok": False, "error": "TypeError: Failed to fetch"}
    assert [r.method for r in upstream.received] == ["GET", "PUT"]

    # a page on an origin not in the list
    page.navigate(f"{other.url}/")
    page.wait_for("document.readyState === 'complete' && document.title === 'cors page'")
    blocked = call(page, api)
    assert blocked == {"ok": False, "error": "TypeError: Failed to fetch"}
    # a simple GET is sent (CORS guards the reader, not the server): the upstream saw it, the page could not read it
    assert (upstream.received[-1].method, upstream.received[-1].headers.get("Origin")) == ("GET", other.url)
    count = len(upstream.received)
    # a preflighted PUT from there is refused at the gateway: the upstream never sees it
    blocked_put = call(page, api, {"method": "PUT", "headers": {"X-Trace": "t-2"}})
    assert blocked_put == {"ok": False, "error": "TypeError: Failed to fetch"}
    assert len(upstream.received) == count
    # the gateway's log: every request the browser sent, and what the gateway answered
    assert flows(gateway.log()) == [
        ("GET", "/api/items", 200),
        ("OPTIONS", "/api/items", 204),
        ("PUT", "/api/items", 200),
        ("OPTIONS", "/api/items/1", 405),
        ("GET", "/api/items", 200),
        ("OPTIONS", "/api/items", 403),
    ]
    assert f"refused a preflight: origin '{other.url}' is not allowed" in gateway.log()
