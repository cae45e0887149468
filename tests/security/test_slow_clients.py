"""Slow clients (issue 17, item 7): a connection that never finishes its request head is closed.

Through a real mitmdump with `--set backworks_header_timeout=1`: a slowloris client trickling one
header byte every 0.2 s is cut off within a bounded time while another client is answered; a
keep-alive client that pauses less than the timeout between requests keeps its connection, and
one idle for longer is closed; an answer slower than the timeout and a WebSocket open longer are
never cut; with 0 nothing is.
"""

from __future__ import annotations

import asyncio
import socket
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.integration.harness import Proxy, Upstream

pytestmark = pytest.mark.integration

HEAD = b"GET /hello HTTP/1.1\r\nHost: gw\r\nX-Slow: "


def blueprint(tmp_path: Path, upstream: Upstream) -> Path:
    path = tmp_path / "blueprint.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: slow
            plugins:
              proxy: {{config: {{targets: [{{name: up, url: "{upstream.url}"}}]}}}}
            endpoints:
              - path: /hello
                handler: static
                config: {{static: {{body: {{hello: world}}}}}}
              - path: /slow
                handler: proxy
              - path: /ws/{{room}}
                handler: proxy
                config: {{proxy: {{path: "/echo/{{room}}"}}}}
            """
        )
    )
    return path


@pytest.fixture
def gateway(tmp_path: Path, make_upstream, start_proxy) -> Callable[[str], Proxy]:  # type: ignore[no-untyped-def]
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2.5)
        return web.json_response({"slow": True})

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"echo:{message.data}")
        return ws

    up = make_upstream("up", routes={"/slow": slow, "/echo/chat": echo})
    path = blueprint(tmp_path, up)

    def start(timeout: str) -> Proxy:
        return start_proxy(path, "--mode", f"reverse:{up.url}", "--set", f"backworks_header_timeout={timeout}")

    return start


def trickle(port: int, *, every: float = 0.2, limit: float = 6.0, head: bytes = HEAD, byte: bytes = b"a") -> tuple[float, bytes]:
    """Send the head of a request one byte at a time, never finishing it; return (seconds until the
    gateway ended the connection, what it sent back). Stops after `limit` seconds either way."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(every)
    start = time.monotonic()
    received = b""
    sock.sendall(head)
    try:
        while time.monotonic() - start < limit:
            try:
                sock.sendall(byte)
            except OSError:  # reset or broken pipe: closed
                return time.monotonic() - start, received
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return time.monotonic() - start, received
            if not chunk:
                return time.monotonic() - start, received
            received += chunk
        return float("inf"), received
    finally:
        sock.close()


def read_until_closed(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Wait (at most `limit` s) for the peer to close; return (seconds, bytes read meanwhile)."""
    start = time.monotonic()
    sock.settimeout(0.1)
    received = b""
    while time.monotonic() - start < limit:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return time.monotonic() - start, received
        if not chunk:
            return time.monotonic() - start, received
        received += chunk
    return float("inf"), received


def get_on(sock: socket.socket, path: str = "/hello") -> bytes:
    """One keep-alive GET on an open socket; the whole answer."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    return read_answer(sock)


def read_answer(sock: socket.socket) -> bytes:
    """One answer with a Content-Length, head and body."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_slowloris_client_is_cut_off_while_others_are_answered(gateway) -> None:  # type: ignore[no-untyped-def]
    proxy = gateway("1")
    result: list[tuple[float, bytes]] = []
    slow = threading.Thread(target=lambda: result.append(trickle(proxy.port)))
    slow.start()
    answered = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # meanwhile, on other connections
        answered.append(proxy.get("/hello", timeout=2).status)
        time.sleep(0.1)
    slow.join(10)
    elapsed, received = result[0]
    assert 0.8 <= elapsed <= 3.0, f"the trickling connection lived {elapsed:.2f}s"
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"backworks_header_timeout" in received
    assert answered and set(answered) == {200}
    log = proxy.wait_for_log("no complete request head within 1s")
    assert "closed the connection from 127.0.0.1:" in log


def test_a_client_that_never_sends_a_byte_is_closed(gateway) -> None:  # type: ignore[no-untyped-def]
    proxy = gateway("1")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        elapsed, received = read_until_closed(sock, limit=6)
    assert 0.8 <= elapsed <= 3.0, elapsed
    assert received == b""  # nothing told it speaks HTTP (it might be starting a TLS hello): no 408


def test_a_trickled_tls_hello_is_cut_off_without_plaintext(gateway) -> None:  # type: ignore[no-untyped-def]
    proxy = gateway("1")
    # a TLS record header announcing a 512-byte ClientHello, then its bytes one at a time
    elapsed, received = trickle(proxy.port, head=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", byte=b"\x00")
    assert 0.8 <= elapsed <= 3.0, elapsed
    assert b"HTTP/1.1" not in received  # no plaintext 408 thrown at a TLS client


def test_keep_alive_pauses_shorter_than_the_timeout_keep_the_connection(gateway) -> None:  # type: ignore[no-untyped-def]
    proxy = gateway("1")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        for _ in range(4):  # 4 × 0.6 s: longer than the timeout in all, never idle that long at once
            assert get_on(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(0.6)
        assert get_on(sock).startswith(b"HTTP/1.1 200 ")
        # then idle: closed after the timeout, as nginx's keepalive_timeout does
        elapsed, _ = read_until_closed(sock, limit=6)
    assert 0.8 <= elapsed <= 3.0, elapsed


def test_an_answer_slower_than_the_timeout_is_not_cut(gateway) -> None:  # type: ignore[no-untyped-def]
    proxy = gateway("1")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        answer = get_on(sock, "/slow")  # the upstream takes 2.5 s: a request is in flight all along
        assert answer.startswith(b"HTTP/1.1 200 ") and b'"slow": true' in answer


def test_a_websocket_open_longer_than_the_timeout_is_not_closed(gateway) -> None:  # type: ignore[no-untyped-def]
    proxy = gateway("1")

    async def talk() -> list[str]:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"http://127.0.0.1:{proxy.port}/ws/chat", heartbeat=None) as ws:
                replies = []
                for message in ("one", "two"):
                    await ws.send_str(message)
                    reply = await asyncio.wait_for(ws.receive(), 5)
                    replies.append(reply.data)
                    await asyncio.sleep(2.5)  # silent for longer than the timeout
                return replies

    assert asyncio.run(talk()) == ["echo:one", "echo:two"]
    assert "no complete request head" not in proxy.log()


def test_a_passthrough_connection_no_hook_reports_is_not_closed(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    """ignore_hosts turns the listener into a raw TCP passthrough: mitmproxy fires no hook for it."""
    echo = socket.create_server(("127.0.0.1", 0))
    port = echo.getsockname()[1]

    def serve() -> None:
        for _ in range(5):
            try:
                conn, _ = echo.accept()
            except OSError:  # closed at the end of the test
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            while data := conn.recv(4096):
                conn.sendall(data)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        path = tmp_path / "blueprint.yaml"
        path.write_text("name: passthrough\nendpoints:\n  - path: /hello\n    handler: static\n    config: {static: {body: hi}}\n")
        proxy = start_proxy(path, "--mode", f"reverse:http://127.0.0.1:{port}", "--set", "ignore_hosts=127.0.0.1", "--set", "backworks_header_timeout=1")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(b"hello, not HTTP\n")
            assert sock.recv(4096) == b"hello, not HTTP\n"
            time.sleep(2.5)  # silent for longer than the timeout
            sock.sendall(b"still here\n")
            assert sock.recv(4096) == b"still here\n"
        assert "no complete request head" not in proxy.log()
    finally:
        echo.close()


def test_zero_turns_the_timeout_off(gateway) -> None:  # type: ignore[no-untyped-def]
    proxy = gateway("0")
    elapsed, received = trickle(proxy.port, limit=2.5)
    assert elapsed == float("inf") and received == b""  # still open after 2.5 s of trickling
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(HEAD)
        for _ in range(12):  # 2.4 s
            sock.sendall(b"a")
            time.sleep(0.2)
        sock.sendall(b"\r\n\r\n")
        assert read_answer(sock).startswith(b"HTTP/1.1 200 ")  # the trickled request itself was answered
    assert "no complete request head" not in proxy.log()
