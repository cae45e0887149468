"""Upstream credentials written in a target URL (`http://user:pass@host/`).

They are the gateway's identity towards that upstream. They are parsed out of the URL when the
blueprint loads, so that the URL Backworks prints (status page and API, logs, flow comments,
metrics labels, error answers) never holds them, and sent as a Basic `Authorization` header
built here, never by the HTTP client from the URL: the header replaces one the client sent
(the client's token was for the gateway), as nginx's `proxy_set_header Authorization` would.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote_to_bytes, urlsplit, urlunsplit

AUTHORIZATION = "Authorization"

# RFC 7617 §2: neither user-id nor password may hold control characters; the user-id no colon.
_CONTROL_BYTES = re.compile(rb"[\x00-\x1f\x7f]")

# `scheme://userinfo@` anywhere in a text: what `redact` masks. The userinfo ends at the last
# "@" before the authority's end (a raw "@" in a password is read as urlsplit reads it).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/?#\s'\"<>]*)@")


class CredentialsError(ValueError):
    """A target URL's credentials cannot be sent. The message never holds the password."""


def split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without its userinfo, and the `Authorization` value its credentials make (None
    when it has none).

    The user and password are percent-decoded to bytes, as curl does: `p%40ss` is `p@ss`,
    `%C3%A9` (UTF-8) and `%E9` (Latin-1) are sent as those bytes; a character written as is is
    sent as UTF-8 (RFC 7617's only charset). Raises CredentialsError for what RFC 7617 forbids.
    """
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url, None
    clean = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    user, _, password = userinfo.partition(":")
    raw_user = unquote_to_bytes(user.encode("utf-8", "surrogateescape"))
    raw_password = unquote_to_bytes(password.encode("utf-8", "surrogateescape"))
    if b":" in raw_user:
        raise CredentialsError("the user name in a target URL cannot hold a colon (RFC 7617), not even as %3A")
    if _CONTROL_BYTES.search(raw_user) or _CONTROL_BYTES.search(raw_password):
        raise CredentialsError("the credentials in a target URL cannot hold control characters")
    return clean, basic_authorization(raw_user, raw_password)


def basic_authorization(user: bytes, password: bytes) -> str:
    """`Basic base64(user:password)`: ASCII whatever bytes the credentials hold."""
    return "Basic " + base64.b64encode(user + b":" + password).decode("ascii")


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it masked: `user:***@` when a password is
    written, `***@` for a user alone (often a token used as the user name)."""
    return _USERINFO.sub(_mask, text) if "@" in text else text


def _mask(match: re.Match[str]) -> str:
    user, colon, _ = match.group(2).partition(":")
    return f"{match.group(1)}{user}:***@" if colon else f"{match.group(1)}***@"


def with_authorization(headers: list[tuple[str, str]], value: str) -> list[tuple[str, str]]:
    """`headers` with every `Authorization` field (any case) replaced by one of `value`."""
    kept = [(name, field) for name, field in headers if name.lower() != "authorization"]
    kept.append((AUTHORIZATION, value))
    return kept
