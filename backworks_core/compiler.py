"""Compiling a blueprint: load and validate it, then build the Gateway that serves it.

Every handler and middleware is built here once, at load (a plugin's `build_handler` or
`build_middleware`, raising BuildError for settings that cannot work), with the request
limits, the endpoint transforms and Backworks' own pages; every failure becomes a located
error of the blueprint, all of them reported at once. The result, backworks_core.gateway's
Gateway, is what each request then goes through.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from backworks_core.admin import admin_diagnostics
from backworks_core.context import Handler
from backworks_core.diagnostics import BlueprintError, Diagnostic
from backworks_core.gateway import EndpointPlan, Gateway, MiddlewarePlan
from backworks_core.handlers.mock import MockConfig, MockHandler, check_path_params
from backworks_core.handlers.mock_state import Member as StateMember, link_collections
from backworks_core.handlers.python import PythonConfig, PythonHandler
from backworks_core.handlers.static import StaticConfig, StaticHandler
from backworks_core.limits import LimitsConfig, RequestGuard, ValidateConfig
from backworks_core.loader import PYTHON_HANDLER, EndpointSpec, LoadedBlueprint, collect_blueprint
from backworks_core.model import EndpointSettings
from backworks_core.pages import InternalEndpoint, PageHandler
from backworks_core.paths import PathGlob
from backworks_core.plugins import BuildError, Plugin, PluginRegistry
from backworks_core.router import Route, Router, parse_template, template_shape
from backworks_core.transforms import CompiledTransform

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
