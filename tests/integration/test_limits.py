"""Limits, schema validation and faults through a real mitmdump: refused requests never reach the upstream."""

from __future__ import annotations

import http.client
import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Proxy

pytestmark = pytest.mark.integration

KB = 1024
MB = 1024 * KB


def write_blueprint(folder: Path, url: str) -> Path:
    path = folder / "blueprint.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: limits
            server: {{max_body_size: 1k, max_header_size: 4k}}
            plugins:
              proxy:
                config:
                  targets: [{{name: up, url: "{url}"}}]
            middlewares:
              - name: chaos
                plugin: fault
                config: {{path: /chaos/*, delay: {{duration: 300ms, percent: 100}}, allow_header: true}}
              - name: always-down
                plugin: fault
                config: {{path: /down/*, abort: {{status: 503, percent: 100}}}}
            endpoints:
              - path: /api/{{rest:path}}
                method: ANY
                handler: proxy
              - path: /orders
                method: POST
                handler: proxy
                config:
                  validate:
                    schema:
                      type: object
                      required: [items]
                      properties: {{items: {{type: array, items: {{type: object, properties: {{price: {{type: number}}}}}}}}}}
              - path: /stream/{{rest:path}}
                method: ANY
                handler: proxy
                config: {{limits: {{max_body_size: 2m}}}}
              - path: /chaos/{{rest:path}}
                method: ANY
                handler: proxy
              - path: /down/{{rest:path}}
                method: ANY
                handler: proxy
            """
        )
    )
    return path


def raw(proxy: Proxy, method: str, path: str, body: bytes | Iterator[bytes] | None = None, headers: dict[str, str] | None = None, chunked: bool = False) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        connection.close()


def blocks(total: int, size: int = 64 * KB) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        chunk = b"x" * min(size, total - sent)
        sent += len(chunk)
        yield chunk


@pytest.fixture
def setup(tmp_path: Path, make_upstream, start_proxy):  # type: ignore[no-untyped-def]
    upstream = make_upstream("up")
    proxy = start_proxy(write_blueprint(tmp_path, upstream.url))
    return upstream, proxy


def test_oversized_and_invalid_bodies_never_reach_the_upstream(setup) -> None:  # type: ignore[no-untyped-def]
    upstream, proxy = setup
    # Content-Length over the limit, small (held) and large (would stream)
    for size in (2 * KB, 5 * MB):
        status, headers, body = raw(proxy, "POST", "/api/upload", body=b"x" * size, headers={"Content-Type": "application/octet-stream"})
        assert status == 413, body
        error = json.loads(body)
        assert error["error"] == "request body is larger than the limit of 1024 bytes"
        assert error["request_id"] == headers["X-Request-ID"]
    # chunked, small and large
    for size in (3 * KB, 3 * MB):
        status, _, body = raw(proxy, "POST", "/api/upload", body=blocks(size), chunked=True)
        assert status == 413, body
    # a streamed endpoint (limit above the buffer limit): counted as it streams
    status, _, body = raw(proxy, "POST", "/stream/upload", body=blocks(3 * MB), chunked=True)
    assert status == 413, body
    status, _, body = raw(proxy, "POST", "/stream/upload", body=b"x" * (3 * MB))
    assert status == 413, body
    # headers
    status, _, body = raw(proxy, "POST", "/api/upload", body=b"{}", headers={"X-Big": "h" * 5000})
    assert status == 431, body
    # schema
    status, _, body = raw(proxy, "POST", "/orders", body=json.dumps({"items": [{"price": 1}, {"price": "x"}]}).encode(), headers={"Content-Type": "application/json"})
    assert status == 422
    assert json.loads(body)["path"] == "$.items[1].price"
    status, _, _ = raw(proxy, "POST", "/orders", body=b"not json", headers={"Content-Type": "application/json"})
    assert status == 400
    time.sleep(0.3)
    assert upstream.received == []
    # within the limits, all of them go through
    assert raw(proxy, "POST", "/api/upload", body=b"x" * KB)[0] == 200
    assert raw(proxy, "POST", "/api/upload", body=blocks(KB), chunked=True)[0] == 200
    assert raw(proxy, "POST", "/stream/upload", body=blocks(512 * KB), chunked=True)[0] == 200  # the test upstream reads at most 1 MiB
    assert raw(proxy, "POST", "/orders", body=b'{"items": [{"price": 2}]}', headers={"Content-Type": "application/json"})[0] == 200
    assert [len(r.body) for r in upstream.received] == [KB, KB, 512 * KB, 25]
    # the connection stays usable after a refusal
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    connection.request("POST", "/api/upload", body=b"x" * (2 * KB))
    first = connection.getresponse()
    first.read()
    connection.request("GET", "/api/after")
    second = connection.getresponse()
    second.read()
    connection.close()
    assert (first.status, second.status) == (413, 200)


def test_faults(setup) -> None:  # type: ignore[no-untyped-def]
    upstream, proxy = setup
    status, _, body = raw(proxy, "GET", "/down/x")
    assert status == 503
    assert json.loads(body)["error"] == "fault injected by middleware 'always-down' (abort=503)"
    started = time.monotonic()
    status, _, _ = raw(proxy, "GET", "/chaos/x")
    assert status == 200 and time.monotonic() - started >= 0.3
    status, _, body = raw(proxy, "GET", "/chaos/y", headers={"X-Backworks-Fault": "abort=418"})
    assert status == 418, body
    started = time.monotonic()
    status, _, _ = raw(proxy, "GET", "/chaos/z", headers={"X-Backworks-Fault": "delay=600ms"})
    assert status == 200 and time.monotonic() - started >= 0.6
    # the header is honoured only where allow_header is set, and never reaches the upstream
    status, _, _ = raw(proxy, "GET", "/api/w", headers={"X-Backworks-Fault": "abort=503"})
    assert status == 200
    assert [r.path for r in upstream.received] == ["/chaos/x", "/chaos/z", "/api/w"]
    assert "x-backworks-fault" not in {k.lower() for k in upstream.received[1].headers}
    assert upstream.received[2].headers.get("X-Backworks-Fault") == "abort=503"
