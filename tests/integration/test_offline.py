"""Offline means offline: HTTPS mocks served to clients that use Backworks as their proxy.

A client with a proxy setting (a browser, a phone, an app under test) opens a CONNECT tunnel
per host. For the hosts the blueprint serves, mitmproxy must not connect to the real host when
the tunnel opens: the recorded answers come back over HTTP/1.1 and HTTP/2 with the real API
stopped or nonexistent, and nothing connects to it. Hosts the blueprint does not serve behave
as before (a 502 when they cannot be reached).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.certs import write_self_signed
from tests.integration.harness import BIN, free_port, request, start_capture, stop_capture, stop_process_group, Upstream, wait_for_port

pytestmark = pytest.mark.integration


# -- clients ------------------------------------------------------------------------------------


def fetch_h1(proxy_port: int, ca: Path, host: str, port: int, path: str) -> tuple[int, bytes]:
    """GET https://host:port/path through the proxy (CONNECT), HTTP/1.1, trusting only `ca`."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, timeout=15, context=context)
    conn.set_tunnel(host, port)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def fetch_h2(proxy_port: int, ca: Path, host: str, port: int, path: str) -> tuple[int, bytes]:
    """The same over HTTP/2 (ALPN h2), with the `h2` library mitmproxy installs."""
    import h2.connection
    import h2.events

    raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=15)
    try:
        raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = raw.recv(4096)
            if not chunk:
                break
            head += chunk
        status_line = head.split(b"\r\n", 1)[0]
        assert status_line.split()[1:2] == [b"200"], f"CONNECT answered {status_line!r}"
        context = ssl.create_default_context(cafile=str(ca))
        context.set_alpn_protocols(["h2"])
        tls = context.wrap_socket(raw, server_hostname=host)
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        authority = host if port == 443 else f"{host}:{port}"
        conn.send_headers(stream, [(":method", "GET"), (":path", path), (":authority", authority), (":scheme", "https")], end_stream=True)
        tls.sendall(conn.data_to_send())
        status, body, ended = 0, b"", False
        for _ in range(1000):  # bounded; each recv also has the socket's timeout
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    ended = True
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    raise AssertionError(f"stream reset: {event.error_code!r}")
            tls.sendall(conn.data_to_send())
            if ended:
                break
        assert ended, "the HTTP/2 answer did not end"
        return status, body
    finally:
        raw.close()


def curl_supports_http2() -> bool:
    curl = shutil.which("curl")
    if curl is None:
        return False
    version = subprocess.run([curl, "-V"], capture_output=True, text=True, timeout=10).stdout
    return "HTTP2" in version


def fetch_curl(proxy_port: int, ca: Path, host: str, port: int, path: str, *, http2: bool) -> tuple[int, bytes, str]:
    """curl -x through the proxy; returns the status, the body and the HTTP version curl used."""
    command = [
        "curl", "-sS", "--max-time", "15", "-x", f"http://127.0.0.1:{proxy_port}", "--cacert", str(ca),
        "--http2" if http2 else "--http1.1", "-w", "\n%{http_code} %{http_version}", f"https://{host}:{port}{path}",
    ]
    done = subprocess.run(command, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    body, _, trailer = done.stdout.rpartition(b"\n")
    code, version = trailer.decode().split()
    return int(code), body, version


class CountingListener:
    """A TCP listener on 127.0.0.1 that counts the connections made to it (and closes them)."""

    def __init__(self, port: int | None = None) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port or 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[CountingListener]:
    server = CountingListener()
    yield server
    server.close()


def ca_of(confdir: Path) -> Path:
    ca = confdir / "mitmproxy-ca-cert.pem"
    deadline = time.monotonic() + 10
    while not ca.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return ca


def tunnel_status(proxy_port: int, host: str, port: int) -> int:
    """The status mitmproxy answers a CONNECT with."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=15) as raw:
        raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head and len(head) < 65536:
            chunk = raw.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split()[1])


# -- a blueprint that names its hosts -----------------------------------------------------------

NAMED = """
name: named-hosts
endpoints:
  - path: /users/{id:int}
    host: api.example.test
    handler: mock
    config:
      mock:
        examples:
          - when: {path: {id: 1}}
            headers: {Content-Type: application/json}
            body: {id: 1, name: Ada}
  - path: /ping
    host: localhost
    handler: mock
    config:
      mock:
        examples:
          - body: pong
"""


def test_named_hosts_answer_offline_over_http1_and_http2(tmp_path: Path, start_proxy: Any, listener: CountingListener) -> None:
    blueprint = tmp_path / "named.yaml"
    blueprint.write_text(textwrap.dedent(NAMED))
    confdir = tmp_path / "mitm"
    proxy = start_proxy(blueprint, "--set", f"confdir={confdir}")
    ca = ca_of(confdir)

    # api.example.test resolves nowhere: any upstream connection would fail
    assert fetch_h1(proxy.port, ca, "api.example.test", 443, "/users/1") == (200, b'{"id":1,"name":"Ada"}')
    assert fetch_h2(proxy.port, ca, "api.example.test", 443, "/users/1") == (200, b'{"id":1,"name":"Ada"}')
    if curl_supports_http2():
        assert fetch_curl(proxy.port, ca, "api.example.test", 443, "/users/1", http2=True) == (200, b'{"id":1,"name":"Ada"}', "2")
        assert fetch_curl(proxy.port, ca, "api.example.test", 443, "/users/1", http2=False) == (200, b'{"id":1,"name":"Ada"}', "1.1")

    # a host that listens: the tunnel and the answers never reach it
    assert fetch_h1(proxy.port, ca, "localhost", listener.port, "/ping") == (200, b"pong")
    assert fetch_h2(proxy.port, ca, "localhost", listener.port, "/ping") == (200, b"pong")
    assert listener.accepted == 0

    # a request the blueprint does not answer passes on (server.unmatched: passthrough): the
    # connection is made then, and fails as it did before
    status, body = fetch_h1(proxy.port, ca, "api.example.test", 443, "/elsewhere")
    assert status == 502, body

    # a host the blueprint does not name: as before, mitmproxy connects when the tunnel opens
    assert tunnel_status(proxy.port, "other.example.test", 443) == 502
    with pytest.raises(OSError, match="502"):
        fetch_h1(proxy.port, ca, "other.example.test", 443, "/users/1")
    assert "Traceback" not in proxy.log()


def test_ignored_hosts_are_still_tunnelled_as_raw_bytes(tmp_path: Path, start_proxy: Any, listener: CountingListener) -> None:
    """ignore_hosts wins: mitmproxy relays such a tunnel, so it connects when the tunnel opens."""
    blueprint = tmp_path / "named.yaml"
    blueprint.write_text(textwrap.dedent(NAMED))
    confdir = tmp_path / "mitm"
    proxy = start_proxy(blueprint, "--set", f"confdir={confdir}", "--set", "ignore_hosts=^localhost:")
    assert tunnel_status(proxy.port, "localhost", listener.port) == 200
    deadline = time.monotonic() + 5
    while listener.accepted == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listener.accepted == 1
    assert tunnel_status(proxy.port, "api.example.test", 443) == 200  # served, not ignored


# -- record an HTTPS API through the regular proxy, stop it, replay through the regular proxy ---


def https_upstream(tmp_path: Path) -> tuple[Upstream, Path]:
    cert, key = write_self_signed(tmp_path / "upstream-tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def user(req: web.Request) -> web.Response:
        return web.json_response({"id": int(req.match_info.get("id", "1") or 1), "name": "Ada"})

    async def orders(req: web.Request) -> web.Response:
        return web.json_response({"orders": [{"id": 10, "total": 9.5}]}, headers={"X-Api": "shop"})

    return Upstream("https-api", routes={"/users/1": user, "/orders": orders}, ssl_context=context).start(), cert


def test_an_https_recording_replays_through_the_regular_proxy_with_the_api_stopped(tmp_path: Path, start_proxy: Any) -> None:
    upstream, upstream_cert = https_upstream(tmp_path)
    port = free_port()
    output = tmp_path / "shop.yaml"
    capture_conf = tmp_path / "capture-mitm"
    process = start_capture(
        port, "-o", str(output), "--name", "shop", "--",
        "--set", f"confdir={capture_conf}", "--set", f"ssl_verify_upstream_trusted_ca={upstream_cert}",
    )
    recorded: dict[str, bytes] = {}
    try:
        for path in ("/users/1", "/orders"):
            status, body = fetch_h1(port, ca_of(capture_conf), "127.0.0.1", upstream.port, path)
            assert status == 200, body
            recorded[path] = body
        log = stop_capture(process)
    finally:
        stop_process_group(process)
        upstream.stop()
    assert output.exists(), log
    document = yaml.safe_load(output.read_text())
    assert {e["path"] for e in document["endpoints"]} == {"/users/{user_id:int}", "/orders"}

    # The API is gone; something else listens on its port and counts who comes.
    listener = CountingListener(upstream.port)
    try:
        confdir = tmp_path / "serve-mitm"
        proxy = start_proxy(output, "--set", f"confdir={confdir}")  # no flag beyond the blueprint
        ca = ca_of(confdir)
        for path, body in recorded.items():
            for fetch in (fetch_h1, fetch_h2):
                status, served = fetch(proxy.port, ca, "127.0.0.1", upstream.port, path)
                assert (status, json.loads(served)) == (200, json.loads(body)), fetch.__name__
        if curl_supports_http2():
            status, served, version = fetch_curl(proxy.port, ca, "127.0.0.1", upstream.port, "/orders", http2=True)
            assert (status, json.loads(served), version) == (200, json.loads(recorded["/orders"]), "2")
        # server.unmatched: not_found: what was not recorded is Backworks' 404, still offline
        status, body = fetch_h1(proxy.port, ca, "127.0.0.1", upstream.port, "/nothing")
        assert status == 404 and b"no endpoint matches GET /nothing" in body
        assert listener.accepted == 0
    finally:
        listener.close()


def https_upstream_behind_proxy(tmp_path: Path, blueprint: Path, start_proxy: Any, make_upstream: Any) -> tuple[Any, Any, Path]:
    """A real HTTPS upstream ("real", self-signed) and a gateway that trusts it: (upstream, proxy,
    the gateway's CA file for clients)."""
    cert, key = write_self_signed(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    upstream = make_upstream("real", ssl_context=context)
    confdir = tmp_path / "mitm"
    proxy = start_proxy(blueprint, "--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={cert}")
    return upstream, proxy, ca_of(confdir)


def test_a_secure_proxy_client_still_reaches_an_unnamed_host(tmp_path: Path, start_proxy: Any, make_upstream: Any) -> None:
    """Hosts the blueprint does not name keep working normally through the tunnel (eager, as before)."""
    blueprint = tmp_path / "named.yaml"
    blueprint.write_text(textwrap.dedent(NAMED))
    upstream, proxy, ca = https_upstream_behind_proxy(tmp_path, blueprint, start_proxy, make_upstream)
    status, body = fetch_h1(proxy.port, ca, "127.0.0.1", upstream.port, "/anything")
    assert status == 200 and b'"upstream": "real"' in body
    assert len(upstream.received) == 1
    if curl_supports_http2():  # the ALPN offered to the client is still the server's (no h2 here)
        status, body, version = fetch_curl(proxy.port, ca, "127.0.0.1", upstream.port, "/anything", http2=True)
        assert (status, version) == (200, "1.1") and b'"upstream": "real"' in body


PASSING_ON = """
name: passing-on
endpoints:
  - path: /items/{id}
    host: 127.0.0.1
    handler: mock
    config:
      mock:
        examples:
          - when: {path: {id: 1}}
            body: recorded item 1
        passthrough: true
"""


def test_a_request_the_mock_passes_on_reaches_the_host_over_tls(tmp_path: Path, start_proxy: Any, make_upstream: Any) -> None:
    """Answered tunnels are still https: what the blueprint does not answer goes on with TLS, when asked."""
    blueprint = tmp_path / "passing-on.yaml"
    blueprint.write_text(textwrap.dedent(PASSING_ON))
    upstream, proxy, ca = https_upstream_behind_proxy(tmp_path, blueprint, start_proxy, make_upstream)
    for fetch in (fetch_h1, fetch_h2):
        assert fetch(proxy.port, ca, "127.0.0.1", upstream.port, "/items/1") == (200, b"recorded item 1")
    assert upstream.received == []  # answered by the mock: the host was not contacted
    for fetch in (fetch_h1, fetch_h2):
        status, body = fetch(proxy.port, ca, "127.0.0.1", upstream.port, "/items/2")
        assert status == 200 and json.loads(body)["upstream"] == "real", body
    assert [r.path for r in upstream.received] == ["/items/2", "/items/2"]


def test_a_pool_target_stays_guarded_in_an_answered_tunnel(tmp_path: Path, start_proxy: Any, listener: CountingListener) -> None:
    """TargetGuard still closes raw bytes to a pool target inside a tunnel answered without it."""
    blueprint = tmp_path / "guarded.yaml"
    blueprint.write_text(
        textwrap.dedent(
            f"""
            name: guarded
            server: {{unmatched: not_found}}
            plugins:
              proxy: {{config: {{targets: [{{name: api, url: "http://127.0.0.1:{listener.port}"}}]}}}}
            endpoints:
              - {{path: /hello, handler: static, config: {{static: {{body: hi}}}}}}
            """
        )
    )
    confdir = tmp_path / "mitm"
    proxy = start_proxy(blueprint, "--set", f"confdir={confdir}")
    ca = ca_of(confdir)
    assert fetch_h1(proxy.port, ca, "127.0.0.1", listener.port, "/hello") == (200, b"hi")
    status, body = fetch_h1(proxy.port, ca, "127.0.0.1", listener.port, "/elsewhere")
    assert status == 404 and b"no endpoint matches" in body
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as raw:
        raw.sendall(f"CONNECT 127.0.0.1:{listener.port} HTTP/1.1\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        tls = ssl.create_default_context(cafile=str(ca)).wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(b"\x00\x01 raw bytes, not HTTP\n")
        tls.settimeout(10)
        try:
            assert tls.recv(4096) == b""  # closed
        except (ConnectionError, ssl.SSLError):
            pass
    assert listener.accepted == 0
    assert "relaying raw bytes" in proxy.log()
