"""Bodies larger than the buffer limit stream through a real mitmdump, both ways, in bounded memory."""

from __future__ import annotations

import hashlib
import http.client
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.harness import Proxy, Upstream

pytestmark = pytest.mark.integration

MB = 1024 * 1024
BIG = 200 * MB
BLOCK = bytes(range(256)) * 256  # 64 KiB, so that a byte out of place changes the digest


def pattern(size: int) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        chunk = BLOCK[: min(len(BLOCK), size - sent)]
        sent += len(chunk)
        yield chunk


def digest(size: int) -> str:
    hasher = hashlib.sha256()
    for chunk in pattern(size):
        hasher.update(chunk)
    return hasher.hexdigest()


async def download(req: web.Request) -> web.StreamResponse:
    size = int(req.query.get("size", BIG))
    response = web.StreamResponse(headers={"X-Size": str(size), "Content-Type": "application/octet-stream"})
    if req.query.get("framing") == "chunked":
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    await response.prepare(req)
    for chunk in pattern(size):
        await response.write(chunk)
    await response.write_eof()
    return response


async def upload(req: web.Request) -> web.StreamResponse:
    hasher, count = hashlib.sha256(), 0
    async for chunk in req.content.iter_chunked(256 * 1024):
        hasher.update(chunk)
        count += len(chunk)
    return web.json_response(
        {"bytes": count, "sha256": hasher.hexdigest(), "content_length": req.headers.get("Content-Length"), "chunked": "chunked" in req.headers.get("Transfer-Encoding", "")}
    )


def big_blueprint(folder: Path, url: str, extra: str = "") -> Path:
    path = folder / "blueprint.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: streaming
            plugins:
              proxy:
                config:
                  targets: [{{name: big, url: "{url}"}}]
                  retries: {{attempts: 2, retry_on: [connect_failure, reset]}}
            endpoints:
              - path: /{{rest:path}}
                method: ANY
                handler: proxy
            {extra}
            """
        )
    )
    return path


def peak_rss(proxy: Proxy) -> int:
    """The mitmdump process's high-water mark of resident memory, in bytes."""
    assert proxy.process is not None
    for line in Path(f"/proc/{proxy.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def current_rss(proxy: Proxy) -> int:
    assert proxy.process is not None
    for line in Path(f"/proc/{proxy.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


@pytest.fixture
def big_upstream(make_upstream) -> Upstream:  # type: ignore[no-untyped-def]
    return make_upstream("big", raw_routes={"/download": download, "/upload": upload})


def warm_up(proxy: Proxy) -> None:
    reply = proxy.get("/download?size=1000")
    assert reply.status == 200 and len(reply.body) == 1000


def test_a_200_mb_response_streams_through_in_bounded_memory(tmp_path: Path, big_upstream: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(big_blueprint(tmp_path, big_upstream.url))
    warm_up(proxy)
    baseline = current_rss(proxy)
    for framing in ("length", "chunked"):
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
        connection.request("GET", f"/download?framing={framing}")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("X-Size") == str(BIG)
        if framing == "length":
            assert response.getheader("Content-Length") == str(BIG)
        hasher, received = hashlib.sha256(), 0
        while chunk := response.read(MB):
            hasher.update(chunk)
            received += len(chunk)
        connection.close()
        assert received == BIG, framing
        assert hasher.hexdigest() == digest(BIG), framing
    growth = peak_rss(proxy) - baseline
    # Held whole, one 200 MB body would take at least 200 MB more (mitmproxy keeps copies).
    assert growth < 64 * MB, f"mitmdump grew by {growth / MB:.0f} MB while streaming 200 MB"


def test_a_200_mb_request_streams_through_in_bounded_memory(tmp_path: Path, big_upstream: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(big_blueprint(tmp_path, big_upstream.url))
    warm_up(proxy)
    baseline = current_rss(proxy)
    for framing in ("length", "chunked"):
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
        headers = {"Content-Type": "application/octet-stream"}
        if framing == "length":
            headers["Content-Length"] = str(BIG)
        connection.request("POST", "/upload", body=pattern(BIG), headers=headers, encode_chunked=framing == "chunked")
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == 200, body
        seen = json.loads(body)
        assert seen["bytes"] == BIG, framing
        assert seen["sha256"] == digest(BIG), framing
        if framing == "length":  # the upstream gets the length the client sent, not chunks
            assert seen["content_length"] == str(BIG)
    growth = peak_rss(proxy) - baseline
    assert growth < 64 * MB, f"mitmdump grew by {growth / MB:.0f} MB while streaming 200 MB up"
