"""Identity comes from the gateway only (docs/security.md, section 2), through a real mitmdump.

The upstreams are the file servers of tests/security/servers.py: aiohttp, http.server and a WSGI
application under wsgiref, which folds `X_User` and `X-User` into one HTTP_X_USER. Each answers
with the identity and forwarding headers it saw, so a test asserts on what the application read.
"""

from __future__ import annotations

import http.client
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.integration.harness import Proxy, Reply
from tests.security.servers import FileServer

pytestmark = pytest.mark.integration

SECRET = "security-identity-secret-" + "q" * 39  # 64 bytes
SPOOF = "admin"


def token(sub: str = "alice", roles: list[str] | None = None) -> str:
    """A low-privilege token, minted as tests/integration/test_auth.py does (PyJWT, HS256)."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now - 5, "exp": now + 600, "roles": roles or ["user"]}, SECRET, algorithm="HS256")


def blueprint(folder: Path, servers: list[FileServer], trusted: list[str] | None = None, limit: int = 3) -> Path:
    upstreams = {s.kind.replace(".", "-"): {"targets": [{"name": s.kind.replace(".", "-"), "url": s.url}]} for s in servers}
    endpoints: list[dict[str, Any]] = []
    for name in upstreams:
        proxy = {"proxy": {"upstream": name, "path": "/public/index.txt"}}
        endpoints.append({"path": f"/private/{name}", "handler": "proxy", "middleware": ["authenticate"], "config": proxy})
        endpoints.append({"path": f"/open/{name}", "handler": "proxy", "config": proxy})
    endpoints.append({"path": "/limited", "handler": "static", "middleware": ["per-ip"], "config": {"static": {"body": {"ok": True}}}})
    document = {
        "name": "identity",
        "plugins": {
            "auth": {"config": {"jwt_secret": SECRET, "forward_claims": {"X-User": "sub", "X-Roles": "roles"}}},
            "proxy": {"config": {"upstreams": upstreams}},
        },
        "middlewares": [
            {"name": "authenticate", "plugin": "auth"},
            {"name": "per-ip", "plugin": "rate_limit", "config": {"requests": limit, "per": "1m", "burst": limit, "key": "ip"}},
        ],
        "endpoints": endpoints,
    }
    if trusted is not None:
        document["server"] = {"trusted_proxies": trusted}
    path = folder / "identity.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    return path


def send(port: int, path: str, headers: list[tuple[str, str]]) -> Reply:
    """One GET with the header fields exactly as listed (repeats and odd spellings included)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", path)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def seen(reply: Reply, name: str) -> list[str]:
    """Every value the upstream application read under `name`, whatever spelling it came in."""
    assert reply.status == 200, reply.body
    key = name.lower()
    return [v for k, v in reply.json["headers"].items() if k.lower().replace("_", "-").strip() == key]


@pytest.fixture
def gateway(tmp_path: Path, file_servers: list[FileServer], start_proxy: Callable[..., Proxy]) -> tuple[Proxy, list[str]]:
    return start_proxy(blueprint(tmp_path, file_servers)), [s.kind.replace(".", "-") for s in file_servers]


def test_connection_tokens_and_an_underscore_twin_cannot_replace_forwarded_claims(gateway: tuple[Proxy, list[str]]) -> None:
    """The reproduction of issue 17: a low-privilege token, `Connection: X-User, X-Roles`, `X_User: admin`."""
    proxy, kinds = gateway
    for kind in kinds:
        reply = send(proxy.port, f"/private/{kind}", [("Authorization", f"Bearer {token()}"), ("Connection", "X-User, X-Roles"), ("X_User", SPOOF), ("X_Roles", SPOOF)])
        assert seen(reply, "x-user") == ["alice"], (kind, reply.json)
        assert seen(reply, "x-roles") == ["user"], (kind, reply.json)


def test_a_route_without_auth_never_passes_a_clients_identity(gateway: tuple[Proxy, list[str]]) -> None:
    proxy, kinds = gateway
    for kind in kinds:
        reply = send(proxy.port, f"/open/{kind}", [("X-User", SPOOF), ("X-Roles", SPOOF)])
        assert seen(reply, "x-user") == [] and seen(reply, "x-roles") == [], (kind, reply.json)


def test_spoofed_forwarding_headers_from_an_untrusted_peer_never_reach_upstream(gateway: tuple[Proxy, list[str]]) -> None:
    proxy, kinds = gateway
    spoofed = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("x_forwarded_for", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6;proto=https"),
        ("X-Real-IP", "6.6.6.6"),
        ("X_Real_Ip", "6.6.6.6"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Port", "443"),
        ("X-Client-IP", "6.6.6.6"),
    ]
    for kind in kinds:
        reply = send(proxy.port, f"/open/{kind}", spoofed)
        values = json.dumps(reply.json["headers"])
        assert reply.status == 200 and "6.6.6.6" not in values and "evil.example" not in values and "https" not in values, (kind, values)
        assert seen(reply, "x-forwarded-for") == ["127.0.0.1"] and seen(reply, "forwarded") == [] and seen(reply, "x-real-ip") == []


def test_from_an_untrusted_peer_spoofing_x_forwarded_for_cannot_escape_the_limit(gateway: tuple[Proxy, list[str]]) -> None:
    proxy, _ = gateway
    statuses = [send(proxy.port, "/limited", [("X-Forwarded-For", f"10.9.8.{i}"), ("X-Real-IP", f"10.9.7.{i}")]).status for i in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]


def test_a_trusted_proxys_forwarded_address_is_honoured(tmp_path: Path, file_servers: list[FileServer], start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(blueprint(tmp_path, file_servers, trusted=["127.0.0.1"]))
    kind = file_servers[0].kind.replace(".", "-")
    reply = send(proxy.port, f"/open/{kind}", [("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-Proto", "https"), ("X_Forwarded_For", "6.6.6.6")])
    assert seen(reply, "x-forwarded-for") == ["203.0.113.5, 127.0.0.1"]  # the received chain, the peer appended
    assert seen(reply, "x-forwarded-proto") == ["https"]
    assert "6.6.6.6" not in json.dumps(reply.json["headers"])  # a twin is never believed
    # rate limiting by ip keys on the forwarded address: two addresses, two buckets
    first = [send(proxy.port, "/limited", [("X-Forwarded-For", "203.0.113.5")]).status for _ in range(4)]
    second = [send(proxy.port, "/limited", [("X-Forwarded-For", "198.51.100.9, 203.0.113.6")]).status for _ in range(4)]
    assert first == [200, 200, 200, 429] and second == [200, 200, 200, 429]
    # identity headers stay the gateway's, trusted peer or not
    reply = send(proxy.port, f"/open/{kind}", [("X-User", SPOOF)])
    assert seen(reply, "x-user") == []


def identity_spellings(name: str) -> list[str]:
    forms = {name, name.lower(), name.upper(), name.replace("-", "_"), name.lower().replace("-", "_"), name.upper().replace("-", "_")}
    forms.add("".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(name)))
    return sorted(forms)


def test_generated_variants_never_bring_the_clients_value_through(gateway: tuple[Proxy, list[str]]) -> None:
    """Case, `_`/`-`, repeats, Connection lists with odd spacing and case, with and without auth."""
    proxy, kinds = gateway
    spellings = identity_spellings("X-User") + identity_spellings("X-Roles")
    connections = ["", "X-User, X-Roles", "  x-user ,X-ROLES,, ", "keep-alive, X_User", "close,x-roles", "Upgrade"]
    started, count = time.monotonic(), 0
    for (first, second), connection in itertools.product(zip(spellings, spellings[3:] + spellings[:3]), connections):
        headers = [(first, SPOOF), ("Accept", "*/*"), (second, SPOOF), (first, SPOOF)]
        if connection:
            headers.append(("Connection", connection))
        for kind in kinds:
            for route, auth in ((f"/private/{kind}", [("Authorization", f"Bearer {token()}")]), (f"/open/{kind}", [])):
                reply = send(proxy.port, route, auth + headers)
                assert SPOOF not in json.dumps(reply.json["headers"]), (route, headers, reply.json["headers"])
                if auth:
                    assert seen(reply, "x-user") == ["alice"], (route, headers, reply.json["headers"])
                count += 1
        assert time.monotonic() - started < 120
    assert count >= 500
