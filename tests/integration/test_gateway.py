"""A real mitmdump running backworks.py, real upstream servers, real HTTP."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.integration.harness import mitmweb_options, Proxy, Upstream, free_port, request

pytestmark = pytest.mark.integration


def write_blueprint(folder: Path, text: str, name: str = "blueprint.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def gateway(tmp_path: Path, upstream: Upstream, start_proxy) -> Proxy:  # type: ignore[no-untyped-def]
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "users.py").write_text(
        textwrap.dedent(
            """
            import asyncio, time

            def handler(request):
                return {"id": int(request.params["id"]), "q": request.query.get("q"), "agent": request.headers.get("user-agent")}

            async def slow(request):
                await asyncio.sleep(5)
                return {"late": True}

            def broken(request):
                raise RuntimeError("secret internals")

            def created(request):
                return {"status": 201, "headers": {"X-Created": "yes"}, "body": {"got": request.json}}
            """
        )
    )
    blueprint = write_blueprint(
        tmp_path,
        f"""
        name: integration
        plugins:
          proxy:
            config:
              targets: [{{name: up-1, url: "{upstream.url}/base"}}]
              transform_response: {{headers: {{X-Via: backworks}}}}
        endpoints:
          - path: /static/{{name}}
            handler: static
            config:
              static:
                status: 202
                headers: {{X-Name: "{{{{path.name}}}}"}}
                body: {{hello: "{{{{path.name}}}}", q: "{{{{query.q}}}}"}}
          - path: /users/{{id:int}}
            handler: handlers/users.py
          - path: /users/me
            handler: static
            config: {{static: {{body: me}}}}
          - path: /slow
            handler: handlers/users.py:slow
            config: {{python: {{timeout: 0.3}}}}
          - path: /broken
            handler: handlers/users.py:broken
          - path: /things
            method: POST
            handler: handlers/users.py:created
          - path: /inline
            handler: |
              async def handler(request):
                  return [request.method, request.request_id]
          - path: /api/items/{{id}}
            methods: [GET, DELETE]
            handler: proxy
            config:
              proxy: {{path: "/items/{{id}}"}}
          - path: /api/{{rest:path}}
            method: ANY
            handler: proxy
            config:
              proxy: {{strip_prefix: /api, add_prefix: /v2}}
        """,
    )
    return start_proxy(blueprint)


def test_static_endpoint_renders_templates(gateway: Proxy) -> None:
    reply = gateway.get("/static/ada?q=%7B%7Benv.HOME%7D%7D")
    assert reply.status == 202
    assert reply.header("X-Name") == "ada"
    # a value from the request is data, never evaluated again as a template
    assert reply.json == {"hello": "ada", "q": "{{env.HOME}}"}


def test_literal_route_wins_over_parameter(gateway: Proxy) -> None:
    assert gateway.get("/users/me").body == b"me"
    assert gateway.get("/users/42?q=x", headers={"User-Agent": "pytest"}).json == {"id": 42, "q": "x", "agent": "pytest"}
    # {id:int} does not take letters, and nothing else matches
    assert gateway.get("/users/abc").status == 404


def test_python_handler_structured_reply(gateway: Proxy) -> None:
    reply = gateway.send("POST", "/things", body=b'{"a": [1, 2]}', headers={"Content-Type": "application/json"})
    assert reply.status == 201
    assert reply.header("X-Created") == "yes"
    assert reply.json == {"got": {"a": [1, 2]}}


def test_inline_async_handler_sees_request_id(gateway: Proxy) -> None:
    reply = gateway.get("/inline", headers={"X-Request-ID": "abc-123"})
    assert reply.json == ["GET", "abc-123"]


def test_handler_exception_is_500_json_without_traceback(gateway: Proxy) -> None:
    reply = gateway.get("/broken")
    assert reply.status == 500
    body = reply.json
    assert set(body) == {"error", "status", "request_id"}
    assert body["status"] == 500
    assert "secret internals" not in reply.body.decode()
    log = gateway.wait_for_log("secret internals")
    assert body["request_id"] in log  # the traceback is in the log, tied to the request id


def test_handler_timeout_is_504(gateway: Proxy) -> None:
    reply = gateway.get("/slow")
    assert reply.status == 504
    assert reply.json["status"] == 504


def test_method_not_allowed_lists_allowed_methods(gateway: Proxy) -> None:
    reply = gateway.send("PUT", "/users/1")
    assert reply.status == 405
    assert reply.header("Allow") == "GET, HEAD"
    assert reply.json["status"] == 405
    # a path whose methods do not fit falls through to a broader route that takes any method
    assert gateway.send("PUT", "/api/items/1").json["path"] == "/base/v2/items/1"


def test_proxy_rewrites_path_and_forwards_headers(gateway: Proxy, upstream: Upstream) -> None:
    reply = gateway.get(
        "/api/items/7?x=1",
        headers={"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "X-Keep": "yes", "X-Forwarded-For": "10.0.0.9"},
    )
    assert reply.status == 200
    assert reply.json["path"] == "/base/items/7"
    assert reply.json["query"] == "x=1"
    assert reply.header("X-Via") == "backworks"
    seen = upstream.received[-1]
    assert seen.headers["X-Keep"] == "yes"
    assert "X-Hop" not in seen.headers  # named by Connection: hop-by-hop, never forwarded
    assert seen.headers["Host"] == f"127.0.0.1:{upstream.port}"
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"  # a client's own is dropped: no server.trusted_proxies
    assert seen.headers["X-Forwarded-Proto"] == "http"
    assert seen.headers["X-Forwarded-Host"] == f"127.0.0.1:{gateway.port}"
    assert seen.headers["X-Request-ID"]


def test_proxy_prefixes_and_bodies(gateway: Proxy, upstream: Upstream) -> None:
    reply = gateway.send("POST", "/api/orders/9", body=b"x" * 100_000)
    assert reply.status == 200
    assert reply.json["path"] == "/base/v2/orders/9"
    assert upstream.received[-1].body == b"x" * 100_000


def test_proxy_upstream_down_is_502(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    dead = free_port()
    blueprint = write_blueprint(
        tmp_path,
        f"""
        name: dead
        plugins:
          proxy: {{config: {{targets: [{{name: gone, url: "http://127.0.0.1:{dead}"}}]}}}}
        endpoints:
          - {{path: /x, handler: proxy}}
        """,
    )
    proxy = start_proxy(blueprint)
    reply = proxy.get("/x")
    assert reply.status == 502
    assert reply.json["status"] == 502
    assert "gone" in reply.json["error"]


def test_proxy_slow_upstream_is_504(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    slow = make_upstream("slow", delay=3.0)
    blueprint = write_blueprint(
        tmp_path,
        f"""
        name: slow
        plugins:
          proxy: {{config: {{targets: [{{name: slow, url: "{slow.url}"}}], timeout: 0.3}}}}
        endpoints:
          - {{path: /x, handler: proxy}}
        """,
    )
    reply = start_proxy(blueprint).get("/x")
    assert reply.status == 504
    assert reply.json["status"] == 504


class TestProxyModes:
    """Gateway use and proxy use from one `mitmdump -s backworks.py --set blueprint=FILE`."""

    BLUEPRINT = """
        name: modes
        endpoints:
          - {path: /mocked, handler: static, config: {static: {body: {mocked: true}}}}
        """

    def test_regular_mode_direct_and_proxied_clients(self, tmp_path: Path, upstream: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
        proxy = start_proxy(write_blueprint(tmp_path, self.BLUEPRINT))
        # a client that connects to the gateway itself
        assert proxy.get("/mocked").json == {"mocked": True}
        # a client that uses it as its HTTP proxy: known endpoints are answered ...
        assert proxy.get(f"{upstream.url}/mocked").json == {"mocked": True}
        assert upstream.received == []
        # ... and everything else passes through to the real server
        passed = proxy.get(f"{upstream.url}/real?a=1")
        assert passed.json["upstream"] == "up-1"
        assert upstream.received[-1].path == "/real"
        # a direct request nobody answers is a 404, never a request to the proxy itself
        missing = proxy.get("/nothing")
        assert missing.status == 404
        assert missing.json["error"] == "no endpoint matches GET /nothing"

    def test_reverse_mode_unmatched_is_404_by_default(self, tmp_path: Path, upstream: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
        proxy = start_proxy(write_blueprint(tmp_path, self.BLUEPRINT), "--mode", f"reverse:{upstream.url}")
        assert proxy.get("/mocked").json == {"mocked": True}
        assert proxy.get("/other").status == 404
        assert upstream.received == []

    def test_reverse_mode_passthrough_when_asked(self, tmp_path: Path, upstream: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
        text = self.BLUEPRINT.replace("name: modes", "name: modes\n        server: {unmatched: passthrough}")
        proxy = start_proxy(write_blueprint(tmp_path, text), "--mode", f"reverse:{upstream.url}")
        assert proxy.get("/other").json["path"] == "/other"
        assert proxy.get("/mocked").json == {"mocked": True}

    def test_regular_mode_not_found_when_asked(self, tmp_path: Path, upstream: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
        text = self.BLUEPRINT.replace("name: modes", "name: modes\n        server: {unmatched: not_found}")
        proxy = start_proxy(write_blueprint(tmp_path, text))
        assert proxy.get(f"{upstream.url}/real").status == 404
        assert upstream.received == []

    def test_host_globs_select_endpoints(self, tmp_path: Path, upstream: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
        blueprint = write_blueprint(
            tmp_path,
            """
            name: hosts
            endpoints:
              - {path: /who, host: "api.*", handler: static, config: {static: {body: api}}}
              - {path: /who, handler: static, config: {static: {body: any}}}
            """,
        )
        proxy = start_proxy(blueprint)
        assert proxy.get("http://api.example.test/who").body == b"api"
        assert proxy.get("http://www.example.test/who").body == b"any"


def test_invalid_blueprint_at_startup_exits_with_located_errors(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    blueprint = write_blueprint(
        tmp_path,
        """
        name: broken
        endpoints:
          - path: /a
            handler: statik
          - path: /b
            handler: static
            config: {static: {staus: 200}}
        """,
    )
    proxy = start_proxy(blueprint, expect_failure=True)
    assert proxy.wait_exit() != 0
    log = proxy.log()
    assert f"{blueprint}:5:14: endpoints[0].handler: unknown handler 'statik'; did you mean 'static'?" in log
    assert f"{blueprint}:8:23: endpoints[1].config.static.staus: unknown key 'staus'; did you mean 'status'?" in log


def test_mitmweb_serves_the_same_and_shows_comments(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    import json


    blueprint = write_blueprint(
        tmp_path,
        """
        name: web
        endpoints:
          - {path: /hello, handler: static, config: {static: {body: {hi: 1}}}}
        """,
    )
    web_port = free_port()
    extra, headers = mitmweb_options(web_port)
    proxy = start_proxy(blueprint, *extra, tool="mitmweb")
    assert proxy.get("/hello").json == {"hi": 1}
    from tests.integration.harness import wait_for_port

    wait_for_port(web_port)
    flows = json.loads(request("GET", "/flows", port=web_port, headers=headers).body)
    comments = [f.get("comment", "") for f in flows]
    assert any('endpoint="GET /hello" handler=static' in c for c in comments), comments


def test_compressed_request_body_reaches_upstream_byte_for_byte(gateway: Proxy, upstream: Upstream) -> None:
    import gzip

    compressed = gzip.compress(b'{"a": 1}')
    reply = gateway.send("POST", "/api/x", body=compressed, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert reply.status == 200
    seen = upstream.received[-1]
    # aiohttp's server decodes the body itself: it only gets `{"a": 1}` back if the gzip bytes
    # arrived intact (a decoded body still labelled gzip fails to decode there)
    assert seen.headers["Content-Encoding"] == "gzip"
    assert seen.body == b'{"a": 1}'
    assert reply.json["body"] == '{"a": 1}'


def test_named_pools_get_plugin_level_and_their_own_transforms(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    default, orders = make_upstream("default"), make_upstream("orders")
    blueprint = write_blueprint(
        tmp_path,
        f"""
        name: pools
        plugins:
          proxy:
            config:
              targets: [{{name: d, url: "{default.url}"}}]
              transform_request: {{headers: {{X-Level: plugin, X-Plugin: "yes"}}}}
              transform_response: {{headers: {{X-Out: plugin}}}}
              upstreams:
                orders:
                  targets: [{{name: o, url: "{orders.url}"}}]
                  transform_request: {{headers: {{X-Level: pool}}}}
                  transform_response: {{headers: {{X-Out: pool}}}}
        endpoints:
          - {{path: /a, handler: proxy}}
          - path: /o
            handler: proxy
            config:
              proxy:
                upstream: orders
                transform_request: {{headers: {{X-Endpoint: "{{{{header.X-Client}}}}"}}}}
        """,
    )
    proxy = start_proxy(blueprint)
    assert proxy.get("/a").header("X-Out") == "plugin"
    assert default.received[-1].headers["X-Level"] == "plugin"
    reply = proxy.get("/o", headers={"X-Client": "c1"})
    assert reply.json["upstream"] == "orders"
    # requests: plugin level, then the pool, then the endpoint; responses: the reverse
    seen = orders.received[-1].headers
    assert (seen["X-Plugin"], seen["X-Level"], seen["X-Endpoint"]) == ("yes", "pool", "c1")
    assert reply.header("X-Out") == "plugin"
