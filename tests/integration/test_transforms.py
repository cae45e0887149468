"""Transforms through a real mitmdump: plugin, pool, config.proxy, endpoint and middleware levels.

Each blueprint is small; `<up>`-style tokens are replaced by upstream URLs. Ordering is made
observable with rename chains (a → b at one level, b → c at the next, …): only the
documented order carries the value to the end of the chain.
"""

from __future__ import annotations

import gzip
import json
import textwrap
from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.harness import Proxy, Upstream

pytestmark = pytest.mark.integration


def write_blueprint(folder: Path, text: str, **urls: str) -> Path:
    text = textwrap.dedent(text)
    for name, url in urls.items():
        text = text.replace(f"<{name}>", url)
    path = folder / "blueprint.yaml"
    path.write_text(text)
    return path


def assert_length_matches(reply) -> None:  # type: ignore[no-untyped-def]
    assert reply.header("Content-Length") == str(len(reply.body))


def json_route(body: object, status: int = 200, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    async def route(req: web.Request) -> web.Response:
        return web.json_response(body, status=status, headers=headers)

    return route


# -- the documented order, every level at once ----------------------------------------------

ORDER = r"""
name: order
plugins:
  proxy:
    config:
      targets: [{name: d, url: "<default>"}]
      transform_request:
        headers: {X-Level: plugin}
        rename_headers: {X-A: X-B}
        body: {rename: {a: b}}
      transform_response:
        headers: {X-Out: plugin}
        rename_headers: {X-R3: X-R4}
        body: {rename: {r3: r4}}
      upstreams:
        orders:
          targets: [{name: o, url: "<orders>"}]
          transform_request:
            headers: {X-Level: pool}
            rename_headers: {X-B: X-C}
            body: {rename: {b: c}}
          transform_response:
            headers: {X-Out: pool}
            rename_headers: {X-R2: X-R3}
            body: {rename: {r2: r3}}
endpoints:
  - path: /order
    method: POST
    handler: proxy
    config:
      proxy:
        upstream: orders
        transform_request:
          headers: {X-Level: proxy}
          rename_headers: {X-C: X-D}
          body: {rename: {c: d}}
        transform_response:
          headers: {X-Out: proxy}
          rename_headers: {X-R1: X-R2}
          body: {rename: {r1: r2}}
    transform:
      request:
        headers: {X-Level: endpoint}
        rename_headers: {X-D: X-E}
        body: {rename: {d: e}}
      response:
        headers: {X-Out: endpoint, X-R1: "1"}
        body: {rename: {upstream: r1}}
  - path: /order-headers
    handler: proxy
    config:
      proxy:
        upstream: orders
        transform_request: {headers: {X-Level: proxy}, rename_headers: {X-C: X-D}}
        transform_response: {headers: {X-Out: proxy}, rename_headers: {X-R1: X-R2}}
    transform:
      request: {headers: {X-Level: endpoint}, rename_headers: {X-D: X-E}}
      response: {headers: {X-Out: endpoint, X-R1: "1"}}
"""


@pytest.fixture
def order_gateway(tmp_path: Path, make_upstream, start_proxy) -> tuple[Proxy, Upstream, Upstream]:  # type: ignore[no-untyped-def]
    default, orders = make_upstream("default"), make_upstream("orders")
    proxy = start_proxy(write_blueprint(tmp_path, ORDER, default=default.url, orders=orders.url))
    return proxy, default, orders


def test_levels_combine_in_the_documented_order_with_bodies(order_gateway) -> None:  # type: ignore[no-untyped-def]
    proxy, default, orders = order_gateway
    reply = proxy.send("POST", "/order", body=b'{"a": 1}', headers={"X-A": "client", "Content-Type": "application/json"})
    assert reply.status == 200
    seen = orders.received[-1]
    # requests: plugin → pool → config.proxy → endpoint (the last X-Level set wins)
    assert json.loads(seen.body) == {"e": 1}
    assert seen.headers["X-E"] == "client"
    assert not {"X-A", "X-B", "X-C", "X-D"} & set(seen.headers)
    assert seen.headers["X-Level"] == "endpoint"
    assert seen.headers["Content-Length"] == str(len(seen.body))
    # responses: endpoint → config.proxy → pool → plugin
    assert reply.json["r4"] == "orders"
    assert "upstream" not in reply.json
    assert reply.header("X-R4") == "1"
    assert reply.header("X-Out") == "plugin"
    assert_length_matches(reply)
    assert default.received == []


def test_levels_combine_in_the_documented_order_headers_only(order_gateway) -> None:  # type: ignore[no-untyped-def]
    # the headers-only chain takes the proxy's fast path: the same order
    proxy, _, orders = order_gateway
    reply = proxy.get("/order-headers", headers={"X-A": "client"})
    assert reply.status == 200
    seen = orders.received[-1].headers
    assert seen["X-E"] == "client"
    assert not {"X-A", "X-B", "X-C", "X-D"} & set(seen)
    assert seen["X-Level"] == "endpoint"
    assert reply.header("X-R4") == "1"
    assert reply.header("X-R1") is None
    assert reply.header("X-Out") == "plugin"
    assert reply.json["upstream"] == "orders"  # no body op: the upstream's body as sent


# -- path and query ------------------------------------------------------------------------

PATH_QUERY = r"""
name: path-query
plugins:
  proxy:
    config:
      targets: [{name: u, url: "<up>"}]
endpoints:
  - path: /api/users/{id}
    handler: proxy
    transform:
      request:
        path:
          strip_prefix: /api
          add_prefix: /v2
          rewrite: [{pattern: "^/v2/users/(\\d+)$", replacement: "/v2/people/\\1"}]
        query:
          set: {source: gateway, who: "{{path.id}}"}
          remove: [debug]
          rename: {q: search}
"""


def test_path_and_query_reach_the_upstream_rewritten(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    up = make_upstream("u")
    proxy = start_proxy(write_blueprint(tmp_path, PATH_QUERY, up=up.url))
    reply = proxy.get("/api/users/42?q=cats&debug=1&keep=a&keep=b&who=old")
    assert reply.status == 200
    seen = up.received[-1]
    assert seen.path == "/v2/people/42"
    # remove, rename in place, set: replaces `who` where it was, appends `source`
    assert seen.query == "search=cats&keep=a&keep=b&who=42&source=gateway"
    # the rewrite's pattern does not match: strip and add only
    proxy.get("/api/users/abc")
    assert (up.received[-1].path, up.received[-1].query) == ("/v2/users/abc", "source=gateway&who=abc")


# -- JSON bodies with [*] -----------------------------------------------------------------------

BODIES = r"""
name: bodies
plugins:
  proxy:
    config:
      targets: [{name: u, url: "<up>"}]
endpoints:
  - path: /items
    method: POST
    handler: proxy
    transform:
      request:
        body:
          remove: ["items[*].secret"]
          rename: {"items[*].n": "items[*].name"}
          set: {"items[*].seen": true, "meta.user": "{{header.X-User}}"}
  - path: /data
    handler: proxy
    transform:
      response:
        body:
          remove: ["data[*].internal"]
          rename: {"data[*].val": "data[*].value"}
          set: {"data[*].ok": true, total: 2}
"""


def test_json_body_operations_with_each_on_request_and_response(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    up = make_upstream("u")
    up.routes["/data"] = json_route({"data": [{"id": 1, "internal": "x", "val": 10}, {"id": 2, "internal": "y", "val": 20}]})
    proxy = start_proxy(write_blueprint(tmp_path, BODIES, up=up.url))

    sent = {"items": [{"id": 1, "secret": "s1", "n": "a"}, {"id": 2, "secret": "s2", "n": "b"}]}
    reply = proxy.send("POST", "/items", body=json.dumps(sent), headers={"Content-Type": "application/json", "X-User": "ann"})
    assert reply.status == 200
    seen = up.received[-1]
    assert json.loads(seen.body) == {
        "items": [{"id": 1, "name": "a", "seen": True}, {"id": 2, "name": "b", "seen": True}],
        "meta": {"user": "ann"},
    }
    assert seen.headers["Content-Length"] == str(len(seen.body))

    reply = proxy.get("/data")
    assert reply.status == 200
    assert reply.json == {"data": [{"id": 1, "value": 10, "ok": True}, {"id": 2, "value": 20, "ok": True}], "total": 2}
    assert_length_matches(reply)


def test_gzip_response_is_transformed_and_stays_gzip(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    up = make_upstream("u")
    compressed = gzip.compress(json.dumps({"data": [{"id": 1, "internal": "x", "val": 10}]}).encode())

    async def gzipped(req: web.Request) -> web.Response:
        return web.Response(body=compressed, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})

    up.routes["/data"] = gzipped
    proxy = start_proxy(write_blueprint(tmp_path, BODIES, up=up.url))
    reply = proxy.get("/data", headers={"Accept-Encoding": "gzip"})
    assert reply.status == 200
    assert reply.header("Content-Encoding") == "gzip"
    assert_length_matches(reply)
    assert reply.body != compressed
    assert json.loads(gzip.decompress(reply.body)) == {"data": [{"id": 1, "value": 10, "ok": True}], "total": 2}


# -- status_map ------------------------------------------------------------------------------

STATUS = r"""
name: status
plugins:
  proxy:
    config:
      targets: [{name: u, url: "<up>"}]
endpoints:
  - path: /missing
    handler: proxy
    transform:
      response: {status_map: {404: 200}, headers: {X-Mapped: "yes"}}
  - path: /missing-body
    handler: proxy
    config: {proxy: {path: /missing}}
    transform:
      response: {status_map: {404: 200}, body: {set: {found: false}}}
"""


def test_status_map(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    up = make_upstream("u")
    up.routes["/missing"] = json_route({"error": "nope"}, status=404)
    proxy = start_proxy(write_blueprint(tmp_path, STATUS, up=up.url))
    # headers and status only: the fast path
    reply = proxy.get("/missing")
    assert (reply.status, reply.header("X-Mapped"), reply.json) == (200, "yes", {"error": "nope"})
    # with a body op: the whole-message path
    reply = proxy.get("/missing-body")
    assert (reply.status, reply.json) == (200, {"error": "nope", "found": False})
    assert_length_matches(reply)


# -- static endpoints ------------------------------------------------------------------------

STATIC = r"""
name: static
endpoints:
  - path: /hello/{name}
    handler: static
    config:
      static:
        headers: {X-Static: "1"}
        body: {hello: "{{path.name}}", who: "{{header.X-Who}}", lang: "{{query.lang}}"}
    transform:
      request:
        headers: {X-Who: "user-{{path.name}}"}
        query: {set: {lang: en}}
      response:
        headers: {X-Shaped: "yes"}
        remove_headers: [X-Static]
        body: {rename: {hello: greeting}, set: {"meta.shaped": true}}
  - path: /text
    handler: static
    config: {static: {body: "hello world"}}
    transform:
      response: {body: {replace: [{pattern: "world", replacement: "there"}]}}
"""


def test_static_endpoint_with_request_and_response_transforms(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(write_blueprint(tmp_path, STATIC))
    reply = proxy.get("/hello/bob?lang=fr", headers={"X-Who": "spoofed"})
    assert reply.status == 200
    # the request transform ran before the static templates read the request
    assert reply.json == {"greeting": "bob", "who": "user-bob", "lang": "en", "meta": {"shaped": True}}
    assert reply.header("X-Shaped") == "yes"
    assert reply.header("X-Static") is None
    assert_length_matches(reply)

    reply = proxy.get("/text")
    assert (reply.body, reply.header("Content-Type")) == (b"hello there", "text/plain; charset=utf-8")
    assert_length_matches(reply)


# -- the transform middleware ------------------------------------------------------------------

MIDDLEWARE = r"""
name: middleware
plugins:
  proxy:
    config:
      targets: [{name: u, url: "<up>"}]
      transform_request: {rename_headers: {X-B: X-C}}
      transform_response: {body: {rename: {r2: r3}}}
middlewares:
  - name: reshape
    plugin: transform
    config:
      path: "/mw/*"
      methods: [GET]
      request:
        headers: {X-Stage: middleware}
        rename_headers: {X-A: X-B}
      response:
        headers: {X-Out: middleware}
        body: {rename: {r3: r4}, set: {mw: true}}
endpoints:
  - path: /mw/static
    method: [GET, POST]
    handler: static
    config:
      static:
        body: {r1: "static", stage: "{{header.X-Stage}}", seen: "{{header.X-Seen}}"}
    transform:
      request: {headers: {X-Stage: endpoint, X-Seen: "{{header.X-Stage}}"}}
      response: {headers: {X-Out: endpoint}, body: {rename: {r1: r3}}}
  - path: /mw/proxy
    handler: proxy
    transform:
      request: {rename_headers: {X-C: X-D}}
      response: {headers: {X-Out: endpoint}, body: {rename: {upstream: r2}}}
  - path: /plain
    handler: static
    config: {static: {body: {r3: "untouched"}}}
"""


@pytest.fixture
def mw_gateway(tmp_path: Path, make_upstream, start_proxy) -> tuple[Proxy, Upstream]:  # type: ignore[no-untyped-def]
    up = make_upstream("u")
    return start_proxy(write_blueprint(tmp_path, MIDDLEWARE, up=up.url)), up


def test_transform_middleware_on_a_static_endpoint(mw_gateway) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = mw_gateway
    reply = proxy.get("/mw/static")
    assert reply.status == 200
    # request: the middleware, then the endpoint's transform (which reads what the middleware set)
    # response: the endpoint's transform (r1 → r3), then the middleware (r3 → r4)
    assert reply.json == {"r4": "static", "stage": "endpoint", "seen": "middleware", "mw": True}
    assert reply.header("X-Out") == "middleware"
    assert_length_matches(reply)


def test_transform_middleware_on_a_proxy_endpoint(mw_gateway) -> None:  # type: ignore[no-untyped-def]
    proxy, up = mw_gateway
    reply = proxy.get("/mw/proxy", headers={"X-A": "client"})
    assert reply.status == 200
    # request: middleware (A → B), plugin level (B → C), endpoint (C → D)
    seen = up.received[-1].headers
    assert seen["X-D"] == "client"
    assert not {"X-A", "X-B", "X-C"} & set(seen)
    assert seen["X-Stage"] == "middleware"
    # response: endpoint (upstream → r2), plugin level (r2 → r3), middleware (r3 → r4)
    assert reply.json["r4"] == "u"
    assert reply.json["mw"] is True
    assert reply.header("X-Out") == "middleware"
    assert_length_matches(reply)


def test_transform_middleware_filter(mw_gateway) -> None:  # type: ignore[no-untyped-def]
    proxy, _ = mw_gateway
    assert proxy.get("/plain").json == {"r3": "untouched"}  # outside its path
    reply = proxy.send("POST", "/mw/static")  # outside its methods: the endpoint's transform alone
    assert reply.json == {"r3": "static", "stage": "endpoint", "seen": ""}
    assert reply.header("X-Out") == "endpoint"


# -- refused values ---------------------------------------------------------------------------

CRLF = r"""
name: crlf
plugins:
  proxy:
    config:
      targets: [{name: u, url: "<up>"}]
middlewares:
  - name: reshape
    plugin: transform
    config:
      path: "/mw"
      request: {headers: {X-Note: "{{query.x}}"}}
endpoints:
  - path: /proxy
    method: [GET, POST]
    handler: proxy
    transform:
      request: {headers: {X-Note: "{{query.x}}"}}
  - path: /proxy-body
    method: [GET, POST]
    handler: proxy
    transform:
      request: {headers: {X-Note: "{{query.x}}"}, body: {set: {a: 1}}}
  - path: /proxy-response
    method: [GET, POST]
    handler: proxy
    transform:
      response: {headers: {X-Note: "{{query.x}}"}}
  - path: /static
    method: [GET, POST]
    handler: static
    config: {static: {body: ok}}
    transform:
      request: {headers: {X-Note: "{{query.x}}"}}
  - path: /mw
    method: [GET, POST]
    handler: static
    config: {static: {body: ok}}
"""


def test_crlf_from_a_template_is_refused(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    up = make_upstream("u")
    proxy = start_proxy(write_blueprint(tmp_path, CRLF, up=up.url))
    evil = "?x=a%0d%0aInjected:%20yes"
    for path in ("/proxy", "/proxy-body", "/static", "/mw"):
        reply = proxy.send("POST", path + evil, body=b'{"b": 2}')
        assert reply.status == 400, path
        assert "refused" in reply.json["error"], path
        assert reply.header("Injected") is None
    assert up.received == []
    # the same template with a clean value passes
    assert proxy.get("/proxy?x=fine").status == 200
    assert up.received[-1].headers["X-Note"] == "fine"
    # a response transform refused is the gateway's fault, not the client's: 502
    reply = proxy.get("/proxy-response" + evil)
    assert reply.status == 502
    assert "refused" in reply.json["error"]
    assert reply.header("Injected") is None


# -- bodies that are not JSON ------------------------------------------------------------------

NOT_JSON = r"""
name: not-json
plugins:
  proxy:
    config:
      targets: [{name: u, url: "<up>"}]
endpoints:
  - path: /form
    method: POST
    handler: proxy
    transform:
      request: {body: {set: {a: 1}}, headers: {X-Shaped: "yes"}}
  - path: /page
    handler: proxy
    transform:
      response: {body: {set: {a: 1}, remove: [b]}, headers: {X-Shaped: "yes"}}
"""


def test_non_json_bodies_are_left_untouched(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    up = make_upstream("u")
    page = b"<html>{not json}</html>"

    async def html(req: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html")

    up.routes["/page"] = html
    proxy = start_proxy(write_blueprint(tmp_path, NOT_JSON, up=up.url))

    reply = proxy.send("POST", "/form", body=b"a=2&b=3", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 200
    seen = up.received[-1]
    assert (seen.body, seen.headers["Content-Length"], seen.headers["X-Shaped"]) == (b"a=2&b=3", "7", "yes")

    reply = proxy.get("/page")
    assert reply.status == 200
    assert reply.body == page
    assert reply.header("X-Shaped") == "yes"
    assert_length_matches(reply)
