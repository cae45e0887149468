"""Request fuzzing: hostile HTTP/1 over raw sockets to a real mitmdump serving each example blueprint.

Every request gets an answer, or a clean close when it cannot be parsed, within SOCKET_TIMEOUT;
no answer is a 500 (Backworks' own errors are JSON with "status" and "request_id"; the demo
backends behind the proxies never answer 500); the log holds no traceback or addon error; and the
gateway still answers a normal request afterwards. The proxies run as `backworks run` starts
them: reverse mode, lazy upstream connections, the Host header kept.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.integration.harness import ROOT, Proxy, free_port, wait_for_port

pytestmark = [pytest.mark.reliability]

SOCKET_TIMEOUT = 10.0
SEED = int(os.environ.get("BACKWORKS_FUZZ_SEED") or random.randrange(2**32))
GENERATED_PER_BLUEPRINT = int(150 * float(os.environ.get("BACKWORKS_FUZZ_SCALE", "1")))
LOG_PROBLEMS = re.compile(r"Traceback|addon error|Error in|Exception|backworks failed on|failed to observe|Task exception|has crashed")
# mitmproxy's own crashes, with no Backworks frame in them: reported, not failed on (see the report).
KNOWN_MITMPROXY = {"NotImplementedError: HTTP trailers are not implemented yet."}


def log_problems(log: str) -> tuple[list[str], Counter[str]]:
    """Lines of the mitmdump log that show a failure, and the known mitmproxy crashes (counted)."""
    lines = log.splitlines()
    problems: list[str] = []
    known: Counter[str] = Counter()
    i = 0
    while i < len(lines):
        line = lines[i]
        if "Traceback (most recent call last)" in line:
            block = [line]
            i += 1
            while i < len(lines) and (lines[i].startswith((" ", "\t")) or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            if i < len(lines):
                block.append(lines[i])  # the exception itself
            ours = any(str(ROOT) in frame and ".venv" not in frame for frame in block)
            if block[-1].strip() in KNOWN_MITMPROXY and not ours:
                known[block[-1].strip()] += 1
            else:
                problems += block
        elif "mitmproxy has crashed!" in line:
            pass  # judged by the traceback that follows
        elif LOG_PROBLEMS.search(line):
            problems.append(line)
        i += 1
    return problems, known


# --------------------------------------------------------------------------------------
# A raw HTTP/1 client


class _KeepOpen:
    """The socket's reader, shared by the responses of one connection (pipelining) and never
    closed by http.client, which closes its file after each complete body."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def close(self) -> None:
        pass


class _Source:
    def __init__(self, reader: _KeepOpen) -> None:
        self._reader = reader

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> _KeepOpen:
        return self._reader


class Hang(AssertionError):
    """No answer and no close within SOCKET_TIMEOUT."""


@dataclass
class Answer:
    statuses: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    closed: bool = False  # the server closed or reset the connection before every answer came
    seconds: float = 0.0


def exchange(port: int, data: bytes, *, methods: list[str], half_close: bool = False) -> Answer:
    """Send `data` as is, then read one response per entry of `methods` (or a close)."""
    answer = Answer()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole request went out; the answer may still be there
        source = _Source(_KeepOpen(sock.makefile("rb")))
        for method in methods:
            response = http.client.HTTPResponse(source, method=method)  # type: ignore[arg-type]
            try:
                response.begin()
                body = response.read()
            except (TimeoutError, socket.timeout):
                raise Hang(f"no answer within {SOCKET_TIMEOUT} s to {data[:200]!r}") from None
            except (http.client.RemoteDisconnected, ConnectionResetError, http.client.IncompleteRead, BrokenPipeError):
                answer.closed = True
                break
            answer.statuses.append(response.status)
            answer.bodies.append(body)
            answer.content_types.append(response.getheader("Content-Type") or "")
            if response.will_close:
                break
    answer.seconds = time.monotonic() - started
    if len(answer.statuses) < len(methods):
        answer.closed = True
    return answer


def mitmproxy_version() -> str:
    import mitmproxy.version

    return mitmproxy.version.VERSION


def backworks_error(body: bytes) -> dict[str, Any] | None:
    """Backworks' own error body: JSON with "status" and "request_id"."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "status" in data and "request_id" in data else None


# --------------------------------------------------------------------------------------
# The examples, each with a few routes of its own to aim at


@dataclass(frozen=True)
class Profile:
    blueprint: str
    get: str  # answers 200 to a plain GET
    param: str  # a route with one path parameter, `{}` where it goes
    json_posts: tuple[str, ...]  # endpoints that read a JSON body
    normal: tuple[str, str, bytes, int]  # method, path, body, expected status: still answering at the end


PROFILES = {
    "demo": Profile("blueprints/demo.yaml", "/hello", "/greet/{}", ("/echo", "/api/users"), ("GET", "/api/users/2", b"", 200)),
    "hello-world": Profile("blueprints/hello-world/blueprint.yaml", "/hello", "/hello/{}", ("/echo",), ("POST", "/echo", b'{"still": "here"}', 200)),
    "auth-api": Profile(
        "blueprints/auth-api/blueprint.yaml", "/api/auth/validate", "/api/resources/{}", ("/api/auth/register", "/api/auth/login", "/api/resources"),
        ("POST", "/api/auth/register", b'{"username": "after-fuzz", "password": "a-long-enough-password"}', 201),
    ),
    "proxy-advanced": Profile("blueprints/proxy-advanced/blueprint.yaml", "/health", "/api/users/{}", ("/api/users", "/api/orders"), ("GET", "/api/products/7", b"", 200)),
}


@dataclass
class Case:
    kind: str
    data: bytes
    methods: list[str]
    must_answer: bool = True  # a well-formed request: a close is not enough
    half_close: bool = False  # the request is incomplete on purpose: the client ends its side


def request(method: str, target: str | bytes, headers: list[tuple[bytes | str, bytes | str]] = (), body: bytes = b"", version: str = "HTTP/1.1", host: bool = True, length: bool = True) -> bytes:
    def b(value: bytes | str) -> bytes:
        return value if isinstance(value, bytes) else value.encode()

    lines = [b(method) + b" " + b(target) + b" " + b(version)]
    if host:
        lines.append(b"Host: 127.0.0.1")
    lines += [b(k) + b": " + b(v) for k, v in headers]
    if body and length:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def fixed_cases(p: Profile, port: int) -> list[Case]:
    get, param, post = p.get, p.param, p.json_posts[0]
    json_ct = [("Content-Type", "application/json")]
    cases: list[Case] = []

    def add(kind: str, data: bytes, methods: list[str] | None = None, **kwargs: Any) -> None:
        cases.append(Case(kind, data, methods or ["GET"], **kwargs))

    # malformed paths
    for target in [
        "/a/../../etc/passwd", "//", "///" + get, get + "/", get + "//", "/." + get, get + "/.", get + "#frag", get + ";p=1", get.upper(),
        param.format("-1"), param.format("9" * 40), param.format("1e3"), param.format(""), param.format("a" * 5000), param.format("..") + "/..",
        "/\x7f", get + "?", get + "??&&==", get + "?a=1&a=2&a", "?x", "#", "/%", get + "\\x",
    ]:
        add("malformed path", request("GET", target))
    add("malformed path", request("GET", "/a b"), must_answer=False)
    add("malformed path", request("GET", b"/\x00"), must_answer=False)
    add("malformed path", request("GET", ""), must_answer=False)
    # percent-encoding
    for encoded in ["%zz", "%", "%0", "%00", "a%2fb", "%2F", "%2e%2e", "%2e", "%C0%AF", "%E0%80%AF", "%C0%80", "%ED%A0%80", "%F4%90%80%80", "%FF", "%25", "%2525", "%32", "%u0041", "%E2%80%AE", "%F0%9F%92%A5"]:
        add("percent-encoding", request("GET", param.format(encoded)))
        add("percent-encoding", request("GET", f"{get}?lang={encoded}&{encoded}=1"))
    add("percent-encoding", request("GET", get.replace("/", "/%2e/", 1)))
    # huge and many headers
    for size in (8 * 1024, 70 * 1024, 300 * 1024, 2 * 1024 * 1024):
        add("huge header", request("GET", get, [("X-Big", "a" * size)]), must_answer=False)
    for count in (100, 1000, 10_000):
        add("many headers", request("GET", get, [(f"X-H{i}", "v") for i in range(count)]), must_answer=False)
    add("many headers", request("GET", get, [("X-Same", str(i)) for i in range(2000)]), must_answer=False)
    add("odd header", request("GET", get, [("X-Empty", "")]))
    add("odd header", request("GET", get, [("X-Fold", "a\r\n  folded")]), must_answer=False)
    add("odd header", request("GET", get, [("No colon here", "")]).replace(b"No colon here: ", b"No colon here"), must_answer=False)
    add("odd header", request("GET", get, [("Bad Name", "x")]), must_answer=False)
    add("odd header", request("GET", get, [("X-Tab", "a\tb"), ("X-Trail", "b   ")]))
    add("odd header", request("GET", get, [("Authorization", "Bearer " + "e" * 10_000)]))
    add("odd header", request("GET", get, [("Authorization", "Bearer a.b.c"), ("Cookie", "a=" + "b" * 5000)]))
    add("odd header", request("GET", get, [("Origin", "https://evil.example"), ("Access-Control-Request-Method", "DELETE")]).replace(b"GET", b"OPTIONS", 1), ["OPTIONS"])
    add("odd header", request("GET", get, [("Accept-Encoding", "gzip, br, zstd, x-unknown"), ("Accept", "*/*;q=abc")]))
    add("odd header", request("GET", get, [("X-Forwarded-For", "::::, 300.1.1.1, \xe9")]))
    add("bare LF", f"GET {get} HTTP/1.1\nHost: 127.0.0.1\n\n".encode(), must_answer=False)
    # huge URLs
    for size in (4 * 1024, 64 * 1024, 1024 * 1024):
        add("huge URL", request("GET", get + "?q=" + "a" * size), must_answer=False)
        add("huge URL", request("GET", "/" + "seg/" * (size // 4)), must_answer=False)
    # invalid JSON to JSON endpoints
    bodies = [
        b"{", b"[1,", b"null", b"", b"\xff\xfe{}", b'{"a": NaN}', b'{"a": 1e999999}', b"[" * 100_000, b"1" * 10_000, b'{"a": ' + b"9" * 5000 + b"}",
        b'{"__proto__": {"x": 1}}', b'{"a": 1, "a": 2}', '{"é": "\ud800"}'.encode("utf-8", "surrogatepass"), b'"just a string"', b"true",
        json.dumps({"username": "u" * 100_000, "password": "p"}).encode(), json.dumps({"username": ["x"], "password": {"y": 1}}).encode(),
        json.dumps({"username": "", "password": ""}).encode(), b"\x00" * 100, b"{\"a\":\"\\ud800\"}", b"x" * (3 * 1024 * 1024),
    ]
    for path in p.json_posts:
        for body in bodies:
            add("invalid JSON body", request("POST", path, json_ct, body), ["POST"])
        add("invalid JSON body", request("POST", path, [("Content-Type", "application/json; charset=utf-16")], '{"a": 1}'.encode("utf-16")), ["POST"])
        add("invalid JSON body", request("POST", path, [("Content-Type", "text/plain")], b'{"a": 1}'), ["POST"])
        add("invalid JSON body", request("POST", path, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")], b"not gzip"), ["POST"])
    # invalid UTF-8
    add("invalid UTF-8", request("GET", param.format("").encode() + b"\xff\xfe"), must_answer=False)
    add("invalid UTF-8", request("GET", get.encode() + b"?lang=\xc3\x28&\xff=1"), must_answer=False)
    add("invalid UTF-8", request("GET", param.format("x").encode() + b"?q=\xff\xfe&\xc0\xaf"), must_answer=False)
    add("invalid UTF-8", request("POST", post.encode() + b"/\xed\xa0\x80", json_ct, b"{}"), ["POST"], must_answer=False)
    add("invalid UTF-8", request("GET", get, [(b"X-Bad", b"\xff\xfe\xfd"), (b"X-Overlong", b"\xc0\xaf")]))
    add("invalid UTF-8", request("GET", get, [(b"X-\xff", b"v")]), must_answer=False)
    add("invalid UTF-8", request("GET", get, [(b"Authorization", b"Bearer \xff.\xfe.\xfd")]))
    add("invalid UTF-8", request("POST", post, json_ct, b'{"a": "\xff\xfe"}'), ["POST"])
    # unusual methods
    for method in ["PROPFIND", "get", "Get", "BREW", "TRACE", "OPTIONS", "HEAD", "PATCH", "DELETE", "M-SEARCH", "A" * 100, "A" * 10_000, "G(T", "GET\x00"]:
        must = method.isalpha() and len(method) < 1000
        add("unusual method", request(method, get), [method if method == "HEAD" else "GET"], must_answer=must)
    add("unusual method", f"GET\t{get}\tHTTP/1.1\r\nHost: x\r\n\r\n".encode(), must_answer=False)
    # absolute-form and asterisk-form
    for target in [f"http://127.0.0.1:{port}{get}", f"http://localhost:{port}{get}", f"http://127.0.0.1:9{get}", f"https://127.0.0.1:{port}{get}", f"http://user:pw@127.0.0.1:{port}{get}", f"http://[::1]:{port}{get}", "http://127.0.0.1:9", f"ftp://127.0.0.1{get}", "http://", "http:///x"]:
        add("absolute-form", request("GET", target), must_answer=False)
    add("asterisk-form", request("OPTIONS", "*"), ["OPTIONS"], must_answer=False)
    add("asterisk-form", request("GET", "*"), must_answer=False)
    add("asterisk-form", request("CONNECT", "127.0.0.1:9"), ["CONNECT"], must_answer=False)
    # Content-Length / Transfer-Encoding
    te = [
        [("Content-Length", "5"), ("Transfer-Encoding", "chunked")], [("Content-Length", "-1")], [("Content-Length", "abc")], [("Content-Length", "5"), ("Content-Length", "6")],
        [("Content-Length", "5, 5")], [("Content-Length", "9" * 30)], [("Content-Length", " 5")], [("Transfer-Encoding", "gzip, chunked")], [("Transfer-Encoding", "chunked, gzip")],
        [("Transfer-Encoding", "identity")], [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")], [("Transfer-Encoding", "CHUNKED")], [("Transfer-Encoding", "xchunked")],
        [("Transfer-Encoding ", "chunked")],
    ]
    for headers in te:
        add("CL/TE", request("POST", post, [*json_ct, *headers], b"hello", length=False), ["POST"], must_answer=False, half_close=True)
    for chunks in [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n", b"ffffffffffffffff\r\nhi\r\n", b"-1\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"0\r\n\r\n"]:
        add("CL/TE", request("POST", post, [*json_ct, ("Transfer-Encoding", "chunked")], chunks, length=False), ["POST"], must_answer=False, half_close=True)
    add("CL/TE", request("POST", post, [*json_ct, ("Content-Length", "100")], b"short", length=False), ["POST"], must_answer=False, half_close=True)
    add("CL/TE", request("GET", get, [("Content-Length", "5")], b"hello", length=False))
    add("CL/TE", request("GET", get, [("Content-Length", "0"), ("Content-Length", "0")]), must_answer=False)
    # HTTP versions
    add("HTTP/1.0", request("GET", get, version="HTTP/1.0", host=False))
    add("HTTP/1.0", request("GET", get, [("Connection", "keep-alive")], version="HTTP/1.0", host=False))
    add("HTTP/1.0", request("POST", post, json_ct, b'{"a": 1}', version="HTTP/1.0", host=False), ["POST"])
    for version in ["HTTP/0.9", "HTTP/2.0", "HTTP/9.9", "http/1.1", "HTTP/1.1 extra", "HTTP/1", "FOO/1.1", ""]:
        add("HTTP version", request("GET", get, version=version), must_answer=False)
    add("HTTP version", f"GET {get}\r\n".encode(), must_answer=False, half_close=True)
    add("HTTP version", request("GET", get, host=False))
    # pipelining
    one = request("GET", get)
    add("pipelined", one * 5, ["GET"] * 5)
    add("pipelined", one + request("POST", post, json_ct, b'{"a": 1}') + request("HEAD", get) + one, ["GET", "POST", "HEAD", "GET"])
    add("pipelined", one + request("GET", "/a b") + one, ["GET"] * 3, must_answer=False)
    add("pipelined", one + request("POST", post, json_ct, b"{") + one, ["GET", "POST", "GET"])
    add("pipelined", (one * 50), ["GET"] * 50)
    return cases


# hypothesis-generated paths, queries and headers
token = st.text(st.sampled_from("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"), min_size=1, max_size=20)
segment = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).map(lambda s: "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else f"%{b:02X}" for b in s.encode())),
    st.binary(max_size=8).map(lambda b: "".join(f"%{x:02x}" for x in b)),
    st.sampled_from(["..", ".", "", "{id}", "%", "%zz", "~", "*", "users", "2", "-0", "1.0"]),
)
query = st.lists(st.tuples(st.one_of(token, segment), st.one_of(token, segment)), max_size=4).map(lambda items: "&".join(f"{k}={v}" for k, v in items))
header = st.tuples(
    token.filter(lambda name: name.lower() not in {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade"}),
    st.binary(max_size=60).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b"")),
)


@st.composite
def generated_case(draw: st.DrawFn, p: Profile) -> Case:
    base = draw(st.sampled_from([p.get, p.param.format("x"), p.json_posts[0], "/"]))
    path = base.rstrip("/") + "/" + "/".join(draw(st.lists(segment, max_size=4))) if draw(st.booleans()) else base
    target = path + ("?" + draw(query) if draw(st.booleans()) else "")
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]))
    body = draw(st.one_of(st.just(b""), st.binary(max_size=200), st.builds(lambda v: json.dumps(v).encode(), st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=8)), lambda i: st.lists(i, max_size=3) | st.dictionaries(st.text(max_size=5), i, max_size=3), max_leaves=6))))
    headers = draw(st.lists(header, max_size=8))
    if draw(st.booleans()):
        headers.append((b"Content-Type", draw(st.sampled_from([b"application/json", b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x", b"application/json; charset=latin-1"]))))
    return Case("hypothesis", request(method, target, headers, body), [method])


# --------------------------------------------------------------------------------------
# The servers


@pytest.fixture
def demo_backends(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """`backworks demo-backend` processes (the examples' READMEs start these); stopped at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> str:
        port = free_port()
        log = (tmp_path / f"backend-{name}.log").open("wb")
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "backworks"), "demo-backend", "--port", str(port), "--name", name],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        started.append(process)
        wait_for_port(port, process=process)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


def serve(name: str, start_proxy: Callable[..., Proxy], demo_backends: Callable[[str], str], tmp_path: Path) -> Proxy:
    env: dict[str, str] = {}
    upstream = "http://127.0.0.1:9"  # `backworks run`'s default: nothing listens there
    if name == "demo":
        upstream = env["DEMO_BACKEND_URL"] = demo_backends("demo-backend")
    elif name == "auth-api":
        env = {"JWT_SECRET": "request-fuzz-secret-of-at-least-32-bytes", "AUTH_USERS_FILE": str(tmp_path / "users.json")}
    elif name == "proxy-advanced":
        env = {f"BACKEND_{i}_URL": demo_backends(f"backend-{i}") for i in (1, 2, 3)} | {"ADMIN_PORT": str(free_port())}
        upstream = env["BACKEND_1_URL"]
    reverse = ["--mode", f"reverse:{upstream}", "--set", "connection_strategy=lazy", "--set", "keep_host_header=true"]
    return start_proxy(ROOT / PROFILES[name].blueprint, *reverse, env=env)


# --------------------------------------------------------------------------------------
# The test


@dataclass
class Results:
    kinds: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    slowest: tuple[float, str] = (0.0, "")
    failures: list[str] = field(default_factory=list)

    def record(self, case: Case, answer: Answer) -> None:
        self.kinds[case.kind] += 1
        for status in answer.statuses:
            self.statuses[str(status)] += 1
        if answer.closed and not answer.statuses:
            self.closes[case.kind] += 1
            self.statuses["closed"] += 1
        if answer.seconds > self.slowest[0]:
            self.slowest = (answer.seconds, f"{case.kind}: {case.data[:60]!r}")
        shown = f"{case.kind}: {case.data[:160]!r}"
        if case.must_answer and not answer.statuses:
            self.failures.append(f"no answer, only a close: {shown}")
        for status, body, content_type in zip(answer.statuses, answer.bodies, answer.content_types):
            if status == 500:
                own = backworks_error(body)
                if own is not None:
                    who = "Backworks"
                elif not body and case.methods[0] == "HEAD":
                    who = "a HEAD request (no body to tell whose)"
                else:
                    who = f"not Backworks ({content_type or 'no Content-Type'}) - the backends never answer 500"
                self.failures.append(f"500 from {who}: {shown} -> {body[:300]!r}")


@pytest.mark.parametrize("name", list(PROFILES))
def test_hostile_requests_get_bounded_answers(name: str, start_proxy, demo_backends, tmp_path: Path, report: Callable[[str], None]) -> None:  # type: ignore[no-untyped-def]
    profile = PROFILES[name]
    proxy = serve(name, start_proxy, demo_backends, tmp_path)
    results = Results()
    for case in fixed_cases(profile, proxy.port):
        results.record(case, exchange(proxy.port, case.data, methods=case.methods, half_close=case.half_close))

    @settings(max_examples=GENERATED_PER_BLUEPRINT, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(generated_case(profile))
    def generated(case: Case) -> None:
        results.record(case, exchange(proxy.port, case.data, methods=case.methods))

    seed(SEED)(generated)()

    method, path, body, expected = profile.normal
    headers = [("Content-Type", "application/json")] if body else []
    still = exchange(proxy.port, request(method, path, headers, body), methods=[method])
    assert still.statuses == [expected], f"after the fuzzing, {method} {path} gave {still.statuses}: {still.bodies}"
    time.sleep(0.5)  # let the log catch up
    log = proxy.log()
    problems, known = log_problems(log)

    total = sum(results.kinds.values())
    report(f"{profile.blueprint}: {total} requests ({total - results.kinds['hypothesis']} fixed, {results.kinds['hypothesis']} from hypothesis seed {SEED}), slowest answer {results.slowest[0] * 1000:.0f} ms ({results.slowest[1]})")
    report("  by kind: " + ", ".join(f"{kind} {count}" for kind, count in sorted(results.kinds.items())))
    report("  statuses: " + ", ".join(f"{status}: {count}" for status, count in sorted(results.statuses.items())))
    report("  closed without an answer: " + (", ".join(f"{kind} {count}" for kind, count in sorted(results.closes.items())) or "none"))
    report(f"  log: {len(log.splitlines())} lines, {len(problems)} traceback/addon-error lines; afterwards {method} {path} -> {still.statuses[0]}")
    for message, count in known.items():
        report(f"  known mitmproxy {mitmproxy_version()} crash, no Backworks frame, {count}x: {message} (a chunked request with trailers)")
    assert not results.failures, "\n".join(results.failures[:30])
    assert not problems, "\n".join(problems[:40])
