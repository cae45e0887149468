"""Tokens: where a request carries one (`extract_token`), whether it is genuine and current
(`Verifier`: strict compact JWS, algorithm allowlist, claims), and signing (`issue_token`,
`sign_token`) for auth.login/auth.register. Pure apart from the clock and the keys."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from cryptography.exceptions import InvalidSignature
from jwt.algorithms import get_default_algorithms
from mitmproxy import http

from addons.auth.keys import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, key_fits
from addons.auth.settings import AuthConfig
from backworks_core.context import Identity

MAX_TOKEN_LENGTH = 8192  # characters of a compact JWS; beyond it the token is malformed
MAX_KID_LENGTH = 256

# Header parameters that name a key by URL or carry one: keys never come from the token itself.
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c")
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 b64token
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


REASONS = {
    "missing": "no bearer token in the request",
    "ambiguous": "more than one token in the request",
    "malformed": "the token is malformed",
    "alg_not_allowed": "the token's algorithm is not allowed",
    "forbidden_header": "the token names its own key (jku, x5u, jwk or x5c)",
    "unsupported_header": "the token uses an unsupported header extension",
    "unknown_kid": "no known key has the token's kid",
    "no_key": "no key for the token's algorithm",
    "bad_signature": "the token's signature does not verify",
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet",
    "issued_in_future": "the token is issued in the future",
    "bad_issuer": "the token's issuer is not accepted",
    "bad_audience": "the token is not for this audience",
    "missing_claim": "the token lacks a required claim",
    "invalid_claim": "a claim of the token has the wrong type",
}


class TokenRejected(Exception):
    """A token (or its absence) that does not authenticate. `reason` is a short machine code.

    `detail` is a fixed text from this module (never content of the token), safe to log and
    to send in `error_description`.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        self.reason = reason
        self.detail = detail or REASONS.get(reason, reason)
        super().__init__(f"{reason}: {self.detail}")


class ExtractedToken(NamedTuple):  # one per request: a tuple is the cheapest immutable record
    token: str
    source: str  # "header", "cookie:NAME" or "query:NAME"


def extract_token(request: http.Request, sources: Sequence[str]) -> ExtractedToken | None:
    """The first token found, in the order of `sources`; None when there is none.

    Raises TokenRejected for a credential that is present but unusable (two Authorization
    headers, `Bearer` without a token, a repeated cookie or query parameter).
    """
    for source in sources:
        if source == "header":
            found: bytes | None = None
            for field, raw in request.headers.fields:  # one pass over the raw fields, every request
                if len(field) == 13 and field.lower() == b"authorization":
                    if found is not None:
                        raise TokenRejected("ambiguous", "more than one Authorization header")
                    found = raw
            if found is None:
                continue
            scheme, _, rest = found.decode("utf-8", "surrogateescape").strip().partition(" ")
            if scheme.lower() != "bearer":
                continue  # another scheme (Basic, Digest): not ours
            token = rest.strip(" \t")
            if not token:
                raise TokenRejected("malformed", "the Bearer credential is empty")
            if not _B64TOKEN.match(token):
                raise TokenRejected("malformed", "the Bearer credential is not a token")
            return ExtractedToken(token, source)
        kind, _, name = source.partition(":")
        values = request.cookies.get_all(name) if kind == "cookie" else request.query.get_all(name)
        values = [v for v in values if v]
        if len(values) > 1:
            raise TokenRejected("ambiguous", f"the {kind} {name} is repeated")
        if values:
            return ExtractedToken(values[0], source)
    return None


def _b64url_decode(segment: str, what: str) -> bytes:
    if not _B64URL.match(segment) or len(segment) % 4 == 1:
        raise TokenRejected("malformed", f"the token's {what} is not base64url")
    try:
        decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenRejected("malformed", f"the token's {what} is not base64url") from None
    # Canonical only: otherwise unused trailing bits would let one signature be written many ways.
    if base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() != segment:
        raise TokenRejected("malformed", f"the token's {what} is not canonical base64url")
    return decoded


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate key")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(data: bytes) -> Any:
    """JSON as RFC 8259 has it: no repeated keys, no NaN/Infinity. ValueError otherwise."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except RecursionError:  # nested thousands deep
        raise ValueError("nested too deeply") from None


@dataclass(frozen=True)
class ParsedToken:
    """A compact JWS taken apart, its header checked, nothing of it trusted yet."""

    header: dict[str, Any]
    algorithm: str
    kid: str | None
    signing_input: bytes
    payload: bytes
    signature: bytes


class KeyProvider(Protocol):
    """The keys that may verify a token of this algorithm (and kid). Raise TokenRejected when none."""

    def keys_for(self, algorithm: str, kid: str | None) -> Sequence[Any]: ...


def _is_number(value: Any) -> bool:
    """A JSON number usable as a NumericDate: ints of any size, finite floats (1e400 parses as inf)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by its name as written, else by a dotted path into nested objects; None if absent."""
    if name in claims:
        return claims[name]
    current: Any = claims
    for part in name.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current


def string_list(value: Any, claim: str) -> list[str]:
    """A roles/permissions claim: a list of strings, or one string of space-separated values."""
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item for item in value if item]
    raise TokenRejected("invalid_claim", f"claim {claim} must be a list of strings")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


class Verifier:
    """Decides whether a token is genuine and current; pure apart from the clock and the keys.

    `clock` returns the time in seconds since the epoch (time.time by default; tests inject one).
    """

    def __init__(self, config: AuthConfig, keys: KeyProvider, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.keys = keys
        self.clock = clock
        self.algorithms = frozenset(config.allowed_algorithms)
        # pyjwt's RSA/EC/EdDSA implementations; HMAC is checked here with hmac.compare_digest.
        implementations = get_default_algorithms()
        self._asymmetric = {name: implementations[name] for name in ASYMMETRIC_ALGORITHMS & self.algorithms}

    # -- structure --------------------------------------------------------------------------

    def parse(self, token: str) -> ParsedToken:
        """Structure and header checks, before any key is looked up."""
        if not isinstance(token, str) or not token:
            raise TokenRejected("malformed", "the token is empty")
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenRejected("malformed", f"the token is larger than {MAX_TOKEN_LENGTH} bytes")
        parts = token.split(".")
        if len(parts) == 5:
            raise TokenRejected("malformed", "encrypted tokens (JWE) are not supported")
        if len(parts) != 3:
            raise TokenRejected("malformed", "a token has three dot-separated parts")
        header_b64, payload_b64, signature_b64 = parts
        header_bytes = _b64url_decode(header_b64, "header")
        payload = _b64url_decode(payload_b64, "payload")
        signature = _b64url_decode(signature_b64, "signature")
        try:
            header = strict_json(header_bytes)
        except (ValueError, UnicodeDecodeError):
            raise TokenRejected("malformed", "the token's header is not JSON") from None
        if not isinstance(header, dict):
            raise TokenRejected("malformed", "the token's header is not a JSON object")
        if any(name in header for name in FORBIDDEN_HEADERS):
            raise TokenRejected("forbidden_header")
        if "crit" in header or "b64" in header:
            raise TokenRejected("unsupported_header")
        if "enc" in header or "zip" in header:
            raise TokenRejected("malformed", "encrypted tokens (JWE) are not supported")
        algorithm = header.get("alg")
        if not isinstance(algorithm, str):
            raise TokenRejected("malformed", "the token's header has no alg")
        if algorithm not in self.algorithms:
            raise TokenRejected("alg_not_allowed")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH):
            raise TokenRejected("malformed", "the token's kid is not a short string")
        if not signature:
            raise TokenRejected("bad_signature", "the token has no signature")
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        return ParsedToken(header, algorithm, kid, signing_input, payload, signature)

    # -- signature and claims ---------------------------------------------------------------

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims when it is genuine, current and for us; TokenRejected otherwise."""
        return self.check(self.parse(token))

    def check(self, parsed: ParsedToken) -> dict[str, Any]:
        self._check_signature(parsed)
        try:
            claims = strict_json(parsed.payload)
        except (ValueError, UnicodeDecodeError):
            raise TokenRejected("malformed", "the token's payload is not JSON") from None
        if not isinstance(claims, dict):
            raise TokenRejected("malformed", "the token's payload is not a JSON object")
        self._check_claims(claims)
        return claims

    def _check_signature(self, parsed: ParsedToken) -> None:
        algorithm = parsed.algorithm
        keys = self.keys.keys_for(algorithm, parsed.kid)
        if algorithm in HMAC_ALGORITHMS:
            digest = HMAC_ALGORITHMS[algorithm]
            for key in keys:
                if not isinstance(key, bytes):  # a public key as an HMAC secret: the confusion attack
                    raise TypeError("an HMAC key must be the shared secret")
                if hmac.compare_digest(hmac.new(key, parsed.signing_input, digest).digest(), parsed.signature):
                    return
            raise TokenRejected("bad_signature")
        implementation = self._asymmetric.get(algorithm)
        if implementation is None:
            raise TokenRejected("alg_not_allowed")
        for key in keys:
            if not key_fits(algorithm, key):
                continue  # never check an algorithm with a key of another type
            try:
                if implementation.verify(parsed.signing_input, key, parsed.signature):
                    return
            except (InvalidSignature, ValueError, TypeError):
                continue
        raise TokenRejected("bad_signature")

    def _check_claims(self, claims: dict[str, Any]) -> None:
        config = self.config
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_number(claims[name]):
                raise TokenRejected("invalid_claim", f"claim {name} must be a number")
        if "sub" in claims and not (isinstance(claims["sub"], str) and claims["sub"]):
            raise TokenRejected("invalid_claim", "claim sub must be a non-empty string")
        if "iss" in claims and not isinstance(claims["iss"], str):
            raise TokenRejected("invalid_claim", "claim iss must be a string")
        aud = claims.get("aud")
        if "aud" in claims and not (isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))):
            raise TokenRejected("invalid_claim", "claim aud must be a string or a list of strings")
        string_list(claim_value(claims, config.roles_claim), "roles")
        string_list(claim_value(claims, config.permissions_claim), "permissions")
        for name in ("exp", "sub", *config.required_claims):
            if claim_value(claims, name) is None:
                raise TokenRejected("missing_claim", f"the token lacks claim {safe_text(name)}")
        now, leeway = self.clock(), config.leeway
        if now - leeway >= claims["exp"]:  # never exp + leeway: an int too large for a float
            raise TokenRejected("expired")
        if "nbf" in claims and now + leeway < claims["nbf"]:
            raise TokenRejected("not_yet_valid")
        if "iat" in claims and claims["iat"] > now + leeway:
            raise TokenRejected("issued_in_future")
        if config.issuer is not None and claims.get("iss") != config.issuer:
            raise TokenRejected("bad_issuer")
        if "aud" in claims or config.audiences:
            offered = [aud] if isinstance(aud, str) else (aud or [])
            if not set(offered) & set(config.audiences):
                raise TokenRejected("bad_audience")

    def identity(self, claims: Mapping[str, Any]) -> Identity:
        """Who the (verified) claims name: username from `sub`, roles, and the permissions they grant."""
        roles = _unique(string_list(claim_value(claims, self.config.roles_claim), "roles"))
        granted = [p for role in roles for p in self.config.roles.get(role, [])]
        permissions = _unique([*granted, *string_list(claim_value(claims, self.config.permissions_claim), "permissions")])
        return Identity(username=str(claims["sub"]), roles=roles, permissions=permissions, claims=dict(claims))

    def authenticate(self, token: str) -> Identity:
        return self.identity(self.verify(token))

def safe_text(text: str) -> str:
    """For error_description and quoted header values: RFC 6750's characters only."""
    return "".join(c for c in text if c == " " or c == "!" or ("\x23" <= c <= "\x5b") or ("\x5d" <= c <= "\x7e"))



# ------------------------------------------------------------------------------------------
# Issuing (for the auth.register and auth.login handlers)


class TokenIssueError(ValueError):
    """The config cannot sign tokens (no jwt_secret, no private_key fitting an algorithm)."""


RESERVED_CLAIMS = frozenset({"sub", "iat", "exp", "nbf", "iss", "aud", "jti"})


def issue_token(
    config: AuthConfig,
    username: str,
    roles: Sequence[str] | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """A signed token for `username` that this config's Verifier accepts.

    Claims: `sub`, `iat`, `exp` (iat + token_expiry_minutes), `jti`, `iss`/`aud` when configured,
    and the roles under `roles_claim` (default_roles when `roles` is None). Signed with the
    first algorithm of `algorithms` this config has a signing key for.
    """
    algorithm = config.signing_algorithm
    if algorithm is None:
        raise TokenIssueError("this auth config cannot sign tokens: it needs jwt_secret (HS*) or a private_key fitting one of its algorithms")
    if not username:
        raise TokenIssueError("a token needs a username")
    extra = dict(extra_claims or {})
    clash = sorted((RESERVED_CLAIMS | {config.roles_claim}) & set(extra))
    if clash:
        raise TokenIssueError(f"extra claims cannot set {', '.join(clash)}")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        **extra,
        "sub": username,
        "iat": issued,
        "exp": issued + int(round(config.token_expiry_minutes * 60)),
        "jti": uuid.uuid4().hex,
        config.roles_claim: list(config.default_roles if roles is None else roles),
    }
    if config.issuer is not None:
        claims["iss"] = config.issuer
    if config.audience is not None:
        claims["aud"] = config.audience if isinstance(config.audience, str) else list(config.audience)
    return sign_token(claims, algorithm, config.secret if algorithm in HMAC_ALGORITHMS else config.signing_key)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def sign_token(claims: Mapping[str, Any], algorithm: str, key: Any, header: Mapping[str, Any] | None = None) -> str:
    """A compact JWS of `claims`: HS* with the secret (bytes), the rest with a private key."""
    head = {"alg": algorithm, "typ": "JWT", **(header or {})}
    signing_input = f"{_b64url(_compact(head))}.{_b64url(_compact(dict(claims)))}".encode("ascii")
    if algorithm in HMAC_ALGORITHMS:
        if not isinstance(key, bytes):
            raise TokenIssueError("HS* tokens are signed with the shared secret")
        signature = hmac.new(key, signing_input, HMAC_ALGORITHMS[algorithm]).digest()
    else:
        signature = get_default_algorithms()[algorithm].sign(signing_input, key)
    return f"{signing_input.decode('ascii')}.{_b64url(signature)}"
