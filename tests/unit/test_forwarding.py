"""The trust boundary (backworks_core/forwarding.py): identity headers, Connection tokens and the
trusted_proxies rule, as pure functions and as a compiled gateway applies them."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from mitmproxy import http

from addons.proxy import ProxyHandler
from addons.rate_limit import request_key
from backworks_core.forwarding import (
    MAX_FORWARDED_HOPS,
    TrustBoundary,
    TrustedProxies,
    client_address,
    client_of,
    parse_forwarded_address,
    parse_network,
)
from backworks_core.context import RequestContext

from .conftest import make_flow

# -- the pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("203.0.113.7:4711", "203.0.113.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("unknown", None),
        ("_hidden", None),
        ("203.0.113.7:port", None),
        ("[2001:db8::1]x", None),
        ("300.1.1.1", None),
        ("", None),
    ],
)
def test_forwarded_addresses_parse_or_are_refused(element: str, expected: str | None) -> None:
    assert parse_forwarded_address(element) == expected


@pytest.mark.parametrize("entry", ["10.0.0.0/8", "127.0.0.1", "2001:db8::/32", "::1", " 192.168.1.0/24 ", "10.1.2.3/8"])
def test_trusted_proxy_entries(entry: str) -> None:
    parse_network(entry)


@pytest.mark.parametrize("entry", ["", "localhost", "10.0.0.0/33", "10.0.0.0/8/8", "*", "1.2.3.4.5"])
def test_bad_trusted_proxy_entries_say_what_is_expected(entry: str) -> None:
    with pytest.raises(ValueError, match="IP address or a CIDR network"):
        parse_network(entry)


def test_trusted_proxies_match_networks_and_mapped_addresses() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "::ffff:192.0.2.1", "2001:db8::/32"])
    assert trusted.trusts("10.200.0.1") and trusted.trusts("192.0.2.1") and trusted.trusts("2001:db8::5")
    assert not trusted.trusts("11.0.0.1") and not trusted.trusts("unknown") and not trusted.trusts("")
    assert not TrustedProxies() and not TrustedProxies().trusts("127.0.0.1")


TRUSTED = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("198.51.100.1", ["1.1.1.1"], "198.51.100.1"),  # untrusted peer: its header means nothing
        ("127.0.0.1", [], "127.0.0.1"),  # trusted, but it says nothing
        ("127.0.0.1", ["1.1.1.1"], "1.1.1.1"),
        ("127.0.0.1", ["6.6.6.6, 1.1.1.1"], "1.1.1.1"),  # a client's own left part is never taken
        ("127.0.0.1", ["6.6.6.6, 1.1.1.1, 10.0.0.2"], "1.1.1.1"),  # walks past trusted hops
        ("127.0.0.1", ["6.6.6.6", "1.1.1.1, 10.0.0.2"], "1.1.1.1"),  # several fields: one list
        ("127.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),  # all trusted: the left-most
        ("127.0.0.1", ["6.6.6.6, garbage, 10.0.0.2"], "10.0.0.2"),  # stops at what is not an address
        ("127.0.0.1", ["6.6.6.6, unknown"], "127.0.0.1"),
        ("127.0.0.1", ["1.1.1.1,, ,"], "1.1.1.1"),  # empty list elements
        ("127.0.0.1", ["[2001:db8::9]:80"], "2001:db8::9"),
    ],
)
def test_the_client_address_rule(peer: str, xff: list[str], expected: str) -> None:
    assert client_address(peer, xff, TRUSTED) == expected


def test_a_long_chain_of_trusted_hops_is_cut() -> None:
    chain = ", ".join(["1.2.3.4"] + ["10.0.0.1"] * (MAX_FORWARDED_HOPS + 5))
    assert client_address("127.0.0.1", [chain], TRUSTED) == "10.0.0.1"
    started = time.perf_counter()
    client_address("127.0.0.1", [", ".join(["10.0.0.1"] * 10_000)], TRUSTED)
    assert time.perf_counter() - started < 0.05


# -- the boundary on a request -------------------------------------------------------------------


def _flow(headers: list[tuple[str, str]], peer: str = "198.51.100.7") -> http.HTTPFlow:
    flow = make_flow("GET", "/x", headers=headers)
    flow.client_conn.peername = (peer, 50000)
    flow.client_conn.timestamp_tls_setup = None  # plain HTTP
    return flow


def _names(flow: http.HTTPFlow) -> list[str]:
    return [name.decode() for name, _ in flow.request.headers.fields]


def identity_variants(name: str) -> list[str]:
    """Spellings a WSGI/CGI server folds into one HTTP_ key, or that mitmproxy keeps as a name."""
    dashed = name.replace("_", "-")
    forms = {dashed, dashed.lower(), dashed.upper(), dashed.replace("-", "_"), dashed.lower().replace("-", "_"), dashed.title()}
    forms |= {f"{form} " for form in list(forms)}  # `X-User : v`: mitmproxy keeps the space in the name
    mixed = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(dashed))
    return sorted(forms | {mixed, mixed.replace("-", "_")})


@pytest.mark.parametrize("spelling", identity_variants("X-User"))
def test_identity_headers_are_removed_in_every_spelling(spelling: str) -> None:
    boundary = TrustBoundary(["X-User", "X_Roles"])
    flow = _flow([("Accept", "*/*"), (spelling, "admin"), (spelling, "root"), ("x-roles", "admin"), ("X-Other", "kept")])
    boundary.admit(flow)
    assert _names(flow) == ["Accept", "X-Other"]


def test_nothing_to_remove_leaves_the_header_list_alone() -> None:
    boundary = TrustBoundary(["X-User"])
    flow = _flow([("Accept", "*/*"), ("Connection", "keep-alive"), ("X-Userx", "1")])
    fields = flow.request.headers.fields
    client = boundary.admit(flow)
    assert flow.request.headers.fields is fields
    assert (client.address, client.peer, client.trusted_peer) == ("198.51.100.7", "198.51.100.7", False)
    assert client_of(flow) is client


@pytest.mark.parametrize(
    "connection",
    ["X-Hop", "x-hop", " X-HOP ,", "keep-alive,x-hop", "Upgrade,  X-Hop ,close", "X_Hop", "foo, bar,x-hop"],
)
def test_connection_tokens_remove_the_clients_fields_but_not_framing(connection: str) -> None:
    boundary = TrustBoundary([])
    flow = _flow(
        [("Host", "api.test"), ("Content-Length", "0"), ("Connection", connection + ", host, content-length, transfer-encoding, upgrade"), ("X-Hop", "v"), ("Upgrade", "websocket"), ("X-Keep", "1")]
    )
    boundary.admit(flow)
    names = [n.lower() for n in _names(flow)]
    assert "x-hop" not in names
    assert {"host", "content-length", "upgrade", "x-keep"} <= set(names)
    kept = flow.request.headers.get("connection")
    # only close, keep-alive and upgrade stay: nothing downstream can name the gateway's fields
    assert kept is None or set(t.strip().lower() for t in kept.split(",")) <= {"close", "keep-alive", "upgrade"}
    assert "upgrade" in (kept or "").lower()


def test_a_websocket_upgrade_keeps_what_it_needs() -> None:
    boundary = TrustBoundary(["X-User"])
    flow = _flow([("Connection", "Upgrade, X-User"), ("Upgrade", "websocket"), ("Sec-WebSocket-Key", "k"), ("X-User", "admin")])
    boundary.admit(flow)
    assert flow.request.headers.fields == ((b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Key", b"k"))


FORWARDING = [("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "for=6.6.6.6"), ("X-Real-IP", "6.6.6.6"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil"), ("X-Forwarded-Port", "1"), ("True-Client-IP", "6.6.6.6"), ("x_forwarded_for", "7.7.7.7"), ("X-Real_IP", "7.7.7.7")]


def test_forwarding_headers_from_an_untrusted_peer_are_removed() -> None:
    boundary = TrustBoundary([], ["10.0.0.0/8"])
    flow = _flow([("Accept", "*/*"), *FORWARDING])
    client = boundary.admit(flow)
    assert _names(flow) == ["Accept"] and client.address == "198.51.100.7" and not client.trusted_peer


def test_forwarding_headers_from_a_trusted_peer_are_kept_but_not_their_twins() -> None:
    boundary = TrustBoundary([], ["10.0.0.0/8"])
    flow = _flow([("Accept", "*/*"), *FORWARDING, ("X-Forwarded-For", "1.1.1.1, 10.0.0.5")], peer="10.0.0.9")
    client = boundary.admit(flow)
    names = _names(flow)
    assert "x_forwarded_for" not in names and "X-Real_IP" not in names
    assert names.count("X-Forwarded-For") == 2 and "Forwarded" in names and "X-Real-IP" in names
    assert (client.address, client.peer, client.trusted_peer) == ("1.1.1.1", "10.0.0.9", True)


def test_a_mapped_peer_is_trusted_as_its_ipv4_address() -> None:
    boundary = TrustBoundary([], ["127.0.0.1"])
    client = boundary.admit(_flow([("X-Forwarded-For", "5.5.5.5")], peer="::ffff:127.0.0.1"))
    assert client.address == "5.5.5.5" and client.peer == "127.0.0.1"


def test_generated_header_variants_never_keep_the_clients_value() -> None:
    """Case, `_`/`-`, duplicates, Connection lists: no spelling of a protected name survives."""
    boundary = TrustBoundary(["X-User", "X-Roles"])
    spellings = identity_variants("X-User") + identity_variants("X-Roles")
    connections = ["X-User, X-Roles", " x-user ,x-roles ", "X_USER", "keep-alive,,X-Roles", "close", ""]
    count = 0
    for first, second, connection in itertools.product(spellings, spellings[::3], connections):
        headers = [(first, "admin"), ("Accept", "*/*"), (second, "admin")]
        if connection:
            headers.append(("Connection", connection))
        flow = _flow(headers)
        boundary.admit(flow)
        assert all(value != b"admin" for _, value in flow.request.headers.fields), (first, second, connection)
        count += 1
    assert count > 1000


# -- a compiled gateway: auth, proxy and rate limiter read the same rule ---------------------------

SECRET = "unit-forwarding-secret-" + "s" * 41

BLUEPRINT = """
name: forwarding
server:
  trusted_proxies: %(trusted)s
plugins:
  auth:
    config:
      jwt_secret: "%(secret)s"
      forward_claims: {X-User: sub, X-Roles: roles}
  proxy:
    config:
      targets: [{name: api, url: "http://127.0.0.1:9"}]
middlewares:
  - {name: authenticate, plugin: auth}
endpoints:
  - {path: /private, handler: proxy, middleware: [authenticate]}
  - {path: /public, handler: proxy}
"""


def _token(sub: str = "alice", roles: list[str] | None = None) -> str:
    import jwt

    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, "roles": roles or ["user"]}, SECRET, algorithm="HS256")


@pytest.fixture
def forwarding_gateway(project, compile_gateway):  # type: ignore[no-untyped-def]
    def build(trusted: list[str] | None = None):  # type: ignore[no-untyped-def]
        return compile_gateway(project.blueprint(BLUEPRINT % {"trusted": trusted or [], "secret": SECRET}))

    return build


async def _upstream_headers(gateway: Any, flow: http.HTTPFlow) -> dict[str, list[str]]:
    """What the proxy would send upstream, after the middlewares ran (no upstream needed)."""
    ctx = gateway.route(flow, reverse_mode=True, direct=False)
    assert isinstance(ctx, RequestContext)
    for middleware in gateway.middlewares_for(ctx.endpoint, "GET", flow.request.path):
        assert await middleware.instance.on_request(ctx) is None
    handler = ctx.endpoint.handler
    assert isinstance(handler, ProxyHandler)
    seen: dict[str, list[str]] = {}
    for name, value in handler.upstream_headers(ctx):
        seen.setdefault(name.lower().replace("_", "-"), []).append(value)
    return seen


async def test_connection_tokens_and_twins_cannot_replace_forwarded_claims(forwarding_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = forwarding_gateway()
    flow = _flow([("Authorization", f"Bearer {_token()}"), ("Connection", "X-User, X-Roles"), ("X_User", "admin"), ("X-Roles", "admin")])
    flow.request.path = "/private"
    seen = await _upstream_headers(gateway, flow)
    assert seen["x-user"] == ["alice"] and seen["x-roles"] == ["user"]
    assert seen["x-request-id"] and seen["traceparent"] and seen["x-forwarded-for"] == ["198.51.100.7"]


async def test_a_route_without_auth_never_passes_a_clients_identity(forwarding_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = forwarding_gateway()
    flow = _flow([("X-User", "admin"), ("x_roles", "admin"), ("X-Forwarded-For", "6.6.6.6"), ("X-Real-IP", "6.6.6.6"), ("Forwarded", "for=6.6.6.6")])
    flow.request.path = "/public"
    seen = await _upstream_headers(gateway, flow)
    assert "x-user" not in seen and "x-roles" not in seen and "x-real-ip" not in seen and "forwarded" not in seen
    assert seen["x-forwarded-for"] == ["198.51.100.7"] and seen["x-forwarded-proto"] == ["http"]


async def test_a_trusted_proxy_chain_is_extended_and_believed(forwarding_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = forwarding_gateway(["10.0.0.0/8"])
    flow = _flow([("X-Forwarded-For", "6.6.6.6, 1.1.1.1"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "shop.example")], peer="10.0.0.9")
    flow.request.path = "/public"
    seen = await _upstream_headers(gateway, flow)
    assert seen["x-forwarded-for"] == ["6.6.6.6, 1.1.1.1, 10.0.0.9"]
    assert seen["x-forwarded-proto"] == ["https"] and seen["x-forwarded-host"] == ["shop.example"]
    ctx_flow = _flow([("X-Forwarded-For", "1.1.1.1")], peer="10.0.0.9")
    ctx_flow.request.path = "/public"
    ctx = gateway.route(ctx_flow, reverse_mode=True, direct=False)
    assert request_key(ctx, "ip") == "ip:1.1.1.1"
    untrusted = _flow([("X-Forwarded-For", "1.1.1.1")], peer="11.0.0.9")
    untrusted.request.path = "/public"
    ctx = gateway.route(untrusted, reverse_mode=True, direct=False)
    assert request_key(ctx, "ip") == "ip:11.0.0.9"


def test_a_bad_trusted_proxy_entry_is_a_located_error(project, load_errors) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(BLUEPRINT % {"trusted": ["127.0.0.1", "10.0.0.0/33"], "secret": SECRET})
    errors = [str(d) for d in load_errors(path)]
    assert any("server.trusted_proxies[1]" in e and "CIDR" in e for e in errors), errors


def test_forward_claims_cannot_name_framing_or_forwarding_headers(project, load_errors) -> None:  # type: ignore[no-untyped-def]
    text = BLUEPRINT.replace("{X-User: sub, X-Roles: roles}", "{Content_Length: sub, X-Forwarded-For: sub, traceparent: sub}")
    errors = [str(d) for d in load_errors(project.blueprint(text % {"trusted": [], "secret": SECRET}))]
    assert len([e for e in errors if "cannot carry a claim" in e]) == 3, errors
