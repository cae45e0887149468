"""Decompression bombs and deep JSON against every feature that reads a request body.

A real mitmdump with a blueprint that has them all (auth.register/login, `validate:`, a Python
handler reading request.json, a mock `when.body`, an endpoint body transform and a transform
middleware in front of proxy endpoints, the capture plugin on), and a real upstream. Each bomb
is a few hundred bytes to a few KB that inflate to 200 MiB; each is answered 413 (never 500),
while another client keeps getting answers from a cheap endpoint, and the gateway's peak RSS
(VmHWM) stays within BASELINE + RSS_BOUND. See docs/security.md, "3. Bounded bodies".
"""

from __future__ import annotations

import gzip
import http.client
import json
import secrets
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import brotli
import pytest

from tests.integration.harness import Proxy, Reply, Upstream, request

try:
    import zstandard

    def zstd_compress(data: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=19).compress(data)
except ImportError:  # mitmproxy 12
    from backports import zstd  # type: ignore[import-not-found,no-redef]

    def zstd_compress(data: bytes) -> bytes:
        return zstd.compress(data, level=19)


MiB = 1024 * 1024
INFLATED = 200 * MiB
RSS_BOUND = 100 * MiB  # VmHWM may grow at most this much over the warmed-up baseline
CHEAP_BOUND = 2.0  # seconds: every answer to the other client, bombs or not

BLUEPRINT = """
name: bombs
plugins:
  proxy:
    config:
      targets: [{name: up, url: "<up>"}]
  auth:
    config:
      jwt_secret: "<secret>"
      users_file: users.json
  capture:
    config: {output: captured.yaml, format: blueprint}
middlewares:
  - name: reshape
    plugin: transform
    config:
      request: {body: {remove: [secret]}}
endpoints:
  - {path: /register, method: POST, handler: auth.register}
  - {path: /login, method: POST, handler: auth.login}
  - path: /validated
    method: POST
    handler: static
    config:
      static: {body: {ok: true}}
      validate: {schema: {type: object}}
  - {path: /python, method: POST, handler: handlers/echo.py:echo}
  - path: /mock
    method: POST
    handler: mock
    config:
      mock:
        examples:
          - when: {body: {kind: a}}
            body: {matched: a}
          - body: {fallback: true}
  - path: /transformed
    method: POST
    handler: proxy
    transform:
      request: {body: {remove: [secret]}}
  - {path: /reshaped, method: POST, handler: proxy, middleware: [reshape]}
  - {path: /cheap, method: GET, handler: static, config: {static: {body: {ok: true}}}}
"""

HANDLER = """
def echo(request):
    return {"json": request.json}
"""

FEATURES = ["/register", "/login", "/validated", "/python", "/mock", "/transformed", "/reshaped"]
JSON_OK = {
    "/register": {"username": "alice", "password": "correct horse battery"},
    "/login": {"username": "alice", "password": "correct horse battery"},
    "/validated": {"kind": "a"},
    "/python": {"kind": "a"},
    "/mock": {"kind": "a"},
    "/transformed": {"kind": "a", "secret": 1},
    "/reshaped": {"kind": "a", "secret": 1},
}


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """Each Content-Encoding chain → a body that inflates to 200 MiB of zeros (made once)."""
    zeros = b"\0" * INFLATED
    gzipped, deflated, zstded = gzip.compress(zeros, 9), zlib.compress(zeros, 9), zstd_compress(zeros)
    made = {
        "gzip": gzipped,  # ~200 KB: gzip cannot do better than ~1:1030 in one layer
        "gzip, gzip": gzip.compress(gzipped, 9),
        "deflate, deflate": zlib.compress(deflated, 9),
        "br": brotli.compress(zeros, quality=5),
        "zstd": zstded,
        "zstd, zstd": zstd_compress(zstded),
        "gzip, br": brotli.compress(gzipped),
    }
    for name, body in made.items():
        assert len(body) <= (210_000 if name == "gzip" else 8 * 1024), (name, len(body))
    return made


def vm_hwm(pid: int) -> int:
    """Peak resident set of the process, in bytes (VmHWM of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class CheapClient:
    """Another client: GET /cheap in a loop, each answer timed, until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.times: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.times) < 100_000:
            started = time.monotonic()
            try:
                reply = request("GET", "/cheap", port=self.port, timeout=10)
                if reply.status != 200:
                    self.failures.append(f"status {reply.status}")
            except Exception as exc:  # noqa: BLE001 - recorded, asserted on
                self.failures.append(repr(exc))
            self.times.append(time.monotonic() - started)
            time.sleep(0.01)

    def __enter__(self) -> CheapClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def post(proxy: Proxy, path: str, body: bytes, encoding: str | None = None, content_type: str = "application/json") -> Reply:
    headers = {"Content-Type": content_type}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return request("POST", path, port=proxy.port, body=body, headers=headers, timeout=30)


def post_chunked(proxy: Proxy, path: str, body: bytes, encoding: str) -> Reply:
    """Transfer-Encoding: chunked, as a streaming client sends: the body goes through the relay."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    try:
        pieces: Iterator[bytes] = iter([body[i : i + 256] for i in range(0, len(body), 256)])
        connection.request("POST", path, body=pieces, headers={"Content-Type": "application/json", "Content-Encoding": encoding}, encode_chunked=True)
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


@pytest.fixture
def gateway(tmp_path: Path, make_upstream, start_proxy) -> tuple[Proxy, Upstream]:  # type: ignore[no-untyped-def]
    up: Upstream = make_upstream("api")
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "echo.py").write_text(HANDLER)
    blueprint = tmp_path / "bombs.yaml"
    blueprint.write_text(textwrap.dedent(BLUEPRINT).replace("<up>", up.url).replace("<secret>", secrets.token_urlsafe(48)))
    proxy = start_proxy(blueprint, "--mode", f"reverse:{up.url}")
    assert proxy.process is not None
    cmdline = Path(f"/proc/{proxy.process.pid}/cmdline").read_bytes().split(b"\0")
    assert any(part.endswith(b"mitmdump") for part in cmdline[:2]), cmdline  # the pid measured is mitmdump's own
    return proxy, up


def warm_up(proxy: Proxy) -> None:
    """Every feature once with a small gzip body, so the baseline has every module loaded."""
    for path, document in JSON_OK.items():
        reply = post(proxy, path, gzip.compress(json.dumps(document).encode()), "gzip")
        assert reply.status < 500, (path, reply.status, reply.body)
    for path, document in JSON_OK.items():
        if path in ("/transformed", "/reshaped"):
            continue  # the test upstream (aiohttp) decodes these itself, and not br with Brotli 1.1
        post(proxy, path, brotli.compress(json.dumps(document).encode()), "br")
        post(proxy, path, zstd_compress(json.dumps(document).encode()), "zstd")


def test_small_encoded_bodies_still_work(gateway: tuple[Proxy, Upstream]) -> None:
    proxy, up = gateway
    assert post(proxy, "/register", brotli.compress(json.dumps(JSON_OK["/register"]).encode()), "br").status == 201
    assert post(proxy, "/login", zstd_compress(json.dumps(JSON_OK["/login"]).encode()), "zstd").status == 200
    assert post(proxy, "/validated", brotli.compress(gzip.compress(b'{"kind": "a"}')), "gzip, br").status == 200
    reply = post(proxy, "/python", zlib.compress(b'{"kind": "a"}'), "deflate")
    assert reply.status == 200 and reply.json == {"json": {"kind": "a"}}
    assert post(proxy, "/mock", gzip.compress(b'{"kind": "a"}'), "x-gzip").json == {"matched": "a"}
    reply = post(proxy, "/transformed", gzip.compress(b'{"kind": "a", "secret": 1}'), "gzip")
    assert reply.status == 200 and json.loads(up.received[-1].body) == {"kind": "a"}  # aiohttp undid the gzip
    assert up.received[-1].headers["Content-Encoding"] == "gzip"


def test_bombs_are_refused_at_every_feature_in_bounded_memory_while_others_are_answered(
    gateway: tuple[Proxy, Upstream], bombs: dict[str, bytes]
) -> None:
    proxy, up = gateway
    assert proxy.process is not None
    pid = proxy.process.pid
    warm_up(proxy)
    baseline = vm_hwm(pid)
    forwarded = len(up.received)
    answers: dict[tuple[str, str], tuple[int, str]] = {}
    with CheapClient(proxy.port) as cheap:
        for encoding, body in bombs.items():
            for path in FEATURES:
                reply = post(proxy, path, body, encoding)
                answers[(encoding, path)] = (reply.status, reply.body.decode("utf-8", "replace")[:200])
        for path in ("/validated", "/python", "/mock", "/transformed", "/reshaped"):  # streamed in: the relay
            reply = post_chunked(proxy, path, bombs["br"], "br")
            answers[("chunked br", path)] = (reply.status, reply.body.decode("utf-8", "replace")[:200])
        time.sleep(0.3)
    peak = vm_hwm(pid)
    wrong = {key: answer for key, answer in answers.items() if answer[0] != 413}
    assert not wrong, wrong
    for (encoding, path), (status, text) in answers.items():
        assert "limit" in json.loads(text)["error"], (encoding, path, text)
    assert len(up.received) == forwarded, "no bomb reached the upstream"
    assert not cheap.failures, cheap.failures[:5]
    assert len(cheap.times) >= 10 and max(cheap.times) < CHEAP_BOUND, (len(cheap.times), max(cheap.times))
    assert peak - baseline <= RSS_BOUND, f"VmHWM grew {(peak - baseline) / MiB:.0f} MiB (baseline {baseline / MiB:.0f} MiB)"
    assert "Traceback" not in proxy.log() and "RecursionError" not in proxy.log()


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize("path", FEATURES)
def test_deep_json_is_a_400_never_a_500(gateway: tuple[Proxy, Upstream], path: str) -> None:
    proxy, up = gateway
    # auth.* hold at most 64 KiB: 30,000 levels fit it (and were a RecursionError before)
    levels = 30_000 if path in ("/register", "/login") else 100_000
    for body, encoding in ((deep(levels), None), (b"[" * levels, None), (gzip.compress(deep(levels)), "gzip")):
        reply = post(proxy, path, body, encoding)
        assert reply.status == 400, (path, encoding, reply.status, reply.body[:200])
        assert reply.json["error"] == "request body: JSON nested deeper than 64 levels", reply.body[:200]
    assert not up.received
    assert "RecursionError" not in proxy.log() and "Traceback" not in proxy.log()


def test_unknown_codings_are_415_and_broken_streams_400(gateway: tuple[Proxy, Upstream]) -> None:
    proxy, up = gateway
    import bz2

    for path in FEATURES:
        reply = post(proxy, path, bz2.compress(b"\0" * MiB), "bz2")  # mitmproxy's codecs fallback would inflate it
        assert reply.status == 415 and reply.header("Accept-Encoding") == "gzip, deflate, br, zstd, identity", (path, reply.status, reply.body)
        reply = post(proxy, path, gzip.compress(b'{"kind": "a"}')[:-6], "gzip")
        assert reply.status == 400 and "does not decode as gzip" in reply.json["error"], (path, reply.status, reply.body)
    assert not up.received
