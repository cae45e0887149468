"""Reading and writing recorded traffic: mitmproxy flow files, HAR 1.2, JSON lines, OpenAPI 3.1.

Every reader is a generator of `Exchange` records, so a file of 100,000 flows is converted one
flow at a time (a HAR file is one JSON document and is parsed whole, but its entries are turned
into exchanges and released one by one). What every reader does the same way:

- bodies are stored decoded: a body the file carries compressed (`Content-Encoding: gzip`, …) is
  decompressed, the `Content-Encoding` header is removed and a `Content-Length` header, if there
  is one, is set to the stored body's length; a body that fails to decompress is kept as it was,
  with its header;
- exchanges without a response (errors, aborted requests, HAR entries with status 0), WebSocket
  and CONNECT flows and non-HTTP flows are skipped;
- HTTP/2 pseudo-headers (`:authority`, `:path`, …) are not headers and are dropped;
- `started` is epoch seconds, `duration` seconds from the request's start to the response's end.

`read_any` picks the reader by looking at the file's first bytes; a gzip-compressed file of any
of the three kinds, and mitmproxy's zlib-compressed `.zhar`, are read as well.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from backworks_core.capture.infer import MIN_REQUIRED_SAMPLES
from backworks_core.capture.model import Exchange
from backworks_core.files import open_append_private, private_output
from backworks_core.router import parse_template

if TYPE_CHECKING:
    from backworks_core.capture.redact import RedactionRules

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Headers = Iterable[tuple[str, str]] | Mapping[str, str]
FileKind = Literal["har", "jsonl", "flows"]

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_GZIP_MAGIC = b"\x1f\x8b"
_ZLIB_MAGICS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")
_TNETSTRING_START = re.compile(rb"^\d{1,12}:")
_HAR_START = re.compile(rb'^\{\s*"log"\s*:')
_JSONL_START = re.compile(rb'^\{\s*"method"\s*:')


class FormatError(ValueError):
    """A file that is not what it should be; the message names the file (and the line or entry)."""


# ------------------------------------------------------------------------------------ helpers


def _pairs(headers: Headers | None) -> Iterable[tuple[str, str]]:
    if headers is None:
        return ()
    if isinstance(headers, Mapping):
        return headers.items()
    if hasattr(headers, "items") and hasattr(headers, "fields"):  # a mitmproxy Headers object
        return headers.items(multi=True)  # type: ignore[union-attr]
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
    """Headers for a body that is stored decoded: no Content-Encoding, Content-Length = its length."""
    out: list[tuple[str, str]] = []
    for key, value in headers:
        lowered = key.lower()
        if lowered == "content-encoding":
            continue
        if lowered == "content-length":
            value = str(len(body))
        out.append((key, value))
    return out


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
    return gzip.open(path, "rb") if zipped else open(path, "rb")  # noqa: SIM115 - handed to the caller


def _head(path: Path, size: int = 65536) -> bytes:
    with _open_binary(path) as handle:
        head = handle.read(size)
    if head.startswith(_ZLIB_MAGICS):
        try:
            head = zlib.decompressobj().decompress(head, size)
        except zlib.error:
            pass
    return head


# ------------------------------------------------------------------------ mitmproxy flow files


def _message_body(message: Any, limit: int) -> tuple[bytes, bool]:
    """(body, decoded): the content with its Content-Encoding undone, the raw content when it
    does not decode, or nothing (b"", False) past `limit`: decoding is bounded
    (backworks_core.bodies), so a bomb in a capture or a flow file is never inflated whole."""
    from backworks_core.bodies import BodyError, BodyTooLarge, decoded_body

    raw = message.raw_content
    if raw is None:  # streamed, not kept
        return b"", False
    try:
        return decoded_body(message, limit), True
    except BodyTooLarge:
        return b"", False
    except BodyError:  # an unknown coding or a broken stream: kept as it came
        return (raw if len(raw) <= limit else b""), False


def _flow_headers(headers: Any) -> list[tuple[str, str]]:
    return _without_pseudo((_text(k), _text(v)) for k, v in headers.fields)


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def exchange_from_flow(flow: Any, max_body: int | None = None) -> Exchange | None:
    """The `Exchange` of a mitmproxy HTTP flow, or None for anything else or a flow without a response.

    Works on a live flow too (the capture plugin can use it). The host is the one mitmproxy
    connected to, except that an IP address (transparent mode) is replaced by the name in the
    Host header when there is one.
    """
    from mitmproxy import http

    if not isinstance(flow, http.HTTPFlow) or flow.response is None or flow.websocket is not None:
        return None
    return _exchange_of(flow.request, flow.response, max_body)


def _exchange_of(request: Any, response: Any, max_body: int | None = None) -> Exchange | None:
    """`exchange_from_flow` of a flow's request and response (mitmproxy `http.Request`, `http.Response`)."""
    if request.method.upper() == "CONNECT":
        return None
    host = request.host
    if _is_ip(host) and request.host_header:
        named = urlsplit(f"//{request.host_header}").hostname
        if named and not _is_ip(named):
            host = named
    path, _ = _split_target(_clean(request.path))
    try:
        query = [(_clean(str(k)), _clean(str(v))) for k, v in request.query.items(multi=True)]
    except Exception:  # a query mitmproxy cannot split: keep what the URL says
        _, query = _split_target(_clean(request.path))
    from backworks_core.bodies import DEFAULT_LIMIT

    limit = DEFAULT_LIMIT if max_body is None else max_body  # bodies decoded past it are left out
    request_body, request_decoded = _message_body(request, limit)
    response_body, response_decoded = _message_body(response, limit)
    request_headers = _flow_headers(request.headers)
    response_headers = _flow_headers(response.headers)
    if request_decoded:
        request_headers = _decoded_headers(request_headers, request_body) if header_value(request_headers, "content-encoding") else request_headers
    if response_decoded and response_body:  # nothing decoded (HEAD, 304): the headers stay as they came
        response_headers = _decoded_headers(response_headers, response_body) if header_value(response_headers, "content-encoding") else response_headers
    started = request.timestamp_start or 0.0
    ended = response.timestamp_end or response.timestamp_start or started
    return Exchange(
        method=request.method.upper(),
        scheme=request.scheme or "http",
        host=host,
        port=request.port,
        path=path,
        query=query,
        request_headers=request_headers,
        request_body=request_body,
        status=response.status_code,
        response_headers=response_headers,
        response_body=response_body,
        started=float(started),
        duration=max(0.0, float(ended - started)),
    )


def read_flows(path: PathLike) -> Iterator[Exchange]:
    """Exchanges from a mitmproxy flow file (`mitmdump -w`, mitmweb's "Save"), one flow at a time."""
    from mitmproxy import exceptions

    path = Path(path)
    skipped = 0
    with _open_binary(path) as handle:
        read = 0
        try:
            for flow in _stream_flows(handle):
                read += 1
                exchange = _exchange_of(*flow) if isinstance(flow, tuple) else exchange_from_flow(flow)
                if exchange is None:
                    skipped += 1
                    continue
                yield exchange
        except exceptions.FlowReadException as e:
            if read and not handle.read(1):  # the last record was cut short, as a crash leaves it
                logger.warning("%s: skipped an incomplete last flow after %d complete ones, as a crash leaves it", path, read)
            else:
                raise FormatError(f"{path}: not a readable mitmproxy flow file ({e})") from e
    if skipped:
        logger.info("%s: skipped %d flows that are not HTTP exchanges with a response", path, skipped)


def _stream_flows(handle: IO[bytes]) -> Iterator[Any]:
    """The flows of a flow file, as `mitmproxy.io.FlowReader.stream` gives them (the same
    migrations, the same `FlowReadException`s), but faster, as a large recording needs: each
    record is parsed by `_tnetstring` (mitmproxy's parser walks every length prefix a byte at
    a time), and an HTTP exchange with a response comes as its (request, response) built by
    their constructors (`_http_messages`), not as a whole flow restored with every check of
    `Flow.from_state` (connections, metadata): together half the cost of reading a flow."""
    from mitmproxy import exceptions, flow as mflow
    from mitmproxy.io import compat

    while True:
        try:
            loaded = _load_tnetstring(handle)
        except (ValueError, TypeError, IndexError) as e:
            if str(e) == "not a tnetstring: empty file":
                return
            raise exceptions.FlowReadException("Invalid data format.") from e
        try:
            if not isinstance(loaded, dict):
                raise ValueError(f"Invalid flow: {loaded=}")
            state = compat.migrate_flow(loaded)
            yield _http_messages(state) or mflow.Flow.from_state(state)
        except ValueError as e:
            raise exceptions.FlowReadException(e) from e
        except (TypeError, IndexError) as e:
            raise exceptions.FlowReadException("Invalid data format.") from e


def _http_messages(state: dict[Any, Any]) -> tuple[Any, Any] | None:
    """(request, response) of a migrated flow state that is an HTTP exchange with a response and
    no WebSocket; None for anything else (or a state the constructors refuse): `Flow.from_state`
    then restores it whole, and judges it."""
    from mitmproxy import http

    q, r = state.get("request"), state.get("response")
    if state.get("type") != "http" or state.get("websocket") is not None or not isinstance(q, dict) or not isinstance(r, dict):
        return None
    try:
        request = http.Request(
            q["host"], q["port"], q["method"], q["scheme"], q["authority"], q["path"], q["http_version"],
            http.Headers([tuple(f) for f in q["headers"]]), q["content"], _trailers(q["trailers"]), q["timestamp_start"], q["timestamp_end"],
        )
        response = http.Response(
            r["http_version"], r["status_code"], r["reason"], http.Headers([tuple(f) for f in r["headers"]]), r["content"], _trailers(r["trailers"]), r["timestamp_start"], r["timestamp_end"],
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return request, response


def _trailers(fields: Any) -> Any:
    from mitmproxy import http

    return None if fields is None else http.Headers([tuple(f) for f in fields])


def _load_tnetstring(handle: IO[bytes]) -> Any:
    """One record, read as `mitmproxy.io.tnetstring.load` reads it (never past its end)."""
    c = handle.read(1)
    if c == b"":
        raise ValueError("not a tnetstring: empty file")
    data_length = b""
    while c.isdigit():
        data_length += c
        if len(data_length) > 12:
            raise ValueError("not a tnetstring: absurdly large length prefix")
        c = handle.read(1)
    if c != b":":
        raise ValueError("not a tnetstring: missing or invalid length prefix")
    data = handle.read(int(data_length))
    tag = handle.read(1)[0]
    return _tnetstring(data, 0, len(data), tag)


def _tnetstring(data: bytes, start: int, end: int, tag: int) -> Any:
    """The value of type `tag` in `data[start:end]`, as mitmproxy's `tnetstring.parse` gives it;
    nested values are found with `bytes.find`, not a byte at a time."""
    if tag == 44:  # ,
        return data[start:end]
    if tag == 59:  # ;
        return data[start:end].decode("utf8")
    if tag == 125 or tag == 93:  # } ]
        items = []
        pos = start
        while pos < end:
            colon = data.find(b":", pos, end)
            if colon < 0:
                raise ValueError("not a tnetstring: missing or invalid length prefix")
            length = int(data[pos:colon])
            at = colon + 1 + length
            if length < 0 or at >= end:
                raise ValueError(f"not a tnetstring: invalid length prefix: {length}")
            items.append(_tnetstring(data, colon + 1, at, data[at]))
            pos = at + 1
        if tag == 93:
            return items
        if len(items) % 2:
            raise ValueError("not a tnetstring: a dictionary key without a value")
        return dict(zip(items[0::2], items[1::2]))
    if tag == 35:  # #
        try:
            return int(data[start:end])
        except ValueError:
            raise ValueError(f"not a tnetstring: invalid integer literal: {data[start:end]!r}") from None
    if tag == 94:  # ^
        try:
            return float(data[start:end])
        except ValueError:
            raise ValueError(f"not a tnetstring: invalid float literal: {data[start:end]!r}") from None
    if tag == 33:  # !
        value = data[start:end]
        if value == b"true":
            return True
        if value == b"false":
            return False
        raise ValueError(f"not a tnetstring: invalid boolean literal: {value!r}")
    if tag == 126:  # ~
        if end > start:
            raise ValueError(f"not a tnetstring: invalid null literal: {data[start:end]!r}")
        return None
    raise ValueError(f"unknown type tag: {tag}")


def _count_tnetstrings(path: Path) -> int | None:
    """How many top-level records a flow file holds, by hopping over their length prefixes."""
    count = 0
    with _open_binary(path) as handle:
        while True:
            prefix = b""
            while True:
                char = handle.read(1)
                if not char:
                    return count if not prefix else None
                if char == b":":
                    break
                if not char.isdigit() or len(prefix) > 12:
                    return None
                prefix += char
            length = int(prefix)
            if isinstance(handle, gzip.GzipFile):
                if len(handle.read(length + 1)) != length + 1:
                    return count
            else:
                handle.seek(length + 1, os.SEEK_CUR)
            count += 1


# -------------------------------------------------------------------------------------- HAR


def _parse_started(value: Any) -> float:
    if not isinstance(value, str) or not value:
        return 0.0
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _har_headers(items: Any) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        if isinstance(item, dict) and "name" in item:
            out.append((str(item["name"]), str(item.get("value", ""))))
    return _without_pseudo(out)


def _har_body(text: Any, encoding: Any) -> bytes:
    if not isinstance(text, str):
        return b""
    if isinstance(encoding, str) and encoding.lower() == "base64":
        try:
            return base64.b64decode(text, validate=False)
        except ValueError:
            return text.encode("utf-8", "surrogatepass")
    return text.encode("utf-8", "surrogatepass")


def exchange_from_har_entry(entry: Mapping[str, Any]) -> Exchange | None:
    """The `Exchange` of one HAR entry, or None when it has no response (status 0) or is a WebSocket."""
    request = entry.get("request") or {}
    response = entry.get("response") or {}
    status = response.get("status")
    if not isinstance(status, int) or status <= 0 or entry.get("_resourceType") == "websocket" or status == 101:
        return None
    method = str(request.get("method", "GET")).upper()
    if method == "CONNECT":
        return None
    url = str(request.get("url", ""))
    parts = urlsplit(url)
    scheme = (parts.scheme or "http").lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme, 80)
    except ValueError:
        port = DEFAULT_PORTS.get(scheme, 80)
    if parts.query:
        query = parse_qsl(parts.query, keep_blank_values=True)
    else:
        query = [(str(q.get("name", "")), str(q.get("value", ""))) for q in request.get("queryString") or [] if isinstance(q, dict)]
    request_headers = _har_headers(request.get("headers"))
    post = request.get("postData") or {}
    if isinstance(post.get("text"), str):
        request_body = _har_body(post["text"], post.get("encoding") or post.get("_encoding"))
    elif post.get("params"):  # old tools give urlencoded forms only as params
        request_body = urlencode([(p.get("name", ""), p.get("value", "")) for p in post["params"] if isinstance(p, dict)]).encode()
    else:
        request_body = b""
    # HAR bodies are always decoded (the spec: "decompressed & unchunked")
    if header_value(request_headers, "content-encoding"):
        request_headers = _decoded_headers(request_headers, request_body)
    content = response.get("content") or {}
    response_body = _har_body(content.get("text"), content.get("encoding"))
    response_headers = _har_headers(response.get("headers"))
    if header_value(response_headers, "content-encoding"):
        response_headers = _decoded_headers(response_headers, response_body)
    host = parts.hostname or header_value(request_headers, "host") or ""
    time = entry.get("time")
    if not isinstance(time, int | float) or time < 0:
        timings = entry.get("timings") or {}
        time = sum(v for v in timings.values() if isinstance(v, int | float) and v > 0)
    return Exchange(
        method=method,
        scheme=scheme,
        host=host,
        port=port,
        path=parts.path or "/",
        query=query,
        request_headers=request_headers,
        request_body=request_body,
        status=status,
        response_headers=response_headers,
        response_body=response_body,
        started=_parse_started(entry.get("startedDateTime")),
        duration=float(time) / 1000.0,
    )


def _load_har(path: Path) -> dict[str, Any]:
    with _open_binary(path) as handle:
        raw = handle.read()
    if raw.startswith(_ZLIB_MAGICS):
        try:
            raw = zlib.decompress(raw)
        except zlib.error:
            pass
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"{path}: not a valid HAR file: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("log"), dict) or not isinstance(data["log"].get("entries", []), list):
        raise FormatError(f"{path}: not a HAR file (expected a JSON object with log.entries)")
    return data


def read_har(path: PathLike) -> Iterator[Exchange]:
    """Exchanges from a HAR 1.2 file (browsers' "Save all as HAR", mitmproxy's `save.har`/`hardump`)."""
    path = Path(path)
    data = _load_har(path)
    entries: list[Any] = data["log"].get("entries") or []
    entries.reverse()  # pop from the end: each entry is released once converted
    index, skipped = 0, 0
    while entries:
        entry = entries.pop()
        index += 1
        if not isinstance(entry, dict):
            raise FormatError(f"{path}: log.entries[{index - 1}] is not an object")
        try:
            exchange = exchange_from_har_entry(entry)
        except (TypeError, ValueError, AttributeError) as e:
            raise FormatError(f"{path}: log.entries[{index - 1}]: {e}") from e
        if exchange is None:
            skipped += 1
            continue
        yield exchange
    if skipped:
        logger.info("%s: skipped %d HAR entries without a response or that are WebSockets", path, skipped)


def _cookies(header: str | None, response: bool) -> list[dict[str, Any]]:
    if not header:
        return []
    out: list[dict[str, Any]] = []
    pieces = [header.split(";", 1)[0]] if response else header.split(";")
    for piece in pieces:
        name, eq, value = piece.strip().partition("=")
        if eq and name:
            out.append({"name": name, "value": value})
    return out


def _har_content(body: bytes, mime: str) -> dict[str, Any]:
    content: dict[str, Any] = {"size": len(body), "mimeType": mime}
    if not body:
        content["text"] = ""
    elif is_text(body):
        content["text"] = body.decode("utf-8")
    else:
        content["text"] = base64.b64encode(body).decode("ascii")
        content["encoding"] = "base64"
    return content


def har_entry(exchange: Exchange) -> dict[str, Any]:
    """One HAR 1.2 entry for an exchange (bodies as text, or base64 with `encoding` when binary)."""
    request: dict[str, Any] = {
        "method": exchange.method,
        "url": _url(exchange),
        "httpVersion": "HTTP/1.1",
        "cookies": [c for v in (v for k, v in exchange.request_headers if k.lower() == "cookie") for c in _cookies(v, False)],
        "headers": [{"name": k, "value": v} for k, v in exchange.request_headers],
        "queryString": [{"name": k, "value": v} for k, v in exchange.query],
        "headersSize": -1,
        "bodySize": len(exchange.request_body),
    }
    if exchange.request_body:
        post = _har_content(exchange.request_body, header_value(exchange.request_headers, "content-type") or "")
        post.pop("size")
        request["postData"] = post
    try:
        reason = HTTPStatus(exchange.status).phrase
    except ValueError:
        reason = ""
    duration_ms = round(max(exchange.duration, 0.0) * 1000.0, 3)
    response = {
        "status": exchange.status,
        "statusText": reason,
        "httpVersion": "HTTP/1.1",
        "cookies": [c for v in (v for k, v in exchange.response_headers if k.lower() == "set-cookie") for c in _cookies(v, True)],
        "headers": [{"name": k, "value": v} for k, v in exchange.response_headers],
        "content": _har_content(exchange.response_body, header_value(exchange.response_headers, "content-type") or ""),
        "redirectURL": header_value(exchange.response_headers, "location") or "",
        "headersSize": -1,
        "bodySize": len(exchange.response_body),
    }
    return {
        "startedDateTime": datetime.fromtimestamp(exchange.started, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "time": duration_ms,
        "request": request,
        "response": response,
        "cache": {},
        "timings": {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1, "send": 0, "wait": duration_ms, "receive": 0},
    }


def write_har(exchanges: Iterable[Exchange], path: PathLike, *, creator_version: str | None = None) -> int:
    """Write a HAR 1.2 file, one entry at a time (nothing is held in memory); returns the entry count."""
    if creator_version is None:
        try:
            from importlib.metadata import version

            creator_version = version("backworks")
        except Exception:
            creator_version = "0"
    count = 0
    with private_output(path) as out:  # 0600, a temporary file renamed onto `path`
        out.write('{"log": {"version": "1.2", "creator": ' + json.dumps({"name": "Backworks", "version": creator_version}))
        out.write(', "pages": [], "entries": [')
        for exchange in exchanges:
            out.write(",\n" if count else "\n")
            out.write(json.dumps(har_entry(exchange), ensure_ascii=False))
            count += 1
        out.write("\n]}}\n")
    return count


# ------------------------------------------------------------------------------- JSON lines


def read_jsonl(path: PathLike) -> Iterator[Exchange]:
    """Exchanges from JSON lines of `Exchange.to_json()` (what the live capture writes).

    A last line that does not parse (a write cut short by a crash) is skipped with a warning;
    a bad line anywhere else is an error naming the file and line.
    """
    path = Path(path)
    with _open_binary(path) as handle:
        pending: tuple[int, bytes] | None = None
        for number, line in enumerate(handle, start=1):
            if pending is not None:
                yield _jsonl_exchange(path, *pending)
                pending = None
            if line.strip():
                pending = (number, line)
        if pending is not None:
            number, line = pending
            try:
                exchange = _jsonl_exchange(path, number, line)
            except FormatError:
                logger.warning("%s:%d: skipped an incomplete last line (%d bytes), as a crash leaves it", path, number, len(line))
                return
            yield exchange


def _jsonl_exchange(path: Path, number: int, line: bytes) -> Exchange:
    try:
        return Exchange.from_json(line.decode("utf-8-sig" if number == 1 else "utf-8"))
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise FormatError(f"{path}:{number}: not an exchange record: {e}") from e


def write_jsonl(exchanges: Iterable[Exchange], path: PathLike, *, append: bool = False) -> int:
    """Write exchanges as JSON lines (the live capture's format); returns how many were written."""
    count = 0
    with open_append_private(path) if append else private_output(path) as out:  # 0600, never through a symlink
        for exchange in exchanges:
            out.write(exchange.to_json() + "\n")
            count += 1
    return count


# ---------------------------------------------------------------------------------- sniffing


def sniff_format(path: PathLike) -> FileKind:
    """Which of the three formats a file is, from its first bytes; FormatError naming it otherwise."""
    path = Path(path)
    try:
        head = _head(path)
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from e
    stripped = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if _TNETSTRING_START.match(stripped):
        return "flows"
    if stripped.startswith(b"{"):
        if _HAR_START.match(stripped):
            return "har"
        first = stripped.split(b"\n", 1)[0]
        try:
            value = json.loads(first)
        except ValueError:
            value = None
        if isinstance(value, dict):
            if "log" in value:
                return "har"
            if "method" in value and "host" in value:
                return "jsonl"
        if value is None and _JSONL_START.match(stripped):
            return "jsonl"  # a record cut short by a crash; read_jsonl warns about it
        if value is None and b"\n" in stripped:
            return "har"  # a pretty-printed JSON object whose first key is not "log": read_har judges
    if not head:
        raise FormatError(f"{path}: the file is empty")
    shown = head[:16]
    raise FormatError(
        f"{path}: not a HAR file, JSON lines of captured exchanges or a mitmproxy flow file (it starts with {shown!r})"
    )


def read_any(path: PathLike) -> Iterator[Exchange]:
    """Exchanges from a HAR file, JSON lines or a mitmproxy flow file, whichever `path` is."""
    kind = sniff_format(path)  # raises before the first next() would, as a plain function
    return {"har": read_har, "jsonl": read_jsonl, "flows": read_flows}[kind](path)


_REQUEST_KEY = re.compile(rb'(?<!\\)"request"\s*:')


def count_hint(path: PathLike) -> int | None:
    """About how many records the file holds, for a progress bar; None when counting is not cheap.

    JSON lines: non-blank lines. Flow files: records (non-HTTP flows and flows without a response
    are counted too). HAR: `"request":` keys (bodies are escaped, so they do not count). An upper
    bound in every case: what is skipped on reading is counted.
    """
    path = Path(path)
    try:
        kind = sniff_format(path)
        if kind == "flows":
            return _count_tnetstrings(path)
        count = 0
        with _open_binary(path) as handle:
            if kind == "jsonl":
                for line in handle:
                    count += bool(line.strip())
                return count
            head = handle.read(2)
            if head.startswith(_ZLIB_MAGICS):
                return None
            buffer = head
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                buffer += chunk
                cut = len(buffer) - 32  # a match starting after this may continue in the next chunk
                count += sum(1 for m in _REQUEST_KEY.finditer(buffer) if m.start() < cut)
                buffer = buffer[max(cut, 0) :]
            return count + len(_REQUEST_KEY.findall(buffer))
    except (FormatError, OSError):
        return None


# ----------------------------------------------------------------------------------- OpenAPI

# What a recording says about one operation beyond its examples is gathered by OperationEvidence,
# one exchange at a time and within fixed bounds, so that the document describes every exchange
# recorded (every status, header, field and credential), while `max_examples` only limits how
# many examples are shown.
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
# Request headers about the connection or the message, not the call: never parameters. OpenAPI
# ignores header parameters named Accept, Content-Type and Authorization; credentials are
# security schemes; the body's headers are the requestBody's.
_TRANSPORT_REQUEST_HEADERS = frozenset(
    {
        "host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "content-length", "content-type", "content-encoding", "expect", "http2-settings", "priority",
        "accept", "authorization", "proxy-authorization", "cookie",
    }
)
# Headers every client sends its own way: parameters only when a recorded response's `Vary`
# names them (then they change the answer).
_CLIENT_REQUEST_HEADERS = frozenset(
    {
        "user-agent", "accept-encoding", "accept-language", "accept-charset", "cache-control", "pragma", "origin",
        "referer", "dnt", "upgrade-insecure-requests", "x-requested-with", "purpose", "save-data", "sec-gpc",
    }
)
_CLIENT_PREFIXES = ("sec-",)
# Response headers of the connection or the moment, or Backworks' own (its request id): left out.
# OpenAPI ignores a response header named Content-Type; bodies are stored decoded.
EXCLUDED_RESPONSE_HEADERS = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
        "content-length", "content-encoding", "content-type", "date", "server", "via", "age", "alt-svc",
        "proxy-authenticate", "x-request-id", "traceparent", "tracestate",
    }
)
# Authorization schemes in the IANA registry become `type: http`; any other (`Token …`) is
# documented as an API key in the Authorization header.
HTTP_AUTH_SCHEMES = frozenset(
    {"basic", "bearer", "digest", "dpop", "hoba", "mutual", "negotiate", "oauth", "scram-sha-1", "scram-sha-256", "vapid", "privatetoken", "concealed"}
)
_NOT_API_KEY_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# Answers that refuse a request for its credentials.
REFUSED_STATUSES = frozenset({401, 403})
# The body of every answer Backworks gives itself (context.json_error); 422 adds `path`.
MOCK_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}, "request_id": {"type": "string"}},
    "required": ["error", "status", "request_id"],
}
# The answers Backworks gives itself on a documented operation, declared in every document so that
# the mock and the document it serves agree (a spec-driven checker calls an unlisted status a
# failure): 404 when no recorded example matches (an id never recorded on a templated path), 400
# when the gateway refuses an ambiguous path (an escaped '/', ';', a control character: paths.py)
# that only a path parameter can carry.
OWN_ANSWERS = {
    400: "the Backworks gateway refuses an ambiguous request path (an escaped '/' or control character, a ';')"
    " with 400 `{error, status, request_id}` (application/json).",
    404: "the Backworks mock answers a request that no recorded example matches with 404"
    " `{error, status, request_id}` (application/json).",
}

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
        from backworks_core.capture.redact import RedactionRules

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
        from backworks_core.capture.redact import JWT

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
    from backworks_core.capture import redact

    if context == "header":
        lowered = name.lower()
        if lowered in _NOT_API_KEY_HEADERS or _injected(lowered):
            return False
        safe = getattr(redact, "_SAFE_HEADERS", frozenset())
        return lowered in redact.SECRET_HEADERS or lowered in rules.headers or (lowered not in safe and _is_secret_name(name, rules, "header"))
    if context == "cookie":
        return _is_secret_name(name, rules, "query") or _is_secret_name(name, rules, "json")
    return _is_secret_name(name, rules, context)


def _is_secret_name(name: str, rules: RedactionRules, context: str) -> bool:
    from backworks_core.capture.redact import is_secret_name

    try:
        return is_secret_name(name, rules, context)
    except TypeError:  # a name test without contexts
        return is_secret_name(name, rules)


def _injected(lowered: str) -> bool:
    return lowered in INJECTED_REQUEST_HEADERS or lowered.startswith(_INJECTED_PREFIXES)


@dataclass
class OperationSpec:
    """One endpoint group, as the OpenAPI writer takes it.

    `template` is a router template (`/users/{user_id}`, `/users/{user_id:int}`, `/files/{rest:path}`,
    `/users/:id`). `request_schema` is the JSON Schema of JSON request bodies; `response_schemas`
    maps a status to the JSON Schema of its JSON bodies. `examples` are the examples shown (the
    first of each status and media type). `evidence` is what every recorded exchange of the
    endpoint showed (statuses, parameters, headers, form fields, credentials); without it, it is
    gathered from `examples`.
    """

    method: str
    template: str
    host: str | None = None
    examples: list[Exchange] = field(default_factory=list)
    request_schema: dict[str, Any] | None = None
    response_schemas: dict[int, dict[str, Any]] = field(default_factory=dict)
    summary: str | None = None
    description: str | None = None
    evidence: OperationEvidence | None = None


_LITERAL_SAFE = "-._~!$&'()*+,;=:@"


def openapi_path(template: str) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path for a router template and its path parameters (in order, all required)."""
    parts: list[str] = []
    params: list[dict[str, Any]] = []
    for segment in parse_template(template):
        if segment.kind == "literal":
            parts.append(quote(segment.value, safe=_LITERAL_SAFE))
            continue
        parts.append("{" + segment.value + "}")
        schema: dict[str, Any] = {"type": "string"}
        param: dict[str, Any] = {"name": segment.value, "in": "path", "required": True, "schema": schema}
        if segment.kind == "int":
            schema["type"] = "integer"
        elif segment.kind == "uuid":
            schema["format"] = "uuid"
        elif segment.kind == "path":
            param["description"] = "The rest of the path; may contain '/'."
        params.append(param)
    return "/" + "/".join(parts), params


def _server_url(scheme: str, host: str, port: int | None) -> str:
    host_part = f"[{host}]" if ":" in host and not host.startswith("[") else host
    suffix = "" if port is None or DEFAULT_PORTS.get(scheme) == port else f":{port}"
    return f"{scheme}://{host_part}{suffix}"


def _servers(spec: OperationSpec, evidence: OperationEvidence) -> list[str]:
    urls: list[str] = []
    for scheme, host, port in evidence.origins:
        if spec.host is None or host == spec.host:
            url = _server_url(scheme, host, port)
            if url not in urls:
                urls.append(url)
    if not urls and spec.host:
        urls.append(_server_url("https", spec.host, None))
    return urls


def _example_value(body: bytes, media: str | None) -> tuple[str, Any] | None:
    """(media type, example) for a body, or None when it has none to show."""
    if not body:
        return None
    if is_json_media_type(media) or media is None:
        ok, value = try_json(body)
        if ok:
            return (media or "application/json"), value
        if media is not None:
            return None  # says JSON, is not: no example that contradicts the schema
    if is_text(body):
        return (media or "text/plain"), body.decode("utf-8")
    return None  # binary: no inline example


def _guess_media(headers: list[tuple[str, str]], body: bytes) -> str:
    """The Content-Type's media type, or a guess from the body when there is none."""
    media = content_type(headers)
    if media:
        return media
    if try_json(body)[0]:
        return "application/json"
    return "text/plain" if is_text(body) else "application/octet-stream"


def _body_schema(media: str, schema: dict[str, Any] | None, body: bytes) -> dict[str, Any]:
    if is_json_media_type(media):
        return schema if schema is not None else {}
    if media.startswith("text/") or (body and is_text(body)):
        return {"type": "string"}
    return {"type": "string", "contentMediaType": media}


def _always(count: int, total: int) -> bool:
    """A response header is `required` when every one of at least MIN_REQUIRED_SAMPLES answers
    had it: one answer cannot tell what the API always sends from what this exchange happened to
    get. (Request parameters and bodies stay required when every recorded request sent them:
    they describe what recorded clients send, so that generated requests look like them.)"""
    return total >= MIN_REQUIRED_SAMPLES and count == total


def _query_schema(values: list[str]) -> dict[str, Any]:
    if values and all(re.fullmatch(r"-?\d{1,18}", v) for v in values):
        return {"type": "integer"}
    if values and all(re.fullmatch(r"-?\d+(\.\d+)?", v) for v in values):
        return {"type": "number"}
    if values and all(v.lower() in ("true", "false") for v in values):
        return {"type": "boolean"}
    return {"type": "string"}


def _field_schema(seen: _Seen) -> dict[str, Any]:
    """A query parameter's or a form field's schema: typed by its values, an array when repeated."""
    schema = _query_schema(seen.values)
    return {"type": "array", "items": schema} if seen.repeated else schema


def _field_example(seen: _Seen, schema: dict[str, Any]) -> Any:
    if schema.get("type") == "array":
        return [_query_example(v, schema["items"]) for v in seen.values]
    return _query_example(seen.values[0], schema) if seen.values else ""


def _form_schema(media: str, bodies: _RequestBodies) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(schema, example, encoding) of form or multipart bodies: an object of the fields recorded."""
    properties: dict[str, Any] = {}
    example: dict[str, Any] = {}
    encoding: dict[str, Any] = {}
    for name, seen in bodies.fields.items():
        if seen.file:
            item: dict[str, Any] = {"type": "string", "format": "binary"}
            properties[name] = {"type": "array", "items": item} if seen.repeated else item
        else:
            properties[name] = _field_schema(seen)
            example[name] = _field_example(seen, properties[name])
        if media == "multipart/form-data" and seen.media:
            encoding[name] = {"contentType": ", ".join(seen.media)}
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    required = [name for name, seen in bodies.fields.items() if seen.count == bodies.count]
    if required:
        schema["required"] = required
    return schema, example, encoding


def _header_parameter(lowered: str, evidence: OperationEvidence, credential_headers: set[str]) -> bool:
    """Whether a recorded request header is documented as a parameter: one the call depends on."""
    if lowered in _TRANSPORT_REQUEST_HEADERS or _injected(lowered) or lowered in credential_headers:
        return False
    if lowered in _CLIENT_REQUEST_HEADERS or lowered.startswith(_CLIENT_PREFIXES):
        return lowered in evidence.vary
    return True


def _response_headers(status: int, evidence: OperationEvidence) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    total = evidence.statuses[status]
    for lowered, seen in evidence.response_headers.get(status, {}).items():
        if lowered in EXCLUDED_RESPONSE_HEADERS:
            continue
        schema = _query_schema(seen.values)
        header: dict[str, Any] = {"schema": schema}
        if _always(seen.count, total):
            header["required"] = True
        if lowered == "set-cookie":
            names = list(dict.fromkeys(v.split("=", 1)[0].strip() for v in seen.values if "=" in v))
            redacted = any("[REDACTED" in v for v in seen.values)
            header["description"] = "One header per cookie" + (f" ({', '.join(names)})" if names else "") + ("; recorded values are redacted." if redacted else ".")
        elif seen.repeated:
            header["description"] = "Sent more than once in a response."
        if seen.values:
            header["example"] = _query_example(seen.values[0], schema)
        headers[seen.name] = header
    return headers


def _operation(
    spec: OperationSpec,
    evidence: OperationEvidence,
    path_params: list[dict[str, Any]],
    credentials: Counter[frozenset[Credential]],
    scheme_names: dict[Credential, str],
) -> dict[str, Any]:
    examples = spec.examples
    echoes = _echo_names(spec, evidence)
    response_schemas = {status: _without_echoed_required(schema, echoes) for status, schema in spec.response_schemas.items()}
    operation: dict[str, Any] = {}
    if spec.summary:
        operation["summary"] = spec.summary
    if spec.description:
        operation["description"] = spec.description
    method = spec.method.upper()
    operation["operationId"] = _operation_id(method, spec.template)

    used = {c for combination in evidence.credentials for c in combination}
    credential_headers = {name for kind, name in used if kind == "header"}
    credential_query = {name for kind, name in used if kind == "query"}

    parameters = [dict(p) for p in path_params]
    first = examples[0] if examples else evidence.first
    if first is not None:
        values = _path_values(spec.template, first.path)
        for param in parameters:
            if param["name"] in values:
                value = values[param["name"]]
                param["example"] = int(value) if param["schema"].get("type") == "integer" and value.isdigit() else value
    # query parameters: required when every request sent them, an array when one repeated them
    for name, seen in evidence.query.items():
        if name in credential_query:
            continue  # an API key: a security scheme
        schema = _field_schema(seen)
        parameters.append({"name": name, "in": "query", "required": seen.count == evidence.total, "schema": schema, "example": _field_example(seen, schema)})
    # header parameters: those the call depends on (never required: that every recorded client
    # sent one does not say the API needs it)
    for lowered, seen in evidence.request_headers.items():
        if not _header_parameter(lowered, evidence, credential_headers):
            continue
        schema = _query_schema(seen.values)
        parameter = {"name": seen.name, "in": "header", "required": False, "schema": schema}
        if seen.values:
            parameter["example"] = _query_example(seen.values[0], schema)
        parameters.append(parameter)
    if parameters:
        operation["parameters"] = parameters

    # request body: one entry per media type; forms and multipart as objects of their fields
    if evidence.bodies or spec.request_schema is not None:
        content: dict[str, Any] = {}
        for media, bodies in evidence.bodies.items():
            shown = next((ex for ex in examples if ex.request_body and _guess_media(ex.request_headers, ex.request_body) == media), bodies.first)
            body = shown.request_body if shown is not None else b""
            entry: dict[str, Any]
            if media in ("application/x-www-form-urlencoded", "multipart/form-data"):
                schema, example, encoding = _form_schema(media, bodies)
                entry = {"schema": schema}
                if encoding:
                    entry["encoding"] = encoding
                if example:
                    entry["example"] = example
            else:
                entry = {"schema": _body_schema(media, spec.request_schema, body)}
                example_value = _example_value(body, media)
                if example_value is not None:
                    entry["example"] = example_value[1]
            content[media] = entry
        if not content:
            content["application/json"] = {"schema": spec.request_schema or {}}
        operation["requestBody"] = {"required": bool(evidence.total) and evidence.with_body == evidence.total, "content": content}

    # responses: every status recorded, with its headers and the first example of each media type
    responses: dict[str, Any] = {}
    for status in sorted(set(evidence.statuses) | set(response_schemas)):
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = f"Status {status}"
        response: dict[str, Any] = {"description": reason}
        headers = _response_headers(status, evidence)
        if headers:
            response["headers"] = headers
        content = {}
        candidates = [ex for ex in examples if ex.status == status] + list(evidence.responses.get(status, {}).values())
        for ex in candidates:
            if not ex.response_body:
                continue
            media = _guess_media(ex.response_headers, ex.response_body)
            if media in content:
                continue
            entry = {"schema": _body_schema(media, response_schemas.get(status), ex.response_body)}
            example_value = _example_value(ex.response_body, media)
            if example_value is not None:
                entry["example"] = example_value[1]
            content[media] = entry
        if not content and status in response_schemas:
            content["application/json"] = {"schema": response_schemas[status]}
        if content:
            _add_labels(content, _recorded_media(status, evidence))
            response["content"] = content
        key = str(status) if 100 <= status <= 599 else "default"
        responses.setdefault(key, response)
    if not responses:
        responses["default"] = {"description": "No response was recorded"}
    for status, description in OWN_ANSWERS.items():
        if status == 400 and not path_params:
            continue  # only a path parameter can carry what the gateway refuses in a path
        _declare_own_answer(responses, status, description, _recorded_media(status, evidence))
    operation["responses"] = responses

    # security: one requirement per combination of credentials seen; required only when the
    # recording shows it enforced (a 401/403 and no request without credentials let through),
    # else optional, with the anonymous alternative `{}` (last)
    requirements: list[dict[str, list[str]]] = []
    for combination, _ in credentials.most_common():
        requirement = {scheme_names[c]: [] for c in sorted(combination)}
        if requirement not in requirements:
            requirements.append(requirement)
    if any(requirements):
        requirements = [r for r in requirements if r]
        if evidence.enforced() is not True:
            requirements.append({})
        operation["security"] = requirements
    return operation


def _recorded_media(status: int, evidence: OperationEvidence) -> list[str]:
    """Every media type a recorded answer of `status` was labelled with, empty bodies included."""
    seen = evidence.response_headers.get(status, {}).get("content-type")
    media = (value.split(";", 1)[0].strip().lower() for value in (seen.values if seen else []))
    return list(dict.fromkeys(m for m in media if "/" in m))


def _add_labels(content: dict[str, Any], media_types: list[str]) -> None:
    """List the recorded labels no body showed (an empty body sent as text/html): a checker
    compares the Content-Type of every answer with the document, empty or not."""
    for media in media_types:
        content.setdefault(media, {})


def _declare_own_answer(responses: dict[str, Any], status: int, description: str, labels: list[str]) -> None:
    """Backworks' own answer `status` (OWN_ANSWERS), in the document it serves. Not recorded: declared
    with no body (the live API's own body for that status, HTML or JSON, was never seen and must
    not be contradicted). Recorded: Backworks' `{error, status, request_id}` is added beside the
    recorded bodies, and no header of it is required (Backworks' answer has none of the app's)."""
    recorded = responses.get(str(status))
    if recorded is None:
        if "default" not in responses:  # a `default` allows every status already
            responses[str(status)] = {"description": f"{HTTPStatus(status).phrase}. Not recorded: {description}"}
        return
    content = recorded.setdefault("content", {})
    _add_labels(content, labels)
    entry = content.get("application/json")
    if entry is None:
        content["application/json"] = {"schema": MOCK_ERROR_SCHEMA}
    elif entry.get("schema") not in ({}, None):
        entry["schema"] = {"anyOf": [entry["schema"], MOCK_ERROR_SCHEMA]}
    for header in recorded.get("headers", {}).values():
        header.pop("required", None)
    recorded["description"] += f" Also: {description}"


def _echo_names(spec: OperationSpec, evidence: OperationEvidence) -> frozenset[str]:
    """The names the requests sent (query, headers, cookies, form fields, JSON body keys), lower
    case: a response key spelled like one may be the request echoed back, so it is never
    `required` (the next request may not send it)."""
    names = set(evidence.query) | set(evidence.request_headers)
    for value in evidence.request_headers.get("cookie", _Seen("cookie")).values:
        names.update(name for name, _ in _cookie_pairs(value))
    for bodies in evidence.bodies.values():
        names.update(bodies.fields)
    if spec.request_schema:
        names.update(spec.request_schema.get("properties", {}))
    return frozenset(name.lower() for name in names)


def _without_echoed_required(schema: Any, echoes: frozenset[str], depth: int = 0) -> Any:
    """`schema` with the echoed names taken out of every `required` (a copy where it changes)."""
    if not isinstance(schema, dict) or not echoes or depth > 64:
        return schema
    out = dict(schema)
    if isinstance(out.get("required"), list):
        required = [key for key in out["required"] if not (isinstance(key, str) and key.lower() in echoes)]
        if required:
            out["required"] = required
        else:
            del out["required"]
    if isinstance(out.get("properties"), dict):
        out["properties"] = {key: _without_echoed_required(value, echoes, depth + 1) for key, value in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _without_echoed_required(out["items"], echoes, depth + 1)
    return out


def _path_values(template: str, path: str) -> dict[str, str]:
    """The parameter values a recorded path gives a template ({} when they do not line up)."""
    from urllib.parse import unquote

    segments = parse_template(template)
    parts = path.strip("/").split("/") if path.strip("/") else []
    values: dict[str, str] = {}
    for i, segment in enumerate(segments):
        if segment.kind == "path":
            values[segment.value] = unquote("/".join(parts[i:]))
            return values
        if i >= len(parts):
            return {}
        if segment.kind != "literal":
            values[segment.value] = unquote(parts[i])
    return values if len(parts) == len(segments) else {}


def _query_example(value: str, schema: dict[str, Any]) -> Any:
    try:
        if schema.get("type") == "integer":
            return int(value)
        if schema.get("type") == "number":
            return float(value)
        if schema.get("type") == "boolean":
            return value.lower() == "true"
    except ValueError:
        pass
    return value


def _operation_id(method: str, template: str) -> str:
    words = [method.lower()]
    for segment in parse_template(template):
        word = re.sub(r"[^A-Za-z0-9]+", "_", segment.value).strip("_")
        if word:
            words.append(("by_" if segment.kind != "literal" else "") + word)
    return "_".join(words)


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


def security_schemes(
    operations: Iterable[tuple[OperationEvidence, Counter[frozenset[Credential]]]],
) -> tuple[dict[str, Any], dict[Credential, str]]:
    """`components.securitySchemes` for the credentials seen, and each credential's scheme name.

    `operations` are each operation's evidence with its resolved credential combinations
    (`OperationEvidence.requirements`). HTTP bearer (with `bearerFormat: JWT` when every visible
    token is a JWT), basic and the other registered HTTP schemes; API keys in a header, the query
    or a cookie, by the names the redactor treats as credentials; an Authorization header of
    another scheme, or redacted whole with no challenge naming its scheme, as an API key in
    `Authorization`.
    """
    seen: dict[Credential, str] = {}
    jwt = other = 0
    for evidence, requirements in operations:
        for combination in requirements:
            for credential in combination:
                seen.setdefault(credential, evidence.credential_names.get(credential, credential[1]))
        jwt += evidence.jwt_tokens
        other += evidence.other_tokens
    schemes: dict[str, Any] = {}
    names: dict[Credential, str] = {}
    for credential in sorted(seen):
        kind, value = credential
        scheme: dict[str, Any]
        if kind == "http":
            name = re.sub(r"[^A-Za-z0-9]+", "", value) + "Auth"
            scheme = {"type": "http", "scheme": value}
            if value == "bearer" and jwt and not other:
                scheme["bearerFormat"] = "JWT"
        elif kind == "authorization":
            name = "authorizationHeader" + (re.sub(r"[^A-Za-z0-9]+", "", value.title()) if value else "")
            scheme = {"type": "apiKey", "in": "header", "name": "Authorization"}
            scheme["description"] = (
                f"`Authorization: {value} …`" if value else "An Authorization header whose scheme is not known (the recorded values are redacted)."
            )
        else:
            name = kind + "." + re.sub(r"[^A-Za-z0-9._-]+", "_", seen[credential])
            scheme = {"type": "apiKey", "in": kind, "name": seen[credential]}
        base, n = name, 2
        while name in schemes:
            name, n = f"{base}_{n}", n + 1
        schemes[name] = scheme
        names[credential] = name
    return schemes, names


def openapi_document(
    groups: Iterable[OperationSpec], title: str, version: str = "1.0.0", description: str | None = None
) -> dict[str, Any]:
    """An OpenAPI 3.1 document for endpoint groups (valid for `openapi_spec_validator.validate`).

    Servers are every scheme/host/port recorded; when there is more than one, each operation also
    lists its own. Two groups with the same method and OpenAPI path (different hosts, or `{id}` and
    `{id:int}`) become one operation, with the statuses, parameters and credentials of both.
    """
    merged: dict[tuple[str, str], tuple[OperationSpec, OperationEvidence, list[str], list[dict[str, Any]]]] = {}
    servers: list[str] = []
    for spec in groups:
        path, path_params = openapi_path(spec.template)
        method = spec.method.lower()
        if method in ("any", "*"):
            method = "get"
        evidence = spec.evidence if spec.evidence is not None else OperationEvidence.of(spec.examples)
        own = _servers(spec, evidence)
        servers.extend(url for url in own if url not in servers)
        key = (path, method)
        if key not in merged:
            combined = OperationEvidence(evidence.rules)
            combined.merge(evidence)
            merged[key] = (replace(spec, examples=list(spec.examples), response_schemas=dict(spec.response_schemas)), combined, list(own), path_params)
            continue
        first, combined, urls, _ = merged[key]
        combined.merge(evidence)
        first.examples.extend(spec.examples)
        for status, schema in spec.response_schemas.items():
            first.response_schemas.setdefault(status, schema)
        if first.request_schema is None:
            first.request_schema = spec.request_schema
        urls.extend(url for url in own if url not in urls)
    challenges: set[str] = set().union(*(evidence.challenges for _, evidence, _, _ in merged.values()))
    requirements = {key: evidence.requirements(challenges) for key, (_, evidence, _, _) in merged.items()}
    schemes, scheme_names = security_schemes((merged[key][1], found) for key, found in requirements.items())
    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    dropped: set[str] = set()
    for (path, method), (spec, evidence, urls, path_params) in merged.items():
        operation = _operation(spec, evidence, path_params, requirements[(path, method)], scheme_names)
        dropped |= evidence.dropped
        base, n = operation["operationId"], 2
        while operation["operationId"] in used_ids:
            operation["operationId"] = f"{base}_{n}"
            n += 1
        used_ids.add(operation["operationId"])
        if len(servers) > 1 and urls:
            operation["servers"] = [{"url": url} for url in urls]
        paths.setdefault(path, {})[method] = operation
    if dropped:
        logger.info("OpenAPI: %d header, query or form field name(s) past %d per operation and kind were left out", len(dropped), MAX_NAMES)
    info: dict[str, Any] = {"title": title, "version": version}
    if description:
        info["description"] = description
    document: dict[str, Any] = {"openapi": "3.1.0", "info": info}
    if servers:
        document["servers"] = [{"url": url} for url in servers]
    document["paths"] = paths
    if schemes:
        document["components"] = {"securitySchemes": schemes}
    return document
