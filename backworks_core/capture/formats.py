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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from backworks_core.capture.model import Exchange
from backworks_core.files import open_append_private, private_output
from backworks_core.router import parse_template

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
    request, response = flow.request, flow.response
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
    if response_decoded:
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
    from mitmproxy import exceptions, io as mio

    path = Path(path)
    skipped = 0
    with _open_binary(path) as handle:
        reader = mio.FlowReader(handle)
        read = 0
        try:
            for flow in reader.stream():
                read += 1
                exchange = exchange_from_flow(flow)
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


@dataclass
class OperationSpec:
    """One endpoint group, as the OpenAPI writer takes it.

    `template` is a router template (`/users/{user_id}`, `/users/{user_id:int}`, `/files/{rest:path}`,
    `/users/:id`). `request_schema` is the JSON Schema of JSON request bodies; `response_schemas`
    maps a status to the JSON Schema of its JSON bodies. `examples` give parameters, content types,
    statuses and one example per status.
    """

    method: str
    template: str
    host: str | None = None
    examples: list[Exchange] = field(default_factory=list)
    request_schema: dict[str, Any] | None = None
    response_schemas: dict[int, dict[str, Any]] = field(default_factory=dict)
    summary: str | None = None
    description: str | None = None


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


def _servers(spec: OperationSpec) -> list[str]:
    urls: list[str] = []
    for ex in spec.examples:
        if spec.host is None or ex.host == spec.host:
            url = _server_url(ex.scheme, ex.host, ex.port)
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


def _query_schema(values: list[str]) -> dict[str, Any]:
    if values and all(re.fullmatch(r"-?\d{1,18}", v) for v in values):
        return {"type": "integer"}
    if values and all(re.fullmatch(r"-?\d+(\.\d+)?", v) for v in values):
        return {"type": "number"}
    if values and all(v.lower() in ("true", "false") for v in values):
        return {"type": "boolean"}
    return {"type": "string"}


def _operation(spec: OperationSpec, path_params: list[dict[str, Any]]) -> dict[str, Any]:
    examples = spec.examples
    operation: dict[str, Any] = {}
    if spec.summary:
        operation["summary"] = spec.summary
    if spec.description:
        operation["description"] = spec.description
    method = spec.method.upper()
    operation["operationId"] = _operation_id(method, spec.template)

    # query parameters: required when every example has them, array when one repeats them
    names: dict[str, list[str]] = {}
    repeated: set[str] = set()
    present_in: dict[str, int] = {}
    for ex in examples:
        seen: set[str] = set()
        for key, value in ex.query:
            names.setdefault(key, []).append(value)
            if key in seen:
                repeated.add(key)
            seen.add(key)
        for key in seen:
            present_in[key] = present_in.get(key, 0) + 1
    parameters = [dict(p) for p in path_params]
    for ex in examples[:1]:
        values = _path_values(spec.template, ex.path)
        for param in parameters:
            if param["name"] in values:
                value = values[param["name"]]
                param["example"] = int(value) if param["schema"].get("type") == "integer" and value.isdigit() else value
    for name, values in names.items():
        schema = _query_schema(values)
        if name in repeated:
            schema = {"type": "array", "items": schema}
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": present_in.get(name, 0) == len(examples),
                "schema": schema,
                "example": values if name in repeated else _query_example(values[0], schema),
            }
        )
    if parameters:
        operation["parameters"] = parameters

    # request body
    with_body = [ex for ex in examples if ex.request_body]
    if with_body or spec.request_schema is not None:
        content: dict[str, Any] = {}
        for ex in with_body:
            media = _guess_media(ex.request_headers, ex.request_body)
            if media in content:
                continue
            entry: dict[str, Any] = {"schema": _body_schema(media, spec.request_schema, ex.request_body)}
            example = _example_value(ex.request_body, media)
            if example is not None:
                entry["example"] = example[1]
            content[media] = entry
        if not content:
            content["application/json"] = {"schema": spec.request_schema or {}}
        operation["requestBody"] = {"required": len(with_body) == len(examples) and bool(examples), "content": content}

    # responses: one per status, first example of each
    responses: dict[str, Any] = {}
    statuses = sorted({ex.status for ex in examples} | set(spec.response_schemas))
    for status in statuses:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = f"Status {status}"
        response: dict[str, Any] = {"description": reason}
        content = {}
        for ex in (ex for ex in examples if ex.status == status):
            if not ex.response_body:
                continue
            media = _guess_media(ex.response_headers, ex.response_body)
            if media in content:
                continue
            entry = {"schema": _body_schema(media, spec.response_schemas.get(status), ex.response_body)}
            example = _example_value(ex.response_body, media)
            if example is not None:
                entry["example"] = example[1]
            content[media] = entry
        if not content and status in spec.response_schemas:
            content["application/json"] = {"schema": spec.response_schemas[status]}
        if content:
            response["content"] = content
        responses[str(status)] = response
    if not responses:
        responses["default"] = {"description": "No response was recorded"}
    operation["responses"] = responses
    return operation


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


def openapi_document(
    groups: Iterable[OperationSpec], title: str, version: str = "1.0.0", description: str | None = None
) -> dict[str, Any]:
    """An OpenAPI 3.1 document for endpoint groups (valid for `openapi_spec_validator.validate`).

    Servers are every scheme/host/port the examples were recorded from; when there is more than
    one, each operation also lists its own. Two groups with the same method and OpenAPI path
    (different hosts, or `{id}` and `{id:int}`) become one operation, with the statuses of both.
    """
    paths: dict[str, dict[str, Any]] = {}
    servers: list[str] = []
    op_servers: dict[tuple[str, str], list[str]] = {}
    used_ids: set[str] = set()
    for spec in groups:
        path, path_params = openapi_path(spec.template)
        method = spec.method.lower()
        if method in ("any", "*"):
            method = "get"
        operation = _operation(spec, path_params)
        own = _servers(spec)
        for url in own:
            if url not in servers:
                servers.append(url)
        item = paths.setdefault(path, {})
        if method in item:
            merged = item[method]
            for status, response in operation["responses"].items():
                merged["responses"].setdefault(status, response)
            merged["responses"].pop("default", None) if len(merged["responses"]) > 1 else None
            known = {(p["name"], p["in"]) for p in merged.get("parameters", [])}
            extra = [p for p in operation.get("parameters", []) if (p["name"], p["in"]) not in known]
            if extra:
                merged.setdefault("parameters", []).extend(extra)
            if "requestBody" not in merged and "requestBody" in operation:
                merged["requestBody"] = operation["requestBody"]
        else:
            base, n = operation["operationId"], 2
            while operation["operationId"] in used_ids:
                operation["operationId"] = f"{base}_{n}"
                n += 1
            used_ids.add(operation["operationId"])
            item[method] = operation
        known_servers = op_servers.setdefault((path, method), [])
        known_servers.extend(url for url in own if url not in known_servers)
    if len(servers) > 1:
        for (path, method), urls in op_servers.items():
            if urls:
                paths[path][method]["servers"] = [{"url": url} for url in urls]
    info: dict[str, Any] = {"title": title, "version": version}
    if description:
        info["description"] = description
    document: dict[str, Any] = {"openapi": "3.1.0", "info": info}
    if servers:
        document["servers"] = [{"url": url} for url in servers]
    document["paths"] = paths
    return document
