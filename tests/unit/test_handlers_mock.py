"""`handler: mock`: recorded examples matched against requests, through a compiled gateway."""

from __future__ import annotations

import asyncio
import base64
import json
import textwrap
import time

import pytest

from backworks_core.context import Forward
from backworks_core.diagnostics import BlueprintError
from backworks_core.compiler import compile_blueprint
from backworks_core.handlers.mock import MockConfig
from backworks_core.handlers.mock.matching import json_contains

from .conftest import body_json, diagnostic_lines, make_flow


def indent(text: str, spaces: int) -> str:
    return textwrap.indent(textwrap.dedent(text).strip("\n"), " " * spaces)


@pytest.fixture
def mock_gateway(project, compile_gateway):
    def _build(mock_yaml: str, path: str = "/users/{id}", methods: str = "[GET, POST]"):
        blueprint = project.blueprint(
            "name: mock-test\n"
            "endpoints:\n"
            f'  - path: "{path}"\n'
            f"    method: {methods}\n"
            "    handler: mock\n"
            "    config:\n"
            "      mock:\n" + indent(mock_yaml, 8) + "\n"
        )
        return compile_gateway(blueprint)

    return _build


@pytest.fixture
def mock_errors(project, registry):
    def _errors(mock_yaml: str, path: str = "/users/{id}") -> list[str]:
        blueprint = project.blueprint(
            "name: mock-test\n"
            "endpoints:\n"
            f'  - path: "{path}"\n'
            "    handler: mock\n"
            "    config:\n"
            "      mock:\n" + indent(mock_yaml, 8) + "\n"
        )
        with pytest.raises(BlueprintError) as info:
            compile_blueprint(blueprint, registry, {name: plugin() for name, plugin in registry.plugins.items()}, env={})
        return [line.split(": ", 1)[1] for line in diagnostic_lines(info.value.diagnostics)]

    return _errors


USERS = """
examples:
  - when: {path: {id: "7"}}
    status: 200
    headers: {X-Kind: seven}
    body: {id: 7, name: Ada}
  - when: {path: {id: 8}}
    body: {id: 8, name: Grace}
  - status: 404
    body: {error: not found}
"""


# -- matching -------------------------------------------------------------------------------


async def test_path_parameter_picks_the_example(mock_gateway, send):
    gateway = mock_gateway(USERS)
    flow = await send(gateway, "GET", "/users/7")
    assert flow.response.status_code == 200
    assert flow.response.headers["X-Kind"] == "seven"
    assert body_json(flow.response) == {"id": 7, "name": "Ada"}
    assert flow.comment == 'backworks: endpoint="GET,POST /users/{id}" handler=mock mock=example-0'
    # a number in `when.path` compares as a string
    assert body_json((await send(gateway, "GET", "/users/8")).response) == {"id": 8, "name": "Grace"}


async def test_fallback_answers_what_nothing_else_matches(mock_gateway, send):
    flow = await send(mock_gateway(USERS), "GET", "/users/99")
    assert flow.response.status_code == 404
    assert body_json(flow.response) == {"error": "not found"}
    assert "mock=fallback" in flow.comment


async def test_no_match_and_no_fallback_is_the_standard_404(mock_gateway, send):
    gateway = mock_gateway('examples: [{when: {path: {id: "1"}}, body: one}]')
    flow = await send(gateway, "GET", "/users/2", headers={"X-Request-ID": "req-1"})
    assert flow.response.status_code == 404
    assert body_json(flow.response) == {"error": "no mock example matches GET /users/2", "status": 404, "request_id": "req-1"}
    assert flow.response.headers["X-Request-ID"] == "req-1"


async def test_query_conditions(mock_gateway, send):
    gateway = mock_gateway(
        """
        examples:
          - when: {query: {page: "2"}}
            body: page two
          - when: {query: {page: 3}}
            body: page three
          - when: {query: {tag: [a, b]}}
            body: tags a and b
          - body: default
        """,
        path="/items",
    )

    async def text(path: str) -> str:
        return (await send(gateway, "GET", path)).response.get_content().decode()

    assert await text("/items?page=2") == "page two"
    assert await text("/items?page=3&other=x") == "page three"  # keys not named are not looked at
    assert await text("/items?tag=a&tag=b") == "tags a and b"
    assert await text("/items?tag=b&tag=a") == "default"  # a list is the values in order
    assert await text("/items?page=2&page=2") == "default"  # a string is a list of one
    assert await text("/items") == "default"


async def test_header_conditions_are_case_insensitive_by_name_exact_by_value(mock_gateway, send):
    gateway = mock_gateway(
        """
        examples:
          - when: {headers: {X-Tenant: acme}}
            body: acme
          - body: other
        """,
        path="/t",
    )
    assert (await send(gateway, "GET", "/t", headers={"x-tenant": "acme"})).response.get_content() == b"acme"
    assert (await send(gateway, "GET", "/t", headers={"X-Tenant": "ACME"})).response.get_content() == b"other"
    assert (await send(gateway, "GET", "/t", headers=[("X-Tenant", "x"), ("X-Tenant", "acme")])).response.get_content() == b"acme"


async def test_json_body_subset(mock_gateway, send):
    gateway = mock_gateway(
        """
        examples:
          - when: {body: {kind: a}}
            body: kind a
          - when: {body: {kind: a, meta: {level: 2}}}
            body: kind a level 2
          - when: {body: {tags: [x, y]}}
            body: tags
          - when: {body: {flag: true}}
            body: flag
          - body: none
        """,
        path="/orders",
        methods="POST",
    )

    async def text(body: str) -> str:
        flow = await send(gateway, "POST", "/orders", body=body, headers={"Content-Type": "application/json"})
        return flow.response.get_content().decode()

    assert await text('{"kind": "a", "extra": 1}') == "kind a"
    assert await text('{"kind": "a", "meta": {"level": 2, "more": true}}') == "kind a level 2"  # more specific wins
    assert await text('{"kind": "b"}') == "none"
    assert await text('{"tags": ["x", "y"]}') == "tags"
    assert await text('{"tags": ["x", "y", "z"]}') == "none"  # arrays are compared whole
    assert await text('{"flag": 1}') == "none"  # true is not 1
    assert await text("not json") == "none"
    assert await text("") == "none"


def test_json_contains():
    assert json_contains({"a": 1, "b": {"c": [1, 2], "d": None}}, {"b": {"c": [1, 2]}})
    assert json_contains({"a": 1.0}, {"a": 1})
    assert not json_contains({"a": True}, {"a": 1})
    assert not json_contains({"a": [{"x": 1, "y": 2}]}, {"a": [{"x": 1}]})
    assert not json_contains([1], {})
    assert json_contains({"a": None}, {"a": None})
    assert not json_contains({}, {"a": None})


async def test_most_specific_wins_and_ties_go_to_the_first(mock_gateway, send):
    gateway = mock_gateway(
        """
        examples:
          - when: {query: {a: "1"}}
            body: first-a
          - when: {query: {b: "1"}}
            body: first-b
          - when: {path: {id: "7"}, query: {a: "1"}}
            body: two conditions
        """,
    )
    assert (await send(gateway, "GET", "/users/7?a=1&b=1")).response.get_content() == b"two conditions"
    assert (await send(gateway, "GET", "/users/8?a=1&b=1")).response.get_content() == b"first-a"
    assert (await send(gateway, "GET", "/users/8?b=1&a=1")).response.get_content() == b"first-a"


# -- sequences ------------------------------------------------------------------------------


SEQUENCE = """
examples:
  - when: {path: {id: "1"}}
    body: {n: 1}
  - when: {path: {id: 2}}
    body: other
  - when: {path: {id: 1}}
    body: {n: 2}
  - when: {path: {id: "1"}}
    status: 202
    body: {n: 3}
"""


async def test_identical_requests_play_back_in_order_then_the_last_repeats(mock_gateway, send):
    gateway = mock_gateway(SEQUENCE)
    got = []
    for _ in range(5):
        flow = await send(gateway, "GET", "/users/1")
        got.append((flow.response.status_code, body_json(flow.response)["n"], flow.comment.rsplit(" ", 1)[1]))
    assert got == [
        (200, 1, "mock=example-0"),
        (200, 2, "mock=example-2"),
        (202, 3, "mock=example-3"),
        (202, 3, "mock=example-3"),
        (202, 3, "mock=example-3"),
    ]
    # another request's sequence is its own
    assert (await send(gateway, "GET", "/users/2")).response.get_content() == b"other"


async def test_a_reload_starts_the_sequences_again(mock_gateway, send):
    first = mock_gateway(SEQUENCE)
    await send(first, "GET", "/users/1")
    await send(first, "GET", "/users/1")
    reloaded = mock_gateway(SEQUENCE)
    assert body_json((await send(reloaded, "GET", "/users/1")).response) == {"n": 1}
    assert body_json((await send(first, "GET", "/users/1")).response) == {"n": 3}


async def test_fallbacks_form_a_sequence_too(mock_gateway, send):
    gateway = mock_gateway("examples: [{body: a}, {when: {}, body: b}]", path="/x")
    bodies = [(await send(gateway, "GET", "/x")).response.get_content() for _ in range(3)]
    assert bodies == [b"a", b"b", b"b"]


async def test_concurrent_requests_each_take_their_own_step(mock_gateway):
    yaml = "replay_latency: true\nexamples:\n" + "".join(f"  - {{when: {{path: {{id: '1'}}}}, body: {{n: {n}}}, latency: 0.05}}\n" for n in range(5))
    gateway = mock_gateway(yaml)
    flows = [make_flow("GET", "/users/1") for _ in range(5)]
    await asyncio.gather(*(gateway.handle(f, reverse_mode=True, direct=False) for f in flows))
    assert sorted(body_json(f.response)["n"] for f in flows) == [0, 1, 2, 3, 4]


# -- answers --------------------------------------------------------------------------------


async def test_bodies_are_literal_never_templates(mock_gateway, send):
    gateway = mock_gateway(
        """
        examples:
          - when: {query: {t: "1"}}
            body: "at {{now}} for {{path.id}}"
          - body: {at: "{{now}}", id: "{{path.id}}"}
        """,
    )
    assert (await send(gateway, "GET", "/users/5?t=1")).response.get_content() == b"at {{now}} for {{path.id}}"
    assert body_json((await send(gateway, "GET", "/users/5")).response) == {"at": "{{now}}", "id": "{{path.id}}"}


async def test_content_types_and_lengths(mock_gateway, send):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\xff").decode()
    gateway = mock_gateway(
        f"""
        examples:
          - when: {{path: {{id: json}}}}
            body: {{a: "é"}}
          - when: {{path: {{id: text}}}}
            body: "héllo"
          - when: {{path: {{id: bin}}}}
            body_base64: "{png}"
          - when: {{path: {{id: typed}}}}
            headers: {{content-type: application/vnd.api+json, Content-Length: "999", Transfer-Encoding: chunked, Content-Encoding: gzip, X-Request-ID: recorded}}
            body: [1, 2]
          - when: {{path: {{id: empty}}}}
            status: 204
          - when: {{path: {{id: cookies}}}}
            headers: {{Set-Cookie: [a=1, b=2]}}
            body: "ok"
        """,
    )
    flow = await send(gateway, "GET", "/users/json")
    assert flow.response.headers["Content-Type"] == "application/json"
    assert flow.response.get_content() == '{"a":"é"}'.encode()
    assert flow.response.headers["Content-Length"] == str(len('{"a":"é"}'.encode()))

    flow = await send(gateway, "GET", "/users/text")
    assert flow.response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert flow.response.get_content() == "héllo".encode()

    flow = await send(gateway, "GET", "/users/bin")
    assert flow.response.headers["Content-Type"] == "application/octet-stream"
    assert flow.response.get_content() == b"\x89PNG\r\n\x1a\n\x00\xff"
    assert flow.response.headers["Content-Length"] == "10"

    flow = await send(gateway, "GET", "/users/typed", headers={"X-Request-ID": "mine"})
    headers = flow.response.headers
    assert headers.get_all("Content-Type") == ["application/vnd.api+json"]
    assert headers.get_all("Content-Length") == ["5"]
    assert "Transfer-Encoding" not in headers and "Content-Encoding" not in headers
    assert "X-Request-ID" not in headers  # the core stamps this request's own id on the answer
    assert flow.response.get_content() == b"[1,2]"

    flow = await send(gateway, "GET", "/users/empty")
    assert flow.response.status_code == 204
    assert flow.response.get_content() == b""
    assert "Content-Length" not in flow.response.headers and "Content-Type" not in flow.response.headers

    flow = await send(gateway, "GET", "/users/cookies")
    assert flow.response.headers.get_all("Set-Cookie") == ["a=1", "b=2"]


async def test_head_gets_the_get_headers_without_the_body(mock_gateway, send):
    gateway = mock_gateway(USERS, methods="GET")
    flow = await send(gateway, "HEAD", "/users/7")
    assert flow.response.status_code == 200
    assert flow.response.headers["X-Kind"] == "seven"
    assert flow.response.headers["Content-Type"] == "application/json"
    assert flow.response.headers["Content-Length"] == str(len(b'{"id":7,"name":"Ada"}'))
    assert flow.response.raw_content == b""


async def test_replay_latency(mock_gateway, send, monkeypatch):
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    gateway = mock_gateway("replay_latency: true\nexamples: [{when: {path: {id: '1'}}, body: a, latency: 250ms}, {body: b, latency: 3600}, {when: {path: {id: '2'}}, body: c}]")
    monkeypatch.setattr(asyncio, "sleep", fake_sleep)  # the wait is in mock_features
    await send(gateway, "GET", "/users/1")
    await send(gateway, "GET", "/users/9")
    await send(gateway, "GET", "/users/2")  # no recorded latency: no wait
    assert slept == [0.25, 60.0]


async def test_latency_is_not_replayed_unless_asked(mock_gateway, send):
    gateway = mock_gateway("examples: [{body: a, latency: 30}]", path="/x")
    started = time.monotonic()
    flow = await send(gateway, "GET", "/x")
    assert flow.response.get_content() == b"a"
    assert time.monotonic() - started < 5


async def test_replayed_latency_is_real_and_cancellable(mock_gateway):
    gateway = mock_gateway("replay_latency: true\nexamples: [{body: a, latency: 0.1}, {body: b, latency: 30}]", path="/x")
    flow = make_flow("GET", "/x")
    started = time.monotonic()
    await gateway.handle(flow, reverse_mode=True, direct=False)
    assert time.monotonic() - started >= 0.1
    task = asyncio.create_task(gateway.handle(make_flow("GET", "/x"), reverse_mode=True, direct=False))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the cancelled request used its step: the next one gets the last example (which repeats)
    assert gateway.endpoints[0].handler.fallback.position == 2


# -- passthrough ----------------------------------------------------------------------------


async def test_passthrough_forwards_to_the_requests_own_url(mock_gateway):
    gateway = mock_gateway('passthrough: true\nexamples: [{when: {path: {id: "1"}}, body: one}]')
    flow = make_flow("GET", "/users/2?x=1", headers={"X-Keep": "yes", "X-Request-ID": "abc"}, host="upstream.test", port=8081)
    ctx = gateway.route(flow, reverse_mode=True, direct=False)
    answer = await gateway.answer(ctx)
    assert isinstance(answer, Forward)
    assert answer.url == "http://upstream.test:8081/users/2?x=1"
    headers = dict(answer.headers)
    assert headers["X-Keep"] == "yes"
    assert headers["X-Request-ID"] == "abc"
    assert headers["traceparent"].startswith("00-")
    assert ctx.notes["mock"] == "passthrough"


async def test_passthrough_through_handle_leaves_the_flow_to_mitmproxy(mock_gateway):
    gateway = mock_gateway("passthrough: true\nexamples: [{when: {path: {id: '1'}}, body: one}]")
    flow = make_flow("POST", "/users/2", body=b'{"a": 1}', host="upstream.test", port=8081)
    await gateway.handle(flow, reverse_mode=True, direct=False)
    assert flow.response is None
    assert flow.request.url == "http://upstream.test:8081/users/2"
    assert flow.request.content == b'{"a": 1}'
    assert "mock=passthrough" in flow.comment and "forwarded=mitmproxy" in flow.comment
    # a match is still answered
    matched = make_flow("GET", "/users/1")
    await gateway.handle(matched, reverse_mode=True, direct=False)
    assert matched.response.get_content() == b"one"


async def test_the_fallback_wins_over_passthrough(mock_gateway, send):
    gateway = mock_gateway("passthrough: true\nexamples: [{body: fallback}]")
    assert (await send(gateway, "GET", "/users/3")).response.get_content() == b"fallback"


async def test_passthrough_with_no_examples(mock_gateway, send):
    flow = await send(mock_gateway("passthrough: true"), "GET", "/users/3")
    assert flow.response is None


async def test_passthrough_never_sends_a_request_to_the_gateway_itself(mock_gateway):
    gateway = mock_gateway("passthrough: true\nexamples: [{when: {path: {id: '1'}}, body: one}]")
    flow = make_flow("GET", "/users/2", host="127.0.0.1", port=8080, mode="regular", sockname=("127.0.0.1", 8080))
    await gateway.handle(flow, reverse_mode=False, direct=True)
    assert flow.response.status_code == 502
    assert "gateway's own address" in body_json(flow.response)["error"]
    # a client using the gateway as its proxy asked for another server: that one gets it
    proxied = make_flow("GET", "/users/2", host="real.test", port=80, mode="regular", sockname=("127.0.0.1", 8080))
    await gateway.handle(proxied, reverse_mode=False, direct=False)
    assert proxied.response is None and proxied.request.url == "http://real.test/users/2"


# -- validation -----------------------------------------------------------------------------


def test_config_model_defaults():
    config = MockConfig.model_validate({"examples": [{"body": 1}], "schema": {"type": "integer"}})
    assert config.schema_ == {"type": "integer"}
    assert config.passthrough is False and config.replay_latency is False
    assert config.examples[0].status == 200 and config.examples[0].is_fallback


def test_validation_errors_are_located(mock_errors):
    errors = mock_errors(
        """
        examples:
          - when: {path: {id: "1"}}
            body: {a: 1}
            body_base64: aGk=
          - status: 700
          - status: 204
            body: nope
          - body_base64: "not base64!"
          - headers: {"Bad Name": x}
          - when: {query: {flag: true}}
          - when: {bogus: 1}
        schema: [not, a, mapping]
        """
    )
    assert errors == [
        "endpoints[0].config.mock.examples[0]: give either `body` or `body_base64`, not both",
        "endpoints[0].config.mock.examples[1].status: expected an HTTP status from 100 to 599, got 700",
        "endpoints[0].config.mock.examples[2]: a 204 answer has no body; remove `body`/`body_base64`, or use another status",
        "endpoints[0].config.mock.examples[3].body_base64: is not valid base64 (A-Z, a-z, 0-9, +, / and = padding)",
        "endpoints[0].config.mock.examples[4].headers: 'Bad Name' is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)",
        'endpoints[0].config.mock.examples[5].when.query.flag: expected a string or a number, got true; quote it ("true") to mean the text',
        "endpoints[0].config.mock.examples[6].when.bogus: unknown key 'bogus' (expected one of: path, query, headers, body)",
        "endpoints[0].config.mock.schema: expected a mapping, got list",
    ]


def test_when_path_must_name_a_parameter_of_the_endpoint(mock_errors):
    errors = mock_errors('examples: [{when: {path: {id: "1"}}, body: a}, {when: {path: {user_id: "1"}}, body: b}]')
    assert errors == ["endpoints[0].config.mock.examples[1].when.path.user_id: the endpoint's path '/users/{id}' has no parameter 'user_id'; its parameters are id"]
    errors = mock_errors('examples: [{when: {path: {id: "1"}}, body: a}]', path="/plain")
    assert errors == ["endpoints[0].config.mock.examples[0].when.path.id: the endpoint's path '/plain' has no parameter 'id'; it has no parameters"]


def test_examples_or_passthrough_are_needed(mock_errors):
    assert mock_errors("examples: []") == [
        "endpoints[0].config.mock: needs at least one example in `examples` (or `passthrough: true` to send every request upstream)"
    ]


def test_handler_mock_needs_its_config(project, load_errors):
    path = project.blueprint("name: x\nendpoints:\n  - {path: /a, handler: mock}\n")
    assert [d.message for d in load_errors(path)] == ["handler 'mock' needs `config.mock` (examples, passthrough, replay_latency, schema)"]


def test_body_must_be_json_data():
    with pytest.raises(ValueError, match="key 1 in a is not a string"):
        MockConfig.model_validate({"examples": [{"body": {"a": {1: "x"}}}]})
    with pytest.raises(ValueError, match="is a set"):
        MockConfig.model_validate({"examples": [{"when": {"body": {"a": {1, 2}}}}]})
    json.dumps(MockConfig.model_json_schema())  # `backworks schema` can describe it


# -- redacted values, absent headers, examples_file (issue 18) --------------------------------


def test_value_matches_compares_placeholders_by_fingerprint():
    from backworks_core.capture.redact import placeholder
    from backworks_core.handlers.mock.matching import value_matches

    assert value_matches("s1", "s1") and not value_matches("s1", "s2")
    assert value_matches(placeholder("s1"), "s1") and not value_matches(placeholder("s1"), "s2")
    assert not value_matches(placeholder(""), "")  # a secret is never empty
    assert value_matches(f"Bearer {placeholder('tok')}", "Bearer tok")
    assert not value_matches(f"Bearer {placeholder('tok')}", "Basic tok")
    assert not value_matches(f"Bearer {placeholder('tok')}", "Bearer other")
    cookie = f"sid={placeholder('a;b')}; lang=en; csrf={placeholder('c')}"
    assert value_matches(cookie, "sid=a;b; lang=en; csrf=c")  # the split that fits the fingerprints
    assert not value_matches(cookie, "sid=a;b; lang=fr; csrf=c")
    assert value_matches("[REDACTED]", "anything") and not value_matches("[REDACTED]", "")  # older recordings
    assert value_matches("key=[REDACTED]&x=1", "key=k&x=1")


async def test_redacted_path_query_and_header_values_match_the_same_secret(mock_gateway, send):
    from backworks_core.capture.redact import placeholder

    gateway = mock_gateway(
        f"""
        examples:
          - when: {{path: {{id: "{placeholder('tok-1')}"}}, query: {{session_id: "{placeholder('s1')}"}}}}
            body: one
          - when: {{path: {{id: "{placeholder('tok-1')}"}}, query: {{session_id: "{placeholder('s2')}"}}, headers: {{Authorization: "Bearer {placeholder('k')}"}}}}
            body: two
        """
    )

    async def text(path: str, **kwargs) -> bytes:
        return (await send(gateway, "GET", path, **kwargs)).response.get_content()

    assert await text("/users/tok-1?session_id=s1") == b"one"
    assert await text("/users/tok-1?session_id=s2", headers={"Authorization": "Bearer k"}) == b"two"
    assert (await send(gateway, "GET", "/users/tok-1?session_id=s2")).response.status_code == 404
    assert (await send(gateway, "GET", "/users/tok-2?session_id=s1")).response.status_code == 404


async def test_a_null_header_condition_means_absent(mock_gateway, send):
    gateway = mock_gateway(
        """
        examples:
          - when: {headers: {Authorization: null}}
            status: 401
          - when: {headers: {Authorization: "Basic x"}}
            body: welcome
        """,
        path="/auth",
    )
    assert (await send(gateway, "GET", "/auth")).response.status_code == 401
    assert (await send(gateway, "GET", "/auth", headers={"Authorization": "Basic x"})).response.get_content() == b"welcome"
    assert (await send(gateway, "GET", "/auth", headers={"Authorization": "Basic y"})).response.status_code == 404


@pytest.mark.parametrize("header_first", [True, False])
async def test_a_header_condition_wins_when_sent_and_the_plain_example_when_not(mock_gateway, send, header_first):
    with_header = '- {when: {path: {id: "1"}, headers: {If-None-Match: \'"abc"\'}}, status: 304}'
    plain = '- {when: {path: {id: "1"}}, body: fresh}'
    gateway = mock_gateway("examples:\n" + "\n".join([with_header, plain] if header_first else [plain, with_header]))
    assert (await send(gateway, "GET", "/users/1", headers={"If-None-Match": '"abc"'})).response.status_code == 304
    assert (await send(gateway, "GET", "/users/1")).response.get_content() == b"fresh"
    assert (await send(gateway, "GET", "/users/1", headers={"If-None-Match": '"other"'})).response.get_content() == b"fresh"


async def test_examples_file_continues_the_examples(project, mock_gateway, send):
    project.write("data/more.jsonl", '{"when": {"path": {"id": "2"}}, "body": {"id": 2}}\n\n{"body": "${NOT_EXPANDED}"}\n')
    gateway = mock_gateway(
        """
        examples:
          - when: {path: {id: "1"}}
            body: {id: 1}
        examples_file: data/more.jsonl
        """
    )
    assert (await send(gateway, "GET", "/users/2")).response.get_content() == b'{"id":2}'
    flow = await send(gateway, "GET", "/users/3")
    assert flow.response.get_content() == b"${NOT_EXPANDED}"  # read as it is: no ${VAR} expansion
    assert gateway.blueprint.files >= {(project.root / "data/more.jsonl").resolve()}  # edited: reloaded


def test_examples_file_errors_name_the_file_and_line(project, mock_errors):
    assert mock_errors("examples_file: missing.jsonl") == [
        f"endpoints[0].config.mock: examples_file {project.root / 'missing.jsonl'}: cannot read it: No such file or directory"
    ]
    project.write("bad.jsonl", '{"status": 200}\n{"status": 700}\n')
    assert mock_errors("examples_file: bad.jsonl") == [
        f"endpoints[0].config.mock: examples_file {project.root / 'bad.jsonl'}:2: status: expected an HTTP status from 100 to 599, got 700"
    ]
    project.write("notjson.jsonl", "status: 200\n")
    assert "notjson.jsonl:1: not a JSON object" in mock_errors("examples_file: notjson.jsonl")[0]
    project.write("param.jsonl", '{"when": {"path": {"user": "1"}}}\n')
    assert mock_errors("examples_file: param.jsonl") == [
        f"endpoints[0].config.mock.examples_file: {project.root / 'param.jsonl'}: example 1: the endpoint's path '/users/{{id}}' has no parameter 'user'; its parameters are id"
    ]
