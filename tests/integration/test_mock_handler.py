"""`handler: mock` through a real mitmdump in reverse mode, with a real upstream behind it."""

from __future__ import annotations

import base64
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration.harness import Proxy, Upstream

pytestmark = pytest.mark.integration

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x01\xff").decode()

BLUEPRINT = f"""
name: mocks
endpoints:
  - path: /users/{{id}}
    method: [GET, POST]
    handler: mock
    config:
      mock:
        examples:
          - when: {{path: {{id: "7"}}}}
            headers: {{Content-Type: application/json, Content-Length: "999", X-Recorded: "yes"}}
            body: {{id: 7, name: Ada, at: "{{{{now}}}}"}}
          - when: {{path: {{id: "7"}}, query: {{view: full}}}}
            body: {{id: 7, name: Ada Lovelace, born: 1815}}
          - status: 404
            body: {{error: not found}}
  - path: /orders
    method: POST
    handler: mock
    config:
      mock:
        examples:
          - when: {{body: {{kind: express}}}}
            status: 201
            body: {{order: express}}
          - when: {{body: {{kind: express, items: [a, b]}}}}
            status: 201
            body: {{order: express-ab}}
  - path: /jobs/{{id}}
    handler: mock
    config:
      mock:
        examples:
          - when: {{path: {{id: "1"}}}}
            body: {{state: queued}}
          - when: {{path: {{id: "1"}}}}
            body: {{state: running}}
          - when: {{path: {{id: "1"}}}}
            body: {{state: done}}
  - path: /api/users/{{id}}
    method: ANY
    handler: mock
    config:
      mock:
        passthrough: true
        examples:
          - when: {{path: {{id: "1"}}}}
            body: {{id: 1, mocked: true}}
  - path: /files/logo
    handler: mock
    config:
      mock:
        examples:
          - headers: {{Content-Type: image/png}}
            body_base64: "{PNG}"
  - path: /slow
    handler: mock
    config:
      mock:
        replay_latency: true
        examples:
          - body: slow
            latency: 0.4
  - path: /fast
    handler: mock
    config:
      mock:
        examples:
          - body: fast
            latency: 30
"""


@pytest.fixture
def mocks(tmp_path: Path, upstream: Upstream, start_proxy) -> Proxy:  # type: ignore[no-untyped-def]
    blueprint = tmp_path / "blueprint.yaml"
    blueprint.write_text(textwrap.dedent(BLUEPRINT))
    return start_proxy(blueprint, "--mode", f"reverse:{upstream.url}")


def test_answers_by_path_parameter_and_query(mocks: Proxy, upstream: Upstream) -> None:
    reply = mocks.get("/users/7")
    assert reply.status == 200
    assert reply.json == {"id": 7, "name": "Ada", "at": "{{now}}"}  # recorded data, never a template
    assert reply.header("X-Recorded") == "yes"
    assert reply.header("Content-Length") == str(len(reply.body))
    assert reply.header("X-Request-ID")
    more = mocks.get("/users/7?view=full")  # the more specific example wins
    assert more.json == {"id": 7, "name": "Ada Lovelace", "born": 1815}
    assert upstream.received == []


def test_fallback_and_404(mocks: Proxy) -> None:
    fallback = mocks.get("/users/99")
    assert fallback.status == 404
    assert fallback.json == {"error": "not found"}
    missing = mocks.send("POST", "/orders", body=b'{"kind": "standard"}', headers={"Content-Type": "application/json"})
    assert missing.status == 404
    body = missing.json
    assert body["error"] == "no mock example matches POST /orders"
    assert body["status"] == 404
    assert body["request_id"] == missing.header("X-Request-ID")


def test_answers_by_json_body_subset(mocks: Proxy) -> None:
    def order(body: bytes) -> tuple[int, dict]:
        reply = mocks.send("POST", "/orders", body=body, headers={"Content-Type": "application/json"})
        return reply.status, reply.json

    assert order(b'{"kind": "express", "note": "ring twice"}') == (201, {"order": "express"})
    assert order(b'{"kind": "express", "items": ["a", "b"], "note": 1}') == (201, {"order": "express-ab"})
    assert order(b'{"kind": "express", "items": ["b", "a"]}') == (201, {"order": "express"})


def test_recorded_sequence_plays_in_order_then_the_last_repeats(mocks: Proxy) -> None:
    states = [mocks.get("/jobs/1").json["state"] for _ in range(5)]
    assert states == ["queued", "running", "done", "done", "done"]
    assert mocks.get("/jobs/2").status == 404


def test_passthrough_reaches_the_real_upstream(mocks: Proxy, upstream: Upstream) -> None:
    assert mocks.get("/api/users/1").json == {"id": 1, "mocked": True}
    assert upstream.received == []
    reply = mocks.send("PUT", "/api/users/2?x=1", body=b'{"name": "Grace"}', headers={"X-Keep": "yes", "X-Request-ID": "pass-1"})
    assert reply.status == 200
    assert reply.json["upstream"] == "up-1"
    assert reply.json["path"] == "/api/users/2"
    assert reply.json["query"] == "x=1"
    assert reply.json["body"] == '{"name": "Grace"}'
    assert reply.header("X-Upstream") == "up-1"
    assert reply.header("X-Request-ID") == "pass-1"
    seen = upstream.received[-1]
    assert seen.method == "PUT"
    assert seen.headers["X-Keep"] == "yes"
    assert seen.headers["X-Request-ID"] == "pass-1"
    assert seen.headers["traceparent"].startswith("00-")


def test_binary_body_and_head(mocks: Proxy) -> None:
    reply = mocks.get("/files/logo")
    assert reply.body == base64.b64decode(PNG)
    assert reply.header("Content-Type") == "image/png"
    head = mocks.send("HEAD", "/users/7")
    assert head.status == 200
    assert head.body == b""
    assert head.header("Content-Length") == str(len(mocks.get("/users/7").body))
    assert head.header("X-Recorded") == "yes"


def test_replay_latency(mocks: Proxy) -> None:
    started = time.monotonic()
    assert mocks.get("/slow").body == b"slow"
    assert time.monotonic() - started >= 0.4
    # a recorded latency is only waited out with replay_latency: true
    assert mocks.get("/fast", timeout=10).body == b"fast"
