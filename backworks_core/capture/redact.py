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
Every pattern runs in linear time: bodies come from the network.

What is a secret (names, shapes, the configured rules, the text patterns) is
`backworks_core.capture.sensitive`; what a secret is written as, `backworks_core.capture.placeholders`.
Their public names are re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote_plus

from backworks_core.bodies import DEFAULT_LIMIT, BodyError, decode, parse_codings
from backworks_core.capture import redact_bodies
from backworks_core.capture.model import Exchange, decoded_headers
from backworks_core.capture.placeholders import PLACEHOLDER, REDACTED, fingerprint, is_redacted, matches_placeholder, placeholder
from backworks_core.capture.sensitive import (
    ASSIGNMENT, ATTRIBUTE, BEARER, BORING_VALUES, COOKIE_PLAIN, DEFAULT_RULES, ID_HEADERS, JSON_SCAN, JSON_SCAN_ALL, JWT, KNOWN_TOKEN, MAX_KNOWN,
    MAYBE_SECRET, MIN_SECRET_LENGTH, MIN_TOKEN_ENTROPY, MIN_TOKEN_LENGTH, NAMING_ATTRIBUTES, NOT_SECRET, PRIVATE_KEY, QUOTED_PAIR, SAFE_HEADERS,
    SCRUB_RUN, SECRET_HEADERS, TAG, TOKEN_CHARS, TOKEN_IN_TEXT, URL_HEADERS, UUID, VALUE_ATTRIBUTES, XML_ELEMENT, RedactionRules, credential_shaped,
    is_secret_name, looks_like_secret_value, name_parts, path_like, random_token,
)

__all__ = [  # what callers import from here, wherever it is defined
    "ASSIGNMENT", "ATTRIBUTE", "BEARER", "JSON_SCAN", "JSON_SCAN_ALL", "JWT", "KNOWN_TOKEN", "MAX_KNOWN", "MIN_SECRET_LENGTH", "MIN_TOKEN_ENTROPY",
    "MIN_TOKEN_LENGTH", "NOT_SECRET", "PLACEHOLDER", "PRIVATE_KEY", "QUOTED_PAIR", "REDACTED", "SECRET_HEADERS", "TAG", "TOKEN_CHARS",
    "TOKEN_IN_TEXT", "UUID", "XML_ELEMENT", "RedactionRules", "Redactor", "fingerprint", "is_redacted", "is_secret_name", "looks_like_secret_value",
    "matches_placeholder", "name_parts", "placeholder", "redact_assignments", "redact_body", "redact_exchange", "redact_headers", "redact_json",
    "redact_pairs", "redact_path", "redact_target", "redact_text",
]

logger = logging.getLogger(__name__)


class Redactor:
    """The rules, plus the secret values seen so far in this run (bounded): each is replaced by
    its placeholder wherever it appears again. One per capture or `mock-from` run; a plain
    `RedactionRules` given where a redactor is expected gets a fresh one."""

    def __init__(self, rules: RedactionRules | None = None) -> None:
        self.rules = rules or DEFAULT_RULES
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

    @property
    def remembers(self) -> bool:
        """Whether any secret value is remembered: then every text is scrubbed for them too."""
        return bool(self._known)

    # value memory

    def learn(self, value: str) -> None:
        value = value.strip()
        if len(value) < MIN_SECRET_LENGTH or value in self._known or value.lower() in BORING_VALUES or "[REDACTED" in value:
            return
        if value.isdigit() and len(value) < 8:
            return  # a short number would scrub ids and counts everywhere
        if len(self._known) >= MAX_KNOWN:
            if not self._full_warned:
                self._full_warned = True
                logger.warning("redaction: %d secret values remembered; later ones are redacted where found but not scrubbed elsewhere", MAX_KNOWN)
            return
        self._known.add(value)
        runs = SCRUB_RUN.findall(value)
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
            for run in set(SCRUB_RUN.findall(text)):  # the text's runs looked up: never all secrets walked
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
            for run in SCRUB_RUN.findall(text):
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
        if MAYBE_SECRET.search(value) is None:
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
        named_secret = any(self.secret_name(attributes[n]) for n in NAMING_ATTRIBUTES if attributes.get(n)) or (attributes.get("type") or "").lower() == "password"

        def attribute(a: re.Match[str]) -> str:
            name = a.group(1)
            value = a.group(3) if a.group(3) is not None else a.group(4) if a.group(4) is not None else a.group(5)
            lowered = name.lower()
            secret = (named_secret and lowered in VALUE_ATTRIBUTES) or (lowered not in NAMING_ATTRIBUTES and lowered != "type" and self.secret_name(name))
            if not secret or not value or is_redacted(value):
                return a.group(0)
            quote_mark = '"' if a.group(3) is not None else "'" if a.group(4) is not None else ""
            return f"{name}{a.group(2)}{quote_mark}{self.secret(value)}{quote_mark}"

        return ATTRIBUTE.sub(attribute, tag)

    def _bearer(self, m: re.Match[str]) -> str:
        if not credential_shaped(m.group(3)):
            return m.group(0)
        return f"{m.group(1)}{m.group(2)}{self.secret(m.group(3))}"

    def _token_run(self, m: re.Match[str]) -> str:
        run = m.group(0)
        if m.start() >= 7 and m.string[m.start() - 7 : m.start()] == "base64,":
            return run  # a data: URI (an inline image) is content, not a credential
        if path_like(run):
            return "/".join(self.secret(s) if random_token(s) else s for s in run.split("/"))
        return self.secret(run) if random_token(run) else run

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
        return not COOKIE_PLAIN.fullmatch(value.strip('"'))

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
        if lowered in SECRET_HEADERS or lowered in self.rules.headers or (lowered not in SAFE_HEADERS and self.secret_name(lowered, "header")):
            return self.secret(value) if value else value
        if lowered in ID_HEADERS:
            return value
        return self.text(value, generic=lowered in URL_HEADERS)

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
        if KNOWN_TOKEN.fullmatch(segment) or random_token(segment):
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
        out: str | None
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
        not JSON (or nested past 64 levels: then it is redacted as text). (`redact_bodies`)"""
        return redact_bodies.json_text(self, text)

    def multipart(self, body: bytes, content_type: str) -> bytes:
        """Each part by its own name and type; file parts keep their names and types, their
        contents are redacted as bodies of their type (binary stays). (`redact_bodies`)"""
        return redact_bodies.multipart(self, body, content_type)

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
                done[f"{side}_headers"] = decoded_headers(done[f"{side}_headers"], len(body))
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
