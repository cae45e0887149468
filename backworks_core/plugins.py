"""The plugin interface and registry: built-in plugins plus the `backworks.plugins` entry points.

A plugin declares what it adds to the blueprint (its `Config` model, a middleware config model,
handler names, endpoint `config.<section>` models) so that the loader can validate a blueprint
without mitmproxy running. Built-in plugins are also mitmproxy addons: they keep long-lived state
(connection pools, health checks) and are told about each new blueprint after it is swapped in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from backworks_core.model import MiddlewareFilter, StrictModel

if TYPE_CHECKING:
    from backworks_core.context import Handler, Middleware
    from backworks_core.loader import EndpointSpec, LoadedBlueprint, MiddlewareSpec
    from backworks_core.pages import InternalEndpoint

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "backworks.plugins"
# Handler and endpoint-section names the core answers itself; no plugin can take them over.
RESERVED_NAMES = frozenset({"static", "python"})


class BuildError(ValueError):
    """Raised by a plugin while compiling; `loc` is relative to the endpoint or middleware."""

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.loc = loc


class NoConfig(StrictModel):
    """A plugin without settings still rejects unknown keys."""


@dataclass(frozen=True)
class Section:
    """An endpoint `config.<name>` block a plugin validates; `handler` limits it to one handler."""

    model: type[BaseModel]
    handler: str | None = None


class Plugin:
    """Base class of every Backworks plugin (built-in or third-party)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type[BaseModel]] = NoConfig
    # The model of `middlewares[].config` for this plugin; None: it offers no middleware.
    MiddlewareConfig: ClassVar[type[MiddlewareFilter] | None] = None
    # Handler names this plugin answers (`proxy`, `auth.login`, ...).
    handlers: ClassVar[tuple[str, ...]] = ()
    # Endpoint `config.<section>` blocks this plugin validates.
    sections: ClassVar[Mapping[str, Section]] = {}
    # Plugins that must be installed (and not disabled) for this one to work.
    requires: ClassVar[tuple[str, ...]] = ()
    # The core addon, set when the core takes the plugin on (None in tools such as `validate`).
    core: Any = None

    @classmethod
    def lint(cls, config: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
        """Warnings about a valid config (location inside `config`, message)."""
        return []

    @classmethod
    def lint_middleware(cls, config: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
        """Warnings about a valid `middlewares[].config` (location inside it, message)."""
        return []

    @classmethod
    def lint_section(cls, section: str, config: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
        """Warnings about a valid endpoint `config.<section>` block (location inside it, message)."""
        return []

    @classmethod
    def identity_headers(cls, config: BaseModel) -> Iterable[str]:
        """Request headers this plugin sets from what the gateway verified (auth's `forward_claims`).

        The gateway removes them (any case, `_` or `-`) from every client request the blueprint
        handles, before any middleware runs: an upstream only ever reads the gateway's value.
        """
        return ()

    def build_handler(self, handler: str, endpoint: EndpointSpec, config: BaseModel) -> Handler:
        """Compile one endpoint's handler; `config` is this plugin's (blueprint-level) config.

        The endpoint's own settings are in `endpoint.sections`. Raise BuildError with a
        location (relative to the endpoint) for settings that cannot work.
        """
        raise NotImplementedError(f"plugin {self.name!r} does not build handler {handler!r}")

    def build_middleware(self, middleware: MiddlewareSpec, config: BaseModel) -> Middleware:
        """Compile one middleware; `config` is this plugin's config, `middleware.config` its own
        (validated by MiddlewareConfig)."""
        raise NotImplementedError(f"plugin {self.name!r} does not build middleware")

    def apply_blueprint(self, config: BaseModel | None, blueprint: LoadedBlueprint) -> None:
        """Called after a blueprint went live; `config` is None when the plugin is not in use."""

    def internal_endpoints(self, config: BaseModel | None, blueprint: LoadedBlueprint) -> list[InternalEndpoint]:
        """Pages this plugin serves on the proxy listener (metrics), routed before a blueprint
        goes live; `config` is None when the plugin is not in use."""
        return []


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that could not be loaded: reported when a blueprint names it."""

    name: str
    reason: str


class PluginRegistry:
    """Plugins by name, with the handlers and endpoint sections they contribute."""

    def __init__(self, plugins: Iterable[type[Plugin]], broken: Iterable[BrokenPlugin] = ()) -> None:
        self.plugins: dict[str, type[Plugin]] = {}
        self.broken: dict[str, BrokenPlugin] = {b.name: b for b in broken}
        for plugin in plugins:
            if plugin.name in self.plugins:
                logger.warning(
                    "plugin %r from %s ignored: the name is taken by %s",
                    plugin.name,
                    plugin.__module__,
                    self.plugins[plugin.name].__module__,
                )
                continue
            self.plugins[plugin.name] = plugin
        self.handler_owner: dict[str, str] = {}
        self.sections: dict[str, tuple[str, Section]] = {}
        for plugin in self.plugins.values():
            for handler in plugin.handlers:
                if handler in RESERVED_NAMES:
                    logger.warning("handler %r of plugin %r ignored: the name is the core's", handler, plugin.name)
                    continue
                if handler in self.handler_owner:
                    logger.warning("handler %r of plugin %r ignored: plugin %r has it", handler, plugin.name, self.handler_owner[handler])
                    continue
                self.handler_owner[handler] = plugin.name
            for section_name, section in plugin.sections.items():
                if section_name in RESERVED_NAMES:
                    logger.warning("config section %r of plugin %r ignored: the name is the core's", section_name, plugin.name)
                    continue
                if section_name in self.sections:
                    logger.warning(
                        "config section %r of plugin %r ignored: plugin %r has it", section_name, plugin.name, self.sections[section_name][0]
                    )
                    continue
                self.sections[section_name] = (plugin.name, section)

    @classmethod
    def discover(cls, builtins: Iterable[type[Plugin]]) -> PluginRegistry:
        """Built-ins first (their names cannot be taken), then every installed entry point."""
        plugins: list[type[Plugin]] = list(builtins)
        broken: list[BrokenPlugin] = []
        for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):  # a stable winner on clashes
            try:
                loaded: Any = entry.load()
            except Exception as exc:  # a broken third-party package must not stop the gateway
                logger.warning("plugin %r (%s) failed to load: %s", entry.name, entry.value, exc)
                broken.append(BrokenPlugin(entry.name, f"{type(exc).__name__}: {exc}"))
                continue
            if not (isinstance(loaded, type) and issubclass(loaded, Plugin)):
                broken.append(BrokenPlugin(entry.name, f"{entry.value} is not a backworks Plugin subclass"))
                continue
            if getattr(loaded, "name", None) != entry.name:
                broken.append(
                    BrokenPlugin(entry.name, f"{entry.value} is named {getattr(loaded, 'name', None)!r}, not {entry.name!r}")
                )
                continue
            plugins.append(loaded)
        return cls(plugins, broken)

    def names(self) -> list[str]:
        return sorted(self.plugins)
