"""A compiled blueprint: the router, handlers and middlewares one request goes through.

A Gateway is immutable once built. The core addon swaps a whole new Gateway in on reload;
a request keeps the Gateway it started with, so nothing changes under it mid-flight.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mitmproxy import http

from backworks_core.context import Forward, Handler, Middleware, RequestContext, json_error, request_id_for
from backworks_core.diagnostics import BlueprintError, Diagnostic
from backworks_core.handlers.python import PythonConfig, PythonHandler
from backworks_core.handlers.static import StaticConfig, StaticHandler
from backworks_core.loader import PYTHON_HANDLER, EndpointSpec, LoadedBlueprint, MiddlewareSpec, collect_blueprint
from backworks_core.plugins import Plugin, PluginRegistry
from backworks_core.router import Match, MethodNotAllowed, Route, Router, normalize_path

logger = logging.getLogger(__name__)

Unmatched = Literal["not_found", "passthrough"]


class BuildError(ValueError):
    """Raised by a plugin while compiling; `loc` is relative to the endpoint or middleware."""

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.loc = loc


def glob_to_regex(glob: str) -> re.Pattern[str]:
    """Middleware path globs: `*` matches within and across segments; everything else is literal."""
    return re.compile("^" + ".*".join(re.escape(part) for part in glob.split("*")) + "$")


@dataclass(frozen=True)
class MiddlewarePlan:
    spec: MiddlewareSpec
    path: re.Pattern[str] | None
    methods: frozenset[str] | None
    instance: Middleware

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def has_filter(self) -> bool:
        return self.path is not None or self.methods is not None

    def filter_matches(self, method: str, path: str | None) -> bool:
        """The middleware's own filter; a middleware without one matches nothing by it.

        `path` is the router's normalised form (decoded, no trailing slash), and HEAD counts as
        GET, as it does for routing: a filter must never be weaker than the route it guards.
        """
        if not self.has_filter:
            return False
        if self.methods is not None and not ({method, "ANY"} & self.methods) and not (method == "HEAD" and "GET" in self.methods):
            return False
        return self.path is None or (path is not None and bool(self.path.match(path)))


@dataclass(frozen=True)
class EndpointPlan:
    spec: EndpointSpec
    handler: Handler
    referenced: frozenset[str]  # middleware names the endpoint lists

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def template(self) -> str:
        return self.spec.settings.path


@dataclass
class Gateway:
    blueprint: LoadedBlueprint
    router: Router
    endpoints: list[EndpointPlan]
    middlewares: list[MiddlewarePlan]
    warnings: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.uses_hosts = any(e.spec.settings.host for e in self.endpoints)

    def unmatched_policy(self, reverse_mode: bool) -> Unmatched:
        configured = self.blueprint.settings.server.unmatched
        if configured is not None:
            return configured
        return "not_found" if reverse_mode else "passthrough"

    def middlewares_for(self, endpoint: EndpointPlan, method: str, path: str) -> list[MiddlewarePlan]:
        """The union rule: listed by the endpoint, or selected by the middleware's own filter."""
        if not self.middlewares:
            return []
        normalized = normalize_path(path)
        return [
            m for m in self.middlewares if m.name in endpoint.referenced or m.filter_matches(method, normalized)
        ]

    async def handle(self, flow: http.HTTPFlow, *, reverse_mode: bool, direct: bool) -> None:
        """Answer the flow from the blueprint, or leave it alone to pass through."""
        request = flow.request
        path = request.path.split("?", 1)[0]
        # pretty_host is costly per request; only host globs need it.
        result = self.router.match(request.method, path, request.pretty_host if self.uses_hosts else "")
        if result is None:
            if not direct and self.unmatched_policy(reverse_mode) == "passthrough":
                flow.comment = _join_comment(flow.comment, "backworks: no endpoint, passed through")
                return
            request_id = request_id_for(flow)
            flow.response = json_error(404, f"no endpoint matches {request.method} {path}", request_id)
            flow.comment = _join_comment(flow.comment, "backworks: no endpoint → 404")
            return
        if isinstance(result, MethodNotAllowed):
            request_id = request_id_for(flow)
            allow = ", ".join(result.allow)
            flow.response = json_error(405, f"method {request.method} is not allowed here (allowed: {allow})", request_id, {"Allow": allow})
            flow.comment = _join_comment(flow.comment, "backworks: method not allowed → 405")
            return
        assert isinstance(result, Match)
        endpoint: EndpointPlan = result.route.payload
        ctx = RequestContext(flow=flow, endpoint=endpoint, params=result.params, request_id=request_id_for(flow))
        ctx.notes["endpoint"] = f'"{endpoint.label}"'
        ctx.notes["handler"] = endpoint.spec.handler
        answer = await self._run(ctx, path)
        if isinstance(answer, Forward):
            request.url = answer.url
            request.headers = http.Headers([(n.encode("latin-1"), v.encode("latin-1")) for n, v in answer.headers])
            ctx.notes["forwarded"] = "mitmproxy"
        else:
            flow.response = answer
        flow.comment = _join_comment(flow.comment, "backworks: " + " ".join(f"{k}={v}" for k, v in ctx.notes.items()))

    async def _run(self, ctx: RequestContext, path: str) -> http.Response | Forward:
        method = ctx.request.method
        applied: list[MiddlewarePlan] = []
        for middleware in self.middlewares_for(ctx.endpoint, method, path):
            try:
                early = await middleware.instance.on_request(ctx)
            except Exception:
                # Fail closed: a middleware that breaks must deny, never let the request through.
                logger.exception("[%s] middleware %r failed; request denied", ctx.request_id, middleware.name)
                ctx.notes["denied_by"] = middleware.name
                return ctx.error(500, f"middleware {middleware.name!r} failed; the request was denied")
            applied.append(middleware)
            if early is not None:
                ctx.notes["answered_by"] = middleware.name
                response = early
                break
        else:
            try:
                response = await ctx.endpoint.handler(ctx)
            except Exception:
                logger.exception("[%s] handler for %s failed", ctx.request_id, ctx.endpoint.label)
                response = ctx.error(500, "the handler failed; see the gateway log for this request id")
        if isinstance(response, Forward):
            return response  # mitmproxy relays the upstream's answer; there is no response yet
        for middleware in reversed(applied):
            try:
                await middleware.instance.on_response(ctx, response)
            except Exception:
                logger.exception("[%s] middleware %r failed on the response", ctx.request_id, middleware.name)
                return ctx.error(500, f"middleware {middleware.name!r} failed on the response")
        return response


def _join_comment(existing: str, addition: str) -> str:
    return f"{existing}\n{addition}" if existing else addition


def compile_blueprint(
    path: str | os.PathLike[str],
    registry: PluginRegistry,
    plugins: Mapping[str, Plugin],
    env: Mapping[str, str] | None = None,
) -> Gateway:
    """Load, validate and compile; raises BlueprintError with every error of both steps at once."""
    blueprint, errors = collect_blueprint(path, registry, env)
    if blueprint is not None:
        try:
            gateway = build_gateway(blueprint, plugins)
        except BlueprintError as exc:
            errors = errors + exc.diagnostics
        else:
            if not errors:
                return gateway
    raise BlueprintError(errors)


def build_gateway(blueprint: LoadedBlueprint, plugins: Mapping[str, Plugin]) -> Gateway:
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
        path = glob_to_regex(spec.config.path) if spec.config.path is not None else None
        middlewares.append(MiddlewarePlan(spec, path, methods, instance))

    endpoints: list[EndpointPlan] = []
    for spec in blueprint.endpoints:
        if spec.plugin in blueprint.failed_plugins:
            continue
        loc = ("endpoints", spec.index)
        try:
            handler = _build_handler(spec, blueprint, plugins)
        except BuildError as exc:
            errors.append(blueprint.diagnostic(loc + exc.loc, str(exc)))
            continue
        endpoints.append(EndpointPlan(spec, handler, frozenset(spec.settings.middleware)))
    if errors:
        raise BlueprintError(errors)
    router = Router([Route(e.template, e.spec.methods, e.spec.settings.host, e) for e in endpoints])
    return Gateway(blueprint, router, endpoints, middlewares, list(blueprint.warnings))


def _build_handler(spec: EndpointSpec, blueprint: LoadedBlueprint, plugins: Mapping[str, Plugin]) -> Handler:
    if spec.handler == "static":
        config = spec.sections["static"]
        assert isinstance(config, StaticConfig)
        return StaticHandler(config)
    if spec.handler == PYTHON_HANDLER:
        config = spec.sections["python"]
        assert isinstance(config, PythonConfig)
        return PythonHandler(spec.python_function, config, spec.label)
    assert spec.plugin is not None
    plugin = plugins[spec.plugin]
    return plugin.build_handler(spec.handler, spec, blueprint.plugin_configs[spec.plugin])
