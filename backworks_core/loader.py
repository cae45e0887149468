"""Blueprint loading: YAML → located, fully validated settings, or every error at once.

The steps run in order, each collecting Diagnostics rather than stopping at the first:
the document itself, the top level, each plugin's own config, middlewares, endpoints and
their `config.<section>` blocks, handlers (imported here), and finally route conflicts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from backworks_core.diagnostics import BlueprintError, Diagnostic
from backworks_core.handlers.mock import MockConfig
from backworks_core.handlers.python import HandlerLoadError, PythonConfig, load_handler, parse_handler_ref
from backworks_core.handlers.static import StaticConfig
from backworks_core.limits import LimitsConfig, ValidateConfig
from backworks_core.model import (
    BlueprintSettings,
    EndpointSettings,
    MiddlewareFilter,
    MiddlewareSettings,
    PluginEntry,
    PluginListEntry,
)
from backworks_core.plugins import PluginRegistry, Section
from backworks_core.route_conflicts import check_routes
from backworks_core.router import Route, parse_template
from backworks_core.source import SourceDocument, load_file
from backworks_core.transforms import EndpointTransform
from backworks_core.validation import did_you_mean, validate_section

PYTHON_HANDLER = "python"
CORE_HANDLERS: Mapping[str, Section] = {"static": Section(StaticConfig, "static"), "mock": Section(MockConfig, "mock")}
CORE_SECTIONS: Mapping[str, Section] = {
    "static": Section(StaticConfig, "static"),
    "mock": Section(MockConfig, "mock"),
    "python": Section(PythonConfig, PYTHON_HANDLER),
    # Any handler: request limits and body validation, applied before middlewares (backworks_core.limits).
    "limits": Section(LimitsConfig),
    "validate": Section(ValidateConfig),
}
# Built-in plugins of the format that this release does not ship yet: named, not "unknown".
PLANNED_PLUGINS: frozenset[str] = frozenset()
PLANNED_HANDLERS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EndpointSpec:
    """An endpoint with its handler resolved and its config sections validated."""

    index: int
    settings: EndpointSettings
    methods: frozenset[str]
    handler: str  # "static", "python", or a plugin handler name such as "proxy"
    plugin: str | None  # the plugin that answers, for plugin handlers
    sections: dict[str, BaseModel]
    python_function: Any = None
    transform: EndpointTransform | None = None  # the endpoint-level `transform:`

    @property
    def label(self) -> str:
        methods = ",".join(sorted(self.methods))
        return f"{methods} {self.settings.path}"


@dataclass(frozen=True)
class MiddlewareSpec:
    index: int
    name: str
    plugin: str
    config: MiddlewareFilter


@dataclass
class LoadedBlueprint:
    path: Path
    document: SourceDocument
    settings: BlueprintSettings
    plugin_configs: dict[str, BaseModel]  # enabled plugins only
    plugin_locs: dict[str, tuple[str | int, ...]]  # where each plugin's `config` sits
    middlewares: list[MiddlewareSpec]
    endpoints: list[EndpointSpec]
    warnings: list[Diagnostic] = field(default_factory=list)
    files: set[Path] = field(default_factory=set)
    # Plugins whose config had errors: their handlers and middlewares are not compiled.
    failed_plugins: set[str] = field(default_factory=set)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def diagnostic(self, loc: tuple[str | int, ...], message: str, *, severity: str = "error") -> Diagnostic:
        return self.document.diagnostic(loc, message, severity=severity)  # type: ignore[arg-type]


def load_blueprint(
    path: str | os.PathLike[str], registry: PluginRegistry, env: Mapping[str, str] | None = None
) -> LoadedBlueprint:
    """Load and validate; raises BlueprintError carrying every located error."""
    blueprint, errors = collect_blueprint(path, registry, env)
    if errors or blueprint is None:
        raise BlueprintError(errors)
    return blueprint


def collect_blueprint(
    path: str | os.PathLike[str], registry: PluginRegistry, env: Mapping[str, str] | None = None
) -> tuple[LoadedBlueprint | None, list[Diagnostic]]:
    """What loads, and every error found; for callers that go on to find more (compiling)."""
    path = Path(path)
    try:
        document = load_file(path, env if env is not None else os.environ)
    except OSError as exc:
        return None, [Diagnostic(str(path), 0, 0, "", f"cannot read blueprint: {exc.strerror or exc}")]
    loader = _Loader(path, document, registry)
    return loader.collect(), loader.errors


class _Loader:
    def __init__(self, path: Path, document: SourceDocument, registry: PluginRegistry) -> None:
        self.path = path
        self.doc = document
        self.registry = registry
        self.context = {"base_dir": str(path.resolve().parent)}
        self.errors: list[Diagnostic] = [d for d in document.diagnostics if d.severity == "error"]
        self.failed_plugins: set[str] = set()
        self.warnings: list[Diagnostic] = [d for d in document.diagnostics if d.severity != "error"]

    def error(self, loc: tuple[str | int, ...], message: str, *, prefer_key: bool = False) -> None:
        self.errors.append(self.doc.diagnostic(loc, message, prefer_key=prefer_key))

    def warn(self, loc: tuple[str | int, ...], message: str) -> None:
        self.warnings.append(self.doc.diagnostic(loc, message, severity="warning"))

    def validate(self, model: type[BaseModel], data: Any, loc: tuple[str | int, ...]) -> BaseModel | None:
        value, diagnostics = validate_section(model, data, self.doc, loc, context=self.context)
        self.errors.extend(diagnostics)
        return value

    def run(self) -> LoadedBlueprint:
        blueprint = self.collect()
        if self.errors or blueprint is None:
            raise BlueprintError(self.errors)
        return blueprint

    def collect(self) -> LoadedBlueprint | None:
        """Everything that can be loaded, with every error found in `self.errors`.

        Source errors (an unset variable, a duplicate key) do not stop validation: the
        validator skips the values the source already reported, so all errors come out at once.
        """
        if self.doc.data is None and not self.errors:
            self.error((), "the blueprint is empty: it needs at least `name` and `endpoints`")
        if self.doc.data is None:
            return None
        if not isinstance(self.doc.data, dict):
            self.error((), f"expected a mapping at the top level, got {type(self.doc.data).__name__}")
            return None

        plugin_entries, middlewares_raw, endpoints_raw, settings = self.validate_top_level(self.doc.data)
        plugin_configs, plugin_locs = self.load_plugins(plugin_entries)
        middlewares = self.load_middlewares(middlewares_raw)
        endpoints, files = self.load_endpoints(endpoints_raw, middlewares, {m.name for _, m in middlewares_raw})
        self.activate_used_plugins(plugin_configs, plugin_locs, middlewares, endpoints)
        self.check_routes(endpoints_raw)
        self.check_unused_middlewares(middlewares, endpoints)
        if settings is None:
            if not endpoints:
                return None
            # The top level is wrong, but compiling the endpoints still finds their errors.
            settings = BlueprintSettings.model_construct(name="(invalid blueprint)", endpoints=[])
        return LoadedBlueprint(
            path=self.path,
            document=self.doc,
            settings=settings,
            plugin_configs=plugin_configs,
            plugin_locs=plugin_locs,
            middlewares=middlewares,
            endpoints=endpoints,
            warnings=sorted(self.warnings),
            files={self.path.resolve(), *files},
            failed_plugins=self.failed_plugins,
        )

    def validate_top_level(self, data: dict[str, Any]) -> tuple[
        list[tuple[str, bool, dict[str, Any], tuple[str | int, ...]]],
        list[tuple[int, MiddlewareSettings]],
        list[tuple[int, EndpointSettings]],
        BlueprintSettings | None,
    ]:
        """Validate list items one by one, so one bad endpoint does not hide the errors of the rest."""
        replaced = dict(data)
        plugins: list[tuple[str, bool, dict[str, Any], tuple[str | int, ...]]] = []
        raw_plugins = data.get("plugins")
        if isinstance(raw_plugins, dict):
            valid_map = {}
            for name, entry in raw_plugins.items():
                value = self.validate(PluginEntry, entry if entry is not None else {}, ("plugins", name))
                if isinstance(value, PluginEntry):
                    valid_map[name] = value
                    plugins.append((str(name), value.enabled, dict(value.config), ("plugins", name)))
            replaced["plugins"] = valid_map
        elif isinstance(raw_plugins, list):
            valid_list = []
            seen: dict[str, int] = {}
            for index, entry in enumerate(raw_plugins):
                value = self.validate(PluginListEntry, entry, ("plugins", index))
                if not isinstance(value, PluginListEntry):
                    continue
                valid_list.append(value)
                if value.type in seen:
                    self.error(("plugins", index, "type"), f"plugin {value.type!r} is listed twice (also at plugins[{seen[value.type]}])")
                    continue
                seen[value.type] = index
                plugins.append((value.type, value.enabled, dict(value.config), ("plugins", index)))
            replaced["plugins"] = valid_list

        def items(key: str, model: type[BaseModel]) -> list[tuple[int, Any]]:
            raw = data.get(key)
            if not isinstance(raw, list):
                return []
            valid = [(i, self.validate(model, item, (key, i))) for i, item in enumerate(raw)]
            kept = [(i, v) for i, v in valid if v is not None]
            replaced[key] = [v for _, v in kept]
            return kept

        middlewares = items("middlewares", MiddlewareSettings)
        endpoints = items("endpoints", EndpointSettings)
        had_endpoints = isinstance(data.get("endpoints"), list) and bool(data["endpoints"])
        settings, diagnostics = validate_section(BlueprintSettings, replaced, self.doc, (), context=self.context)
        for diagnostic in diagnostics:
            if had_endpoints and diagnostic.key_path == "endpoints" and not replaced.get("endpoints"):
                continue  # every endpoint was invalid, and each already has its own error
            self.errors.append(diagnostic)
        return plugins, middlewares, endpoints, settings if isinstance(settings, BlueprintSettings) else None

    # -- plugins ---------------------------------------------------------------------------

    def load_plugins(self, entries: list[tuple[str, bool, dict[str, Any], tuple[str | int, ...]]]) -> tuple[dict[str, BaseModel], dict[str, tuple]]:
        configs: dict[str, BaseModel] = {}
        locs: dict[str, tuple] = {}
        disabled: set[str] = set()
        for name, enabled, raw_config, loc in entries:
            if "enabled" in raw_config:  # `enabled` inside `config` means the same (auth-api example)
                inner = raw_config.pop("enabled")
                if not isinstance(inner, bool):
                    self.error(loc + ("config", "enabled"), f"expected true or false, got {inner!r}")
                    continue
                enabled = enabled and inner
            plugin = self.plugin_class(name, loc + (("type",) if isinstance(loc[-1], int) else ()))
            if plugin is None:
                continue
            if not enabled:
                disabled.add(name)
                continue
            config = self.validate(plugin.Config, raw_config, loc + ("config",))
            if config is None:
                self.failed_plugins.add(name)
            else:
                configs[name] = config
                locs[name] = loc + ("config",)
                for sub_loc, message in plugin.lint(config):
                    self.warn(loc + ("config",) + tuple(sub_loc), message)

        self.disabled_plugins = disabled
        return configs, locs

    def activate_used_plugins(
        self,
        configs: dict[str, BaseModel],
        locs: dict[str, tuple],
        middlewares: list[MiddlewareSpec],
        endpoints: list[EndpointSpec],
    ) -> None:
        """A plugin used by a handler or middleware is active even when `plugins` does not list it:
        it runs with its default config, and its requirements are checked like any other's."""
        uses: list[tuple[str, tuple[str | int, ...]]] = [(m.plugin, ("middlewares", m.index, "plugin")) for m in middlewares]
        uses += [(e.plugin, ("endpoints", e.index, "handler")) for e in endpoints if e.plugin is not None]
        for name, loc in uses:
            if name in configs or name in self.failed_plugins or name in self.disabled_plugins:
                continue
            config, diagnostics = validate_section(self.registry.plugins[name].Config, {}, self.doc, loc, context=self.context)
            if config is None:
                self.failed_plugins.add(name)
                self.error(loc, f"plugin {name!r} needs settings: add it under `plugins` with its `config`")
                continue
            configs[name] = config
            locs[name] = loc
        for name in list(configs):
            for required in self.registry.plugins[name].requires:
                if required not in self.registry.plugins:
                    self.error(locs[name], f"plugin {name!r} requires plugin {required!r}, which is not installed")
                elif required in self.disabled_plugins:
                    self.error(locs[name], f"plugin {name!r} requires plugin {required!r}, which this blueprint disables")

    def plugin_class(self, name: str, loc: tuple[str | int, ...]) -> Any:
        plugin = self.registry.plugins.get(name)
        if plugin is not None:
            return plugin
        if name in self.registry.broken:
            self.error(loc, f"plugin {name!r} is installed but failed to load: {self.registry.broken[name].reason}")
        elif name in PLANNED_PLUGINS:
            self.error(loc, f"plugin {name!r} is not available in this version of Backworks yet", prefer_key=True)
        else:
            hint = did_you_mean(name, self.registry.names())
            known = ", ".join(self.registry.names()) or "none"
            suggestion = f"; did you mean {hint!r}?" if hint else f" (installed plugins: {known})"
            self.error(loc, f"unknown plugin {name!r}{suggestion}", prefer_key=True)
        return None

    # -- middlewares -----------------------------------------------------------------------

    def load_middlewares(self, items: list[tuple[int, MiddlewareSettings]]) -> list[MiddlewareSpec]:
        specs: list[MiddlewareSpec] = []
        seen: dict[str, int] = {}
        for index, middleware in items:
            loc: tuple[str | int, ...] = ("middlewares", index)
            if middleware.name in seen:
                self.error(loc + ("name",), f"middleware name {middleware.name!r} is already used by middlewares[{seen[middleware.name]}]")
                continue
            seen[middleware.name] = index
            plugin = self.plugin_class(middleware.plugin, loc + ("plugin",))
            if plugin is None:
                continue
            if plugin.MiddlewareConfig is None:
                offering = sorted(p.name for p in self.registry.plugins.values() if p.MiddlewareConfig is not None)
                self.error(loc + ("plugin",), f"plugin {middleware.plugin!r} offers no middleware (plugins that do: {', '.join(offering) or 'none'})")
                continue
            if middleware.plugin in self.disabled_plugins:
                self.error(loc + ("plugin",), f"plugin {middleware.plugin!r} is disabled in `plugins`")
                continue
            config = self.validate(plugin.MiddlewareConfig, middleware.config, loc + ("config",))
            if config is not None:
                assert isinstance(config, MiddlewareFilter)
                specs.append(MiddlewareSpec(index, middleware.name, middleware.plugin, config))
                for sub_loc, message in plugin.lint_middleware(config):
                    self.warn(loc + ("config",) + tuple(sub_loc), message)
        return specs

    def check_unused_middlewares(self, middlewares: list[MiddlewareSpec], endpoints: list[EndpointSpec]) -> None:
        referenced = {name for endpoint in endpoints for name in endpoint.settings.middleware}
        for spec in middlewares:
            has_filter = spec.config.path is not None or spec.config.methods is not None
            if not has_filter and spec.name not in referenced:
                self.warn(
                    ("middlewares", spec.index, "name"),
                    f"middleware {spec.name!r} has no path/methods filter and no endpoint lists it: it applies to nothing",
                )

    # -- endpoints -------------------------------------------------------------------------

    def load_endpoints(
        self, items: list[tuple[int, EndpointSettings]], middlewares: list[MiddlewareSpec], declared: set[str]
    ) -> tuple[list[EndpointSpec], set[Path]]:
        known_middlewares = {m.name for m in middlewares} | declared
        endpoints: list[EndpointSpec] = []
        files: set[Path] = set()
        for index, endpoint in items:
            loc: tuple[str | int, ...] = ("endpoints", index)
            try:
                parse_template(endpoint.path)
            except ValueError as exc:
                self.error(loc + ("path",), str(exc))
            for position, name in enumerate(endpoint.middleware):
                if name not in known_middlewares:
                    hint = did_you_mean(name, known_middlewares)
                    self.error(
                        loc + ("middleware", position),
                        f"no middleware named {name!r}" + (f"; did you mean {hint!r}?" if hint else " is defined in `middlewares`"),
                    )
            spec = self.load_endpoint(index, endpoint, loc, files)
            if spec is not None:
                endpoints.append(spec)
        return endpoints, files

    def load_endpoint(self, index: int, endpoint: EndpointSettings, loc: tuple, files: set[Path]) -> EndpointSpec | None:
        resolved = self.resolve_handler(index, endpoint, loc, files)
        if resolved is None:
            return None
        kind, plugin_name, python_function = resolved
        sections = self.load_sections(endpoint, kind, loc)
        if kind == "static" and "static" not in sections and "static" not in endpoint.config:
            self.error(loc + ("config",), "handler 'static' needs `config.static` (status, headers, body, delay)")
            return None
        mock = sections.get("mock")
        if isinstance(mock, MockConfig) and mock.examples_file is not None:
            files.add(Path(mock.examples_file).resolve())  # edited: reloaded as the blueprint is
        if kind == "mock" and "mock" not in sections and "mock" not in endpoint.config:
            self.error(loc + ("config",), "handler 'mock' needs `config.mock` (examples, passthrough, replay_latency, schema)")
            return None
        if kind == PYTHON_HANDLER and "python" not in sections and "python" not in endpoint.config:
            sections["python"] = PythonConfig()
        transform: EndpointTransform | None = None
        if endpoint.transform is not None:
            transform = self.validate(EndpointTransform, endpoint.transform, loc + ("transform",))  # type: ignore[assignment]
            if transform is None:
                return None
        if any(name in endpoint.config and name not in sections for name in endpoint.config):
            return None
        return EndpointSpec(
            index=index,
            settings=endpoint,
            methods=endpoint.method_set,
            handler=kind,
            plugin=plugin_name,
            sections=sections,
            python_function=python_function,
            transform=transform,
        )

    def resolve_handler(self, index: int, endpoint: EndpointSettings, loc: tuple, files: set[Path]) -> tuple[str, str | None, Any] | None:
        """The endpoint's handler kind, the plugin that owns it (if any) and the loaded Python
        function (for a Python handler); None, with the error reported, when it cannot be served."""
        handler = endpoint.handler.strip()
        if handler in CORE_HANDLERS:
            return handler, None, None
        if handler in self.registry.handler_owner:
            plugin_name = self.registry.handler_owner[handler]
            if plugin_name in self.disabled_plugins:
                self.error(loc + ("handler",), f"handler {handler!r} belongs to plugin {plugin_name!r}, which is disabled in `plugins`")
                return None
            return handler, plugin_name, None
        if (ref := parse_handler_ref(endpoint.handler)) is not None:
            try:
                python_function, watched = load_handler(ref, self.path.resolve().parent, f"endpoints[{index}].handler")
            except HandlerLoadError as exc:
                self.error(loc + ("handler",), str(exc))
                return None
            if watched is not None:
                files.add(watched)
            return PYTHON_HANDLER, None, python_function
        if handler.endswith((".js", ".mjs", ".ts")):
            self.error(
                loc + ("handler",),
                f"{handler!r} is a JavaScript handler: Backworks runs Python handlers (handlers/x.py, "
                "handlers/x.py:function, package.module:function, or inline code defining `def handler(request)`)",
            )
        elif handler in PLANNED_HANDLERS:
            self.error(loc + ("handler",), f"handler {handler!r} is not available in this version of Backworks yet")
        else:
            builtin = sorted({*CORE_HANDLERS, *self.registry.handler_owner})
            hint = did_you_mean(handler, builtin)
            self.error(
                loc + ("handler",),
                f"unknown handler {handler!r}"
                + (f"; did you mean {hint!r}?" if hint else "")
                + f" (expected one of {', '.join(builtin)}, or a Python handler: handlers/x.py, "
                "handlers/x.py:function, package.module:function, or inline code defining `def handler(request)`)",
            )
        return None

    def load_sections(self, endpoint: EndpointSettings, kind: str, loc: tuple) -> dict[str, BaseModel]:
        """The endpoint's valid `config.<section>` objects; an unknown section, one meant for
        another handler or one that does not validate is reported and left out."""
        sections: dict[str, BaseModel] = {}
        # The core's own sections cannot be taken over by a plugin.
        all_sections = {**self.registry.sections, **{n: ("core", s) for n, s in CORE_SECTIONS.items()}}
        for section_name, raw in endpoint.config.items():
            section_loc = loc + ("config", section_name)
            owner = all_sections.get(section_name)
            if owner is None:
                hint = did_you_mean(str(section_name), all_sections)
                self.error(
                    section_loc,
                    f"unknown config section {section_name!r}"
                    + (f"; did you mean {hint!r}?" if hint else f" (expected one of {', '.join(sorted(all_sections))})"),
                    prefer_key=True,
                )
                continue
            _, section = owner
            if section.handler is not None and section.handler != kind:
                self.error(
                    section_loc,
                    f"config.{section_name} is for handler {section.handler!r}; this endpoint's handler is {endpoint.handler.strip()!r}",
                    prefer_key=True,
                )
                continue
            value = self.validate(section.model, raw if raw is not None else {}, section_loc)
            if value is not None:
                sections[section_name] = value
                section_plugin = self.registry.plugins.get(owner[0])
                if section_plugin is not None:
                    for sub_loc, message in section_plugin.lint_section(str(section_name), value):
                        self.warn(section_loc + tuple(sub_loc), message)
        return sections

    def check_routes(self, endpoints: list[tuple[int, EndpointSettings]]) -> None:
        """Over every endpoint with a valid path, even those whose handler or config failed."""
        valid: list[tuple[int, EndpointSettings]] = []
        for index, settings in endpoints:
            try:
                parse_template(settings.path)
            except ValueError:
                continue
            valid.append((index, settings))
        routes = [Route(s.path, s.method_set, s.host, i) for i, s in valid]
        names = [f"endpoints[{i}]" for i, _ in valid]
        for conflict in check_routes(routes, names):
            loc = ("endpoints", valid[conflict.second][0], "path")
            if conflict.severity == "error":
                self.error(loc, conflict.message)
            else:
                self.warn(loc, conflict.message)
