"""Shared fixtures: blueprint projects on disk, loading, compiling, and flows to send through.

Everything here builds real files in `tmp_path` (a blueprint and the handler files it names)
and runs the real loader, so the tests see the same located diagnostics a user would.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow, tutils

from addons import builtin_plugins
from backworks_core.diagnostics import BlueprintError, Diagnostic
from backworks_core.compiler import build_gateway
from backworks_core.gateway import Gateway
from backworks_core.loader import LoadedBlueprint, load_blueprint
from backworks_core.plugins import PluginRegistry

# --------------------------------------------------------------------------------------
# A project folder on disk


class Project:
    """A folder holding a blueprint and the files it names."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root

    def write(self, relpath: str, text: str) -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    def blueprint(self, text: str, name: str = "blueprint.yaml") -> Path:
        return self.write(name, text)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path / "project")


@pytest.fixture
def registry() -> PluginRegistry:
    """The built-in plugins only (no entry points), so the environment cannot change results."""
    return PluginRegistry(builtin_plugins())


@pytest.fixture
def load(registry: PluginRegistry) -> Callable[..., LoadedBlueprint]:
    def _load(path: Path, *, env: Mapping[str, str] | None = None, registry_: PluginRegistry | None = None) -> LoadedBlueprint:
        return load_blueprint(path, registry_ or registry, env={} if env is None else env)

    return _load


@pytest.fixture
def load_errors(registry: PluginRegistry) -> Callable[..., list[Diagnostic]]:
    """Load a blueprint that must fail; returns its diagnostics (all of them)."""

    def _errors(path: Path, *, env: Mapping[str, str] | None = None, registry_: PluginRegistry | None = None) -> list[Diagnostic]:
        with pytest.raises(BlueprintError) as info:
            load_blueprint(path, registry_ or registry, env={} if env is None else env)
        return info.value.diagnostics

    return _errors


@pytest.fixture
def compile_gateway(registry: PluginRegistry) -> Callable[..., Gateway]:
    """Load and compile a blueprint the way the core addon does."""

    def _compile(path: Path, *, env: Mapping[str, str] | None = None, registry_: PluginRegistry | None = None) -> Gateway:
        reg = registry_ or registry
        loaded = load_blueprint(path, reg, env={} if env is None else env)
        return build_gateway(loaded, {name: plugin() for name, plugin in reg.plugins.items()})

    return _compile


def diagnostic_lines(diagnostics: list[Diagnostic]) -> list[str]:
    return [str(d) for d in diagnostics]


# --------------------------------------------------------------------------------------
# Flows


def make_flow(
    method: str = "GET",
    path: str = "/",
    *,
    headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    body: bytes | str = b"",
    host: str = "api.test",
    port: int = 80,
    mode: str = "reverse:http://upstream.invalid:80",
    sockname: tuple[str, int] = ("", 0),
) -> http.HTTPFlow:
    """An HTTP flow as mitmproxy would hand it to the request hook."""
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    content = body.encode() if isinstance(body, str) else body
    request = tutils.treq(
        method=method.encode(),
        host=host,
        port=port,
        path=path.encode(),
        headers=http.Headers([(k.encode(), v.encode()) for k, v in items]),
        content=content,
    )
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse(mode)
    flow.client_conn.sockname = sockname
    return flow


def body_json(response: http.Response) -> Any:
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    return json.loads(response.get_content())


@pytest.fixture
def send() -> Callable[..., Awaitable[http.HTTPFlow]]:
    """Send one request through a Gateway (reverse mode unless told otherwise)."""

    async def _send(
        gateway: Gateway,
        method: str = "GET",
        path: str = "/",
        *,
        reverse: bool = True,
        direct: bool = False,
        **kwargs: Any,
    ) -> http.HTTPFlow:
        flow = make_flow(method, path, **kwargs)
        await gateway.handle(flow, reverse_mode=reverse, direct=direct)
        return flow

    return _send


# --------------------------------------------------------------------------------------
# A real third-party plugin distribution on disk

TAGGER_MODULE = '''
"""A third-party Backworks plugin, installed as a distribution with an entry point."""

from typing import Literal

from backworks_core.context import json_response
from backworks_core.model import MiddlewareFilter
from backworks_core.plugins import Plugin

EVENTS: list[str] = []


class TagConfig(MiddlewareFilter):
    tag: str
    action: Literal["pass", "raise", "answer", "raise_on_response"] = "pass"


class TagMiddleware:
    def __init__(self, config: TagConfig) -> None:
        self.tag = config.tag
        self.action = config.action

    async def on_request(self, ctx):
        EVENTS.append(f"request:{self.tag}")
        ctx.state.setdefault("tags", []).append(self.tag)
        if self.action == "raise":
            raise RuntimeError(f"middleware {self.tag} exploded")
        if self.action == "answer":
            return json_response(418, {"answered_by": self.tag})
        return None

    async def on_response(self, ctx, response):
        EVENTS.append(f"response:{self.tag}")
        if self.action == "raise_on_response":
            raise RuntimeError(f"middleware {self.tag} exploded on the response")
        response.headers["X-Tags"] = ",".join(ctx.state.get("tags", []))


class RecordHandler:
    async def __call__(self, ctx):
        EVENTS.append("handler")
        return json_response(200, {"tags": ctx.state.get("tags", [])})


class TaggerPlugin(Plugin):
    name = "tagger"
    description = "tags requests (test plugin)"
    MiddlewareConfig = TagConfig
    handlers = ("tagger.record",)

    def build_middleware(self, middleware, config):
        return TagMiddleware(middleware.config)

    def build_handler(self, handler, endpoint, config):
        return RecordHandler()


class NeedyPlugin(Plugin):
    name = "needy"
    requires = ("metrics_store",)


class NeedsProxyPlugin(Plugin):
    name = "needs_proxy"
    requires = ("proxy",)


class Misnamed(Plugin):
    name = "something_else"
'''

TAGGER_ENTRY_POINTS = """
[backworks.plugins]
tagger = bw_tagger:TaggerPlugin
needy = bw_tagger:NeedyPlugin
needs_proxy = bw_tagger:NeedsProxyPlugin
brokenplug = bw_missing_module_xyz:Plugin
notaplugin = bw_tagger:EVENTS
misnamed = bw_tagger:Misnamed

[console_scripts]
unrelated = bw_tagger:main
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Install `bw-tagger 1.0` into a folder on sys.path: a module plus its dist-info."""
    site = tmp_path / "site-packages"
    package = site / "bw_tagger"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(TAGGER_MODULE).lstrip())
    dist_info = site / "bw_tagger-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: bw-tagger\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(TAGGER_ENTRY_POINTS).lstrip())
    (dist_info / "RECORD").write_text("")
    for name in [m for m in sys.modules if m == "bw_tagger" or m.startswith("bw_tagger.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m == "bw_tagger" or m.startswith("bw_tagger.")]:
        del sys.modules[name]


@pytest.fixture
def discovered(third_party: Path) -> PluginRegistry:
    """The registry `backworks.py` builds: built-ins plus every installed entry point."""
    return PluginRegistry.discover(builtin_plugins())


@pytest.fixture
def tagger_events(discovered: PluginRegistry) -> list[str]:
    """The EVENTS list of the installed tagger plugin, emptied for this test."""
    module = sys.modules[discovered.plugins["tagger"].__module__]
    module.EVENTS.clear()
    return module.EVENTS


class FakeClock:
    """An injectable clock for breakers, outlier detection and health checks: moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

