"""Who the client is, and which of its header fields the gateway believes.

The gateway is the trust boundary: what an upstream reads as identity (the `forward_claims`
headers) or as the client's address (X-Forwarded-For, Forwarded, X-Real-IP, ...) must be what the
gateway wrote, never what a client sent. One rule, applied once per request where the gateway
starts handling a matched request (`TrustBoundary.admit`), and read by everything that needs a
client address (the proxy's forwarding headers, rate limiting by `ip`, ip_hash balancing):

- Identity headers (the protected names) are removed from every client request, whatever their
  case and whether written with `_` or `-` (a WSGI or CGI server folds `X_User` and `X-User` into
  the same HTTP_X_USER), and with surrounding whitespace (mitmproxy keeps `X-User :` as a name).
- The client's `Connection` tokens name the client's own fields (RFC 9110 §7.6.1): those fields
  are removed here, once, and the Connection header keeps only `close`, `keep-alive` and
  `upgrade`; the proxy then never applies Connection tokens to fields the gateway added.
  Framing and routing fields (Host, Content-Length, Transfer-Encoding, Upgrade) are never removed
  by a token: the request must still be read and routed as it was.
- Forwarding headers are believed only from a trusted peer (`server.trusted_proxies`, none by
  default), as nginx's realip module with `real_ip_recursive on` does: from any other peer they
  are removed and the client address is the peer; from a trusted peer the client address is the
  right-most X-Forwarded-For address that is not trusted. Their `_` twins are never believed.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Union

from mitmproxy import http

from backworks_core.flowstate import flow_state, peek_state

logger = logging.getLogger(__name__)

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# Forwarding headers: believed from trusted peers only. Besides these, every `x-forwarded-*`.
FORWARDING_HEADERS = frozenset(
    {
        b"forwarded",
        b"x-real-ip",
        b"x-client-ip",
        b"client-ip",
        b"true-client-ip",
        b"x-cluster-client-ip",
        b"x-original-forwarded-for",
        b"cf-connecting-ip",
        b"fastly-client-ip",
    }
)
FORWARDING_PREFIX = b"x-forwarded-"
# Never removed by a Connection token nor protected: the request is framed and routed by them.
FRAMING_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding", b"upgrade", b"connection"})
# The Connection tokens kept: connection management and the WebSocket upgrade.
KEPT_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade"})
# X-Forwarded-For addresses examined from the right at most (a trusted proxy chain is short).
MAX_FORWARDED_HOPS = 32



def normal_name(name: str | bytes) -> bytes:
    """A field name as a WSGI/CGI server reads it: trimmed, lower case, `_` as `-`."""
    raw = name.encode("latin-1") if isinstance(name, str) else name
    return raw.strip().lower().replace(b"_", b"-")


@functools.lru_cache(maxsize=4096)
def normal_address(host: str) -> str:
    """One spelling per client address (IPv4-mapped IPv6 as IPv4); parsed once per address."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host or "unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


@functools.lru_cache(maxsize=4096)
def parse_forwarded_address(element: str) -> str | None:
    """One X-Forwarded-For element as an address (`1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `::1`);
    None for anything else (`unknown`, an obfuscated name, garbage)."""
    text = element.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1 :] and not (text[end + 1] == ":" and text[end + 2 :].isdigit())):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has two or more
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def parse_network(entry: str) -> IPNetwork:
    """A `trusted_proxies` entry: an address or a CIDR network; ValueError says what is wrong."""
    text = entry.strip() if isinstance(entry, str) else entry
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected an IP address or a CIDR network such as 10.0.0.0/8, got {entry!r}")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address or a CIDR network (such as 10.0.0.0/8 or 2001:db8::/32)") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:10.0.0.1 is 10.0.0.1: addresses are compared as IPv4
            return ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
    return network


class TrustedProxies:
    """`server.trusted_proxies`, compiled: which peers' forwarding headers are believed."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(parse_network(entry) for entry in entries)
        self._known: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        """Whether `address` (normalised: `normal_address` or `parse_forwarded_address`) is trusted."""
        if not self.networks:
            return False
        known = self._known.get(address)
        if known is None:
            try:
                parsed = ipaddress.ip_address(address)
            except ValueError:
                known = False
            else:
                known = any(parsed in network for network in self.networks)
            if len(self._known) < 4096:
                self._known[address] = known
        return known


def client_address(peer: str, forwarded_for: Sequence[str], trusted: TrustedProxies) -> str:
    """The client's address: the peer, unless the peer is trusted; then the right-most
    X-Forwarded-For address that is not trusted, walking right to left (nginx's realip with
    `real_ip_recursive on`). The walk stops at an element that is not an address, or after
    MAX_FORWARDED_HOPS, at the last address it could believe; all of them trusted: the left-most.

    `peer` is normalised (`normal_address`); `forwarded_for` are the X-Forwarded-For field
    values as received, in order.
    """
    if not trusted.trusts(peer):
        return peer
    candidate = peer
    hops = 0
    for value in reversed(forwarded_for):
        for element in reversed(value.split(",")):
            if not element.strip():
                continue  # `a,,b`: an empty list element (RFC 9110 §5.6.1)
            address = parse_forwarded_address(element)
            hops += 1
            if address is None or hops > MAX_FORWARDED_HOPS:
                return candidate
            candidate = address
            if not trusted.trusts(address):
                return address
    return candidate


class Client(NamedTuple):
    """Who sent a request, as the gateway decided it."""

    address: str  # the client's address (the peer's, unless a trusted proxy said otherwise)
    peer: str  # the address of the connection's other end
    trusted_peer: bool  # the peer is one of server.trusted_proxies: its forwarding headers were kept


def client_of(flow: http.HTTPFlow) -> Client:
    """The request's client as `TrustBoundary.admit` decided it; before that (or for a flow it
    never saw): the peer, trusted by no one."""
    state = peek_state(flow)
    if state is not None and state.client is not None:
        return state.client
    peer = normal_address(str(flow.client_conn.peername[0]) if flow.client_conn.peername else "")
    return Client(peer, peer, False)


def client_ip(flow: http.HTTPFlow) -> str:
    """The client address rate limiting, balancing and logs use."""
    return client_of(flow).address


# What `TrustBoundary` does with a field, by its raw name.
_KEEP, _DROP, _UNTRUSTED, _CONNECTION = 0, 1, 2, 3


class TrustBoundary:
    """The request fields a client may not set, compiled once per blueprint; see the module doc."""

    def __init__(self, protected: Iterable[str] = (), trusted_proxies: Iterable[str] = ()) -> None:
        self.protected = frozenset(normal_name(name) for name in protected) - FRAMING_HEADERS
        self.trusted = TrustedProxies(trusted_proxies)
        self._kinds: dict[bytes, tuple[int, bytes]] = {}
        self._untrusted: dict[str, Client] = {}

    def _kind(self, name: bytes) -> tuple[int, bytes]:
        """What to do with a field of this raw name, and its normal form (cached per name)."""
        kind = self._kinds.get(name)
        if kind is not None:
            return kind
        normal = normal_name(name)
        if normal in self.protected:
            verdict = _DROP
        elif normal in FORWARDING_HEADERS or normal.startswith(FORWARDING_PREFIX):
            # Only the plain spelling is ever believed: a twin (`X_Forwarded_For`) is a client's.
            verdict = _UNTRUSTED if name.lower() == normal else _DROP
        elif normal == b"connection":
            verdict = _CONNECTION
        else:
            verdict = _KEEP
        kind = (verdict, normal)
        if len(self._kinds) < 4096:  # client-chosen names: a bounded cache
            self._kinds[name] = kind
        return kind

    def admit(self, flow: http.HTTPFlow) -> Client:
        """Remove what the client may not set from `flow.request`, decide its address (kept for
        `client_of`). One pass over the fields; the header list is rebuilt only when needed."""
        peername = flow.client_conn.peername
        peer = normal_address(str(peername[0]) if peername else "")
        trusted_peer = bool(self.trusted.networks) and self.trusted.trusts(peer)
        headers = flow.request.headers
        fields = headers.fields
        kinds = self._kinds
        for name, value in fields:
            kind = kinds.get(name) or self._kind(name)
            verdict = kind[0]
            if verdict == _KEEP or (verdict == _UNTRUSTED and trusted_peer):
                continue
            if verdict == _CONNECTION and not _connection_tokens(value):
                continue  # `keep-alive`, `close`, `upgrade`: names nothing to remove
            headers.fields = fields = self._screened(fields, trusted_peer)
            break
        if trusted_peer:
            chain = [v.decode("utf-8", "surrogateescape") for n, v in fields if n.lower() == b"x-forwarded-for"]
            client = Client(client_address(peer, chain, self.trusted), peer, True)
        else:
            client = self._untrusted.get(peer) or self._untrusted_client(peer)
        flow_state(flow).client = client
        return client

    def _untrusted_client(self, peer: str) -> Client:
        client = Client(peer, peer, False)
        if len(self._untrusted) < 4096:  # one immutable Client per address, not one per request
            self._untrusted[peer] = client
        return client

    def _screened(self, fields: tuple[tuple[bytes, bytes], ...], trusted_peer: bool) -> tuple[tuple[bytes, bytes], ...]:
        named: set[bytes] = set()
        for name, value in fields:
            if self._kind(name)[0] == _CONNECTION:
                named |= _connection_tokens(value)
        kept: list[tuple[bytes, bytes]] = []
        for name, value in fields:
            verdict, normal = self._kind(name)
            if verdict == _DROP or (verdict == _UNTRUSTED and not trusted_peer):
                continue
            if verdict == _CONNECTION:
                tokens = [t.strip() for t in value.split(b",") if t.strip().lower() in KEPT_CONNECTION_TOKENS]
                if tokens:
                    kept.append((name, b", ".join(tokens)))
                continue
            if normal in named and normal not in FRAMING_HEADERS:
                continue
            kept.append((name, value))
        return tuple(kept)


_CONNECTION_VALUES: dict[bytes, frozenset[bytes]] = {}


def _connection_tokens(value: bytes) -> frozenset[bytes]:
    """The field names a Connection value nominates for removal (normal form), besides the kept
    tokens; cached per value (`keep-alive` on nearly every browser request), bounded."""
    tokens = _CONNECTION_VALUES.get(value)
    if tokens is None:
        tokens = frozenset(normal_name(token) for token in value.split(b",") if token.strip()) - KEPT_CONNECTION_TOKENS
        if len(_CONNECTION_VALUES) < 1024:
            _CONNECTION_VALUES[value] = tokens
    return tokens


def forwarded_for(request: http.Request, client: Client) -> str:
    """The X-Forwarded-For sent upstream: what a trusted peer sent with the peer appended, or the peer."""
    if client.trusted_peer:
        prior = b", ".join(v for n, v in request.headers.fields if n.lower() == b"x-forwarded-for").decode("utf-8", "surrogateescape")
        if prior.strip():
            return f"{prior}, {client.peer}"
    return client.peer
