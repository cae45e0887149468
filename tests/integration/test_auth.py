"""The auth middleware in a real mitmdump: a corpus of hostile tokens, claims forwarded to a real
upstream, and keys from a JWKS served by a real aiohttp server (rotation, bounded refresh)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import textwrap
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.integration.harness import Proxy, Reply, Upstream

pytestmark = pytest.mark.integration

SECRET = "integration-secret-" + "k" * 45  # 64 bytes
OTHER_SECRET = "another-secret-" + "z" * 49

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_PEM = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def encode(payload: dict[str, Any], key: Any, algorithm: str, headers: dict[str, Any] | None = None) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def hs256_raw(header: dict[str, Any] | str, payload: dict[str, Any] | str, secret: bytes = SECRET.encode()) -> str:
    """HS256 over any header and payload text: what an attacker with (or without) the secret sends."""
    head = header if isinstance(header, str) else json.dumps(header)
    body = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = f"{b64(head.encode())}.{b64(body.encode())}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims for both blueprints (with the email the first one requires), changed as told."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice",
        "iss": "backworks",
        "aud": "my-api",
        "iat": now - 5,
        "exp": now + 600,
        "roles": ["user"],
        "email": "alice@example.com",
    }
    return {**base, **changes}


def without(name: str) -> dict[str, Any]:
    payload = claims()
    del payload[name]
    return payload


def valid(**changes: Any) -> str:
    return encode(claims(**changes), SECRET, "HS256")


def tampered_payload() -> str:
    header, _, signature = valid().split(".")
    return f"{header}.{b64(json.dumps(claims(roles=['admin'])).encode())}.{signature}"


def tampered_signature() -> str:
    token = valid()
    return token[:-10] + ("A" if token[-10] != "A" else "B") + token[-9:]


# name, the token, and what the 401's error_description says about it
HOSTILE: list[tuple[str, Callable[[], str], str]] = [
    ("alg none", lambda: f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims(roles=['admin'])).encode())}.", "algorithm is not allowed"),
    ("alg None with a signature", lambda: ".".join([b64(b'{"alg":"None"}'), b64(json.dumps(claims()).encode()), b64(b"x")]), "algorithm is not allowed"),
    ("HS256 keyed with the RSA public key", lambda: hs256_raw({"alg": "HS256", "typ": "JWT"}, claims(roles=["admin"]), PUBLIC_PEM), "signature does not verify"),
    ("expired", lambda: valid(exp=int(time.time()) - 120), "has expired"),
    ("not yet valid", lambda: valid(nbf=int(time.time()) + 3600), "not valid yet"),
    ("issued in the future", lambda: valid(iat=int(time.time()) + 3600), "issued in the future"),
    ("wrong issuer", lambda: valid(iss="evil"), "issuer is not accepted"),
    ("no issuer", lambda: encode(without("iss"), SECRET, "HS256"), "issuer is not accepted"),
    ("wrong audience", lambda: valid(aud="other-api"), "not for this audience"),
    ("token for other audiences only", lambda: valid(aud=["billing", "reports"]), "not for this audience"),
    ("no audience", lambda: encode(without("aud"), SECRET, "HS256"), "not for this audience"),
    ("tampered payload", tampered_payload, "signature does not verify"),
    ("tampered signature", tampered_signature, "signature does not verify"),
    ("truncated", lambda: valid()[:-30], "not base64url"),
    ("two segments", lambda: ".".join(valid().split(".")[:2]), "three dot-separated parts"),
    ("standard base64, not base64url", lambda: valid().split(".")[0] + ".eyJzdWIiOiJh+/+/." + valid().split(".")[2], "not base64url"),
    ("characters outside base64", lambda: valid().split(".")[0] + ".!!!." + valid().split(".")[2], "not a token"),
    ("padded base64", lambda: valid() + "==", "not base64url"),
    ("oversized", lambda: valid(blob="x" * 9000), "larger than 8192"),
    ("kid path traversal, empty key", lambda: hs256_raw({"alg": "HS256", "kid": "../../../../dev/null"}, claims(roles=["admin"]), b""), "signature does not verify"),
    ("kid path traversal, RS256", lambda: encode(claims(), ATTACKER_RSA, "RS256", {"kid": "../../etc/passwd"}), "signature does not verify"),
    ("jku elsewhere", lambda: encode(claims(), ATTACKER_RSA, "RS256", {"jku": "http://127.0.0.1:9/jwks.json"}), "names its own key"),
    ("x5u elsewhere", lambda: encode(claims(), ATTACKER_RSA, "RS256", {"x5u": "http://127.0.0.1:9/cert.pem"}), "names its own key"),
    ("embedded jwk", lambda: encode(claims(), ATTACKER_RSA, "RS256", {"jwk": json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(ATTACKER_RSA.public_key()))}), "names its own key"),
    ("x5c chain", lambda: encode(claims(), ATTACKER_RSA, "RS256", {"x5c": ["MIIBIjANBgkq"]}), "names its own key"),
    ("jku even when signed right", lambda: encode(claims(), SECRET, "HS256", {"jku": "http://127.0.0.1:9/jwks.json"}), "names its own key"),
    ("crit extension", lambda: encode(claims(), SECRET, "HS256", {"crit": ["http://example.com/x"], "http://example.com/x": 1}), "unsupported header extension"),
    ("no sub", lambda: encode(without("sub"), SECRET, "HS256"), "lacks claim sub"),
    ("no exp", lambda: encode(without("exp"), SECRET, "HS256"), "lacks claim exp"),
    ("missing required email", lambda: encode(without("email"), SECRET, "HS256"), "lacks claim email"),
    ("roles as an object", lambda: hs256_raw({"alg": "HS256"}, {**claims(), "roles": {"admin": True}}), "claim roles must be a list of strings"),
    ("exp as a string", lambda: hs256_raw({"alg": "HS256"}, {**claims(), "exp": "9999999999"}), "claim exp must be a number"),
    ("sub as a number", lambda: hs256_raw({"alg": "HS256"}, {**claims(), "sub": 1}), "claim sub must be"),
    ("duplicate sub", lambda: hs256_raw('{"alg":"HS256"}', json.dumps(claims())[:-1] + ', "sub": "admin"}'), "payload is not JSON"),
    ("signed with another secret", lambda: encode(claims(), OTHER_SECRET, "HS256"), "signature does not verify"),
    ("alg switched to HS512", lambda: encode(claims(), SECRET, "HS512"), "algorithm is not allowed"),
    ("RS256 signed by another key", lambda: encode(claims(), ATTACKER_RSA, "RS256"), "signature does not verify"),
    ("PS256 not allowed", lambda: encode(claims(), RSA_KEY, "PS256"), "algorithm is not allowed"),
    ("ES256 not allowed", lambda: encode(claims(), EC_KEY, "ES256"), "algorithm is not allowed"),
    ("JWE shape", lambda: "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d", "(JWE) are not supported"),
    ("garbage", lambda: "garbage", "three dot-separated parts"),
]

# Whole Authorization headers (or their absence) that carry no usable token.
BAD_HEADERS: list[tuple[str, list[tuple[str, str]], str]] = [
    ("no Authorization", [], "no bearer token"),
    ("empty Bearer", [("Authorization", "Bearer ")], "Bearer credential is empty"),
    ("Bearer alone", [("Authorization", "Bearer")], "Bearer credential is empty"),
    ("Basic credentials", [("Authorization", "Basic YWxpY2U6c2VjcmV0")], "no bearer token"),
    ("token without a scheme", [("Authorization", "TOKEN")], "no bearer token"),
    ("two Authorization headers", [("Authorization", "Bearer TOKEN"), ("Authorization", "Bearer TOKEN")], "more than one Authorization header"),
    ("token in a cookie only", [("Cookie", "access_token=TOKEN")], "no bearer token"),
    ("quoted token", [("Authorization", 'Bearer "TOKEN"')], "not a token"),
]

BLUEPRINT = """
name: auth-integration
plugins:
  proxy:
    config:
      targets: [{name: up, url: "<up>"}]
  auth:
    config:
      jwt_secret: "<secret>"
      audit: all
      public_key: keys/public.pem
      algorithms: [HS256, RS256]
      issuer: backworks
      audience: my-api
      required_claims: [email]
      forward_claims: {X-User: sub, X-User-Roles: roles, X-User-Email: email}
      strip_token: true
      roles: {admin: ["resources:*"], user: ["resources:read"]}
middlewares:
  - name: authenticate
    plugin: auth
    config: {path: "/api/*", roles: [user, admin]}
  - name: admin_only
    plugin: auth
    config: {path: "/api/admin*", roles: [admin]}
  - name: can_write
    plugin: auth
    config: {permissions: ["resources:write"]}
endpoints:
  - {path: "/api/{rest:path}", method: ANY, handler: proxy}
  - {path: /write, method: POST, handler: proxy, middleware: [authenticate, can_write]}
  - {path: /health, handler: static, config: {static: {body: {ok: true}}}}
"""


def send(proxy: Proxy, path: str, headers: list[tuple[str, str]], method: str = "GET") -> Reply:
    """One request with headers as a list: repeated names go out repeated."""
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


@pytest.fixture
def upstream(make_upstream) -> Upstream:  # type: ignore[no-untyped-def]
    return make_upstream("api")


@pytest.fixture
def proxy(tmp_path: Path, start_proxy, upstream: Upstream) -> Proxy:  # type: ignore[no-untyped-def]
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "public.pem").write_bytes(PUBLIC_PEM)
    path = tmp_path / "blueprint.yaml"
    path.write_text(textwrap.dedent(BLUEPRINT).replace("<up>", upstream.url).replace("<secret>", SECRET))
    return start_proxy(path)


def assert_invalid_token(reply: Reply, label: str, why: str = "") -> None:
    assert reply.status == 401, (label, reply.status, reply.body[:200])
    challenge = reply.header("WWW-Authenticate") or ""
    assert challenge.startswith('Bearer error="invalid_token", error_description="'), (label, challenge)
    assert why in challenge, (label, why, challenge)
    body = reply.json
    assert body["status"] == 401 and body["error"].startswith("not authenticated: ") and body["request_id"], (label, body)


def test_hostile_tokens_are_all_401_and_never_reach_the_upstream(proxy: Proxy, upstream: Upstream) -> None:
    assert len(HOSTILE) + len(BAD_HEADERS) >= 30
    sent: list[str] = []
    for label, make, why in HOSTILE:
        token = make()
        if label not in ("garbage", "JWE shape"):
            sent.append(token)
        # each token is valid but for the flaw it is named after
        assert_invalid_token(send(proxy, "/api/resources", [("Authorization", f"Bearer {token}")]), label, why)
    good = encode(claims(), SECRET, "HS256")
    for label, headers, why in BAD_HEADERS:
        reply = send(proxy, "/api/resources", [(n, v.replace("TOKEN", good)) for n, v in headers])
        assert_invalid_token(reply, label, why)
    assert upstream.received == []
    # the audit log names the denials, and carries no token
    log = proxy.wait_for_log("auth denied 401")
    for token in sent + [good]:
        assert token not in log
        assert token.split(".")[1] not in log


def test_a_valid_token_reaches_the_upstream_with_claims_and_without_the_token(proxy: Proxy, upstream: Upstream) -> None:
    token = encode(claims(), SECRET, "HS256")
    reply = send(proxy, "/api/resources?page=2", [("Authorization", f"Bearer {token}"), ("X-User", "root"), ("X-User-Roles", "admin")])
    assert reply.status == 200, reply.body
    (seen,) = upstream.received
    assert seen.path == "/api/resources" and seen.query == "page=2"
    headers = {name.lower(): value for name, value in seen.raw_headers}
    assert headers["x-user"] == "alice" and headers["x-user-roles"] == "user" and headers["x-user-email"] == "alice@example.com"
    assert [n for n, _ in seen.raw_headers if n.lower() == "x-user"] == ["X-User"]  # the spoofed copy is gone
    assert "authorization" not in headers
    # an RS256 token from the holder of the private key; `bearer` in lower case (RFC 7235: case-insensitive)
    rs256 = encode(claims(sub="bob", roles=["admin"]), RSA_KEY, "RS256")
    reply = send(proxy, "/api/admin/users", [("Authorization", f"bearer {rs256}")])
    assert reply.status == 200
    assert upstream.received[-1].headers["X-User"] == "bob"
    proxy.wait_for_log("auth allowed sub=bob GET /api/admin/users")


def test_a_valid_token_without_the_role_or_permission_is_403(proxy: Proxy, upstream: Upstream) -> None:
    token = encode(claims(), SECRET, "HS256")
    reply = send(proxy, "/api/admin/users", [("Authorization", f"Bearer {token}")])
    assert reply.status == 403
    assert reply.header("WWW-Authenticate") == 'Bearer error="insufficient_scope", error_description="requires one of the roles admin"'
    assert reply.json["error"] == "insufficient permissions: requires one of the roles admin"
    reply = send(proxy, "/write", [("Authorization", f"Bearer {token}")], method="POST")
    assert reply.status == 403
    assert 'scope="resources:write"' in (reply.header("WWW-Authenticate") or "")
    assert upstream.received == []
    admin = encode(claims(roles=["admin"]), SECRET, "HS256")
    assert send(proxy, "/write", [("Authorization", f"Bearer {admin}")], method="POST").status == 200
    # an open endpoint needs no token
    assert send(proxy, "/health", []).status == 200


# -- JWKS from a real server ---------------------------------------------------------------------

JWKS_BLUEPRINT = """
name: auth-jwks
plugins:
  auth:
    config:
      jwks_url: "<issuer>/.well-known/jwks.json"
      algorithms: [RS256, ES256]
      jwks_min_interval: 2s
      audience: my-api
middlewares:
  - {name: authenticate, plugin: auth, config: {path: "/*"}}
endpoints:
  - {path: /me, handler: static, config: {static: {body: {sub: "{{auth.sub}}", roles: "{{auth.roles.0}}"}}}}
"""


def jwk_of(private: Any, kid: str) -> dict[str, Any]:
    public = private.public_key()
    text = jwt.algorithms.RSAAlgorithm.to_jwk(public) if isinstance(public, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm.to_jwk(public)
    return {**json.loads(text), "kid": kid, "use": "sig"}


def test_jwks_keys_by_kid_rotation_and_bounded_refresh(tmp_path: Path, start_proxy, make_upstream) -> None:  # type: ignore[no-untyped-def]
    published: dict[str, Any] = {"keys": [jwk_of(RSA_KEY, "k1")]}

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(published)

    issuer = make_upstream("issuer")
    issuer.routes["/.well-known/jwks.json"] = jwks
    path = tmp_path / "blueprint.yaml"
    path.write_text(textwrap.dedent(JWKS_BLUEPRINT).replace("<issuer>", issuer.url))
    proxy = start_proxy(path)

    def fetches() -> int:
        return sum(1 for r in issuer.received if r.path == "/.well-known/jwks.json")

    def me(token: str) -> Reply:
        return send(proxy, "/me", [("Authorization", f"Bearer {token}")])

    assert fetches() == 0  # fetched when first needed
    first = me(encode(claims(), RSA_KEY, "RS256", {"kid": "k1"}))
    assert first.status == 200 and first.json == {"sub": "alice", "roles": "user"}
    assert fetches() == 1
    assert me(encode(claims(sub="carol"), RSA_KEY, "RS256", {"kid": "k1"})).json["sub"] == "carol"
    assert fetches() == 1  # known kid: cached

    # a key the issuer does not publish, and a kid nobody knows: 401, one fetch at most
    unknown = encode(claims(), ATTACKER_RSA, "RS256", {"kid": "k1"})
    assert_invalid_token(me(unknown), "attacker key under a known kid")
    time.sleep(2.2)
    for index in range(25):
        assert_invalid_token(me(encode(claims(), ATTACKER_RSA, "RS256", {"kid": f"random-{index}"})), "unknown kid")
    assert fetches() == 2  # 25 unknown kids within the interval: one refresh, not 25

    # rotation: the issuer adds an EC key k2; after the interval, its first token refreshes the cache
    published["keys"] = [jwk_of(RSA_KEY, "k1"), jwk_of(EC_KEY, "k2")]
    time.sleep(2.2)
    rotated = me(encode(claims(sub="dave", roles=["admin"]), EC_KEY, "ES256", {"kid": "k2"}))
    assert rotated.status == 200 and rotated.json == {"sub": "dave", "roles": "admin"}
    assert fetches() == 3
    # the EC key cannot verify an RS256 token that names it, whatever the kid says
    assert_invalid_token(me(encode(claims(), RSA_KEY, "RS256", {"kid": "k2"})), "RS256 under an EC kid")
    assert fetches() == 3


def test_tokens_and_a_jwks_from_an_independent_jose_library(tmp_path: Path, start_proxy, make_upstream) -> None:  # type: ignore[no-untyped-def]
    """jwcrypto makes the keys, publishes the JWKS (served over HTTP) and signs the tokens; the
    gateway accepts them by kid, also after the issuer rotates to a new key."""
    from jwcrypto import jwk as jose_jwk
    from jwcrypto import jwt as jose_jwt

    first = jose_jwk.JWK.generate(kty="RSA", size=2048, kid="jc-rsa")
    second = jose_jwk.JWK.generate(kty="EC", crv="P-256", kid="jc-ec")
    published = jose_jwk.JWKSet()
    published.add(first)

    async def jwks(request: web.Request) -> web.Response:
        return web.Response(text=published.export(private_keys=False), content_type="application/json")

    issuer = make_upstream("jose-issuer")
    issuer.routes["/.well-known/jwks.json"] = jwks
    path = tmp_path / "blueprint.yaml"
    path.write_text(textwrap.dedent(JWKS_BLUEPRINT).replace("<issuer>", issuer.url))
    proxy = start_proxy(path)

    def minted(key: Any, algorithm: str, **changes: Any) -> str:
        with warnings.catch_warnings():  # jwcrypto's own deprecation notices about its defaults
            warnings.simplefilter("ignore", DeprecationWarning)
            token = jose_jwt.JWT(header={"alg": algorithm, "kid": key.key_id}, claims=claims(**changes))
            token.make_signed_token(key)
        return token.serialize()

    def me(token: str) -> Reply:
        return send(proxy, "/me", [("Authorization", f"Bearer {token}")])

    reply = me(minted(first, "RS256"))
    assert reply.status == 200 and reply.json == {"sub": "alice", "roles": "user"}
    # rotation: the issuer now publishes both keys; a token under the new kid is accepted once
    # the refresh interval (2 s in the blueprint) allows a fetch
    published.add(second)
    time.sleep(2.2)
    reply = me(minted(second, "ES256", sub="erin", roles=["admin"]))
    assert reply.status == 200 and reply.json == {"sub": "erin", "roles": "admin"}
    # a jwcrypto token signed by a key the issuer never published is refused
    stranger = jose_jwk.JWK.generate(kty="RSA", size=2048, kid="jc-rsa")
    assert_invalid_token(me(minted(stranger, "RS256")), "a key not in the JWKS under a published kid")
