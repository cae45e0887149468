"""Which destinations are the blueprint's pool targets, so that nothing passes through to one.

In every mode but reverse, a request no endpoint matches passes through to wherever the client
addressed it (a debugging proxy). Addressed to a pool target, that would reach the target with no
middleware run. This module decides, without mitmproxy, whether a destination (host, port) is a
target, robust to the spellings of the same socket an attacker would try: host case and trailing
dot, IPv4 literals in every form the resolver accepts (`127.1`, `2130706433`, `0x7f000001`,
`0177.0.0.1`), IPv4-mapped IPv6, default ports, any loopback or unspecified address (or another
address of this host) for a target on this host, and DNS names that resolve to a target's address.

The core addon (addons/core.py) builds a `TargetIndex` from the live pools when a blueprint goes
live and applies the decision in its hooks; only flows that would pass through pay for it, and a
DNS lookup only for a name on a target's port.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Final
from urllib.parse import urlsplit

IPAddress = IPv4Address | IPv6Address

DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}
LOOPBACK_NAMES: Final = (IPv4Address("127.0.0.1"), IPv6Address("::1"))


class Resolve:
    """`TargetIndex.static`'s answer for a DNS name: only its addresses can tell."""

    def __repr__(self) -> str:
        return "RESOLVE"


RESOLVE: Final = Resolve()


@dataclass(frozen=True)
class TargetAddress:
    """One pool target as a socket: where it is, never its credentials."""

    pool: str
    name: str
    host: str  # normalized (normalize_host)
    port: int
    addresses: frozenset[IPAddress]

    @property
    def label(self) -> str:
        """As answers name a target (addons.proxy `Pool.public_name`): never its address."""
        return f"target {self.name}" if self.pool == "default" else f"target {self.name} of pool {self.pool}"


def normalize_host(host: str) -> str:
    """The comparable form of a host: lower case, no brackets, no IPv6 zone, no trailing dots."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        host = host.split("%", 1)[0]  # fe80::1%eth0: the zone names an interface, not another host
    return host.rstrip(".")


def canonical_address(address: IPAddress) -> IPAddress:
    """IPv4 behind IPv6 (`::ffff:127.0.0.1`, `::127.0.0.1`) as IPv4; no zone."""
    if isinstance(address, IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
        value = int(address)
        if 1 < value < 2**32:  # IPv4-compatible (deprecated, still routed by some stacks)
            return IPv4Address(value)
        return IPv6Address(value)  # drops a scope id
    return address


_INET_ATON_CHARS = re.compile(r"^[0-9a-fx.]+$")


def literal_address(host: str) -> IPAddress | None:
    """An IP literal in any form the system resolver accepts; None for a DNS name.

    Beside the standard forms, inet_aton's: fewer than four parts (`127.1`), one number
    (`2130706433`), hex (`0x7f000001`) and octal (`0177.0.0.1`) parts.
    """
    host = normalize_host(host)
    try:
        return canonical_address(ip_address(host))
    except ValueError:
        pass
    if not host or not _INET_ATON_CHARS.match(host):
        return None
    try:
        return IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def is_loopback_or_unspecified(address: IPAddress) -> bool:
    return address.is_loopback or address.is_unspecified


@lru_cache(maxsize=1024)
def address_is_local(address: IPAddress) -> bool:
    """An address of this host: a socket can be bound to it (a target on 0.0.0.0 answers there)."""
    if is_loopback_or_unspecified(address):
        return True
    family = socket.AF_INET if isinstance(address, IPv4Address) else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


class TargetIndex:
    """The pool targets of one blueprint version, compiled for the pass-through check.

    A target on this host (loopback, unspecified, or one of this host's addresses) is matched by
    any local address on its port: a server bound on 0.0.0.0 answers on all of them, and one
    bound on 127.0.0.1 also answers on the rest of 127/8 on some systems.
    """

    def __init__(self, targets: Iterable[TargetAddress], is_local: Callable[[IPAddress], bool] = address_is_local) -> None:
        self.targets = tuple(targets)
        self._is_local = is_local
        self.ports = frozenset(t.port for t in self.targets)
        self._by_name = {(t.host, t.port): t for t in self.targets}
        self._by_address = {(a, t.port): t for t in self.targets for a in t.addresses}
        self._local_ports: dict[int, TargetAddress] = {}
        for target in self.targets:
            if any(is_local(a) for a in target.addresses) or target.host == "localhost" or target.host.endswith(".localhost"):
                self._local_ports.setdefault(target.port, target)

    def __bool__(self) -> bool:
        return bool(self.targets)

    def __len__(self) -> int:
        return len(self.targets)

    def static(self, host: str, port: int) -> TargetAddress | Resolve | None:
        """Decided without DNS where possible: the target, None (not one), or RESOLVE (a name to look up)."""
        if port not in self.ports:
            return None
        host = normalize_host(host)
        target = self._by_name.get((host, port))
        if target is not None:
            return target
        address = literal_address(host)
        if address is not None:
            return self.by_addresses((address,), port)
        if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
            return self.by_addresses(LOOPBACK_NAMES, port)
        if not host:
            return None
        return RESOLVE

    def by_addresses(self, addresses: Iterable[IPAddress], port: int) -> TargetAddress | None:
        """The target any of these addresses on `port` reaches, if any."""
        if port not in self.ports:
            return None
        local = self._local_ports.get(port)
        for address in addresses:
            address = canonical_address(address)
            target = self._by_address.get((address, port))
            if target is not None:
                return target
            if local is not None and (is_loopback_or_unspecified(address) or self._is_local(address)):
                return local
        return None

    @classmethod
    def build(
        cls,
        targets: Iterable[tuple[str, str, str]],
        lookup: Callable[[str], Sequence[IPAddress]] | None = None,
        is_local: Callable[[IPAddress], bool] = address_is_local,
    ) -> tuple[TargetIndex, list[str]]:
        """From (pool, target name, url) triples; names resolved now with `lookup` (blocking).

        Returns the index and warnings (a name that does not resolve is matched by name only).
        """
        lookup = lookup or lookup_blocking
        compiled: list[TargetAddress] = []
        warnings: list[str] = []
        for pool, name, url in targets:
            parts = urlsplit(url)
            host = normalize_host(parts.hostname or "")
            try:
                port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
            except ValueError:
                port = None
            if not host or port is None:
                warnings.append(f"upstream target {name!r} of pool {pool!r}: no host and port in its url")
                continue
            address = literal_address(host)
            addresses: frozenset[IPAddress]
            if address is not None:
                addresses = frozenset({address})
            elif host == "localhost" or host.endswith(".localhost"):
                addresses = frozenset(LOOPBACK_NAMES)
            else:
                try:
                    addresses = frozenset(canonical_address(a) for a in lookup(host))
                except OSError as exc:
                    addresses = frozenset()
                    warnings.append(f"upstream target {name!r} of pool {pool!r}: {host} does not resolve now ({exc.strerror or exc}); other names for its address are not recognised")
            compiled.append(TargetAddress(pool, name, host, port, addresses))
        return cls(compiled, is_local), warnings


def lookup_blocking(host: str) -> list[IPAddress]:
    """The addresses the system resolver gives for a name (what mitmproxy would connect to)."""
    return _addresses(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM))


def _addresses(infos: Iterable[tuple[Any, ...]]) -> list[IPAddress]:
    found: list[IPAddress] = []
    for info in infos:
        address = canonical_address(ip_address(str(info[4][0]).split("%", 1)[0]))
        if address not in found:
            found.append(address)
    return found


class Resolver:
    """Asynchronous, briefly cached name lookups, bounded in entries and time.

    Raises socket.gaierror for a name that does not resolve (cached too), and TimeoutError
    past `timeout`: the caller must then refuse (fail closed).
    """

    def __init__(self, ttl: float = 5.0, max_entries: int = 1024, timeout: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.timeout = timeout
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, list[IPAddress] | socket.gaierror]] = OrderedDict()

    async def lookup(self, host: str) -> list[IPAddress]:
        now = self.clock()
        cached = self._cache.get(host)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(host)
            result = cached[1]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), self.timeout)
                result = _addresses(infos)
            except socket.gaierror as exc:
                result = exc
            self._cache[host] = (now + self.ttl, result)
            self._cache.move_to_end(host)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        if isinstance(result, socket.gaierror):
            raise result
        return result


async def target_for(index: TargetIndex, resolver: Resolver, host: str, port: int) -> TargetAddress | None:
    """The pool target a destination reaches, looking the name up when it must.

    A name that does not resolve is no target (mitmproxy cannot connect to it either; its
    connection is checked again in `server_connect`). A lookup that times out raises.
    """
    found = index.static(host, port)
    if not isinstance(found, Resolve):
        return found
    try:
        addresses = await resolver.lookup(normalize_host(host))
    except socket.gaierror:
        return None
    return index.by_addresses(addresses, port)


def tunnel_not_intercepted(
    host: str,
    port: int,
    *,
    ignore_hosts: Sequence[str],
    allow_hosts: Sequence[str],
    tcp_hosts: Sequence[str],
) -> str | None:
    """Why mitmproxy would relay a CONNECT to host:port as raw bytes, or None if it intercepts it.

    mitmproxy's next_layer addon (11 and 12) matches `ignore_hosts`/`allow_hosts` with
    re.search, case-insensitive, on "host:port"; `tcp_hosts` on the host alone. It also
    checks the TLS SNI and the Host header seen inside the tunnel, which only the tunnel's
    first bytes show: the core addon's `next_layer` hook refuses those.
    """
    address = f"{host}:{port}"
    if allow_hosts and not any(re.search(rex, address, re.IGNORECASE) for rex in allow_hosts):
        return "it is not in allow_hosts"
    if any(re.search(rex, address, re.IGNORECASE) for rex in ignore_hosts):
        return "it matches ignore_hosts"
    if any(re.search(rex, host, re.IGNORECASE) for rex in tcp_hosts):
        return "it matches tcp_hosts"
    return None
