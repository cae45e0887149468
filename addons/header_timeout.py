"""Closes client connections that do not deliver a complete request head in time (slowloris).

mitmproxy's only timer on a client connection is its idle watchdog (10 minutes in mitmproxy 11,
the `tcp_timeout` option in 12), and every byte read restarts it: a client that trickles one
header byte every few seconds keeps its connection, and a slot of the server, for as long as it
likes. This addon adds the timer mitmproxy lacks, as nginx's `client_header_timeout` and
`keepalive_timeout` or HAProxy's `timeout http-request` do: a connection gets
`backworks_header_timeout` seconds from its start, and again from the end of each exchange, to
deliver the next complete request head; a connection that has not is closed.

The timer runs only while no request is in flight on the connection (HTTP/2: no stream), and
never again once the connection carries a WebSocket, a TCP/UDP tunnel or a TLS passthrough:
those are long-lived on purpose. `websocket_start`, `tcp_start` and `udp_start` say so when they
fire; a passthrough fires no hook at all, so before closing anything the expired timer looks at
the connection's layer stack. A connection that still has an answer to write out is not idle
either (a slow download is not a slow request). At most one `loop.call_later` handle per
connection, whose deadline the hooks move: no task, no polling, O(1) per hook.

Closing is done as mitmproxy's own idle timeout does it (`ConnectionHandler.on_timeout`): the
client's connection handler task, found through the `proxyserver` addon's `connections`, is
cancelled, and mitmproxy closes the socket. A client known to speak plaintext HTTP/1 (mitmproxy
chose its HTTP layer, no TLS) is told `408 Request Timeout` first; any other connection (TLS,
HTTP/2, or no byte that told which) is closed without a word: mitmproxy can only write those
protocols from inside a flow.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mitmproxy import connection, ctx, exceptions, http, tcp, udp
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import layer, layers
from mitmproxy.utils import human

from backworks_core.validation import parse_duration

logger = logging.getLogger(__name__)

OPTION = "backworks_header_timeout"
DEFAULT = "30s"

_TIMEOUT_BODY = json.dumps({"error": f"the request head did not arrive in time ({OPTION}); connection closed", "status": 408}).encode()
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    + b"content-length: %d\r\n\r\n" % len(_TIMEOUT_BODY)
    + _TIMEOUT_BODY
)


class Timer(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """The part of an asyncio loop the timers use; tests pass a fake one with a clock they move."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer: ...


def parse_timeout(value: str) -> float:
    """Seconds from the option's text ("30", "30s", "1.5", "500ms"); 0 turns the timer off."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise exceptions.OptionsError(f"{OPTION}: {exc} (0 turns it off)") from None


@dataclass(frozen=True)
class Shape:
    """What a live client connection is carrying when its timer runs out."""

    tunnel: bool = False  # a TCP/UDP tunnel, a TLS passthrough or a WebSocket: never timed
    http: bool = False  # mitmproxy chose its HTTP layer: the bytes so far are HTTP (not a TLS hello)
    pending: int = 0  # bytes of an answer not yet taken by the kernel: still writing, not idle


TUNNELS = (layers.TCPLayer, layers.UDPLayer, layers.WebsocketLayer)


def shape_of(top: layer.Layer | None) -> Shape:
    """Walk a connection's layer stack (through NextLayer's choice and the streams of HTTP, where a
    CONNECT tunnel or a WebSocket lives). Addons see only the NextLayer before mitmproxy's own
    NextLayer addon fills it in, and a passthrough fires no hook: the stack is the one record."""
    todo: list[Any] = [top]
    http = False
    for _ in range(256):  # a handful of layers per connection; bounded whatever happens
        if not todo:
            break
        current = todo.pop()
        if current is None:
            continue
        if isinstance(current, TUNNELS):
            return Shape(tunnel=True, http=http)
        if isinstance(current, layers.HttpLayer):
            http = True
            todo.extend(getattr(stream, "child_layer", None) for stream in getattr(current, "streams", {}).values())
        todo.append(getattr(current, "child_layer", None))
        if isinstance(current, layer.NextLayer):
            todo.append(current.layer)
    return Shape(http=http)


class LiveConnections:
    """mitmproxy's handlers of live client connections, reached through the `proxyserver` addon.

    `Proxyserver.connections` maps a TCP client's id to its `ConnectionHandler` in mitmproxy 11
    and 12; the handler's task is `transports[client].handler`, the one mitmproxy's own idle
    timeout (`ConnectionHandler.on_timeout`) cancels, and `handler.layer` its layer stack.
    """

    def _handler(self, client_id: str) -> Any:
        server = ctx.master.addons.get("proxyserver")
        return getattr(server, "connections", {}).get(client_id)

    def shape(self, client_id: str) -> Shape | None:
        """None: not a live connection (any more)."""
        handler = self._handler(client_id)
        if handler is None:
            return None
        found = shape_of(getattr(handler, "layer", None))
        io = handler.transports.get(handler.client)
        transport = getattr(getattr(io, "writer", None), "transport", None)
        try:
            pending = int(transport.get_write_buffer_size()) if transport is not None else 0
        except Exception:  # a closing transport: nothing more goes out
            pending = 0
        return Shape(tunnel=found.tunnel, http=found.http, pending=pending)

    def close(self, client_id: str, farewell: bytes | None) -> bool:
        """Cancel the client's handler (mitmproxy then closes the socket); False: not live any more."""
        handler = self._handler(client_id)
        io = handler.transports.get(handler.client) if handler is not None else None
        if io is None or io.handler is None:
            return False
        if farewell and io.writer is not None:
            try:
                io.writer.write(farewell)  # flushed before the close mitmproxy does on cancellation
            except Exception:
                pass
        io.handler.cancel("backworks_header_timeout")
        return True


@dataclass(eq=False)
class Watch:
    """One client connection: its timer, and what keeps the timer off."""

    client: connection.Client
    opened: float
    in_flight: set[str] = field(default_factory=set)  # ids of flows between head and end
    exempt: bool = False  # a WebSocket, tunnel or passthrough: long-lived on purpose
    timer: Timer | None = None  # may fire before the deadline: it then sets itself again
    armed_at: float = 0.0  # when the count last started
    deadline: float = 0.0


class HeaderTimeout:
    """The `backworks_header_timeout` option: closes connections that never finish a request head."""

    def __init__(self, scheduler: Scheduler | None = None, connections: LiveConnections | None = None) -> None:
        self._scheduler = scheduler
        self.connections = connections or LiveConnections()
        self.timeout = parse_duration(DEFAULT)
        self.watches: dict[str, Watch] = {}
        self.closed = 0  # connections closed so far (for tests and the curious)

    def load(self, loader: Loader) -> None:
        loader.add_option(
            OPTION,
            str,
            DEFAULT,
            "Seconds a client connection has to deliver a complete request head, from its start "
            "and again from the end of each answer while no request is in flight (so an idle "
            "keep-alive connection is closed after it too), e.g. 30s, 1.5, 500ms; 0 turns it off. "
            "WebSockets, TCP/UDP tunnels and TLS passthrough are never timed.",
        )

    def configure(self, updated: set[str]) -> None:
        if OPTION not in updated:
            return
        self.timeout = parse_timeout(getattr(ctx.options, OPTION))
        for watch in self.watches.values():  # a live change applies to open connections too
            self._disarm(watch)
            self._arm(watch)

    # -- the state machine ------------------------------------------------------------------

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            self._scheduler = asyncio.get_running_loop()
        return self._scheduler

    def _arm(self, watch: Watch) -> None:
        """Start counting from now, if the connection is idle.

        A timer already pending is kept and only the deadline moves: when it fires early it sets
        itself again for the rest (as mitmproxy's own watchdog does). So a busy keep-alive
        connection costs no timer operation per request, only one wake-up per timeout period.
        """
        if self.timeout <= 0 or watch.exempt or watch.in_flight:
            return
        now = self.scheduler.time()
        watch.armed_at = now
        watch.deadline = now + self.timeout
        if watch.timer is None:
            watch.timer = self.scheduler.call_later(self.timeout, self._expire, watch)

    def _disarm(self, watch: Watch) -> None:
        if watch.timer is not None:
            watch.timer.cancel()
            watch.timer = None

    def _exempt(self, client: connection.Client) -> None:
        watch = self.watches.get(client.id)
        if watch is not None:
            watch.exempt = True
            self._disarm(watch)

    def _expire(self, watch: Watch) -> None:
        watch.timer = None
        if watch.exempt or watch.in_flight or self.timeout <= 0 or self.watches.get(watch.client.id) is not watch:
            return  # the end of the request in flight sets a new timer
        left = watch.deadline - self.scheduler.time()
        if left > 0:  # the count restarted since this timer was set
            watch.timer = self.scheduler.call_later(left, self._expire, watch)
            return
        shape = self.connections.shape(watch.client.id)
        if shape is None:
            return  # gone; client_disconnected drops the watch
        if shape.tunnel:
            watch.exempt = True  # a passthrough or tunnel no hook told of
            return
        if shape.pending > 0:
            self._arm(watch)  # still writing an answer out: not idle yet
            return
        waited = self.scheduler.time() - watch.armed_at
        farewell = REQUEST_TIMEOUT if shape.http and plaintext_http1(watch.client) else None
        if not self.connections.close(watch.client.id, farewell):
            return
        self.closed += 1
        logger.info(
            "backworks: closed the connection from %s: no complete request head within %.3gs "
            "(waited %.1fs, connection open %.1fs; %s)",
            human.format_address(watch.client.peername),
            self.timeout,
            waited,
            self.scheduler.time() - watch.opened,
            OPTION,
        )

    # -- mitmproxy hooks (each one O(1)) ----------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        if client.transport_protocol != "tcp":
            return  # UDP (DNS, QUIC) has no request head to wait for
        watch = Watch(client, opened=self.scheduler.time())
        self.watches[client.id] = watch
        self._arm(watch)

    def client_disconnected(self, client: connection.Client) -> None:
        watch = self.watches.pop(client.id, None)
        if watch is not None:
            self._disarm(watch)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        watch = self.watches.get(flow.client_conn.id)
        if watch is not None:
            watch.in_flight.add(flow.id)  # a timer that fires meanwhile finds it and does nothing

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is not None:  # a 101: the WebSocket follows on this connection
            self._exempt(flow.client_conn)
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        watch = self.watches.get(flow.client_conn.id)
        if watch is not None and flow.id in watch.in_flight:
            watch.in_flight.discard(flow.id)
            if not watch.in_flight:
                self._arm(watch)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """A CONNECT head is complete: the tunnel gets a fresh timeout for its first request."""
        watch = self.watches.get(flow.client_conn.id)
        if watch is not None:
            self._arm(watch)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        self._exempt(flow.client_conn)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._exempt(flow.client_conn)

    def udp_start(self, flow: udp.UDPFlow) -> None:
        self._exempt(flow.client_conn)

    def done(self) -> None:
        for watch in self.watches.values():
            self._disarm(watch)
        self.watches.clear()


def plaintext_http1(client: connection.Client) -> bool:
    """Whether raw bytes on the socket reach the client as HTTP/1 (no TLS, no HTTP/2)."""
    return client.transport_protocol == "tcp" and not client.tls and client.alpn in (None, b"", b"http/1.1")
