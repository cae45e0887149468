"""Regular mode: tunnels to the hosts the blueprint serves open without reaching those hosts.

A browser, a phone or an app under test that uses Backworks as its proxy sends `CONNECT
host:443`. mitmproxy (11 and 12, `connection_strategy: eager`, the default) connects to the host
before it answers, and answers 502 when it cannot, so an HTTPS recording served offline would
answer nobody; and its TLS layers then complete the upstream handshake before the client's.
`connection_strategy=lazy` avoids both, but for every host and every mode.

For a tunnel whose host the blueprint serves (backworks_core.tunnels decides) this addon does
the two things lazy would do, for that tunnel only, through the supported hooks:

- `http_connect`: answers the CONNECT itself (200, as mitmproxy would): mitmproxy opens no
  connection when the hook has set a response (`handle_connect_regular`);
- `next_layer`: for a TLS ClientHello in that tunnel, a client TLS layer alone, with
  mitmproxy's certificate for the host and ALPN (h2 or http/1.1) agreed with the client alone.
  mitmproxy's own choice stacks a server TLS layer under it, which (eager) connects to the host
  during the client's handshake (tlsconfig's `tls_clienthello` asks for it whenever the server
  side is TLS, and runs after scripts);
- `tls_start_client`: once that is decided, the server side is marked TLS again, so that the
  tunnel's requests are `https` (mitmproxy derives the scheme from it) and one passed on
  connects with TLS.

A request inside that the blueprint does not answer still reaches the host: mitmproxy opens that
connection (with its own TLS) when the request needs it, as in lazy mode. Tunnels mitmproxy
would not intercept (`ignore_hosts`, `allow_hosts`, `tcp_hosts`, by CONNECT host or by TLS SNI)
and other hosts are left exactly as they were.

Placed before TargetGuard (addons/exposure.py): its `next_layer` hands undecided layers to
mitmproxy's decider, so ours must decide first. A tunnel answered here is always one mitmproxy
intercepts, so its requests still meet TargetGuard's checks.
"""

from __future__ import annotations

import logging
import time
import weakref

from mitmproxy import ctx, http, tls
from mitmproxy.connection import Client
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import layer, layers
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.proxy.mode_specs import RegularMode

from backworks_core.exposure import tunnel_not_intercepted
from backworks_core.gateway import Gateway
from backworks_core.loader import LoadedBlueprint
from backworks_core.pages import InternalEndpoint
from backworks_core.tunnels import TunnelScope

logger = logging.getLogger(__name__)


def regular(client: Client) -> bool:
    return isinstance(client.proxy_mode, RegularMode)


def intercepted(host: str, port: int) -> bool:
    """mitmproxy would inspect a tunnel to host:port (not relay it as raw bytes)."""
    options = ctx.options
    return tunnel_not_intercepted(host, port, ignore_hosts=options.ignore_hosts, allow_hosts=options.allow_hosts, tcp_hosts=options.tcp_hosts) is None


class OfflineTunnels:
    """mitmproxy addon and core extension: CONNECT to a host the blueprint serves opens no upstream connection."""

    def __init__(self) -> None:
        self.scope = TunnelScope()
        self._announced = ""
        # Clients whose tunnel got a client TLS layer alone, until their handshake starts.
        self._tls_alone: weakref.WeakSet[Client] = weakref.WeakSet()

    # -- core extension ---------------------------------------------------------------------

    def internal_endpoints(self, blueprint: LoadedBlueprint) -> list[InternalEndpoint]:
        return []

    def apply_gateway(self, gateway: Gateway) -> None:
        """The live blueprint's scope; one line in regular mode when it changes."""
        hosts = [e.spec.settings.host for e in gateway.endpoints if not e.internal]
        self.scope = TunnelScope.build(hosts, gateway.unmatched_policy(False))
        modes = getattr(ctx.options, "mode", None) or ["regular"]
        if self.scope and any(str(m).startswith("regular") for m in modes):
            line = (
                f"backworks: regular proxy mode: tunnels (CONNECT) to {self.scope.describe()} open without connecting "
                "to the host; it is reached only when a request in the tunnel passes on"
            )
            if line != self._announced:
                self._announced = line
                logger.info("%s", line)

    # -- hooks ------------------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """Answer the CONNECT as mitmproxy would (no headers), before mitmproxy connects."""
        if flow.response or not self.scope or not regular(flow.client_conn):
            return
        host, port = flow.request.host, flow.request.port
        if not self.scope.serves(host) or not intercepted(host, port):
            return
        now = time.time()
        flow.response = http.Response(flow.request.data.http_version, 200, b"Connection established", http.Headers(), b"", None, now, now)
        logger.debug("backworks: tunnel to %s:%s opened without an upstream connection (the blueprint serves it)", host, port)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """TLS in such a tunnel: a client TLS layer alone (no server TLS layer to connect eagerly)."""
        if nextlayer.layer is not None or not self.scope:
            return
        context = nextlayer.context
        server = context.server
        # The tunnel's first bytes: regular mode, not yet TLS inside, the CONNECT's host not contacted.
        if not regular(context.client) or context.client.tls or server.address is None or server.connected or server.tls:
            return
        host, port = server.address[0], server.address[1]
        if not self.scope.serves(host) or not intercepted(host, port):
            return
        data = nextlayer.data_client()
        if not starts_like_tls_record(data):
            return  # plain HTTP in the tunnel: mitmproxy's HTTP layer connects only when a request needs it
        options = ctx.options
        if options.ignore_hosts or options.allow_hosts:  # mitmproxy also matches them on the SNI
            try:
                hello = parse_client_hello(data)
            except ValueError:
                return  # not a ClientHello mitmproxy can read: its own decision
            if hello is None:
                return  # the rest of the ClientHello is still to come (mitmproxy's decider waits too)
            if hello.sni and not intercepted(hello.sni, port):
                return
        nextlayer.layer = layers.ClientTLSLayer(context)
        self._tls_alone.add(context.client)

    def tls_start_client(self, data: tls.TlsData) -> None:
        """Past tlsconfig's `tls_clienthello`: the server side is TLS again (https requests, TLS when passed on)."""
        client = data.context.client
        if data.conn is client and client in self._tls_alone:
            self._tls_alone.discard(client)
            data.context.server.tls = True
