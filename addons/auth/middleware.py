"""The middleware: `Authenticator` (a config's verifier, keys and verified-token cache) decides,
`AuthMiddleware` applies the decision to the flow: deny with a JSON error and a
`WWW-Authenticate` challenge, or set `ctx.user`, forward claims, strip the token."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote_plus

from mitmproxy import http

from addons.auth.authorization import authorize, challenge
from addons.auth.jwks import Fetch, JwksCache, KeyRing, fetch_url
from addons.auth.keys import ASYMMETRIC_ALGORITHMS
from addons.auth.settings import AuthConfig, AuthMiddlewareConfig
from addons.auth.tokens import TokenRejected, Verifier, claim_value, extract_token
from backworks_core import headers as fast_headers
from backworks_core.context import Identity, RequestContext
from backworks_core.jsonpath import copy_json

logger = logging.getLogger("addons.auth")  # the audit log's documented name

_AUDIT_UNSAFE = re.compile(r"[^\x21-\x7e]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what a header value cannot carry (a tab can)
_PLAIN_NAME = re.compile(r"[\x21-\x7e]+")


STATE_KEY = "auth"  # ctx.state: the identity this plugin verified for the request


_LONG_TOKEN = 2048  # characters: a longer token is cached under its sha256, so the cache's size stays bounded


def _cache_key(token: str) -> str | bytes:
    """The token itself: an exact match, no hash per request. A long token: its sha256."""
    return token if len(token) <= _LONG_TOKEN else hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _flat(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


class _Verified:
    """A verified token's claims, with how to hand out a copy no caller can change for the next."""

    __slots__ = ("claims", "valid_until", "identity", "_flat")

    def __init__(self, claims: dict[str, Any], valid_until: float) -> None:
        self.claims = claims
        self.valid_until = valid_until
        self.identity: Identity | None = None
        # Scalars, and lists of scalars, copy with the dict (the usual JWT); anything deeper is
        # copied as a JSON tree (jsonpath.copy_json), cheaper than copy.deepcopy.
        self._flat = all(_flat(v) or (type(v) is list and all(_flat(i) for i in v)) for v in claims.values())

    def claims_copy(self) -> dict[str, Any]:
        if not self._flat:
            return copy_json(self.claims)
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
            return known[1]
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
    return None if _CONTROL.search(text) else text


def forward_claims(request: http.Request, identity: Identity, mapping: Mapping[str, str]) -> list[str]:
    """Set `mapping`'s headers from the identity's claims, replacing what the client sent (every
    copy: a client cannot pre-set X-User), in one pass over the request's fields.

    Returns the headers left out because their claim could not travel in a header.
    """
    dropped: list[str] = []
    forwarded: list[tuple[str, str]] = []
    for header, claim in mapping.items():
        raw = claim_value(identity.claims, claim)
        value = claim_header_value(raw)
        if value is not None:
            forwarded.append((header, value))
        elif raw is not None:
            dropped.append(header)
    fast_headers.replace(request.headers, mapping, forwarded)
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
    return username if _PLAIN_NAME.fullmatch(username) and '"' not in username else json.dumps(username)
