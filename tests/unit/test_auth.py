"""The auth plugin: settings, verification, authorization, token sources and the middleware.

Keys are generated with `cryptography` once per module and written as PEM files; test tokens
are made with pyjwt's own encoder (an implementation independent of addons.auth's signer),
and time is an injected clock, never the machine's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from mitmproxy import http

from addons.auth import (
    AuthConfig,
    AuthMiddlewareConfig,
    AuthPlugin,
    Authenticator,
    Denial,
    JwksCache,
    KeyRing,
    TokenIssueError,
    TokenRejected,
    Verifier,
    authorize,
    claim_header_value,
    describe_key,
    extract_token,
    issue_token,
    parse_jwks,
    permission_matches,
    sign_token,
    strip_tokens,
)
from backworks_core.context import Identity
from backworks_core.plugins import BuildError

from .conftest import body_json, diagnostic_lines, make_flow

NOW = 1_700_000_000.0
SECRET = "s" * 64  # long enough for HS512: no short-key warnings from pyjwt
OTHER_SECRET = "t" * 64


# -- keys -------------------------------------------------------------------------------------


def _pem_private(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class Keys:
    """Private keys by name, with their PEM files in `folder` (NAME.pem and NAME.pub.pem)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.private: dict[str, Any] = {
            "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa1024": rsa.generate_private_key(public_exponent=65537, key_size=1024),
            "p256": ec.generate_private_key(ec.SECP256R1()),
            "p384": ec.generate_private_key(ec.SECP384R1()),
            "p521": ec.generate_private_key(ec.SECP521R1()),
            "ed25519": ed25519.Ed25519PrivateKey.generate(),
            "ed448": ed448.Ed448PrivateKey.generate(),
        }
        for name, key in self.private.items():
            (folder / f"{name}.pem").write_bytes(_pem_private(key))
            (folder / f"{name}.pub.pem").write_bytes(_pem_public(key))

    def public_pem(self, name: str) -> bytes:
        return _pem_public(self.private[name])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


def make_config(keys: Keys, **settings: Any) -> AuthConfig:
    """An AuthConfig as the loader validates it (paths relative to the keys folder)."""
    return AuthConfig.model_validate(settings, context={"base_dir": str(keys.folder)})


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier_for(config: AuthConfig, now: float = NOW) -> Verifier:
    return Verifier(config, KeyRing(config), Clock(now))


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "iat": int(NOW) - 10, "exp": int(NOW) + 600, "roles": ["user"]}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def encode(payload: dict[str, Any], key: Any, algorithm: str, headers: dict[str, Any] | None = None) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def rejected(verifier: Verifier, token: str) -> str:
    with pytest.raises(TokenRejected) as info:
        verifier.verify(token)
    return info.value.reason


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any] | str, payload: dict[str, Any] | str, signature: bytes = b"sig") -> str:
    """A token with any header and payload (unsigned, or with a fake signature)."""
    head = header if isinstance(header, str) else json.dumps(header)
    body = payload if isinstance(payload, str) else json.dumps(payload)
    return f"{b64(head.encode())}.{b64(body.encode())}.{b64(signature)}"


# -- verification across algorithms ----------------------------------------------------------

ASYMMETRIC_CASES = [
    ("RS256", "rsa"),
    ("RS384", "rsa"),
    ("RS512", "rsa"),
    ("PS256", "rsa"),
    ("PS512", "rsa"),
    ("ES256", "p256"),
    ("ES384", "p384"),
    ("ES512", "p521"),
    ("EdDSA", "ed25519"),
    ("EdDSA", "ed448"),
]


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_hmac_tokens_verify(keys: Keys, algorithm: str) -> None:
    config = make_config(keys, jwt_secret=SECRET, algorithms=[algorithm])
    verifier = verifier_for(config)
    identity = verifier.authenticate(encode(claims(), SECRET, algorithm))
    assert identity.username == "alice" and identity.roles == ["user"]
    assert rejected(verifier, encode(claims(), OTHER_SECRET, algorithm)) == "bad_signature"


@pytest.mark.parametrize(("algorithm", "key"), ASYMMETRIC_CASES)
def test_asymmetric_tokens_verify_with_the_public_key_file(keys: Keys, algorithm: str, key: str) -> None:
    config = make_config(keys, public_key=f"{key}.pub.pem", algorithms=[algorithm])
    verifier = verifier_for(config)
    assert verifier.verify(encode(claims(), keys.private[key], algorithm))["sub"] == "alice"
    other = {"rsa": "rsa2", "p256": "p384", "p384": "p256", "p521": "p256", "ed25519": "ed448", "ed448": "ed25519"}[key]
    if key == "rsa":  # same type, another key: the signature does not verify
        assert rejected(verifier, encode(claims(), keys.private[other], algorithm)) == "bad_signature"


@pytest.mark.parametrize(("algorithm", "key"), [("HS256", None), ("HS512", None), ("RS256", "rsa"), ("PS384", "rsa"), ("ES256", "p256"), ("ES512", "p521"), ("EdDSA", "ed25519")])
def test_issued_tokens_verify_and_carry_the_claims(keys: Keys, algorithm: str, key: str | None) -> None:
    settings: dict[str, Any] = {"algorithms": [algorithm], "issuer": "backworks", "audience": "my-api", "token_expiry_minutes": 5}
    settings.update({"jwt_secret": SECRET} if key is None else {"private_key": f"{key}.pem"})
    config = make_config(keys, **settings)
    assert config.signing_algorithm == algorithm
    token = issue_token(config, "alice", ["admin"], extra_claims={"email": "a@example.com"}, now=NOW)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    verified = verifier_for(config, NOW + 60).verify(token)
    assert verified["sub"] == "alice" and verified["roles"] == ["admin"] and verified["email"] == "a@example.com"
    assert (verified["iat"], verified["exp"], verified["iss"], verified["aud"]) == (int(NOW), int(NOW) + 300, "backworks", "my-api")
    assert len(verified["jti"]) == 32
    assert rejected(verifier_for(config, NOW + 301), token) == "expired"


def test_issue_token_defaults_and_refusals(keys: Keys) -> None:
    config = make_config(keys, jwt_secret=SECRET, default_roles=["reader"])
    assert verifier_for(config).verify(issue_token(config, "bob", now=NOW))["roles"] == ["reader"]
    with pytest.raises(TokenIssueError, match="cannot set exp, sub"):
        issue_token(config, "bob", extra_claims={"sub": "root", "exp": 1})
    with pytest.raises(TokenIssueError, match="cannot sign"):
        issue_token(make_config(keys, public_key="rsa.pub.pem", algorithms=["RS256"]), "bob")
    # the first algorithm it can sign with: RS256 needs the private key, so HS256
    mixed = make_config(keys, jwt_secret=SECRET, public_key="rsa.pub.pem", algorithms=["RS256", "HS256"])
    assert mixed.signing_algorithm == "HS256"


def test_our_signer_matches_pyjwt(keys: Keys) -> None:
    payload = claims()
    for algorithm, key in [("HS256", SECRET.encode()), ("ES256", keys.private["p256"]), ("EdDSA", keys.private["ed25519"])]:
        token = sign_token(payload, algorithm, key)
        verify_key = key if isinstance(key, bytes) else key.public_key()
        assert jwt.decode(token, verify_key, algorithms=[algorithm], options={"verify_exp": False}) == payload


# -- the allowlist and key-type consistency --------------------------------------------------


def test_only_listed_algorithms_are_accepted(keys: Keys) -> None:
    verifier = verifier_for(make_config(keys, jwt_secret=SECRET, algorithms=["HS256"]))
    assert rejected(verifier, encode(claims(), SECRET, "HS512")) == "alg_not_allowed"
    assert rejected(verifier, encode(claims(), keys.private["rsa"], "RS256")) == "alg_not_allowed"
    rsa_only = verifier_for(make_config(keys, public_key="rsa.pub.pem", algorithms=["RS256"]))
    assert rejected(rsa_only, encode(claims(), keys.private["rsa"], "PS256")) == "alg_not_allowed"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused_at_load_and_at_run_time(keys: Keys, alg: str) -> None:
    with pytest.raises(ValueError, match="algorithm 'none' is refused"):
        make_config(keys, jwt_secret=SECRET, algorithms=["HS256", alg])
    unsigned = forge({"alg": alg, "typ": "JWT"}, claims(), b"")
    assert rejected(verifier_for(make_config(keys, jwt_secret=SECRET)), unsigned) == "alg_not_allowed"


def test_hmac_keyed_with_the_public_key_is_refused(keys: Keys) -> None:
    """The algorithm-confusion attack: HS256 signed with the RSA public key's PEM as the secret."""
    pem = keys.public_pem("rsa")
    from jwt.algorithms import HMACAlgorithm

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims(roles=["admin"])).encode())
    signature = HMACAlgorithm(HMACAlgorithm.SHA256).sign(f"{header}.{payload}".encode(), pem)  # bypasses pyjwt's PEM guard
    attack = f"{header}.{payload}.{b64(signature)}"
    # only RS256 allowed: the algorithm is refused
    assert rejected(verifier_for(make_config(keys, public_key="rsa.pub.pem", algorithms=["RS256"])), attack) == "alg_not_allowed"
    # both allowed (secret + public key): HS256 is checked with the secret only, never the public key
    mixed = verifier_for(make_config(keys, jwt_secret=SECRET, public_key="rsa.pub.pem", algorithms=["RS256", "HS256"]))
    assert rejected(mixed, attack) == "bad_signature"
    assert mixed.verify(encode(claims(), keys.private["rsa"], "RS256"))["sub"] == "alice"
    assert mixed.verify(encode(claims(), SECRET, "HS256"))["sub"] == "alice"


def test_a_key_provider_offering_a_public_key_for_hmac_fails_closed(keys: Keys) -> None:
    config = make_config(keys, jwt_secret=SECRET)

    class Confused:
        def keys_for(self, algorithm: str, kid: str | None) -> list[Any]:
            return [keys.private["rsa"].public_key()]

    with pytest.raises(TypeError):
        Verifier(config, Confused(), Clock()).verify(encode(claims(), SECRET, "HS256"))


def test_algorithms_must_fit_the_key_type(keys: Keys) -> None:
    with pytest.raises(ValueError, match=r"ES256 does not fit the configured key \(RSA 2048\)"):
        make_config(keys, public_key="rsa.pub.pem", algorithms=["RS256", "ES256"])
    with pytest.raises(ValueError, match=r"ES384 does not fit the configured key \(EC P-256\)"):
        make_config(keys, public_key="p256.pub.pem", algorithms=["ES384"])
    with pytest.raises(ValueError, match="HS256 needs jwt_secret"):
        make_config(keys, public_key="rsa.pub.pem", algorithms=["HS256"])
    with pytest.raises(ValueError, match="RS256 needs public_key, private_key or jwks_url"):
        make_config(keys, jwt_secret=SECRET, algorithms=["RS256"])
    with pytest.raises(ValueError, match="algorithms is required"):
        make_config(keys, jwt_secret=SECRET, public_key="rsa.pub.pem")


def es256_on_the_wrong_curve(private: Any, kid: str) -> str:
    """A token that says ES256 but is signed (SHA-256 ECDSA) with a P-384 key: pyjwt would not make it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    signing_input = f"{b64(json.dumps({'alg': 'ES256', 'kid': kid}).encode())}.{b64(json.dumps(claims()).encode())}"
    r, s = decode_dss_signature(private.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(48, 'big') + s.to_bytes(48, 'big'))}"


def test_key_type_decides_even_among_jwks_keys(keys: Keys) -> None:
    """ES256 is never checked with a P-384 key, RS256 never with an EC key, whatever the kid says."""
    config = make_config(keys, jwks_url="http://127.0.0.1:1/jwks", algorithms=["ES256", "RS256"])
    jwks = JwksCache("http://127.0.0.1:1/jwks")
    jwks.keys = parse_jwks(jwks_document(("k1", keys.private["p384"]), ("k2", keys.private["p256"])))
    verifier = Verifier(config, KeyRing(config, jwks), Clock())
    assert rejected(verifier, es256_on_the_wrong_curve(keys.private["p384"], "k1")) == "unknown_kid"
    assert verifier.verify(encode(claims(), keys.private["p256"], "ES256", {"kid": "k2"}))["sub"] == "alice"
    assert rejected(verifier, encode(claims(), keys.private["rsa"], "RS256", {"kid": "k2"})) == "unknown_kid"


# -- claims and time -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "changes", "leeway", "reason"),
    [
        (0, {}, 0, None),
        (599, {}, 0, None),
        (600, {}, 0, "expired"),
        (600, {}, 5, None),
        (604, {}, 5, None),
        (605, {}, 5, "expired"),
        (0, {"nbf": int(NOW) + 10}, 0, "not_yet_valid"),
        (0, {"nbf": int(NOW) + 10}, 10, None),
        (10, {"nbf": int(NOW) + 10}, 0, None),
        (0, {"iat": int(NOW) + 30}, 0, "issued_in_future"),
        (0, {"iat": int(NOW) + 30}, 30, None),
        (0, {"exp": NOW + 0.5}, 0, None),
        (0, {"exp": DROP}, 0, "missing_claim"),
        (0, {"exp": "9999999999"}, 0, "invalid_claim"),
        (0, {"exp": True}, 0, "invalid_claim"),
        (0, {"nbf": None}, 0, "invalid_claim"),
        (0, {"iat": [1]}, 0, "invalid_claim"),
        (0, {"exp": 10**400, "nbf": -(10**400), "iat": -(10**400)}, 5, None),  # exact, never converted to float
        (0, {"exp": 10**400, "iat": 10**400}, 5, "issued_in_future"),
    ],
)
def test_time_claims_with_leeway(keys: Keys, offset: float, changes: dict[str, Any], leeway: float, reason: str | None) -> None:
    config = make_config(keys, jwt_secret=SECRET, leeway=leeway)
    token = encode(claims(**changes), SECRET, "HS256")
    verifier = verifier_for(config, NOW + offset)
    if reason is None:
        assert verifier.verify(token)["sub"] == "alice"
    else:
        assert rejected(verifier, token) == reason


def test_leeway_accepts_a_duration(keys: Keys) -> None:
    assert make_config(keys, jwt_secret=SECRET, leeway="2m").leeway == 120


@pytest.mark.parametrize(
    ("settings", "changes", "reason"),
    [
        ({"issuer": "bw"}, {"iss": "bw"}, None),
        ({"issuer": "bw"}, {"iss": "evil"}, "bad_issuer"),
        ({"issuer": "bw"}, {}, "bad_issuer"),
        ({"issuer": "bw"}, {"iss": ["bw"]}, "invalid_claim"),
        ({"audience": "api"}, {"aud": "api"}, None),
        ({"audience": "api"}, {"aud": ["other", "api"]}, None),
        ({"audience": "api"}, {"aud": "other"}, "bad_audience"),
        ({"audience": "api"}, {"aud": []}, "bad_audience"),
        ({"audience": "api"}, {}, "bad_audience"),
        ({"audience": ["api", "api2"]}, {"aud": "api2"}, None),
        ({"audience": "api"}, {"aud": 7}, "invalid_claim"),
        ({}, {"aud": "someone-else"}, "bad_audience"),  # RFC 7519 4.1.3: an audience we are not
        ({"required_claims": ["email", "org.id"]}, {"email": "a@b", "org": {"id": 1}}, None),
        ({"required_claims": ["email"]}, {}, "missing_claim"),
        ({"required_claims": ["email"]}, {"email": None}, "missing_claim"),
        ({}, {"sub": DROP}, "missing_claim"),
        ({}, {"sub": 42}, "invalid_claim"),
        ({}, {"sub": ""}, "invalid_claim"),
        ({}, {"roles": {"admin": True}}, "invalid_claim"),
        ({}, {"roles": ["admin", 1]}, "invalid_claim"),
        ({}, {"permissions": 5}, "invalid_claim"),
    ],
)
def test_issuer_audience_required_and_typed_claims(keys: Keys, settings: dict[str, Any], changes: dict[str, Any], reason: str | None) -> None:
    verifier = verifier_for(make_config(keys, jwt_secret=SECRET, **settings))
    token = sign_token(claims(**changes), "HS256", SECRET.encode())  # pyjwt's encoder would refuse some of these claims
    if reason is None:
        verifier.verify(token)
    else:
        assert rejected(verifier, token) == reason


# -- hostile structure -----------------------------------------------------------------------


def _valid_parts() -> list[str]:
    return encode(claims(), SECRET, "HS256").split(".")


def _hs_with_header(extra: dict[str, Any]) -> str:
    return sign_token(claims(), "HS256", SECRET.encode(), extra)


def _hs_raw(header: str, payload: str) -> str:
    import hashlib
    import hmac

    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}"
    return f"{signing_input}.{b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())}"


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _flip_first(segment: str) -> str:
    return ("B" if segment[0] == "A" else "A") + segment[1:]


def _non_canonical(segment: str) -> str:
    """The same signature bytes, written with one of the unused trailing bits set."""
    return segment[:-1] + _ALPHABET[_ALPHABET.index(segment[-1]) ^ 1]


HOSTILE: list[tuple[str, Callable[[], str], str]] = [
    ("empty", lambda: "", "malformed"),
    ("garbage", lambda: "not-a-token", "malformed"),
    ("two parts", lambda: ".".join(_valid_parts()[:2]), "malformed"),
    ("four parts", lambda: ".".join(_valid_parts() + ["x"]), "malformed"),
    ("JWE", lambda: "a.b.c.d.e", "malformed"),
    ("padding", lambda: ".".join([*_valid_parts()[:2], _valid_parts()[2] + "="]), "malformed"),
    ("bad base64", lambda: ".".join([_valid_parts()[0], "@@@", _valid_parts()[2]]), "malformed"),
    ("oversized", lambda: encode(claims(blob="x" * 9000), SECRET, "HS256"), "malformed"),
    ("header not JSON", lambda: f"{b64(b'nope')}.{_valid_parts()[1]}.{_valid_parts()[2]}", "malformed"),
    ("header a list", lambda: forge("[1]", claims()), "malformed"),
    ("no alg", lambda: forge({"typ": "JWT"}, claims()), "malformed"),
    ("alg number", lambda: forge({"alg": 256}, claims()), "malformed"),
    ("jku", lambda: _hs_with_header({"jku": "https://evil.example/jwks"}), "forbidden_header"),
    ("x5u", lambda: _hs_with_header({"x5u": "https://evil.example/cert"}), "forbidden_header"),
    ("jwk", lambda: _hs_with_header({"jwk": {"kty": "oct", "k": "AAAA"}}), "forbidden_header"),
    ("x5c", lambda: _hs_with_header({"x5c": ["MIIB"]}), "forbidden_header"),
    ("crit", lambda: _hs_with_header({"crit": ["exp"], "exp": 1}), "unsupported_header"),
    ("b64 false", lambda: _hs_with_header({"b64": False, "crit": ["b64"]}), "unsupported_header"),
    ("kid object", lambda: _hs_with_header({"kid": {"path": "/etc/passwd"}}), "malformed"),
    ("kid huge", lambda: _hs_with_header({"kid": "k" * 300}), "malformed"),
    ("duplicate header key", lambda: _hs_raw('{"alg":"HS256","alg":"none"}', json.dumps(claims())), "malformed"),
    ("duplicate claim", lambda: _hs_raw('{"alg":"HS256"}', '{"sub":"alice","sub":"admin","exp":9999999999}'), "malformed"),
    ("NaN exp", lambda: _hs_raw('{"alg":"HS256"}', '{"sub":"alice","exp":NaN}'), "malformed"),
    ("header nested deeply", lambda: f"{b64(b'[' * 2500 + b']' * 2500)}.{_valid_parts()[1]}.{_valid_parts()[2]}", "malformed"),
    ("exp 1e400", lambda: _hs_raw('{"alg":"HS256"}', '{"sub":"alice","exp":1e400}'), "invalid_claim"),
    ("payload a string", lambda: _hs_raw('{"alg":"HS256"}', '"alice"'), "malformed"),
    ("payload not UTF-8", lambda: ".".join([_valid_parts()[0], b64(bytes([0xFF, 0xFE])), _valid_parts()[2]]), "bad_signature"),
    ("tampered payload", lambda: ".".join([_valid_parts()[0], b64(json.dumps(claims(roles=["admin"])).encode()), _valid_parts()[2]]), "bad_signature"),
    ("tampered signature", lambda: ".".join([*_valid_parts()[:2], _flip_first(_valid_parts()[2])]), "bad_signature"),
    ("non-canonical signature", lambda: ".".join([*_valid_parts()[:2], _non_canonical(_valid_parts()[2])]), "malformed"),
    ("truncated signature", lambda: ".".join([*_valid_parts()[:2], _valid_parts()[2][:20]]), "bad_signature"),
    ("empty signature", lambda: ".".join([*_valid_parts()[:2], ""]), "bad_signature"),
    ("other secret", lambda: encode(claims(), OTHER_SECRET, "HS256"), "bad_signature"),
]


@pytest.mark.parametrize(("make", "reason"), [(m, r) for _, m, r in HOSTILE], ids=[n for n, _, _ in HOSTILE])
def test_hostile_tokens_are_rejected_with_a_reason(keys: Keys, make: Callable[[], str], reason: str) -> None:
    assert rejected(verifier_for(make_config(keys, jwt_secret=SECRET)), make()) == reason


def test_a_kid_is_never_a_path(keys: Keys) -> None:
    """Without a JWKS the kid is ignored; with one it is only a dictionary key."""
    token = encode(claims(), keys.private["rsa"], "RS256", {"kid": "../../../../etc/passwd"})
    local = verifier_for(make_config(keys, public_key="rsa.pub.pem", algorithms=["RS256"]))
    assert local.verify(token)["sub"] == "alice"
    config = make_config(keys, jwks_url="http://127.0.0.1:1/jwks", algorithms=["RS256"])
    jwks = JwksCache("http://127.0.0.1:1/jwks")
    jwks.keys = parse_jwks(jwks_document(("k1", keys.private["rsa"])))
    assert rejected(Verifier(config, KeyRing(config, jwks), Clock()), token) == "unknown_kid"


# -- roles, permissions and wildcards --------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "required", "expected"),
    [
        ("resources:read", "resources:read", True),
        ("resources:read", "resources:write", False),
        ("resources:*", "resources:read", True),
        ("resources:*", "resources:read:own", True),
        ("resources:*", "resources", False),
        ("resources:*", "users:read", False),
        ("resources", "resources:read", False),
        ("*", "anything:at:all", True),
        ("*", "resources", True),
        ("*:read", "resources:read", True),
        ("*:read", "resources:write", False),
        ("*:read", "a:b:read", False),
        ("res*:read", "resources:read", True),
        ("res*:read", "users:read", False),
        ("resources:read:*", "resources:read", False),
        ("resources:read:*", "resources:read:own", True),
        ("Resources:read", "resources:read", False),
        ("resources:*:own", "resources:read:own", True),
        ("resources:*:own", "resources:read:all", False),
        ("resources:read", "resources:*", False),
        ("resources:*", "resources:*", True),
    ],
)
def test_permission_wildcards(granted: str, required: str, expected: bool) -> None:
    assert permission_matches(granted, required) is expected


def test_identity_roles_and_permissions(keys: Keys) -> None:
    config = make_config(
        keys,
        jwt_secret=SECRET,
        roles={"admin": ["resources:*"], "user": ["resources:read"]},
        permissions_claim="scope",
        roles_claim="realm_access.roles",
    )
    verifier = verifier_for(config)
    token = encode(claims(roles=DROP, realm_access={"roles": ["user", "admin", "user"]}, scope="billing:read  billing:pay"), SECRET, "HS256")
    identity = verifier.authenticate(token)
    assert identity.roles == ["user", "admin"]
    assert identity.permissions == ["resources:read", "resources:*", "billing:read", "billing:pay"]
    assert identity.claims["realm_access"] == {"roles": ["user", "admin", "user"]}
    # a string of space-separated roles; no roles claim means no roles (default_roles are for registration)
    assert verifier_for(make_config(keys, jwt_secret=SECRET)).authenticate(encode(claims(roles="user admin"), SECRET, "HS256")).roles == ["user", "admin"]
    assert verifier_for(make_config(keys, jwt_secret=SECRET)).authenticate(encode(claims(roles=DROP), SECRET, "HS256")).roles == []


def test_a_claim_named_with_dots_wins_over_the_nested_path(keys: Keys) -> None:
    config = make_config(keys, jwt_secret=SECRET, roles_claim="https://example.com/roles")
    token = encode(claims(roles=DROP, **{"https://example.com/roles": ["admin"]}), SECRET, "HS256")
    assert verifier_for(config).authenticate(token).roles == ["admin"]


@pytest.mark.parametrize(
    ("roles", "permissions", "required_roles", "required_permissions", "denied"),
    [
        (["user"], [], None, None, False),
        (["user"], [], ["user", "admin"], None, False),
        (["user"], [], ["admin"], None, True),
        ([], [], ["user"], None, True),
        (["admin"], ["resources:*"], ["admin"], ["resources:write", "resources:delete"], False),
        (["admin"], ["resources:read"], ["admin"], ["resources:write"], True),
        (["user"], ["resources:read", "users:read"], None, ["resources:read", "users:read"], False),
        (["user"], ["resources:read"], None, ["resources:read", "users:read"], True),
        (["root"], ["*"], None, ["anything"], False),
    ],
)
def test_authorize(roles: list[str], permissions: list[str], required_roles: Any, required_permissions: Any, denied: bool) -> None:
    decision = authorize(Identity("alice", roles, permissions), required_roles, required_permissions)
    assert (decision is not None) is denied
    if denied:
        assert isinstance(decision, Denial)


# -- token sources ---------------------------------------------------------------------------


def request_with(headers: list[tuple[str, str]] | None = None, path: str = "/api") -> http.Request:
    return make_flow("GET", path, headers=headers or []).request


@pytest.mark.parametrize(
    ("sources", "headers", "path", "expected"),
    [
        (["header"], [("Authorization", "Bearer abc.def.ghi")], "/", ("abc.def.ghi", "header")),
        (["header"], [("Authorization", "bearer abc.def.ghi")], "/", ("abc.def.ghi", "header")),
        (["header"], [("Authorization", "BEARER   abc.def.ghi  ")], "/", ("abc.def.ghi", "header")),
        (["header"], [("Authorization", "Basic dXNlcjpwYXNz")], "/", None),
        (["header"], [], "/?access_token=abc", None),
        (["query:access_token"], [], "/?access_token=abc", ("abc", "query:access_token")),
        (["query:access_token"], [], "/?access_token=", None),
        (["cookie:session"], [("Cookie", "a=1; session=tok; b=2")], "/", ("tok", "cookie:session")),
        (["cookie:session"], [("Cookie", "session=")], "/", None),
        (["cookie:session", "header"], [("Authorization", "Bearer h"), ("Cookie", "session=c")], "/", ("c", "cookie:session")),
        (["header", "cookie:session"], [("Authorization", "Bearer h"), ("Cookie", "session=c")], "/", ("h", "header")),
        (["header", "cookie:session"], [("Authorization", "Basic x"), ("Cookie", "session=c")], "/", ("c", "cookie:session")),
        (["header", "query:t"], [], "/?t=q", ("q", "query:t")),
    ],
)
def test_token_sources_in_order(sources: list[str], headers: list[tuple[str, str]], path: str, expected: tuple[str, str] | None) -> None:
    found = extract_token(request_with(headers, path), sources)
    assert (None if found is None else (found.token, found.source)) == expected


@pytest.mark.parametrize(
    ("sources", "headers", "path", "reason"),
    [
        (["header"], [("Authorization", "Bearer a"), ("Authorization", "Bearer b")], "/", "ambiguous"),
        (["header"], [("Authorization", "Bearer")], "/", "malformed"),
        (["header"], [("Authorization", "Bearer  ")], "/", "malformed"),
        (["header"], [("Authorization", "Bearer a b")], "/", "malformed"),
        (["header"], [("Authorization", 'Bearer "quoted"')], "/", "malformed"),
        (["query:t"], [], "/?t=a&t=b", "ambiguous"),
        (["cookie:s"], [("Cookie", "s=a"), ("Cookie", "s=b")], "/", "ambiguous"),
    ],
)
def test_unusable_credentials_are_refused(sources: list[str], headers: list[tuple[str, str]], path: str, reason: str) -> None:
    with pytest.raises(TokenRejected) as info:
        extract_token(request_with(headers, path), sources)
    assert info.value.reason == reason


def test_strip_tokens_removes_every_configured_credential() -> None:
    request = request_with(
        [("Authorization", "Bearer tok"), ("Cookie", "a=1; session=tok; b=2"), ("Cookie", "session=x"), ("X-Other", "1")],
        "/api/items?x=1&access_token=tok&y=%20&access_token=again",
    )
    strip_tokens(request, ["header", "cookie:session", "query:access_token"])
    assert "authorization" not in request.headers
    assert request.headers.get_all("cookie") == ["a=1; b=2"]
    assert request.path == "/api/items?x=1&y=%20"
    basic = request_with([("Authorization", "Basic dXNlcg==")], "/?access_token=tok")
    strip_tokens(basic, ["header", "query:access_token"])
    assert basic.headers["authorization"] == "Basic dXNlcg==" and basic.path == "/"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("alice", "alice"), (7, "7"), (1.5, "1.5"), (True, "true"), (["a", "b"], "a, b"), ({"id": 1}, '{"id":1}'), ("Jürgen", "Jürgen"), ("evil\r\nX-Admin: 1", None), (None, None)],
)
def test_claim_header_values(value: Any, expected: str | None) -> None:
    assert claim_header_value(value) == expected


# -- settings through the loader -------------------------------------------------------------


def test_loader_reports_located_errors(project, load_errors, keys: Keys) -> None:  # type: ignore[no-untyped-def]
    project.write("keys/bad.pem", "not a key\n")
    project.write("keys/rsa.pem", keys.folder.joinpath("rsa.pem").read_text())
    path = project.blueprint(
        """
        name: x
        plugins:
          - type: auth
            config:
              private_key: keys/bad.pem
              algorithms: [RS256, HS265]
              token_sources: [header, "cookie:", body]
              forward_claims: {Authorization: sub, X-Ok: sub}
              jwks_url: http://issuer.example/jwks.json
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    lines = diagnostic_lines(load_errors(path))
    folder = str(project.root)
    assert lines == [
        f"{path}:5:20: plugins[0].config.private_key: private key file {folder}/keys/bad.pem holds no PEM private key",
        f"{path}:6:19: plugins[0].config.algorithms: unknown algorithm 'HS265'; did you mean 'HS256'?",
        f"{path}:7:31: plugins[0].config.token_sources[1]: expected header, cookie:NAME or query:NAME, got 'cookie:'",
        f"{path}:7:42: plugins[0].config.token_sources[2]: expected header, cookie:NAME or query:NAME, got 'body'",
        f"{path}:8:24: plugins[0].config.forward_claims.Authorization: invalid key: header 'Authorization' cannot carry a claim",
        f"{path}:9:17: plugins[0].config.jwks_url: keys must come over https (http:// only for localhost), got 'http://issuer.example/jwks.json'",
    ]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"algorithms": ["none"], "jwt_secret": "x" * 32}, "algorithm 'none' is refused"),
        ({}, "the auth plugin needs a key"),
        ({"jwt_secret": ""}, "jwt_secret is empty"),
        ({"jwt_secret": "-----BEGIN PUBLIC KEY-----\nMIIB"}, "jwt_secret looks like a key"),
        ({"private_key": "missing.pem", "algorithms": ["RS256"]}, "private key file"),
        ({"private_key": "rsa.pub.pem", "algorithms": ["RS256"]}, "holds no PEM private key"),
        ({"public_key": "rsa.pem", "algorithms": ["RS256"]}, "holds a private key"),
        ({"public_key": "rsa1024.pub.pem", "algorithms": ["RS256"]}, "too weak"),
        ({"private_key": "rsa.pem", "public_key": "rsa2.pub.pem", "algorithms": ["RS256"]}, "is not the public half"),
        ({"jwt_secret": SECRET, "algorithms": []}, "at least one algorithm"),
        ({"jwt_secret": SECRET, "token_sources": []}, "at least 1"),
        ({"jwt_secret": SECRET, "token_expiry_minutes": 0}, "greater than 0"),
        ({"jwt_secret": SECRET, "roles": {"admin": ["has space"]}}, "expected a permission"),
        ({"jwt_secret": SECRET, "jwks_url": "ftp://x/"}, "expected an https:// URL"),
        ({"jwt_secret": SECRET, "jwks_url": "http://127.attacker.example/jwks"}, "keys must come over https"),
        ({"jwt_secret": SECRET, "users_file": "no/such/folder/users.json"}, "does not exist"),
        ({"jwt_secret": SECRET, "colour": 1}, "extra"),
    ],
)
def test_config_refusals(keys: Keys, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(keys, **settings)


def test_encrypted_private_keys_are_refused(keys: Keys) -> None:
    pem = keys.private["p256"].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    (keys.folder / "encrypted.pem").write_bytes(pem)
    with pytest.raises(ValueError, match="is encrypted"):
        make_config(keys, private_key="encrypted.pem", algorithms=["ES256"])


def test_config_defaults_and_derived_keys(keys: Keys) -> None:
    config = make_config(keys, jwt_secret=SECRET)
    assert config.allowed_algorithms == ["HS256"]
    assert (config.token_sources, config.default_roles, config.forward_claims, config.strip_token) == (["header"], ["user"], {"X-User": "sub"}, False)
    assert (config.roles_claim, config.permissions_claim, config.leeway, config.token_expiry_minutes) == ("roles", "permissions", 0, 60)
    assert SECRET not in repr(config)
    signer = make_config(keys, private_key="ed25519.pem", algorithms=["EdDSA"])
    assert signer.verification_key is not None and signer.signing_algorithm == "EdDSA"
    cert_free = make_config(keys, public_key="p256.pub.pem", algorithms=["ES256"])
    assert cert_free.signing_algorithm is None


def test_enabled_inside_config_disables_the_plugin(project, load_errors, load) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: x
        plugins:
          - type: auth
            config: {enabled: false, jwt_secret: abc}
        middlewares:
          - {name: authenticate, plugin: auth, config: {path: "/api*"}}
        endpoints:
          - {path: /api, handler: static, config: {static: {}}}
        """
    )
    assert diagnostic_lines(load_errors(path)) == [f"{path}:6:34: middlewares[0].plugin: plugin 'auth' is disabled in `plugins`"]
    path.write_text(path.read_text().replace("enabled: false", "enabled: true"))
    assert load(path).plugin_configs["auth"].allowed_algorithms == ["HS256"]


def test_a_middleware_without_plugin_settings_names_the_problem(project, load_errors) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: x
        middlewares:
          - {name: authenticate, plugin: auth, config: {roles: [user]}}
        endpoints:
          - {path: /api, handler: static, config: {static: {}}, middleware: [authenticate]}
        """
    )
    assert diagnostic_lines(load_errors(path)) == [
        f"{path}:3:34: middlewares[0].plugin: plugin 'auth' needs settings: add it under `plugins` with its `config`"
    ]


def test_lint_warnings(project, load) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: x
        plugins:
          auth:
            config: {jwt_secret: short, users_file: users.json}
        endpoints:
          - {path: /ok, handler: static, config: {static: {}}}
        """
    )
    messages = [w.message for w in load(path).warnings if w.key_path.startswith("plugins.auth")]
    assert messages == ["jwt_secret is 5 bytes; HS256 wants at least 32 random bytes (RFC 7518 §3.2)"]


def test_middleware_config_refusals() -> None:
    with pytest.raises(ValueError):
        AuthMiddlewareConfig.model_validate({"roles": []})
    with pytest.raises(ValueError, match="expected a permission"):
        AuthMiddlewareConfig.model_validate({"permissions": ['a"b']})
    assert AuthMiddlewareConfig.model_validate({"path": "/api*", "methods": ["get"], "roles": ["user"]}).methods == ["GET"]


def test_user_handlers_need_the_user_store(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "addons.auth.handlers", None)  # as if the user endpoints were missing
    with pytest.raises(BuildError, match="'auth.login' is not available"):
        AuthPlugin().build_handler("auth.login", None, make_config(keys, jwt_secret=SECRET))  # type: ignore[arg-type]


# -- JWKS cache ------------------------------------------------------------------------------


def jwks_document(*entries: tuple[str | None, Any], extra: list[dict[str, Any]] | None = None) -> bytes:
    keys_out: list[dict[str, Any]] = []
    for kid, private in entries:
        public = private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
        else:
            jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))
        if kid is not None:
            jwk["kid"] = kid
        keys_out.append(jwk)
    return json.dumps({"keys": keys_out + (extra or [])}).encode()


class FakeIssuer:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls = 0
        self.fail = False

    async def __call__(self, url: str, timeout: float) -> bytes:
        self.calls += 1
        await asyncio.sleep(0)
        if self.fail:
            raise OSError("connection refused")
        return self.body


def test_parse_jwks_keeps_only_public_signing_keys(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    rsa_private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys.private["rsa2"]))
    weak = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys.private["rsa1024"].public_key()))
    extra = [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
        {**rsa_private, "kid": "private"},
        {**weak, "kid": "weak"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(keys.private["p256"].public_key())), "kid": "enc", "use": "enc"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"},
        "not an object",
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(keys.private["p384"].public_key())), "kid": "hs", "alg": "HS256"},
    ]
    parsed = parse_jwks(jwks_document(("r1", keys.private["rsa"]), (None, keys.private["ed25519"]), extra=extra))
    assert [(k.kid, type(k.key).__name__) for k in parsed] == [("r1", "RSAPublicKey"), (None, "Ed25519PublicKey")]
    for bad in (b"nope", b"[]", b'{"keys": {}}', b'{"keys": [], "keys": []}'):
        with pytest.raises(Exception):
            parse_jwks(bad)


async def test_jwks_refresh_is_bounded(keys: Keys) -> None:
    clock = Clock(0.0)
    issuer = FakeIssuer(jwks_document(("k1", keys.private["rsa"])))
    # verified_cache_size=0: every verify looks at the keys (a cache hit would skip the JWKS)
    config = make_config(
        keys, jwks_url="https://issuer.example/jwks", algorithms=["RS256"], jwks_min_interval=30, jwks_max_age=600, verified_cache_size=0
    )
    authenticator = Authenticator(config, clock=Clock(NOW), monotonic=clock, fetch=issuer)
    token_k1 = encode(claims(), keys.private["rsa"], "RS256", {"kid": "k1"})
    assert (await authenticator.verify(token_k1))["sub"] == "alice"
    assert issuer.calls == 1
    await authenticator.verify(token_k1)  # known kid: no fetch
    assert issuer.calls == 1
    # a flood of unknown kids inside the interval: no fetch at all
    for index in range(50):
        with pytest.raises(TokenRejected) as info:
            await authenticator.verify(encode(claims(), keys.private["rsa2"], "RS256", {"kid": f"x{index}"}))
        assert info.value.reason == "unknown_kid"
    assert issuer.calls == 1
    # rotation: a new kid appears; after the interval one fetch finds it
    issuer.body = jwks_document(("k1", keys.private["rsa"]), ("k2", keys.private["rsa2"]))
    clock.now = 31.0
    token_k2 = encode(claims(), keys.private["rsa2"], "RS256", {"kid": "k2"})
    results = await asyncio.gather(*(authenticator.verify(token_k2) for _ in range(20)))
    assert all(r["sub"] == "alice" for r in results) and issuer.calls == 2
    # the issuer fails: the known keys stay, and failures are rate-limited too
    issuer.fail = True
    clock.now = 62.0
    with pytest.raises(TokenRejected):
        await authenticator.verify(encode(claims(), keys.private["rsa2"], "RS256", {"kid": "k3"}))
    assert issuer.calls == 3
    await authenticator.verify(token_k2)
    with pytest.raises(TokenRejected):
        await authenticator.verify(encode(claims(), keys.private["rsa2"], "RS256", {"kid": "k4"}))
    assert issuer.calls == 3
    # too old: fetched again on the next use, even for a known kid
    issuer.fail = False
    clock.now = 31.0 + 600
    await authenticator.verify(token_k1)
    assert issuer.calls == 4


async def test_jwks_keys_without_kid_and_hostile_tokens_fetch_nothing(keys: Keys) -> None:
    issuer = FakeIssuer(jwks_document((None, keys.private["p256"])))
    config = make_config(keys, jwks_url="https://issuer.example/jwks", algorithms=["ES256"])
    authenticator = Authenticator(config, clock=Clock(NOW), monotonic=Clock(0.0), fetch=issuer)
    with pytest.raises(TokenRejected):
        await authenticator.verify(encode(claims(), SECRET, "HS256"))  # refused before any key is looked up
    assert issuer.calls == 0
    assert (await authenticator.verify(encode(claims(), keys.private["p256"], "ES256")))["sub"] == "alice"
    assert issuer.calls == 1


# -- the middleware in a gateway -------------------------------------------------------------

ECHO = '''
def handler(request):
    return {
        "headers": [[k, v] for k, v in request.headers.items(multi=True)],
        "path": request.path,
        "query": [[k, v] for k, v in request.query.items(multi=True)],
        "user": None if request.user is None else {"username": request.user.username, "roles": request.user.roles, "permissions": request.user.permissions},
    }
'''

GATEWAY = """
name: auth-test
plugins:
  - type: auth
    config:
      enabled: true
      jwt_secret: "%(secret)s"
      issuer: backworks
      token_sources: [header, cookie:session, query:access_token]
      forward_claims: {X-User: sub, X-Org: org.id, X-Roles: roles}
      strip_token: %(strip)s
      audit: %(audit)s
      roles: {admin: ["resources:*"], user: ["resources:read"]}
middlewares:
  - name: authenticate
    plugin: auth
    config: {path: "/api/resources*", roles: [user, admin]}
  - name: admin_only
    plugin: auth
    config: {path: "/api/resources", methods: [POST, PUT, DELETE], roles: [admin]}
  - name: can_write
    plugin: auth
    config: {permissions: ["resources:write"]}
endpoints:
  - {path: /api/resources, method: [GET, POST], handler: handlers/echo.py}
  - {path: "/api/resources/:id", handler: handlers/echo.py, middleware: [authenticate]}
  - {path: "/api/resources/:id", method: PUT, handler: handlers/echo.py, middleware: [authenticate, admin_only]}
  - {path: /api/write, handler: handlers/echo.py, middleware: [authenticate, can_write]}
  - {path: /api/me, handler: static, config: {static: {body: {me: "{{auth.sub}}"}}}, middleware: [authenticate]}
  - {path: /open, handler: handlers/echo.py}
"""


@pytest.fixture
def gateway_for(project, compile_gateway):  # type: ignore[no-untyped-def]
    def build(strip: bool = False, audit: str = "all"):  # type: ignore[no-untyped-def]
        project.write("handlers/echo.py", ECHO)
        return compile_gateway(project.blueprint(GATEWAY % {"secret": SECRET, "strip": "true" if strip else "false", "audit": audit}))

    return build


def token_for(username: str = "alice", roles: list[str] | None = None, **extra: Any) -> str:
    payload = {"sub": username, "iss": "backworks", "exp": int(time.time()) + 600, "roles": roles if roles is not None else ["user"], **extra}
    return encode(payload, SECRET, "HS256")


def echoed_headers(flow: http.HTTPFlow) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for name, value in body_json(flow.response)["headers"]:
        result.setdefault(name.lower(), []).append(value)
    return result


async def test_missing_and_invalid_tokens_are_401(gateway_for, send) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_for()
    flow = await send(gateway, "GET", "/api/resources")
    assert flow.response.status_code == 401
    assert flow.response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token", error_description="no bearer token in the request"'
    body = body_json(flow.response)
    assert body["error"] == "not authenticated: no bearer token in the request" and body["status"] == 401 and body["request_id"]
    assert "backworks: " in flow.comment and "auth=denied:missing" in flow.comment

    expired = encode({"sub": "alice", "iss": "backworks", "exp": 1000, "roles": ["user"]}, SECRET, "HS256")
    flow = await send(gateway, "GET", "/api/resources", headers={"Authorization": f"Bearer {expired}"})
    assert flow.response.status_code == 401
    assert flow.response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token", error_description="the token has expired"'
    assert "headers" not in body_json(flow.response)  # the handler never ran


async def test_valid_token_passes_with_the_identity(gateway_for, send) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_for()
    flow = await send(gateway, "GET", "/api/resources/7", headers={"Authorization": f"Bearer {token_for()}"})
    assert flow.response.status_code == 200
    body = body_json(flow.response)
    assert body["user"] == {"username": "alice", "roles": ["user"], "permissions": ["resources:read"]}
    assert "auth=alice" in flow.comment
    me = await send(gateway, "GET", "/api/me", headers={"Authorization": f"bearer {token_for('bob')}"})
    assert body_json(me.response) == {"me": "bob"}
    open_flow = await send(gateway, "GET", "/open")
    assert body_json(open_flow.response)["user"] is None


async def test_a_valid_token_without_the_role_or_permission_is_403(gateway_for, send) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_for()
    flow = await send(gateway, "PUT", "/api/resources/7", headers={"Authorization": f"Bearer {token_for()}"})
    assert flow.response.status_code == 403
    assert flow.response.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope", error_description="requires one of the roles admin"'
    assert body_json(flow.response)["error"] == "insufficient permissions: requires one of the roles admin"
    assert "auth=alice:forbidden" in flow.comment
    # the admin_only filter (POST /api/resources) applies by path, no reference needed
    post = await send(gateway, "POST", "/api/resources", headers={"Authorization": f"Bearer {token_for()}"})
    assert post.response.status_code == 403
    admin = await send(gateway, "PUT", "/api/resources/7", headers={"Authorization": f"Bearer {token_for(roles=['admin'])}"})
    assert admin.response.status_code == 200
    write = await send(gateway, "GET", "/api/write", headers={"Authorization": f"Bearer {token_for(roles=['user'])}"})
    assert write.response.status_code == 403
    assert write.response.headers["WWW-Authenticate"] == (
        'Bearer error="insufficient_scope", error_description="requires the permissions resources:write", scope="resources:write"'
    )
    granted = await send(gateway, "GET", "/api/write", headers={"Authorization": f"Bearer {token_for(roles=['user', 'admin'])}"})
    assert granted.response.status_code == 200


async def test_forward_claims_replace_spoofed_headers(gateway_for, send) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_for()
    token = token_for(roles=["user", "admin"], org={"id": 42})
    flow = await send(
        gateway, "GET", "/api/resources/1", headers=[("Authorization", f"Bearer {token}"), ("X-User", "root"), ("x-user", "root2"), ("X-Org", "1")]
    )
    headers = echoed_headers(flow)
    assert headers["x-user"] == ["alice"] and headers["x-org"] == ["42"] and headers["x-roles"] == ["user, admin"]
    assert headers["authorization"] == [f"Bearer {token}"]  # strip_token is off
    # a claim that is absent: the client's header is still removed
    flow = await send(gateway, "GET", "/api/resources/1", headers=[("Authorization", f"Bearer {token_for()}"), ("X-Org", "spoofed")])
    assert "x-org" not in echoed_headers(flow)


async def test_forward_claims_names_are_the_gateways_on_every_route(gateway_for, send) -> None:  # type: ignore[no-untyped-def]
    """Twins (`X_User`) and Connection tokens cannot bring a client's value through, with or without auth."""
    gateway = gateway_for()
    headers = [("Authorization", f"Bearer {token_for()}"), ("Connection", "X-User, X-Roles"), ("X_User", "admin"), ("x-roles ", "admin")]
    flow = await send(gateway, "GET", "/api/resources/1", headers=headers)
    seen = {name.replace("_", "-").strip(): values for name, values in echoed_headers(flow).items()}
    assert seen["x-user"] == ["alice"] and seen["x-roles"] == ["user"]
    flow = await send(gateway, "GET", "/open", headers=[("X-User", "admin"), ("X_Org", "1"), ("X-ROLES", "admin")])
    assert not {"x-user", "x_org", "x-org", "x-roles"} & set(echoed_headers(flow))


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ([("Authorization", "Bearer {token}"), ("Cookie", "session=other; theme=dark")], "/api/resources/1?a=1&access_token=zzz"),
        ([("Cookie", "theme=dark; session={token}")], "/api/resources/1?a=1"),
        ([], "/api/resources/1?a=1&access_token={token}"),
    ],
    ids=["header", "cookie", "query"],
)
async def test_strip_token_removes_the_credential_from_what_goes_on(gateway_for, send, headers, path) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_for(strip=True)
    token = token_for()
    flow = await send(gateway, "GET", path.format(token=token), headers=[(n, v.format(token=token)) for n, v in headers])
    assert flow.response.status_code == 200, flow.response.get_content()
    body = body_json(flow.response)
    headers_seen = echoed_headers(flow)
    assert "authorization" not in headers_seen
    assert headers_seen.get("cookie", []) in ([], ["theme=dark"])
    assert body["query"] == [["a", "1"]]
    assert token not in json.dumps(body)
    assert headers_seen["x-user"] == ["alice"]


async def test_two_auth_middlewares_share_one_verification_even_after_stripping(gateway_for, send) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_for(strip=True)
    flow = await send(gateway, "PUT", "/api/resources/7", headers={"Authorization": f"Bearer {token_for(roles=['admin'])}"})
    assert flow.response.status_code == 200


async def test_an_exception_inside_verification_denies(gateway_for, send, caplog) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_for()

    class Broken:
        def keys_for(self, algorithm: str, kid: str | None) -> list[Any]:
            raise RuntimeError("key store down")

    for plan in gateway.middlewares:
        plan.instance.authenticator.verifier.keys = Broken()
    token = token_for(roles=["admin"])
    with caplog.at_level(logging.INFO, logger="addons.auth"):
        flow = await send(gateway, "GET", "/api/resources/1", headers={"Authorization": f"Bearer {token}"})
    assert flow.response.status_code == 500
    body = body_json(flow.response)
    assert body["error"] == "authentication failed in middleware 'authenticate'; the request was denied"
    assert "headers" not in body
    assert "auth=error" in flow.comment
    assert "key store down" in caplog.text and token not in caplog.text


async def test_audit_log_names_who_what_and_why_never_the_token(gateway_for, send, caplog) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_for()
    good, bad = token_for(), token_for(roles=["user"])[:-4] + "AAAA"
    tokens = [good, bad]
    with caplog.at_level(logging.INFO, logger="addons.auth"):
        await send(gateway, "GET", "/api/resources/1", headers={"Authorization": f"Bearer {good}"})
        await send(gateway, "GET", "/api/resources/1", headers={"Authorization": f"Bearer {bad}"})
        await send(gateway, "PUT", "/api/resources/1", headers={"Cookie": f"session={good}"})
        query_token = token_for("carol")
        tokens.append(query_token)
        await send(gateway, "GET", f"/api/resources?access_token={query_token}")
        await send(gateway, "GET", "/api/resources")
    records = [r for r in caplog.records if r.name == "addons.auth"]
    lines = [(r.levelname, r.getMessage().split("] ", 1)[1]) for r in records]
    assert lines == [
        ("INFO", 'auth allowed sub=alice GET /api/resources/1 endpoint="GET /api/resources/:id" middleware=authenticate roles=user'),
        ("WARNING", 'auth denied 401 sub=- GET /api/resources/1 endpoint="GET /api/resources/:id" middleware=authenticate reason=bad_signature (the token\'s signature does not verify)'),
        ("INFO", 'auth allowed sub=alice PUT /api/resources/1 endpoint="PUT /api/resources/:id" middleware=authenticate roles=user'),
        ("WARNING", 'auth denied 403 sub=alice PUT /api/resources/1 endpoint="PUT /api/resources/:id" middleware=admin_only reason=forbidden (requires one of the roles admin)'),
        ("INFO", 'auth allowed sub=carol GET /api/resources endpoint="GET,POST /api/resources" middleware=authenticate roles=user'),
        ("WARNING", 'auth denied 401 sub=- GET /api/resources endpoint="GET,POST /api/resources" middleware=authenticate reason=missing (no bearer token in the request)'),
    ]
    for token in tokens:
        assert token not in caplog.text
        for part in token.split("."):
            assert part not in caplog.text


@pytest.mark.parametrize(("audit", "expected"), [("denied", ["WARNING"]), ("none", [])])
async def test_audit_logs_allowed_requests_only_when_asked(gateway_for, send, caplog, audit: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    """The default (`denied`) keeps a line per request out of mitmproxy's log dispatch."""
    gateway = gateway_for(audit=audit)
    with caplog.at_level(logging.DEBUG, logger="addons.auth"):
        allowed = await send(gateway, "GET", "/api/resources/1", headers={"Authorization": f"Bearer {token_for()}"})
        denied = await send(gateway, "GET", "/api/resources/1")
    assert (allowed.response.status_code, denied.response.status_code) == (200, 401)
    assert [r.levelname for r in caplog.records if r.name == "addons.auth"] == expected


async def test_plugin_methods_for_the_user_handlers(keys: Keys) -> None:
    plugin = AuthPlugin()
    config = make_config(keys, jwt_secret=SECRET, issuer="backworks", roles={"admin": ["resources:*"]})
    token = plugin.issue_token(config, "alice", ["admin"], {"email": "a@example.com"})
    identity = await plugin.verify_token(config, token)
    assert (identity.username, identity.roles, identity.permissions, identity.claims["email"]) == ("alice", ["admin"], ["resources:*"], "a@example.com")
    with pytest.raises(TokenRejected):
        await plugin.verify_token(config, token[:-3] + "AAA")


async def test_authenticator_is_shared_per_config_and_pruned(keys: Keys) -> None:
    plugin = AuthPlugin()
    first, second = make_config(keys, jwt_secret=SECRET), make_config(keys, jwt_secret=SECRET)
    assert plugin.authenticator_for(first) is plugin.authenticator_for(first)
    assert plugin.authenticator_for(second) is not plugin.authenticator_for(first)
    plugin.apply_blueprint(second, None)  # type: ignore[arg-type]
    assert list(plugin._authenticators.values())[0].config is second and len(plugin._authenticators) == 1


# -- interoperability with another JOSE implementation ---------------------------------------

INTEROP_CASES = [("HS256", None), ("HS512", None), ("RS256", "rsa"), ("PS256", "rsa"), ("ES256", "p256"), ("ES384", "p384"), ("ES512", "p521"), ("EdDSA", "ed25519")]


@pytest.mark.parametrize(("algorithm", "key"), INTEROP_CASES)
def test_interop_with_jwcrypto(keys: Keys, algorithm: str, key: str | None) -> None:
    """Tokens jwcrypto signs verify here, and tokens issue_token signs verify in jwcrypto."""
    from jwcrypto import jwk as jose_jwk
    from jwcrypto import jwt as jose_jwt

    if key is None:
        private = public = jose_jwk.JWK(kty="oct", k=b64(SECRET.encode()))
        config = make_config(keys, jwt_secret=SECRET, algorithms=[algorithm], issuer="backworks", audience="my-api")
    else:
        private = jose_jwk.JWK.from_pem(_pem_private(keys.private[key]))
        public = jose_jwk.JWK.from_pem(keys.public_pem(key))
        config = make_config(keys, private_key=f"{key}.pem", algorithms=[algorithm], issuer="backworks", audience="my-api")
    now = int(time.time())
    theirs = jose_jwt.JWT(
        header={"alg": algorithm, "typ": "JWT"},
        claims={"sub": "alice", "iss": "backworks", "aud": "my-api", "iat": now, "exp": now + 300, "roles": ["admin"]},
    )
    theirs.make_signed_token(private)
    identity = Verifier(config, KeyRing(config), time.time).authenticate(theirs.serialize())
    assert (identity.username, identity.roles) == ("alice", ["admin"])

    ours = issue_token(config, "bob", ["user"])
    checked = jose_jwt.JWT(jwt=ours, key=public, algs=[algorithm], check_claims={"iss": "backworks", "aud": "my-api", "exp": None})
    assert json.loads(checked.claims)["sub"] == "bob"


def test_interop_jwks_written_by_jwcrypto(keys: Keys) -> None:
    from jwcrypto import jwk as jose_jwk

    key_set = jose_jwk.JWKSet()
    for name, kid in (("rsa", "r1"), ("p256", "e1"), ("ed25519", "o1")):
        exported = json.loads(jose_jwk.JWK.from_pem(keys.public_pem(name)).export_public())
        key_set.add(jose_jwk.JWK(**{**exported, "kid": kid}))
    parsed = parse_jwks(key_set.export(private_keys=False).encode())
    assert sorted((k.kid, describe_key(k.key)) for k in parsed) == [("e1", "EC P-256"), ("o1", "Ed25519"), ("r1", "RSA 2048")]


# -- the cache of verified tokens --------------------------------------------------------------


class CountingVerifier:
    """Wraps an Authenticator's verifier.check and counts the full verifications."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.calls = 0
        check = authenticator.verifier.check

        def counted(parsed: Any) -> dict[str, Any]:
            self.calls += 1
            return check(parsed)

        authenticator.verifier.check = counted  # type: ignore[method-assign]


def cached_authenticator(keys: Keys, clock: Clock, **settings: Any) -> tuple[Authenticator, CountingVerifier]:
    config = make_config(keys, jwt_secret=SECRET, **settings)
    authenticator = Authenticator(config, clock=clock)
    return authenticator, CountingVerifier(authenticator)


def test_verified_cache_settings(keys: Keys) -> None:
    config = make_config(keys, jwt_secret=SECRET)
    assert (config.verified_cache_size, config.verified_cache_ttl) == (1024, 60.0)
    assert make_config(keys, jwt_secret=SECRET, verified_cache_ttl="5m").verified_cache_ttl == 300.0
    for bad in ({"verified_cache_size": -1}, {"verified_cache_ttl": 0}, {"verified_cache_ttl": -5}):
        with pytest.raises(ValueError):
            make_config(keys, jwt_secret=SECRET, **bad)


async def test_verified_cache_hit(keys: Keys) -> None:
    clock = Clock()
    authenticator, counter = cached_authenticator(keys, clock)
    token = encode(claims(), SECRET, "HS256")
    first = await authenticator.verify(token)
    clock.now += 30
    second = await authenticator.verify(token)
    assert first == second and second["sub"] == "alice" and counter.calls == 1
    assert (await authenticator.authenticate(token)).username == "alice" and counter.calls == 1


async def test_verified_cache_miss_after_exp(keys: Keys) -> None:
    clock = Clock()
    authenticator, counter = cached_authenticator(keys, clock, leeway=5)
    token = encode(claims(exp=int(NOW) + 20), SECRET, "HS256")  # exp before the TTL runs out
    await authenticator.verify(token)
    clock.now = NOW + 24.9  # inside exp + leeway: a hit
    await authenticator.verify(token)
    assert counter.calls == 1
    clock.now = NOW + 25  # exp + leeway: a miss, verified again, and rejected
    with pytest.raises(TokenRejected) as info:
        await authenticator.verify(token)
    assert info.value.reason == "expired" and counter.calls == 2
    assert not authenticator._verified  # the stale entry is dropped, the rejection not cached


async def test_verified_cache_miss_after_ttl(keys: Keys) -> None:
    clock = Clock()
    authenticator, counter = cached_authenticator(keys, clock, verified_cache_ttl=10)
    token = encode(claims(), SECRET, "HS256")  # exp NOW + 600: the TTL is the bound
    await authenticator.verify(token)
    clock.now = NOW + 9.9
    await authenticator.verify(token)
    assert counter.calls == 1
    clock.now = NOW + 10
    assert (await authenticator.verify(token))["sub"] == "alice"
    assert counter.calls == 2  # verified in full again, and cached anew
    clock.now = NOW + 19.9
    await authenticator.verify(token)
    assert counter.calls == 2


async def test_verified_cache_ttl_bounds_a_removed_key(keys: Keys) -> None:
    """After a key leaves the JWKS, a cached token keeps working at most verified_cache_ttl."""
    monotonic = Clock(0.0)
    clock = Clock()
    issuer = FakeIssuer(jwks_document(("k1", keys.private["rsa"])))
    config = make_config(
        keys, jwks_url="https://issuer.example/jwks", algorithms=["RS256"], jwks_min_interval=0, jwks_max_age=1, verified_cache_ttl=60
    )
    authenticator = Authenticator(config, clock=clock, monotonic=monotonic, fetch=issuer)
    token = encode(claims(), keys.private["rsa"], "RS256", {"kid": "k1"})
    await authenticator.verify(token)
    issuer.body = jwks_document(("k2", keys.private["rsa2"]))  # k1 removed
    monotonic.now = 30.0  # the JWKS is stale (max age 1 s), the cache entry is not
    clock.now = NOW + 30
    assert (await authenticator.verify(token))["sub"] == "alice"
    assert issuer.calls == 1
    clock.now = NOW + 60
    with pytest.raises(TokenRejected) as info:
        await authenticator.verify(token)
    assert info.value.reason == "unknown_kid" and issuer.calls == 2


async def test_verified_cache_evicts_least_recently_used(keys: Keys) -> None:
    clock = Clock()
    authenticator, counter = cached_authenticator(keys, clock, verified_cache_size=2)
    a, b, c = (encode(claims(sub=name), SECRET, "HS256") for name in ("a", "b", "c"))
    await authenticator.verify(a)
    await authenticator.verify(b)
    await authenticator.verify(a)  # a is now the most recently used
    assert counter.calls == 2
    await authenticator.verify(c)  # evicts b
    assert counter.calls == 3 and len(authenticator._verified) == 2
    await authenticator.verify(a)
    await authenticator.verify(c)
    assert counter.calls == 3
    await authenticator.verify(b)  # evicted: verified again (and evicts a)
    assert counter.calls == 4 and len(authenticator._verified) == 2


async def test_verified_cache_size_zero_disables(keys: Keys) -> None:
    clock = Clock()
    authenticator, counter = cached_authenticator(keys, clock, verified_cache_size=0)
    token = encode(claims(), SECRET, "HS256")
    for _ in range(3):
        assert (await authenticator.verify(token))["sub"] == "alice"
    assert counter.calls == 3 and not authenticator._verified


async def test_verified_cache_tampered_copy_is_rejected(keys: Keys) -> None:
    clock = Clock()
    authenticator, counter = cached_authenticator(keys, clock)
    token = encode(claims(), SECRET, "HS256")
    await authenticator.verify(token)
    header, payload, signature = token.split(".")
    forged_payload = b64(json.dumps({**claims(), "roles": ["admin"]}).encode())
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for tampered in (f"{header}.{forged_payload}.{signature}", f"{header}.{payload}.{flipped}", token + " "):
        with pytest.raises(TokenRejected):
            await authenticator.verify(tampered)
    with pytest.raises(TokenRejected):  # rejections are never cached: rejected again in full
        await authenticator.verify(f"{header}.{forged_payload}.{signature}")
    assert counter.calls == 4 and len(authenticator._verified) == 1
    assert (await authenticator.verify(token))["roles"] == ["user"] and counter.calls == 4


async def test_verified_cache_returns_copies(keys: Keys) -> None:
    clock = Clock()
    authenticator, counter = cached_authenticator(keys, clock)
    token = encode(claims(realm_access={"roles": ["user"]}), SECRET, "HS256")
    first = await authenticator.verify(token)  # the miss's own dict
    first["sub"] = "mallory"
    first["roles"].append("admin")
    first["realm_access"]["roles"].append("admin")
    second = await authenticator.verify(token)  # a hit
    assert counter.calls == 1
    assert (second["sub"], second["roles"], second["realm_access"]) == ("alice", ["user"], {"roles": ["user"]})
    second["roles"].append("admin")
    second["realm_access"]["roles"].clear()
    third = await authenticator.verify(token)
    assert (third["roles"], third["realm_access"]) == (["user"], {"roles": ["user"]}) and third is not second
    assert counter.calls == 1


# Demo secrets (issue 17, item 8): published or placeholder HS* secrets are a located warning


@pytest.mark.parametrize(
    "secret",
    [
        "auth-api-demo-secret-do-not-use-in-production",  # the auth-api example's fallback
        "secret", "changeme", "CHANGE_ME", "your-secret-key", "your-256-bit-secret", "supersecret", "keyboard cat",
        "my-demo-secret-that-is-long-enough-for-hs256-really",  # a placeholder by its words, whatever its length
        "replace-me-with-a-real-secret-of-32-bytes-or-more",
        "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t", "0123456789abcdef0123456789abcdef", "x" * 64,  # a pattern repeated
    ],
)
def test_a_demo_secret_is_a_lint_warning(project, load, secret: str) -> None:  # type: ignore[no-untyped-def]
    from addons.auth import demo_secret_reason

    assert demo_secret_reason(secret) is not None
    path = project.blueprint(
        f"""
        name: x
        plugins:
          auth:
            config: {{jwt_secret: {json.dumps(secret)}}}
        endpoints:
          - {{path: /ok, handler: static, config: {{static: {{}}}}}}
        """
    )
    messages = [w.message for w in load(path).warnings if w.key_path.startswith("plugins.auth")]
    demo = [m for m in messages if "can forge tokens" in m]
    assert len(demo) == 1, messages
    assert "secrets.token_urlsafe(48)" in demo[0]


@pytest.mark.parametrize("secret", ["kJ8s9fL2mQ7xP3zR5tV1wY4bN6cD0eGhT", "integration-test-secret-of-at-least-32-bytes", "Zr3Qy0pX8wLk2VbN7tC5mH1sJ9dF4gA6eU0iO3yT8rW2qE5z"])
def test_a_random_secret_is_no_demo_secret(secret: str) -> None:
    from addons.auth import demo_secret_reason

    assert demo_secret_reason(secret) is None


def test_a_short_demo_secret_gets_both_warnings(project, load) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint("name: x\nplugins:\n  auth:\n    config: {jwt_secret: secret}\nendpoints:\n  - {path: /ok, handler: static, config: {static: {}}}\n")
    messages = [w.message for w in load(path).warnings if w.key_path.startswith("plugins.auth")]
    assert len(messages) == 2 and "jwt_secret is 6 bytes; HS256 wants at least 32 random bytes (RFC 7518 §3.2)" in messages
    assert any(m.startswith("jwt_secret is a well-known example value: ") for m in messages)


def test_validate_warns_on_the_auth_api_example_without_jwt_secret(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from backworks_cli.cli import main

    example = Path(__file__).resolve().parents[2] / "blueprints" / "auth-api" / "blueprint.yaml"
    monkeypatch.delenv("JWT_SECRET", raising=False)
    assert main(["validate", str(example)]) == 0
    out, err = capsys.readouterr()
    assert "1 warning(s)" in out
    (line,) = [w for w in err.splitlines() if "can forge tokens" in w]
    assert line.startswith(f"{example}:16:") and ": warning: plugins[0].config.jwt_secret: jwt_secret is a well-known example value" in line, line
    import secrets

    monkeypatch.setenv("JWT_SECRET", secrets.token_urlsafe(48))
    assert main(["validate", str(example)]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in out + err
