"""What a handler and a middleware see of one request, and the JSON errors Backworks answers with."""

from __future__ import annotations

import json
import re
import secrets
from http import HTTPStatus
from dataclasses import dataclass, field
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, Union

from mitmproxy import http

from backworks_core import headers as fast_headers
from backworks_core.flowstate import flow_state, peek_state
from backworks_core.telemetry import RequestRecord
from backworks_core.templates import TemplateContext

if TYPE_CHECKING:
    from backworks_core.gateway import EndpointPlan

REQUEST_ID_HEADER = "X-Request-ID"
TRACEPARENT_HEADER = "traceparent"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}\Z")
# W3C Trace Context, version 00: version-traceid-parentid-flags, lower-case hex, ids not all zero.
_TRACEPARENT = re.compile(r"^00-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})\Z")


_HEX_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")


def parse_traceparent(value: str) -> str | None:
    """The trace id of a valid version-00 `traceparent`, else None (an invalid one is restarted)."""
    match = _TRACEPARENT.match(value.strip())
    return match.group(1) if match else None


def request_id_for(flow: http.HTTPFlow) -> str:
    """The request's id, decided once and kept on the flow.

    The client's X-Request-ID when it is a sane token; else the trace id of a valid incoming
    `traceparent`, so the two line up in logs; else a new 32-hex id (a valid trace id too).
    """
    existing = flow.metadata.get("backworks.request_id")
    if existing:
        return existing
    offered = fast_headers.get(flow.request.headers, REQUEST_ID_HEADER, "")
    if offered and _VALID_REQUEST_ID.match(offered):
        request_id = offered
    else:
        request_id = parse_traceparent(fast_headers.get(flow.request.headers, TRACEPARENT_HEADER) or "") or secrets.token_hex(16)
    flow.metadata["backworks.request_id"] = request_id
    return request_id


def traceparent_for(flow: http.HTTPFlow, request_id: str) -> str:
    """The `traceparent` sent upstream.

    A valid incoming one goes on unchanged: Backworks reports no spans, so a parent id of its
    own would point the upstream's span at one no tracing backend ever sees. Without one (or
    with a malformed one) a trace starts here, its id the request id when that is 32 hex digits,
    not sampled: sampling is the tracer's decision, not the gateway's.
    """
    decided = flow.metadata.get("backworks.traceparent")
    if decided:
        return decided
    incoming = fast_headers.get(flow.request.headers, TRACEPARENT_HEADER) or ""
    if incoming and parse_traceparent(incoming):
        traceparent = incoming.strip()
    else:
        own = _HEX_TRACE_ID.fullmatch(request_id) and request_id.strip("0")
        trace_id = request_id.lower() if own else secrets.token_hex(16)
        traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-00"
    flow.metadata["backworks.traceparent"] = traceparent
    return traceparent


def stamp_request(flow: http.HTTPFlow, request_id: str) -> None:
    """The request as mitmproxy forwards it: carrying the request id and a trace context."""
    fast_headers.put_all(flow.request.headers, ((REQUEST_ID_HEADER, request_id), (TRACEPARENT_HEADER, traceparent_for(flow, request_id))))


ID_ADDED = "request_id_added"  # flowstate: the answer whose X-Request-ID Backworks added


def stamp_response(flow: http.HTTPFlow) -> None:
    """Every answer to a request Backworks saw carries its id back to the client."""
    request_id = flow.metadata.get("backworks.request_id")
    if not request_id or flow.response is None or peek_state(flow).get("stamped") is flow.response:
        return
    state = flow_state(flow)
    state["stamped"] = flow.response  # once per answer: responseheaders, then response
    if not fast_headers.has(flow.response.headers, REQUEST_ID_HEADER):
        fast_headers.put(flow.response.headers, REQUEST_ID_HEADER, request_id)
        state[ID_ADDED] = flow.response  # the capture records the answer without it


@dataclass
class Identity:
    """The authenticated caller, as handlers and templates see it."""

    username: str
    roles: list[str] = field(default_factory=list)
    permissions: list[str] = field(default_factory=list)
    claims: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestContext:
    """One request on its way through middlewares to a handler."""

    flow: http.HTTPFlow
    endpoint: EndpointPlan
    params: dict[str, str]
    request_id: str
    user: Identity | None = None
    # Short `key=value` notes that end up in the flow comment mitmweb shows.
    notes: dict[str, str] = field(default_factory=dict)
    # Per-request scratch space for plugins, keyed by plugin name.
    state: dict[str, Any] = field(default_factory=dict)
    # The request body as it arrives, when it is too large to hold (see backworks_core.relay);
    # `flow.request.content` is then empty. Only handlers with `accepts_body_stream` see this.
    body_stream: AsyncIterator[bytes] | None = None
    # The most of an upstream answer a handler may hold; None: hold it whole (no relay to stream with).
    buffer_limit: int | None = None
    # What the metrics and the status page learn of this request (see backworks_core.telemetry).
    record: RequestRecord | None = None

    @property
    def request(self) -> http.Request:
        return self.flow.request

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> http.Response:
        """An error Backworks answers itself (mitmweb marks the flow, the status page lists it)."""
        if self.record is not None:
            self.record.error = message
        return json_error(status, message, self.request_id, headers)


@dataclass(frozen=True)
class Forward:
    """A handler's answer that hands the request to mitmproxy, sent to `url` with `headers`.

    For what only mitmproxy's own upstream connection can carry (WebSocket upgrades): the flow
    keeps no response, and mitmproxy connects to the URL's host and port and relays the rest.
    """

    url: str
    headers: list[tuple[str, str]]


@dataclass
class StreamedResponse:
    """A handler's answer whose body is too large to hold: the head now, the body as it comes.

    Middlewares' `on_response` see `head` (an http.Response without content). `close` lets the
    upstream go if the body is never read (the client went away).
    """

    head: http.Response
    body: AsyncIterator[bytes]
    close: Callable[[], None]


Answer = Union[http.Response, Forward, StreamedResponse]


class Handler(Protocol):
    """Answers a matched request. Raising is a 500 with a request id; the traceback is logged."""

    async def __call__(self, ctx: RequestContext) -> Answer: ...


class Middleware(Protocol):
    """Runs before the handler; returning a response stops the request there (deny/answer)."""

    async def on_request(self, ctx: RequestContext) -> http.Response | None: ...

    async def on_response(self, ctx: RequestContext, response: http.Response) -> None: ...


def reason_phrase(status: int) -> str:
    """The standard phrase (Python's table knows 429 and 431, mitmproxy's does not); "" if none."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def utf8(text: str) -> bytes:
    """Text as UTF-8. A request's invalid UTF-8 reaches Python as lone surrogates (mitmproxy
    decodes with surrogateescape); they become "?" instead of failing the answer."""
    return text.encode("utf-8", "replace")


def json_bytes(value: Any) -> bytes:
    """Compact JSON as UTF-8; with \\u escapes when the text holds lone surrogates (see `utf8`)."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> http.Response:
    payload = json_bytes(body)
    response = http.Response.make(status, payload, {"Content-Type": "application/json"})
    if not response.reason:
        response.reason = reason_phrase(status)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def json_error(
    status: int, message: str, request_id: str, headers: dict[str, str] | None = None
) -> http.Response:
    """Every error Backworks answers itself: `{error, status, request_id}`."""
    response = json_response(status, {"error": message, "status": status, "request_id": request_id}, headers)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


def template_context(ctx: RequestContext) -> TemplateContext:
    """What `{{path.x}}`, `{{query.x}}`, `{{header.x}}` and `{{auth.x}}` read for this request."""
    request = ctx.flow.request
    return TemplateContext(
        path=ctx.params,
        query=request.query,
        headers=request.headers,
        auth=ctx.user.claims if ctx.user is not None else None,
    )
