"""Request limits (413/431) and JSON Schema validation (422) of backworks_core.limits, on compiled gateways."""

from __future__ import annotations

import json

import pytest

from backworks_core.limits import header_size
from backworks_core.model import parse_size
from backworks_core.streaming import may_refuse_head
from tests.unit.conftest import body_json, diagnostic_lines, make_flow


SCHEMA_BLUEPRINT = """
name: limits
server:
  max_body_size: 1k
  max_header_size: 2k
endpoints:
  - path: /orders
    method: POST
    handler: static
    config:
      static: {status: 201, body: {ok: true}}
      validate:
        schema:
          type: object
          required: [items]
          properties:
            items:
              type: array
              items:
                type: object
                required: [price]
                properties: {price: {type: number, minimum: 0}}
  - path: /big
    method: POST
    handler: static
    config:
      static: {body: {ok: true}}
      limits: {max_body_size: 4k, max_header_size: null}
  - path: /small
    method: [GET, POST]
    handler: static
    config:
      static: {body: {ok: true}}
"""


def test_sizes() -> None:
    assert parse_size("64k") == 65536
    assert parse_size("10m") == 10 * 1024 * 1024
    assert parse_size("10MB") == 10 * 1024 * 1024
    assert parse_size(100) == 100
    for bad in ("lots", "1.5m", -1, True):
        with pytest.raises(ValueError):
            parse_size(bad)


async def test_body_over_server_limit_is_413(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint(SCHEMA_BLUEPRINT))
    flow = await send(gateway, "POST", "/small", body=b"x" * 1025)
    assert flow.response.status_code == 413
    body = body_json(flow.response)
    assert body["error"] == "request body is larger than the limit of 1024 bytes"
    assert body["request_id"] == flow.response.headers["X-Request-ID"]
    assert "refused=max_body_size" in flow.comment
    ok = await send(gateway, "POST", "/small", body=b"x" * 1024)
    assert ok.response.status_code == 200


async def test_declared_length_alone_is_refused(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint(SCHEMA_BLUEPRINT))
    flow = make_flow("POST", "/small", body=b"")
    flow.request.headers["content-length"] = "5000"
    assert may_refuse_head(gateway, flow.request)
    await gateway.handle(flow, reverse_mode=True, direct=False)
    assert flow.response.status_code == 413


async def test_endpoint_limits_override_the_server(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint(SCHEMA_BLUEPRINT))
    assert (await send(gateway, "POST", "/big", body=b"x" * 4096)).response.status_code == 200
    assert (await send(gateway, "POST", "/big", body=b"x" * 4097)).response.status_code == 413
    # max_header_size: null lifts the server's 2k on this endpoint only
    headers = {"X-Big": "y" * 3000}
    assert (await send(gateway, "POST", "/big", headers=headers)).response.status_code == 200
    refused = await send(gateway, "GET", "/small", headers=headers)
    assert refused.response.status_code == 431
    assert "more than the limit of 2048" in body_json(refused.response)["error"]
    assert "refused=max_header_size" in refused.comment


def test_header_size_counts_fields() -> None:
    flow = make_flow(headers={"A": "bc"})
    assert header_size(flow.request) == sum(len(k) + len(v) + 4 for k, v in flow.request.headers.fields)


async def test_default_header_limit_is_64k(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint("""
        name: defaults
        endpoints:
          - path: /x
            handler: static
            config: {static: {body: 1}}
        """))
    assert gateway.header_floor == 65536 and gateway.body_floor is None
    assert (await send(gateway, "GET", "/x", headers={"X-A": "a" * 60000})).response.status_code == 200
    assert (await send(gateway, "GET", "/x", headers={"X-A": "a" * 70000})).response.status_code == 431


async def test_schema_422_names_the_path(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint(SCHEMA_BLUEPRINT))
    good = {"items": [{"price": 1}, {"price": 2.5}]}
    ok = await send(gateway, "POST", "/orders", body=json.dumps(good), headers={"Content-Type": "application/json"})
    assert ok.response.status_code == 201
    bad = {"items": [{"price": 1}, {"price": 2}, {"price": "three"}]}
    flow = await send(gateway, "POST", "/orders", body=json.dumps(bad), headers={"Content-Type": "application/json"})
    assert flow.response.status_code == 422
    body = body_json(flow.response)
    assert body["path"] == "$.items[2].price"
    assert body["error"] == "request body does not match the schema: 'three' is not of type 'number'"
    assert body["status"] == 422 and body["request_id"]
    assert "refused=schema" in flow.comment
    missing = await send(gateway, "POST", "/orders", body=json.dumps({"items": [{}]}))
    assert body_json(missing.response)["path"] == "$.items[0]"
    assert "'price' is a required property" in body_json(missing.response)["error"]


async def test_schema_needs_json(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint(SCHEMA_BLUEPRINT))
    not_json = await send(gateway, "POST", "/orders", body="{nope", headers={"Content-Type": "application/json"})
    assert not_json.response.status_code == 400
    assert body_json(not_json.response)["error"].startswith("request body is not valid JSON")
    form = await send(gateway, "POST", "/orders", body="a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.response.status_code == 415
    empty = await send(gateway, "POST", "/orders")
    assert empty.response.status_code == 400
    vendor = await send(gateway, "POST", "/orders", body='{"items": []}', headers={"Content-Type": "application/vnd.api+json; charset=utf-8"})
    assert vendor.response.status_code == 201


async def test_refused_before_middlewares(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint("""
        name: order
        middlewares:
          - name: chaos
            plugin: fault
            config: {abort: {status: 503}}
        endpoints:
          - path: /v
            method: POST
            handler: static
            middleware: [chaos]
            config:
              static: {body: 1}
              validate: {schema: {type: object}}
        """))
    refused = await send(gateway, "POST", "/v", body="[]")
    assert refused.response.status_code == 422
    assert "fault=" not in refused.comment
    assert (await send(gateway, "POST", "/v", body="{}")).response.status_code == 503


async def test_refusals_carry_the_cors_headers(project, compile_gateway, send) -> None:
    """A page on another origin can read why its request was refused; other origins get none."""
    gateway = compile_gateway(project.blueprint("""
        name: cors-refusals
        middlewares:
          - name: browsers
            plugin: cors
            config: {path: "/*", origins: ["https://app.example.com"], expose_headers: [X-Request-ID]}
        endpoints:
          - path: /v
            method: POST
            handler: static
            config:
              static: {body: 1}
              limits: {max_body_size: 16}
              validate: {schema: {type: object}}
        """))
    origin = {"Origin": "https://app.example.com"}
    too_big = await send(gateway, "POST", "/v", body="{}" + " " * 20, headers=origin)
    invalid = await send(gateway, "POST", "/v", body="[]", headers=origin)
    assert (too_big.response.status_code, invalid.response.status_code) == (413, 422)
    for flow in (too_big, invalid):
        assert flow.response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert flow.response.headers["Access-Control-Expose-Headers"] == "X-Request-ID"
    stranger = await send(gateway, "POST", "/v", body="[]", headers={"Origin": "https://evil.example"})
    assert stranger.response.status_code == 422 and "Access-Control-Allow-Origin" not in stranger.response.headers


def test_bad_schema_is_a_located_error(project, load_errors) -> None:
    path = project.blueprint("""
        name: bad
        endpoints:
          - path: /v
            method: POST
            handler: static
            config:
              static: {body: 1}
              validate: {schema: {type: objekt}}
              limits: {max_body_size: lots}
          - path: /w
            handler: static
            config:
              static: {body: 1}
              validate: {schema: {$ref: "https://example.com/s.json"}}
        """)
    lines = diagnostic_lines(load_errors(path))
    assert any("endpoints[0].config.validate.schema" in line and "not a valid JSON Schema" in line for line in lines), lines
    assert any(":8:" in line for line in lines if "not a valid JSON Schema" in line), lines
    assert any("endpoints[0].config.limits.max_body_size" in line and "expected a size" in line for line in lines), lines
    assert any("endpoints[1].config.validate.schema" in line and "only local references" in line for line in lines), lines


def test_bad_server_size(project, load_errors) -> None:
    path = project.blueprint("""
        name: bad
        server: {max_body_size: 10 megs}
        endpoints:
          - path: /v
            handler: static
            config: {static: {body: 1}}
        """)
    lines = diagnostic_lines(load_errors(path))
    assert any("server.max_body_size" in line and "expected a size" in line for line in lines), lines
