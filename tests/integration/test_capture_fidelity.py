"""Transparent capture and faithful bodies, end to end.

A real `backworks capture --upstream` sits in front of a real upstream: the upstream must receive
exactly what the client sent (every header in order and case, the body bytes with their
encoding, nothing added), and the client must get exactly what the upstream answered. Then the
upstream is stopped, and the blueprint the capture wrote, served by a real mitmdump, must answer
the same requests with byte-identical bodies and the recorded headers.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.integration.harness import BIN, free_port, request, start_capture, stop_capture, stop_process_group, Upstream, wait_for_port

pytestmark = pytest.mark.integration

PRETTY = json.dumps({"zeta": 1, "alpha": {"list": [1, 2.5, None], "name": "Ren\u00e9e"}}, indent=2).encode() + b"\n"
ESCAPED = b'{"id":2,"name":"Ren\\u00e9e","path":"\\/things\\/2","n":1.0E5}'
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\xff\xfe"
TEMPLATE = b"<script>const url = `${base}/x`;</script>\n"
# Headers compared between the live answer and the mock's.
MATTER = ("content-type", "etag", "location", "set-cookie", "cache-control", "link", "vary", "content-encoding")


def fidelity_upstream() -> Upstream:
    async def pretty(req: web.Request) -> web.Response:
        headers = [("Content-Type", "application/json; charset=utf-8"), ("ETag", '"v1"'), ("Cache-Control", "max-age=60"),
                   ("Set-Cookie", "lang=en; Path=/"), ("Set-Cookie", "theme=dark; Path=/; HttpOnly"), ("Link", '</pretty?page=2>; rel="next"')]
        response = web.Response(body=PRETTY)
        for name, value in headers:
            response.headers.add(name, value)
        return response

    async def zipped(req: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(PRETTY, mtime=0), headers={"Content-Type": "application/json", "Content-Encoding": "gzip", "Vary": "Accept-Encoding"})

    async def binary(req: web.Request) -> web.Response:
        return web.Response(body=PNG, headers={"Content-Type": "image/png"})

    async def things(req: web.Request) -> web.Response:
        return web.Response(status=201, body=ESCAPED, headers={"Content-Type": "application/json", "Location": "/things/2"})

    async def script(req: web.Request) -> web.Response:
        return web.Response(body=TEMPLATE, headers={"Content-Type": "application/javascript"})

    async def empty(req: web.Request) -> web.Response:
        return web.Response(status=204, headers={"ETag": '"e"'})

    return Upstream("fidelity", routes={"/pretty": pretty, "/zipped": zipped, "/binary": binary, "/things": things, "/script.js": script, "/empty": empty})


def traffic(port: int) -> list[tuple[str, str, list[tuple[str, str]], bytes | None]]:
    host = ("Host", f"127.0.0.1:{port}")
    posted = gzip.compress(b'{"name": "Ren\\u00e9e"}')
    return [
        ("GET", "/pretty", [host, ("User-Agent", "curl/8.5.0"), ("Accept", "*/*"), ("X-Custom-Case", "MiXeD"), ("x-dup", "1"), ("X-Dup", "2")], None),
        ("GET", "/zipped", [host, ("accept-encoding", "gzip"), ("User-Agent", "python-requests/2.32")], None),
        ("GET", "/binary", [host, ("Accept", "image/*"), ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")], None),
        ("POST", "/things", [host, ("Content-Type", "application/json"), ("Content-Encoding", "gzip"), ("Content-Length", str(len(posted))), ("X-Request-ID", "client-7")], posted),
        ("GET", "/script.js", [host, ("X-Forwarded-For", "10.1.2.3"), ("Via", "1.1 corp-proxy")], None),
        ("HEAD", "/pretty", [host, ("User-Agent", "HTTPie/3.2")], None),
        ("GET", "/empty", [host], None),
    ]


def send(port: int, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
    """Exactly these header lines, in this order and case, and nothing else (no Host or Accept-Encoding of its own)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def matter(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in headers if name.lower() in MATTER]


def decoded(headers: list[tuple[str, str]], body: bytes) -> bytes:
    """The body as a client reads it (curl --compressed, requests): its coding undone."""
    return gzip.decompress(body) if ("content-encoding", "gzip") in [(k.lower(), v) for k, v in headers] else body


def test_capture_is_transparent_and_its_mocks_answer_byte_for_byte(tmp_path: Path, start_proxy) -> None:
    upstream = fidelity_upstream().start()
    port = free_port()
    output = tmp_path / "recorded.yaml"
    process = start_capture(port, "--upstream", upstream.url, "-o", str(output))
    try:
        live = [send(port, method, path, headers, body) for method, path, headers, body in traffic(port)]
        log = stop_capture(process)
    finally:
        stop_process_group(process)
        upstream.stop()
    assert process.returncode == 0, log

    # The upstream got each request exactly as the client sent it: nothing added, removed or reordered.
    assert len(upstream.received) == len(live)
    for (method, path, headers, body), received in zip(traffic(port), upstream.received):
        assert (received.method, received.path) == (method, path)
        assert received.raw_headers == headers, (path, received.raw_headers)
        # aiohttp undoes a request's Content-Encoding: with the client's own Content-Encoding and
        # Content-Length above, these are the client's gzip bytes, passed on as they were.
        assert received.body == (gzip.decompress(body) if body and ("Content-Encoding", "gzip") in headers else body or b""), path
    # The client got the upstream's answer, without an id of Backworks' own.
    for (_, path, _, _), (status, headers, body) in zip(traffic(port), live):
        assert "x-request-id" not in [name.lower() for name, _ in headers], path
    assert live[1][2] == gzip.compress(PRETTY, mtime=0) and ("Content-Encoding", "gzip") in live[1][1]  # passed on encoded

    journal = (tmp_path / "recorded.yaml.jsonl").read_text()
    # Only what the clients sent themselves, once each; nothing of Backworks' own, either way.
    counts = {name: journal.lower().count(f'"{name}"') for name in ("traceparent", "x-request-id", "x-forwarded-for", "x-forwarded-proto", "via")}
    assert counts == {"traceparent": 1, "x-request-id": 1, "x-forwarded-for": 1, "x-forwarded-proto": 0, "via": 1}, counts

    document = yaml.safe_load(output.read_text())
    assert document["endpoints"], output.read_text()
    written = output.read_text()
    assert "json_layout:" in written and "indent: 2" in written  # the pretty-printed body stays readable data
    assert "$${base}" in written  # read back as ${base}, not as an environment variable

    # The upstream is gone: the recording answers alone, byte for byte.
    mocks = start_proxy(output, "--mode", "reverse:http://127.0.0.1:9")
    for (method, path, headers, body), (status, live_headers, live_body) in zip(traffic(mocks.port), live):
        mock_status, mock_headers, mock_body = send(mocks.port, method, path, headers, body)
        assert mock_status == status, (method, path)
        assert mock_body == decoded(live_headers, live_body), (method, path, mock_body[:200])
        expected = [pair for pair in matter(live_headers) if pair != ("content-encoding", "gzip")]  # served decoded
        assert matter(mock_headers) == expected, (method, path)
        if method == "HEAD" or mock_body:
            sent_length = dict((k.lower(), v) for k, v in mock_headers)["content-length"]
            assert sent_length == str(len(decoded(live_headers, live_body))) if method != "HEAD" else sent_length == dict((k.lower(), v) for k, v in live_headers)["content-length"]
