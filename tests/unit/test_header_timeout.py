"""The header timeout's state machine (addons/header_timeout.py), on a fake clock.

When the timer runs (from the connection's start, and after each exchange while nothing is in
flight), when it stops for good (WebSocket, tunnels, passthrough), and how a connection is closed:
through mitmproxy's proxyserver addon, as mitmproxy's own idle timeout closes one.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from mitmproxy import connection, exceptions
from mitmproxy.addons import proxyserver
from mitmproxy.proxy import layer, layers
from mitmproxy.proxy.context import Context
from mitmproxy.test import taddons, tflow

from addons.header_timeout import REQUEST_TIMEOUT, HeaderTimeout, LiveConnections, Shape, shape_of

# --------------------------------------------------------------------------------------
# A fake loop: time moves only when the test says so


@dataclass(order=True)
class FakeTimer:
    when: float
    seq: int
    callback: Callable[..., object] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[FakeTimer] = []
        self._seq = 0

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeTimer:
        self._seq += 1
        timer = FakeTimer(self.now + delay, self._seq, callback, args)
        heapq.heappush(self._timers, timer)
        return timer

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._timers and self._timers[0].when <= end:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self.now = timer.when
                timer.callback(*timer.args)
        self.now = end

    @property
    def armed(self) -> int:
        return sum(not t.cancelled for t in self._timers)


class FakeConnections(LiveConnections):
    """Records what would be closed; what each connection looks like when its timer runs out."""

    def __init__(self) -> None:
        self.closed: list[tuple[str, bytes | None]] = []
        self.shapes: dict[str, Shape] = {}

    def shape(self, client_id: str) -> Shape | None:
        return self.shapes.get(client_id, Shape())

    def close(self, client_id: str, farewell: bytes | None) -> bool:
        self.closed.append((client_id, farewell))
        return True


@pytest.fixture
def loop() -> FakeLoop:
    return FakeLoop()


@pytest.fixture
def conns() -> FakeConnections:
    return FakeConnections()


@pytest.fixture
def addon(loop: FakeLoop, conns: FakeConnections) -> Iterator[HeaderTimeout]:
    addon = HeaderTimeout(scheduler=loop, connections=conns)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, backworks_header_timeout="10")
        yield addon


def client(tls: bool = False, alpn: bytes | None = None) -> connection.Client:
    c = tflow.tclient_conn()
    c.tls = tls
    c.alpn = alpn
    return c


def flow_on(c: connection.Client) -> Any:
    f = tflow.tflow()
    f.client_conn = c
    return f


# --------------------------------------------------------------------------------------
# The option


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30.0), ("1.5", 1.5), ("500ms", 0.5), ("0", 0.0), ("2m", 120.0)])
def test_the_option_takes_durations(text: str, seconds: float) -> None:
    addon = HeaderTimeout(scheduler=FakeLoop(), connections=FakeConnections())
    with taddons.context(addon) as tctx:
        tctx.configure(addon, backworks_header_timeout=text)
        assert addon.timeout == seconds


def test_the_default_is_30_seconds() -> None:
    addon = HeaderTimeout(scheduler=FakeLoop(), connections=FakeConnections())
    with taddons.context(addon) as tctx:
        assert tctx.options.backworks_header_timeout == "30s"
        assert addon.timeout == 30.0


@pytest.mark.parametrize("text", ["-1", "soon", "", "1e3", "nan"])
def test_a_bad_value_is_an_options_error_naming_the_option(text: str) -> None:
    addon = HeaderTimeout(scheduler=FakeLoop(), connections=FakeConnections())
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError) as info:
            tctx.configure(addon, backworks_header_timeout=text)
        assert "backworks_header_timeout" in str(info.value)
        assert tctx.options.backworks_header_timeout == "30s"  # rolled back
        assert addon.timeout == 30.0


# --------------------------------------------------------------------------------------
# Arming and closing


def test_a_connection_without_a_request_head_is_closed_after_the_timeout(addon, loop, conns, caplog) -> None:  # type: ignore[no-untyped-def]
    c = client()
    addon.client_connected(c)
    conns.shapes[c.id] = Shape(http=True)  # the first bytes were HTTP
    loop.advance(9.9)
    assert conns.closed == []
    with caplog.at_level(logging.INFO, logger="addons.header_timeout"):
        loop.advance(0.2)
    assert conns.closed == [(c.id, REQUEST_TIMEOUT)]  # plaintext HTTP/1: told 408 first
    assert "closed the connection from 127.0.0.1:22: no complete request head within 10s" in caplog.text
    assert addon.closed == 1


@pytest.mark.parametrize(("tls", "alpn"), [(True, b"http/1.1"), (True, b"h2"), (False, b"h2")])
def test_tls_and_http2_connections_are_closed_without_a_408(addon, loop, conns, tls: bool, alpn: bytes) -> None:  # type: ignore[no-untyped-def]
    c = client(tls=tls, alpn=alpn)
    addon.client_connected(c)
    conns.shapes[c.id] = Shape(http=True)
    loop.advance(11)
    assert conns.closed == [(c.id, None)]


def test_a_connection_that_has_not_shown_it_speaks_http_is_closed_without_a_408(addon, loop, conns) -> None:  # type: ignore[no-untyped-def]
    c = client()  # no byte yet, or the start of a TLS hello: plaintext would be garbage to it
    addon.client_connected(c)
    loop.advance(11)
    assert conns.closed == [(c.id, None)]


def test_a_request_in_flight_stops_the_timer_and_its_end_restarts_it(addon, loop, conns) -> None:  # type: ignore[no-untyped-def]
    c = client()
    addon.client_connected(c)
    loop.advance(9)
    f = flow_on(c)
    addon.requestheaders(f)
    loop.advance(100)  # a slow upstream, a slow body: not the head's fault
    assert conns.closed == []
    addon.response(f)
    loop.advance(9.9)  # keep-alive: the next head gets a full timeout from the end of this one
    assert conns.closed == []
    loop.advance(0.2)
    assert [cid for cid, _ in conns.closed] == [c.id]


def test_a_busy_keep_alive_connection_sets_no_timer_per_request(addon, loop, conns) -> None:  # type: ignore[no-untyped-def]
    c = client()
    addon.client_connected(c)
    before = loop._seq
    for _ in range(1000):  # 1000 requests within 5 s: the pending timer is kept, its deadline moves
        f = flow_on(c)
        addon.requestheaders(f)
        loop.advance(0.0025)
        addon.response(f)
        loop.advance(0.0025)
    assert loop._seq - before == 0  # not one new timer: only the deadline moved
    loop.advance(9.9)
    assert conns.closed == []
    loop.advance(0.2)
    assert len(conns.closed) == 1  # 10 s after the last answer, not after the first timer


def test_an_error_ends_a_request_as_a_response_does(addon, loop, conns) -> None:  # type: ignore[no-untyped-def]
    c = client()
    addon.client_connected(c)
    f = flow_on(c)
    addon.requestheaders(f)
    addon.error(f)
    addon.response(f)  # a late duplicate changes nothing
    loop.advance(10.1)
    assert len(conns.closed) == 1


def test_http2_is_idle_only_when_no_stream_is_in_flight(addon, loop, conns) -> None:  # type: ignore[no-untyped-def]
    c = client(tls=True, alpn=b"h2")
    addon.client_connected(c)
    streams = [flow_on(c) for _ in range(3)]
    for f in streams:
        addon.requestheaders(f)
    addon.response(streams[0])
    addon.error(streams[1])
    loop.advance(50)
    assert conns.closed == []  # one stream still open
    addon.response(streams[2])
    loop.advance(10.1)
    assert conns.closed == [(c.id, None)]


def test_a_response_for_a_flow_never_counted_does_not_restart_the_timer(addon, loop, conns) -> None:  # type: ignore[no-untyped-def]
    c = client()
    addon.client_connected(c)
    loop.advance(9)
    addon.response(flow_on(c))  # e.g. a flow replayed or injected: not this connection's head
    loop.advance(1.1)
    assert len(conns.closed) == 1


def test_an_answer_still_being_written_is_not_idle(addon, loop, conns) -> None:  # type: ignore[no-untyped-def]
    c = client()
    addon.client_connected(c)
    f = flow_on(c)
    addon.requestheaders(f)
    addon.response(f)
    conns.shapes[c.id] = Shape(pending=1 << 20)  # a slow reader of a large answer
    loop.advance(25)
    assert conns.closed == []
    conns.shapes[c.id] = Shape()  # all written out: idle from now on
    loop.advance(10)
    assert len(conns.closed) == 1


def test_a_connect_head_restarts_the_timer_for_the_tunnels_first_request(addon, loop, conns) -> None:  # type: ignore[no-untyped-def]
    c = client()
    addon.client_connected(c)
    loop.advance(9)
    addon.http_connect(flow_on(c))
    loop.advance(9)
    assert conns.closed == []
    loop.advance(1.1)
    assert len(conns.closed) == 1


def test_disconnect_drops_the_timer(addon, loop, conns) -> None:  # type: ignore[no-untyped-def]
    c = client()
    addon.client_connected(c)
    addon.client_disconnected(c)
    assert loop.armed == 0 and addon.watches == {}
    loop.advance(60)
    assert conns.closed == []


def test_udp_clients_are_not_watched(addon, loop, conns) -> None:  # type: ignore[no-untyped-def]
    c = client()
    c.transport_protocol = "udp"
    addon.client_connected(c)
    assert loop.armed == 0


# --------------------------------------------------------------------------------------
# Long-lived on purpose: never timed again


def upgrade_101(f: Any) -> None:
    from mitmproxy.websocket import WebSocketData

    f.websocket = WebSocketData()


EXEMPTIONS: dict[str, Callable[[HeaderTimeout, connection.Client], None]] = {
    "websocket_start": lambda a, c: a.websocket_start(flow_on(c)),
    "a 101 response": lambda a, c: (f := flow_on(c), a.requestheaders(f), upgrade_101(f), a.response(f)),  # type: ignore[func-returns-value]
    "tcp_start": lambda a, c: a.tcp_start(tflow.ttcpflow(client_conn=c)),
    "udp_start": lambda a, c: a.udp_start(tflow.tudpflow(client_conn=c)),
}


@pytest.mark.parametrize("how", EXEMPTIONS)
def test_websockets_and_tunnels_are_never_timed(addon, loop, conns, how: str) -> None:  # type: ignore[no-untyped-def]
    c = client()
    addon.client_connected(c)
    EXEMPTIONS[how](addon, c)
    f = flow_on(c)
    addon.requestheaders(f)  # nothing afterwards turns it back on
    addon.response(f)
    addon.http_connect(f)
    loop.advance(3600)
    assert conns.closed == [] and loop.armed == 0


def test_a_tunnel_no_hook_told_of_is_found_in_the_stack_and_left_alone(addon, loop, conns) -> None:  # type: ignore[no-untyped-def]
    c = client()
    addon.client_connected(c)
    conns.shapes[c.id] = Shape(tunnel=True)  # an ignore_hosts / TLS passthrough: no hook fires
    loop.advance(3600)
    assert conns.closed == [] and loop.armed == 0
    f = flow_on(c)
    addon.http_connect(f)
    loop.advance(3600)
    assert conns.closed == []


# --------------------------------------------------------------------------------------
# The layer stack, as mitmproxy's NextLayer addon builds it


def ctx_for(c: connection.Client) -> Context:
    from mitmproxy.options import Options

    return Context(c, Options())


def chosen(context: Context, *stack: layer.Layer) -> layer.NextLayer:
    """A NextLayer that has been given `stack` (top first), as NextLayer.next_layer does."""
    nextlayer = layer.NextLayer(context)
    for upper, lower in zip(stack, stack[1:]):
        upper.child_layer = lower  # type: ignore[attr-defined]
    nextlayer.layer = stack[0] if stack else None
    return nextlayer


def reverse(context: Context, *stack: layer.Layer) -> layer.Layer:
    top = layers.modes.ReverseProxy(context)
    top.child_layer = chosen(context, *stack)
    return top


def test_shapes_of_layer_stacks() -> None:
    c = client()
    cx = ctx_for(c)
    http = lambda: layers.HttpLayer(cx, layers.http.HTTPMode.transparent)  # noqa: E731
    assert shape_of(None) == Shape()
    assert shape_of(reverse(cx)) == Shape()  # no byte yet: undecided
    assert shape_of(reverse(cx, http())) == Shape(http=True)
    assert shape_of(reverse(cx, layers.ServerTLSLayer(cx), layers.ClientTLSLayer(cx), http())) == Shape(http=True)
    assert shape_of(reverse(cx, layers.TCPLayer(cx, ignore=True))).tunnel  # ignore_hosts
    assert shape_of(reverse(cx, layers.ServerTLSLayer(cx), layers.ClientTLSLayer(cx), layers.TCPLayer(cx))).tunnel  # reverse:tls://
    assert shape_of(reverse(cx, layers.UDPLayer(cx, ignore=True))).tunnel


def test_a_tunnel_behind_connect_is_found_in_the_http_streams() -> None:
    c = client()
    cx = ctx_for(c)
    proxy = layers.HttpLayer(cx, layers.http.HTTPMode.regular)
    stream = layers.http.HttpStream(cx, 1)
    stream.child_layer = chosen(cx, layers.TCPLayer(cx, ignore=True))  # CONNECT, then passthrough
    proxy.streams[1] = stream
    top = layers.modes.HttpProxy(cx)
    top.child_layer = chosen(cx, proxy)
    assert shape_of(top) == Shape(tunnel=True, http=True)
    stream.child_layer = chosen(cx, layers.ClientTLSLayer(cx), layers.HttpLayer(cx, layers.http.HTTPMode.transparent))
    assert shape_of(top) == Shape(http=True)  # an intercepted tunnel: requests inside are timed
    stream.child_layer = layers.WebsocketLayer(cx, tflow.twebsocketflow())
    assert shape_of(top).tunnel


# --------------------------------------------------------------------------------------
# Turning it off and changing it live


def test_zero_arms_nothing(loop, conns) -> None:  # type: ignore[no-untyped-def]
    addon = HeaderTimeout(scheduler=loop, connections=conns)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, backworks_header_timeout="0")
        c = client()
        addon.client_connected(c)
        loop.advance(3600)
        assert conns.closed == [] and loop.armed == 0


def test_a_live_change_applies_to_open_idle_connections(addon, loop, conns) -> None:  # type: ignore[no-untyped-def]
    idle, busy = client(), client()
    addon.client_connected(idle)
    conns.shapes[idle.id] = Shape(http=True)
    addon.client_connected(busy)
    f = flow_on(busy)
    addon.requestheaders(f)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, backworks_header_timeout="0")
        loop.advance(60)
        assert conns.closed == []
        tctx.configure(addon, backworks_header_timeout="2")
        loop.advance(2.1)
        assert conns.closed == [(idle.id, REQUEST_TIMEOUT)]  # busy still has a request in flight


# --------------------------------------------------------------------------------------
# The real lookup: mitmproxy's proxyserver addon and the client's handler task


class FakeTask:
    def __init__(self) -> None:
        self.cancelled_with: str | None = None

    def cancel(self, msg: str | None = None) -> None:
        self.cancelled_with = msg


class FakeWriter:
    def __init__(self, pending: int = 0) -> None:
        self.written = b""
        self.transport = type("T", (), {"get_write_buffer_size": lambda _self: pending})()

    def write(self, data: bytes) -> None:
        self.written += data


@dataclass
class FakeIO:
    handler: FakeTask
    writer: FakeWriter


@dataclass
class FakeHandler:
    client: connection.Client
    transports: dict[connection.Client, FakeIO]
    layer: layer.Layer | None = None


def test_live_connections_cancel_the_handler_task_found_through_proxyserver() -> None:
    ps = proxyserver.Proxyserver()
    live = LiveConnections()
    c = client()
    io = FakeIO(FakeTask(), FakeWriter(pending=7))
    with taddons.context(ps):
        assert live.shape(c.id) is None
        assert live.close(c.id, REQUEST_TIMEOUT) is False  # not a live connection: nothing to do
        cx = ctx_for(c)
        ps.connections[c.id] = FakeHandler(c, {c: io}, reverse(cx, layers.HttpLayer(cx, layers.http.HTTPMode.transparent)))  # type: ignore[assignment]
        assert live.shape(c.id) == Shape(http=True, pending=7)
        assert live.close(c.id, REQUEST_TIMEOUT) is True
        assert io.handler.cancelled_with == "backworks_header_timeout"
        assert io.writer.written == REQUEST_TIMEOUT
        assert REQUEST_TIMEOUT.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        head, _, body = REQUEST_TIMEOUT.partition(b"\r\n\r\n")
        assert f"content-length: {len(body)}".encode() in head
