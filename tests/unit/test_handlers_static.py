"""`handler: static`: status, headers, body, templates and delay, through a compiled gateway."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from backworks_core.handlers import static as static_module
from backworks_core.handlers.static import StaticConfig

from .conftest import body_json

RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def static_gateway(project, compile_gateway):
    def _build(static_yaml: str, path: str = "/thing", env=None):
        blueprint = project.blueprint(
            f"""
            name: static-test
            endpoints:
              - path: "{path}"
                method: [GET, POST]
                handler: static
                config:
                  static: {static_yaml}
            """
        )
        return compile_gateway(blueprint, env=env)

    return _build


async def test_status_headers_and_json_body(static_gateway, send):
    gateway = static_gateway('{status: 201, headers: {X-One: "1", Cache-Control: no-store}, body: {id: 7, tags: [a, b], ok: true, none: null}}')
    flow = await send(gateway, "POST", "/thing")
    response = flow.response
    assert response.status_code == 201
    assert response.headers["X-One"] == "1"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"] == "application/json"
    assert response.get_content() == b'{"id":7,"tags":["a","b"],"ok":true,"none":null}'


async def test_text_body_is_sent_as_text(static_gateway, send):
    flow = await send(static_gateway('{body: "plain words"}'), "GET", "/thing")
    assert flow.response.status_code == 200
    assert flow.response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert flow.response.get_content() == b"plain words"


async def test_non_string_scalars_are_json(static_gateway, send):
    flow = await send(static_gateway("{body: 42}"), "GET", "/thing")
    assert flow.response.headers["Content-Type"] == "application/json"
    assert flow.response.get_content() == b"42"


async def test_no_body_means_empty_content_and_no_content_type(static_gateway, send):
    flow = await send(static_gateway("{status: 204}"), "GET", "/thing")
    assert flow.response.status_code == 204
    assert flow.response.get_content() == b""
    assert "Content-Type" not in flow.response.headers


async def test_a_header_may_override_the_content_type(static_gateway, send):
    flow = await send(static_gateway('{headers: {Content-Type: application/xml}, body: "<a/>"}'), "GET", "/thing")
    assert flow.response.headers.get_all("Content-Type") == ["application/xml"]
    assert flow.response.get_content() == b"<a/>"


async def test_templates_from_path_query_and_header(static_gateway, send):
    gateway = static_gateway(
        '{headers: {X-User: "user-{{path.id}}", X-Trace: "{{header.x-trace-id}}"}, '
        'body: {id: "{{path.id}}", q: "{{query.q}}", agent: "{{header.User-Agent}}", '
        'missing: "[{{query.nope}}]", at: "{{now}}", nested: [{text: "hi {{query.q}}!"}]}}',
        path="/users/{id}",
    )
    flow = await send(
        gateway,
        "GET",
        "/users/42?q=first&q=second",
        headers={"user-agent": "tester/1.0", "X-Trace-Id": "t-1"},
    )
    assert flow.response.status_code == 200
    body = body_json(flow.response)
    assert RFC3339_MS.match(body.pop("at")), body
    assert body == {
        "id": "42",
        "q": "first",
        "agent": "tester/1.0",
        "missing": "[]",
        "nested": [{"text": "hi first!"}],
    }
    assert flow.response.headers["X-User"] == "user-42"
    assert flow.response.headers["X-Trace"] == "t-1"


async def test_text_body_template(static_gateway, send):
    flow = await send(static_gateway('{body: "hello {{path.name}}"}', path="/hello/{name}"), "GET", "/hello/ada")
    assert flow.response.get_content() == b"hello ada"
    assert flow.response.headers["Content-Type"] == "text/plain; charset=utf-8"


async def test_values_from_the_request_are_never_evaluated_again(static_gateway, send, monkeypatch):
    monkeypatch.setenv("BW_SECRET", "hunter2")
    gateway = static_gateway('{headers: {X-Q: "{{query.q}}"}, body: {q: "{{query.q}}", h: "{{header.x-in}}"}}')
    flow = await send(
        gateway,
        "GET",
        "/thing?q=%7B%7Benv.BW_SECRET%7D%7D",
        headers={"X-In": "{{env.BW_SECRET}} {{now}}"},
    )
    assert body_json(flow.response) == {"q": "{{env.BW_SECRET}}", "h": "{{env.BW_SECRET}} {{now}}"}
    assert flow.response.headers["X-Q"] == "{{env.BW_SECRET}}"
    assert b"hunter2" not in flow.response.get_content()


async def test_env_template_in_the_blueprint_itself_is_rendered(static_gateway, send, monkeypatch):
    monkeypatch.setenv("BW_REGION", "eu-1")
    flow = await send(static_gateway('{body: {region: "{{env.BW_REGION}}"}}'), "GET", "/thing")
    assert body_json(flow.response) == {"region": "eu-1"}


async def test_crlf_in_a_rendered_header_is_refused(static_gateway, send):
    gateway = static_gateway('{headers: {X-Echo: "{{query.v}}"}, body: ok}')
    flow = await send(gateway, "GET", "/thing?v=a%0d%0aSet-Cookie:%20evil=1", headers={"X-Request-ID": "crlf-1"})
    response = flow.response
    assert response.status_code == 400
    assert "Set-Cookie" not in response.headers
    assert "X-Echo" not in response.headers
    assert body_json(response) == {
        "error": "the value for response header X-Echo would carry CR or LF",
        "status": 400,
        "request_id": "crlf-1",
    }
    # the same endpoint still answers a clean value
    ok = await send(gateway, "GET", "/thing?v=fine")
    assert ok.response.status_code == 200
    assert ok.response.headers["X-Echo"] == "fine"


def test_crlf_in_a_configured_header_is_a_located_error(project, load_errors):
    path = project.blueprint(
        """
        name: x
        endpoints:
          - path: /a
            handler: static
            config:
              static:
                headers: {X-Bad: "one\\r\\nInjected: yes"}
        """
    )
    (error,) = load_errors(path)
    assert error.key_path == "endpoints[0].config.static.headers"
    assert error.message == "header 'X-Bad' carries CR or LF"
    assert error.line == 7


def test_bad_template_is_a_located_error(project, load_errors):
    path = project.blueprint(
        """
        name: x
        endpoints:
          - path: /a
            handler: static
            config:
              static:
                body: {greeting: "hi {{qurey.name}}"}
        """
    )
    (error,) = load_errors(path)
    assert error.key_path == "endpoints[0].config.static.body"
    assert error.line == 7
    assert "unknown name 'qurey'" in error.message
    assert "did you mean {{query.name}}?" in error.message


@pytest.mark.parametrize("written, seconds", [("0.25", 0.25), ("250ms", 0.25), ("2s", 2.0), ("1m", 60.0)])
async def test_delay_waits_before_answering(static_gateway, send, monkeypatch, written, seconds):
    slept: list[float] = []

    async def fake_sleep(value):
        slept.append(value)

    monkeypatch.setattr(static_module, "asyncio", SimpleNamespace(sleep=fake_sleep))
    flow = await send(static_gateway(f"{{delay: {written}, body: late}}"), "GET", "/thing")
    assert slept == [seconds]
    assert flow.response.get_content() == b"late"


async def test_no_delay_does_not_sleep(static_gateway, send, monkeypatch):
    slept: list[float] = []

    async def fake_sleep(value):
        slept.append(value)

    monkeypatch.setattr(static_module, "asyncio", SimpleNamespace(sleep=fake_sleep))
    await send(static_gateway("{body: now}"), "GET", "/thing")
    assert slept == []


async def test_constant_body_is_not_shared_between_requests(static_gateway, send):
    gateway = static_gateway("{body: {items: [1, 2]}}")
    first = await send(gateway, "GET", "/thing")
    second = await send(gateway, "GET", "/thing")
    assert json.loads(first.response.get_content()) == json.loads(second.response.get_content()) == {"items": [1, 2]}
    assert first.response is not second.response


def test_static_config_rejects_bad_values():
    with pytest.raises(ValueError, match="less than or equal to 599"):
        StaticConfig(status=600)
    with pytest.raises(ValueError, match="unknown name 'nope'"):
        StaticConfig(body={"a": ["{{nope}}"]})
    assert StaticConfig(delay="1.5s").delay == 1.5


# Found by tests/reliability/test_request_fuzz.py: invalid UTF-8 in the path made these a 500.


@pytest.mark.parametrize(("body", "expected"), [('{body: {greeting: "hi {{path.name}}"}}', {"greeting": "hi \udcff\udcfe"}), ('{body: "hi {{path.name}}"}', "hi ??")])
async def test_a_path_parameter_of_invalid_utf8_renders(static_gateway, send, body, expected):
    gateway = static_gateway(body, path="/greet/{name}")
    flow = await send(gateway, "GET", "/greet/x")
    flow.request.data.path = b"/greet/\xff\xfe"
    flow.response = None
    await gateway.handle(flow, reverse_mode=True, direct=False)
    assert flow.response.status_code == 200
    content = flow.response.get_content()
    assert (json.loads(content) if content.startswith(b"{") else content.decode()) == expected
