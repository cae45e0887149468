"""Bounded decoding of message bodies: Content-Encoding undone in steps, JSON nesting capped.

mitmproxy's `message.content`, `get_text()` and `json()` undo the whole `Content-Encoding`
chain in one call: a few hundred bytes of br, gzip or zstd become hundreds of megabytes on the
event loop, and `json.loads` of 100,000 nested arrays raises RecursionError. Everything in
Backworks that reads a body (users, `validate:`, handlers, transforms, capture) goes through
`decoded_body` and `loads_json` instead:

- `decoded_body(message, limit)`: the codings of `Content-Encoding` (all its fields, in order;
  identity, gzip, x-gzip, deflate (zlib or raw), br, zstd) undone from the last to the first,
  each stage streaming into the next in bounded steps; as soon as any stage has produced more
  than `limit` bytes → `BodyTooLarge` (413). A stage's step is 64 KiB of output (Brotli 1.2
  grows its buffer in blocks: up to 96 KiB), except with
  Brotli < 1.2 (mitmproxy 11), whose decoder cannot bound its output: it is fed 8 input bytes
  at a time, so one step yields at most two meta-blocks (32 MiB), and with zstandard (also
  mitmproxy 11), fed 32 bytes at a time (at most 8 blocks: 1 MiB). The body as received is
  held to the same limit (a compressed body larger than what it may decode to is refused
  before any work). Any other coding → `UnsupportedEncoding` (415, with `Accept-Encoding`);
  a stream that does not decode, stops early or has bytes after its end → `CorruptBody`
  (400). zstd frames may not ask for a window over 8 MiB (RFC 9659). The result is kept
  beside the message, so features that read the body one after another decode it once.
- `loads_json(data, max_depth)`: `json.loads`, then JSON nested deeper than `max_depth`
  (`[]` is depth 1) → `JsonTooDeep` (400), never a RecursionError.

The limit callers pass is the endpoint's `max_body_size` when it has one, else
`DEFAULT_LIMIT`. These errors are not ValueErrors on purpose: code that treats a ValueError
as "not JSON, leave it" must not let a bomb through that way; the gateway answers them
(backworks_core.limits.body_refusal).
"""

from __future__ import annotations

import json
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import brotli  # type: ignore[import-untyped]
from mitmproxy import http

try:  # mitmproxy 12: the standard library's API (Python 3.14) or its backport
    from compression import zstd as _zstdlib  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    try:
        from backports import zstd as _zstdlib  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        _zstdlib = None  # type: ignore[assignment,unused-ignore]
try:  # mitmproxy 11
    import zstandard as _zstandard  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    _zstandard = None  # type: ignore[assignment,unused-ignore]

DEFAULT_LIMIT = 10 * 1024 * 1024
"""Decoded bytes at most, where the endpoint sets no `max_body_size` (10 MiB)."""
DEFAULT_MAX_DEPTH = 64
"""JSON nesting at most: System.Text.Json's default; keeps Backworks' own recursive walks
(jsonschema, JSON paths, mock `when`, redaction) far below Python's recursion limit."""
STEP = 64 * 1024  # output of one decoding step
BROTLI_FEED = 8  # input bytes per step where Brotli cannot bound its output (< 1.2)
ZSTANDARD_FEED = 32  # input bytes per step with zstandard (a 4-byte RLE block is 128 KiB)
ZSTD_MAX_WINDOW_LOG = 23  # 8 MiB, the window RFC 9659 allows the zstd content coding
CODINGS = ("gzip", "deflate", "br", "zstd")
ACCEPT_ENCODING = "gzip, deflate, br, zstd, identity"


class BodyError(Exception):
    """A body Backworks refuses to read; `status` and `note` are the answer and the flow note."""

    status = 400
    note = "bad_body"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        return {}


class BodyTooLarge(BodyError):
    """Past the limit: as received, once decoded, or (streamed) as it arrives."""

    status = 413
    note = "max_body_size"

    def __init__(self, message: str, limit: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit


class UnsupportedEncoding(BodyError):
    status = 415
    note = "content_encoding"

    @property
    def headers(self) -> dict[str, str]:
        return {"Accept-Encoding": ACCEPT_ENCODING}


class CorruptBody(BodyError):
    note = "bad_encoding"


class JsonTooDeep(BodyError):
    note = "json_depth"

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"JSON nested deeper than {max_depth} levels")
        self.max_depth = max_depth


def too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"is larger than the limit of {limit} bytes once its Content-Encoding is undone", limit)


def parse_codings(values: Iterable[str]) -> list[str]:
    """The codings of the Content-Encoding fields, in the order they were applied; identity
    and empty list elements dropped, x-gzip read as gzip; UnsupportedEncoding for any other."""
    codings: list[str] = []
    for value in values:
        for item in value.split(","):
            coding = item.strip().lower()
            if coding in ("", "identity"):
                continue
            if coding == "x-gzip":
                coding = "gzip"
            if coding not in CODINGS:
                shown = item.strip()[:40]
                raise UnsupportedEncoding(f"has Content-Encoding {shown!r}, which Backworks does not decode (it decodes {ACCEPT_ENCODING})")
            codings.append(coding)
    return codings


# --------------------------------------------------------------------------- stages


def _slices(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The input in pieces of at most `size`: a decoder's unconsumed tail stays small."""
    for chunk in chunks:
        if len(chunk) <= size:
            if chunk:
                yield chunk
            continue
        view = memoryview(chunk)
        for start in range(0, len(view), size):
            yield view[start : start + size]  # type: ignore[misc]


def _inflate(chunks: Iterable[bytes], wbits: int, members: bool, name: str) -> Iterator[bytes]:
    d = zlib.decompressobj(wbits)
    seen = False
    try:
        for data in _slices(chunks, STEP):
            seen = True
            while data:
                if d.eof:
                    if not members:
                        raise CorruptBody(f"does not decode as {name}: bytes after the end of the stream")
                    d = zlib.decompressobj(wbits)  # the next gzip member
                out = d.decompress(data, STEP)
                data = d.unused_data if d.eof else d.unconsumed_tail
                if out:
                    yield out
        while seen and not d.eof:  # the input is all in; what the decoder still holds
            out = d.decompress(b"", STEP)
            if not out:
                raise CorruptBody(f"does not decode as {name}: the stream ends early")
            yield out
    except zlib.error as exc:
        raise CorruptBody(f"does not decode as {name}: {exc}") from None


def _gzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    return _inflate(chunks, 16 + zlib.MAX_WBITS, True, "gzip")


def _deflate(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """zlib-wrapped (RFC 9110) or raw deflate, as servers send both; told apart by the zlib header."""
    it = iter(_slices(chunks, STEP))
    first = b""
    for piece in it:
        first += bytes(piece)
        if len(first) >= 2:
            break
    zlib_header = len(first) >= 2 and first[0] & 0x0F == 8 and first[0] >> 4 <= 7 and ((first[0] << 8) | first[1]) % 31 == 0
    rest = _chain([first] if first else [], it)
    return _inflate(rest, zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS, False, "deflate")


def _chain(head: list[bytes], tail: Iterator[bytes]) -> Iterator[bytes]:
    yield from head
    yield from tail


_BROTLI_BOUNDED = hasattr(brotli.Decompressor(), "can_accept_more_data")  # Brotli >= 1.2


def _brotli(chunks: Iterable[bytes]) -> Iterator[bytes]:
    d = brotli.Decompressor()
    seen = False
    try:
        if _BROTLI_BOUNDED:
            for data in _slices(chunks, STEP):
                seen = True
                out = d.process(bytes(data), output_buffer_limit=STEP)
                while True:
                    if out:
                        yield out
                    if d.can_accept_more_data():
                        break
                    out = d.process(b"", output_buffer_limit=STEP)
                    if not out and not d.can_accept_more_data():
                        raise CorruptBody("does not decode as br: the decoder makes no progress")
            while seen and not d.is_finished():  # the input is all in; what the decoder still holds
                out = d.process(b"", output_buffer_limit=STEP)
                if not out:
                    break
                yield out
        else:
            for data in _slices(chunks, BROTLI_FEED):
                seen = True
                out = d.process(bytes(data))
                if out:
                    yield out
    except brotli.error as exc:
        raise CorruptBody(f"does not decode as br: {exc or 'invalid stream'}") from None
    if seen and not d.is_finished():
        raise CorruptBody("does not decode as br: the stream ends early")


def _zstd(chunks: Iterable[bytes]) -> Iterator[bytes]:
    if _zstdlib is not None:
        return _zstd_stdlib(chunks)
    if _zstandard is not None:
        return _zstd_zstandard(chunks)
    raise UnsupportedEncoding("has Content-Encoding 'zstd', and no zstd decoder is installed")


def _zstd_stdlib(chunks: Iterable[bytes]) -> Iterator[bytes]:
    def new() -> Any:
        return _zstdlib.ZstdDecompressor(options={_zstdlib.DecompressionParameter.window_log_max: ZSTD_MAX_WINDOW_LOG})

    d = new()
    seen = False
    try:
        for data in _slices(chunks, STEP):
            seen = True
            while True:
                if d.eof:
                    d = new()  # the next frame
                out = d.decompress(data, STEP)
                if out:
                    yield out
                if d.eof:
                    data = d.unused_data
                    if not data:
                        break
                elif d.needs_input:
                    break
                else:
                    data = b""
        if seen and not d.eof:
            raise CorruptBody("does not decode as zstd: the stream ends early")
    except _zstdlib.ZstdError as exc:
        raise CorruptBody(f"does not decode as zstd: {exc}") from None


def _zstd_zstandard(chunks: Iterable[bytes]) -> Iterator[bytes]:
    dctx = _zstandard.ZstdDecompressor(max_window_size=1 << ZSTD_MAX_WINDOW_LOG)
    d = dctx.decompressobj()
    seen = False
    try:
        for data in _slices(chunks, ZSTANDARD_FEED):
            seen = True
            data = bytes(data)
            while data:
                if d.eof:
                    d = dctx.decompressobj()  # the next frame
                out = d.decompress(data)
                data = d.unused_data if d.eof else b""
                if out:
                    yield out
        if seen and not d.eof:
            raise CorruptBody("does not decode as zstd: the stream ends early")
    except _zstandard.ZstdError as exc:
        raise CorruptBody(f"does not decode as zstd: {exc}") from None


DECODERS: dict[str, Callable[[Iterable[bytes]], Iterator[bytes]]] = {"gzip": _gzip, "deflate": _deflate, "br": _brotli, "zstd": _zstd}


def _capped(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        yield chunk


def decode(raw: bytes, codings: list[str], limit: int) -> bytes:
    """`raw` with `codings` (in the order applied) undone; no stage yields more than `limit`."""
    if len(raw) > limit:
        raise too_large(limit)
    if not codings or not raw:
        return raw
    stream: Iterator[bytes] = iter((raw,))
    for coding in reversed(codings):
        stream = _capped(DECODERS[coding](stream), limit)
    return b"".join(stream)


# --------------------------------------------------------------------------- per message


@dataclass
class _Decoded:
    raw: bytes
    encoding: tuple[str, ...]
    body: bytes | None = None
    # A refusal, as its class and message: never the exception itself, whose traceback holds the
    # decoders' frames (their last chunks) and this message, which the weak cache must not keep.
    error: type[BodyError] | None = None
    message: str = ""
    limit: int = 0  # of the attempt that failed with BodyTooLarge


_CACHE: weakref.WeakKeyDictionary[http.Message, _Decoded] = weakref.WeakKeyDictionary()


def content_encoding(message: http.Message) -> tuple[str, ...]:
    return tuple(message.headers.get_all("content-encoding"))


def decoded_body(message: http.Message, limit: int) -> bytes:
    """The body with its Content-Encoding undone, at most `limit` bytes (else BodyTooLarge).

    Raises BodyError (413/415/400). A streamed body (not held) is b"". The result is kept
    beside the message while its raw bytes and Content-Encoding stay the same.
    """
    raw = message.raw_content
    if not raw:
        return b""
    encoding = content_encoding(message)
    cached = _CACHE.get(message)
    if cached is not None and cached.raw is raw and cached.encoding == encoding:
        if cached.body is not None:
            if len(cached.body) > limit:
                raise too_large(limit)
            return cached.body
        assert cached.error is not None
        if cached.error is not BodyTooLarge:
            raise cached.error(cached.message)
        if limit <= cached.limit:
            raise too_large(limit)
    entry = _Decoded(raw, encoding)
    try:
        entry.body = decode(raw, parse_codings(encoding), limit)
    except BodyError as exc:
        entry.error, entry.message, entry.limit = type(exc), exc.message, limit
        _CACHE[message] = entry
        raise
    _CACHE[message] = entry
    return entry.body


def decoded_text(message: http.Message, limit: int) -> str:
    """The decoded body as text in its declared charset (UTF-8 when none), bad bytes replaced."""
    body = decoded_body(message, limit)
    charset = "utf-8"
    content_type = message.headers.get("content-type", "")
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    try:
        return body.decode(charset, "replace")
    except LookupError:
        return body.decode("utf-8", "replace")


# --------------------------------------------------------------------------- JSON


def loads_json(data: bytes | bytearray | str, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """`json.loads`, refusing nesting deeper than `max_depth` with JsonTooDeep, never a
    RecursionError. Invalid JSON raises json's own ValueError, as `json.loads` does."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise JsonTooDeep(max_depth) from None
    if isinstance(data, str):
        openers = data.count("[") + data.count("{")
    else:
        openers = data.count(b"[") + data.count(b"{")
    if openers > max_depth and json_depth(value, max_depth) > max_depth:  # fewer openers: cannot be deeper
        raise JsonTooDeep(max_depth)
    return value


def json_depth(value: Any, stop: int | None = None) -> int:
    """Nesting of a parsed JSON value (`[]` is 1, a scalar 0), walked without recursion;
    the walk ends as soon as it passes `stop`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)] if type(value) in (dict, list) else []
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if stop is not None and depth > stop:
                return depth
        for child in node.values() if type(node) is dict else node:
            if type(child) in (dict, list):
                stack.append((child, depth + 1))
    return deepest
