"""HAR 1.2: read (browsers' exports, mitmproxy's savehar, `.zhar`) and written."""

from __future__ import annotations

import base64
import json
import logging
import zlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from backworks_core.capture.formats.common import DEFAULT_PORTS, FormatError, PathLike, _ZLIB_MAGICS, _decoded_headers, _open_binary, _url, _without_pseudo, header_value, is_text
from backworks_core.capture.model import Exchange
from backworks_core.files import private_output


logger = logging.getLogger(__name__)


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
