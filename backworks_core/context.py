"""What a handler and a middleware see of one request, and the JSON errors Backworks answers with."""

from __future__ import annotations

import json
import os
import random
import re
from http import HTTPStatus
from dataclasses import dataclass, field
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, Union

from mitmproxy import http

from backworks_core import headers as fast_headers
from backworks_core.flowstate import FlowState, flow_state, peek_state
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


# Request, trace and span ids: unique and unguessable enough to correlate logs and traces, never
# credentials. Drawn from a generator seeded once from the OS (a process of its own per worker,
# started by exec, never forked after this), not from os.urandom per id: two system calls per
# request otherwise.
_IDS = random.Random(os.urandom(32))


def new_trace_id() -> str:
    """32 lower-case hex digits, never all zeros (W3C trace-context forbids that id)."""
    return "%032x" % (_IDS.getrandbits(128) or 1)


def new_span_id() -> str:
    """16 lower-case hex digits, never all zeros."""
    return "%016x" % (_IDS.getrandbits(64) or 1)


def parse_traceparent(value: str) -> str | None:
    """The trace id of a valid version-00 `traceparent`, else None (an invalid one is restarted)."""
    match = _TRACEPARENT.match(value.strip())
    return match.group(1) if match else None


def request_id_for(flow: http.HTTPFlow, state: FlowState | None = None) -> str:
    """The request's id, decided once and kept on the flow.

    The client's X-Request-ID when it is a sane token; else the trace id of a valid incoming
    `traceparent`, so the two line up in logs; else a new 32-hex id (a valid trace id too).
    Kept on the FlowState, and in `flow.metadata["backworks.request_id"]` for saved flows.
    """
    if state is None:
        state = flow_state(flow)
    existing = state.request_id or flow.metadata.get("backworks.request_id")  # a saved flow keeps its id
    if existing:
        state.request_id = existing
        return existing
    offered, incoming = fast_headers.get_two(flow.request.headers, REQUEST_ID_HEADER, TRACEPARENT_HEADER)
    trace_id = parse_traceparent(incoming) if incoming else None
    if offered and _VALID_REQUEST_ID.match(offered):
        request_id = offered
    else:
        request_id = trace_id or new_trace_id()
    state.request_id = flow.metadata["backworks.request_id"] = request_id
    # Read in the same pass: traceparent_for does not read it again ("": none, or not valid).
    state.incoming_traceparent = incoming.strip() if trace_id is not None and incoming is not None else ""
    return request_id


def traceparent_for(flow: http.HTTPFlow, request_id: str, state: FlowState | None = None) -> str:
    """The `traceparent` sent upstream.

    A valid incoming one goes on unchanged: Backworks reports no spans, so a parent id of its
    own would point the upstream's span at one no tracing backend ever sees. Without one (or
    with a malformed one) a trace starts here, its id the request id when that is 32 hex digits,
    not sampled: sampling is the tracer's decision, not the gateway's.
    """
    if state is None:
        state = flow_state(flow)
    decided = state.traceparent or flow.metadata.get("backworks.traceparent")
    if decided:
        state.traceparent = decided
        return decided
    incoming = state.incoming_traceparent  # read by request_id_for with the request id, if it decided one
    if incoming is None:
        incoming = fast_headers.get(flow.request.headers, TRACEPARENT_HEADER) or ""
    if incoming and parse_traceparent(incoming):
        traceparent = incoming.strip()
    else:
        own = _HEX_TRACE_ID.fullmatch(request_id) and request_id.strip("0")
        trace_id = request_id.lower() if own else new_trace_id()
        traceparent = f"00-{trace_id}-{new_span_id()}-00"
    state.traceparent = flow.metadata["backworks.traceparent"] = traceparent
    return traceparent


def stamp_request(flow: http.HTTPFlow, request_id: str) -> None:
    """The request as mitmproxy forwards it: carrying the request id and a trace context."""
    fast_headers.put_all(flow.request.headers, ((REQUEST_ID_HEADER, request_id), (TRACEPARENT_HEADER, traceparent_for(flow, request_id))))


_REQUEST_ID_FIELD = REQUEST_ID_HEADER.encode()
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()


def with_request_id(fields: list[tuple[bytes, bytes]], request_id: str, state: FlowState) -> list[tuple[bytes, bytes]]:
    """A response head being built (as bytes), with the request id added unless it carries one:
    the id goes in with the head rather than by rebuilding the finished head's fields after.
    `mark_id_added` then names the Response made of them."""
    for name, _ in fields:
        if name.lower() == _REQUEST_ID_KEY:
            return fields
    fields.append((_REQUEST_ID_FIELD, request_id.encode("utf-8", "surrogateescape")))
    state.id_added = _PENDING
    return fields


_PENDING: Any = object()


def mark_id_added(state: FlowState, response: http.Response) -> None:
    """`response` was made of the fields `with_request_id` added the id to."""
    if state.id_added is _PENDING:
        state.id_added = response


def stamp_response(flow: http.HTTPFlow, state: FlowState | None = None) -> None:
    """Every answer to a request Backworks saw carries its id back to the client.

    An answer whose head got the id as it was built (`with_request_id`) is only checked: a
    middleware's response phase may have removed or replaced it since.
    """
    if state is None:
        state = peek_state(flow)
        if state is None:
            return
    request_id = state.request_id
    response = flow.response
    if not request_id or response is None or state.stamped is response:
        return
    state.stamped = response  # once per answer: responseheaders, then response
    if state.id_added is response:
        value = fast_headers.get(response.headers, REQUEST_ID_HEADER)
        if value is None:
            fast_headers.put(response.headers, REQUEST_ID_HEADER, request_id)
        elif value != request_id:  # set by a response transform: not ours to leave out of a capture
            state.id_added = None
        return
    if not fast_headers.has(response.headers, REQUEST_ID_HEADER):
        fast_headers.put(response.headers, REQUEST_ID_HEADER, request_id)
        state.id_added = response  # the capture records the answer without it


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
    # Decided once by the gateway's route: the method, and the canonical path without the query.
    method: str | None = None
    path: str | None = None
    # The flow's FlowState (backworks_core.flowstate), so that no one looks it up again.
    flow_state: FlowState | None = None

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
    """Runs before the handler; returning a response stops the request there (deny/answer).

    Capabilities are declared as attributes, read once when the blueprint is compiled (see
    gateway.MiddlewarePlan): `response_phase = False` keeps `on_response` out of the pipeline's
    response phase; `answers_preflights` (cors) and `transforms_request_body` (transform).
    """

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


def head_response(
    status: int, reason: bytes, headers: http.Headers, content: bytes | None, timestamp_start: float, timestamp_end: float | None
) -> http.Response:
    """`http.Response(b"HTTP/1.1", status, reason, headers, content, None, start, end)`, made
    without mitmproxy's run-time type check of its fields.

    Under `__debug__` (how mitmdump runs) `ResponseData.__post_init__` checks each field's value
    against its annotation through `typing`: some 20 µs per answer, a fifth of Backworks' own
    work on a proxied request. The values here are of those types by construction (the
    annotations say so, and mypy checks the callers); the object is the same as the
    constructor's, field for field, in the same order."""
    data = _RESPONSE_DATA_NEW(http.ResponseData)
    data.http_version = b"HTTP/1.1"
    data.headers = headers
    data.content = content
    data.trailers = None
    data.timestamp_start = timestamp_start
    data.timestamp_end = timestamp_end
    data.status_code = status
    data.reason = reason
    response = _RESPONSE_NEW(http.Response)
    response.data = data
    return response


_RESPONSE_DATA_NEW = http.ResponseData.__new__
_RESPONSE_NEW = http.Response.__new__


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
