"""What a recorded value looks like: an integer, a UUID, a long hex string, a random-looking token,
a date, an e-mail address, a URI. Both inferences ask: a path segment that is an identifier by its
value becomes a template parameter (`backworks_core.capture.infer`); a string with a format gets
`format` in a JSON Schema (`backworks_core.capture.json_schema`).
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache
from urllib.parse import quote, unquote


# By-value parameters: hex strings at least this long (with a digit), random-looking tokens at
# least this long (letters and digits).
MIN_HEX_LENGTH = 8
MIN_TOKEN_LENGTH = 16


UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_HEX = re.compile(r"[0-9A-Fa-f]{%d,}" % MIN_HEX_LENGTH)
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))"
)
EMAIL = re.compile(r"[^@\s/:]+@[^@\s/.]+(?:\.[^@\s/.]+)+")
# `format: uri` as validators read RFC 3986: ASCII only, `%` escapes well formed, no spaces, `[`
# and `]` only around an IP literal host (a redaction placeholder in a query is not a URI).
_URI_CHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})"
URI = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*://(?:\[[0-9A-Fa-f:.vV]+\]|[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*"
    rf"(?:/{_URI_CHAR}*|\?{_URI_CHAR}*)?(?:#{_URI_CHAR}*)?"
    rf"|(?:mailto|urn|tel|data):{_URI_CHAR}+(?:#{_URI_CHAR}*)?"
)
_TOKEN = re.compile(r"[A-Za-z0-9_\-+=~.]{%d,}" % MIN_TOKEN_LENGTH)
_TOKEN_PARTS = re.compile(r"[_\-+=~.]+")
_WORD_PART = re.compile(r"[A-Za-z]+\d{0,2}|\d{1,4}")  # `oauth2`, `utf8`, `2024`: readable parts


def is_date(text: str) -> bool:
    match = _DATE.fullmatch(text)
    if match is None:
        return False
    try:
        date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return False
    return True


def is_date_time(text: str) -> bool:
    """RFC 3339 `date-time` (as JSON Schema uses it): a real calendar date and in-range clock."""
    match = _DATE_TIME.fullmatch(text)
    if match is None or not is_date(text[:10]):
        return False
    hour, minute, second = int(match[4]), int(match[5]), int(match[6])
    if hour > 23 or minute > 59 or second > 60:  # 60: a leap second
        return False
    if match[7] is not None and (int(match[7]) > 23 or int(match[8]) > 59):
        return False
    return True


def _looks_like_token(text: str) -> bool:
    """Random-looking: long, base64url-ish, letters and digits, and not readable word parts."""
    if not _TOKEN.fullmatch(text):
        return False
    if not any(c.isdigit() for c in text) or not any(c.isalpha() for c in text):
        return False
    parts = [p for p in _TOKEN_PARTS.split(text) if p]
    return not all(_WORD_PART.fullmatch(p) for p in parts)


@lru_cache(maxsize=8192)
def value_kind(segment: str) -> str | None:
    """'int', 'uuid' or 'param' when the value alone says it is an identifier; None for a word."""
    if segment.isascii() and segment.isdigit():  # the router's own test for {x:int}
        return "int"
    if len(segment) == 36 and UUID.fullmatch(segment):
        return "uuid"
    if _HEX.fullmatch(segment) and any(c.isdigit() for c in segment):
        return "param"
    if is_date(segment) or _looks_like_token(segment) or EMAIL.fullmatch(segment):
        return "param"
    if encode_literal(segment) is None:  # cannot be written as a literal the router decodes back
        return "param"
    if "[REDACTED" in segment:  # a secret in the path: a literal would never match the real value
        return "param"
    return None


def encode_literal(value: str) -> str | None:
    """The template text for a decoded literal segment, or None if no text decodes back to it."""
    if not any(c in value for c in "%/?#{}") and not value.startswith(":"):
        return value
    try:
        encoded = quote(value, safe="")
    except UnicodeEncodeError:  # lone surrogates from undecodable request bytes
        return None
    return encoded if unquote(encoded) == value else None
