"""Regular mode (no --mode): a pool target is reached only through the blueprint's endpoints.

A real mitmdump in regular proxy mode, a real upstream that is a pool target, and one that is
not. Requests addressed to the target (absolute-form in every spelling of its address, a Host
header, inside a CONNECT tunnel with plain HTTP, TLS or raw bytes, a tunnel to an ignored host)
are refused with 403 JSON and the target's log stays empty; the other upstream still gets what
passes through, and the blueprint's endpoints still answer, inside a tunnel to the target too.
"""

from __future__ import annotations

import json
import socket
import ssl
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certs import write_self_signed
from tests.integration.harness import Proxy, Upstream, free_port, request

pytestmark = pytest.mark.integration


class RawRecorder:
    """A TCP server that records every byte it receives (a target for non-HTTP tunnels)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received = bytearray()
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.settimeout(2)
            with conn:
                try:
                    while data := conn.recv(4096):
                        self.received += data
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def blueprint(folder: Path, *targets: tuple[str, str]) -> Path:
    listed = ", ".join(f'{{name: {name}, url: "{url}", tls_verify: false}}' if url.startswith("https") else f'{{name: {name}, url: "{url}"}}' for name, url in targets)
    path = folder / "blueprint.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: regular
            plugins:
              proxy: {{config: {{targets: [{listed}]}}}}
            endpoints:
              - {{path: /via-gateway, handler: proxy, config: {{proxy: {{path: /via-gateway}}}}}}
              - {{path: /hello, handler: static, config: {{static: {{body: hi}}}}}}
            """
        )
    )
    return path


def read_response(sock: socket.socket | ssl.SSLSocket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length framed) from a socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:length]


def open_tunnel(proxy: Proxy, authority: str) -> tuple[socket.socket, int, bytes]:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    status, _, body = read_response(sock)
    return sock, status, body


def closed_without_answer(sock: socket.socket | ssl.SSLSocket, timeout: float = 5.0) -> bool:
    """The peer closes (or resets) the connection; bounded in time."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4096):
                return True
    except (ConnectionError, ssl.SSLError, OSError):
        return True
    return False


def assert_refused(status: int, body: bytes, name: str = "target api") -> None:
    assert status == 403, body
    answer = json.loads(body)
    assert answer["status"] == 403
    assert name in answer["error"] and "only the blueprint's endpoints reach it" in answer["error"], answer


def unresolvable(name: str) -> bool:
    try:
        socket.getaddrinfo(name, None)
    except OSError:
        return True
    return False


@pytest.fixture
def target(make_upstream) -> Upstream:  # type: ignore[no-untyped-def]
    return make_upstream("target")


@pytest.fixture
def other(make_upstream) -> Upstream:  # type: ignore[no-untyped-def]
    return make_upstream("other")


@pytest.fixture
def raw_target() -> Iterator[RawRecorder]:
    server = RawRecorder()
    yield server
    server.stop()


@pytest.fixture
def https_target(tmp_path: Path) -> Iterator[Upstream]:
    cert, key = write_self_signed(tmp_path / "certs")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = Upstream("secure", ssl_context=context).start()
    yield server
    server.stop()


@pytest.fixture
def gateway(tmp_path: Path, target: Upstream, start_proxy) -> Proxy:  # type: ignore[no-untyped-def]
    return start_proxy(blueprint(tmp_path, ("api", target.url)))


TARGET_SPELLINGS = [
    "127.0.0.1",
    "localhost",
    "LOCALHOST.",
    "LocalHost",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0x7f.1",
    "0177.0.0.1",
    "127.000.000.001",
    "127.0.0.2",
    "127.255.255.254",
    "0.0.0.0",
    "0",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::]",
    "api.localhost",
]


def test_absolute_form_to_the_target_is_refused_in_every_spelling(gateway: Proxy, target: Upstream, other: Upstream) -> None:
    for host in TARGET_SPELLINGS:
        reply = request("GET", f"http://{host}:{target.port}/anything?x=1", port=gateway.port, headers={"Host": f"{host}:{target.port}"})
        assert_refused(reply.status, reply.body)
        assert reply.json["request_id"] == reply.header("X-Request-ID")
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PROPFIND"):
        reply = request(method, f"http://127.0.0.1:{target.port}/anything", port=gateway.port, body=b"{}")
        assert_refused(reply.status, reply.body)
    # A DNS name of this host (resolved asynchronously, only for unmatched flows on a target's port).
    name = socket.gethostname()
    if not unresolvable(name):
        reply = request("GET", f"http://{name}:{target.port}/anything", port=gateway.port)
        assert_refused(reply.status, reply.body)
    assert target.received == []
    # Meanwhile: other hosts pass through, and the endpoints (which reach the target) answer.
    assert request("GET", f"{other.url}/through", port=gateway.port).json["upstream"] == "other"
    assert [r.path for r in other.received] == ["/through"]
    assert gateway.get("/via-gateway").json["upstream"] == "target"
    assert request("GET", f"http://127.0.0.1:{target.port}/hello", port=gateway.port).body == b"hi"
    assert [r.path for r in target.received] == ["/via-gateway"]


def test_host_header_to_the_target_is_refused(gateway: Proxy, target: Upstream) -> None:
    for host in (f"127.0.0.1:{target.port}", f"LOCALHOST.:{target.port}", f"127.1:{target.port}", f"[::1]:{target.port}"):
        reply = gateway.get("/anything", headers={"Host": host})
        assert_refused(reply.status, reply.body)
    assert target.received == []


def test_streamed_body_to_the_target_is_refused(tmp_path: Path, target: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    """mitmproxy streams large bodies upstream before the `request` hook: checked on the head."""
    proxy = start_proxy(blueprint(tmp_path, ("api", target.url)), "--set", "stream_large_bodies=1k")
    reply = request("POST", f"http://127.0.0.1:{target.port}/upload", port=proxy.port, body=b"x" * 200_000)
    assert_refused(reply.status, reply.body)
    assert target.received == []


def test_connect_with_plain_http_inside(gateway: Proxy, target: Upstream) -> None:
    sock, status, _ = open_tunnel(gateway, f"127.0.0.1:{target.port}")
    with sock:
        assert status == 200  # intercepted: what comes inside meets the blueprint
        sock.sendall(f"GET /anything HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n\r\n".encode())
        status, _, body = read_response(sock)
        assert_refused(status, body)
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n")  # another Host header changes nothing
        assert read_response(sock)[2] == b"hi"
        sock.sendall(b"GET /anything HTTP/1.1\r\nHost: elsewhere.example\r\n\r\n")
        status, _, body = read_response(sock)
        assert_refused(status, body)
    for authority in (f"localhost:{target.port}", f"0x7f000001:{target.port}", f"2130706433:{target.port}"):
        sock, status, _ = open_tunnel(gateway, authority)
        with sock:
            assert status == 200
            sock.sendall(f"GET /anything HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            assert_refused(*read_response(sock)[::2])
    assert target.received == []


def test_connect_with_tls_inside(tmp_path: Path, https_target: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    url = f"https://127.0.0.1:{https_target.port}"
    proxy = start_proxy(blueprint(tmp_path, ("secure", url)), "--set", "ssl_insecure=true")
    sock, status, _ = open_tunnel(proxy, f"127.0.0.1:{https_target.port}")
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with client.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        assert status == 200
        tls.sendall(f"GET /anything HTTP/1.1\r\nHost: 127.0.0.1:{https_target.port}\r\n\r\n".encode())
        status, _, body = read_response(tls)
        assert_refused(status, body, "target secure")
        tls.sendall(f"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:{https_target.port}\r\n\r\n".encode())
        assert read_response(tls)[2] == b"hi"
    assert https_target.received == []


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x01\x02 raw bytes, no HTTP\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"PING\r\n",
    ],
)
def test_connect_with_raw_bytes_inside(tmp_path: Path, raw_target: RawRecorder, start_proxy, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(blueprint(tmp_path, ("raw", f"http://127.0.0.1:{raw_target.port}")))
    sock, status, _ = open_tunnel(proxy, f"127.0.0.1:{raw_target.port}")
    with sock:
        assert status == 200
        sock.sendall(payload)
        assert closed_without_answer(sock)
    time.sleep(0.3)
    assert bytes(raw_target.received) == b""


def test_tunnel_to_an_ignored_target_is_refused(tmp_path: Path, target: Upstream, other: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(blueprint(tmp_path, ("api", target.url)), "--set", "ignore_hosts=^127\\.0\\.0\\.1:", "--set", "ignore_hosts=^localhost:")
    for authority in (f"127.0.0.1:{target.port}", f"localhost:{target.port}"):
        sock, status, body = open_tunnel(proxy, authority)
        sock.close()
        assert_refused(status, body)
        assert "ignore_hosts" in json.loads(body)["error"]
    # Ignored by the Host header seen inside a tunnel whose address is not: the connection is closed.
    sock, status, _ = open_tunnel(proxy, f"127.1:{target.port}")
    with sock:
        assert status == 200
        sock.sendall(f"GET /anything HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n\r\n".encode())
        assert closed_without_answer(sock)
    proxy.wait_for_log("relaying raw bytes to target api")
    # An ignored tunnel to another host still passes.
    sock, status, _ = open_tunnel(proxy, f"127.0.0.1:{other.port}")
    with sock:
        assert status == 200
        sock.sendall(b"GET /ignored HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
    time.sleep(0.3)
    assert target.received == []
    assert [r.path for r in other.received] == ["/ignored"]


def test_tunnel_outside_allow_hosts_is_refused(tmp_path: Path, target: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(blueprint(tmp_path, ("api", target.url)), "--set", "allow_hosts=^example\\.com:")
    sock, status, body = open_tunnel(proxy, f"127.0.0.1:{target.port}")
    sock.close()
    assert_refused(status, body)
    assert "allow_hosts" in json.loads(body)["error"]
    assert target.received == []


def test_startup_line_says_what_regular_mode_exposes(gateway: Proxy) -> None:
    log = gateway.wait_for_log("regular proxy mode")
    line = next(line for line in log.splitlines() if "regular proxy mode" in line)
    assert "pass through" in line and "reachable only through the endpoints" in line
    assert "backworks run" in line and "server.unmatched: not_found" in line


def test_reverse_mode_says_nothing_and_is_unchanged(tmp_path: Path, target: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(blueprint(tmp_path, ("api", target.url)), "--mode", f"reverse:{target.url}")
    assert "regular proxy mode" not in proxy.log()
    assert proxy.get("/via-gateway").json["upstream"] == "target"
    assert proxy.get("/other").status == 404
