"""`handler: mock` beyond replay: request validation, unrecorded path values, Prefer, latency
(backworks_core.handlers.mock_features), through a compiled gateway."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from backworks_core.capture.build import write_output
from backworks_core.capture.model import Exchange
from backworks_core.diagnostics import BlueprintError
from backworks_core.compiler import compile_blueprint
from backworks_core.handlers import mock_features
from backworks_core.handlers.mock_features import example_names, parse_prefer, substitute
from backworks_core.handlers.mock import MockConfig

from .conftest import body_json, diagnostic_lines


def indent(text: str, spaces: int) -> str:
    return textwrap.indent(textwrap.dedent(text).strip("\n"), " " * spaces)


def blueprint_text(mock_yaml: str, path: str, methods: str, server: str = "") -> str:
    return (
        "name: mock-features\n"
        + (f"server:\n{indent(server, 2)}\n" if server else "")
        + "endpoints:\n"
        f'  - path: "{path}"\n'
        f"    method: {methods}\n"
        "    handler: mock\n"
        "    config:\n"
        "      mock:\n" + indent(mock_yaml, 8) + "\n"
    )


@pytest.fixture
def gateway_for(project, compile_gateway):
    def _build(mock_yaml: str, path: str = "/users/{id}", methods: str = "[GET, POST, PUT]", server: str = ""):
        return compile_gateway(project.blueprint(blueprint_text(mock_yaml, path, methods, server)))

    return _build


@pytest.fixture
def errors_for(project, registry):
    def _errors(mock_yaml: str, path: str = "/users/{id}", server: str = "") -> list[str]:
        blueprint = project.blueprint(blueprint_text(mock_yaml, path, "GET", server))
        with pytest.raises(BlueprintError) as info:
            compile_blueprint(blueprint, registry, {name: plugin() for name, plugin in registry.plugins.items()}, env={})
        return [line.split(": ", 1)[1] for line in diagnostic_lines(info.value.diagnostics)]

    return _errors


JSON = {"Content-Type": "application/json"}

ORDERS = """
validate: true
request_body:
  schema:
    type: object
    required: [item, quantity]
    properties:
      item: {type: string}
      quantity: {type: integer, minimum: 1}
      lines: {type: array, items: {type: object, properties: {sku: {type: string}}}}
  content_types: [application/x-www-form-urlencoded]
  required: true
examples:
  - status: 201
    body: {created: true}
"""


# -- validation -------------------------------------------------------------------------------


async def test_validation_answers_like_prism(gateway_for, send):
    gateway = gateway_for(ORDERS, path="/orders", methods="POST")

    ok = await send(gateway, "POST", "/orders", body='{"item": "tea", "quantity": 2}', headers=JSON)
    assert ok.response.status_code == 201 and body_json(ok.response) == {"created": True}

    wrong_type = await send(gateway, "POST", "/orders", body="<order/>", headers={"Content-Type": "application/xml"})
    assert wrong_type.response.status_code == 415
    assert body_json(wrong_type.response)["error"] == (
        "this endpoint expects a body of type application/json, application/x-www-form-urlencoded, got application/xml"
    )
    assert "refused=content_type" in wrong_type.comment

    broken = await send(gateway, "POST", "/orders", body='{"item": ', headers=JSON)
    assert broken.response.status_code == 400
    assert body_json(broken.response)["error"].startswith("request body is not valid JSON")

    mismatch = await send(gateway, "POST", "/orders", body='{"item": "tea", "quantity": 2, "lines": [{"sku": 5}]}', headers=JSON)
    assert mismatch.response.status_code == 422
    answer = body_json(mismatch.response)
    assert answer["path"] == "$.lines[0].sku"
    assert answer["error"] == "request body does not match the schema: 5 is not of type 'string'"
    assert answer["request_id"] == mismatch.response.headers["X-Request-ID"]
    assert "refused=schema" in mismatch.comment

    missing = await send(gateway, "POST", "/orders", body='{"item": "tea"}', headers=JSON)
    assert missing.response.status_code == 422
    assert body_json(missing.response)["error"] == "request body does not match the schema: 'quantity' is a required property"

    empty = await send(gateway, "POST", "/orders")
    assert empty.response.status_code == 422 and body_json(empty.response)["path"] == "$"


async def test_validation_accepts_what_was_recorded(gateway_for, send):
    gateway = gateway_for(ORDERS, path="/orders", methods="POST")
    # curl -d labels JSON a form: a listed type is parsed as JSON when it is JSON, and checked
    as_form = await send(gateway, "POST", "/orders", body='{"item": "tea", "quantity": 1}', headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert as_form.response.status_code == 201
    bad_form = await send(gateway, "POST", "/orders", body='{"item": "tea", "quantity": 0}', headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert bad_form.response.status_code == 422
    # a real form body under a listed type cannot be checked against a JSON Schema: it passes
    form = await send(gateway, "POST", "/orders", body="item=tea&quantity=1", headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    assert form.response.status_code == 201
    # no Content-Type: taken as JSON; +json types are JSON
    assert (await send(gateway, "POST", "/orders", body='{"item": "tea", "quantity": 3}')).response.status_code == 201
    assert (await send(gateway, "POST", "/orders", body='{"item": "tea", "quantity": 3}', headers={"Content-Type": "application/vnd.x+json"})).response.status_code == 201


async def test_validation_is_off_by_default(gateway_for, send):
    gateway = gateway_for(ORDERS.replace("validate: true\n", ""), path="/orders", methods="POST")
    flow = await send(gateway, "POST", "/orders", body="not json", headers={"Content-Type": "application/xml"})
    assert flow.response.status_code == 201


async def test_an_optional_body_may_be_left_out(gateway_for, send):
    gateway = gateway_for(ORDERS.replace("required: true", "required: false"), path="/orders", methods="POST")
    assert (await send(gateway, "POST", "/orders")).response.status_code == 201


async def test_validation_reads_bodies_bounded(gateway_for, send):
    gateway = gateway_for(ORDERS, path="/orders", methods="POST")
    deep = "[" * 100 + "]" * 100
    flow = await send(gateway, "POST", "/orders", body=deep, headers=JSON)
    assert flow.response.status_code == 400
    assert "nested deeper than 64 levels" in body_json(flow.response)["error"]
    flow = await send(gateway, "POST", "/orders", body=b"\x1f\x8b garbage", headers={**JSON, "Content-Encoding": "gzip"})
    assert flow.response.status_code == 400


async def test_server_default_turns_validation_on_and_an_endpoint_key_wins(project, compile_gateway, send):
    text = blueprint_text(ORDERS.replace("validate: true\n", ""), "/orders", "POST", server="mock: {validate: true}")
    text += "  - path: /free\n    method: POST\n    handler: mock\n    config: {mock: {validate: false, request_body: {schema: {type: object}}, examples: [{body: free}]}}\n"
    text += "  - path: /plain\n    method: POST\n    handler: mock\n    config: {mock: {examples: [{body: plain}]}}\n"
    gateway = compile_gateway(project.blueprint(text))
    assert (await send(gateway, "POST", "/orders", body='{"item": 1}', headers=JSON)).response.status_code == 422
    assert (await send(gateway, "POST", "/free", body="[1]", headers=JSON)).response.status_code == 200
    # no request_body: nothing to check against, even with the server default on
    assert (await send(gateway, "POST", "/plain", body="[1]", headers=JSON)).response.status_code == 200


def test_validation_config_errors(errors_for):
    assert any("not a valid JSON Schema" in e for e in errors_for("request_body: {schema: {type: 5}}\nexamples: [{body: a}]"))
    assert any("is not a media type" in e for e in errors_for("request_body: {content_types: [form]}\nexamples: [{body: a}]"))
    assert any("only local references" in e for e in errors_for("request_body: {schema: {$ref: 'http://x.test/s.json'}}\nexamples: [{body: a}]"))
    assert any("at most 60" in e for e in errors_for("max_latency: 2m\nexamples: [{body: a}]"))
    assert any("synthesise" in e for e in errors_for("unrecorded: fake\nexamples: [{body: a}]"))
    assert any("at most 60" in e for e in errors_for("examples: [{body: a}]", server="mock: {max_latency: 61}"))


# -- unrecorded path values ----------------------------------------------------------------------

USERS = """
examples:
  - when: {path: {id: "1"}}
    headers: {Content-Type: application/json, Location: '/users/1?x=1', ETag: '"1"'}
    body: {id: 1, name: Ada, self: /users/1, ref: "1", count: 1, flag: true, team: {lead: 1}}
  - when: {path: {id: "2"}}
    body: {id: 2, name: Grace}
  - when: {path: {id: "42"}}
    status: 404
    body: {error: not found}
"""


async def test_unrecorded_values_are_404_by_default(gateway_for, send):
    flow = await send(gateway_for(USERS), "GET", "/users/999")
    assert flow.response.status_code == 404
    assert body_json(flow.response)["error"] == "no mock example matches GET /users/999"
    assert "X-Backworks-Mock" not in flow.response.headers


async def test_synthesised_from_the_closest_example(gateway_for, send):
    gateway = gateway_for("unrecorded: synthesise\n" + textwrap.dedent(USERS), path="/users/{id:int}")
    flow = await send(gateway, "GET", "/users/999")
    assert flow.response.status_code == 200
    assert flow.response.headers["X-Backworks-Mock"] == "synthesised"
    assert flow.response.headers["Location"] == "/users/999?x=1"
    assert flow.response.headers["ETag"] == '"1"'
    # strings equal to the recorded value, path segments and integers equal to it change; true stays true
    assert body_json(flow.response) == {"id": 999, "name": "Ada", "self": "/users/999", "ref": "999", "count": 999, "flag": True, "team": {"lead": 999}}
    assert "mock=synthesised-from-example-0" in flow.comment
    assert flow.response.headers["Content-Length"] == str(len(flow.response.raw_content))
    # recorded values still answer as recorded
    assert body_json((await send(gateway, "GET", "/users/42")).response) == {"error": "not found"}
    assert body_json((await send(gateway, "GET", "/users/2")).response) == {"id": 2, "name": "Grace"}
    head = await send(gateway, "HEAD", "/users/7")  # HEAD: the GET answer's headers, no body
    assert head.response.status_code == 200 and head.response.raw_content == b""
    assert head.response.headers["X-Backworks-Mock"] == "synthesised" and int(head.response.headers["Content-Length"]) > 0


async def test_synthesis_keeps_shared_values_and_other_conditions(gateway_for, send):
    gateway = gateway_for(
        """
        unrecorded: synthesise
        examples:
          - when: {path: {user: u1, post: p1}}
            body: {user: u1, post: p1, by: u1}
          - when: {path: {user: u2, post: p9}}
            body: {user: u2, post: p9}
          - when: {path: {user: u2, post: p8}, query: {view: full}}
            body: {user: u2, post: p8, full: true}
        """,
        path="/users/{user}/posts/{post}",
    )
    flow = await send(gateway, "GET", "/users/u2/posts/p5")
    assert body_json(flow.response) == {"user": "u2", "post": "p5"}  # shares user u2 with example 1
    flow = await send(gateway, "GET", "/users/u7/posts/p5")
    assert body_json(flow.response) == {"user": "u7", "post": "p5", "by": "u7"}  # none shared: the first
    flow = await send(gateway, "GET", "/users/u2/posts/p5?view=full")
    assert body_json(flow.response) == {"user": "u2", "post": "p5", "full": True}  # its query holds: it shares more
    # a numeric-looking text is not an integer: only strings change
    flow = await send(gateway, "GET", "/users/u1/posts/p2")
    assert body_json(flow.response) == {"user": "u1", "post": "p2", "by": "u1"}


async def test_synthesis_needs_the_other_conditions(gateway_for, send):
    gateway = gateway_for(
        """
        unrecorded: synthesise
        examples:
          - when: {path: {id: "1"}, query: {view: full}}
            body: {id: "1"}
        """,
    )
    assert (await send(gateway, "GET", "/users/5?view=full")).response.status_code == 200
    assert (await send(gateway, "GET", "/users/5")).response.status_code == 404


async def test_fallback_and_passthrough_come_before_synthesis(gateway_for, send):
    gateway = gateway_for("unrecorded: synthesise\nexamples: [{when: {path: {id: '1'}}, body: one}, {status: 404, body: fallback}]")
    assert (await send(gateway, "GET", "/users/5")).response.get_content() == b"fallback"
    gateway = gateway_for("unrecorded: synthesise\npassthrough: true\nexamples: [{when: {path: {id: '1'}}, body: one}]")
    flow = await send(gateway, "GET", "/users/5")
    assert flow.response is None  # handed to mitmproxy: the real upstream answers


async def test_synthesis_as_a_server_default(project, compile_gateway, send):
    gateway = compile_gateway(project.blueprint(blueprint_text(USERS, "/users/{id}", "GET", server="mock: {unrecorded: synthesise}")))
    assert body_json((await send(gateway, "GET", "/users/3")).response)["id"] == 3


def test_substitute():
    swaps = [("7", "8")]
    assert substitute({"a": ["7", 7, 7.0, True, "x7", "/a/7/b?c=7#7", "https://h.test/7"]}, swaps) == {
        "a": ["8", 8, 7.0, True, "x7", "/a/8/b?c=7#7", "https://h.test/8"]
    }
    assert substitute({"id": 7}, [("7", "abc")]) == {"id": 7}  # a text value cannot become a number


# -- Prefer ---------------------------------------------------------------------------------------

PREFER = """
examples:
  - when: {path: {id: "1"}}
    body: {id: 1}
  - when: {path: {id: "1"}}
    body: {id: 1, again: true}
  - when: {path: {id: "42"}}
    status: 404
    body: {error: not found}
  - name: teapot
    status: 418
    body: short and stout
  - when: {path: {id: "1"}, query: {view: full}}
    status: 404
    body: {error: no full view}
"""


def test_parse_prefer():
    assert parse_prefer(["code=404"]) == {"code": "404"}
    assert parse_prefer(['respond-async, wait=10; x="a,b", example="my ex"', "code=200"]) == {
        "respond-async": "",
        "wait": "10",
        "example": "my ex",
        "code": "200",
    }
    assert parse_prefer(["CODE = 201 ; p=1", "code=500"]) == {"code": "201"}  # the first wins
    assert parse_prefer(['example="a\\"b"']) == {"example": 'a"b'}


def test_example_names_are_derived_and_unique():
    config = MockConfig.model_validate(yaml.safe_load(PREFER))
    assert example_names(config.all_examples) == ["200-1", "200-1-2", "404-42", "teapot", "404-1-view=full"]
    config = MockConfig.model_validate(
        {
            "examples": [
                {"when": {"headers": {"Authorization": "[REDACTED:ab12]", "If-None-Match": None}}, "status": 304},
                {"when": {"body": {"k": "v"}}, "status": 201},
                {"name": "201", "status": 201},
                {"status": 201},
            ]
        }
    )
    names = example_names(config.all_examples)
    assert names[0] == "304-authorization=_REDACTED_ab12-no-if-none-match"
    assert names[1].startswith("201-body-") and len(names[1]) == len("201-body-") + 6
    assert names[2:] == ["201", "201-2"]  # an explicit name is kept; a derived one steps aside


async def test_prefer_code_and_example(gateway_for, send):
    gateway = gateway_for(PREFER)
    flow = await send(gateway, "GET", "/users/1", headers={"Prefer": "code=404"})
    assert flow.response.status_code == 404
    assert flow.response.headers["Preference-Applied"] == "code=404"
    assert "mock=preferred-example-2" in flow.comment  # no 404 matches /users/1: the first 404
    flow = await send(gateway, "GET", "/users/1?view=full", headers={"Prefer": "code=404"})
    assert body_json(flow.response) == {"error": "no full view"}  # one that matches comes first
    flow = await send(gateway, "GET", "/users/9", headers={"Prefer": "example=teapot"})
    assert (flow.response.status_code, flow.response.get_content()) == (418, b"short and stout")
    flow = await send(gateway, "GET", "/users/9", headers={"Prefer": "example=200-1-2, code=200"})
    assert body_json(flow.response) == {"id": 1, "again": True}
    assert flow.response.headers["Preference-Applied"] == "code=200, example=200-1-2"


async def test_prefer_does_not_advance_sequences(gateway_for, send):
    gateway = gateway_for(PREFER)
    await send(gateway, "GET", "/users/1", headers={"Prefer": "code=200"})
    await send(gateway, "GET", "/users/1", headers={"Prefer": "code=200"})
    assert body_json((await send(gateway, "GET", "/users/1")).response) == {"id": 1}
    assert body_json((await send(gateway, "GET", "/users/1")).response) == {"id": 1, "again": True}


async def test_prefer_without_such_example_names_the_examples(gateway_for, send):
    gateway = gateway_for(PREFER)
    flow = await send(gateway, "GET", "/users/1", headers={"Prefer": "code=503", "X-Request-ID": "r1"})
    assert flow.response.status_code == 404
    answer = body_json(flow.response)
    assert answer["error"] == (
        "no mock example fits Prefer code=503 for GET /users/1; examples: 200-1 (200), 200-1-2 (200), 404-42 (404), teapot (418), 404-1-view=full (404)"
    )
    assert answer["request_id"] == "r1" and answer["status"] == 404
    assert answer["examples"][3] == {"name": "teapot", "status": 418}
    flow = await send(gateway, "GET", "/users/1", headers={"Prefer": "example=teapot, code=200"})
    assert flow.response.status_code == 404 and "example=teapot and code=200" in body_json(flow.response)["error"]


async def test_prefer_off_and_other_preferences_ignored(gateway_for, send):
    gateway = gateway_for("prefer: false\n" + textwrap.dedent(PREFER))
    assert (await send(gateway, "GET", "/users/1", headers={"Prefer": "code=404"})).response.status_code == 200
    gateway = gateway_for(PREFER)
    flow = await send(gateway, "GET", "/users/1", headers={"Prefer": "return=minimal"})
    assert flow.response.status_code == 200 and "Preference-Applied" not in flow.response.headers


# -- latency --------------------------------------------------------------------------------------


async def test_latency_factor_and_cap(gateway_for, send, monkeypatch):
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(mock_features.asyncio, "sleep", fake_sleep)
    gateway = gateway_for("replay_latency: true\nlatency_factor: 0.5\nmax_latency: 2s\nexamples: [{when: {path: {id: '1'}}, body: a, latency: 1}, {body: b, latency: 30}]")
    await send(gateway, "GET", "/users/1")
    await send(gateway, "GET", "/users/2")
    assert slept == [0.5, 2.0]
    slept.clear()
    gateway = gateway_for("latency_factor: 3\nexamples: [{body: b, latency: 1}]")
    await send(gateway, "GET", "/users/2")
    assert slept == []  # replay_latency off


async def test_latency_from_server_defaults(project, compile_gateway, send, monkeypatch):
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(mock_features.asyncio, "sleep", fake_sleep)
    text = blueprint_text("latency_factor: 2\nexamples: [{body: a, latency: 0.25}]", "/a", "GET", server="mock: {replay_latency: true, latency_factor: 10}")
    text += "  - path: /b\n    handler: mock\n    config: {mock: {replay_latency: false, examples: [{body: b, latency: 1}]}}\n"
    gateway = compile_gateway(project.blueprint(text))
    await send(gateway, "GET", "/a")
    await send(gateway, "GET", "/b")
    assert slept == [0.5]


# -- capture writes request_body ------------------------------------------------------------------


def _exchange(method: str, path: str, body: bytes = b"", content_type: str | None = "application/json", status: int = 201) -> Exchange:
    headers = [("Content-Type", content_type)] if content_type and body else []
    return Exchange(method, "http", "api.test", 80, path, request_headers=headers, request_body=body, status=status, response_headers=[("Content-Type", "application/json")], response_body=b'{"ok":true}', duration=0.25)


def test_capture_writes_request_body(tmp_path):
    journal = tmp_path / "j.jsonl"
    flows = [
        _exchange("POST", "/orders", b'{"item":"tea","quantity":1}'),
        _exchange("POST", "/orders", b'{"item":"cake","quantity":2}', "application/x-www-form-urlencoded"),
        _exchange("PUT", "/carts", b'{"n":1}'),
        _exchange("PUT", "/carts"),
        _exchange("GET", "/health", status=200),
    ]
    journal.write_text("".join(f.to_json() + "\n" for f in flows))
    write_output([str(journal)], str(tmp_path / "out.yaml"), "blueprint", name="t")
    document = yaml.safe_load((tmp_path / "out.yaml").read_text())
    mocks = {e["path"]: e["config"]["mock"] for e in document["endpoints"]}
    orders = mocks["/orders"]["request_body"]
    assert orders["required"] is True
    assert orders["content_types"] == ["application/x-www-form-urlencoded"]
    assert orders["schema"]["required"] == ["item", "quantity"]
    assert mocks["/carts"]["request_body"]["required"] is False
    assert "request_body" not in mocks["/health"]
    assert mocks["/orders"]["examples"][0]["latency"] == 0.25


async def test_a_captured_blueprint_validates_its_own_requests(tmp_path, compile_gateway, send):
    journal = tmp_path / "j.jsonl"
    flows = [_exchange("POST", "/orders", b'{"item":"tea","quantity":1}'), _exchange("POST", "/orders", b'{"item":"cake","quantity":2}', "application/x-www-form-urlencoded")]
    journal.write_text("".join(f.to_json() + "\n" for f in flows))
    out = tmp_path / "out.yaml"
    write_output([str(journal)], str(out), "blueprint", name="t")
    document = yaml.safe_load(out.read_text())
    document["server"]["mock"] = {"validate": True}
    out.write_text(yaml.safe_dump(document))
    gateway = compile_gateway(out)
    for flow in flows:  # every recorded request still gets its answer
        sent = await send(gateway, "POST", "/orders", body=flow.request_body, headers=dict(flow.request_headers))
        assert sent.response.status_code == 201, sent.response.get_content()
    refused = await send(gateway, "POST", "/orders", body=json.dumps({"item": "tea"}), headers=JSON)
    assert refused.response.status_code == 422
    assert (await send(gateway, "POST", "/orders")).response.status_code == 422
