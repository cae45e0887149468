"""Redaction of recorded traffic: credentials never reach a capture file, on by default.

Three rules, applied by a `Redactor` that lives for one capture or `mock-from` run:

- **by name**: the value of a credential header, cookie, query/form/multipart field, JSON key,
  XML element or attribute whose name is a secret's (`password`, `access_key`, `X-Api-Key`,
  `client_secret`, `card_number`…: word parts, not substrings, so `author` and `authenticated`
  stay);
- **by shape**: JWTs, known key formats (`sk_live_…`, `ghp_…`, `xoxb-…`, `AKIA…`), `Bearer …`
  and `Basic …` credentials and long random tokens, anywhere in a path, header or text body;
- **by value**: every secret found so is remembered, and wherever the same value appears again
  (a password echoed in a response, a `Set-Cookie` value in a later `Cookie`) it goes too.

A secret becomes `placeholder(value)`, `[REDACTED:<12 hex>]`: equal secrets, equal placeholders,
so a recorded request still matches its own mock (`matches_placeholder`). Only leaves go: names,
structure, booleans, numbers and null stay, and a `Set-Cookie` stays a cookie.
Every pattern here runs in linear time: bodies come from the network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote_plus

from backworks_core.bodies import DEFAULT_LIMIT, DEFAULT_MAX_DEPTH, BodyError, decode, parse_codings
from backworks_core.capture.model import Exchange

logger = logging.getLogger(__name__)

REDACTED = "[REDACTED]"  # where no value exists to stand for (JSON nested past 64 levels)

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
    """A recorded value matches what a client sends now: equal, or equal around its placeholders,
    each of which stands for the text in its place (`Bearer [REDACTED:…]` matches `Bearer <the
    token>`, `sid=[REDACTED:…]; lang=en` the cookie header it came from) or for itself (a client
    that replays a recorded `Set-Cookie` sends the placeholder back)."""
    if recorded == value:
        return True
    pieces = PLACEHOLDER.split(recorded)  # literal, fingerprint, literal, …, literal
    if len(pieces) == 1 or len(pieces) > 17:
        return False
    literals, prints = pieces[0::2], pieces[1::2]
    found = re.fullmatch("(.*?)".join(re.escape(literal) for literal in literals), value, re.S)
    if found is None:
        return False
    return all(text == f"[REDACTED:{fp}]" or fingerprint(text) == fp for text, fp in zip(found.groups(), prints))


def is_redacted(value: str) -> bool:
    """Already a placeholder (or the plain marker): redacting it again changes nothing."""
    return value.startswith("[REDACTED") and (value == REDACTED or PLACEHOLDER.fullmatch(value) is not None)


# -- names ---------------------------------------------------------------------------------

# Header names whose values are credentials (lower case), whatever their word parts say.
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "apikey", "x-auth-token", "x-access-token", "x-csrf-token", "x-xsrf-token", "x-amz-security-token"}
)
# Standard headers whose names hold a secret-like word but carry none.
_SAFE_HEADERS = frozenset({"www-authenticate", "proxy-authenticate", "authentication-info", "access-control-allow-credentials", "access-control-allow-headers", "access-control-request-headers", "access-control-expose-headers", "x-csrf-token-required"})
# Headers that carry URLs: the whole text rules apply (a token in a Referer's path or query).
_URL_HEADERS = frozenset({"referer", "location", "content-location", "link", "refresh", "origin", "x-original-url", "x-forwarded-uri"})
# Headers that are validators or trace ids: random-looking by design, matched on, never secrets.
_ID_HEADERS = frozenset({"etag", "if-none-match", "if-match", "traceparent", "tracestate", "x-request-id", "x-correlation-id", "x-amz-request-id", "x-amz-id-2", "x-amz-cf-id", "content-md5", "digest", "content-digest", "repr-digest", "x-trace-id", "request-id", "cf-ray"})

# A word part that makes a name secret wherever it stands (`password`, `new_password`, `x-auth-token`).
_STRONG = frozenset(
    {"password", "passwd", "pwd", "passphrase", "passcode", "secret", "token", "apikey", "credential", "credentials", "signature", "jwt", "otp", "totp", "hotp", "cvv", "cvc", "cvv2", "cvc2", "ssn", "csrf", "xsrf", "sid", "privatekey", "bearer", "authorization"}
)
# A part that makes a name secret only as its last part or before an id-like one
# (`pin`, `user_pass`, `laravel_session`, `session_id`; not `session_count`, `pass_through`).
_WEAK = frozenset({"pass", "pw", "pin", "sig", "session", "sess", "cookie", "auth", "refresh", "oauth"})
_ID_LIKE = frozenset({"id", "key", "token", "secret", "value", "data", "code", "string", "hash", "cookie", "number", "blob"})
# `key` and `code` are secrets with a qualifier before them (`access_key`, `auth_code`), and on
# their own only in a query or form (`?key=…` is a Google API key, `?code=…` an OAuth code; a
# JSON `"key"` or `"code"` is far more often a map key or an error code).
_KEY_QUALIFIERS = frozenset({"api", "access", "secret", "private", "client", "signing", "sign", "encryption", "master", "license", "licence", "session", "auth", "app", "application", "consumer", "subscription", "account", "storage", "shared", "hmac", "webhook", "service", "developer", "dev", "live", "test", "ssh", "gpg", "pgp", "recovery", "activation", "product"})
_CODE_QUALIFIERS = frozenset({"auth", "authorization", "oauth", "verification", "verify", "otp", "mfa", "totp", "recovery", "backup", "reset", "confirmation", "confirm", "security", "access", "pin", "sms", "login", "invite", "invitation", "activation", "one", "magic", "device", "user"})
_QUERY_ONLY = frozenset({"key", "code"})
_CARD = frozenset({"card", "cc", "credit", "pan"})
_NUMBER = frozenset({"number", "num", "no", "nr"})
# Single-word names (or their compact form) that are secrets.
_COMPACT = frozenset(
    {"apikey", "accesskey", "secretkey", "privatekey", "cardnumber", "creditcard", "ccnumber", "cardnum", "sessionid", "sessid", "phpsessid", "jsessionid", "aspnetsessionid", "connectsid", "sessionkey",
     "authtoken", "accesstoken", "refreshtoken", "idtoken", "csrftoken", "xsrftoken", "clientsecret", "apisecret", "apitoken", "authkey", "authcode", "secretaccesskey", "privatekeyid"}
)
# A last part that says the value is about a secret, not the secret (`token_type`, `password_hint`).
_METADATA = frozenset(
    {"type", "types", "kind", "count", "length", "len", "size", "expires", "expiry", "expiration", "exp", "ttl", "at", "on", "url", "uri", "urls", "endpoint", "path", "name", "names", "hint", "format", "method", "methods", "scheme", "schemes",
     "status", "enabled", "required", "provider", "label", "version", "policy", "strength", "header", "field", "fields", "prefix", "timeout", "lifetime", "duration", "age", "interval", "created", "updated", "changed", "date", "time", "alg",
     "algorithm", "mode", "valid", "validity", "present", "set", "configured", "location", "min", "max", "rules", "error", "errors", "message", "strategy", "source", "style", "id_type", "issued", "scope", "scopes", "state", "reset"}
)
_FLAG_PREFIXES = frozenset({"is", "has", "use", "uses", "show", "needs", "need", "require", "requires", "allow", "allows", "enable", "supports", "can", "should", "no", "with", "without", "must"})
# Names that hold a secret-like word yet name an identifier (kept from the first rule set).
NOT_SECRET = frozenset({"author", "authors", "author_id", "authority", "authored_at", "token_type", "expires_in", "session_count", "x-csrf-token-required"})

_NAME_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def name_parts(name: str) -> list[str]:
    """`X-API-Key` → x, api, key; `accessToken` → access, token; `card_number` → card, number."""
    return [part.lower() for part in _NAME_PART.findall(name[:128])]


def _singular(part: str) -> str:
    return part[:-1] if len(part) > 3 and part.endswith("s") and not part.endswith("ss") else part


def is_secret_name(name: str, rules: RedactionRules | None = None, context: str = "json") -> bool:
    """Whether a value named `name` is a credential. `context` is "query" for query, form and
    multipart fields and `name=value` in text (there `key` and `code` alone are secrets)."""
    rules = rules or _DEFAULT_RULES
    if isinstance(rules, Redactor):
        rules = rules.rules
    lowered = name.strip().lower()
    if not lowered:
        return False
    if lowered in rules.fields:
        return True
    if lowered in NOT_SECRET:
        return False
    parts = name_parts(name)
    if not parts:
        return False
    compact = "".join(parts)
    if context == "query" and compact in _QUERY_ONLY:
        return True
    if compact in _COMPACT or (compact.startswith("x") and compact[1:] in _COMPACT) or _singular(compact) in _STRONG:
        return True
    if len(parts) > 1 and (parts[-1] in _METADATA or parts[0] in _FLAG_PREFIXES):
        return False
    for i, part in enumerate(parts):
        word = _singular(part)
        after = parts[i + 1] if i + 1 < len(parts) else None
        before = parts[i - 1] if i else None
        if word in _STRONG:
            return True
        if word in _WEAK and (after is None or after in _ID_LIKE):
            return True
        if word == "key" and (before in _KEY_QUALIFIERS or (before == "x" and i == 1 and len(parts) == 2)):
            return True
        if word == "code" and before in _CODE_QUALIFIERS:
            return True
        if word in _NUMBER and before in _CARD:
            return True
    return False


# -- shapes --------------------------------------------------------------------------------

# Each starts only where a run of token characters starts: without the lookbehind every "eyJ"
# inside a run began a new scan of it, quadratic in a body of "eyJeyJ..." (1 MB: minutes).
JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
KNOWN_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"  # JWT
    r"|(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}|whsec_[A-Za-z0-9]{16,}"  # Stripe
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,}"  # GitHub, GitLab
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"  # AWS access key ids
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|sk-(?=[A-Za-z0-9_-]{0,200}[0-9])(?=[A-Za-z0-9_-]{0,200}[A-Z])[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic
    r"|npm_[A-Za-z0-9]{36}|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{30,}"
    r")"
)
# `Bearer …`, `Basic …`, `Token …` inside text: the credential needs a digit, `=` padding or 20
# characters with upper case, so that "Basic authentication" in a page stays.
BEARER = re.compile(r"(?i)\b(bearer|basic|token)(\s+)([A-Za-z0-9._~+/-]{8,}=*)")
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]{0,32}PRIVATE KEY-----[A-Za-z0-9+/=\s:,-]{0,16384}?-----END [A-Z ]{0,32}PRIVATE KEY-----")
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~+/=-]+$")
TOKEN_IN_TEXT = re.compile(r"(?<![A-Za-z0-9_~+/-])[A-Za-z0-9_~+/-]{20,}={0,2}")
_DIGITS, _LOWER, _UPPER = frozenset("0123456789"), frozenset("abcdefghijklmnopqrstuvwxyz"), frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER_RUN = re.compile(r"[a-z]{6}")
_LOWER_WORD = re.compile(r"[a-z][a-z_-]+|v[0-9]{1,2}")
_FILE_NAME = re.compile(r".*\.[a-z][a-z0-9]{0,4}$", re.S)
_TYPED_ID = re.compile(r"([a-z]{2,10})_[A-Za-z0-9]{8,}")  # Stripe-style object ids: cus_…, ch_…, evt_…
_SECRET_ID_PREFIXES = frozenset({"sk", "rk", "pk", "rt", "at", "tok", "token", "sess", "key", "secret", "whsec", "pat", "api", "auth", "refresh", "access"})
_SRI = re.compile(r"sha(?:256|384|512)-")
MIN_TOKEN_LENGTH = 20
MIN_TOKEN_ENTROPY = 3.5  # bits per character: random base64/hex keys are above, words and ids below
MIN_SECRET_LENGTH = 6  # shorter values are never scrubbed elsewhere: "en", "1", "true" stay
MAX_KNOWN = 50_000  # secret values remembered in a run


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _credential_shaped(credential: str) -> bool:
    chars = set(credential)
    return not chars.isdisjoint(_DIGITS) or credential.endswith("=") or (len(credential) >= 20 and not chars.isdisjoint(_UPPER))


def _path_like(value: str) -> bool:
    """`/static/js/app.js`, `example.com/assets/x`: a path, not base64 with slashes in it."""
    return "/" in value and (value.startswith("/") or any(_LOWER_WORD.fullmatch(segment) for segment in value.split("/")))


def _random_token(value: str) -> bool:
    """A long random token: mixed case and digits, high entropy; not an id, a path or a file name."""
    if len(value) < MIN_TOKEN_LENGTH or not TOKEN_CHARS.match(value) or UUID.match(value) or _SRI.match(value):
        return False
    if _path_like(value) or _FILE_NAME.match(value):
        return False
    typed = _TYPED_ID.fullmatch(value)
    if typed and typed.group(1) not in _SECRET_ID_PREFIXES:
        return False
    # Random keys mix upper case, lower case and digits (base64, base62); hex strings of the
    # same length are mostly ids (object ids, trace ids, ETags) and stay unless named a secret.
    chars = set(value)
    mixed = not chars.isdisjoint(_DIGITS) and not chars.isdisjoint(_LOWER) and not chars.isdisjoint(_UPPER)
    if not mixed or _entropy(value) < MIN_TOKEN_ENTROPY:
        return False
    # Random characters change class (upper, lower, digit) at about 6 of 10 steps; identifiers
    # made of words (`getElementById2024Something`, `Installation2024Guide`) far less often.
    classes = [0 if c.isdigit() else 1 if c.isupper() else 2 for c in value if c.isalnum()]
    changes = sum(1 for a, b in zip(classes, classes[1:]) if a != b) / max(1, len(classes) - 1)
    return changes >= 0.45 or (changes >= 0.3 and _LOWER_RUN.search(value) is None)


def looks_like_secret_value(value: str) -> bool:
    """A JWT, a known key format, a whole `Bearer …`, or a long random token; not a UUID, a
    number, a path, a file name or prose."""
    value = value.strip()
    if not value or is_redacted(value):
        return False
    if KNOWN_TOKEN.fullmatch(value):
        return True
    bearer = BEARER.fullmatch(value)
    if bearer:
        return _credential_shaped(bearer.group(3))
    return _random_token(value)


# -- rules and the run's redactor ----------------------------------------------------------


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

# `name=value` inside text (a URL or a query string echoed in a body, a Referer, a Location).
ASSIGNMENT = re.compile(r"(?<![A-Za-z0-9_.%-])([A-Za-z_][A-Za-z0-9_.-]{0,63})=([^&\s;,\"'<>]+)")
# `"name": "value"` or `name: "value"` inside text: JSON in a string or a page, GraphQL arguments.
QUOTED_PAIR = re.compile(r"(?<![A-Za-z0-9_.-])(\"?)([A-Za-z_][A-Za-z0-9_.-]{0,63})\1[ \t]*:[ \t]*\"((?:[^\"\\\n]|\\.){1,1024})\"")
# XML/HTML: an element's text, and a tag's attributes.
XML_ELEMENT = re.compile(r"<(?:[A-Za-z_][\w.-]{0,63}:)?([A-Za-z_][\w.-]{0,63})(?:\s[^<>]{0,2048})?>([^<]{1,4096})</(?:[A-Za-z_][\w.-]{0,63}:)?([A-Za-z_][\w.-]{0,63})\s*>")
TAG = re.compile(r"<[A-Za-z][\w:.-]{0,63}\s[^<>]{1,4096}>")
ATTRIBUTE = re.compile(r"([\w:.-]{1,64})(\s*=\s*)(?:\"([^\"]*)\"|'([^']*)'|([^\s\"'>]+))")
_NAMING_ATTRIBUTES = ("name", "id", "property", "key", "itemprop", "data-name")
_VALUE_ATTRIBUTES = frozenset({"value", "content", "data-value"})
JSON_SCAN = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"(\s*:)?|([{}\[\]])')
JSON_SCAN_ALL = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"(\s*:)?|([{}\[\]])|([^\s{}\[\]:,"]+)')
_SCRUB_RUN = re.compile(r"[A-Za-z0-9]{6,}")
_BORING_VALUES = frozenset({"undefined", "null", "none", "redacted", "true", "false", "bearer", "basic", "********"})
# What `text` could find anything in: an assignment, a quote, a tag, a long run of token characters
# or a `Bearer `; a value without any of these is returned as it is.
_MAYBE_SECRET = re.compile(r"[=<\"]|-----BEGIN|[A-Za-z0-9_~+/.-]{15}|(?i:bearer|basic|token)\s")
_COOKIE_PLAIN = re.compile(r"[A-Za-z]{1,32}(?:[-_/.][A-Za-z]{1,32}){0,3}|[0-9]{1,10}")


class Redactor:
    """The rules, plus the secret values seen so far in this run (bounded): each is replaced by
    its placeholder wherever it appears again. One per capture or `mock-from` run; a plain
    `RedactionRules` given where a redactor is expected gets a fresh one."""

    def __init__(self, rules: RedactionRules | None = None) -> None:
        self.rules = rules or _DEFAULT_RULES
        self._by_run: dict[str, list[str]] = {}  # a secret's longest alphanumeric run → the secrets
        self._loose: list[str] = []  # secrets without a run of 6 letters or digits (`p@ss-w0rd!`)
        self._loose_at: list[int] = []  # when each of `_loose` was learned (its `learned` then)
        self._run_at: dict[str, int] = {}  # a run of `_by_run` → when the last secret under it was learned
        self._known: set[str] = set()
        self.learned = 0  # grows with every new secret: tells a part it must be redone
        self._full_warned = False
        self._names: dict[tuple[str, str], bool] = {}  # secret_name, decided once per name

    @classmethod
    def of(cls, rules: RedactionRules | Redactor | None) -> Redactor:
        return rules if isinstance(rules, Redactor) else cls(rules)

    @property
    def enabled(self) -> bool:
        return self.rules.enabled

    # value memory

    def learn(self, value: str) -> None:
        value = value.strip()
        if len(value) < MIN_SECRET_LENGTH or value in self._known or value.lower() in _BORING_VALUES or "[REDACTED" in value:
            return
        if value.isdigit() and len(value) < 8:
            return  # a short number would scrub ids and counts everywhere
        if len(self._known) >= MAX_KNOWN:
            if not self._full_warned:
                self._full_warned = True
                logger.warning("redaction: %d secret values remembered; later ones are redacted where found but not scrubbed elsewhere", MAX_KNOWN)
            return
        self._known.add(value)
        runs = _SCRUB_RUN.findall(value)
        if runs:
            run = max(runs, key=len)
            self._by_run.setdefault(run, []).append(value)
            self._run_at[run] = self.learned
        else:
            self._loose.append(value)
            self._loose_at.append(self.learned)
        self.learned += 1

    def secret(self, value: str) -> str:
        """A secret's placeholder; the value is remembered for the rest of the run."""
        if not value or is_redacted(value):
            return value
        self.learn(value)
        return placeholder(value)

    def scrub(self, text: str) -> str:
        """Every remembered secret in `text` replaced by its placeholder."""
        if len(text) < MIN_SECRET_LENGTH or not self._known:
            return text
        found: list[str] = []
        if self._by_run:
            by_run = self._by_run
            for run in set(_SCRUB_RUN.findall(text)):  # the text's runs looked up: never all secrets walked
                if run in by_run:
                    found.extend(by_run[run])
        found.extend(secret for secret in self._loose if secret in text)
        for secret in sorted(found, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, placeholder(secret))
        return text

    def outdated(self, exchange: Exchange, since: int) -> bool:
        """Whether `exchange`, redacted when this redactor had learned `since` secrets, may hold
        one learned since: redacting it again (`exchange`) could then change it. It asks what
        `scrub` asks (a secret is looked up by its longest run of letters and digits, a loose
        one as a substring) of every text scrubbed in it, in each form `scrub` may see it (JSON
        strings unescaped, form values unquoted); a body still encoded counts as yes. A yes may
        be wrong, a no is not: a single read can redact each exchange once, as it comes, and
        again at the end only where a secret learned later may hide."""
        if since >= self.learned or not self.enabled:
            return False
        run_at = self._run_at
        loose = [secret for secret, at in zip(self._loose, self._loose_at) if at >= since]
        for text in _scrubbed_texts(exchange):
            if text is None:
                return True
            if len(text) < MIN_SECRET_LENGTH:
                continue
            for run in _SCRUB_RUN.findall(text):
                if run_at.get(run, -1) >= since:
                    return True
            if loose and any(secret in text for secret in loose):
                return True
        return False

    # names and leaves

    def secret_name(self, name: str, context: str = "json") -> bool:
        key = (name, context)
        known = self._names.get(key)
        if known is None:
            known = is_secret_name(name, self.rules, context)
            if len(self._names) < 10_000:
                self._names[key] = known
        return known

    def named_value(self, name: str | None, value: str, context: str = "json") -> str:
        """A string value under `name` (a JSON key, a field, an XML element)."""
        if not value or is_redacted(value):
            return value
        if name is not None:
            lowered = name.lower()
            if lowered in ("authorization", "proxy-authorization"):
                return self.authorization(value)
            if lowered == "cookie":
                return self.cookie_header(value)
            if lowered == "set-cookie":
                return self.set_cookie(value)
            if self.secret_name(name, context):
                return self.secret(value)
        return self.free_value(value)

    def free_value(self, value: str) -> str:
        """A value no name marks: secret-shaped as a whole, or text with secrets inside."""
        if len(value) < 4:
            return value
        if len(value) >= 15 and looks_like_secret_value(value):
            return self.secret(value)
        if _MAYBE_SECRET.search(value) is None:
            return value  # most values: words, numbers, emails, short ids
        return self.text(value)

    # text

    def text(self, text: str, generic: bool = True) -> str:
        """Free text: secret-named assignments and quoted pairs, XML/HTML elements and
        attributes, known key formats, `Bearer …`, private keys and (if `generic`) long random
        tokens, then the remembered secrets. Not scrubbed here: `scrub` runs over whole parts."""
        if "=" in text:
            text = ASSIGNMENT.sub(self._assignment, text)
        if ":" in text and '"' in text:
            text = QUOTED_PAIR.sub(self._quoted_pair, text)
        if "<" in text:
            text = XML_ELEMENT.sub(self._element, text)
            text = TAG.sub(self._tag, text)
        if "-----BEGIN" in text:
            text = PRIVATE_KEY.sub(lambda m: self.secret(m.group(0)), text)
        text = KNOWN_TOKEN.sub(lambda m: self.secret(m.group(0)), text)
        text = BEARER.sub(self._bearer, text)
        if generic:
            text = TOKEN_IN_TEXT.sub(self._token_run, text)
        return text

    def _assignment(self, m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        if is_redacted(value) or not self.secret_name(name, "query"):
            return m.group(0)
        return f"{name}={self.secret(value)}"

    def _quoted_pair(self, m: re.Match[str]) -> str:
        name, value = m.group(2), m.group(3)
        if is_redacted(value) or not self.secret_name(name):
            return m.group(0)
        return m.group(0)[: m.start(3) - m.start(0)] + self.secret(value) + '"'

    def _element(self, m: re.Match[str]) -> str:
        name, content, closing = m.group(1), m.group(2), m.group(3)
        if name != closing or not content.strip() or is_redacted(content.strip()) or not self.secret_name(name):
            return m.group(0)
        start, end = m.start(2) - m.start(0), m.end(2) - m.start(0)
        whole = m.group(0)
        return whole[:start] + content.replace(content.strip(), self.secret(content.strip())) + whole[end:]

    def _tag(self, m: re.Match[str]) -> str:
        tag = m.group(0)
        attributes = {a.group(1).lower(): a.group(3) if a.group(3) is not None else a.group(4) if a.group(4) is not None else a.group(5) for a in ATTRIBUTE.finditer(tag)}
        named_secret = any(self.secret_name(attributes[n]) for n in _NAMING_ATTRIBUTES if attributes.get(n)) or (attributes.get("type") or "").lower() == "password"

        def attribute(a: re.Match[str]) -> str:
            name = a.group(1)
            value = a.group(3) if a.group(3) is not None else a.group(4) if a.group(4) is not None else a.group(5)
            lowered = name.lower()
            secret = (named_secret and lowered in _VALUE_ATTRIBUTES) or (lowered not in _NAMING_ATTRIBUTES and lowered != "type" and self.secret_name(name))
            if not secret or not value or is_redacted(value):
                return a.group(0)
            quote_mark = '"' if a.group(3) is not None else "'" if a.group(4) is not None else ""
            return f"{name}{a.group(2)}{quote_mark}{self.secret(value)}{quote_mark}"

        return ATTRIBUTE.sub(attribute, tag)

    def _bearer(self, m: re.Match[str]) -> str:
        if not _credential_shaped(m.group(3)):
            return m.group(0)
        return f"{m.group(1)}{m.group(2)}{self.secret(m.group(3))}"

    def _token_run(self, m: re.Match[str]) -> str:
        run = m.group(0)
        if m.start() >= 7 and m.string[m.start() - 7 : m.start()] == "base64,":
            return run  # a data: URI (an inline image) is content, not a credential
        if _path_like(run):
            return "/".join(self.secret(s) if _random_token(s) else s for s in run.split("/"))
        return self.secret(run) if _random_token(run) else run

    # headers, cookies, query, path

    def authorization(self, value: str) -> str:
        """`Bearer <token>` → `Bearer [REDACTED:…]`: the scheme stays (it says which auth was used)."""
        scheme, space, credential = value.strip().partition(" ")
        if not space or not scheme.isalpha() or not credential.strip():
            return self.secret(value)
        credential = credential.strip()
        if scheme.lower() == "basic":
            try:
                user_pass = base64.b64decode(credential, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                user_pass = ""
            if ":" in user_pass:
                self.learn(user_pass.partition(":")[2])  # an echoed password goes too
        return f"{scheme} {self.secret(credential)}"

    def cookie_value_is_secret(self, name: str, value: str) -> bool:
        """A cookie's value goes unless it is plainly not a credential (`lang=en`, `theme=dark`,
        `tz=Europe/Paris`, a small number) and its name is not a session's or a secret's."""
        if not value or is_redacted(value):
            return False
        if self.secret_name(name, "query") or self.secret_name(name):
            return True
        return not _COOKIE_PLAIN.fullmatch(value.strip('"'))

    def cookie_header(self, value: str) -> str:
        """`sid=abc; lang=en` → `sid=[REDACTED:…]; lang=en`: names and plain values stay."""
        pieces = []
        for piece in value.split(";"):
            name, eq, cookie = piece.partition("=")
            if eq and self.cookie_value_is_secret(name.strip(), cookie.strip()):
                piece = f"{name}={self.secret(cookie.strip())}"
            pieces.append(piece)
        return ";".join(pieces)

    def set_cookie(self, value: str) -> str:
        """`sid=abc; Path=/; HttpOnly` → `sid=[REDACTED:…]; Path=/; HttpOnly`: still a cookie."""
        first, semicolon, attributes = value.partition(";")
        name, eq, cookie = first.partition("=")
        if eq and self.cookie_value_is_secret(name.strip(), cookie.strip()):
            first = f"{name}={self.secret(cookie.strip())}"
        return first + semicolon + attributes

    def header(self, name: str, value: str) -> str:
        lowered = name.lower()
        if lowered in ("authorization", "proxy-authorization"):
            return self.authorization(value) if value else value
        if lowered == "cookie":
            return self.cookie_header(value)
        if lowered == "set-cookie":
            return self.set_cookie(value)
        if lowered in SECRET_HEADERS or lowered in self.rules.headers or (lowered not in _SAFE_HEADERS and self.secret_name(lowered, "header")):
            return self.secret(value) if value else value
        if lowered in _ID_HEADERS:
            return value
        return self.text(value, generic=lowered in _URL_HEADERS)

    def headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        done = [(name, self.header(name, value)) for name, value in headers]
        return [(name, self.scrub(value)) for name, value in done]

    def pair(self, name: str, value: str) -> str:
        """A query, form or multipart field."""
        if value and self.secret_name(name, "query"):
            return self.secret(value)
        return self.free_value(value)

    def pairs(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        done = [(k, self.pair(k, v)) for k, v in pairs]
        return [(k, self.scrub(v)) for k, v in done]

    def segment(self, segment: str) -> str:
        if not segment or is_redacted(segment):
            return segment
        if KNOWN_TOKEN.fullmatch(segment) or _random_token(segment):
            return self.secret(segment)
        if "=" in segment:  # a matrix parameter: `;session=…`
            segment = ASSIGNMENT.sub(self._assignment, segment)
        return segment

    def path(self, path: str) -> str:
        """Path segments are ids to match on; a token-shaped one (a magic link, `/unsubscribe/
        sk_live_…`) goes, as does a secret-named `;name=value` and any remembered secret."""
        return self.scrub("/".join(self.segment(segment) for segment in path.split("/")))

    def target(self, target: str) -> str:
        """A request target (path and query) as a log line shows it, redacted as the files are."""
        if not self.enabled:
            return target
        path, mark, query = target.partition("?")
        if not mark:
            return self.path(path)
        pairs = self.pairs(parse_qsl(query, keep_blank_values=True))
        return self.path(path) + "?" + "&".join(f"{quote(k, safe=_SHOWN)}={quote(v, safe=_SHOWN)}" for k, v in pairs)

    # bodies

    def body(self, body: bytes, content_type: str | None) -> bytes:
        """Text bodies of any kind; what is not redacted keeps its exact bytes."""
        if not body:
            return body
        ctype = (content_type or "").split(";", 1)[0].strip().lower()
        if ctype.startswith("multipart/"):
            return self.multipart(body, content_type or "")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return body  # binary: images and archives carry no credentials worth a guess
        if ctype == "application/x-www-form-urlencoded":
            out = self.form(text)
        else:
            stripped = text.lstrip()
            out = None
            if ctype.endswith("json") or stripped[:1] in ("{", "["):
                out = self.json_text(text)
            if out is None:
                out = self.scrub(self.text(text))
        return body if out == text else out.encode("utf-8")

    def form(self, text: str) -> str:
        """`a=1&password=x` → `a=1&password=%5BREDACTED%3A…%5D`; untouched pairs keep their bytes."""
        pieces = []
        for piece in text.split("&"):
            raw_name, eq, raw_value = piece.partition("=")
            if eq:
                name, value = unquote_plus(raw_name), unquote_plus(raw_value)
                new = self.scrub(self.pair(name, value))
                if new != value:
                    piece = f"{raw_name}={quote_plus(new)}"
            pieces.append(piece)
        return "&".join(pieces)

    def json_text(self, text: str) -> str | None:
        """A JSON document, redacted string by string in place (formatting kept); None if it is
        not JSON (or nested past 64 levels: then it is redacted as text)."""
        try:
            json.loads(text)
        except (ValueError, RecursionError):
            return None
        # Strings (a key when a `:` follows) and brackets; numbers and literals only when a
        # configured field may name one. Everything between matches is skipped at C speed, and
        # `findall` hands over plain tuples: positions are looked up only for what changes.
        scan = JSON_SCAN_ALL if self.rules.fields else JSON_SCAN
        changes: dict[int, tuple[str, str]] = {}  # index of the match → (its value, its new value)
        stack: list[list[Any]] = []  # [is_object, name]: a list's items take the list's name
        for index, (raw, colon, bracket, *literal) in enumerate(scan.findall(text)):
            if bracket:
                if bracket == "{":
                    stack.append([True, None])
                elif bracket == "[":
                    stack.append([False, stack[-1][1] if stack else None])
                elif stack:
                    stack.pop()
                if len(stack) > DEFAULT_MAX_DEPTH:
                    return None  # hostile nesting: redacted as text
                continue
            if literal and literal[0]:
                name = stack[-1][1] if stack else None
                if name is not None and name.lower() in self.rules.fields and literal[0] not in ("true", "false", "null"):
                    changes[index] = (literal[0], self.secret(literal[0]))  # a configured field: numbers go too
                continue
            value = raw if "\\" not in raw else json.loads(f'"{raw}"')
            if colon:
                if stack:
                    stack[-1][1] = value
                continue
            new = self.named_value(stack[-1][1] if stack else None, value)
            if new != value or (self._known and len(value) >= MIN_SECRET_LENGTH):
                changes[index] = (value, new)
        if self._known:  # everything remembered, including what this body taught
            changes = {index: (value, self.scrub(new)) for index, (value, new) in changes.items()}
        changes = {index: (value, new) for index, (value, new) in changes.items() if new != value}
        if not changes:
            return text
        out: list[str] = []
        at = 0
        for index, m in enumerate(scan.finditer(text)):
            change = changes.get(index)
            if change is None:
                continue
            new = change[1]
            begin, finish = (m.start(1) - 1, m.end(1) + 1) if m.group(1) is not None else (m.start(), m.end())
            out.append(text[at:begin])
            out.append(json.dumps(new, ensure_ascii=False))
            at = finish
        if not out:
            return text
        out.append(text[at:])
        return "".join(out)

    def multipart(self, body: bytes, content_type: str) -> bytes:
        """Each part by its own name and type; file parts keep their names and types, their
        contents are redacted as bodies of their type (binary stays)."""
        found = re.search(r'boundary="?([^";,]{1,200})"?', content_type, re.I)
        if not found:
            return body
        delimiter = b"--" + found.group(1).encode("latin-1")
        chunks = body.split(delimiter)
        out = [chunks[0]]
        for chunk in chunks[1:]:
            head, sep, content = chunk.partition(b"\r\n\r\n")
            if not sep:
                out.append(chunk)
                continue
            headers = head.decode("latin-1")
            trail = b"\r\n" if content.endswith(b"\r\n") else b""
            content = content[: len(content) - len(trail)]
            disposition = re.search(r'(?im)^content-disposition:[^\r\n]*?\bname="([^"]{0,200})"', headers)
            is_file = re.search(r"(?im)^content-disposition:[^\r\n]*?\bfilename", headers) is not None
            part_type = re.search(r"(?im)^content-type:\s*([^\r\n]{0,200})", headers)
            if is_file or disposition is None:
                content = self.body(content, part_type.group(1) if part_type else None)
            else:
                try:
                    value = content.decode("utf-8")
                except UnicodeDecodeError:
                    pass
                else:
                    content = self.scrub(self.pair(disposition.group(1), value)).encode("utf-8")
            out.append(head + sep + content + trail)
        return delimiter.join(out)

    # the whole exchange

    def exchange(self, exchange: Exchange) -> Exchange:
        """Every part redacted; a part done before a secret was learned later in the same flow
        (a password echoed in the response, a token handed out in it) is done again."""
        if not self.enabled:
            return exchange
        request_type = exchange.header("content-type", response=False)
        response_type = exchange.header("content-type")
        parts: list[tuple[str, Callable[[], Any]]] = [
            ("path", lambda: self.path(exchange.path)),
            ("query", lambda: self.pairs(exchange.query)),
            ("request_headers", lambda: self.headers(exchange.request_headers)),
            ("request_body", lambda: self.coded_body(exchange.request_body, exchange.request_headers, request_type)),
            ("response_headers", lambda: self.headers(exchange.response_headers)),
            ("response_body", lambda: self.coded_body(exchange.response_body, exchange.response_headers, response_type)),
        ]
        done: dict[str, Any] = {}
        started: dict[str, int] = {}
        for name, make in parts:
            started[name] = self.learned
            done[name] = make()
        for name, make in parts:
            if started[name] != self.learned:
                done[name] = make()
        for side in ("request", "response"):
            body, decoded = done[f"{side}_body"]
            done[f"{side}_body"] = body
            if decoded:  # redacted in its decoded form: the headers say so
                done[f"{side}_headers"] = _decoded_headers(done[f"{side}_headers"], len(body))
        return replace(exchange, **done)

    def coded_body(self, body: bytes, headers: list[tuple[str, str]], content_type: str | None) -> tuple[bytes, bool]:
        """A body that may still carry its Content-Encoding (gzip, br, zstd): redacted decoded.
        Unchanged, it keeps its encoded bytes; changed, it is kept decoded (second value True).
        One that cannot be decoded (unknown coding, corrupt, past 10 MiB) cannot be checked:
        it is recorded empty rather than unredacted."""
        encoding = [v for k, v in headers if k.lower() == "content-encoding"]
        if not body or not encoding:
            return self.body(body, content_type), False
        try:
            codings = parse_codings(encoding)
            plain = decode(body, codings, DEFAULT_LIMIT)
        except BodyError:
            logger.warning("redaction: a body with Content-Encoding %r could not be decoded to be redacted; recorded empty", ", ".join(encoding)[:60])
            return b"", True
        redacted = self.body(plain, content_type)
        return (body, False) if redacted == plain else (redacted, True)


_JSON_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|(.))", re.S)
_JSON_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _scrubbed_texts(exchange: Exchange) -> Iterator[str | None]:
    """Every text `Redactor.exchange` scrubs, in the forms `scrub` may see it; None for a body
    still encoded (its text is not at hand)."""
    yield exchange.path
    for _, value in exchange.query:
        yield value
    for headers, body in ((exchange.request_headers, exchange.request_body), (exchange.response_headers, exchange.response_body)):
        for name, value in headers:
            yield value
            if body and name.lower() == "content-encoding":
                yield None
        if body:
            text = body.decode("utf-8", "replace")  # a multipart body's text parts stay readable
            yield text
            if "\\" in text:  # JSON strings are scrubbed unescaped
                yield _JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)) if m.group(1) else _JSON_SIMPLE_ESCAPES.get(m.group(2), m.group(2)), text)
            if "%" in text or "+" in text:  # form and multipart values unquoted
                yield unquote_plus(text)


def _decoded_headers(headers: list[tuple[str, str]], length: int) -> list[tuple[str, str]]:
    """Content-Encoding dropped and Content-Length made true, for a body now kept decoded."""
    out = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-encoding":
            continue
        out.append((name, str(length)) if lowered == "content-length" else (name, value))
    return out


_SHOWN = "[]/:@!$'()*+,;"  # kept as they are in a logged query: `[REDACTED:…]` stays readable


# -- functions over one value, each with a redactor of its own ------------------------------


def redact_exchange(exchange: Exchange, rules: RedactionRules | Redactor) -> Exchange:
    """One exchange; give a `Redactor` to scrub secrets seen in earlier exchanges of the run."""
    return Redactor.of(rules).exchange(exchange)


def redact_text(text: str, rules: RedactionRules | None = None) -> str:
    """Free text: secrets by name (`api_key=…`, `"password": "…"`, `<token>…</token>`), by shape."""
    redactor = Redactor(rules)
    return redactor.scrub(redactor.text(text))


def redact_assignments(text: str, rules: RedactionRules | None = None) -> str:
    """`api_key=abc123` → `api_key=[REDACTED:…]` anywhere in `text`; other assignments stay."""
    return ASSIGNMENT.sub(Redactor(rules)._assignment, text) if "=" in text else text


def redact_json(value: Any, rules: RedactionRules | None = None) -> Any:
    """A parsed JSON value: string leaves by their own name or shape; objects, lists, booleans,
    numbers and null keep their shape and values."""
    redactor = Redactor(rules)

    def walk(item: Any, name: str | None, depth: int) -> Any:
        if depth > 64:
            return REDACTED  # hostile nesting: nothing this deep is worth keeping
        if isinstance(item, dict):
            return {key: walk(child, str(key), depth + 1) for key, child in item.items()}
        if isinstance(item, list):
            return [walk(child, name, depth + 1) for child in item]
        if isinstance(item, str):
            return redactor.scrub(redactor.named_value(name, item))
        if name is not None and name.lower() in redactor.rules.fields and item is not None and not isinstance(item, bool):
            return redactor.secret(json.dumps(item))
        return item

    first = walk(value, None, 0)
    return walk(value, None, 0) if redactor.learned else first  # again, knowing every secret: echoes before them go too


def redact_pairs(pairs: Iterable[tuple[str, str]], rules: RedactionRules | None = None) -> list[tuple[str, str]]:
    """Query or form parameters."""
    return Redactor(rules).pairs(pairs)


def redact_headers(headers: Iterable[tuple[str, str]], rules: RedactionRules | None = None) -> list[tuple[str, str]]:
    return Redactor(rules).headers(headers)


def redact_body(body: bytes, content_type: str | None, rules: RedactionRules | None = None) -> bytes:
    return Redactor(rules).body(body, content_type)


def redact_path(path: str, rules: RedactionRules | None = None) -> str:
    return Redactor(rules).path(path)


def redact_target(target: str, rules: RedactionRules | Redactor) -> str:
    """A request target (path and query) as a log line may show it: the path and the query
    parameters redacted exactly as the files redact them (`?api_key=[REDACTED:…]`)."""
    return Redactor.of(rules).target(target)
