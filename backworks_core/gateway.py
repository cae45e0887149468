"""A compiled blueprint: the router, handlers and middlewares one request goes through.

A Gateway is immutable once built. The core addon swaps a whole new Gateway in on reload;
a request keeps the Gateway it started with, so nothing changes under it mid-flight.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mitmproxy import http

from aiohttp import web

from backworks_core import headers as fast_headers
from backworks_core.admin import admin_diagnostics
from backworks_core.context import (
    Answer,
    Forward,
    Handler,
    Middleware,
    RequestContext,
    StreamedResponse,
    json_error,
    request_id_for,
    stamp_request,
    template_context,
)
from backworks_core.diagnostics import BlueprintError, Diagnostic
from backworks_core.handlers.mock import MockConfig, MockHandler, check_path_params
from backworks_core.handlers.mock_state import Member as StateMember, link_collections
from backworks_core.handlers.python import PythonConfig, PythonHandler
from backworks_core.handlers.static import StaticConfig, StaticHandler
from backworks_core.bodies import DEFAULT_LIMIT, BodyError
from backworks_core.limits import BodyTooLarge, LimitsConfig, Refusal, RequestGuard, ValidateConfig, body_refusal, decoded_limit, declared_length, header_size, too_large
from backworks_core.loader import PYTHON_HANDLER, EndpointSpec, LoadedBlueprint, MiddlewareSpec, collect_blueprint
from backworks_core.plugins import Plugin, PluginRegistry
from backworks_core.relay import RelayAnswer, RelayJob, StreamRelay
from backworks_core.model import EndpointSettings
from backworks_core.pages import InternalEndpoint, PageHandler
from backworks_core.paths import PathGlob, PathRefused, canonical_path, filter_forms, lenient_path
from backworks_core.router import Match, MethodNotAllowed, Route, Router, parse_template, template_shape
from backworks_core.flowstate import FlowState, flow_state, peek_state
from backworks_core.forwarding import TrustBoundary
from backworks_core.telemetry import PASSTHROUGH, STANDARD_METHODS, RequestRecord, method_label
from backworks_core.transforms import CompiledTransform

logger = logging.getLogger(__name__)

Unmatched = Literal["not_found", "passthrough"]


class BuildError(ValueError):
    """Raised by a plugin while compiling; `loc` is relative to the endpoint or middleware."""

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.loc = loc


# ctx.state key set on a CORS preflight routed to the endpoint of the method it asks about.
PREFLIGHT = "preflight"


def is_preflight(request: http.Request) -> bool:
    """A CORS preflight: OPTIONS with an Origin and an Access-Control-Request-Method."""
    if request.method.upper() != "OPTIONS":
        return False
    headers = request.headers
    return fast_headers.has(headers, "origin") and bool((fast_headers.get(headers, "access-control-request-method") or "").strip())


@dataclass(frozen=True)
class MiddlewarePlan:
    spec: MiddlewareSpec
    path: PathGlob | None  # matched in linear time (backworks_core.paths)
    methods: frozenset[str] | None
    instance: Middleware
    # Capabilities, read from the instance once at build (class attributes it declares), never per request.
    name: str = field(init=False)
    answers_preflights: bool = field(init=False)  # cors: sees CORS preflights, and decorates refusals
    response_phase: bool = field(init=False)  # has an `on_response` that does something
    transforms_request_body: bool = field(init=False)

    def __post_init__(self) -> None:
        instance = self.instance
        object.__setattr__(self, "name", self.spec.name)
        object.__setattr__(self, "answers_preflights", bool(getattr(instance, "answers_preflights", False)))
        object.__setattr__(self, "response_phase", bool(getattr(instance, "response_phase", True)))
        object.__setattr__(self, "transforms_request_body", bool(getattr(instance, "transforms_request_body", False)))

    @property
    def has_filter(self) -> bool:
        return self.path is not None or self.methods is not None

    def filter_matches(self, method: str, path: str | tuple[str, ...] | None) -> bool:
        """The middleware's own filter; a middleware without one matches nothing by it.

        `path` is the canonical path's decoded form (no trailing slash), or the forms of
        `paths.filter_forms` (any one matching is enough); None (no canonical path: only
        reached by a bug) matches every path filter, so that it fails closed. HEAD counts as
        GET, as it does for routing: a filter must never be weaker than the route it guards.
        """
        if not self.has_filter:
            return False
        if self.methods is not None and not ({method, "ANY"} & self.methods) and not (method == "HEAD" and "GET" in self.methods):
            return False
        if self.path is None or path is None:
            return True
        if isinstance(path, str):
            return self.path.match(path)
        if len(path) == 1:
            return self.path.match(path[0])
        return any(self.path.match(form) for form in path)


@dataclass(frozen=True)
class Pipeline:
    """The middlewares of one endpoint and method, in the order they run, split by phase.

    `request` runs in blueprint order; `response` holds only those with a response phase, each
    with its position in `request`, last first (as Envoy splits decoder and encoder filters): a
    request stopped at position k has the response phase of the ones up to k only.
    """

    request: tuple[MiddlewarePlan, ...]
    response: tuple[tuple[int, MiddlewarePlan], ...]

    @staticmethod
    def of(chain: Sequence[MiddlewarePlan]) -> Pipeline:
        return Pipeline(tuple(chain), tuple((i, m) for i, m in reversed(list(enumerate(chain))) if m.response_phase))

    @property
    def preflight(self) -> Pipeline:
        """Only the middlewares that answer CORS preflights (cors) see one."""
        return Pipeline.of([m for m in self.request if m.answers_preflights])


NO_MIDDLEWARES = Pipeline((), ())


@dataclass(frozen=True)
class EndpointPlan:
    spec: EndpointSpec
    handler: Handler
    referenced: frozenset[str]  # middleware names the endpoint lists
    # The endpoint's `transform:`, applied here around handlers that do not apply it themselves
    # (the proxy puts it innermost in its own chain, after the plugin- and pool-level ones).
    request_transform: CompiledTransform | None = None
    response_transform: CompiledTransform | None = None
    # Backworks' own endpoints (the status page, metrics): served on the gateway's address only.
    internal: bool = False
    # Size limits and body schema (backworks_core.limits), checked before the middlewares.
    guard: RequestGuard | None = None
    # Precomputed at build: read on every request.
    label: str = field(init=False)  # `GET,HEAD /users/{id}`
    template: str = field(init=False)  # the path template, a bounded metric label
    literal: bool = field(init=False)  # a template without parameters: one path, filters resolved once
    label_note: str = field(init=False)  # the `endpoint=` note of the flow comment
    accepts_body_stream: bool = field(init=False)  # the handler reads a streamed request body itself
    # The compiled pipelines, by method, for the template's own path (filled at build; see Gateway.pipeline).
    pipelines: dict[str, Pipeline] = field(init=False, default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        template = self.spec.settings.path
        object.__setattr__(self, "label", self.spec.label)
        object.__setattr__(self, "template", template)
        object.__setattr__(self, "literal", "{" not in template and "*" not in template)
        object.__setattr__(self, "label_note", f'"{self.label}"')
        object.__setattr__(self, "accepts_body_stream", bool(getattr(self.handler, "accepts_body_stream", False)))


@dataclass
class Gateway:
    blueprint: LoadedBlueprint
    router: Router
    endpoints: list[EndpointPlan]
    middlewares: list[MiddlewarePlan]
    warnings: list[Diagnostic] = field(default_factory=list)
    # Backworks' own pages (status page, its API, metrics), for the admin listener (addons/admin.py).
    admin_pages: list[InternalEndpoint] = field(default_factory=list)
    # Header names only the gateway sets (auth's forward_claims): removed from every client request.
    protected_headers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # What of a matched request's head the client may not set, and who the client is (forwarding.py).
        self.trust_boundary = TrustBoundary(self.protected_headers, self.blueprint.settings.server.trusted_proxies)
        self.uses_hosts = any(e.spec.settings.host for e in self.endpoints)
        # The lowest limits of any endpoint: `requestheaders` routes early only past these.
        guards = [e.guard for e in self.endpoints if e.guard is not None]
        self.body_floor = min((g.max_body for g in guards if g.max_body is not None), default=None)
        self.header_floor = min((g.max_header for g in guards if g.max_header is not None), default=None)
        self.compile_pipelines()

    def unmatched_policy(self, reverse_mode: bool) -> Unmatched:
        configured = self.blueprint.settings.server.unmatched
        if configured is not None:
            return configured
        return "not_found" if reverse_mode else "passthrough"

    def compile_pipelines(self) -> None:
        """Resolve each endpoint's middleware filters for every standard method on its literal
        path, at load: a request to that path then takes its pipeline by one dict lookup."""
        for endpoint in self.endpoints:
            endpoint.pipelines.clear()
            if not endpoint.literal or endpoint.internal:
                continue
            for method in (*STANDARD_METHODS, "ANY"):
                endpoint.pipelines[method] = self._pipeline(endpoint, method, endpoint.template)

    def pipeline(self, endpoint: EndpointPlan, method: str, path: str) -> Pipeline:
        """The middlewares that run for this request: compiled at load for the endpoint's own
        literal path, else filtered now (path parameters, or another spelling of the path)."""
        if not self.middlewares:
            return NO_MIDDLEWARES
        if path == endpoint.template:
            compiled = endpoint.pipelines.get(method)
            if compiled is not None:
                return compiled
        return self._pipeline(endpoint, method, path)

    def _pipeline(self, endpoint: EndpointPlan, method: str, path: str) -> Pipeline:
        chain = self.middlewares_for(endpoint, method, path)
        return Pipeline.of(chain) if chain else NO_MIDDLEWARES

    def middlewares_for(self, endpoint: EndpointPlan, method: str, path: str) -> list[MiddlewarePlan]:
        """The union rule: listed by the endpoint, or selected by the middleware's own filter."""
        if not self.middlewares:
            return []
        try:
            forms: tuple[str, ...] | None = filter_forms(canonical_path(path))
        except PathRefused:  # `route` refuses such a path before any middleware: fail closed anyway
            forms = None
        return [
            m for m in self.middlewares if m.name in endpoint.referenced or m.filter_matches(method, forms)
        ]

    def route(self, flow: http.HTTPFlow, *, reverse_mode: bool, direct: bool, state: FlowState | None = None) -> RequestContext | http.Response | None:
        """The endpoint context to run, Backworks' own 404/405, or None to let the flow pass."""
        if state is None:
            state = flow_state(flow)
        request = flow.request
        method = request.method  # decoded once for the whole pass
        raw_path, mark, query = request.path.partition("?")
        # pretty_host is costly per request; only host globs need it.
        host = request.pretty_host if self.uses_hosts else ""
        # One canonical path (backworks_core.paths) for routing, middleware filters and the
        # upstream; traffic passed on untouched (someone else's, or `passthrough_path: as_sent`)
        # is only routed by it, and refused only when it is the blueprint's.
        try:
            path = canonical_path(raw_path)
        except PathRefused as exc:
            if not self.passes_untouched(reverse_mode, direct) or any(  # as the router read it before, or as the laxest server would
                self._handles(self.router.match(method, reading, host), reverse_mode, direct) for reading in (raw_path, lenient_path(raw_path))
            ):
                flow.comment = _join_comment(flow.comment, "backworks: path refused → 400")
                return self._error(flow, 400, f"request path refused: {exc}; send the path without it", state=state)
            path, result = raw_path, None  # neither reading is the blueprint's: passed on as sent
        else:
            result = self.router.match(method, path, host)
            if path != raw_path and (not self.passes_untouched(reverse_mode, direct) or self._handles(result, reverse_mode, direct)):
                request.path = path + mark + query  # what is routed and authorized is what goes upstream
        preflight = self._preflight(request, path, host) if result is not None and method == "OPTIONS" and is_preflight(request) else None
        if preflight is not None:
            result = preflight[0]  # answered by the cors middleware of the endpoint it asks about
        if isinstance(result, Match) and result.route.payload.internal and not (reverse_mode or direct):
            result = None  # the status page and metrics answer on the gateway's own address only
        if result is None:
            if not direct and self.unmatched_policy(reverse_mode) == "passthrough":
                flow.comment = _join_comment(flow.comment, "backworks: no endpoint, passed through")
                if reverse_mode and not self.passes_untouched(reverse_mode, direct):  # Backworks' own upstream: the request carries its id there
                    self.trust_boundary.admit(flow)  # identity and forwarding headers as on any endpoint
                    request_id = request_id_for(flow, state)
                    _record(flow, state, request_id).endpoint = PASSTHROUGH
                    stamp_request(flow, request_id)
                else:  # someone else's traffic through a debugging proxy, or `passthrough_path: as_sent`
                    # (`backworks capture`): counted, left unchanged both ways, no id added upstream or back
                    state.record = RequestRecord(request_id="", method=method_label(method), endpoint=PASSTHROUGH)
                return None
            flow.comment = _join_comment(flow.comment, "backworks: no endpoint → 404")
            return self._error(flow, 404, f"no endpoint matches {method} {path}", state=state)
        if isinstance(result, MethodNotAllowed):
            allow = ", ".join(result.allow)
            flow.comment = _join_comment(flow.comment, "backworks: method not allowed → 405")
            return self._error(flow, 405, f"method {method} is not allowed here (allowed: {allow})", {"Allow": allow}, state=state)
        assert isinstance(result, Match)
        self.trust_boundary.admit(flow)  # before anything reads or sets a header: identity, Connection, forwarding
        endpoint: EndpointPlan = result.route.payload
        request_id = request_id_for(flow, state)
        record = state.record
        if not isinstance(record, RequestRecord):
            record = state.record = RequestRecord(request_id=request_id, method=method_label(method))
        record.endpoint, record.endpoint_label, record.internal = endpoint.template, endpoint.label, endpoint.internal
        ctx = RequestContext(flow=flow, endpoint=endpoint, params=result.params, request_id=request_id, record=record, method=method, path=path, flow_state=state)
        ctx.notes["endpoint"] = endpoint.label_note
        ctx.notes["handler"] = endpoint.spec.handler
        if preflight is not None:
            ctx.state[PREFLIGHT] = preflight[1]
        return ctx

    def passes_untouched(self, reverse_mode: bool, direct: bool) -> bool:
        """A request no endpoint matches goes on exactly as sent: someone else's traffic through
        regular mode, or reverse mode with `server.passthrough_path: as_sent` (`backworks capture`)."""
        if direct or self.unmatched_policy(reverse_mode) != "passthrough":
            return False
        return not reverse_mode or self.blueprint.settings.server.passthrough_path == "as_sent"

    @staticmethod
    def _handles(result: Match | MethodNotAllowed | None, reverse_mode: bool, direct: bool) -> bool:
        """A router result the blueprint answers itself (Backworks' own pages: on its own address only)."""
        if isinstance(result, Match):
            return not result.route.payload.internal or reverse_mode or direct
        return result is not None

    def _preflight(self, request: http.Request, path: str, host: str) -> tuple[Match, str] | None:
        """The route of a CORS preflight, when a middleware that answers preflights applies to it.

        The endpoint is the one of the method the preflight asks about (its OPTIONS would
        otherwise be a 405, or another endpoint's), and the middlewares are chosen for that
        method. None: no such middleware applies, and the OPTIONS request is routed as before.
        """
        if not self.middlewares:
            return None
        requested = request.headers["access-control-request-method"].strip().upper()
        target = self.router.match(requested, path, host)
        if not isinstance(target, Match):
            return None
        if self.pipeline(target.route.payload, requested, path).preflight.request:
            return target, requested
        return None

    @staticmethod
    def _error(flow: http.HTTPFlow, status: int, message: str, headers: dict[str, str] | None = None, *, state: FlowState | None = None) -> http.Response:
        if state is None:
            state = flow_state(flow)
        request_id = request_id_for(flow, state)
        _record(flow, state, request_id).error = message
        return json_error(status, message, request_id, headers)

    async def handle(
        self, flow: http.HTTPFlow, *, reverse_mode: bool, direct: bool, relay: StreamRelay | None = None, state: FlowState | None = None
    ) -> None:
        """Answer the flow from the blueprint, or leave it alone to pass through.

        Without a relay, a response too large to hold is held anyway (unit tests, tools).
        """
        routed = self.route(flow, reverse_mode=reverse_mode, direct=direct, state=state)
        if routed is None:
            return
        if isinstance(routed, http.Response):
            flow.response = routed
            return
        ctx = routed
        if ctx.endpoint.guard is not None:
            refusal = ctx.endpoint.guard.check_held(flow.request)
            if refusal is not None:
                flow.response = await self.refuse(ctx, refusal)
                _comment(flow, ctx)
                return
        ctx.buffer_limit = relay.buffer_limit if relay is not None else None
        answer = await self.answer(ctx)
        if isinstance(answer, Forward):
            point_at(flow.request, answer.url, answer.headers)
            ctx.notes["forwarded"] = "mitmproxy"
        elif isinstance(answer, StreamedResponse):
            if relay is None:
                answer.head.content = b"".join([chunk async for chunk in answer.body])
                flow.response = answer.head
            else:
                ctx.notes["streamed"] = "response"
                await relay.start()
                streamed = answer
                point_at_relay(flow, relay, lambda _: _ready(relay_answer(flow, streamed)), on_expire=answer.close)
        else:
            flow.response = answer
        _comment(flow, ctx)

    async def handle_streaming(self, flow: http.HTTPFlow, *, reverse_mode: bool, direct: bool, relay: StreamRelay) -> bool:
        """`requestheaders`, for a request body too large to hold (or of unknown length).

        The flow is pointed at the relay and streamed into it; the relay's job runs the
        endpoint with the body as it arrives. Handlers without `accepts_body_stream` get the
        body read whole first, as mitmproxy would have. False: the flow passes through.
        """
        routed = self.route(flow, reverse_mode=reverse_mode, direct=direct)
        if routed is None:
            return False
        refused = False
        if isinstance(routed, RequestContext) and routed.endpoint.guard is not None:
            refusal = routed.endpoint.guard.check_head(flow.request)
            if refusal is not None:  # the body is read into the relay and dropped: never held, never sent on
                refused_ctx, routed, refused = routed, await self.refuse(routed, refusal), True
                _comment(flow, refused_ctx)

        async def job(web_request: web.BaseRequest) -> RelayAnswer:
            relayed: Relayed = flow_state(flow).relayed
            flow.request.url = relayed.url  # the handler sees the client's request, not the relay's
            if isinstance(routed, http.Response):
                await _drain(web_request)  # a 404/405 needs none of the body
                return relay_answer(flow, routed)
            ctx = routed
            ctx.buffer_limit = relay.buffer_limit
            guard = ctx.endpoint.guard
            max_body = guard.max_body if guard is not None else None
            # Held whole: to validate it, or when the limit is within what Backworks holds anyway
            # (so an upstream never sees the start of a body that turns out too large).
            validating = guard is not None and guard.validator is not None
            # Held whole, too, when a transform rewrites the body: streamed, it would reach the
            # upstream untransformed (fail closed), held to the decoded limit (backworks_core.bodies).
            transforming = self._transforms_body(ctx)
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
                        answer = await self.refuse(ctx, too_large(cap) if max_body is not None or not validating else Refusal(
                            413, f"a request body validated against a schema is held whole: at most {cap} bytes (backworks_buffer_limit)", "max_body_size"
                        ))
                    else:
                        flow.request.raw_content = body  # as received: the relay does not undo Content-Encoding
                        refusal = guard.check_schema(flow.request) if validating and guard is not None else None
                        answer = await self.refuse(ctx, refusal) if refusal is not None else None
                if answer is None:
                    answer = await self.answer(ctx)
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
                answer = await self.refuse(ctx, too_large(max_body))
            if isinstance(answer, StreamedResponse):
                ctx.notes["streamed"] = "both" if "streamed" in ctx.notes else "response"
            _comment(flow, ctx)
            return relay_answer(flow, answer)

        await relay.start()
        point_at_relay(flow, relay, job)
        if refused:  # the relay needs only the framing; the client's headers come back after (restore_relayed)
            keep = (b"host", b"content-length", b"transfer-encoding")
            flow.request.headers = http.Headers([(k, v) for k, v in flow.request.headers.fields if k.lower() in keep])
        flow.request.stream = True
        return True

    def _transforms_body(self, ctx: RequestContext) -> bool:
        """Whether a request transform of this endpoint (the proxy's chain, its own, a transform
        middleware's) has body operations."""
        endpoint = ctx.endpoint
        if getattr(endpoint.handler, "reshapes_request", False):  # once per streamed request: not the hot path
            return True
        if endpoint.request_transform is not None and endpoint.request_transform.touches_body:
            return True
        return any(m.transforms_request_body for m in self.pipeline(endpoint, ctx.method or ctx.request.method, _path_of(ctx)).request)

    def may_refuse_head(self, request: http.Request) -> bool:
        """Cheap, for every request's `requestheaders`: a body whose head could break some endpoint's limit."""
        length = declared_length(request)
        if length == 0 or (length is None and not fast_headers.has(request.headers, "transfer-encoding")):
            return False  # no body to keep from being read: the `request` hook refuses it
        if self.body_floor is not None and length is not None and length > self.body_floor:
            return True
        return self.header_floor is not None and header_size(request) > self.header_floor

    async def refuse_head(self, flow: http.HTTPFlow, *, reverse_mode: bool, direct: bool, relay: StreamRelay) -> bool:
        """`requestheaders`: refuse (413/431) a request whose head breaks its endpoint's limits.

        Its body is then streamed into the relay and dropped, never held nor sent upstream.
        False: within the limits (or no endpoint), nothing done.
        """
        request = flow.request
        try:
            path = canonical_path(request.path.partition("?")[0])  # routed as `route` will route it
        except PathRefused:  # `route` answers 400 (the body dropped in the relay), or lets it pass
            return await self.handle_streaming(flow, reverse_mode=reverse_mode, direct=direct, relay=relay)
        result = self.router.match(request.method, path, request.pretty_host if self.uses_hosts else "")
        guard = result.route.payload.guard if isinstance(result, Match) else None
        if guard is None or guard.check_head(request) is None:
            return False
        return await self.handle_streaming(flow, reverse_mode=reverse_mode, direct=direct, relay=relay)

    async def refuse(self, ctx: RequestContext, refusal: Refusal) -> http.Response:
        """A request-limit refusal (413/431/422/415/400), made before any middleware runs; with the
        CORS headers of the endpoint's cors middlewares all the same, so that a page on another
        origin can read why (as Kong's cors plugin decorates other plugins' refusals)."""
        response = refusal.response(ctx)
        chain = self.pipeline(ctx.endpoint, ctx.method or ctx.request.method, _path_of(ctx)).preflight.request
        for middleware in reversed(chain):  # the first in blueprint order decides, as in `answer`
            try:
                await middleware.instance.on_response(ctx, response)
            except Exception:  # the refusal stands without CORS headers: nothing goes through
                logger.exception("[%s] middleware %r failed on a refusal", ctx.request_id, middleware.name)
        return response

    async def answer(self, ctx: RequestContext) -> Answer:
        """The request phase of the endpoint's pipeline, then the handler, then the response
        phase of the middlewares that ran, in reverse."""
        preflight: str | None = ctx.state.get(PREFLIGHT)
        pipeline = self.pipeline(ctx.endpoint, preflight or ctx.method or ctx.request.method, _path_of(ctx))
        if preflight is not None:  # only the middlewares that answer preflights (cors) see one
            pipeline = pipeline.preflight
        response: Answer | None = None
        ran = -1  # the position of the last middleware whose response phase is due
        for middleware in pipeline.request:
            try:
                early = await middleware.instance.on_request(ctx)
            except BodyError as exc:  # a body it would read is over the limit, undecodable or too deep
                ctx.notes["answered_by"] = middleware.name
                response = body_refusal(exc).response(ctx)
                break
            except Exception:
                # Fail closed: a middleware that breaks must deny, never let the request through.
                logger.exception("[%s] middleware %r failed; request denied", ctx.request_id, middleware.name)
                ctx.notes["denied_by"] = middleware.name
                return ctx.error(500, f"middleware {middleware.name!r} failed; the request was denied")
            ran += 1
            if early is not None:
                ctx.notes["answered_by"] = middleware.name
                response = early
                break
        if response is None:
            if preflight is not None:  # never the handler's nor the upstream's
                response = ctx.error(403, "CORS preflight not answered")
            else:
                response = await call_handler(ctx)
        if isinstance(response, Forward):
            return response  # mitmproxy relays the upstream's answer; there is no response yet
        if not pipeline.response:
            return response
        head = response.head if isinstance(response, StreamedResponse) else response
        for position, middleware in pipeline.response:
            if position > ran:
                continue
            try:
                await middleware.instance.on_response(ctx, head)
            except Exception:
                logger.exception("[%s] middleware %r failed on the response", ctx.request_id, middleware.name)
                if isinstance(response, StreamedResponse):
                    response.close()
                return ctx.error(500, f"middleware {middleware.name!r} failed on the response")
        return response


def _path_of(ctx: RequestContext) -> str:
    """The request's canonical path, as routed (a context made without `route`: from the request)."""
    return ctx.path if ctx.path is not None else ctx.request.path.split("?", 1)[0]


def _record(flow: http.HTTPFlow, state: FlowState, request_id: str) -> RequestRecord:
    record = state.record
    if not isinstance(record, RequestRecord):
        record = state.record = RequestRecord(request_id=request_id, method=method_label(flow.request.method))
    return record


async def call_handler(ctx: RequestContext) -> Answer:
    """The handler, inside the endpoint's own transforms when it does not apply them itself."""
    endpoint = ctx.endpoint
    if endpoint.request_transform is not None or endpoint.response_transform is not None:
        ctx.notes["transforms"] = "+".join(
            side for side, t in (("request", endpoint.request_transform), ("response", endpoint.response_transform)) if t is not None
        )
    try:
        if endpoint.request_transform is not None:
            try:
                endpoint.request_transform.apply_request(ctx.flow.request, template_context(ctx), body_limit=decoded_limit(endpoint.guard))
            except ValueError as exc:  # a value taken from the request would carry CR or LF
                return ctx.error(400, f"request transform refused: {exc}")
        response = await endpoint.handler(ctx)
    except BodyError as exc:  # the request body, read by a transform or the handler (backworks_core.bodies)
        return body_refusal(exc).response(ctx)
    except Exception:
        logger.exception("[%s] handler for %s failed", ctx.request_id, endpoint.label)
        return ctx.error(500, "the handler failed; see the gateway log for this request id")
    if endpoint.response_transform is not None and not isinstance(response, Forward):
        head = response.head if isinstance(response, StreamedResponse) else response
        try:
            endpoint.response_transform.apply_response(head, template_context(ctx))
        except ValueError as exc:
            if isinstance(response, StreamedResponse):
                response.close()
            return ctx.error(502, f"response transform refused: {exc}")
    return response


def _join_comment(existing: str, addition: str) -> str:
    return f"{existing}\n{addition}" if existing else addition


def _comment(flow: http.HTTPFlow, ctx: RequestContext) -> None:
    flow.comment = _join_comment(flow.comment, "backworks: " + " ".join(f"{k}={v}" for k, v in ctx.notes.items()))


def point_at(request: http.Request, url: str, headers: list[tuple[str, str]]) -> None:
    request.url = url
    request.headers = http.Headers([(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers])


RELAY_CHUNK = 64 * 1024


@dataclass
class Relayed:
    """What the core addon's `responseheaders` hook puts back on a flow answered through the relay."""

    url: str
    headers: http.Headers
    head: http.Response | None = None
    streamed: bool = False
    restored: bool = False


def point_at_relay(flow: http.HTTPFlow, relay: StreamRelay, job: RelayJob, on_expire: Callable[[], None] | None = None) -> None:
    """Send the flow to the relay, where `job` answers it; mitmweb gets the client's request back."""
    flow_state(flow).relayed = Relayed(flow.request.url, flow.request.headers.copy())
    flow.request.url = relay.url(relay.register(job, on_expire))


def relay_answer(flow: http.HTTPFlow, answer: http.Response | StreamedResponse) -> RelayAnswer:
    relayed: Relayed = flow_state(flow).relayed
    if isinstance(answer, StreamedResponse):
        relayed.head, relayed.streamed = answer.head, True
        return RelayAnswer(answer.head.status_code, answer.body)
    relayed.head = answer
    return RelayAnswer(answer.status_code, answer.raw_content or b"")


def restore_relayed(flow: http.HTTPFlow) -> None:
    """`responseheaders` of a relayed flow: the answer's own head, and the client's request."""
    state = peek_state(flow)
    relayed: Relayed | None = state.relayed if state is not None else None
    if relayed is None or relayed.restored or flow.response is None:
        return
    relayed.restored = True  # the marker stays: the `request` hook of a streamed request comes later
    flow.request.url = relayed.url
    flow.request.headers = relayed.headers
    if relayed.head is None:  # the relay did not know the token (expired): its 404 stands
        return
    response = flow.response
    response.status_code = relayed.head.status_code
    response.reason = relayed.head.reason
    response.headers = relayed.head.headers.copy()
    if relayed.streamed:
        response.stream = True
        http1 = flow.request.http_version.startswith("HTTP/1")
        if http1 and "content-length" not in response.headers and flow.request.method != "HEAD":
            response.headers["transfer-encoding"] = "chunked"


async def _ready(answer: RelayAnswer) -> RelayAnswer:
    return answer


async def _drain(request: web.BaseRequest) -> None:
    async for _ in request.content.iter_chunked(RELAY_CHUNK):
        pass


BODY_TOO_LARGE = "limits.body_too_large"  # ctx.state: a streamed request body passed max_body_size


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


PageProvider = Callable[[LoadedBlueprint], list[InternalEndpoint]]


def compile_blueprint(
    path: str | os.PathLike[str],
    registry: PluginRegistry,
    plugins: Mapping[str, Plugin],
    env: Mapping[str, str] | None = None,
    pages: Sequence[PageProvider] = (),
) -> Gateway:
    """Load, validate and compile; raises BlueprintError with every error of both steps at once.

    `pages` add Backworks' own pages (the status page) besides the plugins' ones (metrics).
    """
    blueprint, errors = collect_blueprint(path, registry, env)
    if blueprint is not None:
        try:
            gateway = build_gateway(blueprint, plugins, pages)
        except BlueprintError as exc:
            errors = errors + exc.diagnostics
        else:
            if not errors:
                return gateway
    raise BlueprintError(errors)


def build_gateway(blueprint: LoadedBlueprint, plugins: Mapping[str, Plugin], pages: Sequence[PageProvider] = ()) -> Gateway:
    """Compile handlers and middlewares; every failure is collected as a located error."""
    errors: list[Diagnostic] = []
    middlewares: list[MiddlewarePlan] = []
    for spec in blueprint.middlewares:
        if spec.plugin in blueprint.failed_plugins:
            continue  # its plugin's config is already reported as wrong
        loc = ("middlewares", spec.index)
        try:
            instance = plugins[spec.plugin].build_middleware(spec, blueprint.plugin_configs[spec.plugin])
        except BuildError as exc:
            errors.append(blueprint.diagnostic(loc + ("config",) + exc.loc, str(exc)))
            continue
        methods = frozenset(spec.config.methods) if spec.config.methods is not None else None
        path = PathGlob(spec.config.path) if spec.config.path is not None else None
        middlewares.append(MiddlewarePlan(spec, path, methods, instance))

    endpoints: list[EndpointPlan] = []
    for endpoint_spec in blueprint.endpoints:
        if endpoint_spec.plugin in blueprint.failed_plugins:
            continue
        try:
            parse_template(endpoint_spec.settings.path)
        except ValueError:
            continue  # the loader reported the path; routing it would raise here instead
        loc = ("endpoints", endpoint_spec.index)
        try:
            handler = _build_handler(endpoint_spec, blueprint, plugins)
        except BuildError as exc:
            errors.append(blueprint.diagnostic(loc + exc.loc, str(exc)))
            continue
        request_transform = response_transform = None
        if endpoint_spec.transform is not None and not getattr(handler, "applies_endpoint_transform", False):
            request_transform = CompiledTransform(endpoint_spec.transform.request) if endpoint_spec.transform.request else None
            response_transform = CompiledTransform(endpoint_spec.transform.response) if endpoint_spec.transform.response else None
        limits, validate = endpoint_spec.sections.get("limits"), endpoint_spec.sections.get("validate")
        assert limits is None or isinstance(limits, LimitsConfig)
        assert validate is None or isinstance(validate, ValidateConfig)
        guard = RequestGuard.build(blueprint.settings.server, limits, validate)
        endpoints.append(EndpointPlan(endpoint_spec, handler, frozenset(endpoint_spec.settings.middleware), request_transform, response_transform, guard=guard))
    internal = [page for name, plugin in plugins.items() for page in plugin.internal_endpoints(blueprint.plugin_configs.get(name), blueprint)]
    internal += [page for provider in pages for page in provider(blueprint)]
    # The pages live on the admin listener; on the API's listener only with server.admin.expose_on_api.
    on_api = list(internal) if blueprint.settings.server.admin.expose_on_api else []
    seen: dict[str, InternalEndpoint] = {}
    for page in internal:
        clash = _same_route(page.path, endpoints)
        if clash is not None and page in on_api:
            on_api.remove(page)  # the API's listener answers with the endpoint
            if clash.spec.handler != page.handler_name:  # not the blueprint's own `handler: metrics`
                key = ".".join(str(part) for part in page.loc)
                errors.append(
                    blueprint.diagnostic(
                        page.loc,
                        f"{page.path} ({page.description}) is also the path of endpoints[{clash.spec.index}] ({clash.label}); "
                        f"set {key} to another path, or move the endpoint",
                    )
                )
        if page.path in seen:
            other = ".".join(str(part) for part in seen[page.path].loc)
            errors.append(blueprint.diagnostic(page.loc, f"{page.path} is also the path of {other} ({seen[page.path].description}); choose another path for one of them"))
        seen.setdefault(page.path, page)
    if errors:
        raise BlueprintError(errors)
    # `state: collections`: the mock endpoints' shared CRUD state (backworks_core.handlers.mock_state).
    members = [StateMember(e.spec.index, e.spec.settings.path, e.spec.methods, e.spec.settings.host, e.handler) for e in endpoints if isinstance(e.handler, MockHandler)]
    state_warnings = [blueprint.diagnostic(loc, message, severity="warning") for loc, message in link_collections(members)]
    warnings = sorted([*blueprint.warnings, *admin_diagnostics(blueprint, endpoints, middlewares, on_api), *state_warnings])
    endpoints += _internal_plans(on_api)
    router = Router([Route(e.template, e.spec.methods, e.spec.settings.host, e) for e in endpoints])
    protected = frozenset(
        header for name, plugin in plugins.items() if name in blueprint.plugin_configs for header in plugin.identity_headers(blueprint.plugin_configs[name])
    )
    return Gateway(blueprint, router, endpoints, middlewares, warnings, admin_pages=internal, protected_headers=protected)


def _same_route(path: str, endpoints: Sequence[EndpointPlan]) -> EndpointPlan | None:
    """A blueprint endpoint that answers GET on exactly this path (no host filter)."""
    shape = template_shape(parse_template(path))
    for endpoint in endpoints:
        methods = endpoint.spec.methods
        if endpoint.spec.settings.host is None and ({"GET", "ANY"} & methods) and template_shape(parse_template(endpoint.template)) == shape:
            return endpoint
    return None


def _internal_plans(pages: Sequence[InternalEndpoint]) -> list[EndpointPlan]:
    plans = []
    for page in pages:
        settings = EndpointSettings(path=page.path, method=["GET", "HEAD"], handler=page.handler_name, description=page.description)
        spec = EndpointSpec(index=-1, settings=settings, methods=frozenset({"GET", "HEAD"}), handler=page.handler_name, plugin=None, sections={})
        plans.append(EndpointPlan(spec, PageHandler(page.page), frozenset(), internal=True))
    return plans


def _build_handler(spec: EndpointSpec, blueprint: LoadedBlueprint, plugins: Mapping[str, Plugin]) -> Handler:
    if spec.handler == "static":
        config = spec.sections["static"]
        assert isinstance(config, StaticConfig)
        return StaticHandler(config)
    if spec.handler == "mock":
        config = spec.sections["mock"]
        assert isinstance(config, MockConfig)
        problem = check_path_params(config, spec.settings.path)
        if problem is not None:
            raise BuildError(problem[1], problem[0])
        return MockHandler(config, blueprint.settings.server.mock)
    if spec.handler == PYTHON_HANDLER:
        config = spec.sections["python"]
        assert isinstance(config, PythonConfig)
        return PythonHandler(spec.python_function, config, spec.label)
    assert spec.plugin is not None
    plugin = plugins[spec.plugin]
    return plugin.build_handler(spec.handler, spec, blueprint.plugin_configs[spec.plugin])
