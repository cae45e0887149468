"""mitmproxy flow files (`mitmdump -w`) read as exchanges, one flow at a time.

mitmproxy's own reader builds every flow object; here a record that is not an HTTP flow with a
response is skipped from its tnetstring before any object is built, and a flow's body is decoded
within a bound (a compression bomb in a flow file is never inflated whole).
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from backworks_core.capture.formats.common import FormatError, PathLike, _clean, _decoded_headers, _open_binary, _split_target, _text, _without_pseudo, header_value
from backworks_core.capture.model import Exchange


logger = logging.getLogger(__name__)


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
