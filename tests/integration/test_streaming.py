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

from tests.integration.harness import Proxy, ResettingServer, Upstream, free_port

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


def memory(proxy: Proxy, field: str) -> int:
    """A memory figure of the mitmdump process from /proc, in bytes (VmHWM: the peak; VmRSS: now)."""
    assert proxy.process is not None
    for line in Path(f"/proc/{proxy.process.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc status")


def peak_rss(proxy: Proxy) -> int:
    return memory(proxy, "VmHWM")


def current_rss(proxy: Proxy) -> int:
    return memory(proxy, "VmRSS")


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


# -- around the buffer limit: failover, resets, Backworks' own answers, held handlers ---------

LIMIT = 64 * 1024
SMALL_LIMIT = ("--set", "backworks_buffer_limit=64k")


def send_body(proxy: Proxy, method: str, path: str, size: int, *, chunked: bool, timeout: float = 30) -> tuple[int, http.client.HTTPMessage, bytes]:
    """`size` bytes of `pattern` in one request, with a Content-Length or chunked."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/octet-stream"}
        if not chunked:
            headers["Content-Length"] = str(size)
        connection.request(method, path, body=pattern(size), headers=headers, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def pool_blueprint(folder: Path, targets: list[tuple[str, str]], retries: str, extra: str = "") -> Path:
    listed = ", ".join(f'{{name: {name}, url: "{url}"}}' for name, url in targets)
    path = folder / "blueprint.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: streaming-pool
            plugins:
              proxy:
                config:
                  targets: [{listed}]
                  retries: {retries}
            endpoints:
              - path: /{{rest:path}}
                method: ANY
                handler: proxy
            {extra}
            """
        )
    )
    return path


class Uploads:
    """A raw `/upload` route that records what it received (bytes and digest) and echoes it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, object]] = []

    async def __call__(self, req: web.Request) -> web.StreamResponse:
        hasher, count = hashlib.sha256(), 0
        async for chunk in req.content.iter_chunked(256 * 1024):
            hasher.update(chunk)
            count += len(chunk)
        record = {"bytes": count, "sha256": hasher.hexdigest(), "content_length": req.headers.get("Content-Length")}
        self.seen.append(record)
        return web.json_response(record)


@pytest.fixture
def partial_reader() -> Iterator[ResettingServer]:
    server = ResettingServer(256 * 1024)
    yield server
    server.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_streamed_upload_fails_over_from_a_refusing_target(chunked: bool, tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    uploads = Uploads()
    good = make_upstream("good", raw_routes={"/upload": uploads})
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    blueprint = pool_blueprint(tmp_path, [("refused", refused), ("good", good.url)], "{attempts: 1, retry_on: [connect_failure]}")
    proxy = start_proxy(blueprint, *SMALL_LIMIT)
    size = 5 * MB
    for _ in range(2):  # round robin: one of the two starts on the refusing target
        status, _, body = send_body(proxy, "POST", "/upload", size, chunked=chunked)
        assert status == 200, body
        seen = json.loads(body)
        assert seen["bytes"] == size
        assert seen["sha256"] == digest(size)
        assert seen["content_length"] == (None if chunked else str(size))
    assert len(uploads.seen) == 2  # each upload reached the good target whole, once
    proxy.wait_for_log("on refused failed: cannot connect", timeout=5)  # and the refusing one was tried


def test_a_streamed_upload_is_not_sent_again_after_a_reset(tmp_path: Path, make_upstream, partial_reader: ResettingServer, start_proxy) -> None:  # type: ignore[no-untyped-def]
    uploads = Uploads()
    good = make_upstream("good", raw_routes={"/upload": uploads})
    retries = "{attempts: 2, retry_on: [connect_failure, reset], retry_non_idempotent: true}"
    blueprint = pool_blueprint(tmp_path, [("partial", partial_reader.url), ("good", good.url)], retries)
    proxy = start_proxy(blueprint, *SMALL_LIMIT)
    status, headers, body = send_body(proxy, "POST", "/upload", 5 * MB, chunked=False)
    assert status == 502, body
    error = json.loads(body)
    assert error["status"] == 502 and headers["X-Request-ID"] == error["request_id"]
    assert partial_reader.accepted == 1 and partial_reader.read[0] > 0  # part of the body went there
    assert uploads.seen == []  # and none of it to the good target: what was sent cannot be sent again
    log = proxy.wait_for_log("failed after 1 tries", timeout=5)
    assert "try 1 on partial failed" in log and "try 2" not in log
    # a held body of the same endpoint still is retried (retry_non_idempotent), on the good target
    status, _, body = send_body(proxy, "POST", "/upload", 1000, chunked=False)
    assert status == 200, body
    assert json.loads(body)["bytes"] == 1000


@pytest.mark.parametrize("mode", ["regular", "reverse"])
def test_an_unknown_path_with_a_large_chunked_upload_is_a_json_404(mode: str, tmp_path: Path, big_upstream: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "blueprint.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: only-uploads
            plugins:
              proxy:
                config:
                  targets: [{{name: big, url: "{big_upstream.url}"}}]
            endpoints:
              - path: /upload
                method: POST
                handler: proxy
            """
        )
    )
    extra = ["--mode", f"reverse:http://127.0.0.1:{free_port()}"] if mode == "reverse" else []
    proxy = start_proxy(path, *SMALL_LIMIT, *extra)
    status, headers, body = send_body(proxy, "POST", "/nowhere", 5 * MB, chunked=True)
    assert status == 404, body
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(body)
    assert set(error) == {"error", "status", "request_id"}
    assert error["error"] == "no endpoint matches POST /nowhere"
    assert headers["X-Request-ID"] == error["request_id"]
    # a method the endpoint does not take is Backworks' 405, body streamed or not
    status, headers, body = send_body(proxy, "PUT", "/upload", 5 * MB, chunked=True)
    assert status == 405, body
    assert headers["Allow"] == "POST"


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_responses_around_the_buffer_limit_arrive_whole(framing: str, tmp_path: Path, big_upstream: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(big_blueprint(tmp_path, big_upstream.url), *SMALL_LIMIT)
    for size in (LIMIT - 1, LIMIT, LIMIT + 1, 3 * LIMIT + 17):
        reply = proxy.get(f"/download?size={size}&framing={framing}")
        assert reply.status == 200, (size, reply.body[:200])
        assert len(reply.body) == size, size
        assert hashlib.sha256(reply.body).hexdigest() == digest(size), size
        assert reply.header("X-Size") == str(size)
        if framing == "length" or size <= LIMIT:
            # held bodies get their length; streamed ones keep the upstream's
            assert reply.header("Content-Length") == str(size), size
            assert reply.header("Transfer-Encoding") is None, size
        else:
            assert reply.header("Content-Length") is None, size
            assert reply.header("Transfer-Encoding") == "chunked", size


async def download_or_head(req: web.Request) -> web.StreamResponse:
    """`download`, but a HEAD gets the head only (aiohttp does not drop a body written to one)."""
    if req.method != "HEAD":
        return await download(req)
    size = int(req.query.get("size", BIG))
    response = web.StreamResponse(headers={"X-Size": str(size), "Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(req)
    await response.write_eof()
    return response


def test_head_of_a_large_download_has_the_length_and_no_body(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    upstream = make_upstream("head", raw_routes={"/download": download_or_head})
    proxy = start_proxy(big_blueprint(tmp_path, upstream.url), *SMALL_LIMIT)
    size = 5 * MB
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=15)
    try:
        connection.request("HEAD", f"/download?size={size}")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(size)
        assert response.getheader("X-Size") == str(size)
        assert response.read() == b""
        # the connection is still in step: nothing of a body follows the head
        connection.request("GET", "/download?size=1000")
        follow = connection.getresponse()
        assert follow.status == 200
        assert follow.read() == b"".join(pattern(1000))
    finally:
        connection.close()


@pytest.fixture
def held_proxy(tmp_path: Path, start_proxy) -> Proxy:  # type: ignore[no-untyped-def]
    """Endpoints whose handlers take the body whole (python, static), behind a 64k buffer limit."""
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "hashing.py").write_text(
        textwrap.dedent(
            """
            import hashlib

            def digest(request):
                return {"bytes": len(request.body), "sha256": hashlib.sha256(request.body).hexdigest(), "method": request.method}
            """
        )
    )
    path = tmp_path / "blueprint.yaml"
    path.write_text(
        textwrap.dedent(
            """
            name: held
            endpoints:
              - path: /digest
                method: [POST, PUT]
                handler: handlers/hashing.py:digest
              - path: /created
                method: POST
                handler: static
                config: {static: {status: 201, headers: {X-Static: "yes"}, body: {created: true}}}
            """
        )
    )
    return start_proxy(path, *SMALL_LIMIT)


def assert_static_answers_twice(proxy: Proxy, size: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        for _ in range(2):  # the whole body was read: the connection goes on with the next request
            connection.request("POST", "/created", body=pattern(size), encode_chunked=True)
            response = connection.getresponse()
            body = response.read()
            assert response.status == 201, body
            assert response.getheader("X-Static") == "yes"
            assert json.loads(body) == {"created": True}
    finally:
        connection.close()


def test_held_handlers_see_the_whole_of_a_large_chunked_body(held_proxy: Proxy) -> None:
    for size, chunked in ((MB, True), (MB, False), (LIMIT + 1, True), (LIMIT, True), (100, True), (0, True)):
        status, _, body = send_body(held_proxy, "POST", "/digest", size, chunked=chunked)
        assert status == 200, (size, chunked, body)
        assert json.loads(body) == {"bytes": size, "sha256": digest(size), "method": "POST"}, (size, chunked)
    assert_static_answers_twice(held_proxy, 512 * 1024)


def test_held_handlers_see_the_whole_of_a_body_over_a_mebibyte(held_proxy: Proxy) -> None:
    for size, chunked in ((5 * MB, True), (MB + 1, False)):
        status, _, body = send_body(held_proxy, "POST", "/digest", size, chunked=chunked)
        assert status == 200, (size, chunked, body)
        assert json.loads(body) == {"bytes": size, "sha256": digest(size), "method": "POST"}, (size, chunked)
    assert_static_answers_twice(held_proxy, 2 * MB)
