"""Regular mode keeps its promise: a pool target is reached only through the blueprint's endpoints.

Outside reverse mode a request no endpoint matches passes through to where the client addressed
it (a debugging proxy). This addon refuses that when the destination is a pool target, however
it is spelled (backworks_core.exposure decides): 403 for a request (absolute-form, by its Host
header, or inside an intercepted CONNECT tunnel), 403 for a CONNECT to a target that mitmproxy
would not intercept, a closed connection for raw bytes to a target (an ignored or non-HTTP
tunnel), and a refused upstream connection to a name that resolves to a target by the time
mitmproxy connects (DNS rebinding; other names are pinned to the address checked).

An extension of the core addon (`apply_gateway`: the index follows the live pools), placed
after it so that its `request` hook sees what the core decided. Reverse mode is left alone:
there mitmproxy connects only to the upstream given on the command line.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Coroutine
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any

from aiohttp import web
from mitmproxy import ctx, http, tcp, udp
from mitmproxy.connection import Client, Server
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.mode_specs import ReverseMode
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from backworks_core.context import json_error, request_id_for
from backworks_core.exposure import RESOLVE, IPAddress, Resolver, TargetAddress, TargetIndex, normalize_host, target_for, tunnel_not_intercepted
from backworks_core.flowstate import flow_state, peek_state
from backworks_core.gateway import Gateway
from backworks_core.loader import LoadedBlueprint
from backworks_core.pages import InternalEndpoint
from backworks_core.relay import RELAY_CHUNK, RelayAnswer, point_at_relay, relay_answer
from backworks_core.telemetry import PASSTHROUGH, UNMATCHED, RequestRecord, method_label, record_for

if TYPE_CHECKING:
    from addons.core import Backworks

logger = logging.getLogger(__name__)

REFUSED = "exposure.refused"  # flowstate of a TCP/UDP flow to a target: its messages are dropped

# Layers whose traffic reaches the blueprint (HTTP) or another next-layer decision (TLS, QUIC).
# Anything else towards a target (raw TCP/UDP, ignored hosts, DNS) is closed.
INSPECTED_LAYERS = (layers.HttpLayer, layers.ServerTLSLayer, layers.ClientTLSLayer, layers.ServerQuicLayer, layers.ClientQuicLayer)


def exposure_line(index: TargetIndex, unmatched: str) -> str:
    """The one startup line of regular mode: what it exposes, and how to lock it down."""
    others = (
        "requests to other hosts pass through unchanged (server.unmatched: passthrough, for debugging)"
        if unmatched == "passthrough"
        else "requests no endpoint matches get 404 (server.unmatched: not_found)"
    )
    return (
        "backworks: regular proxy mode: the blueprint's endpoints answer direct clients and clients using this "
        f"proxy; {others}; the {len(index)} pool target(s) are reachable only through the endpoints "
        "(403 otherwise). For a locked-down gateway run `backworks run FILE` (reverse mode) or set "
        "server.unmatched: not_found."
    )


def not_regular(client: Client) -> bool:
    return isinstance(client.proxy_mode, ReverseMode)


class Refused(layer.Layer):
    """Closes a connection that would relay raw bytes to a pool target."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)
            yield commands.CloseConnection(self.context.client)
        else:
            yield from ()


class TargetGuard:
    """mitmproxy addon and core extension: no pass-through, tunnel or raw relay to a pool target."""

    def __init__(self, core: Backworks) -> None:
        self.core = core
        self.index = TargetIndex(())
        self.resolver = Resolver()
        self._announced = False

    # -- core extension ---------------------------------------------------------------------

    def internal_endpoints(self, blueprint: LoadedBlueprint) -> list[InternalEndpoint]:
        return []

    def apply_gateway(self, gateway: Gateway) -> None:
        """The live pools' targets, compiled (names resolved now); one startup line in regular mode."""
        triples = [(pool.name, target.name, target.origin) for pool in self.core.live_pools() for target in pool.targets]
        self.index, warnings = TargetIndex.build(triples)
        for warning in warnings:
            logger.warning("backworks: %s", warning)
        modes = getattr(ctx.options, "mode", None) or ["regular"]
        if not self._announced and any(not str(m).startswith("reverse:") for m in modes):
            self._announced = True
            unmatched = gateway.unmatched_policy(False)
            line = exposure_line(self.index, unmatched)
            # A warning, never an error: mitmproxy exits on an error logged while it starts.
            logger.log(logging.WARNING if unmatched == "passthrough" else logging.INFO, "%s", line)

    # -- HTTP requests ----------------------------------------------------------------------

    # The HTTP hooks are plain functions that return a coroutine only when there is something to
    # check (mitmproxy awaits what a hook returns): a flow Backworks answered costs no coroutine.

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """A request mitmproxy streams goes upstream before the `request` hook: check it now."""
        if not flow.request.stream or not self._passes_through(flow):
            return None
        return self._refuse_streamed(flow)

    async def _refuse_streamed(self, flow: http.HTTPFlow) -> None:
        response = await self._refusal(flow)
        if response is None:
            return
        relay = self.core.relay  # the body is read into the relay and dropped; never held, never sent on

        async def job(web_request: web.BaseRequest) -> RelayAnswer:
            async for _ in web_request.content.iter_chunked(RELAY_CHUNK):
                pass
            return relay_answer(flow, response)

        await relay.start()
        point_at_relay(flow, relay, job)

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        return self._refuse_passed(flow) if self._passes_through(flow) else None

    async def _refuse_passed(self, flow: http.HTTPFlow) -> None:
        response = await self._refusal(flow)
        if response is not None:
            flow.response = response

    def _passes_through(self, flow: http.HTTPFlow) -> bool:
        """A live flow nobody answered that mitmproxy would send on to its own destination."""
        if flow.response or flow.error or not flow.live or not self.index or not_regular(flow.client_conn):
            return False
        if (state := peek_state(flow)) is not None and state.relayed is not None:
            return False
        record = record_for(flow)
        return record is None or record.endpoint == PASSTHROUGH  # no record: no blueprint decided (fail closed)

    async def _refusal(self, flow: http.HTTPFlow) -> http.Response | None:
        request = flow.request
        try:
            target = await target_for(self.index, self.resolver, request.host, request.port)
        except Exception:  # a lookup that timed out, or a bug: deny
            logger.exception("backworks: could not tell whether %s:%s is a pool target; refused", request.host, request.port)
            return self._refuse(flow, f"could not tell whether {request.host}:{request.port} is one of the blueprint's upstream targets; refused")
        if target is None:
            return None
        path = request.path.split("?", 1)[0]
        return self._refuse(
            flow,
            f"{_hostport(request.host, request.port)} is {target.label}, an upstream of this blueprint: only the "
            f"blueprint's endpoints reach it, and none matches {request.method} {path}",
        )

    @staticmethod
    def _refuse(flow: http.HTTPFlow, message: str) -> http.Response:
        request_id = request_id_for(flow)
        flow_state(flow).record = RequestRecord(request_id=request_id, method=method_label(flow.request.method), endpoint=UNMATCHED, error=message)
        flow.comment = f"{flow.comment}\nbackworks: pool target → 403" if flow.comment else "backworks: pool target → 403"
        return json_error(403, message, request_id)

    # -- tunnels and raw connections --------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """A tunnel to a target only when mitmproxy intercepts it (its requests then meet the blueprint)."""
        if flow.response or not self.index or not_regular(flow.client_conn):
            return
        host, port = flow.request.host, flow.request.port
        try:
            target = await target_for(self.index, self.resolver, host, port)
        except Exception:
            logger.exception("backworks: could not tell whether %s:%s is a pool target; CONNECT refused", host, port)
            flow.response = self._refuse(flow, f"could not tell whether {host}:{port} is one of the blueprint's upstream targets; refused")
            return
        if target is None:
            return
        options = ctx.options
        why = tunnel_not_intercepted(host, port, ignore_hosts=options.ignore_hosts, allow_hosts=options.allow_hosts, tcp_hosts=options.tcp_hosts)
        if why is not None:
            flow.response = self._refuse(
                flow,
                f"{_hostport(host, port)} is {target.label}, an upstream of this blueprint: only the blueprint's "
                f"endpoints reach it, and mitmproxy would not inspect a tunnel to it ({why})",
            )

    async def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """mitmproxy's own choice, made here, and closed when it relays raw bytes to a target.

        This addon runs before mitmproxy's NextLayer addon (scripts come first), so it asks that
        addon for its decision; an ignored host (by SNI or a Host header seen inside the tunnel
        too), `tcp_hosts`, or bytes that are not HTTP all end in a raw relay.
        """
        context = nextlayer.context
        if nextlayer.layer is not None or not self.index or context.server.address is None or not_regular(context.client):
            return
        decider = ctx.master.addons.get("nextlayer")
        if decider is None:
            return
        decider.next_layer(nextlayer)
        if nextlayer.layer is None or isinstance(nextlayer.layer, INSPECTED_LAYERS):
            return  # undecided yet (more bytes needed), or traffic the blueprint sees
        target = await self._connection_target(context.server)
        if target is not None:
            logger.warning("backworks: closed a connection from %s relaying raw bytes to %s (an upstream of this blueprint)", _peer(context.client), target.label)
            nextlayer.layer = Refused(context)

    async def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """Backstop for TCP flows started by other means: no bytes reach a target."""
        await self._raw_start(flow)

    def tcp_message(self, flow: tcp.TCPFlow) -> None:
        if (state := peek_state(flow)) is not None and state.slot(REFUSED) and flow.messages:
            flow.messages[-1].content = b""

    async def udp_start(self, flow: udp.UDPFlow) -> None:
        await self._raw_start(flow)

    def udp_message(self, flow: udp.UDPFlow) -> None:
        if (state := peek_state(flow)) is not None and state.slot(REFUSED) and flow.messages:
            flow.messages[-1].content = b""

    async def _raw_start(self, flow: tcp.TCPFlow | udp.UDPFlow) -> None:
        if not self.index or not_regular(flow.client_conn) or flow.server_conn.address is None:
            return
        target = await self._connection_target(flow.server_conn)
        if target is not None:
            flow_state(flow).set_slot(REFUSED, True)
            flow.server_conn.error = f"{target.label} is an upstream of this blueprint; raw connections to it are refused"
            logger.warning("backworks: refused a raw %s flow from %s to %s (an upstream of this blueprint)", flow.type, _peer(flow.client_conn), target.label)

    async def _connection_target(self, server: Server) -> TargetAddress | None:
        """The target a server connection reaches: by the address it connected to, else by name."""
        assert server.address is not None
        if server.peername:
            found = self.index.by_addresses(_peer_address(server.peername), server.peername[1])
            if found is not None:
                return found
        try:
            return await target_for(self.index, self.resolver, server.address[0], server.address[1])
        except Exception:  # fail closed
            logger.exception("backworks: could not tell whether %s is a pool target", server.address)
            return TargetAddress("default", "(unchecked: lookup failed)", normalize_host(server.address[0]), server.address[1], frozenset())

    async def server_connect(self, data: ServerConnectionHookData) -> None:
        """The address mitmproxy connects to is the one checked: no DNS rebinding onto a target.

        A name that is neither a literal nor a target's own name is looked up here; reaching a
        target, the connection is refused, otherwise it is pinned to the address just checked
        (mitmproxy would look the name up again, and could get another answer).
        """
        server = data.server
        if not self.index or server.address is None or server.via is not None or not_regular(data.client) or server.error:
            return
        host, port = server.address[0], server.address[1]
        if self.index.static(host, port) is not RESOLVE:
            return  # a literal or a target's name: the request and tunnel checks saw the same
        try:
            addresses = await self.resolver.lookup(normalize_host(host))
        except socket.gaierror as exc:
            server.error = f"{host} does not resolve ({exc.strerror})"
            return
        except Exception:
            logger.exception("backworks: could not resolve %s; connection refused", host)
            server.error = f"could not resolve {host}"
            return
        target = self.index.by_addresses(addresses, port)
        if target is not None:
            server.error = f"{host} resolves to {target.label}, an upstream of this blueprint; only the blueprint's endpoints reach it"
            return
        server.address = (str(addresses[0]), port)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer(client: Client) -> str:
    return f"{client.peername[0]}:{client.peername[1]}" if client.peername else "?"


def _peer_address(peername: tuple[Any, ...]) -> list[IPAddress]:
    try:
        return [ip_address(str(peername[0]).split("%", 1)[0])]
    except ValueError:
        return []

