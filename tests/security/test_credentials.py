"""Upstream credentials and client-facing error bodies (docs/security.md, section 5), through a
real mitmdump.

A target written `http://user:p%40ss@host` sends `Authorization: Basic` of `user:p@ss` upstream
(replacing the client's own, never a 500) and its password shows nowhere: status API, metrics,
log, saved flows. A failed upstream is named by the target's `name` and the kind of failure,
never by its address or the system's error text, also on mitmproxy's own upstream path
(reverse-mode passthrough, WebSocket upgrades).
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.harness import Proxy, Reply, ResettingServer, Upstream, free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "gw-user", "p@ss-Zq81x"
WRITTEN = "p%40ss-Zq81x"  # the password as the URL spells it
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, WRITTEN, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
OS_TEXT = ("127.0.0.1", "Connect call failed", "Errno", "refused", "ECONNREFUSED")


def write(folder: Path, document: dict[str, Any]) -> Path:
    path = folder / "blueprint.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    return path


def with_credentials(upstream: Upstream) -> str:
    return f"http://{USER}:{WRITTEN}@127.0.0.1:{upstream.port}"


def status_api(proxy: Proxy) -> Reply:
    """The status API, on the admin listener when there is one (the proxy's listener before)."""
    admin_get = getattr(proxy, "admin_get", None)
    return admin_get("/__backworks/api/status") if admin_get else proxy.get("/__backworks/api/status")


def metrics(proxy: Proxy) -> Reply:
    admin_get = getattr(proxy, "admin_get", None)
    return admin_get("/metrics") if admin_get else proxy.get("/metrics")


def upgrade(port: int, path: str) -> Reply:
    """A WebSocket handshake as a client sends it; the answer read as plain HTTP."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "GET",
            path,
            headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"},
        )
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read() if response.status != 101 else b"")
    finally:
        connection.close()


def assert_no_address(text: str, *ports: int) -> None:
    for needle in OS_TEXT:
        assert needle not in text, (needle, text)
    for port in ports:
        assert not re.search(rf"(?<!\d){port}(?!\d)", text), (port, text)


def test_url_credentials_are_sent_as_basic_and_replace_the_clients(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    upstream = make_upstream("secured")
    flows = tmp_path / "flows.mitm"
    proxy = start_proxy(
        write(
            tmp_path,
            {
                "name": "credentials",
                "plugins": {
                    "proxy": {"config": {"targets": [{"name": "secured", "url": with_credentials(upstream), "health_check": {"path": "/health", "interval": "200ms"}}]}},
                },
                "endpoints": [{"path": "/api/{rest:path}", "handler": "proxy"}],
            },
        ),
        "-w",
        str(flows),
    )
    plain = proxy.get("/api/a")
    own = proxy.get("/api/b", headers={"Authorization": "Bearer the-clients-token-for-the-gateway"})
    assert plain.status == 200, plain.body
    assert own.status == 200, own.body  # was 500: aiohttp refuses a URL's credentials beside an Authorization header
    sent = {r.path: r for r in upstream.received}
    for path in ("/api/a", "/api/b"):
        fields = [v for k, v in sent[path].raw_headers if k.lower() == "authorization"]
        assert fields == [BASIC], fields  # one field, the target's: the client's token stays at the gateway
    deadline = time.monotonic() + 5
    while not any(r.path == "/health" for r in upstream.received) and time.monotonic() < deadline:
        time.sleep(0.05)
    probes = [r for r in upstream.received if r.path == "/health"]
    assert probes and probes[0].headers.get("Authorization") == BASIC  # health checks authenticate too

    status = status_api(proxy)
    assert status.status == 200
    text = status.body.decode()
    assert f"127.0.0.1:{upstream.port}" in text  # the target is listed...
    assert USER not in text and not any(secret in text for secret in SECRETS)  # ...without its credentials
    assert not any(secret in metrics(proxy).body.decode() for secret in SECRETS)
    proxy.stop()
    log = proxy.log()
    assert not any(secret in log for secret in SECRETS), log[-2000:]
    from mitmproxy import io

    with flows.open("rb") as handle:
        saved = list(io.FlowReader(handle).stream())
    assert saved and all("backworks:" in f.comment for f in saved)
    for flow in saved:
        assert not any(secret in flow.comment for secret in SECRETS), flow.comment
    raw = flows.read_bytes()
    assert not any(secret.encode() in raw for secret in SECRETS)


def test_a_websocket_upgrade_carries_the_targets_credentials(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    seen: list[str | None] = []

    async def accept(request: web.Request) -> web.WebSocketResponse:
        seen.append(request.headers.get("Authorization"))
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.close()
        return socket

    upstream = make_upstream("ws", raw_routes={"/chat": accept})
    proxy = start_proxy(
        write(
            tmp_path,
            {
                "name": "ws-credentials",
                "plugins": {"proxy": {"config": {"targets": [{"name": "ws", "url": with_credentials(upstream)}]}}},
                "endpoints": [{"path": "/chat", "handler": "proxy"}],
            },
        )
    )
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        connection.request(
            "GET",
            "/chat",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
                "Authorization": "Bearer the-clients-token",
            },
        )
        assert connection.getresponse().status == 101
    finally:
        connection.close()
    assert seen == [BASIC]


def test_a_target_that_refuses_is_named_not_described(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    dead = free_port()
    proxy = start_proxy(
        write(
            tmp_path,
            {
                "name": "down",
                "plugins": {"proxy": {"config": {"targets": [{"name": "backend-2", "url": f"http://127.0.0.1:{dead}"}]}}},
                "endpoints": [{"path": "/api", "handler": "proxy"}],
            },
        )
    )
    reply = proxy.get("/api")
    assert reply.status == 502
    error = reply.json["error"]
    assert "target backend-2" in error and "connect" in error, error
    assert_no_address(reply.body.decode())
    assert_no_address(error, dead)
    # The detail stays in the log, under the request id.
    line = proxy.wait_for_log(f"[{reply.json['request_id']}]")
    assert any(reply.json["request_id"] in l and str(dead) in l for l in line.splitlines())


def test_a_hanging_target_is_a_504_naming_it(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    slow = make_upstream("slow", delay=3.0)
    proxy = start_proxy(
        write(
            tmp_path,
            {
                "name": "slow",
                "plugins": {"proxy": {"config": {"upstreams": {"orders": {"timeout": "400ms", "targets": [{"name": "orders-1", "url": slow.url}]}}}}},
                "endpoints": [{"path": "/orders", "handler": "proxy", "config": {"proxy": {"upstream": "orders"}}}],
            },
        )
    )
    reply = proxy.get("/orders")
    assert reply.status == 504
    error = reply.json["error"]
    assert "timeout" in error and "target orders-1" in error, error
    assert_no_address(reply.body.decode())
    assert_no_address(error, slow.port)


def test_a_resetting_target_is_a_502_naming_the_reset(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    resetting = ResettingServer()
    try:
        proxy = start_proxy(
            write(
                tmp_path,
                {
                    "name": "reset",
                    "plugins": {"proxy": {"config": {"targets": [{"name": "flaky", "url": resetting.url}]}}},
                    "endpoints": [{"path": "/api", "handler": "proxy"}],
                },
            )
        )
        reply = proxy.get("/api")
    finally:
        resetting.stop()
    assert reply.status == 502
    error = reply.json["error"]
    assert "reset" in error and "target flaky" in error, error
    assert_no_address(reply.body.decode())
    assert_no_address(error, resetting.port)


def test_mitmproxys_own_upstream_path_names_no_address(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    """Reverse-mode passthrough of an unmatched request, and a WebSocket upgrade to a dead target."""
    dead_reverse, dead_ws = free_port(), free_port()
    proxy = start_proxy(
        write(
            tmp_path,
            {
                "name": "passthrough",
                "server": {"unmatched": "passthrough"},
                "plugins": {"proxy": {"config": {"targets": [{"name": "ws-2", "url": f"http://127.0.0.1:{dead_ws}"}]}}},
                "endpoints": [{"path": "/ws", "handler": "proxy"}],
            },
        ),
        "--mode",
        f"reverse:http://127.0.0.1:{dead_reverse}",
    )
    passed = proxy.get("/not/an/endpoint")
    assert passed.status == 502
    body = passed.body.decode()
    assert "upstream connect failed" in body, body
    assert_no_address(body, dead_reverse)
    socket = upgrade(proxy.port, "/ws")
    assert socket.status == 502
    body = socket.body.decode()
    assert "upstream connect failed (target ws-2)" in body, body
    assert_no_address(body, dead_ws)
    # The detail is in the log, under the flow's request id.
    log = proxy.wait_for_log("upstream connect to target ws-2")
    assert re.search(rf"\[[0-9a-f]+\] upstream connect to target ws-2 \(127\.0\.0\.1:{dead_ws}\) failed", log), log[-2000:]
