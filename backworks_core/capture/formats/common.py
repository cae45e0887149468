"""What every reader and writer of recorded traffic shares: the error type, header and body tests,
URL pieces, and opening a file that may be gzip- or zlib-compressed."""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Literal, cast
from urllib.parse import parse_qsl, quote, urlencode

from backworks_core.capture.model import Exchange, decoded_headers


PathLike = str | os.PathLike[str]
Headers = Iterable[tuple[str, str]] | Mapping[str, str]
FileKind = Literal["har", "jsonl", "flows"]

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_GZIP_MAGIC = b"\x1f\x8b"
_ZLIB_MAGICS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")


class FormatError(ValueError):
    """A file that is not what it should be; the message names the file (and the line or entry)."""


def _pairs(headers: Headers | None) -> Iterable[tuple[str, str]]:
    if headers is None:
        return ()
    if isinstance(headers, Mapping):
        return headers.items()
    if hasattr(headers, "items") and hasattr(headers, "fields"):  # a mitmproxy Headers object
        return headers.items(multi=True)
    return headers


def header_value(headers: Headers | None, name: str) -> str | None:
    """The first value of header `name` (case-insensitive), or None."""
    lowered = name.lower()
    for key, value in _pairs(headers):
        if key.lower() == lowered:
            return value
    return None


def content_type(headers: Headers | None) -> str | None:
    """The media type of `Content-Type`, lower case and without parameters (`application/json`), or None."""
    value = header_value(headers, "content-type")
    if value is None:
        return None
    media = value.split(";", 1)[0].strip().lower()
    return media or None


def is_json_media_type(media: str | None) -> bool:
    """`application/json`, `text/json`, and every `+json` type (`application/problem+json`, …)."""
    if not media:
        return False
    media = media.split(";", 1)[0].strip().lower()
    return media in ("application/json", "text/json") or media.endswith("+json")


def try_json(body: bytes) -> tuple[bool, Any]:
    """(True, value) when `body` is UTF-8 JSON (a BOM is allowed), else (False, None); JSON
    nested deeper than backworks_core.bodies.DEFAULT_MAX_DEPTH counts as not JSON."""
    from backworks_core.bodies import JsonTooDeep, loads_json

    if not body or not body.strip():
        return False, None
    try:
        return True, loads_json(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, JsonTooDeep):
        return False, None


def is_json(headers: Headers | str | None, body: bytes | None = None) -> bool:
    """Whether a message is JSON.

    `headers` is a header list, a mapping or a Content-Type value. A JSON content type decides
    (even for an empty body); with no Content-Type at all and a `body` given, the body decides
    (it must parse as a JSON object or array). Any other content type is not JSON.
    """
    media = (headers.split(";", 1)[0].strip().lower() or None) if isinstance(headers, str) else content_type(headers)
    if media is not None:
        return is_json_media_type(media)
    if body is None:
        return False
    ok, value = try_json(body)
    return ok and isinstance(value, dict | list)


def is_text(body: bytes) -> bool:
    """Whether `body` is UTF-8 text without control characters other than tab, CR and LF."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(ord(c) < 32 and c not in "\t\r\n" for c in text)


def _decoded_headers(headers: list[tuple[str, str]], body: bytes) -> list[tuple[str, str]]:
    """Headers for a body that is stored decoded (model.decoded_headers, by the body's length)."""
    return decoded_headers(headers, len(body))


def _without_pseudo(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k and not k.startswith(":")]


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _clean(text: str) -> str:
    """`text` without lone surrogates (mitmproxy decodes bad UTF-8 with surrogateescape)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _split_target(target: str) -> tuple[str, list[tuple[str, str]]]:
    path, _, query = target.partition("?")
    return path or "/", parse_qsl(query, keep_blank_values=True) if query else []


def _url(exchange: Exchange) -> str:
    host = f"[{exchange.host}]" if ":" in exchange.host and not exchange.host.startswith("[") else exchange.host
    port = "" if DEFAULT_PORTS.get(exchange.scheme) == exchange.port or not exchange.port else f":{exchange.port}"
    query = f"?{urlencode(exchange.query, quote_via=quote)}" if exchange.query else ""
    return f"{exchange.scheme}://{host}{port}{exchange.path}{query}"


def _open_binary(path: Path) -> IO[bytes]:
    """The file, transparently gunzipped when it is gzip-compressed."""
    with open(path, "rb") as probe:
        zipped = probe.read(2) == _GZIP_MAGIC
    if zipped:
        return cast(IO[bytes], gzip.open(path, "rb"))  # a GzipFile reads and iterates as a binary file does
    return open(path, "rb")  # noqa: SIM115 - handed to the caller


def _head(path: Path, size: int = 65536) -> bytes:
    with _open_binary(path) as handle:
        head = handle.read(size)
    if head.startswith(_ZLIB_MAGICS):
        try:
            head = zlib.decompressobj().decompress(head, size)
        except zlib.error:
            pass
    return head
