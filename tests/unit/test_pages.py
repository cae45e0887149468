"""backworks_core.pages.SidePort on real sockets, and what the core addon does to every answer:
marks on Backworks' own errors, X-Request-ID, and the in-flight count."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import pytest
from aiohttp import web
from mitmproxy import flow as mflow
from mitmproxy.test import taddons, tutils

from addons import builtin_plugins
from addons.core import Backworks
from addons.proxy import ProxyPlugin
from backworks_core.pages import Page, PageHandler, SidePort
from backworks_core.plugins import PluginRegistry

from .conftest import body_json, make_flow

REVERSE = "reverse:http://127.0.0.1:9"


def hello(headers: Mapping[str, str]) -> Page:
    return Page(200, "text/plain; charset=utf-8", f"hello {headers.get('X-Who', 'nobody')}".encode(), {"X-Page": "yes"})


def other(headers: Mapping[str, str]) -> Page:
    return Page(200, "application/json", b'{"other": true}')


@pytest.fixture
async def side_port() -> AsyncIterator[SidePort]:
    port = SidePort("test page")
    yield port
    await port.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(force_close=True)  # no keep-alive to wait for when a port closes
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


# -- SidePort -------------------------------------------------------------------------------


async def test_serve_and_get_a_route(side_port: SidePort, client: aiohttp.ClientSession, unused_tcp_port: int) -> None:
    await side_port.serve("127.0.0.1", unused_tcp_port, {"/": hello, "/api/status": other})
    assert side_port.port == unused_tcp_port and side_port.address == ("127.0.0.1", unused_tcp_port)
    base = f"http://127.0.0.1:{unused_tcp_port}"
    async with client.get(f"{base}/", headers={"X-Who": "ada"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Page"] == "yes"
        assert await response.text() == "hello ada"
    async with client.get(f"{base}/api/status/") as response:  # a trailing slash is the same page
        assert response.status == 200
        assert await response.json() == {"other": True}
    async with client.head(f"{base}/api/status") as response:
        assert response.status == 200


async def test_unknown_paths_are_a_json_404(side_port: SidePort, client: aiohttp.ClientSession, unused_tcp_port: int) -> None:
    await side_port.serve("127.0.0.1", unused_tcp_port, {"/": hello, "/api/status": other})
    for method in ("GET", "POST"):
        async with client.request(method, f"http://127.0.0.1:{unused_tcp_port}/nope") as response:
            assert response.status == 404
            assert response.headers["Content-Type"].startswith("application/json")
            assert await response.json() == {"error": "nothing at /nope; try /, /api/status", "status": 404}


async def test_post_is_a_405_with_allow(side_port: SidePort, client: aiohttp.ClientSession, unused_tcp_port: int) -> None:
    await side_port.serve("127.0.0.1", unused_tcp_port, {"/": hello})
    for method in ("POST", "PUT", "DELETE"):
        async with client.request(method, f"http://127.0.0.1:{unused_tcp_port}/", data=b"x") as response:
            assert response.status == 405
            assert response.headers["Allow"] == "GET, HEAD"
            assert await response.json() == {"error": f"method {method} is not allowed here (allowed: GET, HEAD)", "status": 405}


async def test_serving_again_on_another_port_moves_it(
    side_port: SidePort, client: aiohttp.ClientSession, unused_tcp_port_factory: Callable[[], int]
) -> None:
    first, second = unused_tcp_port_factory(), unused_tcp_port_factory()
    await side_port.serve("127.0.0.1", first, {"/": hello})
    async with client.get(f"http://127.0.0.1:{first}/") as response:
        assert response.status == 200
    await side_port.serve("127.0.0.1", second, {"/": other})
    assert side_port.port == second
    async with client.get(f"http://127.0.0.1:{second}/") as response:
        assert await response.json() == {"other": True}
    with pytest.raises(aiohttp.ClientConnectorError):
        async with client.get(f"http://127.0.0.1:{first}/"):
            pass


async def test_serving_again_on_the_same_port_only_swaps_the_routes(side_port: SidePort, client: aiohttp.ClientSession, unused_tcp_port: int) -> None:
    await side_port.serve("127.0.0.1", unused_tcp_port, {"/": hello})
    server = side_port._server
    await side_port.serve("127.0.0.1", unused_tcp_port, {"/": other})
    assert side_port._server is server  # not restarted
    async with client.get(f"http://127.0.0.1:{unused_tcp_port}/") as response:
        assert await response.json() == {"other": True}


async def test_stop_closes_the_port(side_port: SidePort, client: aiohttp.ClientSession, unused_tcp_port: int) -> None:
    await side_port.serve("127.0.0.1", unused_tcp_port, {"/": hello})
    await side_port.stop()
    assert (side_port.port, side_port.address) == (None, None)
    with pytest.raises(aiohttp.ClientConnectorError):
        async with client.get(f"http://127.0.0.1:{unused_tcp_port}/"):
            pass
    await side_port.stop()  # twice is fine


async def test_a_port_in_use_logs_a_warning_never_an_error_and_does_not_raise(side_port: SidePort, caplog: pytest.LogCaptureFixture) -> None:
    # mitmproxy exits on an error logged while it starts: a taken admin port must not stop the API
    side_port.taken_hint = "set server.admin.port"
    caplog.set_level(logging.DEBUG, logger="backworks_core.pages")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        await side_port.serve("127.0.0.1", busy, {"/": hello})
        assert (side_port.port, side_port.address) == (None, None)
    [record] = [r for r in caplog.records if r.name == "backworks_core.pages"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert message.startswith(f"backworks: the test page is not listening: cannot listen on http://127.0.0.1:{busy}: ")
    assert message.endswith("; set server.admin.port")


async def test_a_port_in_use_keeps_nothing_half_open_and_a_later_serve_works(
    side_port: SidePort, client: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        await side_port.serve("127.0.0.1", taken.getsockname()[1], {"/": hello})
    await side_port.serve("127.0.0.1", unused_tcp_port, {"/": hello})
    async with client.get(f"http://127.0.0.1:{unused_tcp_port}/") as response:
        assert response.status == 200


async def test_page_handler_answers_with_the_page() -> None:
    flow = make_flow("GET", "/", headers={"X-Who": "grace"})

    class Ctx:
        request = flow.request

    response = await PageHandler(hello)(Ctx())  # type: ignore[arg-type]
    assert response.status_code == 200
    assert response.get_content() == b"hello grace"
    assert (response.headers["Cache-Control"], response.headers["X-Page"]) == ("no-store", "yes")


# -- the core addon: marks, request ids, requests in flight -----------------------------------

BLUEPRINT = """
name: marks
plugins:
  proxy:
    config:
      targets: [{{name: up, url: "{upstream}"}}]
      retries: {{attempts: 1}}
endpoints:
  - path: /hello
    handler: static
    config: {{static: {{body: hi}}}}
  - path: /teapot
    handler: static
    config: {{static: {{status: 503, body: planned}}}}
  - path: /boom
    handler: boom.py
  - path: /items
    method: POST
    handler: static
    config: {{static: {{status: 201}}}}
  - path: "/up/{{rest:path}}"
    handler: proxy
"""


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A real upstream on 127.0.0.1 that answers 502 to everything."""

    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"upstream": "broken"}, status=502)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def core(project, upstream: str) -> AsyncIterator[tuple[Backworks, ProxyPlugin]]:  # type: ignore[no-untyped-def]
    project.write("boom.py", "def handler(request):\n    raise RuntimeError('boom')\n")
    path = project.blueprint(BLUEPRINT.format(upstream=upstream))
    registry = PluginRegistry(builtin_plugins())
    plugins = [plugin() for plugin in registry.plugins.values()]
    addon = Backworks(registry, plugins)
    proxy = next(p for p in plugins if isinstance(p, ProxyPlugin))
    with taddons.context(addon, proxy) as tctx:
        tctx.configure(addon, blueprint=str(path))
        yield addon, proxy
        for plugin in plugins:
            if hasattr(plugin, "done"):
                await plugin.done()


async def cycle(addon: Backworks, method: str, path: str, **kwargs) -> mflow.Flow:  # type: ignore[no-untyped-def]
    """requestheaders, request, then response (what mitmproxy calls once an answer exists)."""
    flow = make_flow(method, path, mode=kwargs.pop("mode", REVERSE), **kwargs)
    await addon.requestheaders(flow)
    await addon.request(flow)
    if flow.response is not None:
        addon.responseheaders(flow)
        addon.response(flow)
    return flow


@pytest.mark.parametrize(
    "method, path, status, mark",
    [
        ("GET", "/nothing", 404, ":warning:"),
        ("DELETE", "/hello", 405, ":warning:"),
        ("GET", "/boom", 500, ":x:"),
    ],
)
async def test_backworks_own_errors_are_marked(core, method: str, path: str, status: int, mark: str) -> None:  # type: ignore[no-untyped-def]
    addon, _ = core
    flow = await cycle(addon, method, path)
    assert flow.response.status_code == status
    assert flow.marked == mark


async def test_answers_that_are_no_errors_of_backworks_are_not_marked(core) -> None:  # type: ignore[no-untyped-def]
    addon, _ = core
    assert (await cycle(addon, "GET", "/hello")).marked == ""
    planned = await cycle(addon, "GET", "/teapot")  # a 503 the blueprint asks for
    assert planned.response.status_code == 503 and planned.marked == ""


async def test_an_upstream_5xx_passed_through_is_not_marked(core) -> None:  # type: ignore[no-untyped-def]
    addon, _ = core
    flow = await cycle(addon, "GET", "/up/x")
    assert flow.response.status_code == 502
    assert body_json(flow.response) == {"upstream": "broken"}
    assert flow.marked == ""


async def test_a_mark_the_user_set_stays(core) -> None:  # type: ignore[no-untyped-def]
    addon, _ = core
    flow = make_flow("GET", "/boom", mode=REVERSE)
    flow.marked = ":star:"
    await addon.request(flow)
    addon.response(flow)
    assert flow.response.status_code == 500
    assert flow.marked == ":star:"


@pytest.mark.parametrize("method, path", [("GET", "/hello"), ("GET", "/teapot"), ("GET", "/nothing"), ("DELETE", "/hello"), ("GET", "/boom"), ("POST", "/items"), ("GET", "/up/x")])
async def test_every_backworks_answer_carries_the_request_id(core, method: str, path: str) -> None:  # type: ignore[no-untyped-def]
    addon, _ = core
    flow = await cycle(addon, method, path)
    assert flow.response.headers.get_all("X-Request-ID") == [flow.metadata["backworks.request_id"]]
    offered = await cycle(addon, method, path, headers={"X-Request-ID": "client-7"})
    assert offered.response.headers.get_all("X-Request-ID") == ["client-7"]


async def test_the_request_id_is_on_a_streamed_head(core) -> None:  # type: ignore[no-untyped-def]
    """responseheaders stamps it: a streamed head goes out before the response hook."""
    addon, _ = core
    flow = make_flow("GET", "/hello", mode=REVERSE, headers={"X-Request-ID": "client-8"})
    await addon.request(flow)
    flow.response = tutils.tresp()  # a head without the id, as an upstream would send it
    assert "X-Request-ID" not in flow.response.headers
    addon.responseheaders(flow)
    assert flow.response.headers["X-Request-ID"] == "client-8"


async def test_a_bystander_answer_is_left_unchanged(core) -> None:  # type: ignore[no-untyped-def]
    addon, _ = core
    flow = make_flow("GET", "/elsewhere", mode="regular", host="example.org")
    await addon.requestheaders(flow)
    await addon.request(flow)
    assert flow.response is None
    flow.response = tutils.tresp(status_code=500)
    addon.responseheaders(flow)
    addon.response(flow)
    assert "X-Request-ID" not in flow.response.headers
    assert flow.marked == ""


async def test_in_flight_goes_up_at_requestheaders_and_down_once(core) -> None:  # type: ignore[no-untyped-def]
    addon, _ = core
    assert addon.in_flight == 0
    first = make_flow("GET", "/hello", mode=REVERSE)
    second = make_flow("GET", "/nothing", mode=REVERSE)
    await addon.requestheaders(first)
    await addon.requestheaders(first)  # counted once per flow
    await addon.requestheaders(second)
    assert addon.in_flight == 2
    await addon.request(first)
    assert addon.in_flight == 2  # answered, not yet sent
    addon.response(first)
    assert addon.in_flight == 1
    second.error = mflow.Error("client disconnected")
    addon.error(second)
    addon.response(second)  # a late second hook must not count it down again
    addon.error(second)
    assert addon.in_flight == 0
    addon.response(first)
    assert addon.in_flight == 0


async def test_flows_backworks_skips_are_not_in_flight(core) -> None:  # type: ignore[no-untyped-def]
    addon, _ = core
    answered = make_flow("GET", "/hello", mode=REVERSE)
    answered.response = tutils.tresp()
    await addon.requestheaders(answered)
    replayed = make_flow("GET", "/hello", mode=REVERSE)
    replayed.live = False
    await addon.requestheaders(replayed)
    assert addon.in_flight == 0
    addon.response(answered)
    addon.response(replayed)
    assert addon.in_flight == 0
