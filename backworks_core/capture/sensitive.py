"""What counts as a secret: credential names (by word parts), secret-shaped values (JWTs, known key
formats, long random tokens), the configured `RedactionRules`, and the patterns that find
`name=value`, `"name": "value"` and XML/HTML names and values in text. Every pattern runs in
linear time: bodies come from the network. The `Redactor` (`backworks_core.capture.redact`)
applies them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from backworks_core.capture.placeholders import is_redacted


# -- names ---------------------------------------------------------------------------------

# Header names whose values are credentials (lower case), whatever their word parts say.
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "apikey", "x-auth-token", "x-access-token", "x-csrf-token", "x-xsrf-token", "x-amz-security-token"}
)
# Standard headers whose names hold a secret-like word but carry none.
SAFE_HEADERS = frozenset({"www-authenticate", "proxy-authenticate", "authentication-info", "access-control-allow-credentials", "access-control-allow-headers", "access-control-request-headers", "access-control-expose-headers", "x-csrf-token-required"})
# Headers that carry URLs: the whole text rules apply (a token in a Referer's path or query).
URL_HEADERS = frozenset({"referer", "location", "content-location", "link", "refresh", "origin", "x-original-url", "x-forwarded-uri"})
# Headers that are validators or trace ids: random-looking by design, matched on, never secrets.
ID_HEADERS = frozenset({"etag", "if-none-match", "if-match", "traceparent", "tracestate", "x-request-id", "x-correlation-id", "x-amz-request-id", "x-amz-id-2", "x-amz-cf-id", "content-md5", "digest", "content-digest", "repr-digest", "x-trace-id", "request-id", "cf-ray"})

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
    rules = rules or DEFAULT_RULES
    rules = getattr(rules, "rules", rules)  # a run's Redactor carries its rules
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


def credential_shaped(credential: str) -> bool:
    chars = set(credential)
    return not chars.isdisjoint(_DIGITS) or credential.endswith("=") or (len(credential) >= 20 and not chars.isdisjoint(_UPPER))


def path_like(value: str) -> bool:
    """`/static/js/app.js`, `example.com/assets/x`: a path, not base64 with slashes in it."""
    return "/" in value and (value.startswith("/") or any(_LOWER_WORD.fullmatch(segment) for segment in value.split("/")))


def random_token(value: str) -> bool:
    """A long random token: mixed case and digits, high entropy; not an id, a path or a file name."""
    if len(value) < MIN_TOKEN_LENGTH or not TOKEN_CHARS.match(value) or UUID.match(value) or _SRI.match(value):
        return False
    if path_like(value) or _FILE_NAME.match(value):
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
        return credential_shaped(bearer.group(3))
    return random_token(value)


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


DEFAULT_RULES = RedactionRules()

# `name=value` inside text (a URL or a query string echoed in a body, a Referer, a Location).
ASSIGNMENT = re.compile(r"(?<![A-Za-z0-9_.%-])([A-Za-z_][A-Za-z0-9_.-]{0,63})=([^&\s;,\"'<>]+)")
# `"name": "value"` or `name: "value"` inside text: JSON in a string or a page, GraphQL arguments.
QUOTED_PAIR = re.compile(r"(?<![A-Za-z0-9_.-])(\"?)([A-Za-z_][A-Za-z0-9_.-]{0,63})\1[ \t]*:[ \t]*\"((?:[^\"\\\n]|\\.){1,1024})\"")
# XML/HTML: an element's text, and a tag's attributes.
XML_ELEMENT = re.compile(r"<(?:[A-Za-z_][\w.-]{0,63}:)?([A-Za-z_][\w.-]{0,63})(?:\s[^<>]{0,2048})?>([^<]{1,4096})</(?:[A-Za-z_][\w.-]{0,63}:)?([A-Za-z_][\w.-]{0,63})\s*>")
TAG = re.compile(r"<[A-Za-z][\w:.-]{0,63}\s[^<>]{1,4096}>")
ATTRIBUTE = re.compile(r"([\w:.-]{1,64})(\s*=\s*)(?:\"([^\"]*)\"|'([^']*)'|([^\s\"'>]+))")
NAMING_ATTRIBUTES = ("name", "id", "property", "key", "itemprop", "data-name")
VALUE_ATTRIBUTES = frozenset({"value", "content", "data-value"})
JSON_SCAN = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"(\s*:)?|([{}\[\]])')
JSON_SCAN_ALL = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"(\s*:)?|([{}\[\]])|([^\s{}\[\]:,"]+)')
SCRUB_RUN = re.compile(r"[A-Za-z0-9]{6,}")
BORING_VALUES = frozenset({"undefined", "null", "none", "redacted", "true", "false", "bearer", "basic", "********"})
# What `text` could find anything in: an assignment, a quote, a tag, a long run of token characters
# or a `Bearer `; a value without any of these is returned as it is.
MAYBE_SECRET = re.compile(r"[=<\"]|-----BEGIN|[A-Za-z0-9_~+/.-]{15}|(?i:bearer|basic|token)\s")
COOKIE_PLAIN = re.compile(r"[A-Za-z]{1,32}(?:[-_/.][A-Za-z]{1,32}){0,3}|[0-9]{1,10}")
