"""Middlewares from a third-party plugin (found through its entry point) in a real mitmdump."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, Proxy

pytestmark = pytest.mark.integration

THIRD_PARTY = ROOT / "tests" / "fixtures" / "thirdparty"

BLUEPRINT = """
    name: middleware
    plugins:
      - type: stamp
        config: {label: from-config}
    middlewares:
      - name: first
        plugin: stamp
        config: {path: "/api/*", methods: [GET]}
      - name: second
        plugin: stamp
        config: {deny_header: X-Go-Away}
      - name: third
        plugin: stamp
        config: {path: "/api/admin*"}
    endpoints:
      - path: /api/hello
        method: [GET, POST]
        handler: stamp.hello
        middleware: [second]
      - path: /api/admin/x
        handler: stamp.hello
      - path: /open
        handler: stamp.hello
"""


@pytest.fixture
def proxy(tmp_path: Path, start_proxy) -> Proxy:  # type: ignore[no-untyped-def]
    path = tmp_path / "blueprint.yaml"
    path.write_text(textwrap.dedent(BLUEPRINT))
    pythonpath = os.pathsep.join(filter(None, [str(THIRD_PARTY), os.environ.get("PYTHONPATH")]))
    return start_proxy(path, env={"PYTHONPATH": pythonpath})


def test_union_rule_in_blueprint_order(proxy: Proxy) -> None:
    # `first` by its filter (GET /api/*), `second` by reference; blueprint order
    reply = proxy.get("/api/hello")
    assert reply.json == {"hello": "from-config", "seen_by": ["first", "second"]}
    assert reply.header("X-Stamps") == "first,second"
    # POST: `first`'s methods filter does not match, the reference still applies
    assert proxy.send("POST", "/api/hello").json["seen_by"] == ["second"]
    # `third` by path filter only; `first` too (GET /api/*)
    assert proxy.get("/api/admin/x").json["seen_by"] == ["first", "third"]
    # neither a reference nor a filter: no middleware
    assert proxy.get("/open").json["seen_by"] == []


def test_middleware_answer_stops_the_request(proxy: Proxy) -> None:
    reply = proxy.get("/api/hello", headers={"X-Go-Away": "1"})
    assert reply.status == 403
    assert reply.json["error"] == "denied by second"


def test_failing_middleware_denies(proxy: Proxy) -> None:
    reply = proxy.get("/api/hello", headers={"X-Crash": "1"})
    assert reply.status == 500
    assert reply.json["error"] == "middleware 'first' failed; the request was denied"
    assert "hello" not in reply.json
    proxy.wait_for_log("stamp middleware bug")
