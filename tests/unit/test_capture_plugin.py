"""The capture plugin: filters, the journal as flows finish, redaction on the way, save and done."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from mitmproxy import exceptions, http
from mitmproxy.test import taddons

from addons import builtin_plugins
from addons.capture import CaptureConfig, CaptureFilter, CapturePlugin
from addons.core import Backworks
from addons.dashboard import Dashboard
from backworks_core.capture.model import Exchange
from backworks_core.capture.redact import placeholder
from backworks_core.plugins import PluginRegistry

from .conftest import make_flow

BLUEPRINT = """
name: shop
server: {{unmatched: passthrough, admin: {{expose_on_api: true}}}}  # the status page on the API listener too: never recorded
plugins:
  capture:
    config: {config}
endpoints:
  - {{path: /status, handler: static, config: {{static: {{body: ok}}}}}}
"""


def answered(flow: http.HTTPFlow, status: int = 200, body: object = None, headers: dict[str, str] | None = None) -> http.HTTPFlow:
    content = json.dumps(body if body is not None else {"ok": True}).encode()
    flow.response = http.Response.make(status, content, {"Content-Type": "application/json", **(headers or {})})
    return flow


@pytest.fixture
async def stack(project) -> AsyncIterator:  # type: ignore[no-untyped-def]
    made: list = []

    async def make(config: str = "{output: out.yaml}"):  # type: ignore[no-untyped-def]
        path = project.blueprint(BLUEPRINT.format(config=config))
        registry = PluginRegistry(builtin_plugins())
        plugins = [plugin() for plugin in registry.plugins.values()]
        core = Backworks(registry, plugins)
        core.extensions.append(Dashboard(core))  # the status page: an internal page to leave out
        capture = next(p for p in plugins if isinstance(p, CapturePlugin))
        context = taddons.context(core, capture)
        tctx = context.__enter__()
        tctx.configure(core, blueprint=str(path))
        made.append((context, plugins))
        return core, capture, path.parent

    yield make
    for context, plugins in made:
        for plugin in plugins:
            if hasattr(plugin, "done"):
                await plugin.done()
        context.__exit__(None, None, None)


async def finish(core: Backworks, flow: http.HTTPFlow) -> http.HTTPFlow:
    """The flow through the core's hooks, answered by the upstream when Backworks left it alone."""
    await core.requestheaders(flow)
    await core.request(flow)
    if flow.response is None:
        answered(flow, body={"path": flow.request.path})
    core.response(flow)
    return flow


def journal(folder: Path, name: str = "out.yaml.jsonl") -> list[Exchange]:
    return [Exchange.from_json(line) for line in (folder / name).read_text().splitlines()]


@pytest.mark.parametrize(
    ("config", "method", "host", "path", "wanted"),
    [
        ({}, "GET", "api.test", "/users/1", True),
        ({"include": ["/api/*"]}, "GET", "api.test", "/users/1", False),
        ({"include": ["/api/*"]}, "GET", "api.test", "/api/v1/users/1", True),
        ({"exclude": ["*.css", "/static/*"]}, "GET", "api.test", "/static/app.js", False),
        ({"exclude": ["*.css"]}, "GET", "api.test", "/a/b/site.css", False),
        ({"methods": ["post"]}, "GET", "api.test", "/users", False),
        ({"methods": ["post"]}, "POST", "api.test", "/users", True),
        ({"hosts": ["*.example.com"]}, "GET", "api.example.com", "/", True),
        ({"hosts": ["*.example.com"]}, "GET", "example.org", "/", False),
        ({"hosts": ["*.example.com"]}, "GET", "API.Example.com", "/", True),
    ],
)
def test_filters(config: dict, method: str, host: str, path: str, wanted: bool) -> None:
    assert CaptureFilter(CaptureConfig(**config)).wants(method, host, path) is wanted


def test_config_is_strict_and_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unknown HTTP method 'FETCH'"):
        CaptureConfig(methods=["fetch"])
    with pytest.raises(ValueError, match="expected a size: a number of bytes, or a string such as 512k"):
        CaptureConfig(max_body="lots")
    with pytest.raises(ValueError, match="format"):
        CaptureConfig(format="xml")
    assert CaptureConfig(output="x.yaml").journal_path == "x.yaml.jsonl"
    # the size type every other size key uses: "10mb" as well as "10m"
    assert CaptureConfig(max_body="10mb").max_body == CaptureConfig(max_body="10m").max_body == 10 << 20


async def test_each_finished_flow_is_in_the_journal_at_once_redacted(stack) -> None:  # type: ignore[no-untyped-def]
    core, capture, folder = await stack()
    flow = make_flow("POST", "/login?api_key=abc", headers={"Authorization": "Bearer secret-value", "Content-Type": "application/json"}, body='{"password": "hunter2"}')
    await finish(core, flow)
    recorded = journal(folder)  # before any save: already on disk
    assert len(recorded) == 1
    exchange = recorded[0]
    assert (exchange.method, exchange.path, exchange.status) == ("POST", "/login", 200)
    assert exchange.header("authorization", response=False) == f"Bearer {placeholder('secret-value')}"
    assert json.loads(exchange.request_body) == {"password": placeholder("hunter2")}
    assert exchange.query == [("api_key", placeholder("abc"))]
    text = (folder / "out.yaml.jsonl").read_text()
    assert "hunter2" not in text and "secret-value" not in text


async def test_backworks_own_pages_and_filtered_flows_are_not_recorded(stack) -> None:  # type: ignore[no-untyped-def]
    core, capture, folder = await stack("{output: out.yaml, exclude: [/health]}")
    await finish(core, make_flow("GET", "/__backworks/api/status", host="127.0.0.1", port=8080, sockname=("127.0.0.1", 8080)))
    await finish(core, make_flow("GET", "/health"))
    await finish(core, make_flow("GET", "/users/1"))
    assert [e.path for e in journal(folder)] == ["/users/1"]


async def test_a_flow_is_recorded_once_even_when_response_and_error_both_fire(stack) -> None:  # type: ignore[no-untyped-def]
    core, capture, folder = await stack()
    flow = await finish(core, make_flow("GET", "/users/1"))
    core.error(flow)
    core.response(flow)
    assert len(journal(folder)) == 1


async def test_bodies_over_max_body_are_left_out(stack) -> None:  # type: ignore[no-untyped-def]
    core, capture, folder = await stack("{output: out.yaml, max_body: 1k}")
    flow = make_flow("GET", "/big")
    await core.requestheaders(flow)
    await core.request(flow)
    flow.response = http.Response.make(200, b"x" * 5000, {"Content-Type": "text/plain"})
    core.response(flow)
    assert journal(folder)[0].response_body == b""


async def test_save_writes_the_output_and_done_writes_it_at_shutdown(stack) -> None:  # type: ignore[no-untyped-def]
    core, capture, folder = await stack("{output: mocks/out.yaml, max_examples: 3}")
    for user in (1, 2, 3, 4):
        await finish(core, make_flow("GET", f"/users/{user}"))
    summary = capture.save_command()
    assert "1 endpoint(s) from 4 flow(s)" in summary
    document = yaml.safe_load((folder / "mocks" / "out.yaml").read_text())
    assert document["name"] == "shop (captured)"
    assert [(e["method"], e["path"]) for e in document["endpoints"]] == [("GET", "/users/{user_id:int}")]
    assert len(document["endpoints"][0]["config"]["mock"]["examples"]) == 3

    await finish(core, make_flow("GET", "/orders"))
    await capture.done()  # as at Ctrl-C
    document = yaml.safe_load((folder / "mocks" / "out.yaml").read_text())
    assert {e["path"] for e in document["endpoints"]} == {"/users/{user_id:int}", "/orders"}


async def test_save_without_capture_configured_is_a_command_error() -> None:
    with pytest.raises(exceptions.CommandError, match="capture is not configured"):
        CapturePlugin().save_command()


async def test_an_unwritable_journal_is_an_options_error(stack, project) -> None:  # type: ignore[no-untyped-def]
    (project.root / "blocked").write_text("a file where a folder should be")
    with pytest.raises(exceptions.OptionsError, match="cannot write the journal"):
        await stack("{output: blocked/out.yaml}")


async def test_flows_backworks_handled_can_still_be_saved_by_mitmproxy(stack) -> None:  # type: ignore[no-untyped-def]
    """`-w FILE` and mitmweb's Save write flow.metadata: nothing Backworks keeps there may break that."""
    import io

    from mitmproxy import io as mitmproxy_io

    core, capture, folder = await stack()
    flows = [
        await finish(core, make_flow("GET", "/status")),  # answered by Backworks
        await finish(core, make_flow("GET", "/users/1")),  # passed through in reverse mode
        await finish(core, make_flow("GET", "/nothing", mode="regular")),  # someone else's traffic
    ]
    buffer = io.BytesIO()
    writer = mitmproxy_io.FlowWriter(buffer)
    for flow in flows:
        writer.add(flow)
    buffer.seek(0)
    read = list(mitmproxy_io.FlowReader(buffer).stream())
    assert [f.request.path for f in read] == ["/status", "/users/1", "/nothing"]
    assert read[0].metadata["backworks.request_id"] == flows[0].metadata["backworks.request_id"]


async def test_log_flows_prints_each_flow_redacted_as_the_journal(stack, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    core, capture, folder = await stack("{output: out.yaml, log_flows: true, exclude: [/health]}")
    with caplog.at_level("INFO", logger="addons.capture"):
        await finish(core, make_flow("GET", "/orders?api_key=abc123&token=t0k&page=2"))
        await finish(core, make_flow("GET", "/health?session=abc123"))
    lines = [r.getMessage() for r in caplog.records if r.name == "addons.capture" and " << " in r.getMessage()]
    assert len(lines) == 2, lines
    assert "GET http://" in lines[0] and f"/orders?api_key={placeholder('abc123')}&token={placeholder('t0k')}&page=2 << 200 OK" in lines[0]
    assert lines[1].endswith("(not recorded)") and f"session={placeholder('abc123')}" in lines[1]
    assert "abc123" not in caplog.text


async def test_a_secret_seen_once_is_scrubbed_from_later_flows_the_output_and_the_log(stack, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    core, capture, folder = await stack("{output: out.yaml, log_flows: true}")
    with caplog.at_level("INFO", logger="addons.capture"):
        await finish(core, make_flow("POST", "/login", headers={"Content-Type": "application/json"}, body='{"password": "hunter22x"}'))
        await finish(core, make_flow("GET", "/search?q=hunter22x"))  # the upstream echoes the path back
    text = (folder / "out.yaml.jsonl").read_text()
    assert "hunter22x" not in text and placeholder("hunter22x") in text
    later = journal(folder)[1]
    assert later.query == [("q", placeholder("hunter22x"))] and json.loads(later.response_body) == {"path": f"/search?q={placeholder('hunter22x')}"}
    assert "hunter22x" not in caplog.text
    capture.save()
    assert "hunter22x" not in (folder / "out.yaml").read_text()


async def test_without_log_flows_the_plugin_logs_no_flow(stack, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    core, capture, folder = await stack()
    with caplog.at_level("INFO", logger="addons.capture"):
        await finish(core, make_flow("GET", "/orders?api_key=abc123"))
    assert not [r for r in caplog.records if " << " in r.getMessage()]
