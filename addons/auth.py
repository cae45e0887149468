"""The `auth` plugin: JWT bearer authentication and role/permission authorization as a middleware.

Three layers, each testable alone:

- **settings** (`AuthConfig`, `AuthMiddlewareConfig`): validated when the blueprint loads; key
  files are read and checked then, so a bad key is a located error, never a runtime surprise;
- **pure decisions**: `extract_token` (where the token is), `Verifier` (is it genuine and
  current, whose is it), `authorize` (may this identity do this), `issue_token` (for the
  `auth.login`/`auth.register` handlers of addons.users);
- **the middleware** (`AuthMiddleware`), which applies a decision to the flow: deny with a JSON
  error and a `WWW-Authenticate` challenge, or set `ctx.user`, forward claims, strip the token.

Decisions where the blueprint format is silent (documented here and in the reference):

- Verification: the algorithm comes from the token header but is accepted only when it is in
  `algorithms` *and* fits the key it would be checked with: HS* only with `jwt_secret` (never a
  public key), RS*/PS* only with RSA keys, ES256/ES384/ES512/ES256K only with an EC key on the
  matching curve, EdDSA only with Ed25519/Ed448. `none` is refused when the blueprint loads.
- A token naming its own key (`jku`, `x5u`, `jwk`, `x5c`) is refused: keys are never fetched
  from a token. `kid` is only a lookup key in the JWKS cache. `crit` (unknown extensions), JWE
  (5 segments) and tokens over 8 KiB are refused. Base64url must be canonical and unpadded; the
  JSON must not repeat a key (no parser-differential tricks).
- `exp` and `sub` are always required (a token that never expires is refused; `sub` is the
  username). `iat` later than now + leeway is refused. A token carrying `aud` is refused when
  no `audience` is configured (RFC 7519 §4.1.3).
- Roles and permissions claims: a list of strings, or one string of space-separated values
  (OAuth's `scope` style); anything else rejects the token. A claim name is looked up as
  written first, then as a dotted path into nested objects (`realm_access.roles`).
  `default_roles` are the roles given at registration; a token without a roles claim has none.
- Wildcards: `*` matches any run of characters inside one `:`-separated segment; a granted
  permission whose last segment is `*` also covers deeper segments (`resources:*` grants
  `resources:read` and `resources:read:own`); `*` alone grants everything. Matching is
  case-sensitive. A required permission is taken literally.
- Token sources are tried in the listed order; the first source holding a token wins. The
  `Bearer` scheme is case-insensitive (RFC 7235); another scheme (`Basic`) counts as no token.
  Two `Authorization` headers, or a repeated cookie/query parameter, are refused as ambiguous.
  An empty cookie or query value counts as absent; `Bearer` with nothing after it is malformed.
- A missing or invalid token is `401` with `WWW-Authenticate: Bearer error="invalid_token"`
  for both cases, as the format says (RFC 6750 would leave the error out when no token is
  sent); a valid token lacking the role or permission is `403` with `error="insufficient_scope"`.
  An exception inside the middleware denies with `500`: never forwarded (fail closed).
- `forward_claims` names are removed from every client request the blueprint handles (any case,
  `_` or `-`; backworks_core/forwarding.py, via `AuthPlugin.identity_headers`) before any
  middleware runs; this middleware removes them again (no spoofing), then sets each from the claim (strings as they are, numbers and booleans as JSON, lists joined with ", ",
  objects as compact JSON); a value with control characters is not sent. `strip_token` removes
  the credential from every configured source (bearer `Authorization`, the named cookies and
  query parameters), not only the one that was used.
- JWKS: fetched with aiohttp on the event loop, never blocking it; cached; fetched again when
  older than `jwks_max_age` or when a token names an unknown `kid`, but never more often than
  once per `jwks_min_interval`. A failed fetch keeps the keys already known. `http://` only
  for loopback hosts. Symmetric (`oct`) and private keys in a JWKS are ignored.
- An audit line per decision on the `addons.auth` logger (INFO allowed, WARNING denied) names
  who, what and why, never the token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol
from urllib.parse import unquote_plus, urlsplit

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import get_default_algorithms
from mitmproxy import http
from pydantic import AfterValidator, BaseModel, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from backworks_core import headers as fast_headers
from backworks_core.context import Identity, RequestContext
from backworks_core.credentials import redact
from backworks_core.gateway import BuildError
from backworks_core.model import BlueprintPath, MiddlewareFilter, StrictModel
from backworks_core.plugins import Plugin
from backworks_core.validation import Duration, PositiveDuration, did_you_mean

if TYPE_CHECKING:
    from backworks_core.context import Handler
    from backworks_core.loader import EndpointSpec, LoadedBlueprint, MiddlewareSpec

logger = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8192  # characters of a compact JWS; beyond it the token is malformed
MAX_KID_LENGTH = 256
MAX_KEY_FILE = 1 << 20
MAX_JWKS_BYTES = 512 * 1024
MAX_JWKS_KEYS = 100
MAX_CANDIDATE_KEYS = 16  # keys tried for one token without a kid
MIN_RSA_BITS = 2048

HMAC_ALGORITHMS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1", "ES256K": "secp256k1"}
EDDSA_ALGORITHMS = frozenset({"EdDSA"})
SUPPORTED_ALGORITHMS = (*HMAC_ALGORITHMS, *sorted(RSA_ALGORITHMS), *EC_CURVES, "EdDSA")
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_CURVES) | EDDSA_ALGORITHMS
CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521", "secp256k1": "secp256k1"}

# Header parameters that name a key by URL or carry one: keys never come from the token itself.
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c")
# Headers the forwarded claims may not set: the request's framing, routing and credentials.
RESERVED_FORWARD_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "x-request-id",
    }
)

# The gateway writes these itself (forwarding headers, trace context): a claim cannot take them over.
NOT_CLAIM_HEADERS = frozenset({"traceparent", "tracestate", "forwarded", "x-real-ip"})
_TOKEN_CHARS = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token: header and cookie names
_B64TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")  # RFC 6750 b64token
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_PERMISSION = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6750 scope-token: no space, quote or backslash
_AUDIT_UNSAFE = re.compile(r"[^\x21-\x7e]")


# ------------------------------------------------------------------------------------------
# Keys


PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey


def describe_key(key: Any) -> str:
    """`RSA 2048`, `EC P-256`, `Ed25519`: how messages name a key."""
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA {key.key_size}"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"EC {CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "Ed25519"
    if isinstance(key, (ed448.Ed448PublicKey, ed448.Ed448PrivateKey)):
        return "Ed448"
    return type(key).__name__


def unsupported_key(key: Any) -> str | None:
    """Why a (public) key cannot verify tokens here, or None when it can."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA key of {key.key_size} bits is too weak (at least {MIN_RSA_BITS})" if key.key_size < MIN_RSA_BITS else None
    if isinstance(key, ec.EllipticCurvePublicKey):
        return None if key.curve.name in CURVE_NAMES else f"EC curve {key.curve.name} is not supported (P-256, P-384, P-521, secp256k1)"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return None
    return f"{type(key).__name__} keys are not supported (RSA, EC, Ed25519 or Ed448)"


def key_fits(algorithm: str, key: Any) -> bool:
    """Whether `algorithm` may be checked with this public key: the key type decides, not the token."""
    if algorithm in RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm in EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == EC_CURVES[algorithm]
    if algorithm in EDDSA_ALGORITHMS:
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False  # HS* never uses a public key


def _read_key_file(path: str, what: str) -> bytes:
    if not os.path.isfile(path):
        raise ValueError(f"{what} file {path} not found")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise ValueError(f"{what} file {path} is larger than 1 MiB: not a PEM key")
    return data


def load_private_key(path: str) -> PrivateKey:
    """An unencrypted PEM private key (PKCS#8 or traditional); ValueError with the user's message."""
    data = _read_key_file(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"private key file {path} is encrypted; Backworks reads unencrypted PEM keys") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"private key file {path} holds no PEM private key") from None
    problem = unsupported_key(key.public_key())
    if problem is not None:
        raise ValueError(f"private key file {path}: {problem}")
    return key  # type: ignore[return-value]


def load_public_key(path: str) -> PublicKey:
    """A PEM public key (SubjectPublicKeyInfo or PKCS#1) or a PEM certificate's key."""
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY-----" in data:
        raise ValueError(f"public key file {path} holds a private key: name it in private_key, or give the public half here")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"public key file {path} holds no PEM public key or certificate") from None
    problem = unsupported_key(key)
    if problem is not None:
        raise ValueError(f"public key file {path}: {problem}")
    return key  # type: ignore[no-any-return]


def _same_key(a: Any, b: Any) -> bool:
    form = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(a.public_bytes(*form) == b.public_bytes(*form))


# ------------------------------------------------------------------------------------------
# Settings


def _token_source(value: str) -> str:
    if value == "header":
        return value
    kind, sep, name = value.partition(":")
    if sep and kind in ("cookie", "query") and name and _TOKEN_CHARS.match(name):
        return value
    raise ValueError(f"expected header, cookie:NAME or query:NAME, got {value!r}")


def _forward_header(value: str) -> str:
    if not _TOKEN_CHARS.match(value):
        raise ValueError(f"{value!r} is not a valid header name")
    normal = value.lower().replace("_", "-")  # as a WSGI server folds it: Content_Length is Content-Length
    if normal in RESERVED_FORWARD_HEADERS or normal.startswith(("proxy-", "x-forwarded-")) or normal in NOT_CLAIM_HEADERS:
        raise ValueError(f"header {value!r} cannot carry a claim")
    return value


def _claim_name(value: str) -> str:
    if not value or value != value.strip():
        raise ValueError(f"expected a claim name, got {value!r}")
    return value


def _permission(value: str) -> str:
    if not _PERMISSION.match(value):
        raise ValueError(f"expected a permission such as resources:read (no spaces, quotes or backslashes), got {value!r}")
    return value


def _role(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"expected a role name without spaces, got {value!r}")
    return value


TokenSource = Annotated[str, AfterValidator(_token_source)]
ForwardHeader = Annotated[str, AfterValidator(_forward_header)]
ClaimName = Annotated[str, AfterValidator(_claim_name)]
Permission = Annotated[str, AfterValidator(_permission)]
Role = Annotated[str, AfterValidator(_role)]


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False  # a name such as 127.example.com is not a loopback address


class AuthConfig(StrictModel):
    """`plugins.auth.config`. Key files are loaded (and checked) when the blueprint loads."""

    jwt_secret: str | None = Field(None, repr=False, description="shared secret for HS256/HS384/HS512", examples=["${JWT_SECRET}"])
    private_key: BlueprintPath | None = Field(None, description="PEM private key: signs issued tokens (RS*/PS*/ES*/EdDSA)", examples=["keys/private.pem"])
    public_key: BlueprintPath | None = Field(None, description="PEM public key or certificate: verifies tokens", examples=["keys/public.pem"])
    jwks_url: str | None = Field(None, description="JWKS of an outside issuer; keys cached and looked up by kid", examples=["https://login.example.com/.well-known/jwks.json"])
    jwks_max_age: PositiveDuration = Field(600.0, description="JWKS keys are fetched again when older than this", examples=["1h"])
    jwks_min_interval: Duration = Field(30.0, description="at most one JWKS fetch per this interval", examples=["1m"])
    jwks_timeout: PositiveDuration = Field(5.0, description="a JWKS fetch's whole time", examples=["3s"])
    # After the key settings: its validator reads them.
    algorithms: list[str] | None = Field(
        None, validate_default=True, description="the algorithms accepted; default [HS256] with jwt_secret alone, required otherwise", examples=[["HS256", "HS512"]]
    )
    token_expiry_minutes: float = Field(60, gt=0, description="lifetime of tokens issued by auth.login/auth.register", examples=[15])
    issuer: str | None = Field(None, min_length=1, description="`iss` issued and required", examples=["https://auth.example.com"])
    audience: str | list[str] | None = Field(None, description="`aud` issued and required (any one of a list)", examples=["orders-api"])
    leeway: Duration = Field(0.0, description="clock skew allowed on exp, nbf and iat", examples=["30s"])
    verified_cache_size: int = Field(1024, ge=0, description="verified tokens remembered (LRU), so a repeated token skips verification; 0 = off", examples=[0])
    verified_cache_ttl: PositiveDuration = Field(
        60.0, description="a verified token is remembered at most this long (and never past its exp + leeway)", examples=["5m"]
    )
    required_claims: list[ClaimName] = Field(default_factory=list, description="claims a token must carry (exp and sub always)", examples=[["email"]])
    roles_claim: ClaimName = Field("roles", description="the claim holding the roles: a list, or space-separated text; a dotted name reaches into objects", examples=["realm_access.roles"])
    permissions_claim: ClaimName = Field("permissions", description="the claim holding the permissions: a list, or space-separated text (as OAuth's scope)", examples=["scope"])
    token_sources: list[TokenSource] = Field(
        default_factory=lambda: ["header"], min_length=1, description="header (Authorization: Bearer), cookie:NAME, query:NAME; first found wins", examples=[["header", "cookie:session"]]
    )
    default_roles: list[Role] = Field(default_factory=lambda: ["user"], description="roles given at registration", examples=[["customer"]])
    forward_claims: dict[ForwardHeader, ClaimName] = Field(
        default_factory=lambda: {"X-User": "sub"}, description="headers set on the proxied request from the token's claims", examples=[{"X-User-Id": "sub", "X-User-Email": "email"}]
    )
    strip_token: bool = Field(False, description="remove the token from the proxied request", examples=[True])
    audit: Literal["denied", "all", "none"] = Field(
        "denied",
        description="decisions written to the addons.auth log: denied (WARNING), all (allowed ones at INFO too: one line per request, about 10% of throughput), none",
        examples=["all"],
    )
    roles: dict[Role, list[Permission]] = Field(default_factory=dict, description="role -> permissions it grants", examples=[{"admin": ["*"], "customer": ["orders:read", "orders:create"]}])
    users_file: BlueprintPath | None = Field(None, description="the user store of auth.register/auth.login", examples=["users.json"])

    _secret: bytes | None = PrivateAttr(None)
    _private_key: Any = PrivateAttr(None)
    _public_key: Any = PrivateAttr(None)

    @field_validator("jwt_secret")
    @classmethod
    def _secret_text(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value:
            raise ValueError("jwt_secret is empty")
        if "-----BEGIN" in value or value.startswith(("ssh-", "ecdsa-")):
            raise ValueError("jwt_secret looks like a key, not a shared secret: name key files in public_key/private_key")
        return value

    @field_validator("private_key")
    @classmethod
    def _private_key_file(cls, value: str | None) -> str | None:
        if value is not None:
            load_private_key(value)
        return value

    @field_validator("public_key")
    @classmethod
    def _public_key_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        public = load_public_key(value)
        private_path = info.data.get("private_key")
        if private_path is not None and not _same_key(public, load_private_key(private_path).public_key()):
            raise ValueError(f"public_key {value} is not the public half of private_key {private_path}")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an https:// URL, got {value!r}")
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValueError(f"keys must come over https (http:// only for localhost), got {value!r}")
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str] | None, info: ValidationInfo) -> list[str]:
        data = info.data
        key_settings = ("jwt_secret", "private_key", "public_key", "jwks_url")
        checkable = all(name in data for name in key_settings)  # a key setting that failed is reported already
        secret = data.get("jwt_secret") is not None
        jwks = data.get("jwks_url") is not None
        key_paths = [data.get("private_key"), data.get("public_key")]
        keys: list[Any] = []
        for index, path in enumerate(key_paths):
            if path is not None:
                keys.append((load_private_key(path).public_key() if index == 0 else load_public_key(path)))
        if value is None:
            if not checkable:
                return []
            if keys or jwks:
                raise ValueError("algorithms is required with private_key, public_key or jwks_url: list the ones to accept, such as [RS256]")
            return ["HS256"] if secret else []
        if not value:
            raise ValueError("expected at least one algorithm")
        chosen: list[str] = []
        for name in value:
            if name.lower() == "none":
                raise ValueError("algorithm 'none' is refused: it would accept unsigned tokens")
            if name not in SUPPORTED_ALGORITHMS:
                hint = did_you_mean(name, SUPPORTED_ALGORITHMS)
                raise ValueError(
                    f"unknown algorithm {name!r}" + (f"; did you mean {hint!r}?" if hint else f" (expected one of {', '.join(SUPPORTED_ALGORITHMS)})")
                )
            if not checkable:
                pass
            elif name in HMAC_ALGORITHMS:
                if not secret:
                    raise ValueError(f"{name} needs jwt_secret (an HMAC is never checked with a public key)")
            elif not jwks and not any(key_fits(name, key) for key in keys):
                if not keys:
                    raise ValueError(f"{name} needs public_key, private_key or jwks_url")
                raise ValueError(f"{name} does not fit the configured key ({describe_key(keys[0])})")
            if name not in chosen:
                chosen.append(name)
        return chosen

    @field_validator("users_file")
    @classmethod
    def _users_file(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if os.path.exists(value) and not os.path.isfile(value):
            raise ValueError(f"users_file {value} is not a file")
        if not os.path.isdir(os.path.dirname(value) or "."):
            raise ValueError(f"the folder of users_file {value} does not exist")
        return value

    @field_validator("audience")
    @classmethod
    def _audience(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if value is not None and (not items or not all(items)):
            raise ValueError("expected a non-empty audience")
        return value

    @model_validator(mode="after")
    def _load_keys(self) -> AuthConfig:
        if self.jwt_secret is None and self.private_key is None and self.public_key is None and self.jwks_url is None:
            raise ValueError("the auth plugin needs a key: set jwt_secret, public_key/private_key or jwks_url")
        self._secret = self.jwt_secret.encode() if self.jwt_secret is not None else None
        if self.private_key is not None:
            self._private_key = load_private_key(self.private_key)
        if self.public_key is not None:
            self._public_key = load_public_key(self.public_key)
        elif self._private_key is not None:
            self._public_key = self._private_key.public_key()
        return self

    # -- what the runtime reads -----------------------------------------------------------

    @property
    def secret(self) -> bytes | None:
        return self._secret

    @property
    def signing_key(self) -> Any:
        return self._private_key

    @property
    def verification_key(self) -> Any:
        """The local public key (from public_key, or derived from private_key), if any."""
        return self._public_key

    @property
    def allowed_algorithms(self) -> list[str]:
        return list(self.algorithms or [])

    @property
    def signing_algorithm(self) -> str | None:
        """The first allowed algorithm this config can sign with: what issue_token uses."""
        for name in self.allowed_algorithms:
            if name in HMAC_ALGORITHMS and self._secret is not None:
                return name
            if name in ASYMMETRIC_ALGORITHMS and self._private_key is not None and key_fits(name, self._private_key.public_key()):
                return name
        return None

    @property
    def audiences(self) -> list[str]:
        if self.audience is None:
            return []
        return [self.audience] if isinstance(self.audience, str) else list(self.audience)


class AuthMiddlewareConfig(MiddlewareFilter):
    """`middlewares[].config` for `plugin: auth`: who may pass, on top of a valid token."""

    roles: list[Role] | None = Field(None, min_length=1, description="any one of these roles", examples=[["admin"]])
    permissions: list[Permission] | None = Field(None, min_length=1, description="all of these permissions", examples=[["orders:read"]])


# ------------------------------------------------------------------------------------------
# Decisions: rejections, token extraction, verification, authorization


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


@dataclass(frozen=True)
class ExtractedToken:
    token: str
    source: str  # "header", "cookie:NAME" or "query:NAME"


def extract_token(request: http.Request, sources: Sequence[str]) -> ExtractedToken | None:
    """The first token found, in the order of `sources`; None when there is none.

    Raises TokenRejected for a credential that is present but unusable (two Authorization
    headers, `Bearer` without a token, a repeated cookie or query parameter).
    """
    for source in sources:
        if source == "header":
            values = fast_headers.values(request.headers, "authorization")
            if len(values) > 1:
                raise TokenRejected("ambiguous", "more than one Authorization header")
            if not values:
                continue
            scheme, _, rest = values[0].strip().partition(" ")
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
                raise TokenRejected("missing_claim", f"the token lacks claim {_safe_text(name)}")
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


def permission_matches(granted: str, required: str) -> bool:
    """Whether one granted permission (maybe with `*`) covers one required permission."""
    if granted == "*" or granted == required:
        return True
    have, want = granted.split(":"), required.split(":")
    if len(have) > len(want):
        return False
    if len(have) < len(want) and have[-1] != "*":
        return False
    for index, pattern in enumerate(have):
        if not _segment_matches(pattern, want[index]):
            return False
    return True


def _segment_matches(pattern: str, value: str) -> bool:
    if "*" not in pattern:
        return pattern == value
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def has_permission(granted: Iterable[str], required: str) -> bool:
    return any(permission_matches(g, required) for g in granted)


@dataclass(frozen=True)
class Denial:
    """A 403: the identity is known but may not do this."""

    detail: str
    scope: tuple[str, ...] = ()


def authorize(identity: Identity, roles: Sequence[str] | None, permissions: Sequence[str] | None) -> Denial | None:
    """Any one of `roles` and all of `permissions`; None means allowed."""
    if roles and not set(roles) & set(identity.roles):
        return Denial(f"requires one of the roles {', '.join(roles)}")
    if permissions:
        missing = [p for p in permissions if not has_permission(identity.permissions, p)]
        if missing:
            return Denial(f"requires the permissions {', '.join(missing)}", tuple(permissions))
    return None


def _safe_text(text: str) -> str:
    """For error_description and quoted header values: RFC 6750's characters only."""
    return "".join(c for c in text if c == " " or c == "!" or ("\x23" <= c <= "\x5b") or ("\x5d" <= c <= "\x7e"))


def challenge(error: str, description: str, scope: Sequence[str] = ()) -> str:
    """A `WWW-Authenticate: Bearer ...` value (RFC 6750 §3)."""
    value = f'Bearer error="{error}", error_description="{_safe_text(description)}"'
    if scope:
        value += f', scope="{_safe_text(" ".join(scope))}"'
    return value


# ------------------------------------------------------------------------------------------
# Issuing (for addons.users: auth.register and auth.login)


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


# ------------------------------------------------------------------------------------------
# Keys at run time: the local ones and a JWKS cache


@dataclass(frozen=True)
class JwksKey:
    kid: str | None
    key: Any  # a cryptography public key
    algorithm: str | None  # the JWK's `alg`, when it names one

    def allows(self, algorithm: str) -> bool:
        return (self.algorithm is None or self.algorithm == algorithm) and key_fits(algorithm, self.key)


class JwksError(Exception):
    pass


def parse_jwks(body: bytes) -> list[JwksKey]:
    """The usable verification keys of a JWKS document; raises JwksError when it is not one.

    Symmetric (`oct`) keys, private keys, keys for another use, unsupported or weak keys are
    skipped (each logged): a JWKS publishes public signing keys, nothing else.
    """
    try:
        document = strict_json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JwksError(f"not JSON ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWKS: expected an object with a `keys` list")
    keys: list[JwksKey] = []
    for index, jwk in enumerate(document["keys"][:MAX_JWKS_KEYS]):
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        label = f"key {index}" + (f" ({_safe_text(str(kid))[:64]})" if kid is not None else "")
        if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH):
            logger.warning("JWKS %s skipped: its kid is not a short string", label)
            continue
        if jwk.get("kty") == "oct" or "d" in jwk or "k" in jwk:
            logger.warning("JWKS %s skipped: a JWKS must hold public keys only", label)
            continue
        if jwk.get("use", "sig") != "sig" or ("key_ops" in jwk and "verify" not in (jwk.get("key_ops") or [])):
            continue
        algorithm = jwk.get("alg")
        if algorithm is not None and algorithm not in ASYMMETRIC_ALGORITHMS:
            logger.warning("JWKS %s skipped: algorithm %s is not supported", label, _safe_text(str(algorithm))[:32])
            continue
        try:
            key = jwt.PyJWK(jwk).key
        except Exception as exc:  # pyjwt raises several kinds for a JWK it cannot read
            logger.warning("JWKS %s skipped: %s", label, type(exc).__name__)
            continue
        problem = unsupported_key(key)
        if problem is not None:
            logger.warning("JWKS %s skipped: %s", label, problem)
            continue
        keys.append(JwksKey(kid, key, algorithm))
    return keys


Fetch = Callable[[str, float], Awaitable[bytes]]


async def fetch_url(url: str, timeout: float) -> bytes:
    """GET a JWKS with aiohttp (on the running loop); no redirects, at most MAX_JWKS_BYTES."""
    import aiohttp

    # Not decompressed: a compressed JWKS could inflate far past MAX_JWKS_BYTES within one chunk.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), auto_decompress=False) as session:
        async with session.get(url, headers={"Accept": "application/json", "Accept-Encoding": "identity"}, allow_redirects=False) as response:
            if response.status != 200:
                raise JwksError(f"HTTP {response.status}")
            if response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
                raise JwksError(f"Content-Encoding {response.headers['Content-Encoding'][:32]!r} (identity was asked for)")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
            return bytes(body)


class JwksCache:
    """The keys of one JWKS URL: fetched when first needed, when older than `max_age`, or when
    a token names an unknown kid; never more often than once per `min_interval`.

    A failed fetch keeps the keys already known (and still counts against the interval, so an
    issuer that is down is not hammered). `clock` is monotonic seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        min_interval: float = 30.0,
        max_age: float = 600.0,
        timeout: float = 5.0,
        fetch: Fetch = fetch_url,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.min_interval = min_interval
        self.max_age = max_age
        self.timeout = timeout
        self._fetch = fetch
        self.clock = clock
        self.keys: list[JwksKey] = []
        self.fetched_at: float | None = None  # last successful fetch
        self.attempted_at: float | None = None
        self.fetches = 0
        self._inflight: asyncio.Future[None] | None = None

    def by_kid(self, kid: str) -> list[JwksKey]:
        return [k for k in self.keys if k.kid == kid]

    def needs_refresh(self, kid: str | None) -> bool:
        """Never fetched, too old, or the token names a kid the cache does not know."""
        if self.fetched_at is None or self.clock() - self.fetched_at >= self.max_age:
            return True
        return kid is not None and not self.by_kid(kid)

    def may_fetch(self) -> bool:
        return self.attempted_at is None or self.clock() - self.attempted_at >= self.min_interval

    async def ensure(self, kid: str | None = None) -> None:
        """Fetch when the cache needs it and the rate allows; requests arriving meanwhile wait
        for the fetch in flight rather than start another (or fail for want of the new key)."""
        if not self.needs_refresh(kid):
            return
        if self._inflight is None:
            if not self.may_fetch():
                return
            self._inflight = asyncio.ensure_future(self._refresh())
        await asyncio.shield(self._inflight)

    async def _refresh(self) -> None:
        self.attempted_at = self.clock()
        self.fetches += 1
        try:
            keys = parse_jwks(await self._fetch(self.url, self.timeout))
        except Exception as exc:  # the network, the issuer, or its document: keep what we have
            logger.warning("JWKS %s: fetch failed (%s: %s); keeping %d known keys", redact(self.url), type(exc).__name__, redact(str(exc)), len(self.keys))
            return
        finally:
            self._inflight = None
        self.keys = keys
        self.fetched_at = self.clock()
        logger.info("JWKS %s: %d keys (%s)", redact(self.url), len(keys), ", ".join(_safe_text(k.kid or "-")[:64] for k in keys))


class KeyRing:
    """The KeyProvider of a config: the shared secret for HS*, the local key and the JWKS for the rest."""

    def __init__(self, config: AuthConfig, jwks: JwksCache | None = None) -> None:
        self.secret = config.secret
        self.public_key = config.verification_key
        self.jwks = jwks

    def keys_for(self, algorithm: str, kid: str | None) -> Sequence[Any]:
        if algorithm in HMAC_ALGORITHMS:
            if self.secret is None:
                raise TokenRejected("no_key")
            return [self.secret]
        found: list[Any] = []
        if self.jwks is not None:
            if kid is not None:
                found = [k.key for k in self.jwks.by_kid(kid) if k.allows(algorithm)]
            else:
                found = [k.key for k in self.jwks.keys if k.allows(algorithm)][:MAX_CANDIDATE_KEYS]
        if not found and self.public_key is not None and key_fits(algorithm, self.public_key):
            found = [self.public_key]
        if not found:
            raise TokenRejected("unknown_kid" if kid is not None and self.jwks is not None else "no_key")
        return found


STATE_KEY = "auth"  # ctx.state: the identity this plugin verified for the request


_LONG_TOKEN = 2048  # characters: a longer token is cached under its sha256, so the cache's size stays bounded


def _cache_key(token: str) -> str | bytes:
    """The token itself: an exact match, no hash per request. A long token: its sha256."""
    return token if len(token) <= _LONG_TOKEN else hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _flat(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


class _Verified:
    """A verified token's claims, with how to hand out a copy no caller can change for the next."""

    __slots__ = ("claims", "valid_until", "identity", "_json")

    def __init__(self, claims: dict[str, Any], valid_until: float) -> None:
        self.claims = claims
        self.valid_until = valid_until
        self.identity: Identity | None = None
        # Scalars, and lists of scalars, copy with the dict (the usual JWT); anything deeper is
        # parsed again from compact JSON, cheaper than copy.deepcopy.
        flat = all(_flat(v) or (type(v) is list and all(_flat(i) for i in v)) for v in claims.values())
        self._json = None if flat else json.dumps(claims, separators=(",", ":"))

    def claims_copy(self) -> dict[str, Any]:
        if self._json is not None:
            return json.loads(self._json)  # type: ignore[no-any-return]
        return {k: (v[:] if type(v) is list else v) for k, v in self.claims.items()}


class Authenticator:
    """A config's verifier with its keys: what the middleware and the auth.* handlers use.

    Verified tokens are cached (`verified_cache_size` entries, LRU; 0 turns the cache off),
    because checking an RS*/ES* signature costs 100–200 microseconds and a client sends
    the same token with every request. The key is the whole token string (its sha256 when it is
    longer than 2048 characters), so any change to a token (a tampered byte, another signature)
    is a miss and is verified in full;
    only successful verifications are cached, never rejections. An entry is good until
    min(exp + leeway, time cached + `verified_cache_ttl`) on this Authenticator's clock; a
    lookup at or after that time is a miss and drops the entry. The TTL bounds how long a
    token keeps working after its key is removed from the JWKS (or the key file replaced): a
    cache hit does not look at the keys again. A hit returns a fresh copy of the claims (and
    `authenticate` a fresh Identity made from the one built at the first verification): the
    dict and its lists copied when the claims are scalars and lists of scalars, else parsed
    again from compact JSON kept in the cache (cheaper than copy.deepcopy), so a caller
    changing them cannot change what later requests see.
    """

    def __init__(
        self,
        config: AuthConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        fetch: Fetch = fetch_url,
    ) -> None:
        self.config = config
        self.jwks = (
            JwksCache(
                config.jwks_url,
                min_interval=config.jwks_min_interval,
                max_age=config.jwks_max_age,
                timeout=config.jwks_timeout,
                fetch=fetch,
                clock=monotonic,
            )
            if config.jwks_url
            else None
        )
        self.verifier = Verifier(config, KeyRing(config, self.jwks), clock)
        self.clock = clock
        # the token (its sha256 when long) -> its verified claims and identity; oldest use first
        self._verified: OrderedDict[str | bytes, _Verified] = OrderedDict()

    async def verify(self, token: str) -> dict[str, Any]:
        """Claims of a genuine token; the JWKS is fetched first when the token needs it.

        A token verified before, and still in the cache, is not verified again (see the class).
        """
        entry = self._cached(token)
        if entry is not None:
            return entry.claims_copy()
        return (await self._verify_and_cache(token)).claims_copy()

    def _cached(self, token: str) -> _Verified | None:
        """The cache entry of a token verified before and still good (a stale one is dropped)."""
        if not self.config.verified_cache_size or not isinstance(token, str):
            return None
        key = _cache_key(token)
        entry = self._verified.get(key)
        if entry is None:
            return None
        if self.clock() < entry.valid_until:
            self._verified.move_to_end(key)
            return entry
        del self._verified[key]
        return None

    async def _verify_and_cache(self, token: str) -> _Verified:
        parsed = self.verifier.parse(token)
        if self.jwks is not None and parsed.algorithm in ASYMMETRIC_ALGORITHMS:
            await self.jwks.ensure(parsed.kid)
        claims = self.verifier.check(parsed)
        now, leeway = self.clock(), self.config.leeway
        valid_until = now + self.config.verified_cache_ttl
        if claims["exp"] < valid_until - leeway:  # compared, never added: exp may be a huge int
            valid_until = claims["exp"] + leeway
        entry = _Verified(claims, valid_until)
        size = self.config.verified_cache_size
        if size and isinstance(token, str):
            key = _cache_key(token)
            self._verified[key] = entry
            self._verified.move_to_end(key)
            while len(self._verified) > size:
                self._verified.popitem(last=False)
        return entry

    async def authenticate(self, token: str) -> Identity:
        entry = self._cached(token) or await self._verify_and_cache(token)
        if entry.identity is None:  # made once per cached token, handed out as copies
            entry.identity = self.verifier.identity(entry.claims)
        known = entry.identity
        return Identity(known.username, list(known.roles), list(known.permissions), entry.claims_copy())

    async def identify(self, ctx: RequestContext) -> Identity:
        """The request's identity: verified once per request (later auth middlewares reuse it)."""
        known = ctx.state.get(STATE_KEY)
        if isinstance(known, tuple) and known[0] is self:
            return known[1]  # type: ignore[no-any-return]
        extracted = extract_token(ctx.flow.request, self.config.token_sources)
        if extracted is None:
            raise TokenRejected("missing")
        identity = await self.authenticate(extracted.token)
        ctx.state[STATE_KEY] = (self, identity)
        return identity


# ------------------------------------------------------------------------------------------
# Applying a decision to the request


def claim_header_value(value: Any) -> str | None:
    """How a claim travels in a header; None when it cannot (absent, or control characters)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = json.dumps(value)
    elif isinstance(value, list) and all(isinstance(v, (str, int, float, bool)) for v in value):
        text = ", ".join(claim_header_value(v) or "" for v in value)
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in text):
        return None
    return text


def forward_claims(request: http.Request, identity: Identity, mapping: Mapping[str, str]) -> list[str]:
    """Set `mapping`'s headers from the identity's claims, replacing what the client sent.

    Returns the headers left out because their claim could not travel in a header.
    """
    dropped: list[str] = []
    for header, claim in mapping.items():
        fast_headers.remove(request.headers, header)  # every copy: a client cannot pre-set X-User
        value = claim_header_value(claim_value(identity.claims, claim))
        if value is None:
            if claim_value(identity.claims, claim) is not None:
                dropped.append(header)
            continue
        fast_headers.put(request.headers, header, value)
    return dropped


def strip_tokens(request: http.Request, sources: Sequence[str]) -> None:
    """Remove the credential of every configured source from the request (strip_token)."""
    for source in sources:
        if source == "header":
            values = request.headers.get_all("authorization")
            kept = [v for v in values if v.strip().partition(" ")[0].lower() != "bearer"]
            if len(kept) != len(values):
                request.headers.set_all("authorization", kept)
            continue
        kind, _, name = source.partition(":")
        if kind == "cookie":
            _strip_cookie(request, name)
        else:
            _strip_query(request, name)


def _strip_cookie(request: http.Request, name: str) -> None:
    values = request.headers.get_all("cookie")
    kept_headers = []
    for value in values:
        pairs = [p for p in value.split(";") if p.strip()]
        kept = [p.strip() for p in pairs if p.strip().partition("=")[0].strip() != name]
        if kept:
            kept_headers.append("; ".join(kept))
    if kept_headers != values:
        request.headers.set_all("cookie", kept_headers)


def _strip_query(request: http.Request, name: str) -> None:
    path, sep, query = request.path.partition("?")
    if not sep:
        return
    fragment = ""
    if "#" in query:
        query, _, fragment = query.partition("#")
        fragment = "#" + fragment
    pairs = query.split("&")
    kept = [p for p in pairs if unquote_plus(p.partition("=")[0]) != name]
    if len(kept) != len(pairs):
        request.path = path + ("?" + "&".join(kept) if kept else "") + fragment


def _audit_text(text: str, limit: int = 200) -> str:
    return _AUDIT_UNSAFE.sub("?", text)[:limit] or "-"


class AuthMiddleware:
    """Applies the decision: deny (401/403/500) or let through with `ctx.user` set."""

    response_phase = False  # declared for the gateway's compiled pipeline: `on_response` does nothing

    def __init__(self, name: str, config: AuthMiddlewareConfig, authenticator: Authenticator) -> None:
        self.name = name
        self.roles = list(config.roles or [])
        self.permissions = list(config.permissions or [])
        self.authenticator = authenticator
        self.plugin_config = authenticator.config

    async def on_request(self, ctx: RequestContext) -> http.Response | None:
        try:
            return await self._decide(ctx)
        except Exception:
            # Fail closed: whatever broke, the request is denied here and never forwarded.
            logger.exception("[%s] auth middleware %r failed; request denied", ctx.request_id, self.name)
            self._audit(ctx, False, "internal_error", 500)
            ctx.notes["auth"] = "error"
            self._count_denial(ctx, "internal_error", 500)
            return ctx.error(500, f"authentication failed in middleware {self.name!r}; the request was denied")

    async def on_response(self, ctx: RequestContext, response: http.Response) -> None:
        return None

    async def _decide(self, ctx: RequestContext) -> http.Response | None:
        try:
            identity = await self.authenticator.identify(ctx)
        except TokenRejected as rejected:
            ctx.notes["auth"] = f"denied:{rejected.reason}"
            self._count_denial(ctx, rejected.reason, 401)
            self._audit(ctx, False, f"{rejected.reason} ({rejected.detail})", 401)
            return ctx.error(
                401,
                f"not authenticated: {rejected.detail}",
                {"WWW-Authenticate": challenge("invalid_token", rejected.detail)},
            )
        ctx.user = identity
        ctx.notes["auth"] = _note(identity.username)
        denial = authorize(identity, self.roles, self.permissions)
        if denial is not None:
            ctx.notes["auth"] += ":forbidden"
            self._count_denial(ctx, "forbidden", 403)
            self._audit(ctx, False, f"forbidden ({denial.detail})", 403, identity)
            return ctx.error(
                403,
                f"insufficient permissions: {denial.detail}",
                {"WWW-Authenticate": challenge("insufficient_scope", denial.detail, denial.scope)},
            )
        request = ctx.flow.request
        dropped = forward_claims(request, identity, self.plugin_config.forward_claims)
        if dropped:
            logger.warning("[%s] claims not forwarded in %s: the values hold control characters", ctx.request_id, ", ".join(dropped))
        if self.plugin_config.strip_token:
            strip_tokens(request, self.plugin_config.token_sources)
        self._audit(ctx, True, "", 200, identity)
        return None

    @staticmethod
    def _count_denial(ctx: RequestContext, reason: str, status: int) -> None:
        """For the metrics: a reason code from this module's fixed set, never request input."""
        if ctx.record is not None:
            ctx.record.auth_denied, ctx.record.auth_status = reason, status

    def _audit(self, ctx: RequestContext, allowed: bool, why: str, status: int, identity: Identity | None = None) -> None:
        """One log line per decision, as `audit` asks. Every log record costs a dispatch through all
        of mitmproxy's addons, so allowed requests are only logged when asked for."""
        audit = self.plugin_config.audit
        if audit == "none" or (allowed and audit != "all"):
            return
        request = ctx.flow.request
        who = _audit_text(identity.username) if identity is not None else "-"
        what = f"{request.method} {_audit_text(request.path.split('?', 1)[0], 300)}"
        where = f'endpoint="{ctx.endpoint.label}" middleware={self.name}'
        if allowed:
            roles = ",".join(identity.roles) if identity is not None else ""
            logger.info("[%s] auth allowed sub=%s %s %s roles=%s", ctx.request_id, who, what, where, _audit_text(roles))
        else:
            logger.warning("[%s] auth denied %d sub=%s %s %s reason=%s", ctx.request_id, status, who, what, where, why)


def _note(username: str) -> str:
    """A username as the flow comment shows it (`auth=alice`), quoted when it has spaces."""
    return username if re.fullmatch(r"[\x21-\x7e]+", username) and '"' not in username else json.dumps(username)


# ------------------------------------------------------------------------------------------
# Demo secrets: a shared secret that has been published (in a repository, a tutorial, jwt.io)
# lets anyone who read it sign tokens for any user and role. Compared on letters and digits only.
KNOWN_DEMO_SECRETS = frozenset(
    {
        "secret", "secretkey", "changeme", "changeit", "password", "passw0rd", "default", "test", "testing", "example",
        "yoursecretkey", "yoursecret", "yourjwtsecret", "your256bitsecret", "your384bitsecret", "your512bitsecret",
        "mysecret", "mysecretkey", "myjwtsecret", "supersecret", "supersecretkey", "topsecret", "jwtsecret", "jwtsecretkey",
        "shhhhh", "keyboardcat", "s3cr3t", "authapidemosecretdonotuseinproduction",
    }
)
# Words that only a placeholder holds ("demo-secret-do-not-use-in-production", "change-me-please").
DEMO_SECRET_MARKERS = ("demo", "donotuse", "dontuse", "notforproduction", "inproduction", "insecure", "notsecure", "changeme", "changethis", "replaceme", "replacethis", "yoursecret", "placeholder", "example", "bitsecret")
DEMO_SECRET_HINT = "set a long random secret from the environment, e.g. jwt_secret: \"${JWT_SECRET}\" with JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')"


def demo_secret_reason(secret: str) -> str | None:
    """Why `secret` is a published or placeholder value (a lint warning), or None."""
    compact = "".join(c for c in secret.lower() if c.isalnum())
    if compact in KNOWN_DEMO_SECRETS:
        return "a well-known example value"
    marker = next((m for m in DEMO_SECRET_MARKERS if m in compact), None)
    if marker is not None:
        return f"a placeholder (it says {marker!r})"
    for size in range(1, min(16, len(secret) // 2) + 1):  # "s3cr3t-s3cr3t-…", "aaaa…": no randomness in it
        if secret[size:] == secret[:-size]:  # periodic: the same `size` characters over and over
            return f"a {size}-character pattern repeated"
    return None


# The plugin


class AuthPlugin(Plugin):
    """mitmproxy addon and Backworks plugin: keeps one Authenticator (and JWKS cache) per config."""

    name = "auth"
    description = "JWT authentication, roles and permissions; the auth.register/login/validate endpoints"
    Config = AuthConfig
    MiddlewareConfig = AuthMiddlewareConfig
    handlers = ("auth.register", "auth.login", "auth.validate")

    def __init__(self) -> None:
        self._authenticators: dict[int, Authenticator] = {}

    @classmethod
    def lint(cls, config: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
        assert isinstance(config, AuthConfig)
        notes: list[tuple[tuple[str | int, ...], str]] = []
        hmac_algorithms = [a for a in config.allowed_algorithms if a in HMAC_ALGORITHMS]
        if config.jwt_secret is not None and hmac_algorithms and (reason := demo_secret_reason(config.jwt_secret)) is not None:
            notes.append(
                (
                    ("jwt_secret",),
                    f"jwt_secret is {reason}: anyone who has read it (in this repository, a README, a tutorial) can forge tokens "
                    f"for any user and role; {DEMO_SECRET_HINT}",
                )
            )
        if config.secret is not None:
            if not hmac_algorithms:
                notes.append((("jwt_secret",), "jwt_secret is not used: no HS* algorithm is in algorithms"))
            else:
                needed = max(HMAC_ALGORITHMS[a]().digest_size for a in hmac_algorithms)
                if len(config.secret) < needed:
                    notes.append(
                        (("jwt_secret",), f"jwt_secret is {len(config.secret)} bytes; {'/'.join(hmac_algorithms)} wants at least {needed} random bytes (RFC 7518 §3.2)")
                    )
        key = config.verification_key
        if key is not None and config.jwks_url is None and not any(key_fits(a, key) for a in config.allowed_algorithms):
            where = "public_key" if config.public_key is not None else "private_key"
            notes.append(((where,), f"the {describe_key(key)} key is not used: no algorithm in algorithms fits it"))
        if config.users_file is not None and config.signing_algorithm is None:
            notes.append((("users_file",), "auth.login/auth.register cannot issue tokens: add jwt_secret, or a private_key fitting an algorithm"))
        return notes

    @classmethod
    def identity_headers(cls, config: BaseModel) -> list[str]:
        assert isinstance(config, AuthConfig)
        return list(config.forward_claims)

    def authenticator_for(self, config: AuthConfig) -> Authenticator:
        """One per config: the middlewares and handlers of a blueprint share its JWKS cache."""
        authenticator = self._authenticators.get(id(config))
        if authenticator is None or authenticator.config is not config:
            authenticator = Authenticator(config)
            self._authenticators[id(config)] = authenticator
        return authenticator

    def issue_token(
        self, config: AuthConfig, username: str, roles: Sequence[str] | None = None, extra_claims: Mapping[str, Any] | None = None
    ) -> str:
        """For auth.register/auth.login (addons.users): see the module-level issue_token."""
        return issue_token(config, username, roles, extra_claims)

    async def verify_token(self, config: AuthConfig, token: str) -> Identity:
        """For auth.validate (addons.users): the identity of a genuine token; TokenRejected otherwise.

        Uses the config's shared Authenticator, so JWKS keys are cached with the middlewares'.
        """
        return await self.authenticator_for(config).authenticate(token)

    def build_middleware(self, middleware: MiddlewareSpec, config: BaseModel) -> AuthMiddleware:
        assert isinstance(config, AuthConfig)
        assert isinstance(middleware.config, AuthMiddlewareConfig)
        return AuthMiddleware(middleware.name, middleware.config, self.authenticator_for(config))

    def build_handler(self, handler: str, endpoint: EndpointSpec, config: BaseModel) -> Handler:
        """auth.register/login/validate live in addons.users (the user store)."""
        assert isinstance(config, AuthConfig)
        try:
            from addons.users import build_user_handler
        except ImportError as exc:
            raise BuildError(f"handler {handler!r} is not available: the user store could not be loaded ({exc})", ("handler",)) from None
        return build_user_handler(handler, endpoint, config, self)  # type: ignore[no-any-return]

    def apply_blueprint(self, config: BaseModel | None, blueprint: LoadedBlueprint) -> None:
        """Forget the authenticators of configs that are no longer served."""
        live = id(config) if config is not None else None
        self._authenticators = {k: v for k, v in self._authenticators.items() if k == live}
