"""The streamed request path: requests whose body is too large to hold, answered through the relay.

The core addon's `requestheaders` hook sends such a request here before mitmproxy reads its body:
`handle_streaming` routes it, points the flow at the relay (backworks_core.relay) and registers the
job that answers it there, the body arriving as a stream. A head that already breaks its endpoint's
limits (`may_refuse_head`, `refuse_head`) takes the same way, its body read into the relay and
dropped, never held nor sent upstream. Everything else is answered by `Gateway.handle` in the
`request` hook.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web
from mitmproxy import http

from backworks_core import headers as fast_headers
from backworks_core.bodies import DEFAULT_LIMIT, BodyTooLarge
from backworks_core.context import Answer, Forward, RequestContext, StreamedResponse
from backworks_core.flowstate import flow_state
from backworks_core.gateway import Gateway, comment_notes, routed_path
from backworks_core.limits import Refusal, declared_length, header_size, too_large
from backworks_core.paths import PathRefused, canonical_path
from backworks_core.relay import RELAY_CHUNK, RelayAnswer, Relayed, StreamRelay, point_at_relay, relay_answer
from backworks_core.router import Match

logger = logging.getLogger(__name__)

BODY_TOO_LARGE = "limits.body_too_large"  # ctx.state: a streamed request body passed max_body_size


async def handle_streaming(gateway: Gateway, flow: http.HTTPFlow, *, reverse_mode: bool, direct: bool, relay: StreamRelay) -> bool:
    """`requestheaders`, for a request body too large to hold (or of unknown length).

    The flow is pointed at the relay and streamed into it; the relay's job runs the
    endpoint with the body as it arrives. Handlers without `accepts_body_stream` get the
    body read whole first, as mitmproxy would have. False: the flow passes through.
    """
    routed = gateway.route(flow, reverse_mode=reverse_mode, direct=direct)
    if routed is None:
        return False
    refused = False
    if isinstance(routed, RequestContext) and routed.endpoint.guard is not None:
        refusal = routed.endpoint.guard.check_head(flow.request)
        if refusal is not None:  # the body is read into the relay and dropped: never held, never sent on
            refused_ctx, routed, refused = routed, await gateway.refuse(routed, refusal), True
            comment_notes(flow, refused_ctx)

    async def job(web_request: web.BaseRequest) -> RelayAnswer:
        relayed: Relayed = flow_state(flow).relayed
        flow.request.url = relayed.url  # the handler sees the client's request, not the relay's
        if isinstance(routed, http.Response):
            await _drain(web_request)  # a 404/405 needs none of the body
            return relay_answer(flow, routed)
        return relay_answer(flow, await _answer_streamed(gateway, routed, web_request, relay))

    await relay.start()
    point_at_relay(flow, relay, job)
    if refused:  # the relay needs only the framing; the client's headers come back after (restore_relayed)
        keep = (b"host", b"content-length", b"transfer-encoding")
        flow.request.headers = http.Headers([(k, v) for k, v in flow.request.headers.fields if k.lower() in keep])
    flow.request.stream = True
    return True


async def _answer_streamed(gateway: Gateway, ctx: RequestContext, web_request: web.BaseRequest, relay: StreamRelay) -> http.Response | StreamedResponse:
    """The relay's job for a routed request: the endpoint's answer, its body read from the relay."""
    flow = ctx.flow
    ctx.buffer_limit = relay.buffer_limit
    guard = ctx.endpoint.guard
    max_body = guard.max_body if guard is not None else None
    # Held whole: to validate it, or when the limit is within what Backworks holds anyway
    # (so an upstream never sees the start of a body that turns out too large).
    validating = guard is not None and guard.validator is not None
    # Held whole, too, when a transform rewrites the body: streamed, it would reach the
    # upstream untransformed (fail closed), held to the decoded limit (backworks_core.bodies).
    transforming = transforms_body(gateway, ctx)
    hold = validating or transforming or (max_body is not None and max_body <= relay.buffer_limit)
    answer: Answer | None = None
    try:
        if ctx.endpoint.accepts_body_stream and not hold:
            chunks = web_request.content.iter_chunked(RELAY_CHUNK)
            ctx.body_stream = chunks if max_body is None else _capped(chunks, max_body, ctx)
            ctx.notes["streamed"] = "request"
        else:
            cap = max_body if max_body is not None else (relay.buffer_limit if validating else (DEFAULT_LIMIT if transforming else None))
            body = await _read_capped(web_request, cap)  # whole, as mitmproxy would hold it
            if body is None:
                assert cap is not None
                answer = await gateway.refuse(ctx, too_large(cap) if max_body is not None or not validating else Refusal(
                    413, f"a request body validated against a schema is held whole: at most {cap} bytes (backworks_buffer_limit)", "max_body_size"
                ))
            else:
                flow.request.raw_content = body  # as received: the relay does not undo Content-Encoding
                refusal = guard.check_schema(flow.request) if validating and guard is not None else None
                answer = await gateway.refuse(ctx, refusal) if refusal is not None else None
        if answer is None:
            answer = await gateway.answer(ctx)
        if isinstance(answer, Forward):  # nothing mitmproxy could still forward: the body is gone
            answer = ctx.error(502, "this endpoint cannot forward a streamed request body")
    except Exception:
        if not ctx.state.get(BODY_TOO_LARGE):
            logger.exception("[%s] backworks failed on a streamed %s %s", ctx.request_id, flow.request.method, flow.request.path.partition("?")[0])  # no query: it may hold keys
        answer = ctx.error(500, "internal gateway error; see the gateway log for this request id")
    if ctx.state.get(BODY_TOO_LARGE) and max_body is not None:  # whatever the handler made of the cut
        if isinstance(answer, StreamedResponse):
            answer.close()
        await _drain(web_request)
        answer = await gateway.refuse(ctx, too_large(max_body))
    if isinstance(answer, StreamedResponse):
        ctx.notes["streamed"] = "both" if "streamed" in ctx.notes else "response"
    comment_notes(flow, ctx)
    return answer


def transforms_body(gateway: Gateway, ctx: RequestContext) -> bool:
    """Whether a request transform of this endpoint (the proxy's chain, its own, a transform
    middleware's) has body operations."""
    endpoint = ctx.endpoint
    if getattr(endpoint.handler, "reshapes_request", False):  # once per streamed request: not the hot path
        return True
    if endpoint.request_transform is not None and endpoint.request_transform.touches_body:
        return True
    return any(m.transforms_request_body for m in gateway.pipeline(endpoint, ctx.method or ctx.request.method, routed_path(ctx)).request)


def may_refuse_head(gateway: Gateway, request: http.Request) -> bool:
    """Cheap, for every request's `requestheaders`: a body whose head could break some endpoint's limit."""
    length = declared_length(request)
    if length == 0 or (length is None and not fast_headers.has(request.headers, "transfer-encoding")):
        return False  # no body to keep from being read: the `request` hook refuses it
    if gateway.body_floor is not None and length is not None and length > gateway.body_floor:
        return True
    return gateway.header_floor is not None and header_size(request) > gateway.header_floor


async def refuse_head(gateway: Gateway, flow: http.HTTPFlow, *, reverse_mode: bool, direct: bool, relay: StreamRelay) -> bool:
    """`requestheaders`: refuse (413/431) a request whose head breaks its endpoint's limits.

    Its body is then streamed into the relay and dropped, never held nor sent upstream.
    False: within the limits (or no endpoint), nothing done.
    """
    request = flow.request
    try:
        path = canonical_path(request.path.partition("?")[0])  # routed as `route` will route it
    except PathRefused:  # `route` answers 400 (the body dropped in the relay), or lets it pass
        return await handle_streaming(gateway, flow, reverse_mode=reverse_mode, direct=direct, relay=relay)
    result = gateway.router.match(request.method, path, request.pretty_host if gateway.uses_hosts else "")
    guard = result.route.payload.guard if isinstance(result, Match) else None
    if guard is None or guard.check_head(request) is None:
        return False
    return await handle_streaming(gateway, flow, reverse_mode=reverse_mode, direct=direct, relay=relay)


async def _drain(request: web.BaseRequest) -> None:
    async for _ in request.content.iter_chunked(RELAY_CHUNK):
        pass


async def _read_capped(request: web.BaseRequest, cap: int | None) -> bytes | None:
    """The whole body, or None (the rest read and dropped) once it passes `cap`."""
    if cap is None:
        return await request.content.read()
    parts: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(RELAY_CHUNK):
        size += len(chunk)
        if size > cap:
            await _drain(request)
            return None
        parts.append(chunk)
    return b"".join(parts)


async def _capped(chunks: AsyncIterator[bytes], cap: int, ctx: RequestContext) -> AsyncIterator[bytes]:
    """A streamed request body, cut (BodyTooLarge) once it passes `cap`; the relay job answers 413."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > cap:
            ctx.state[BODY_TOO_LARGE] = True
            ctx.notes["refused"] = "max_body_size"
            raise BodyTooLarge(f"request body passed {cap} bytes")
        yield chunk
