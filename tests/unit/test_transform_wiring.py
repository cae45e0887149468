"""Where transforms are wired in: the loader, the schema, the gateway around handlers, the
`transform` middleware and the proxy's chain (plugin → pool → config.proxy → endpoint)."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import pytest

from backworks_cli.cli import main
from backworks_core.transforms import EndpointTransform

from .conftest import body_json
from .test_cli import conforms, resolve


# -- the loader -----------------------------------------------------------------------------


def test_loader_accepts_an_endpoint_transform(project, load) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: t
        endpoints:
          - path: /a
            handler: static
            config: {static: {body: ok}}
            transform:
              request: {headers: {X-A: "1"}, path: {strip_prefix: /a}}
              response: {status_map: {404: 200}, body: {set: {ok: true}}}
          - path: /b
            handler: static
            config: {static: {body: ok}}
        """
    )
    first, second = load(path).endpoints
    assert isinstance(first.transform, EndpointTransform)
    assert first.transform.request.headers == {"X-A": "1"}
    assert first.transform.request.path.strip_prefix == "/a"
    assert first.transform.response.status_map == {404: 200}
    assert second.transform is None


def test_a_bad_regex_in_an_endpoint_transform_is_located(project, load_errors) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        r"""
        name: t
        endpoints:
          - path: /a
            handler: static
            config: {static: {body: ok}}
            transform:
              request:
                path:
                  rewrite:
                    - {pattern: "^/users/(\\d+$", replacement: "/people/\\1"}
              response:
                headers: {"Bad Name": x}
        """
    )
    found = load_errors(path)
    assert [(d.key_path, d.line) for d in found] == [
        ("endpoints[0].transform.request.path.rewrite[0].pattern", 10),
        ("endpoints[0].transform.response.headers", 12),
    ]
    line = str(found[0])
    assert line.startswith(f"{path}:10:")
    assert found[0].col > 0
    assert line.endswith(
        "endpoints[0].transform.request.path.rewrite[0].pattern: invalid regular expression "
        "'^/users/(\\\\d+$': missing ), unterminated subpattern at position 8"
    )
    assert "'Bad Name' is not a valid header name" in found[1].message


def test_an_unknown_key_in_an_endpoint_transform_is_located(project, load_errors) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: t
        endpoints:
          - path: /a
            handler: static
            config: {static: {body: ok}}
            transform:
              requests: {headers: {X-A: "1"}}
        """
    )
    found = load_errors(path)
    assert [(d.key_path, d.line) for d in found] == [("endpoints[0].transform.requests", 7)]


def test_a_bad_json_path_in_the_transform_middleware_is_located(project, load_errors) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: t
        middlewares:
          - name: reshape
            plugin: transform
            config:
              path: "/api/*"
              response:
                body: {remove: ["items[x]"], set: {ok: 1}}
        endpoints:
          - path: /api/a
            handler: static
            config: {static: {body: ok}}
        """
    )
    found = load_errors(path)
    assert [(d.key_path, d.line) for d in found] == [("middlewares[0].config.response.body.remove[0]", 8)]
    assert str(found[0]).startswith(f"{path}:8:")
    assert found[0].message == (
        "invalid JSON path 'items[x]': expected an index, * or a quoted key inside [], got 'x' at character 6"
    )


# -- the schema -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["schema"]) == 0
    return json.loads(buffer.getvalue())


def test_schema_describes_the_endpoint_transform(schema) -> None:  # type: ignore[no-untyped-def]
    def model(node: dict[str, Any]) -> dict[str, Any]:
        (ref,) = [option for option in node.get("anyOf", [node]) if option.get("type") != "null"]
        return resolve(schema, ref)

    transform = model(schema["$defs"]["EndpointSettings"]["properties"]["transform"])
    assert set(transform["properties"]) == {"request", "response"}

    request = model(transform["properties"]["request"])
    response = model(transform["properties"]["response"])
    assert {"headers", "remove_headers", "rename_headers", "path", "query", "body"} <= set(request["properties"])
    assert {"headers", "remove_headers", "rename_headers", "status_map", "body"} <= set(response["properties"])
    assert "path" not in response["properties"]

    endpoint = {"path": "/a", "handler": "static", "config": {"static": {}}}
    good = {"request": {"headers": {"X-A": "1"}, "path": {"strip_prefix": "/api"}}, "response": {"status_map": {"404": 200}}}
    assert conforms(schema, schema, {"name": "x", "endpoints": [{**endpoint, "transform": good}]})
    assert not conforms(schema, schema, {"name": "x", "endpoints": [{**endpoint, "transform": {"requests": {}}}]})
    assert not conforms(schema, schema, {"name": "x", "endpoints": [{**endpoint, "transform": {"request": {"status_map": {}}}}]})
    # `transform: null` loads, so the schema takes it too
    assert conforms(schema, schema, {"name": "x", "endpoints": [{**endpoint, "transform": None}]})


def test_schema_describes_the_transform_middleware(schema) -> None:  # type: ignore[no-untyped-def]
    middleware = {"name": "m", "plugin": "transform", "config": {"path": "/a", "request": {"headers": {"X": "1"}}}}
    base = {"name": "x", "endpoints": [{"path": "/a", "handler": "static", "config": {"static": {}}}]}
    assert conforms(schema, schema, {**base, "middlewares": [middleware]})
    typo = {**middleware, "config": {"path": "/a", "requests": {}}}
    assert not conforms(schema, schema, {**base, "middlewares": [typo]})


# -- the gateway: endpoint transforms around non-proxy handlers, and the middleware -----------

ORDER = """
name: order
middlewares:
  - name: reshape
    plugin: transform
    config:
      path: "/s*"
      methods: [GET]
      request:
        headers: {X-Stage: middleware}
        rename_headers: {X-A: X-B}
      response:
        headers: {X-Out: middleware}
        body: {rename: {r2: r3}}
endpoints:
  - path: /s
    method: [GET, POST]
    handler: static
    config:
      static:
        body: {r1: "{{header.X-C}}", stage: "{{header.X-Stage}}", seen: "{{header.X-Seen}}"}
    transform:
      request:
        headers: {X-Stage: endpoint, X-Seen: "{{header.X-Stage}}"}
        rename_headers: {X-B: X-C}
      response:
        headers: {X-Out: endpoint}
        body: {rename: {r1: r2}}
  - path: /py
    handler: handlers.py:show
    transform:
      request: {headers: {X-Who: "{{query.who}}"}, query: {rename: {who: user}}}
      response: {headers: {X-Out: endpoint}, status_map: {201: 200}, body: {set: {"meta.shaped": true}}}
"""


@pytest.fixture
def order_gateway(project, compile_gateway):  # type: ignore[no-untyped-def]
    project.write(
        "handlers.py",
        """
        def show(request):
            return {"status": 201, "body": {"who": request.headers.get("x-who"), "query": dict(request.query)}}
        """,
    )
    return compile_gateway(project.blueprint(ORDER))


async def test_static_endpoint_transform_runs_inside_the_transform_middleware(order_gateway, send) -> None:  # type: ignore[no-untyped-def]
    flow = await send(order_gateway, "GET", "/s", headers={"X-A": "client"})
    # requests: the middleware (X-A → X-B, X-Stage), then the endpoint's transform (X-B → X-C,
    # X-Seen from the X-Stage the middleware set); the static templates read the result
    assert flow.request.headers["X-C"] == "client"
    assert body_json(flow.response) == {"r3": "client", "stage": "endpoint", "seen": "middleware"}
    # responses: the endpoint's transform (r1 → r2), then the middleware (r2 → r3)
    assert flow.response.headers["X-Out"] == "middleware"
    assert flow.response.headers["content-length"] == str(len(flow.response.raw_content))


async def test_without_the_middleware_only_the_endpoint_transform_runs(order_gateway, send) -> None:  # type: ignore[no-untyped-def]
    flow = await send(order_gateway, "POST", "/s", headers={"X-B": "client"})  # outside the middleware's methods
    assert body_json(flow.response) == {"r2": "client", "stage": "endpoint", "seen": ""}
    assert flow.response.headers["X-Out"] == "endpoint"


async def test_python_handler_sees_the_transformed_request(order_gateway, send) -> None:  # type: ignore[no-untyped-def]
    flow = await send(order_gateway, "GET", "/py?who=ann")
    assert flow.response.status_code == 200
    assert flow.response.reason == "OK"
    assert body_json(flow.response) == {"who": "ann", "query": {"user": "ann"}, "meta": {"shaped": True}}
    assert flow.response.headers["X-Out"] == "endpoint"


async def test_refused_values_around_a_handler(project, compile_gateway, send) -> None:  # type: ignore[no-untyped-def]
    project.write("handlers.py", "CALLS = []\ndef show(request):\n    CALLS.append(1)\n    return {'ok': True}\n")
    gateway = compile_gateway(
        project.blueprint(
            """
            name: crlf
            middlewares:
              - name: reshape
                plugin: transform
                config: {path: /mw, request: {headers: {X-Note: "{{query.x}}"}}}
            endpoints:
              - path: /req
                handler: handlers.py:show
                transform: {request: {headers: {X-Note: "{{query.x}}"}}}
              - path: /resp
                handler: handlers.py:show
                transform: {response: {headers: {X-Note: "{{query.x}}"}}}
              - path: /mw
                handler: handlers.py:show
            """
        )
    )
    evil = "?x=a%0d%0aInjected:%20yes"
    for path in ("/req", "/mw"):
        flow = await send(gateway, "GET", path + evil)
        assert flow.response.status_code == 400, path
        assert "refused" in body_json(flow.response)["error"]
        assert "X-Note" not in flow.request.headers  # nothing was changed
    flow = await send(gateway, "GET", "/resp" + evil)
    assert flow.response.status_code == 502
    assert "Injected" not in flow.response.headers


# -- the proxy's chain --------------------------------------------------------------------------


class RecordingUpstream:
    """Stands in for the network: records what would be sent, answers with a fixed reply."""

    def __init__(self, status: int = 200, body: bytes = b'{"upstream": "u"}') -> None:
        self.sent: list[tuple[str, str, list[tuple[str, str]], bytes]] = []
        self.status, self.body = status, body

    async def send(self, method, url, headers, body, *, timeout, ssl_context=None, buffer_limit=None, max_connections=None):  # type: ignore[no-untyped-def]
        from backworks_core.upstream import UpstreamReply

        self.sent.append((method, url, list(headers), body))
        return UpstreamReply(self.status, "X", [(b"content-type", b"application/json")], self.body, 0.0)


PROXY = """
name: proxy-order
plugins:
  proxy:
    config:
      targets: [{name: d, url: "http://127.0.0.1:1"}]
      transform_request: {rename_headers: {X-A: X-B}, query: {rename: {a: b}}, body: {rename: {a: b}}}
      transform_response: {rename_headers: {X-R3: X-R4}, body: {rename: {r3: r4}}, status_map: {203: 200}}
      upstreams:
        pool:
          targets: [{name: p, url: "http://127.0.0.1:2/base"}]
          transform_request: {rename_headers: {X-B: X-C}, query: {rename: {b: c}}, body: {rename: {b: c}}}
          transform_response: {rename_headers: {X-R2: X-R3}, body: {rename: {r2: r3}}, status_map: {202: 203}}
endpoints:
  - path: /api/{rest:path}
    method: [GET, POST]
    handler: proxy
    config:
      proxy:
        upstream: pool
        transform_request: {rename_headers: {X-C: X-D}, query: {rename: {c: d}}, body: {rename: {c: d}}}
        transform_response: {rename_headers: {X-R1: X-R2}, body: {rename: {r1: r2}}, status_map: {201: 202}}
    transform:
      request:
        headers: {X-Seen: "{{header.X-A}}"}
        rename_headers: {X-D: X-E}
        query: {rename: {d: e}}
        body: {rename: {d: e}}
        path: {strip_prefix: /api, add_prefix: /v2}
      response:
        headers: {X-R1: "1"}
        body: {rename: {upstream: r1}}
        status_map: {200: 201}
"""


async def test_proxy_chain_order_with_the_endpoint_transform_innermost(project, compile_gateway, send) -> None:  # type: ignore[no-untyped-def]
    gateway = compile_gateway(project.blueprint(PROXY))
    handler = gateway.endpoints[0].handler
    upstream = RecordingUpstream()
    handler.client = upstream
    flow = await send(gateway, "POST", "/api/x?a=1", headers={"X-A": "client"}, body=b'{"a": 1}')
    ((method, url, headers, body),) = upstream.sent
    # requests: plugin → pool → config.proxy → endpoint
    assert (method, url) == ("POST", "http://127.0.0.1:2/base/v2/x?e=1")
    sent = {name.lower(): value for name, value in headers}
    assert sent["x-e"] == "client" and not {"x-a", "x-b", "x-c", "x-d"} & set(sent)
    # templates read the request as the handler received it, not as an outer level left it
    assert sent["x-seen"] == "client"
    assert json.loads(body) == {"e": 1}
    # responses: endpoint → config.proxy → pool → plugin (status 200 → 201 → 202 → 203 → 200)
    response = flow.response
    assert (response.status_code, response.reason) == (200, "OK")
    assert response.headers["X-R4"] == "1"
    assert json.loads(response.raw_content) == {"r4": "u"}
    assert response.headers["content-length"] == str(len(response.raw_content))
