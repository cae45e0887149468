"""One canonical path, attacked through a real mitmdump in front of real path-resolving upstreams.

The blueprint guards `/admin*` (and `/config.txt`) with an auth middleware's path filter and
sends everything else through a catch-all proxy endpoint to three servers that resolve paths
themselves (aiohttp, http.server on disk, a WSGI app that decodes twice): whatever spelling a
client picks, a path the filter guards must never reach an upstream without the credentials.
"""

from __future__ import annotations

import http.client
import itertools
import random
import socket
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from tests.integration.harness import Proxy
from tests.security.servers import SECRET_MARK, FileServer

pytestmark = pytest.mark.integration

SECRET = "0123456789abcdef0123456789abcdef-security-paths"

BLUEPRINT = """
name: canonical-path-security
{server}
plugins:
  proxy:
    config:
      upstreams:
        files:
          load_balancing: round_robin
          targets: [{targets}]
  auth:
    config: {{jwt_secret: "{secret}"}}
middlewares:
  - {{name: admin_only, plugin: auth, config: {{path: "/admin*"}}}}
  - {{name: config_only, plugin: auth, config: {{path: "/config.txt"}}}}
endpoints:
  - {{path: "/files/{{p}}", handler: proxy, config: {{proxy: {{upstream: files, path: "/public/{{p}}"}}}}}}
{catch_all}
"""
CATCH_ALL = '  - {path: "/{rest:path}", method: ANY, handler: proxy, config: {proxy: {upstream: files}}}'
# Reverse-mode passthrough: only the guarded area is an endpoint; mitmproxy forwards the rest itself.
GUARDED_ONLY = """\
  - {path: "/admin/{rest:path}", method: ANY, handler: proxy, config: {proxy: {upstream: files}}}
  - {path: "/config.txt", method: ANY, handler: proxy, config: {proxy: {upstream: files}}}"""

REPRODUCTIONS = [
    "/admin/secret",
    "/public/../admin/secret",
    "/public/%2e%2e/admin/secret",
    "//admin/secret",
    "/./admin/secret",
    "/files/%2e%2e/config.txt",
    "/files/%2E%2E/config.txt",
    "/files/..%2fconfig.txt",
    "/public/..;/admin/secret",
    "/public/%252e%252e/admin/secret",
    "/admin%2fsecret",
    "/public\\..\\admin\\secret",
    "/;x/admin/secret",
    "/%61dmin/secret",
    "/config.txt",
]


def blueprint(tmp_path: Path, servers: list[FileServer], *, catch_all: bool = True, server: str = "") -> Path:
    targets = ", ".join(f'{{name: {s.kind.replace(".", "-")}, url: "{s.url}"}}' for s in servers)
    text = BLUEPRINT.format(server=server, targets=targets, secret=SECRET, catch_all=CATCH_ALL if catch_all else GUARDED_ONLY)
    path = tmp_path / "blueprint.yaml"
    path.write_text(textwrap.dedent(text))
    return path


class RawClient:
    """HTTP/1.1 over one keep-alive socket, the request line written byte for byte as given."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None

    def send(self, target: str, method: str = "GET") -> tuple[int, bytes]:
        line = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n".encode("utf-8", "surrogateescape")
        for attempt in range(2):
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            try:
                self.sock.sendall(line)
                response = http.client.HTTPResponse(self.sock, method=method)
                response.begin()
                body = response.read()
                if response.will_close:
                    self.close()
                return response.status, body
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
        raise AssertionError("not reached")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def send_all(port: int, targets: Iterable[str], connections: int = 4) -> list[tuple[str, int, bytes]]:
    """Every target once, spread over a few keep-alive connections in parallel."""
    targets = list(targets)
    results: list[tuple[str, int, bytes]] = []
    lock = threading.Lock()

    def worker(share: list[str]) -> None:
        client = RawClient(port)
        try:
            for target in share:
                status, body = client.send(target)
                with lock:
                    results.append((target, status, body))
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(targets[i::connections],)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == len(targets), "some requests never finished"
    return results


def assert_nothing_secret(results: list[tuple[str, int, bytes]], servers: list[FileServer]) -> None:
    served = [(hit.kind, hit.raw, hit.resolved) for s in servers for hit in s.secrets_served()]
    assert not served, f"secrets served upstream: {served[:10]}"
    for target, status, body in results:
        assert status in (400, 401, 404) or (status == 200 and SECRET_MARK.encode() not in body), (target, status, body[:300])


@pytest.fixture
def gateway(tmp_path: Path, start_proxy: Callable[..., Proxy], file_servers: list[FileServer]) -> Proxy:
    return start_proxy(blueprint(tmp_path, file_servers), "--mode", "reverse:http://127.0.0.1:9")


def test_the_reproductions_are_refused_or_denied_on_every_upstream(gateway: Proxy, file_servers: list[FileServer]) -> None:
    # three times each: the pool's round robin gives each upstream server its turn
    results = send_all(gateway.port, [t for t in REPRODUCTIONS for _ in range(3)], connections=1)
    assert_nothing_secret(results, file_servers)
    statuses = {target: status for target, status, _ in results}
    assert statuses["/public/../admin/secret"] == 401
    assert statuses["/public/%2e%2e/admin/secret"] == 401
    assert statuses["//admin/secret"] == 401
    assert statuses["/./admin/secret"] == 401
    assert statuses["/files/%2e%2e/config.txt"] == 401  # canonical /config.txt: the filter's
    for target in ("/files/..%2fconfig.txt", "/public/..;/admin/secret", "/public/%252e%252e/admin/secret", "/admin%2fsecret", "/public\\..\\admin\\secret", "/;x/admin/secret"):
        assert statuses[target] == 400, target
    # what is allowed still works, and the upstream got the canonical path
    ok = send_all(gateway.port, ["/public/./files/%72eadme.txt", "/files/index.txt", "/files/index.txt", "/files/index.txt"], connections=1)
    assert all(status == 200 and b"public " in body for _, status, body in ok), ok
    raws = {hit.raw for s in file_servers for hit in s.hits}
    assert "/public/files/readme.txt" in raws and "/public/index.txt" in raws


def test_reverse_mode_passthrough_is_canonical_too(tmp_path: Path, start_proxy: Callable[..., Proxy], file_servers: list[FileServer]) -> None:
    """No catch-all: what no endpoint matches, mitmproxy forwards to --mode's upstream itself."""
    http_server = next(s for s in file_servers if s.kind == "http.server")
    path = blueprint(tmp_path, file_servers, catch_all=False, server="server: {unmatched: passthrough}")
    gateway = start_proxy(path, "--mode", f"reverse:{http_server.url}")
    results = send_all(gateway.port, [t for t in REPRODUCTIONS for _ in range(3)] + ["/public/x/../index.txt"], connections=1)
    assert_nothing_secret(results, file_servers)
    statuses = {target: status for target, status, _ in results}
    assert statuses["/public/../admin/secret"] == 401 and statuses["/admin%2fsecret"] == 400
    assert statuses["/public/x/../index.txt"] == 200
    assert "/public/index.txt" in {hit.raw for hit in http_server.hits}  # passed through, canonical


# -- the generated corpus ---------------------------------------------------------------------

_PREFIXES = ["", "/public", "/public/files", "/x", "/.", "/", "//", "/public/.", "/admin", "/files", "/%2e", "/public;x"]
_UP = [
    "..", "%2e%2e", "%2E%2E", "%2e%2E", ".%2e", "%2e.", ".%2E", "%252e%252e", "%25252e%25252e", "..;", "..;x=1", "%2e%2e;",
    "..%3b", "..%3B", ". .", ".. ", "..%20", "...", "%c0%ae%c0%ae", "%e0%80%ae%e0%80%ae", "..%00", "..%2500", ".", "%2e", "",
    "..%5c", "..\\", "%2e%2e%5c",
]
_SEPARATORS = ["/", "//", "%2f", "%2F", "%5c", "%5C", "\\", "/./", "%252f", "%252F", "%255c", "/%2e/", ";/", "/;/"]
_TARGETS = [
    "admin/secret", "admin%2fsecret", "admin%2Fsecret", "%61dmin/secret", "%61%64%6d%69%6e/secret", "admin;x/secret", "admin/./secret",
    "admin//secret", "admin%5csecret", "admin\\secret", "config.txt", "%63onfig.txt", "config.txt;x", "admin/secret%00", "admin%252fsecret",
    "ADMIN/secret", "admin/secret/", "admin/secret/.", "admin/%73ecret",
    "public/index.txt", "public/files/readme.txt", "public/%69ndex.txt",  # allowed, whatever the road to them
]
_SUFFIXES = ["", "/", "?x=1", "?%2e%2e", "#frag", ";x", "%00", "/.", "%20", "%2f", "/..", "%3f.txt", "?/../../admin"]


def corpus(size: int, seed: int = 17) -> list[str]:
    """Deterministic variants: every (traversal, separator) pair at least once, the rest sampled."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    for up, sep in itertools.product(_UP, _SEPARATORS):
        seen.setdefault(f"/public{sep}{up}{sep}admin/secret", None)
    resolvable_up = ["..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", ".", "%2e", ""]
    resolvable_sep = ["/", "//", "/./", "/%2e/"]
    while len(seen) < size:
        # half of them only spellings that resolve (so they reach the filter, and upstreams)
        ups, seps = (resolvable_up, resolvable_sep) if rng.random() < 0.5 else (_UP, _SEPARATORS)
        path = rng.choice(_PREFIXES)
        for _ in range(rng.randint(0, 3)):
            path += rng.choice(seps) + rng.choice(ups)
        path += rng.choice(seps) + rng.choice(_TARGETS) + rng.choice(_SUFFIXES)
        if not path.startswith("/"):
            path = "/" + path
        seen.setdefault(path, None)
    return list(seen)


def test_a_generated_corpus_never_reaches_a_secret(gateway: Proxy, file_servers: list[FileServer]) -> None:
    targets = corpus(4000)
    started = time.monotonic()
    results = send_all(gateway.port, targets, connections=6)
    elapsed = time.monotonic() - started
    assert_nothing_secret(results, file_servers)
    statuses = [status for _, status, _ in results]
    # most are refused or denied; some did go upstream (non-secret), some of them served
    counts = {s: statuses.count(s) for s in set(statuses)}
    assert counts.get(400, 0) > 1000 and counts.get(401, 0) > 50 and counts.get(200, 0) > 20, counts
    assert sum(len(s.hits) for s in file_servers) > 50
    assert elapsed < 60, elapsed


# -- linear-time globs ------------------------------------------------------------------------

SLOW_GLOB = """
name: slow-glob
plugins:
  auth:
    config: {{jwt_secret: "{secret}"}}
middlewares:
  - {{name: deletes, plugin: auth, config: {{path: "/api/*/users/*/delete"}}}}
endpoints:
  - {{path: "/{{rest:path}}", handler: static, config: {{static: {{body: {{ok: true}}}}}}}}
"""


def test_a_100kb_path_against_a_multi_star_glob_answers_at_once_and_others_meanwhile(tmp_path: Path, start_proxy: Callable[..., Proxy]) -> None:
    path = tmp_path / "blueprint.yaml"
    path.write_text(textwrap.dedent(SLOW_GLOB.format(secret=SECRET)))
    gateway = start_proxy(path, "--mode", "reverse:http://127.0.0.1:9")
    long_path = "/api/" + "users/" * (100_000 // 6)  # no "/delete" at the end: the worst case for a backtracking regex
    assert RawClient(gateway.port).send("/warm")[0] == 200
    timings: dict[str, float] = {}

    def slow() -> None:
        started = time.monotonic()
        status, _ = RawClient(gateway.port).send(long_path)
        timings["slow"] = time.monotonic() - started
        timings["slow_status"] = status

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.05)
    others = []
    for _ in range(5):
        started = time.monotonic()
        assert RawClient(gateway.port).send("/health")[0] == 200
        others.append(time.monotonic() - started)
    thread.join(30)
    assert timings.get("slow_status") == 200, timings
    assert timings["slow"] < 2.0, timings  # the regex took ~5 s and stalled everything
    assert max(others) < 2.0, others
