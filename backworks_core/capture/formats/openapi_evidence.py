"""What a recording says about one operation beyond its examples, for the OpenAPI writer.

Gathered by OperationEvidence one exchange at a time and within fixed bounds, so that the document
describes every exchange recorded (every status, header, field and credential), while
`max_examples` only limits how many examples are shown.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from backworks_core.capture.formats.common import content_type, header_value, is_json_media_type, is_text, try_json
from backworks_core.capture.model import Exchange
from backworks_core.capture.sensitive import JWT, SAFE_HEADERS, SECRET_HEADERS, RedactionRules, is_secret_name


MAX_NAMES = 100  # query parameters, headers and form fields tracked per operation (each kind)
MAX_VALUES = 20  # distinct values kept per name, to type it and give an example
MAX_VALUE_LENGTH = 1024  # longer values are kept cut (they type as strings all the same)
MAX_MEDIA_TYPES = 8  # body examples kept per status and for requests (one per media type)
MAX_PARTS = 200  # multipart parts read per body

# Request headers that the gateway (X-Request-ID, traceparent) or proxies in front of the API add
# (forwarding, trace context): never parameters, whoever sent them.
INJECTED_REQUEST_HEADERS = frozenset(
    {"x-request-id", "traceparent", "tracestate", "forwarded", "via", "x-real-ip", "x-amzn-trace-id", "x-cloud-trace-context", "b3"}
)
_INJECTED_PREFIXES = ("x-forwarded-", "x-b3-")
# Authorization schemes in the IANA registry become `type: http`; any other (`Token …`) is
# documented as an API key in the Authorization header.
HTTP_AUTH_SCHEMES = frozenset(
    {"basic", "bearer", "digest", "dpop", "hoba", "mutual", "negotiate", "oauth", "scram-sha-1", "scram-sha-256", "vapid", "privatetoken", "concealed"}
)
_NOT_API_KEY_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# Answers that refuse a request for its credentials.
REFUSED_STATUSES = frozenset({401, 403})

# A credential as a request carried it: ("http", scheme), ("authorization", scheme word or ""),
# ("header", lower-case name), ("query", name) or ("cookie", name).
Credential = tuple[str, str]


@dataclass
class _Seen:
    """One name (a parameter, a header, a form field) across the messages of an operation."""

    name: str  # as first spelled
    count: int = 0  # messages that had it
    repeated: bool = False  # more than once in one message
    values: list[str] = field(default_factory=list)  # distinct, the first MAX_VALUES
    file: bool = False  # a multipart part with a file name or a binary type
    media: list[str] = field(default_factory=list)  # multipart: the parts' content types

    def merge(self, other: _Seen) -> None:
        self.count += other.count
        self.repeated = self.repeated or other.repeated
        self.file = self.file or other.file
        for value in other.values:
            if len(self.values) < MAX_VALUES and value not in self.values:
                self.values.append(value)
        for media in other.media:
            if media not in self.media:
                self.media.append(media)


def _tally(table: dict[str, _Seen], pairs: Iterable[tuple[str, str]], fold_case: bool) -> list[str]:
    """Count one message's names into `table`; returns the names that did not fit."""
    dropped: list[str] = []
    here: set[str] = set()
    for name, value in pairs:
        key = name.lower() if fold_case else name
        seen = table.get(key)
        if seen is None:
            if len(table) >= MAX_NAMES:
                dropped.append(key)
                continue
            seen = table[key] = _Seen(name)
        if key in here:
            seen.repeated = True
        else:
            here.add(key)
            seen.count += 1
        values = seen.values
        if len(values) < MAX_VALUES:
            value = value[:MAX_VALUE_LENGTH]
            if value not in values:
                values.append(value)
    return dropped


def _merge_tables(into: dict[str, _Seen], other: dict[str, _Seen]) -> None:
    for key, seen in other.items():
        if key in into:
            into[key].merge(seen)
        elif len(into) < MAX_NAMES:
            into[key] = _Seen(seen.name)
            into[key].merge(seen)


@dataclass
class FormPart:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    content_type: str | None
    value: bytes


def multipart_parts(content_type_value: str | None, body: bytes) -> list[FormPart] | None:
    """The parts of a multipart/form-data body (at most MAX_PARTS), or None without a boundary."""
    from email.message import Message
    from email.utils import collapse_rfc2231_value

    if not content_type_value:
        return None
    header = Message()
    header["content-type"] = content_type_value
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return None
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    parts: list[FormPart] = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--") or len(parts) >= MAX_PARTS:
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk[1:] if chunk.startswith(b"\n") else chunk
        head, separator, value = chunk.partition(b"\r\n\r\n")
        if not separator:
            head, separator, value = chunk.partition(b"\n\n")
            if not separator:
                continue
        if value.endswith(b"\r\n"):
            value = value[:-2]
        elif value.endswith(b"\n"):
            value = value[:-1]
        fields = Message()
        for line in head.decode("utf-8", "replace").splitlines():
            key, colon, text = line.partition(":")
            if colon and key.strip():
                fields[key.strip()] = text.strip()
        name = fields.get_param("name", header="content-disposition")
        if name is None:
            continue
        filename = fields.get_param("filename", header="content-disposition")
        media = fields.get("content-type")
        parts.append(
            FormPart(
                collapse_rfc2231_value(name),
                None if filename is None else collapse_rfc2231_value(filename),
                media.split(";", 1)[0].strip().lower() if media else None,
                value,
            )
        )
    return parts


def _is_file_part(part: FormPart) -> bool:
    if part.filename is not None:
        return True
    media = part.content_type
    if media is None or media.startswith("text/") or is_json_media_type(media):
        return not is_text(part.value)
    return True


@dataclass
class _RequestBodies:
    """The recorded request bodies of one media type."""

    count: int = 0
    first: Exchange | None = None
    fields: dict[str, _Seen] = field(default_factory=dict)  # form and multipart fields


def _auth_credential(value: str) -> tuple[Credential, str]:
    """The credential an Authorization value is, and its token (for the JWT test)."""
    word, _, token = value.strip().partition(" ")
    lowered = word.lower()
    if lowered in HTTP_AUTH_SCHEMES:
        return ("http", lowered), token.strip()
    if lowered and re.fullmatch(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*", word) and token.strip():
        return ("authorization", word), token.strip()  # `Token abc`, `ApiKey abc`
    return ("authorization", ""), value  # redacted whole, or a bare token: the scheme is not known


def _cookie_pairs(value: str) -> list[tuple[str, str]]:
    """The (name, value) pairs of a Cookie header."""
    return [(name.strip(), cookie.strip()) for name, eq, cookie in (item.partition("=") for item in value.split(";")) if eq and name.strip()]


class OperationEvidence:
    """Everything the OpenAPI writer needs from an operation's exchanges, gathered one at a time.

    Bounded (MAX_NAMES names per kind, MAX_VALUES values per name, one body per status and media
    type), so it can see every exchange of a 100,000-flow recording. `rules` say which names are
    credentials (the redactor's own test), so that API keys become security schemes.
    """

    def __init__(self, rules: RedactionRules | Any = None) -> None:
        rules = getattr(rules, "rules", rules)  # a run's Redactor carries its rules
        self.rules: RedactionRules = rules if isinstance(rules, RedactionRules) else RedactionRules()
        self.total = 0
        self.first: Exchange | None = None
        self.statuses: Counter[int] = Counter()
        self.responses: dict[int, dict[str, Exchange]] = {}  # status → media type → first example
        self.response_headers: dict[int, dict[str, _Seen]] = {}
        self.query: dict[str, _Seen] = {}
        self.request_headers: dict[str, _Seen] = {}
        self.vary: set[str] = set()  # request headers a response said it varies on (lower case)
        self.bodies: dict[str, _RequestBodies] = {}  # request media type → bodies
        self.with_body = 0
        self.credentials: Counter[frozenset[Credential]] = Counter()
        self.credential_names: dict[Credential, str] = {}  # as first spelled
        self.jwt_tokens = 0  # bearer tokens that are JWTs, and visible ones that are not
        self.other_tokens = 0
        self.challenges: set[str] = set()  # WWW-Authenticate schemes answered (lower case)
        self.refused = 0  # 401/403 answers: the operation enforces some credential
        self.open_answers = 0  # requests without credentials answered other than 401/403
        self.dropped: set[str] = set()  # names beyond MAX_NAMES (the first thousand)
        self.origins: list[tuple[str, str, int]] = []  # scheme, host, port: the servers

    @classmethod
    def of(cls, exchanges: Iterable[Exchange], rules: RedactionRules | Any = None) -> OperationEvidence:
        evidence = cls(rules)
        for exchange in exchanges:
            evidence.add(exchange)
        return evidence

    def add(self, exchange: Exchange) -> None:
        self.total += 1
        if self.first is None:
            self.first = exchange
        origin = (exchange.scheme, exchange.host, exchange.port)
        if origin not in self.origins and len(self.origins) < MAX_VALUES:
            self.origins.append(origin)
        status = exchange.status
        self.statuses[status] += 1
        if exchange.response_body:
            media = _guess_media(exchange.response_headers, exchange.response_body)
            kept = self.responses.setdefault(status, {})
            if media not in kept and len(kept) < MAX_MEDIA_TYPES:
                kept[media] = exchange
        self._drop(_tally(self.response_headers.setdefault(status, {}), exchange.response_headers, fold_case=True))
        for name, value in exchange.response_headers:
            lowered = name.lower()
            if lowered == "vary":
                self.vary.update(item.strip().lower() for item in value.split(",") if item.strip())
            elif lowered == "www-authenticate":
                word = value.strip().split(" ", 1)[0].rstrip(",").lower()
                if word:
                    self.challenges.add(word)
        self._drop(_tally(self.query, exchange.query, fold_case=False))
        self._drop(_tally(self.request_headers, exchange.request_headers, fold_case=True))
        if exchange.request_body:
            self.with_body += 1
            self._add_body(exchange)
        self._add_credentials(exchange)

    def _drop(self, names: list[str]) -> None:
        for name in names:
            if len(self.dropped) < 1000:
                self.dropped.add(name)

    def _add_body(self, exchange: Exchange) -> None:
        media = _guess_media(exchange.request_headers, exchange.request_body)
        bodies = self.bodies.get(media)
        if bodies is None:
            if len(self.bodies) >= MAX_MEDIA_TYPES:
                return
            bodies = self.bodies[media] = _RequestBodies(first=exchange)
        bodies.count += 1
        if media == "application/x-www-form-urlencoded":
            text = exchange.request_body.decode("utf-8", "replace")
            self._drop(_tally(bodies.fields, parse_qsl(text, keep_blank_values=True), fold_case=False))
        elif media == "multipart/form-data":
            parts = multipart_parts(header_value(exchange.request_headers, "content-type"), exchange.request_body) or []
            texts = [(p.name, "" if _is_file_part(p) else p.value.decode("utf-8", "replace")) for p in parts]
            self._drop(_tally(bodies.fields, texts, fold_case=False))
            for part in parts:
                seen = bodies.fields.get(part.name)
                if seen is None:
                    continue
                if _is_file_part(part):
                    seen.file = True
                    if seen.values == [""]:
                        seen.values = []
                if part.content_type and part.content_type not in seen.media and len(seen.media) < MAX_VALUES:
                    seen.media.append(part.content_type)

    def _add_credentials(self, exchange: Exchange) -> None:
        found: set[Credential] = set()
        rules = self.rules
        for name, value in exchange.request_headers:
            lowered = name.lower()
            if lowered == "authorization":
                credential, token = _auth_credential(value)
                if credential == ("http", "bearer") and token:
                    if JWT.fullmatch(token):
                        self.jwt_tokens += 1
                    elif "[REDACTED" not in token:
                        self.other_tokens += 1
                found.add(credential)
                self.credential_names.setdefault(credential, "Authorization")
            elif lowered == "cookie":
                for cookie, cookie_value in _cookie_pairs(value):
                    if cookie_value.startswith("[REDACTED") or _credential_name(cookie, "cookie", rules):
                        found.add(("cookie", cookie))
                        self.credential_names.setdefault(("cookie", cookie), cookie)
            elif _credential_name(name, "header", rules):
                found.add(("header", lowered))
                self.credential_names.setdefault(("header", lowered), name)
        for name, _ in exchange.query:
            if _credential_name(name, "query", rules):
                found.add(("query", name))
                self.credential_names.setdefault(("query", name), name)
        self.credentials[frozenset(found)] += 1
        if exchange.status in REFUSED_STATUSES:
            self.refused += 1
        elif not found:
            self.open_answers += 1

    def enforced(self) -> bool | None:
        """Whether the recording shows this operation requires credentials: False when a request
        without any was answered (not 401/403), True when one was refused and none was let
        through, None when it cannot tell (every request carried credentials, none refused)."""
        if self.open_answers:
            return False
        return True if self.refused else None

    def requirements(self, challenges: set[str]) -> Counter[frozenset[Credential]]:
        """The credential combinations seen, an Authorization header redacted whole resolved to
        the scheme this operation's 401s challenged with (else the API's, `challenges`)."""
        resolved: Counter[frozenset[Credential]] = Counter()
        for combination, count in self.credentials.items():
            resolved[frozenset(_resolve_credential(c, self.challenges, challenges) for c in combination)] += count
        return resolved

    def merge(self, other: OperationEvidence) -> None:
        """Add `other`'s exchanges (the same operation recorded under another template or host)."""
        self.total += other.total
        self.first = self.first or other.first
        self.statuses.update(other.statuses)
        for status, kept in other.responses.items():
            mine = self.responses.setdefault(status, {})
            for media, exchange in kept.items():
                if media not in mine and len(mine) < MAX_MEDIA_TYPES:
                    mine[media] = exchange
        for status, table in other.response_headers.items():
            _merge_tables(self.response_headers.setdefault(status, {}), table)
        _merge_tables(self.query, other.query)
        _merge_tables(self.request_headers, other.request_headers)
        self.vary |= other.vary
        for media, bodies in other.bodies.items():
            mine_bodies = self.bodies.setdefault(media, _RequestBodies(first=bodies.first))
            mine_bodies.count += bodies.count
            _merge_tables(mine_bodies.fields, bodies.fields)
        self.with_body += other.with_body
        self.credentials.update(other.credentials)
        for credential, name in other.credential_names.items():
            self.credential_names.setdefault(credential, name)
        self.jwt_tokens += other.jwt_tokens
        self.other_tokens += other.other_tokens
        self.challenges |= other.challenges
        self.refused += other.refused
        self.open_answers += other.open_answers
        self._drop(sorted(other.dropped))
        self.origins.extend(o for o in other.origins if o not in self.origins)


@lru_cache(maxsize=4096)
def _credential_name(name: str, context: str, rules: RedactionRules) -> bool:
    """The redactor's own test: is a value of this name a credential? (`context`: "header",
    "query" for query parameters, or "cookie".)"""
    if context == "header":
        lowered = name.lower()
        if lowered in _NOT_API_KEY_HEADERS or _injected(lowered):
            return False
        return lowered in SECRET_HEADERS or lowered in rules.headers or (lowered not in SAFE_HEADERS and _is_secret_name(name, rules, "header"))
    if context == "cookie":
        return _is_secret_name(name, rules, "query") or _is_secret_name(name, rules, "json")
    return _is_secret_name(name, rules, context)


def _is_secret_name(name: str, rules: RedactionRules, context: str) -> bool:
    try:
        return is_secret_name(name, rules, context)
    except TypeError:  # a name test without contexts
        return is_secret_name(name, rules)


def _injected(lowered: str) -> bool:
    return lowered in INJECTED_REQUEST_HEADERS or lowered.startswith(_INJECTED_PREFIXES)


def _guess_media(headers: list[tuple[str, str]], body: bytes) -> str:
    """The Content-Type's media type, or a guess from the body when there is none."""
    media = content_type(headers)
    if media:
        return media
    if try_json(body)[0]:
        return "application/json"
    return "text/plain" if is_text(body) else "application/octet-stream"


def _resolve_credential(credential: Credential, *challenge_sets: set[str]) -> Credential:
    """An Authorization header whose scheme redaction hid: the one scheme challenged with
    (`WWW-Authenticate`), looking at each set in turn; else it stays unknown."""
    if credential != ("authorization", ""):
        return credential
    for challenges in challenge_sets:
        registered = {c for c in challenges if c in HTTP_AUTH_SCHEMES}
        if len(registered) == 1:
            return ("http", registered.pop())
    return credential
