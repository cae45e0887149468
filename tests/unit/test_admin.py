"""The admin listener's rules (backworks_core/admin.py) and its addon (addons/admin.py).

Where it listens (server.admin, the deprecated page ports, the backworks_admin option), whether
the pages reach the API's listener (only with server.admin.expose_on_api or a declared
`handler: metrics`), and the located warnings the blueprint gets for each way of exposing them.
"""

from __future__ import annotations

import socket
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons import builtin_plugins
from addons.admin import AdminListener, admin_address
from addons.core import Backworks
from addons.dashboard import Dashboard, status_page_endpoints
from backworks_core.admin import AdminAddress, blueprint_admin_address, parse_admin_option
from backworks_core.compiler import build_gateway
from backworks_core.gateway import Gateway
from backworks_core.loader import load_blueprint
from backworks_core.plugins import PluginRegistry

from .conftest import make_flow

REVERSE = "reverse:http://127.0.0.1:9"
SECRET = "kX9v2QmZ7rT4wLp8sN3bY6cH1jF5dG0aRq"


@pytest.fixture
def gateway_of(project, registry: PluginRegistry) -> Callable[[str], Gateway]:  # type: ignore[no-untyped-def]
    """Compile a blueprint with the status page, as the core addon does."""

    def compile_(text: str) -> Gateway:
        path = project.blueprint(textwrap.dedent(text))
        loaded = load_blueprint(path, registry, env={})
        return build_gateway(loaded, {name: plugin() for name, plugin in registry.plugins.items()}, [status_page_endpoints])

    return compile_


def warnings_of(gateway: Gateway) -> dict[str, str]:
    return {w.key_path: w.message for w in gateway.warnings}


HELLO = "endpoints:\n  - {path: /hello, handler: static, config: {static: {body: hi}}}\n"


# -- the option ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("", None),
        ("  ", None),
        ("off", "off"),
        ("OFF", "off"),
        ("127.0.0.1:9902", AdminAddress("127.0.0.1", 9902)),
        ("0.0.0.0:0", AdminAddress("0.0.0.0", 0)),
        ("[::1]:9901", AdminAddress("::1", 9901)),
        ("localhost:1", AdminAddress("localhost", 1)),
        ("9903", AdminAddress("127.0.0.1", 9903)),
    ],
)
def test_the_option_parses(text: str, parsed: object) -> None:
    assert parse_admin_option(text) == parsed


@pytest.mark.parametrize("text", ["::1:9901", "host:", ":9901", "host:port", "127.0.0.1:65536", "127.0.0.1:-1", "on"])
def test_a_wrong_option_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="backworks_admin"):
        parse_admin_option(text)


# -- where the blueprint puts it -------------------------------------------------------------


def test_the_default_is_loopback_on_envoys_admin_port(gateway_of) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of("name: a\n" + HELLO)
    assert blueprint_admin_address(gateway.blueprint) == AdminAddress("127.0.0.1", 9901)
    assert gateway.warnings == []


def test_server_admin_sets_it(gateway_of) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of("name: a\nserver: {admin: {host: '::1', port: 0}}\n" + HELLO)
    assert blueprint_admin_address(gateway.blueprint) == AdminAddress("::1", 0)
    assert gateway.warnings == []


def test_disabled_in_the_blueprint(gateway_of) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of("name: a\nserver: {admin: {enabled: false}}\n" + HELLO)
    assert blueprint_admin_address(gateway.blueprint) is None
    assert admin_address("", gateway) is None
    assert admin_address("127.0.0.1:5", gateway) == AdminAddress("127.0.0.1", 5)  # the option still decides


def test_the_deprecated_dashboard_port_becomes_the_admin_port_with_a_located_warning(gateway_of) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of("name: a\ndashboard: {port: 9090}\nplugins:\n  metrics: {config: {port: 9100}}\n" + HELLO)
    assert blueprint_admin_address(gateway.blueprint) == AdminAddress("127.0.0.1", 9090)
    [dashboard, metrics] = [w for w in gateway.warnings if "deprecated" in w.message]
    assert (dashboard.key_path, dashboard.line, dashboard.severity) == ("dashboard.port", 2, "warning")
    assert "write `server: {admin: {port: 9090}}` instead" in dashboard.message
    assert metrics.key_path == "plugins.metrics.config.port"
    assert "the admin listener is on 9090 (dashboard.port); remove plugins.metrics.config.port" in metrics.message


def test_the_deprecated_metrics_port_and_host_become_the_admin_address(gateway_of) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of("name: a\nplugins:\n  metrics: {config: {port: 9100, host: 127.0.0.2}}\n" + HELLO)
    assert blueprint_admin_address(gateway.blueprint) == AdminAddress("127.0.0.2", 9100)
    assert "deprecated" in warnings_of(gateway)["plugins.metrics.config.port"]


def test_server_admin_port_wins_over_the_deprecated_ports(gateway_of) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of("name: a\nserver: {admin: {port: 9999}}\ndashboard: {port: 9090, host: 0.0.0.0}\n" + HELLO)
    assert blueprint_admin_address(gateway.blueprint) == AdminAddress("127.0.0.1", 9999)
    assert "server.admin (127.0.0.1:9999) is used instead; remove dashboard.port" in warnings_of(gateway)["dashboard.port"]


def test_a_public_admin_host_is_a_located_warning(gateway_of) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of("name: a\nserver: {admin: {host: 0.0.0.0}}\n" + HELLO)
    message = warnings_of(gateway)["server.admin.host"]
    assert "has no authentication and is not on loopback" in message
    for loopback in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
        assert gateway_of(f"name: a\nserver: {{admin: {{host: '{loopback}'}}}}\n" + HELLO).warnings == []


def test_the_option_wins_and_nothing_to_serve_means_no_listener(gateway_of) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of("name: a\n" + HELLO)
    assert admin_address("", gateway) == AdminAddress("127.0.0.1", 9901)
    assert admin_address("127.0.0.1:0", gateway) == AdminAddress("127.0.0.1", 0)
    assert admin_address("off", gateway) is None
    quiet = gateway_of("name: a\ndashboard: {enabled: false}\n" + HELLO)  # no status page, no metrics plugin
    assert quiet.admin_pages == [] and admin_address("127.0.0.1:0", quiet) is None
    assert admin_address("", None) is None


# -- the API's listener: off by default, opt-in with a warning -------------------------------------


def test_by_default_the_pages_are_not_routes_of_the_api(gateway_of) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of("name: a\nplugins: {metrics: {}}\n" + HELLO)
    assert not any(e.internal for e in gateway.endpoints)
    assert sorted(p.path for p in gateway.admin_pages) == ["/__backworks", "/__backworks/api/status", "/metrics"]


async def test_by_default_the_api_answers_404_for_them(gateway_of, send) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of("name: a\nplugins: {metrics: {}}\n" + HELLO)
    for path in ("/__backworks", "/__backworks/", "/__backworks/api/status", "/metrics", "/METRICS", "/metrics/"):
        flow = await send(gateway, "GET", path)
        assert flow.response.status_code == 404, path


async def test_the_opt_in_routes_them_with_a_located_warning(gateway_of, send) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of("name: a\nserver: {admin: {expose_on_api: true}}\nplugins: {metrics: {}}\n" + HELLO)
    assert {e.template for e in gateway.endpoints if e.internal} == {"/__backworks", "/__backworks/api/status", "/metrics"}
    flow = await send(gateway, "GET", "/metrics")
    assert flow.response.status_code == 200
    [warning] = gateway.warnings
    assert (warning.key_path, warning.line, warning.severity) == ("server.admin.expose_on_api", 2, "warning")
    assert "/metrics, /__backworks, /__backworks/api/status are served on the API's listener to any client" in warning.message
    assert '`path: "/metrics"`, `path: "/__backworks*"`' in warning.message


AUTH = f"""
plugins:
  metrics: {{}}
  auth: {{config: {{jwt_secret: "{SECRET}"}}}}
"""


def test_an_auth_middleware_whose_filter_covers_them_silences_the_warning(gateway_of) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of(
        "name: a\nserver: {admin: {expose_on_api: true}}\n"
        + AUTH
        + """
middlewares:
  - {name: ops, plugin: auth, config: {path: "/__backworks*", roles: [ops]}}
  - {name: scrape, plugin: auth, config: {path: "/metrics"}}
"""
        + HELLO
    )
    assert gateway.warnings == []


@pytest.mark.parametrize(
    "middleware, uncovered",
    [
        ('{name: ops, plugin: auth, config: {path: "/__backworks"}}', "/metrics, /__backworks/api/status are"),  # the page, not its API
        ('{name: ops, plugin: auth, config: {path: "/__backworks*", methods: [POST]}}', "/metrics, /__backworks, /__backworks/api/status are"),
        ('{name: ops, plugin: cors, config: {path: "/*", origins: ["https://a.example"]}}', "/metrics, /__backworks, /__backworks/api/status are"),
        ('{name: ops, plugin: auth}', "/metrics, /__backworks, /__backworks/api/status are"),  # no filter: applies to nothing by itself
    ],
)
def test_only_an_auth_filter_that_selects_get_of_the_path_covers_it(gateway_of, middleware: str, uncovered: str) -> None:  # type: ignore[no-untyped-def]
    gateway = gateway_of("name: a\nserver: {admin: {expose_on_api: true}}\n" + AUTH + f"middlewares:\n  - {middleware}\n" + HELLO)
    message = warnings_of(gateway)["server.admin.expose_on_api"]
    assert message.startswith(uncovered + " served on the API's listener"), message


def test_a_declared_metrics_endpoint_is_an_opt_in_warned_about_unless_auth_applies(gateway_of) -> None:  # type: ignore[no-untyped-def]
    open_ = gateway_of("name: a\nendpoints:\n  - {path: /metrics, handler: metrics}\n")
    [warning] = open_.warnings
    assert (warning.key_path, warning.line) == ("endpoints[0].handler", 3)
    assert "/metrics serves the gateway's metrics (targets, pools, traffic) to any client of the API's listener" in warning.message
    listed = gateway_of(AUTH.replace("  metrics: {}\n", "") + "name: a\nmiddlewares:\n  - {name: guard, plugin: auth}\nendpoints:\n  - {path: /metrics, handler: metrics, middleware: [guard]}\n")
    assert listed.warnings == []
    filtered = gateway_of(AUTH.replace("  metrics: {}\n", "") + "name: a\nmiddlewares:\n  - {name: guard, plugin: auth, config: {path: /metrics}}\nendpoints:\n  - {path: /metrics, handler: metrics}\n")
    assert filtered.warnings == []


async def test_a_declared_metrics_endpoint_keeps_the_path_with_the_opt_in(gateway_of, send) -> None:  # type: ignore[no-untyped-def]
    """proxy-advanced's `handler: metrics` at /metrics and the plugin's /metrics: the endpoint answers on the API."""
    gateway = gateway_of(
        "name: a\nserver: {admin: {expose_on_api: true}}\nplugins: {metrics: {}}\n"
        "endpoints:\n  - {path: /metrics, handler: metrics, config: {metrics: {format: json}}}\n"
    )
    flow = await send(gateway, "GET", "/metrics")
    assert flow.response.headers["Content-Type"] == "application/json"
    assert "/metrics" in {p.path for p in gateway.admin_pages}  # and the Prometheus text on the admin listener


# -- the addon, on real sockets --------------------------------------------------------------


class Stack:
    def __init__(self) -> None:
        registry = PluginRegistry(builtin_plugins())
        self.plugins = [plugin() for plugin in registry.plugins.values()]
        self.core = Backworks(registry, self.plugins)
        self.dashboard = Dashboard(self.core)
        self.admin = AdminListener(self.core)
        self.core.extensions += [self.dashboard, self.admin]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    made = Stack()
    yield made
    await made.admin.done()


async def wait_listening(admin: AdminListener) -> None:
    if admin.side_port._task is not None:
        await admin.side_port._task


async def test_the_addon_serves_the_pages_and_follows_the_option(project, stack: Stack, unused_tcp_port: int) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint("name: live\nplugins: {metrics: {}}\n" + HELLO)
    with taddons.context(stack.core, stack.dashboard, stack.admin) as tctx:
        tctx.configure(stack.admin, backworks_admin=f"127.0.0.1:{unused_tcp_port}")
        tctx.configure(stack.core, blueprint=str(path))
        await wait_listening(stack.admin)
        async with aiohttp.ClientSession() as client:
            base = f"http://127.0.0.1:{unused_tcp_port}"
            async with client.get(base + "/__backworks/api/status") as reply:
                assert reply.status == 200 and (await reply.json())["blueprint"]["name"] == "live"
            async with client.get(base + "/metrics") as reply:
                assert reply.status == 200 and "backworks_blueprint_info" in await reply.text()
            async with client.get(base + "/__backworks") as reply:
                assert reply.status == 200 and "/__backworks/api/status" in await reply.text()
            flow = make_flow("GET", "/__backworks/api/status", mode=REVERSE)
            await stack.core.request(flow)
            assert flow.response.status_code == 404  # not on the API's listener
            tctx.configure(stack.admin, backworks_admin="off")
            await wait_listening(stack.admin)
            assert stack.admin.side_port.port is None
            with pytest.raises(aiohttp.ClientConnectionError):
                async with client.get(base + "/metrics"):
                    pass
        with pytest.raises(exceptions.OptionsError, match="backworks_admin: expected HOST:PORT"):
            tctx.configure(stack.admin, backworks_admin="nowhere:port")


async def test_a_taken_port_is_a_warning_and_the_gateway_still_answers(project, stack: Stack, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint("name: live\n" + HELLO)
    with socket.socket() as taken, taddons.context(stack.core, stack.dashboard, stack.admin) as tctx:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        tctx.configure(stack.admin, backworks_admin=f"127.0.0.1:{busy}")
        tctx.configure(stack.core, blueprint=str(path))
        await wait_listening(stack.admin)
        [record] = [r for r in caplog.records if "admin listener is not listening" in r.getMessage()]
        assert record.levelname == "WARNING"
        assert f"http://127.0.0.1:{busy}" in record.getMessage() and "server.admin.port" in record.getMessage() and "backworks_admin=" in record.getMessage()
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
        flow = make_flow("GET", "/hello", mode=REVERSE)
        await stack.core.request(flow)
        assert flow.response.status_code == 200


def test_the_harness_never_uses_the_default_port() -> None:
    """Several test processes run side by side: each Proxy chooses a free admin port."""
    from tests.integration.harness import Proxy

    command = Proxy(Path("b.yaml")).command()
    [value] = [arg for arg in command if arg.startswith("backworks_admin=")]
    assert value != "backworks_admin=127.0.0.1:9901" and value.startswith("backworks_admin=127.0.0.1:")
