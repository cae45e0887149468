"""A compiled blueprint: the router, handlers and middlewares one request goes through.

A Gateway is immutable once built (backworks_core.compiler builds it from a blueprint). The
core addon swaps a whole new Gateway in on reload; a request keeps the Gateway it started with,
so nothing changes under it mid-flight. This is the request-time side: routing, the compiled
pipelines, the answer. A request whose body is too large to hold takes backworks_core.streaming.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from mitmproxy import http

from backworks_core import headers as fast_headers
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
from backworks_core.diagnostics import Diagnostic
from backworks_core.bodies import BodyError
from backworks_core.limits import Refusal, RequestGuard, body_refusal, decoded_limit
from backworks_core.loader import EndpointSpec, LoadedBlueprint, MiddlewareSpec
from backworks_core.plugins import BuildError as BuildError  # where plugins written before backworks_core.plugins had it import it from
from backworks_core.relay import StreamRelay, point_at_relay, ready, relay_answer
from backworks_core.pages import InternalEndpoint
from backworks_core.paths import PathGlob, PathRefused, canonical_path, filter_forms, lenient_path
from backworks_core.router import Match, MethodNotAllowed, Router
from backworks_core.flowstate import FlowState, flow_state
from backworks_core.forwarding import TrustBoundary
from backworks_core.telemetry import PASSTHROUGH, STANDARD_METHODS, RequestRecord, method_label
from backworks_core.transforms import CompiledTransform

logger = logging.getLogger(__name__)

Unmatched = Literal["not_found", "passthrough"]


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
                comment_notes(flow, ctx)
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
                point_at_relay(flow, relay, lambda _: ready(relay_answer(flow, streamed)), on_expire=answer.close)
        else:
            flow.response = answer
        comment_notes(flow, ctx)

    async def refuse(self, ctx: RequestContext, refusal: Refusal) -> http.Response:
        """A request-limit refusal (413/431/422/415/400), made before any middleware runs; with the
        CORS headers of the endpoint's cors middlewares all the same, so that a page on another
        origin can read why (as Kong's cors plugin decorates other plugins' refusals)."""
        response = refusal.response(ctx)
        chain = self.pipeline(ctx.endpoint, ctx.method or ctx.request.method, routed_path(ctx)).preflight.request
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
        pipeline = self.pipeline(ctx.endpoint, preflight or ctx.method or ctx.request.method, routed_path(ctx))
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


def routed_path(ctx: RequestContext) -> str:
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


def comment_notes(flow: http.HTTPFlow, ctx: RequestContext) -> None:
    flow.comment = _join_comment(flow.comment, "backworks: " + " ".join(f"{k}={v}" for k, v in ctx.notes.items()))


def point_at(request: http.Request, url: str, headers: list[tuple[str, str]]) -> None:
    request.url = url
    request.headers = http.Headers([(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers])
