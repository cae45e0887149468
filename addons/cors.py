"""The `cors` plugin (middleware): CORS headers on answers, and preflights answered at the gateway.

    middlewares:
      - name: browser-clients
        plugin: cors
        config:
          path: "/api/*"
          origins: ["https://app.example.com", "https://*.example.com"]
          methods: [GET, PUT]            # also the middleware's method filter (below)
          headers: [Content-Type, X-Trace]
          expose_headers: [X-Request-ID] # beyond the blueprint-format contract
          credentials: true
          max_age: 10m

Three layers: the settings (`CorsMiddlewareConfig`, checked when the blueprint loads), the pure
decisions (`OriginMatcher`, `CorsPolicy.preflight`, `CorsPolicy.actual_headers`), and the
middleware (`CorsMiddleware`) that applies them to a flow.

Decisions where the blueprint format is silent (as Kong's and Envoy's CORS users expect):

- `origins` is required. Each entry is `*` (alone: every origin), an exact origin
  `scheme://host[:port]` (no path, query, fragment, user or trailing `/`; compared
  case-insensitively, a default port — `:80` for http, `:443` for https — is dropped), or a
  pattern whose leftmost host label is `*`: `https://*.example.com` matches **one or more**
  labels (`a.example.com`, `a.b.example.com`), with the same scheme and port, and never the bare
  `example.com` (list it too when wanted). A pattern needs at least two labels after `*.`
  (`*.com` is refused), except `*.localhost`. `null` (sandboxed iframes, `file:` pages) is
  refused: any page can send it.
- **Never `*` together with credentials**: `credentials: true` with `origins: ["*"]` is a load
  error naming the fix (list the origins or use a pattern). `Access-Control-Allow-Origin: *` is
  sent only for `origins: ["*"]` without credentials; otherwise the request's own origin is
  reflected, with `Vary: Origin`.
- `methods` is both the allowed CORS methods and — as for every middleware — the method filter:
  with `methods` set, the middleware applies (by its filter) to requests of those methods, and
  a preflight counts as a request of the method it asks about. Default (no `methods`): GET,
  HEAD, POST, PUT, PATCH, DELETE, OPTIONS. `ANY` allows every method (the preflight answer
  names the one asked about). HEAD counts as GET, as for routing. Preflights for other methods
  are refused; actual requests of other methods get no CORS headers.
- `headers` (the allowed request headers): not set, or `["*"]`, echoes what the preflight asks
  for in `Access-Control-Request-Headers` (Kong's behaviour; unlike a literal `*`, this also
  works with credentials and covers `Authorization`). A list allows only those names
  (case-insensitive); a preflight asking for another is refused.
- `expose_headers` (beyond the blueprint-format contract): `Access-Control-Expose-Headers` on
  actual answers. `*` there is refused together with credentials (browsers take it literally).
- `max_age`: a duration, sent as whole seconds rounded down (`1.5s` → `1`); not set: no
  `Access-Control-Max-Age` (browsers then cache a preflight for 5 s; Chromium caps it at 2 h).
- Preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are answered by the
  first applicable cors middleware, never by the handler or upstream, and no other middleware
  (auth, rate_limit) sees them: browsers send preflights without credentials. The gateway routes
  a preflight to the endpoint of the method it asks about (see backworks_core.gateway), so an
  endpoint listing only `GET`/`PUT` still gets its preflights answered. Allowed: `204` with
  `Access-Control-Allow-Origin`, `-Methods`, `-Headers` (when any are asked for), `-Credentials`
  and `-Max-Age`. Refused (origin, method or a header): `403` with Backworks' JSON error saying
  why, and no `Access-Control-Allow-*` header (browsers fail either way; the 403 and its reason
  show in mitmweb and the devtools). Both carry
  `Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers`.
- Actual requests carrying `Origin`: in `on_response`, so also on errors from the handler, the
  upstream or a later middleware (an auth 401 stays readable by the page: list cors **before**
  auth in `middlewares:`). Any `Access-Control-Allow-Origin`, `-Allow-Credentials` or
  `-Expose-Headers` the upstream set is replaced: the gateway is the CORS authority on the
  paths its cors middleware covers. `Vary: Origin` is added (merged with an existing `Vary`)
  unless the answer is `*`. A refused origin or method gets no CORS headers (the request still
  runs: CORS protects the reader, not the server). A request without `Origin` is untouched.
- The flow comment shows `cors=preflight`, `cors=refused:origin` (…`:method`, `:header`) or
  `cors=allowed`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mitmproxy import http
from pydantic import BaseModel, Field, field_validator, model_validator

from backworks_core import headers as fast_headers
from backworks_core.context import REQUEST_ID_HEADER, RequestContext
from backworks_core.gateway import PREFLIGHT, is_preflight
from backworks_core.loader import MiddlewareSpec
from backworks_core.model import MiddlewareFilter
from backworks_core.plugins import Plugin
from backworks_core.validation import Duration

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
PREFLIGHT_VARY = ("Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers")
# What an actual answer's CORS is made of: replaced, never merged with the upstream's.
ACTUAL_HEADERS = ("access-control-allow-origin", "access-control-allow-credentials", "access-control-expose-headers")
DEFAULT_PORTS = {"http": "80", "https": "443"}
ANSWERED = "cors.preflight"  # ctx.state: a cors middleware answered this preflight

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token: a header or method name
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_ORIGIN = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*)://"
    r"(?P<host>\[[0-9a-f:.]+\]|(?P<wild>\*\.)?" + _LABEL + r"(?:\." + _LABEL + r")*)"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)
EXAMPLE = "https://app.example.com"


# ------------------------------------------------------------------------------------------
# Settings


def normalize_origin(value: str) -> str:
    """`*`, or a canonical origin or pattern (lower case, no default port); ValueError otherwise."""
    text = value.strip()
    if text == "*":
        return text
    if text.lower() == "null":
        raise ValueError("the 'null' origin is not allowed: sandboxed iframes and file: pages send it, so any page could claim it")
    scheme, sep, rest = text.lower().partition("://")
    if not sep or not scheme:
        raise ValueError(f"expected an origin such as {EXAMPLE} (scheme://host[:port]), got {value!r}")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if authority != rest:
        raise ValueError(f"an origin has no path, query or fragment: write {scheme}://{authority!s}, not {value!r}")
    if "@" in authority:
        raise ValueError(f"an origin has no user name or password: got {value!r}")
    match = _ORIGIN.match(text.lower())
    if match is None:
        if "*" in authority:
            raise ValueError(f"a wildcard must be the whole leftmost label of the host, as in https://*.example.com; got {value!r}")
        raise ValueError(f"expected an origin such as {EXAMPLE} (scheme://host[:port]), got {value!r}")
    port = match.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        raise ValueError(f"port {port} of origin {value!r} is not between 1 and 65535")
    host = match.group("host")
    if match.group("wild"):
        suffix = host[2:]
        if "." not in suffix and suffix != "localhost":
            raise ValueError(f"pattern {value!r} would match every site under .{suffix}; name a domain, as in https://*.example.com")
    if port is not None and DEFAULT_PORTS.get(scheme) == str(int(port)):
        port = None
    return f"{scheme}://{host}" + (f":{int(port)}" if port is not None else "")


def _header_name(value: str) -> str:
    if value != "*" and not _TOKEN.match(value):
        raise ValueError(f"{value!r} is not a valid header name")
    return value


class CorsMiddlewareConfig(MiddlewareFilter):
    """The cors middleware's `config`: the filter keys (`path`, `methods`) and the CORS policy."""

    origins: list[str] = Field(min_length=1, description="`*`, exact origins (https://app.example.com) or patterns (https://*.example.com)", examples=[["https://app.example.com", "https://*.example.com"]])
    headers: list[str] | None = Field(None, description="allowed request headers; not set or [*]: echo what the preflight asks for", examples=[["Content-Type", "Authorization"]])
    expose_headers: list[str] | None = Field(None, description="Access-Control-Expose-Headers on actual answers", examples=[["X-Total-Count"]])
    credentials: bool = Field(False, description="Access-Control-Allow-Credentials: true (never with origins [*])", examples=[True])
    max_age: Duration | None = Field(None, description="how long browsers may cache a preflight answer (whole seconds)", examples=["10m"])

    @field_validator("origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        origins = [normalize_origin(item) for item in value]
        if "*" in origins and len(origins) > 1:
            raise ValueError("'*' allows every origin: list it alone, or list only the origins")
        return list(dict.fromkeys(origins))

    @field_validator("headers", "expose_headers")
    @classmethod
    def _headers(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        names = [_header_name(item.strip()) for item in value]
        if "*" in names and len(names) > 1:
            raise ValueError("'*' covers every header: list it alone, or list only the names")
        return names

    @model_validator(mode="after")
    def _never_star_with_credentials(self) -> CorsMiddlewareConfig:
        if self.credentials and self.origins == ["*"]:
            raise ValueError(
                "credentials: true cannot be combined with origins: ['*'] (browsers refuse "
                "Access-Control-Allow-Origin: * on credentialed requests, and reflecting every origin "
                "would let any site read answers with the user's cookies): list the origins, such as "
                f"[{EXAMPLE}], or use a pattern such as https://*.example.com"
            )
        if self.credentials and self.expose_headers == ["*"]:
            raise ValueError("expose_headers: ['*'] is taken literally by browsers on credentialed requests: list the header names")
        return self


# ------------------------------------------------------------------------------------------
# Decisions


class OriginMatcher:
    """Is a request's Origin allowed? Exact origins are a set lookup, patterns one regex."""

    def __init__(self, origins: Iterable[str]) -> None:
        origins = list(origins)
        self.any = origins == ["*"]
        self.exact = frozenset(o for o in origins if "*" not in o)
        patterns = []
        for origin in origins:
            if origin != "*" and "*" in origin:
                scheme, _, rest = origin.partition("://*.")
                suffix, colon, port = rest.partition(":")
                port_part = re.escape(":" + port) if colon else ""
                # one or more labels in place of `*`, then the suffix; the same scheme and port
                patterns.append(re.escape(scheme) + "://(?:" + _LABEL + r"\.)+" + re.escape(suffix) + port_part)
        self.pattern = re.compile("^(?:" + "|".join(patterns) + ")$") if patterns else None

    def allows(self, origin: str) -> bool:
        if self.any:
            return True
        try:
            canonical = normalize_origin(origin)
        except ValueError:
            return False  # `null`, or not an origin at all
        if "*" in canonical:
            return False  # a client sending a pattern as its origin
        return canonical in self.exact or (self.pattern is not None and self.pattern.match(canonical) is not None)


@dataclass(frozen=True)
class Refusal:
    reason: str  # origin, method, header
    detail: str


def _quote(value: str, limit: int = 100) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def merge_vary(headers: http.Headers, names: Sequence[str]) -> None:
    """Add `names` to Vary without repeating one already there; `Vary: *` already covers all."""
    present = [part.strip() for value in fast_headers.values(headers, "vary") for part in value.split(",") if part.strip()]
    if "*" in present:
        return
    known = {p.lower() for p in present}
    added = [n for n in names if n.lower() not in known]
    if added:
        fast_headers.put(headers, "Vary", ", ".join(present + added))


class CorsPolicy:
    def __init__(self, config: CorsMiddlewareConfig) -> None:
        self.origins = OriginMatcher(config.origins)
        methods = config.methods if config.methods is not None else list(DEFAULT_METHODS)
        self.any_method = "ANY" in methods
        self.methods = tuple(dict.fromkeys(m for m in methods if m != "ANY"))
        self.headers = None if config.headers in (None, ["*"]) else tuple(config.headers or ())
        self.allowed_headers = frozenset(h.lower() for h in self.headers) if self.headers is not None else None
        self.expose = ", ".join(config.expose_headers) if config.expose_headers else None
        self.credentials = config.credentials
        self.max_age = int(config.max_age) if config.max_age is not None else None

    def method_allowed(self, method: str) -> bool:
        method = method.upper()
        return self.any_method or method in self.methods or (method == "HEAD" and "GET" in self.methods)

    def allow_origin(self, origin: str) -> str:
        """The Access-Control-Allow-Origin value for an allowed origin."""
        return "*" if self.origins.any and not self.credentials else origin

    def preflight(self, origin: str, method: str, requested_headers: str) -> dict[str, str] | Refusal:
        """The Access-Control-Allow-* headers of an allowed preflight, or why it is refused."""
        if not self.origins.allows(origin):
            return Refusal("origin", f"origin {_quote(origin)} is not allowed")
        if not self.method_allowed(method):
            return Refusal("method", f"method {_quote(method)} is not allowed (allowed: {', '.join(self.methods)})")
        asked = [h.strip().lower() for h in requested_headers.split(",") if h.strip()]
        for name in asked:
            if not _TOKEN.match(name):
                return Refusal("header", f"{_quote(name)} is not a header name")
            if self.allowed_headers is not None and name not in self.allowed_headers:
                allowed = ", ".join(self.headers or ()) or "none"
                return Refusal("header", f"header {_quote(name)} is not allowed (allowed: {allowed})")
        headers = {"Access-Control-Allow-Origin": self.allow_origin(origin)}
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        headers["Access-Control-Allow-Methods"] = method.upper() if self.any_method else ", ".join(self.methods)
        if self.headers is not None:
            if self.headers:
                headers["Access-Control-Allow-Headers"] = ", ".join(self.headers)
        elif asked:
            headers["Access-Control-Allow-Headers"] = ", ".join(dict.fromkeys(asked))
        if self.max_age is not None:
            headers["Access-Control-Max-Age"] = str(self.max_age)
        return headers

    def actual_headers(self, origin: str, method: str) -> dict[str, str] | Refusal:
        """The CORS headers of an actual answer, or why it gets none."""
        if not self.origins.allows(origin):
            return Refusal("origin", f"origin {_quote(origin)} is not allowed")
        if not self.method_allowed(method):
            return Refusal("method", f"method {_quote(method)} is not allowed")
        headers = {"Access-Control-Allow-Origin": self.allow_origin(origin)}
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        if self.expose:
            headers["Access-Control-Expose-Headers"] = self.expose
        return headers


# ------------------------------------------------------------------------------------------
# The middleware


class CorsMiddleware:
    """Answers preflights in `on_request`; adds CORS headers to actual answers in `on_response`."""

    answers_preflights = True  # the gateway routes preflights to it (backworks_core.gateway)

    def __init__(self, name: str, config: CorsMiddlewareConfig) -> None:
        self.name = name
        self.policy = CorsPolicy(config)

    async def on_request(self, ctx: RequestContext) -> http.Response | None:
        request = ctx.flow.request
        origin = fast_headers.get(request.headers, "origin")
        if origin is None or not is_preflight(request):
            return None  # actual requests: on_response
        method = ctx.state.get(PREFLIGHT) or request.headers["access-control-request-method"].strip()
        ctx.state[ANSWERED] = self.name  # answered here: on_response leaves it alone
        decision = self.policy.preflight(origin, method, ",".join(request.headers.get_all("access-control-request-headers")))
        if isinstance(decision, Refusal):
            ctx.notes["cors"] = f"refused:{decision.reason}"
            logger.info("[%s] cors %r refused a preflight: %s", ctx.request_id, self.name, decision.detail)
            response = ctx.error(403, f"CORS preflight refused: {decision.detail}")
        else:
            ctx.notes["cors"] = "preflight"
            response = http.Response.make(204, b"", {**decision, REQUEST_ID_HEADER: ctx.request_id})
            response.headers.pop("content-length", None)  # a 204 carries none (RFC 9110 §8.6)
        merge_vary(response.headers, PREFLIGHT_VARY)
        return response

    async def on_response(self, ctx: RequestContext, response: http.Response) -> None:
        request = ctx.flow.request
        origin = fast_headers.get(request.headers, "origin")
        if origin is None or ANSWERED in ctx.state:
            return  # not a CORS request, or a preflight answered by a cors middleware
        # Several cors middlewares: each replaces the last one's headers, so the first in
        # blueprint order (its on_response runs last) decides, as it does for preflights.
        decision = self.policy.actual_headers(origin, request.method)
        for name in ACTUAL_HEADERS:
            fast_headers.remove(response.headers, name)
        if isinstance(decision, Refusal):
            ctx.notes["cors"] = f"refused:{decision.reason}"
        else:
            ctx.notes["cors"] = "allowed"
            fast_headers.put_all(response.headers, decision.items())
        if not (self.policy.origins.any and not self.policy.credentials):
            merge_vary(response.headers, ("Origin",))


class CorsPlugin(Plugin):
    name = "cors"
    description = "CORS: allowed origins, preflights answered at the gateway"
    MiddlewareConfig = CorsMiddlewareConfig

    def build_middleware(self, middleware: MiddlewareSpec, config: BaseModel) -> CorsMiddleware:
        assert isinstance(middleware.config, CorsMiddlewareConfig)
        return CorsMiddleware(middleware.name, middleware.config)
