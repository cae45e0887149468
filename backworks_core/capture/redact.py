"""Redaction of recorded traffic: credentials never reach a capture file, on by default.

What goes: the values of credential headers (`Authorization`, `Cookie`, `Set-Cookie`, API-key
and token headers), query parameters and JSON/form fields with credential-like names, configured
headers and fields, and anywhere in a body or query, values shaped like a JWT or a long random
token. The names stay, with `[REDACTED]` as the value, so that a mock keeps the shape of what it
replays; identifiers that requests are matched on (numbers, UUIDs, short words) stay as they were.
"""

from __future__ import annotations

import json
import math
import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from backworks_core.bodies import JsonTooDeep, loads_json
from backworks_core.capture.model import Exchange

REDACTED = "[REDACTED]"

# The same secret always becomes the same placeholder, `[REDACTED:<12 hex>]`, so that a recorded
# request still matches its own mock (the mock handler compares the fingerprint of what a client
# sends against the placeholder) and two flows that shared a credential still look alike. The
# fingerprint is 48 bits of SHA-256 over a fixed prefix and the value: it tells equal values apart
# but, like any offline check, lets someone holding the file confirm a guessed weak password.
PLACEHOLDER = re.compile(r"\[REDACTED:([0-9a-f]{12})\]")


def fingerprint(value: str) -> str:
    """12 hex digits that stand for `value` in a placeholder."""
    return hashlib.sha256(b"backworks-redaction:" + value.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def placeholder(value: str) -> str:
    """What a secret `value` is written as: equal secrets, equal placeholders."""
    return f"[REDACTED:{fingerprint(value)}]"


def matches_placeholder(recorded: str, value: str) -> bool:
    """A recorded value (a placeholder, or plain text) matches what a client sends now."""
    found = PLACEHOLDER.fullmatch(recorded)
    return fingerprint(value) == found.group(1) if found else recorded == value

# Header names whose values are credentials (lower case), and words that make any name one.
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "apikey", "x-auth-token", "x-access-token", "x-csrf-token", "x-xsrf-token", "x-amz-security-token"}
)
SECRET_WORDS = ("password", "passwd", "secret", "token", "apikey", "api_key", "api-key", "credential", "session", "signature", "auth", "cookie", "private_key", "otp")
# A field named like this is an identifier, not a secret, whatever word it contains.
NOT_SECRET = frozenset({"author", "authors", "author_id", "authority", "authored_at", "token_type", "expires_in", "session_count"})

# Starts only where a run of token characters starts: without the lookbehind every "eyJ" inside a
# run began a new scan of it, quadratic in a body of "eyJeyJ..." (1 MB: minutes on the event loop).
JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}")
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~+/=-]+$")
TOKEN_IN_TEXT = re.compile(r"[A-Za-z0-9_~+/=-]{24,}")
MIN_TOKEN_LENGTH = 20
MIN_TOKEN_ENTROPY = 3.5  # bits per character: random base64/hex keys are above, words and ids below


@dataclass(frozen=True)
class RedactionRules:
    """What to take out: the defaults above, plus configured header, query and field names."""

    enabled: bool = True
    headers: frozenset[str] = field(default_factory=frozenset)  # lower case
    fields: frozenset[str] = field(default_factory=frozenset)  # JSON/form field and query names, lower case

    @classmethod
    def build(cls, enabled: bool = True, headers: Iterable[str] = (), fields: Iterable[str] = ()) -> RedactionRules:
        return cls(enabled, frozenset(h.lower() for h in headers), frozenset(f.lower() for f in fields))


_DEFAULT_RULES = RedactionRules()


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_like_secret_value(value: str) -> bool:
    """A JWT, or a long random token (an API key, a session id); not a UUID, a number or prose."""
    value = value.strip()
    if JWT.fullmatch(value) or BEARER.fullmatch(value):
        return True
    if len(value) < MIN_TOKEN_LENGTH or not TOKEN_CHARS.match(value) or UUID.match(value):
        return False
    # Random keys mix upper case, lower case and digits (base64, base62); hex strings of the
    # same length are mostly ids (object ids, trace ids, ETags) and stay unless named a secret.
    mixed = any(c.isdigit() for c in value) and any(c.islower() for c in value) and any(c.isupper() for c in value)
    return mixed and _entropy(value) >= MIN_TOKEN_ENTROPY


def is_secret_name(name: str, rules: RedactionRules) -> bool:
    lowered = name.lower()
    if lowered in rules.fields:
        return True
    if lowered in NOT_SECRET:
        return False
    compact = lowered.replace("-", "_")
    return any(word in compact for word in SECRET_WORDS)


# `name=value` inside text (a URL or a query string echoed in a body, a Referer, a Location):
# the value goes when the name is a secret's, as it does for a query parameter.
ASSIGNMENT = re.compile(r"(?<![A-Za-z0-9_.%-])([A-Za-z_][A-Za-z0-9_.-]{0,63})=([^&\s;,\"'<>]+)")


def redact_assignments(text: str, rules: RedactionRules | None = None) -> str:
    """`api_key=abc123` → `api_key=[REDACTED]` anywhere in `text`; other assignments stay."""
    if "=" not in text:
        return text
    rules = rules or _DEFAULT_RULES
    return ASSIGNMENT.sub(lambda m: f"{m.group(1)}={REDACTED}" if is_secret_name(m.group(1), rules) else m.group(0), text)


def redact_text(text: str, rules: RedactionRules | None = None) -> str:
    """Free text (a body that is not JSON or a form): JWTs, `Bearer …`, long tokens and the
    values of secret-named `name=value` assignments go."""
    text = redact_assignments(text, rules)
    text = JWT.sub(REDACTED, text)
    text = BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return TOKEN_IN_TEXT.sub(lambda m: REDACTED if looks_like_secret_value(m.group(0)) else m.group(0), text)


def redact_json(value: Any, rules: RedactionRules, depth: int = 0, secret: bool = False) -> Any:
    """Under a secret-like name every leaf goes, but objects and lists keep their shape."""
    if depth > 64:
        return REDACTED  # hostile nesting: nothing this deep is worth keeping
    if isinstance(value, dict):
        return {key: redact_json(item, rules, depth + 1, secret or is_secret_name(str(key), rules)) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_json(item, rules, depth + 1, secret) for item in value]
    if secret:
        return REDACTED if value_is_set(value) else value
    if isinstance(value, str):
        if len(value) < MIN_TOKEN_LENGTH and "=" not in value:
            return value
        return REDACTED if looks_like_secret_value(value) else redact_text(value, rules)
    return value


def value_is_set(value: Any) -> bool:
    """`"password": null` or `""` shows the shape and leaks nothing: kept."""
    return value not in (None, "", [], {})


def redact_pairs(pairs: Iterable[tuple[str, str]], rules: RedactionRules) -> list[tuple[str, str]]:
    """Query or form parameters."""
    return [(k, REDACTED if (is_secret_name(k, rules) and v) or looks_like_secret_value(v) else redact_text(v, rules)) for k, v in pairs]


def redact_headers(headers: Iterable[tuple[str, str]], rules: RedactionRules) -> list[tuple[str, str]]:
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in SECRET_HEADERS or lowered in rules.headers or (is_secret_name(lowered, rules) and lowered not in _SAFE_HEADERS):
            kept.append((name, REDACTED))
        elif JWT.search(value) or BEARER.search(value):  # by shape only: ids and trace ids stay
            kept.append((name, redact_text(value, rules)))
        else:  # a Referer or a Location may carry `?api_key=…`
            kept.append((name, redact_assignments(value, rules)))
    return kept


# Standard headers whose names contain a secret-like word but carry none.
_SAFE_HEADERS = frozenset({"www-authenticate", "authentication-info", "access-control-allow-credentials", "access-control-allow-headers", "access-control-request-headers"})


def redact_body(body: bytes, content_type: str | None, rules: RedactionRules) -> bytes:
    if not body:
        return body
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return body  # binary: images and archives carry no credentials worth a guess
    if ctype == "application/x-www-form-urlencoded":
        return urlencode(redact_pairs(parse_qsl(text, keep_blank_values=True), rules)).encode()
    stripped = text.lstrip()
    if ctype.endswith("json") or stripped[:1] in ("{", "["):
        try:
            parsed = loads_json(text)  # nested deeper than 64 levels: redacted as text
        except (ValueError, JsonTooDeep):
            pass
        else:
            return json.dumps(redact_json(parsed, rules), ensure_ascii=False, separators=(",", ":")).encode()
    return redact_text(text, rules).encode()


def redact_path(path: str, rules: RedactionRules | None = None) -> str:
    """Path segments are ids to match on; only a JWT-shaped one (a magic link) goes, and the
    value of a secret-named `;api_key=…` parameter in one."""
    return "/".join(REDACTED if JWT.fullmatch(segment) else redact_assignments(segment, rules) for segment in path.split("/"))


def redact_target(target: str, rules: RedactionRules) -> str:
    """A request target (path and query) as a log line may show it: the path and the query
    parameters redacted exactly as the files redact them (`?api_key=[REDACTED]`)."""
    if not rules.enabled:
        return target
    path, mark, query = target.partition("?")
    if not mark:
        return redact_path(path, rules)
    pairs = redact_pairs(parse_qsl(query, keep_blank_values=True), rules)
    return redact_path(path, rules) + "?" + "&".join(f"{quote(k, safe=_SHOWN)}={quote(v, safe=_SHOWN)}" for k, v in pairs)


_SHOWN = "[]/:@!$'()*+,;"  # kept as they are in a logged query: `[REDACTED]` stays readable


def redact_exchange(exchange: Exchange, rules: RedactionRules) -> Exchange:
    if not rules.enabled:
        return exchange
    request_type = exchange.header("content-type", response=False)
    response_type = exchange.header("content-type")
    return replace(
        exchange,
        path=redact_path(exchange.path, rules),
        query=redact_pairs(exchange.query, rules),
        request_headers=redact_headers(exchange.request_headers, rules),
        request_body=redact_body(exchange.request_body, request_type, rules),
        response_headers=redact_headers(exchange.response_headers, rules),
        response_body=redact_body(exchange.response_body, response_type, rules),
    )
