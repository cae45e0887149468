"""addons.core.Backworks as mitmproxy runs it: options, the request hook, and reloads."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from mitmproxy import exceptions
from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons, tflow

from addons import builtin_plugins
from addons.core import Backworks, files_signature, is_direct_request
from backworks_core.gateway import Gateway
from backworks_core.plugins import PluginRegistry

from .conftest import body_json, make_flow

GOOD = """
name: core-test
endpoints:
  - path: /hello
    handler: static
    config: {static: {body: {version: VERSION}}}
  - path: /items
    method: POST
    handler: static
    config: {static: {status: 201}}
"""


@pytest.fixture
def addon() -> Backworks:
    registry = PluginRegistry(builtin_plugins())
    return Backworks(registry, [plugin() for plugin in registry.plugins.values()])


@pytest.fixture
def good_blueprint(project):
    return project.blueprint(GOOD.replace("VERSION", "one"))


# -- configure ------------------------------------------------------------------------------


async def test_configure_loads_the_blueprint(addon, good_blueprint):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, blueprint=str(good_blueprint))
        assert isinstance(addon.gateway, Gateway)
        assert addon.gateway.blueprint.settings.name == "core-test"
        assert addon.endpoints_command() == ["GET /hello -> static", "POST /items -> static"]
        tctx.configure(addon, blueprint=None)
        assert addon.gateway is None
        assert addon.endpoints_command() == []


async def test_invalid_blueprint_at_configure_is_an_options_error_with_locations(addon, project):
    path = project.blueprint(
        """
        name: broken
        endpoints:
          - {path: /a, handler: statik}
          - path: /b
            handler: static
            config: {static: {stauts: 200}}
        """
    )
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError) as info:
            tctx.configure(addon, blueprint=str(path))
        text = str(info.value)
        assert text.startswith(f"{path}: 2 errors in blueprint:\n")
        assert f"{path}:3:25: endpoints[0].handler: unknown handler 'statik'; did you mean 'static'?" in text
        assert f"{path}:6:23: endpoints[1].config.static.stauts: unknown key 'stauts'; did you mean 'status'?" in text
        assert addon.gateway is None


async def test_reverse_mode_switches_to_lazy_connections(addon, good_blueprint):
    with taddons.context(proxyserver.Proxyserver(), addon) as tctx:
        tctx.configure(addon, connection_strategy="eager")
        tctx.configure(addon, mode=["reverse:http://127.0.0.1:9"])
        assert tctx.options.connection_strategy == "lazy"


async def test_regular_mode_keeps_the_connection_strategy(addon):
    with taddons.context(proxyserver.Proxyserver(), addon) as tctx:
        tctx.configure(addon, connection_strategy="eager")
        tctx.configure(addon, mode=["regular"])
        assert tctx.options.connection_strategy == "eager"


# -- the request hook -----------------------------------------------------------------------


async def test_request_hook_answers_a_matched_flow(addon, good_blueprint):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, blueprint=str(good_blueprint))
        flow = make_flow("GET", "/hello", mode="reverse:http://127.0.0.1:9")
        await addon.request(flow)
        assert flow.response.status_code == 200
        assert body_json(flow.response) == {"version": "one"}
        assert flow.comment == 'backworks: endpoint="GET /hello" handler=static'


async def test_full_event_cycle(addon, good_blueprint):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, blueprint=str(good_blueprint))
        flow = make_flow("POST", "/items", mode="reverse:http://127.0.0.1:9")
        await tctx.cycle(addon, flow)
        assert flow.response.status_code == 201


async def test_flows_with_a_response_or_error_are_left_alone(addon, good_blueprint):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, blueprint=str(good_blueprint))

        answered = tflow.tflow(resp=True)
        answered.request.path = "/hello"
        original = answered.response
        await addon.request(answered)
        assert answered.response is original
        assert answered.response.get_content() == b"message"
        assert answered.comment == ""

        failed = tflow.tflow(err=True)
        failed.request.path = "/hello"
        await addon.request(failed)
        assert failed.response is None
        assert failed.comment == ""

        replayed = tflow.tflow(live=False)
        replayed.request.path = "/hello"
        await addon.request(replayed)
        assert replayed.response is None


async def test_without_a_blueprint_every_flow_passes(addon):
    with taddons.context(addon):
        flow = make_flow("GET", "/hello", mode="reverse:http://127.0.0.1:9")
        await addon.request(flow)
        assert flow.response is None


@pytest.mark.parametrize(
    "mode, server, sockname, host, port, expected",
    [
        ("reverse:http://127.0.0.1:9", "", ("127.0.0.1", 8080), "127.0.0.1", 8080, 404),
        ("regular", "", ("", 0), "example.org", 80, None),
        ("regular", "server: {unmatched: not_found}", ("", 0), "example.org", 80, 404),
        ("reverse:http://127.0.0.1:9", "server: {unmatched: passthrough}", ("127.0.0.1", 8080), "127.0.0.1", 8080, None),
        # a client talking to the proxy's own address is answered, never forwarded to itself
        ("regular", "server: {unmatched: passthrough}", ("127.0.0.1", 8080), "localhost", 8080, 404),
        ("regular", "server: {unmatched: passthrough}", ("127.0.0.1", 8080), "127.0.0.1", 8080, 404),
        ("regular", "", ("127.0.0.1", 8080), "127.0.0.1", 9999, None),
    ],
)
async def test_unmatched_flows(addon, project, mode, server, sockname, host, port, expected):
    path = project.blueprint(GOOD.replace("VERSION", "one") + server + "\n")
    with taddons.context(addon) as tctx:
        tctx.configure(addon, blueprint=str(path))
        flow = make_flow("GET", "/unknown", mode=mode, sockname=sockname, host=host, port=port)
        await addon.request(flow)
        if expected is None:
            assert flow.response is None
        else:
            assert flow.response.status_code == expected
            body = body_json(flow.response)
            assert set(body) == {"error", "status", "request_id"}
            assert body["error"] == "no endpoint matches GET /unknown"


def test_is_direct_request():
    flow = make_flow("GET", "/", mode="regular", sockname=("127.0.0.1", 8080), host="localhost", port=8080)
    assert is_direct_request(flow)
    flow = make_flow("GET", "/", mode="regular", sockname=("10.1.2.3", 8080), host="10.1.2.3", port=8080)
    assert is_direct_request(flow)
    flow = make_flow("GET", "/", mode="regular", sockname=("127.0.0.1", 8080), host="example.org", port=8080)
    assert not is_direct_request(flow)
    flow = make_flow("GET", "/", mode="regular", sockname=("127.0.0.1", 8080), host="localhost", port=80)
    assert not is_direct_request(flow)
    flow = make_flow("GET", "/", mode="regular", sockname=None)
    assert not is_direct_request(flow)


async def test_405_through_the_hook(addon, good_blueprint):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, blueprint=str(good_blueprint))
        flow = make_flow("GET", "/items", mode="reverse:http://127.0.0.1:9", headers={"X-Request-ID": "r-405"})
        await addon.request(flow)
        assert flow.response.status_code == 405
        assert flow.response.headers["Allow"] == "POST"
        assert json.loads(flow.response.get_content()) == {
            "error": "method GET is not allowed here (allowed: POST)",
            "status": 405,
            "request_id": "r-405",
        }


async def test_a_bug_in_the_gateway_still_answers_500(addon, good_blueprint, monkeypatch, caplog):
    caplog.set_level(logging.ERROR)

    async def broken(self, flow, *, reverse_mode, direct, relay=None):
        raise KeyError("gateway bug")

    with taddons.context(addon) as tctx:
        tctx.configure(addon, blueprint=str(good_blueprint))
        monkeypatch.setattr(Gateway, "handle", broken)
        # even a flow that would pass through must not be forwarded once the gateway failed
        flow = make_flow("GET", "/anything", mode="regular", headers={"X-Request-ID": "bug-1"})
        await addon.request(flow)
        assert flow.response is not None
        assert flow.response.status_code == 500
        assert body_json(flow.response) == {
            "error": "internal gateway error; see the gateway log for this request id",
            "status": 500,
            "request_id": "bug-1",
        }
        assert "gateway bug" in caplog.text
        assert "[bug-1]" in caplog.text


# -- reload ---------------------------------------------------------------------------------


async def test_reload_command_swaps_in_a_valid_blueprint(addon, good_blueprint):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, blueprint=str(good_blueprint))
        before = addon.gateway
        good_blueprint.write_text(GOOD.replace("VERSION", "two").lstrip())
        tctx.command(addon.reload_command)
        assert addon.gateway is not before
        flow = make_flow("GET", "/hello", mode="reverse:http://127.0.0.1:9")
        await addon.request(flow)
        assert body_json(flow.response) == {"version": "two"}


async def test_reload_command_keeps_the_old_gateway_when_the_new_blueprint_is_invalid(addon, good_blueprint, caplog):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, blueprint=str(good_blueprint))
        before = addon.gateway
        good_blueprint.write_text("name: broken\nendpoints:\n  - {path: /hello, handler: statik}\n")
        with pytest.raises(exceptions.CommandError, match="the previous version keeps serving"):
            tctx.command(addon.reload_command)
        assert addon.gateway is before
        assert f"{good_blueprint}:3:29: endpoints[0].handler: unknown handler 'statik'" in caplog.text
        flow = make_flow("GET", "/hello", mode="reverse:http://127.0.0.1:9")
        await addon.request(flow)
        assert body_json(flow.response) == {"version": "one"}


async def test_reload_command_without_a_blueprint(addon):
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.CommandError, match="no blueprint is set"):
            tctx.command(addon.reload_command)


async def test_a_request_keeps_the_gateway_it_started_with(addon, good_blueprint, monkeypatch):
    """A reload while a request is inside the gateway does not change that request's answer."""
    with taddons.context(addon) as tctx:
        tctx.configure(addon, blueprint=str(good_blueprint))
        first = addon.gateway
        original = Gateway.handle
        seen: list[Gateway] = []

        async def reload_midway(self, flow, *, reverse_mode, direct, relay=None):
            seen.append(self)
            good_blueprint.write_text(GOOD.replace("VERSION", "two").lstrip())
            assert addon.reload()
            await original(self, flow, reverse_mode=reverse_mode, direct=direct, relay=relay)

        monkeypatch.setattr(Gateway, "handle", reload_midway)
        flow = make_flow("GET", "/hello", mode="reverse:http://127.0.0.1:9")
        await addon.request(flow)
        assert seen == [first]
        assert addon.gateway is not first
        assert body_json(flow.response) == {"version": "one"}


def test_files_signature_notices_changes_and_missing_files(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("1")
    before = files_signature([a, tmp_path / "missing"])
    assert before[1] == (str(tmp_path / "missing"), -1, -1)
    a.write_text("12")
    assert files_signature([a, tmp_path / "missing"]) != before


async def test_handler_file_is_watched(addon, project):
    project.write("h.py", "def handler(request):\n    return 1\n")
    path = project.blueprint("name: w\nendpoints:\n  - {path: /a, handler: h.py}\n")
    with taddons.context(addon) as tctx:
        tctx.configure(addon, blueprint=str(path))
        assert addon.gateway.blueprint.files == {path.resolve(), (project.root / "h.py").resolve()}


async def test_a_head_request_gets_the_get_headers_and_no_body(addon, good_blueprint):
    # Found by tests/reliability/test_request_fuzz.py: the body went out after the head, and on a
    # keep-alive connection the client read it as the start of the next response.
    with taddons.context(addon) as tctx:
        tctx.configure(addon, blueprint=str(good_blueprint))
        get = make_flow("GET", "/hello", mode="reverse:http://127.0.0.1:9")
        await tctx.cycle(addon, get)
        head = make_flow("HEAD", "/hello", mode="reverse:http://127.0.0.1:9")
        await tctx.cycle(addon, head)
        assert head.response.status_code == 200
        assert head.response.raw_content == b""
        assert head.response.headers["content-length"] == str(len(get.response.raw_content)) != "0"
        assert head.response.headers["content-type"] == get.response.headers["content-type"]


# -- garbage collection ---------------------------------------------------------------------


async def test_running_freezes_long_lived_objects_and_a_reload_lets_the_old_blueprint_go(addon, good_blueprint):
    import gc
    import weakref

    baseline = gc.get_freeze_count()  # Python 3.12 starts with a few hundred frozen objects of its own
    try:
        with taddons.context(addon) as tctx:
            tctx.configure(addon, blueprint=str(good_blueprint))
            first = weakref.ref(addon.gateway)
            addon.freezer.settle = 0.05
            addon.running()
            assert gc.get_freeze_count() > baseline + 1000  # mitmproxy, Backworks, the blueprint
            good_blueprint.write_text(GOOD.replace("VERSION", "two"))
            assert addon.reload()
            assert gc.get_freeze_count() <= baseline  # unfrozen at once: the old version can be freed
            gc.collect()
            assert first() is None
            await asyncio.sleep(0.2)
            assert gc.get_freeze_count() > baseline + 1000  # frozen again once the old version is gone
            await addon.done()
            assert gc.get_freeze_count() <= baseline
    finally:
        gc.unfreeze()


async def test_gc_freeze_can_be_turned_off(addon, good_blueprint):
    import gc

    baseline = gc.get_freeze_count()
    try:
        with taddons.context(addon) as tctx:
            tctx.configure(addon, blueprint=str(good_blueprint), backworks_gc_freeze=False)
            addon.running()
            assert gc.get_freeze_count() == baseline  # nothing frozen
            tctx.configure(addon, backworks_gc_freeze=True)  # on while running: frozen at once
            assert gc.get_freeze_count() > baseline + 1000
            tctx.configure(addon, backworks_gc_freeze=False)  # off while running: unfrozen at once
            assert gc.get_freeze_count() <= baseline
            await addon.done()
    finally:
        gc.unfreeze()
