"""`plugins.auth.config` (`AuthConfig`) and `middlewares[].config` (`AuthMiddlewareConfig`):
validated when the blueprint loads; key files are read and checked then, so a bad key is a
located error, never a runtime surprise."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from addons.auth.keys import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    SUPPORTED_ALGORITHMS,
    describe_key,
    key_fits,
    load_private_key,
    load_public_key,
    same_key,
)
from backworks_core.model import BlueprintPath, MiddlewareFilter, StrictModel
from backworks_core.validation import Duration, PositiveDuration, did_you_mean

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
_PERMISSION = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6750 scope-token: no space, quote or backslash


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
        if private_path is not None and not same_key(public, load_private_key(private_path).public_key()):
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

