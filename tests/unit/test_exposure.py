"""backworks_core.exposure: is a destination one of the blueprint's pool targets?"""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from backworks_core.exposure import (
    RESOLVE,
    Resolver,
    TargetIndex,
    literal_address,
    normalize_host,
    target_for,
    tunnel_not_intercepted,
)

LAN = IPv4Address("192.0.2.10")  # "this host's" other address in these tests


def is_local(address) -> bool:  # type: ignore[no-untyped-def]
    return address.is_loopback or address.is_unspecified or address == LAN


def lookup(names: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str) -> list:  # type: ignore[type-arg]
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip_address(a) for a in names[host]]

    return resolve


@pytest.fixture
def index() -> TargetIndex:
    built, warnings = TargetIndex.build(
        [
            ("default", "api", "http://127.0.0.1:8001/base"),
            ("orders", "o1", "https://orders.internal"),
            ("remote", "r1", "http://user:secret@10.1.2.3:9000"),
            ("gone", "g1", "http://gone.internal:7000"),
        ],
        lookup=lookup({"orders.internal": ["10.9.9.9"]}),
        is_local=is_local,
    )
    assert warnings == ["upstream target 'g1' of pool 'gone': gone.internal does not resolve now (Name or service not known); other names for its address are not recognised"]
    return built


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1", "localhost", "LOCALHOST", "localhost.", "LocalHost..", "api.localhost", "127.1", "127.0.1",
        "2130706433", "0x7f000001", "0X7F000001", "0x7f.1", "0177.0.0.1", "0177.1", "127.000.000.001",
        "127.0.0.2", "127.255.255.254", "0.0.0.0", "0", "::1", "[::1]", "[::1%lo]", "::", "[::ffff:127.0.0.1]",
        "::ffff:7f00:1", "::127.0.0.1", "192.0.2.10",
    ],
)
def test_every_spelling_of_a_local_target(index: TargetIndex, host: str) -> None:
    found = index.static(host, 8001)
    assert found is not RESOLVE and found is not None and found.name == "api"


@pytest.mark.parametrize(("host", "port"), [("127.0.0.1", 8002), ("10.1.2.3", 8001), ("192.0.2.11", 8001), ("example.com", 8002), ("", 8001)])
def test_not_a_target(index: TargetIndex, host: str, port: int) -> None:
    assert index.static(host, port) is None


def test_remote_targets_match_their_own_address_only(index: TargetIndex) -> None:
    for host in ("10.1.2.3", "012.1.2.3", "0xa.1.2.3", "167838211", "::ffff:10.1.2.3"):
        assert index.static(host, 9000).name == "r1"  # type: ignore[union-attr]
    assert index.static("10.1.2.4", 9000) is None
    assert index.static("127.0.0.1", 9000) is None


def test_default_ports_and_names(index: TargetIndex) -> None:
    assert index.static("ORDERS.internal.", 443).name == "o1"  # type: ignore[union-attr]
    assert index.static("10.9.9.9", 443).name == "o1"  # type: ignore[union-attr]  # its address, resolved at load
    assert index.static("orders.internal", 80) is None
    assert index.static("gone.internal", 7000).name == "g1"  # type: ignore[union-attr]  # by name only
    assert index.static("example.com", 443) is RESOLVE  # a name on a target's port: look it up
    assert index.static("example.com", 8001) is RESOLVE


def test_labels_never_show_addresses_or_credentials(index: TargetIndex) -> None:
    assert index.static("127.0.0.1", 8001).label == "target api"  # type: ignore[union-attr]
    assert index.static("10.1.2.3", 9000).label == "target r1 of pool remote"  # type: ignore[union-attr]


def test_literal_forms() -> None:
    assert literal_address("0x7f000001") == IPv4Address("127.0.0.1")
    assert literal_address("[::FFFF:127.0.0.1]") == IPv4Address("127.0.0.1")
    assert literal_address("fe80::1%eth0") == IPv6Address("fe80::1")
    for name in ("example.com", "deadbeef", "bad.cafe", "1.2.3.4.5", "256.1.1.1.", "x", "127.0.0.1 x"):
        assert literal_address(name) is None, name
    assert normalize_host(" [FE80::1%eth0] ") == "fe80::1"


def test_dns_names_resolving_to_a_target() -> None:
    built, _ = TargetIndex.build([("default", "api", "http://127.0.0.1:8001")], is_local=is_local)
    answers = {"evil.example": [IPv4Address("127.0.0.1")], "lan.example": [LAN], "far.example": [IPv4Address("203.0.113.5")]}
    calls: list[str] = []

    class Fake(Resolver):
        async def lookup(self, host: str) -> list:  # type: ignore[type-arg]
            calls.append(host)
            if host not in answers:
                raise socket.gaierror(socket.EAI_NONAME, "unknown")
            return answers[host]  # type: ignore[return-value]

    resolver = Fake()

    async def run() -> None:
        assert (await target_for(built, resolver, "EVIL.example.", 8001)).name == "api"  # type: ignore[union-attr]
        assert (await target_for(built, resolver, "lan.example", 8001)).name == "api"  # type: ignore[union-attr]
        assert await target_for(built, resolver, "far.example", 8001) is None
        assert await target_for(built, resolver, "nowhere.example", 8001) is None
        assert await target_for(built, resolver, "evil.example", 8002) is None  # other ports: no lookup
        assert await target_for(built, resolver, "127.1", 8001) is not None  # literals: no lookup

    asyncio.run(run())
    assert calls == ["evil.example", "lan.example", "far.example", "nowhere.example"]


def test_resolver_caches_briefly_and_is_bounded() -> None:
    now = [0.0]
    resolver = Resolver(ttl=5.0, max_entries=2, clock=lambda: now[0])

    async def run() -> None:
        first = await resolver.lookup("localhost")
        assert IPv4Address("127.0.0.1") in first
        for name in ("a.invalid", "b.invalid"):
            with pytest.raises(socket.gaierror):
                await resolver.lookup(name)
        assert len(resolver._cache) == 2  # bounded: localhost went first

    asyncio.run(run())


def test_resolver_timeout_raises() -> None:

    resolver = Resolver(timeout=0.01)

    async def run() -> None:
        loop = asyncio.get_running_loop()

        async def slow(*_args, **_kwargs):  # type: ignore[no-untyped-def]
            await asyncio.sleep(1)

        loop.getaddrinfo = slow  # type: ignore[method-assign]
        with pytest.raises(TimeoutError):
            await resolver.lookup("slow.example")

    asyncio.run(run())


def test_tunnels_mitmproxy_would_not_intercept() -> None:
    none: list[str] = []
    assert tunnel_not_intercepted("127.0.0.1", 8001, ignore_hosts=none, allow_hosts=none, tcp_hosts=none) is None
    assert tunnel_not_intercepted("127.0.0.1", 8001, ignore_hosts=[r"^127\.0\.0\.1:"], allow_hosts=none, tcp_hosts=none) == "it matches ignore_hosts"
    assert tunnel_not_intercepted("API.example", 8001, ignore_hosts=["api.EXAMPLE:8001"], allow_hosts=none, tcp_hosts=none)
    assert tunnel_not_intercepted("127.0.0.1", 8001, ignore_hosts=none, allow_hosts=["example.com"], tcp_hosts=none) == "it is not in allow_hosts"
    assert tunnel_not_intercepted("127.0.0.1", 8001, ignore_hosts=none, allow_hosts=[":8001$"], tcp_hosts=none) is None
    assert tunnel_not_intercepted("127.0.0.1", 8001, ignore_hosts=none, allow_hosts=none, tcp_hosts=["127"]) == "it matches tcp_hosts"


# -- the addon (addons/exposure.py): the rebinding check on mitmproxy's own connections ------------


def guard_with(names: dict[str, list[IPv4Address]]):  # type: ignore[no-untyped-def]
    from addons.exposure import TargetGuard

    class Fake(Resolver):
        async def lookup(self, host: str) -> list:  # type: ignore[type-arg]
            if host not in names:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return names[host]  # type: ignore[return-value]

    guard = TargetGuard(core=None)
    guard.index, _ = TargetIndex.build([("default", "api", "http://127.0.0.1:8001")], is_local=is_local)
    guard.resolver = Fake()
    return guard


def connect_data(host: str, port: int):  # type: ignore[no-untyped-def]
    from mitmproxy.proxy.server_hooks import ServerConnectionHookData
    from mitmproxy.test import tflow

    client = tflow.tclient_conn()
    server = tflow.tserver_conn()
    server.address = (host, port)
    return ServerConnectionHookData(server=server, client=client)


def test_server_connect_refuses_a_name_that_now_resolves_to_a_target() -> None:
    guard = guard_with({"rebind.example": [IPv4Address("127.0.0.1")], "far.example": [IPv4Address("203.0.113.5")]})
    refused, pinned, literal, nameless = connect_data("rebind.example", 8001), connect_data("far.example", 8001), connect_data("127.1", 8001), connect_data("nowhere.example", 8001)
    other_port = connect_data("rebind.example", 8002)
    for data in (refused, pinned, literal, nameless, other_port):
        asyncio.run(guard.server_connect(data))
    assert refused.server.error == "rebind.example resolves to target api, an upstream of this blueprint; only the blueprint's endpoints reach it"
    assert pinned.server.error is None and pinned.server.address == ("203.0.113.5", 8001)  # the address checked is the one used
    assert literal.server.error is None and literal.server.address == ("127.1", 8001)  # a literal: the request checks saw the same
    assert nameless.server.error is not None  # our lookup failed: mitmproxy's must not succeed behind our back
    assert other_port.server.error is None and other_port.server.address == ("rebind.example", 8002)  # no target there


def test_server_connect_leaves_reverse_mode_alone() -> None:
    from mitmproxy.proxy.mode_specs import ProxyMode

    guard = guard_with({"rebind.example": [IPv4Address("127.0.0.1")]})
    data = connect_data("rebind.example", 8001)
    data.client.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:8001")
    asyncio.run(guard.server_connect(data))
    assert data.server.error is None


def test_startup_line() -> None:
    from addons.exposure import exposure_line

    built, _ = TargetIndex.build([("default", "api", "http://127.0.0.1:8001")], is_local=is_local)
    line = exposure_line(built, "passthrough")
    assert "endpoints answer direct clients and clients using this proxy" in line
    assert "pass through unchanged" in line and "reachable only through the endpoints" in line
    assert "`backworks run FILE`" in line and "server.unmatched: not_found" in line
    assert "404" in exposure_line(built, "not_found")
