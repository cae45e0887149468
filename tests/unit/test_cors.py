"""The cors middleware: its settings, its decisions, and real compiled gateways answering
preflights (routed by backworks_core.gateway to the endpoint of the method they ask about)."""

from __future__ import annotations

import pytest
from mitmproxy import http
from pydantic import ValidationError

from addons.cors import CorsMiddlewareConfig, CorsPolicy, OriginMatcher, Refusal, merge_vary, normalize_origin
from backworks_core.gateway import PREFLIGHT, is_preflight

from .conftest import body_json, make_flow

APP = "https://app.example.com"

BLUEPRINT = """
name: cors
plugins:
  auth: {{config: {{jwt_secret: "0123456789abcdef0123456789abcdef"}}}}
middlewares:
  - name: cors
    plugin: cors
    config:
      path: "/api/*"
      origins: ["https://app.example.com", "https://*.example.org", "http://127.0.0.1:3000"]
      {methods}
      headers: [Content-Type, X-Trace]
      expose_headers: [X-Request-ID, X-Total]
      credentials: true
      max_age: 10m
  - name: open
    plugin: cors
    config: {{origins: ["*"]}}
  - name: guard
    plugin: auth
    config: {{path: "/api/private"}}
endpoints:
  - path: /api/items
    method: [GET, PUT]
    handler: static
    config: {{static: {{body: {{items: []}}, headers: {{Access-Control-Allow-Origin: "*", Vary: Accept}}}}}}
  - path: /api/items/{{id:int}}
    method: DELETE
    handler: static
    config: {{static: {{status: 204, body: ""}}}}
  - path: /api/boom
    handler: handlers/boom.py
  - path: /api/private
    method: [GET, PUT]
    handler: static
    config: {{static: {{body: secret}}}}
  - path: /api/options
    method: [GET, OPTIONS]
    handler: static
    config: {{static: {{body: own-options}}}}
  - path: /public
    method: [GET, POST]
    handler: static
    config: {{static: {{body: public}}}}
    middleware: [open]
  - path: /plain
    handler: static
    config: {{static: {{body: plain}}}}
"""


@pytest.fixture
def gateway(project, compile_gateway):  # type: ignore[no-untyped-def]
    def make(methods: str = ""):
        project.write("handlers/boom.py", "def handler(request):\n    raise RuntimeError('boom')\n")
        return compile_gateway(project.blueprint(BLUEPRINT.format(methods=methods)))

    return make


def preflight_headers(method: str, origin: str = APP, headers: str | None = None) -> dict[str, str]:
    out = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        out["Access-Control-Request-Headers"] = headers
    return out


# -- settings -------------------------------------------------------------------------------


def config(**kwargs) -> CorsMiddlewareConfig:  # type: ignore[no-untyped-def]
    return CorsMiddlewareConfig.model_validate(kwargs)


def error_of(**kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as info:
        config(**kwargs)
    return str(info.value)


def test_star_with_credentials_is_a_load_error_naming_the_fix() -> None:
    message = error_of(origins=["*"], credentials=True)
    assert "credentials: true cannot be combined with origins: ['*']" in message
    assert "list the origins" in message and "https://*.example.com" in message
    config(origins=["*"])  # fine without credentials
    config(origins=["https://*.example.com"], credentials=True)  # a pattern reflects the origin


@pytest.mark.parametrize(
    ("origin", "message"),
    [
        ("https://app.example.com/", "an origin has no path, query or fragment: write https://app.example.com"),
        ("https://app.example.com/api", "an origin has no path"),
        ("https://app.example.com?x=1", "an origin has no path"),
        ("app.example.com", "expected an origin such as https://app.example.com"),
        ("null", "the 'null' origin is not allowed"),
        ("https://user@app.example.com", "no user name or password"),
        ("https://app.*.example.com", "a wildcard must be the whole leftmost label"),
        ("https://*example.com", "a wildcard must be the whole leftmost label"),
        ("https://*.com", "would match every site under .com"),
        ("http://127.0.0.1:70000", "port 70000"),
        ("https://exa mple.com", "expected an origin"),
    ],
)
def test_bad_origins_are_refused(origin: str, message: str) -> None:
    assert message in error_of(origins=[origin])


def test_origins_are_normalized() -> None:
    assert normalize_origin("HTTPS://App.Example.COM:443") == APP
    assert normalize_origin("http://localhost:80") == "http://localhost"
    assert normalize_origin("http://[::1]:8080") == "http://[::1]:8080"
    assert normalize_origin("http://*.localhost:3000") == "http://*.localhost:3000"
    assert config(origins=[APP, "https://APP.example.com"]).origins == [APP]


def test_other_config_errors() -> None:
    assert "list it alone" in error_of(origins=["*", APP])
    assert "'X Bad' is not a valid header name" in error_of(origins=[APP], headers=["X Bad"])
    assert "taken literally" in error_of(origins=[APP], credentials=True, expose_headers=["*"])
    assert "Field required" in error_of(methods=["GET"])
    assert "at least 1 item" in error_of(origins=[])
    assert "Extra inputs are not permitted" in error_of(origins=[APP], allow_origins=[APP])
    assert "unknown HTTP method 'FETCH'" in error_of(origins=[APP], methods=["fetch"])


def test_load_errors_are_located(project, load_errors) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: t
        middlewares:
          - name: c
            plugin: cors
            config: {path: "/*", origins: ["*"], credentials: true}
        endpoints:
          - {path: /a, handler: static, config: {static: {body: ok}}}
        """
    )
    (found,) = load_errors(path)
    assert found.key_path == "middlewares[0].config"
    assert "credentials: true cannot be combined with origins: ['*']" in found.message


# -- decisions ------------------------------------------------------------------------------


def test_origin_matcher() -> None:
    matcher = OriginMatcher(config(origins=[APP, "https://*.example.org", "http://*.localhost:3000"]).origins)
    assert matcher.allows(APP)
    assert matcher.allows("https://APP.example.com:443")
    assert not matcher.allows("http://app.example.com")  # another scheme
    assert not matcher.allows("https://app.example.com:8443")  # another port
    assert not matcher.allows("https://evil-app.example.com")
    assert matcher.allows("https://a.example.org")
    assert matcher.allows("https://a.b.example.org")  # one label or more
    assert not matcher.allows("https://example.org")  # never the bare domain
    assert not matcher.allows("https://a.example.org.evil.com")
    assert not matcher.allows("https://aexample.org")
    assert not matcher.allows("http://a.example.org")
    assert matcher.allows("http://web.localhost:3000")
    assert not matcher.allows("http://web.localhost:3001")
    assert not matcher.allows("null")
    assert not matcher.allows("https://*.example.org")
    assert not matcher.allows("")
    assert OriginMatcher(["*"]).allows("null")


def test_policy_preflight_and_actual() -> None:
    policy = CorsPolicy(config(origins=[APP], methods=["GET", "PUT"], credentials=True, max_age=1.9, expose_headers=["X-Total"]))
    allowed = policy.preflight(APP, "PUT", "x-anything, Content-Type")
    assert allowed == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "GET, PUT",
        "Access-Control-Allow-Headers": "x-anything, content-type",  # echoed: headers not set
        "Access-Control-Max-Age": "1",
    }
    assert policy.preflight(APP, "DELETE", "") == Refusal("method", "method 'DELETE' is not allowed (allowed: GET, PUT)")
    assert policy.preflight("https://x.test", "GET", "") == Refusal("origin", "origin 'https://x.test' is not allowed")
    assert isinstance(policy.preflight(APP, "GET", "bad header"), Refusal)
    assert policy.method_allowed("HEAD")  # as GET
    assert policy.actual_headers(APP, "GET") == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": "X-Total",
    }
    assert policy.actual_headers(APP, "POST") == Refusal("method", "method 'POST' is not allowed")
    star = CorsPolicy(config(origins=["*"], methods=["ANY"], headers=["*"]))
    assert star.preflight("https://x.test", "PURGE", "x-a") == {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "PURGE",
        "Access-Control-Allow-Headers": "x-a",
    }
    default = CorsPolicy(config(origins=[APP]))
    assert default.methods == ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    listed = CorsPolicy(config(origins=[APP], headers=["X-Trace"]))
    assert listed.preflight(APP, "GET", "")["Access-Control-Allow-Headers"] == "X-Trace"  # type: ignore[index]
    assert listed.preflight(APP, "GET", "x-other") == Refusal("header", "header 'x-other' is not allowed (allowed: X-Trace)")


def test_merge_vary() -> None:
    headers = http.Headers(Vary="Accept")
    merge_vary(headers, ("Origin",))
    merge_vary(headers, ("origin", "Access-Control-Request-Method"))
    assert headers["Vary"] == "Accept, Origin, Access-Control-Request-Method"
    star = http.Headers(Vary="*")
    merge_vary(star, ("Origin",))
    assert star.get_all("vary") == ["*"]


def test_is_preflight() -> None:
    assert is_preflight(make_flow("OPTIONS", "/", headers=preflight_headers("PUT")).request)
    assert not is_preflight(make_flow("OPTIONS", "/", headers={"Origin": APP}).request)
    assert not is_preflight(make_flow("OPTIONS", "/", headers={"Access-Control-Request-Method": "PUT"}).request)
    assert not is_preflight(make_flow("GET", "/", headers=preflight_headers("PUT")).request)


# -- through a compiled gateway -------------------------------------------------------------


async def test_preflight_is_answered_for_an_endpoint_without_options(gateway, send) -> None:  # type: ignore[no-untyped-def]
    flow = await send(gateway(), "OPTIONS", "/api/items", headers=preflight_headers("PUT", headers="Content-Type, X-Trace"))
    response = flow.response
    assert response.status_code == 204
    assert response.content == b""
    assert "content-length" not in response.headers
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Allow-Methods"] == "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert response.headers["Access-Control-Allow-Headers"] == "Content-Type, X-Trace"
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert response.headers["Vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    assert response.headers["X-Request-ID"]
    assert "Access-Control-Expose-Headers" not in response.headers
    assert 'endpoint="GET,PUT /api/items"' in flow.comment  # routed to the endpoint of the method asked about
    assert "cors=preflight" in flow.comment and "answered_by=cors" in flow.comment


async def test_preflight_with_a_pattern_origin_and_a_parameter_route(gateway, send) -> None:  # type: ignore[no-untyped-def]
    flow = await send(gateway(), "OPTIONS", "/api/items/7", headers=preflight_headers("DELETE", origin="https://a.b.example.org"))
    assert flow.response.status_code == 204
    assert flow.response.headers["Access-Control-Allow-Origin"] == "https://a.b.example.org"


@pytest.mark.parametrize(
    ("headers", "reason", "message"),
    [
        (preflight_headers("PUT", origin="https://evil.test"), "origin", "origin 'https://evil.test' is not allowed"),
        (preflight_headers("PUT", origin="https://example.org"), "origin", "origin 'https://example.org' is not allowed"),
        (preflight_headers("PUT", headers="X-Secret"), "header", "header 'x-secret' is not allowed (allowed: Content-Type, X-Trace)"),
    ],
)
async def test_refused_preflight_is_403_without_cors_headers(gateway, send, headers, reason, message) -> None:  # type: ignore[no-untyped-def]
    flow = await send(gateway(), "OPTIONS", "/api/items", headers=headers)
    response = flow.response
    assert response.status_code == 403
    assert body_json(response)["error"] == f"CORS preflight refused: {message}"
    assert not [name for name in response.headers if name.lower().startswith("access-control-")]
    assert response.headers["Vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    assert f"cors=refused:{reason}" in flow.comment


async def test_preflight_for_a_method_outside_the_filter(gateway, send) -> None:  # type: ignore[no-untyped-def]
    # methods: [GET, PUT] is also the filter: a DELETE preflight is not the middleware's, so the
    # OPTIONS request is routed as before: 405, with no CORS header, the handler never called.
    flow = await send(gateway("methods: [GET, PUT]"), "OPTIONS", "/api/items/7", headers=preflight_headers("DELETE"))
    assert flow.response.status_code == 405
    assert flow.response.headers["Allow"] == "DELETE"
    assert "access-control-allow-origin" not in flow.response.headers
    # the same middleware referenced by an endpoint refuses the method itself
    flow = await send(gateway("methods: [GET, PUT]"), "OPTIONS", "/public", headers=preflight_headers("PATCH"))
    assert flow.response.status_code == 405  # /public has no PATCH endpoint: not rerouted


async def test_method_refused_by_a_referenced_middleware(project, compile_gateway, send) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: t
        middlewares:
          - name: c
            plugin: cors
            config: {origins: ["https://app.example.com"], methods: [GET]}
        endpoints:
          - {path: /a, method: [GET, DELETE], handler: static, config: {static: {body: ok}}, middleware: [c]}
        """
    )
    flow = await send(compile_gateway(path), "OPTIONS", "/a", headers=preflight_headers("DELETE"))
    assert flow.response.status_code == 403
    assert body_json(flow.response)["error"] == "CORS preflight refused: method 'DELETE' is not allowed (allowed: GET)"


async def test_without_a_cors_middleware_options_routes_as_before(gateway, send) -> None:  # type: ignore[no-untyped-def]
    gw = gateway()
    # /plain has no cors: the preflight is a 405, as any OPTIONS there
    flow = await send(gw, "OPTIONS", "/plain", headers=preflight_headers("GET"))
    assert flow.response.status_code == 405
    assert PREFLIGHT not in flow.comment
    # an OPTIONS that is not a preflight on an endpoint listing OPTIONS reaches its handler
    flow = await send(gw, "OPTIONS", "/api/options", headers={"Origin": APP})
    assert flow.response.status_code == 200
    assert flow.response.content == b"own-options"
    assert flow.response.headers["Access-Control-Allow-Origin"] == APP  # an actual request: cors applies
    # a preflight there is answered by cors, not by the endpoint's OPTIONS handler
    flow = await send(gw, "OPTIONS", "/api/options", headers=preflight_headers("GET"))
    assert flow.response.status_code == 204


async def test_preflight_never_reaches_other_middlewares(gateway, send) -> None:  # type: ignore[no-untyped-def]
    gw = gateway()
    # auth guards /api/private; a preflight has no token yet is answered, not denied
    flow = await send(gw, "OPTIONS", "/api/private", headers=preflight_headers("PUT"))
    assert flow.response.status_code == 204
    assert "auth" not in flow.comment
    # the actual request is denied by auth, and the 401 still carries CORS headers (cors runs first)
    flow = await send(gw, "PUT", "/api/private", headers={"Origin": APP})
    assert flow.response.status_code == 401
    assert flow.response.headers["Access-Control-Allow-Origin"] == APP
    assert flow.response.headers["Access-Control-Allow-Credentials"] == "true"


async def test_actual_request_gets_cors_headers(gateway, send) -> None:  # type: ignore[no-untyped-def]
    flow = await send(gateway(), "GET", "/api/items", headers={"Origin": "https://x.example.org"})
    response = flow.response
    assert response.status_code == 200
    # the handler's own `Access-Control-Allow-Origin: *` is replaced
    assert response.headers.get_all("Access-Control-Allow-Origin") == ["https://x.example.org"]
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Expose-Headers"] == "X-Request-ID, X-Total"
    assert response.headers["Vary"] == "Accept, Origin"
    assert "Access-Control-Allow-Methods" not in response.headers
    assert "cors=allowed" in flow.comment


async def test_error_answers_get_cors_headers(gateway, send) -> None:  # type: ignore[no-untyped-def]
    flow = await send(gateway(), "GET", "/api/boom", headers={"Origin": APP})
    assert flow.response.status_code == 500
    assert flow.response.headers["Access-Control-Allow-Origin"] == APP


async def test_refused_origin_on_an_actual_request(gateway, send) -> None:  # type: ignore[no-untyped-def]
    flow = await send(gateway(), "GET", "/api/items", headers={"Origin": "https://evil.test"})
    response = flow.response
    assert response.status_code == 200  # the request runs; the browser will not let the page read it
    assert not [name for name in response.headers if name.lower().startswith("access-control-")]
    assert response.headers["Vary"] == "Accept, Origin"
    assert "cors=refused:origin" in flow.comment


async def test_request_without_origin_is_untouched(gateway, send) -> None:  # type: ignore[no-untyped-def]
    flow = await send(gateway(), "GET", "/api/items")
    assert flow.response.headers["Access-Control-Allow-Origin"] == "*"  # the handler's own, left alone
    assert flow.response.headers["Vary"] == "Accept"
    assert "cors=" not in flow.comment


async def test_star_origins_without_credentials(gateway, send) -> None:  # type: ignore[no-untyped-def]
    gw = gateway()
    flow = await send(gw, "POST", "/public", headers={"Origin": "https://anyone.test"})
    assert flow.response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in flow.response.headers
    assert "Vary" not in flow.response.headers
    flow = await send(gw, "OPTIONS", "/public", headers=preflight_headers("POST", origin="null", headers="x-a"))
    assert flow.response.status_code == 204
    assert flow.response.headers["Access-Control-Allow-Origin"] == "*"
    assert flow.response.headers["Access-Control-Allow-Headers"] == "x-a"
