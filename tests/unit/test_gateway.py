"""backworks_core.gateway: routing a flow to its handler, and the answers Backworks gives itself."""

from __future__ import annotations

import logging
import re

import pytest

from addons import builtin_plugins
from backworks_core.context import json_error, request_id_for
from backworks_core.paths import PathGlob
from backworks_core.plugins import Plugin, PluginRegistry
from backworks_core.telemetry import record_for

from .conftest import body_json, make_flow

BLUEPRINT = """
name: gateway-test
{server}
endpoints:
  - path: /hello
    handler: static
    config: {{static: {{body: {{hello: world}}}}}}
  - path: /items
    method: [GET, POST]
    handler: static
    config: {{static: {{status: 200, body: items}}}}
  - path: "/users/{{id:int}}"
    handler: "users.py:show"
  - path: /site
    host: "*.example.com"
    handler: static
    config: {{static: {{body: example}}}}
  - path: /boom
    handler: boom
"""

HEX32 = re.compile(r"^[0-9a-f]{32}$")


class BoomHandler:
    async def __call__(self, ctx):
        raise RuntimeError("plugin handler exploded: secret-abc")


class BoomPlugin(Plugin):
    name = "boom"
    handlers = ("boom",)

    def build_handler(self, handler, endpoint, config):
        return BoomHandler()


@pytest.fixture
def boom_registry() -> PluginRegistry:
    return PluginRegistry([*builtin_plugins(), BoomPlugin])


@pytest.fixture
def make_gateway(project, compile_gateway, boom_registry):
    project.write("users.py", "def show(request):\n    return {'user': int(request.params['id'])}\n")

    def _make(server: str = ""):
        path = project.blueprint(BLUEPRINT.format(server=server))
        return compile_gateway(path, registry_=boom_registry)

    return _make


def assert_error_body(response, status: int, message: str | None = None) -> str:
    body = body_json(response)
    assert set(body) == {"error", "status", "request_id"}
    assert response.status_code == status
    assert body["status"] == status
    if message is not None:
        assert body["error"] == message
    assert response.headers["X-Request-ID"] == body["request_id"]
    return body["request_id"]


# -- matched --------------------------------------------------------------------------------


async def test_matched_request_is_answered_and_commented(make_gateway, send):
    gateway = make_gateway()
    flow = await send(gateway, "GET", "/hello?x=1")
    assert flow.response.status_code == 200
    assert body_json(flow.response) == {"hello": "world"}
    assert flow.comment == 'backworks: endpoint="GET /hello" handler=static'


async def test_comment_keeps_what_was_there(make_gateway, send):
    gateway = make_gateway()
    flow = make_flow("GET", "/users/3")
    flow.comment = "from the user"
    await gateway.handle(flow, reverse_mode=True, direct=False)
    assert body_json(flow.response) == {"user": 3}
    assert flow.comment == 'from the user\nbackworks: endpoint="GET /users/{id:int}" handler=python'


async def test_host_restricted_endpoint(make_gateway, send):
    gateway = make_gateway()
    flow = await send(gateway, "GET", "/site", host="www.example.com")
    assert flow.response.get_content() == b"example"
    other = await send(gateway, "GET", "/site", host="www.other.test")
    assert_error_body(other.response, 404, "no endpoint matches GET /site")


async def test_constrained_parameter_that_does_not_fit_is_404(make_gateway, send):
    flow = await send(make_gateway(), "GET", "/users/abc")
    assert_error_body(flow.response, 404, "no endpoint matches GET /users/abc")


# -- unmatched: 404 or passthrough ----------------------------------------------------------


async def test_unmatched_in_reverse_mode_is_404(make_gateway, send):
    flow = await send(make_gateway(), "GET", "/nope?a=b", reverse=True)
    assert_error_body(flow.response, 404, "no endpoint matches GET /nope")
    assert flow.comment == "backworks: no endpoint → 404"


async def test_unmatched_in_regular_mode_passes_through(make_gateway, send):
    flow = await send(make_gateway(), "GET", "/nope", reverse=False)
    assert flow.response is None
    assert flow.comment == "backworks: no endpoint, passed through"


async def test_unmatched_not_found_setting_wins_in_regular_mode(make_gateway, send):
    gateway = make_gateway("server: {unmatched: not_found}")
    flow = await send(gateway, "GET", "/nope", reverse=False)
    assert_error_body(flow.response, 404)


async def test_unmatched_passthrough_setting_wins_in_reverse_mode(make_gateway, send):
    gateway = make_gateway("server: {unmatched: passthrough}")
    flow = await send(gateway, "GET", "/nope", reverse=True)
    assert flow.response is None


async def test_a_direct_request_is_never_passed_through(make_gateway, send):
    gateway = make_gateway("server: {unmatched: passthrough}")
    flow = await send(gateway, "GET", "/nope", reverse=False, direct=True)
    assert_error_body(flow.response, 404, "no endpoint matches GET /nope")


def test_unmatched_policy(make_gateway):
    default = make_gateway()
    assert default.unmatched_policy(reverse_mode=True) == "not_found"
    assert default.unmatched_policy(reverse_mode=False) == "passthrough"
    forced = make_gateway("server: {unmatched: not_found}")
    assert forced.unmatched_policy(reverse_mode=False) == "not_found"


# -- 405 ------------------------------------------------------------------------------------


async def test_wrong_method_is_405_with_allow(make_gateway, send):
    flow = await send(make_gateway(), "DELETE", "/items")
    assert_error_body(flow.response, 405, "method DELETE is not allowed here (allowed: GET, HEAD, POST)")
    assert flow.response.headers["Allow"] == "GET, HEAD, POST"
    assert flow.comment == "backworks: method not allowed → 405"


async def test_wrong_method_on_a_parameter_route(make_gateway, send):
    flow = await send(make_gateway(), "PUT", "/users/1")
    assert flow.response.status_code == 405
    assert flow.response.headers["Allow"] == "GET, HEAD"


# -- request ids ----------------------------------------------------------------------------


async def test_request_id_is_taken_from_the_client(make_gateway, send):
    flow = await send(make_gateway(), "GET", "/nope", headers={"X-Request-ID": "client.id-1:2"})
    assert assert_error_body(flow.response, 404) == "client.id-1:2"
    assert flow.metadata["backworks.request_id"] == "client.id-1:2"


@pytest.mark.parametrize("offered", [None, "has spaces", "x" * 129, "quote\"d", ""])
async def test_request_id_is_generated_when_missing_or_unsafe(make_gateway, send, offered):
    headers = {} if offered is None else {"X-Request-ID": offered}
    flow = await send(make_gateway(), "GET", "/nope", headers=headers)
    request_id = assert_error_body(flow.response, 404)
    assert HEX32.match(request_id)
    assert request_id != offered


def test_request_id_is_stable_for_a_flow():
    flow = make_flow("GET", "/")
    first = request_id_for(flow)
    assert request_id_for(flow) == first
    flow.request.headers["X-Request-ID"] = "later"
    assert request_id_for(flow) == first


def test_json_error_shape():
    response = json_error(418, "short and stout", "rid-1", {"Retry-After": "5"})
    assert response.status_code == 418
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Retry-After"] == "5"
    assert response.headers["X-Request-ID"] == "rid-1"
    assert response.get_content() == b'{"error":"short and stout","status":418,"request_id":"rid-1"}'


# -- failures fail closed -------------------------------------------------------------------


async def test_plugin_handler_that_raises_is_a_500(make_gateway, send, caplog):
    caplog.set_level(logging.ERROR)
    flow = await send(make_gateway(), "GET", "/boom", headers={"X-Request-ID": "boom-7"})
    assert assert_error_body(flow.response, 500, "the handler failed; see the gateway log for this request id") == "boom-7"
    assert b"secret-abc" not in flow.response.get_content()
    assert "secret-abc" in caplog.text
    assert "[boom-7]" in caplog.text
    assert flow.comment == 'backworks: endpoint="GET /boom" handler=boom'


# -- middleware path globs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "glob, path, matches",
    [
        ("/api/*", "/api/x", True),
        ("/api/*", "/api/x/y", True),
        ("/api/*", "/api", False),
        ("/api/*", "/apix", False),
        ("/api*", "/apix/y", True),
        ("/api/resources", "/api/resources", True),
        ("/api/resources", "/api/resources/1", False),
        ("/a.b", "/axb", False),
        ("/a.b", "/a.b", True),
        ("*", "/anything/at/all", True),
        ("/v?", "/v1", False),
        ("/api/*/users/*/delete", "/api/1/users/2/delete", True),
        ("/api/*/users/*/delete", "/api/users/delete", False),
        ("/api/*/users/*/delete", "/api/1/users/users/delete", True),
        ("/a*a", "/a", False),  # prefix and suffix never overlap
        ("/a*a", "/aa", True),
        ("*x*x*", "xx", True),
        ("*x*x*", "x", False),
        ("/a**b", "/ab", True),
    ],
)
def test_path_glob(glob, path, matches):
    assert PathGlob(glob).match(path) is matches


def test_path_glob_agrees_with_the_regex_it_replaces():
    import random

    rng = random.Random(17)
    for _ in range(3000):
        glob = "".join(rng.choice("ab*/") for _ in range(rng.randint(0, 7)))
        path = "".join(rng.choice("ab/") for _ in range(rng.randint(0, 9)))
        old = re.compile("^" + ".*".join(re.escape(part) for part in glob.split("*")) + "$", re.S)
        assert PathGlob(glob).match(path) is bool(old.match(path)), (glob, path)


async def test_an_unmatched_path_of_invalid_utf8_is_a_404_not_a_500(make_gateway, send):
    # Found by tests/reliability/test_request_fuzz.py: the 404's JSON could not be encoded.
    gateway = make_gateway()
    flow = await send(gateway, "GET", "/x", reverse=True)
    flow.request.data.path = b"/hello/\xff\xfe"
    flow.response = None
    await gateway.handle(flow, reverse_mode=True, direct=False)
    assert_error_body(flow.response, 404, "no endpoint matches GET /hello/\udcff\udcfe")


# -- one canonical path ---------------------------------------------------------------------

GUARDED = """
name: canonical-path
{server}
plugins:
  auth:
    config: {{jwt_secret: "0123456789abcdef0123456789abcdef-canonical"}}
middlewares:
  - {{name: guard, plugin: auth, config: {{path: "/admin/*"}}}}
endpoints:
{endpoints}
"""
CATCH_ALL = '  - {path: "/{rest:path}", method: ANY, handler: static, config: {static: {body: served}}}'
ADMIN_ONLY = '  - {path: "/admin/{rest:path}", method: ANY, handler: static, config: {static: {body: served}}}'


@pytest.fixture
def guarded(project, compile_gateway):
    def _make(server: str = "", endpoints: str = CATCH_ALL):
        return compile_gateway(project.blueprint(GUARDED.format(server=server, endpoints=endpoints)))

    return _make


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("/admin/secret", "/admin/secret"),
        ("/public/../admin/secret", "/admin/secret"),
        ("/public/%2e%2e/admin/secret", "/admin/secret"),
        ("/public/%2E%2e/admin/secret?x=%2e%2e&y", "/admin/secret?x=%2e%2e&y"),  # the query as it was
        ("//admin/secret", "/admin/secret"),
        ("/./admin/secret", "/admin/secret"),
        ("/%61dmin/secret", "/admin/secret"),
        ("/x/y/../../admin//./secret/", "/admin/secret/"),
    ],
)
async def test_every_spelling_of_the_admin_area_meets_the_filter_and_goes_on_canonical(guarded, send, raw, canonical):
    flow = await send(guarded(), "GET", raw)
    assert flow.response.status_code == 401, (raw, flow.response.get_content())
    assert flow.request.path == canonical


@pytest.mark.parametrize("raw", ["/admin%2fsecret", "/x/..;/admin/secret", "/a%252e%252e/admin", "/admin%5csecret", "/a%00", "/a%zz", "/;x/admin/secret", "/admin;x/secret", "/admin/secret%3Bx"])
@pytest.mark.parametrize("mode", ["reverse", "direct", "reverse-passthrough"])
async def test_an_ambiguous_path_the_blueprint_handles_is_a_400(guarded, send, raw, mode):
    gateway = guarded("server: {unmatched: passthrough}" if mode == "reverse-passthrough" else "", ADMIN_ONLY)
    flow = await send(gateway, "GET", raw, reverse=mode != "direct", direct=mode == "direct")
    request_id = assert_error_body(flow.response, 400)
    assert body_json(flow.response)["error"].startswith("request path refused: ")
    assert flow.comment.endswith("backworks: path refused → 400")
    from backworks_core.telemetry import record_for

    assert record_for(flow).error.startswith("request path refused: ") and request_id


async def test_regular_mode_passes_someone_elses_request_byte_for_byte(guarded, send):
    gateway = guarded("", ADMIN_ONLY)
    for raw in ["/other/./x//y", "/other%2fx", "/x/..;/y", "/a%zz?q=%2e", "/public/%2e%2e/x"]:
        flow = await send(gateway, "GET", raw, reverse=False)
        assert flow.response is None, raw
        assert flow.request.path == raw
    # ...but what the blueprint handles there is its own: canonical, or refused
    flow = await send(gateway, "GET", "/public/../admin/secret", reverse=False)
    assert flow.response.status_code == 401 and flow.request.path == "/admin/secret"
    flow = await send(gateway, "GET", "/admin%2Fsecret", reverse=False)  # the old reading matches /admin/…
    assert_error_body(flow.response, 400)


async def test_reverse_mode_passthrough_goes_on_canonical_unless_as_sent(guarded, send):
    canonical = guarded("server: {unmatched: passthrough}", ADMIN_ONLY)
    flow = await send(canonical, "GET", "/other/./x//y/%7e?q=1")
    assert flow.response is None and flow.request.path == "/other/x/y/~?q=1"
    assert_error_body((await send(canonical, "GET", "/other%2Fx")).response, 400)

    as_sent = guarded("server: {unmatched: passthrough, passthrough_path: as_sent}", ADMIN_ONLY)
    for raw in ["/other/./x//y/%7e?q=1", "/other%2Fx"]:
        flow = await send(as_sent, "GET", raw)
        assert flow.response is None and flow.request.path == raw
    flow = await send(as_sent, "GET", "/public/%2e%2e/admin/secret")  # an endpoint's: canonical, guarded
    assert flow.response.status_code == 401 and flow.request.path == "/admin/secret"
    assert_error_body((await send(as_sent, "GET", "/admin%2Fsecret")).response, 400)


async def test_reverse_mode_passthrough_as_sent_adds_nothing_either_way(guarded, send):
    """`backworks capture`: the upstream gets the client's request as it was, the client the answer."""
    from mitmproxy import http
    from mitmproxy.test import tutils

    from backworks_core.context import stamp_response

    sent = [("user-agent", "curl/8.5"), ("X-Forwarded-For", "10.0.0.1"), ("Via", "1.1 corp"), ("X-Custom", "a"), ("x-custom", "b"), ("traceparent", "bogus")]
    as_sent = guarded("server: {unmatched: passthrough, passthrough_path: as_sent}", ADMIN_ONLY)
    flow = await send(as_sent, "POST", "/other/./x?q=%2e", headers=sent, body=b'{"a": 1}')
    assert flow.response is None
    assert flow.request.headers.fields == tuple((k.encode(), v.encode()) for k, v in sent)  # order, case, every one
    assert flow.request.path == "/other/./x?q=%2e" and flow.request.raw_content == b'{"a": 1}'
    assert "backworks.request_id" not in flow.metadata and record_for(flow).request_id == ""
    flow.response = tutils.tresp(headers=http.Headers([(b"Content-Type", b"text/plain")]), content=b"ok")
    stamp_response(flow)
    assert flow.response.headers.fields == ((b"Content-Type", b"text/plain"),)

    # Backworks' own upstream (canonical passthrough) still gets the id and a trace context.
    canonical = guarded("server: {unmatched: passthrough}", ADMIN_ONLY)
    flow = await send(canonical, "GET", "/other", headers=sent)
    assert flow.request.headers["X-Request-ID"] == request_id_for(flow) and flow.request.headers["traceparent"] != "bogus"


def test_the_capture_blueprint_passes_paths_as_sent():
    import argparse
    from pathlib import Path

    import yaml

    from backworks_cli.cli import capture_blueprint

    args = argparse.Namespace(
        format="blueprint", max_examples=5, name=None, journal=None, include=None, methods=None, hosts=None,
        exclude=None, no_redact=False, redact_header=None, redact_field=None,
    )
    server = yaml.safe_load(capture_blueprint(args, Path("/tmp/out.yaml")))["server"]
    assert server["passthrough_path"] == "as_sent" and server["unmatched"] == "passthrough"


async def test_a_streamed_body_on_an_ambiguous_path_is_refused_too(guarded):
    from backworks_core.relay import StreamRelay
    from backworks_core.streaming import refuse_head

    gateway = guarded("", ADMIN_ONLY)
    flow = make_flow("POST", "/admin%2Fsecret", headers={"Content-Length": "100000000"})
    relay = StreamRelay()
    try:  # routed to the relay, whose job answers the 400 and drops the body
        assert await refuse_head(gateway, flow, reverse_mode=True, direct=False, relay=relay)
        assert flow.request.stream is True and "path refused" in flow.comment
        assert record_for(flow).error.startswith("request path refused: ")
    finally:
        await relay.stop()
