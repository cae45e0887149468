"""backworks_core.gateway: routing a flow to its handler, and the answers Backworks gives itself."""

from __future__ import annotations

import logging
import re

import pytest

from addons import builtin_plugins
from backworks_core.context import json_error, request_id_for
from backworks_core.gateway import glob_to_regex
from backworks_core.plugins import Plugin, PluginRegistry

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
    ],
)
def test_glob_to_regex(glob, path, matches):
    assert bool(glob_to_regex(glob).match(path)) is matches


async def test_an_unmatched_path_of_invalid_utf8_is_a_404_not_a_500(make_gateway, send):
    # Found by tests/reliability/test_request_fuzz.py: the 404's JSON could not be encoded.
    gateway = make_gateway()
    flow = await send(gateway, "GET", "/x", reverse=True)
    flow.request.data.path = b"/hello/\xff\xfe"
    flow.response = None
    await gateway.handle(flow, reverse_mode=True, direct=False)
    assert_error_body(flow.response, 404, "no endpoint matches GET /hello/\udcff\udcfe")
