"""addons.dashboard: target states, and the status the page shows, against a real core and proxy plugin.

No network: the proxy's pool is built from the blueprint, and the flows fed to Dashboard.observe
carry the RequestRecord (with its Attempts) the proxy handler would have written.
"""

from __future__ import annotations

from backworks_core.flowstate import flow_state, peek_state

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mitmproxy import exceptions
from mitmproxy import flow as mflow
from mitmproxy.test import taddons, tutils

from addons import builtin_plugins
from addons.core import Backworks
from addons.dashboard import API_SUFFIX, RECENT_ERRORS, REFUSED_ERRORS_SHOWN, Dashboard, judge_target, page_html, target_state
from addons.proxy import ProxyPlugin
from backworks_core.plugins import PluginRegistry
from backworks_core.telemetry import Attempt, RequestRecord

from .conftest import FakeClock, body_json, make_flow

REVERSE = "reverse:http://127.0.0.1:9"
START = 946681200.0  # tutils.treq's timestamp_start


def row(health: str = "unchecked", ejected: bool = False, breaker: str = "none") -> dict[str, Any]:
    return {"health": health, "ejected": ejected, "breaker": breaker}


@pytest.mark.parametrize(
    "target, error_rate, window_requests, state",
    [
        (row(), None, 0, "up"),
        (row(health="healthy", breaker="closed"), 0.0, 100, "up"),
        (row(health="unhealthy"), None, 0, "down"),
        (row(ejected=True), 0.0, 10, "down"),
        (row(breaker="open"), None, 0, "down"),
        (row(health="unhealthy", breaker="half_open"), 0.5, 10, "down"),  # down wins over degraded
        (row(breaker="half_open"), None, 0, "degraded"),
        (row(), 0.2, 5, "degraded"),  # more than one in ten failed, with enough requests
        (row(), 0.11, 100, "degraded"),
        (row(), 0.1, 100, "up"),  # exactly one in ten is not "more than"
        (row(), 1.0, 4, "up"),  # too few requests to judge
        (row(health="healthy"), 0.0, 5, "up"),
    ],
)
def test_target_state(target: dict[str, Any], error_rate: float | None, window_requests: int, state: str) -> None:
    assert target_state(target, error_rate, window_requests) == state


# -- a core with the proxy plugin and the dashboard -----------------------------------------

BLUEPRINT = """
name: status-test
version: "2.1"
{dashboard}
plugins:
  metrics: {{}}
  proxy:
    config:
      targets:
        - {{name: a, url: "http://127.0.0.1:1"}}
        - {{name: b, url: "http://127.0.0.1:2"}}
server: {{unmatched: {unmatched}, admin: {{expose_on_api: {expose}}}}}
endpoints:
  - path: /hello
    handler: static
    config: {{static: {{body: hi}}}}
  - path: "/api/{{rest:path}}"
    method: ANY
    handler: proxy
"""


class Stack:
    def __init__(self) -> None:
        registry = PluginRegistry(builtin_plugins())
        self.plugins = [plugin() for plugin in registry.plugins.values()]
        self.proxy = next(p for p in self.plugins if isinstance(p, ProxyPlugin))
        self.core = Backworks(registry, self.plugins)
        self.clock = FakeClock(5000.0)
        self.wall = FakeClock(START + 0.25)  # every flow took 250 ms, end to end
        self.dashboard = Dashboard(self.core, clock=self.clock, wall=self.wall)
        self.core.extensions.append(self.dashboard)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    made = Stack()
    yield made
    for plugin in made.plugins:
        if hasattr(plugin, "done"):
            await plugin.done()


def write(project, dashboard: str = "", unmatched: str = "not_found", expose: bool = True):  # type: ignore[no-untyped-def]
    """The pages are on the API's listener too (server.admin.expose_on_api) unless `expose` is false."""
    return project.blueprint(BLUEPRINT.format(dashboard=dashboard, unmatched=unmatched, expose=str(expose).lower()))


def proxied(request_id: str, attempts: list[tuple[str, int | None, float]], status: int | None, *, error: str | None = None, path: str = "/api/users"):  # type: ignore[no-untyped-def]
    """A finished flow as the proxy handler leaves it: one Attempt per (target, status, seconds)."""
    flow = make_flow("GET", path, mode=REVERSE)
    record = RequestRecord(
        request_id=request_id,
        method="GET",
        endpoint="/api/{rest:path}",
        endpoint_label="ANY /api/{rest:path}",
        pool="default",
        attempts=[Attempt("default", t, "2xx" if s is not None and s < 300 else "5xx" if s else "connect_failure", secs, s) for t, s, secs in attempts],
        error=error,
    )
    flow_state(flow).record = record
    if status is not None:
        flow.response = tutils.tresp(status_code=status)
    else:
        flow.error = mflow.Error("connection reset by the client")
    return flow


def target_rows(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [pool] = status["pools"]
    return {r["name"]: r for r in pool["targets"]}


async def test_per_target_requests_error_rate_and_latency(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        endpoint_label = next(e.label for e in stack.core.gateway.endpoints if e.template.startswith("/api"))
        for index in range(8):  # a answers well, 10 ms each
            stack.dashboard.observe(proxied(f"ok-{index}", [("a", 200, 0.010)], 200))
        for index in range(2):  # b fails, then a answers
            stack.dashboard.observe(proxied(f"retry-{index}", [("b", 502, 0.100), ("a", 200, 0.030)], 200))
        stack.dashboard.observe(proxied("down", [("b", None, 0.5)], 502, error="no target answered"))
        stack.clock.advance(2.0)
        status = stack.dashboard.status()
        rows = target_rows(status)
        assert [p["name"] for p in status["pools"]] == ["default"]
        assert rows["a"]["requests"] == 10 and rows["b"]["requests"] == 3
        assert rows["a"]["error_rate"] == 0.0 and rows["b"]["error_rate"] == 1.0
        assert rows["a"]["latency_ms"] == {"p50": 10.0, "p90": 30.0, "p99": 30.0}
        assert rows["b"]["latency_ms"] == {"p50": 100.0, "p90": 500.0, "p99": 500.0}
        assert rows["a"]["rate_per_s"] == 5.0  # 10 tries over the 2 seconds since the window began
        assert (rows["a"]["state"], rows["b"]["state"]) == ("up", "up")  # b: only 3 tries, too few to judge
        assert rows["a"]["url"] == "http://127.0.0.1:1" and rows["a"]["label"] == "a"
        assert (rows["a"]["health"], rows["a"]["breaker"], rows["a"]["ejected"], rows["a"]["in_flight"]) == ("unchecked", "none", False, 0)
        totals = status["totals"]
        assert totals["requests"] == 11
        assert totals["error_rate"] == round(1 / 11, 4)
        assert totals["latency_ms"]["p50"] == 250.0  # the flows' own duration, not the tries'
        endpoints = {e["label"]: e for e in status["endpoints"]}
        assert endpoints[endpoint_label]["requests"] == 11
        assert endpoints["GET /hello"]["requests"] == 0
        assert endpoints["GET /hello"]["latency_ms"] == {"p50": None, "p90": None, "p99": None}
        assert status["blueprint"]["name"] == "status-test" and status["blueprint"]["version"] == "2.1"
        assert status["uptime_seconds"] == 2.0


async def test_a_target_failing_often_is_degraded(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        for index in range(5):
            stack.dashboard.observe(proxied(f"r{index}", [("b", 500 if index < 2 else 200, 0.01)], 200))
        assert target_rows(stack.dashboard.status())["b"]["state"] == "degraded"
        assert target_rows(stack.dashboard.status())["a"]["state"] == "up"


async def test_endpoint_rows_exclude_internal_endpoints(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        internal = {e.template for e in stack.core.gateway.endpoints if e.internal}
        assert internal == {"/__backworks", "/__backworks" + API_SUFFIX, "/metrics"}
        rows = stack.dashboard.status()["endpoints"]
        assert [(r["path"], r["methods"], r["handler"]) for r in rows] == [("/hello", ["GET"], "static"), ("/api/{rest:path}", ["ANY"], "proxy")]


async def test_recent_errors_newest_first_and_capped(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        stack.dashboard.observe(proxied("fine", [("a", 200, 0.01)], 200))  # no error row
        for index in range(RECENT_ERRORS + 10):
            stack.dashboard.observe(proxied(f"err-{index:02d}", [("a", 503, 0.01)], 503, path=f"/api/x?secret={index}"))
        errors = stack.dashboard.status()["recent_errors"]
        assert len(errors) == RECENT_ERRORS == 50
        assert [e["request_id"] for e in errors[:2]] == ["err-59", "err-58"]
        assert errors[-1]["request_id"] == "err-10"
        assert errors[0] == {
            "time": "1999-12-31T23:00:00Z",  # the wall clock: START + 0.25 s
            "request_id": "err-59",
            "method": "GET",
            "path": "/api/x",  # no query string
            "endpoint": "ANY /api/{rest:path}",
            "status": 503,
            "message": "the upstream answered 503",
            "target": "a",
        }


async def test_error_rows_say_what_went_wrong(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        stack.dashboard.observe(proxied("gone", [("a", 200, 0.01)], None))  # client went away
        stack.dashboard.observe(proxied("own", [("b", None, 0.01)], 502, error="no target answered"))
        errors = stack.dashboard.status()["recent_errors"]
        assert [(e["request_id"], e["status"], e["message"]) for e in errors] == [
            ("own", 502, "no target answered"),
            ("gone", None, "connection reset by the client"),
        ]


async def test_backworks_own_4xx_is_listed_but_not_counted_as_failed(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        flow = make_flow("GET", "/nothing", mode=REVERSE)
        await stack.core.request(flow)
        stack.dashboard.observe(flow)
        status = stack.dashboard.status()
        assert status["totals"]["requests"] == 1 and status["totals"]["error_rate"] == 0.0
        [error] = status["recent_errors"]
        assert (error["status"], error["message"], error["endpoint"]) == (404, "no endpoint matches GET /nothing", "(unmatched)")


async def test_internal_requests_are_not_counted(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        hello = make_flow("GET", "/hello", mode=REVERSE)
        await stack.core.request(hello)
        stack.dashboard.observe(hello)
        for path in ("/__backworks", "/__backworks/api/status", "/metrics"):
            flow = make_flow("GET", path, mode=REVERSE)
            await stack.core.request(flow)
            assert flow.response.status_code == 200, path
            stack.dashboard.observe(flow)
        api = make_flow("GET", "/__backworks/api/status", mode=REVERSE)
        await stack.core.request(api)
        body = body_json(api.response)
        assert body["totals"]["requests"] == 1
        assert {e["label"]: e["requests"] for e in body["endpoints"]}["GET /hello"] == 1
        assert body["recent_errors"] == []


async def test_passthrough_bystanders_are_not_counted(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project, unmatched="passthrough")))
        bystander = make_flow("GET", "/elsewhere", mode="regular", host="example.org")
        await stack.core.request(bystander)
        assert bystander.response is None  # passed through, untouched
        assert flow_state(bystander).record.request_id == ""
        bystander.response = tutils.tresp(status_code=500)  # whatever the real server says
        stack.dashboard.observe(bystander)
        status = stack.dashboard.status()
        assert status["totals"]["requests"] == 0 and status["recent_errors"] == []
        # in reverse mode, an unmatched request passed to Backworks' own upstream counts
        own = make_flow("GET", "/elsewhere", mode=REVERSE)
        await stack.core.request(own)
        assert own.response is None and flow_state(own).record.request_id
        own.response = tutils.tresp(status_code=200)
        stack.dashboard.observe(own)
        assert stack.dashboard.status()["totals"]["requests"] == 1


async def test_each_flow_is_counted_once(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        flow = proxied("twice", [("b", 502, 0.01)], 502, error="no target answered")
        stack.dashboard.observe(flow)
        flow.error = mflow.Error("and then the client went away")
        stack.dashboard.observe(flow)
        stack.dashboard.observe(flow)
        status = stack.dashboard.status()
        assert status["totals"]["requests"] == 1
        assert target_rows(status)["b"]["requests"] == 1
        assert len(status["recent_errors"]) == 1


async def test_a_reload_forgets_targets_and_endpoints_that_are_gone(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        path = write(project)
        tctx.configure(stack.core, blueprint=str(path))
        stack.dashboard.observe(proxied("x", [("b", 200, 0.01)], 200))
        assert ("default", "b") in stack.dashboard.targets
        path.write_text(path.read_text().replace('- {name: b, url: "http://127.0.0.1:2"}', ""))
        assert stack.core.reload()
        assert ("default", "b") not in stack.dashboard.targets
        assert list(target_rows(stack.dashboard.status())) == ["a"]
        assert stack.dashboard.status()["totals"]["requests"] == 1  # the totals stay


async def test_status_command(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        stack.dashboard.observe(proxied("x", [("a", 200, 0.01)], 200))
        lines = tctx.command(stack.dashboard.status_command)
        assert lines[0].startswith("a: up health=unchecked breaker=none in_flight=0")
        assert lines[1].startswith("b: up ")
        assert lines[-1].startswith("all: 1 requests, in_flight=0")
        assert "errors=0.0%" in lines[-1]


# -- where the page is served ---------------------------------------------------------------


async def test_disabled_dashboard_has_no_internal_endpoints(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project, "dashboard: {enabled: false}")))
        assert {e.template for e in stack.core.gateway.endpoints if e.internal} == {"/metrics"}
        flow = make_flow("GET", "/__backworks", mode=REVERSE)
        await stack.core.request(flow)
        assert flow.response.status_code == 404


async def test_without_the_opt_in_the_pages_are_for_the_admin_listener_only(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project, expose=False)))
        assert not any(e.internal for e in stack.core.gateway.endpoints)
        assert {p.path for p in stack.core.gateway.admin_pages} == {"/__backworks", "/__backworks" + API_SUFFIX, "/metrics"}
        for path in ("/__backworks", "/__backworks/api/status", "/metrics"):
            flow = make_flow("GET", path, mode=REVERSE)
            await stack.core.request(flow)
            assert flow.response.status_code == 404, path


async def test_without_the_opt_in_the_dashboard_path_may_be_an_endpoint_path(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    """The admin listener and the API's are two listeners: the same path on both is no clash."""
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project, "dashboard: {path: /hello}", expose=False)))
        flow = make_flow("GET", "/hello", mode=REVERSE)
        await stack.core.request(flow)
        assert flow.response.get_content() == b"hi"
        assert "/hello" in {p.path for p in stack.core.gateway.admin_pages}


async def test_dashboard_at_a_custom_path(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project, "dashboard: {path: /ops/}")))
        assert {e.template for e in stack.core.gateway.endpoints if e.internal} == {"/ops", "/ops/api/status", "/metrics"}
        flow = make_flow("GET", "/ops/api/status", mode=REVERSE)
        await stack.core.request(flow)
        assert body_json(flow.response)["blueprint"]["name"] == "status-test"


async def test_dashboard_is_not_served_to_proxied_traffic(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    """A client using Backworks as its proxy asks some other host for /__backworks: not ours to answer."""
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        flow = make_flow("GET", "/__backworks/api/status", mode="regular", host="example.org")
        await stack.core.request(flow)
        assert flow.response.status_code == 404
        assert body_json(flow.response)["error"] == "no endpoint matches GET /__backworks/api/status"


async def test_dashboard_path_on_an_endpoint_path_is_a_located_error(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    path = write(project, "dashboard: {path: /hello}")
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        with pytest.raises(exceptions.OptionsError) as info:
            tctx.configure(stack.core, blueprint=str(path))
    text = str(info.value)
    assert f"{path}:3:19: dashboard.path: /hello (the status page) is also the path of endpoints[0] (GET /hello); set dashboard.path to another path, or move the endpoint" in text
    assert text.startswith(f"{path}: 1 error in blueprint")


async def test_dashboard_path_on_the_metrics_path_is_a_located_error(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    path = write(project, "dashboard: {path: /metrics}")
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        with pytest.raises(exceptions.OptionsError) as info:
            tctx.configure(stack.core, blueprint=str(path))
    assert "dashboard.path: /metrics is also the path of plugins.metrics.config.path (the Prometheus metrics)" in str(info.value)


# -- the page -------------------------------------------------------------------------------


async def test_the_page_has_its_api_url(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    html = page_html("/ops/api/status").decode()
    assert "{{API_URL}}" not in html
    assert '"/ops/api/status"' in html
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        flow = make_flow("GET", "/__backworks", mode=REVERSE)
        await stack.core.request(flow)
        assert flow.response.status_code == 200
        assert flow.response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert flow.response.headers["Cache-Control"] == "no-store"
        assert "default-src 'self'" in flow.response.headers["Content-Security-Policy"]
        page = flow.response.get_content().decode()
        assert "{{API_URL}}" not in page
        assert json.dumps("/__backworks/api/status") in page


# -- issue 21: why a target is in its state -----------------------------------------------------


@pytest.mark.parametrize(
    "target, evidence, expected",
    [
        (row(), {"failures_in_a_row": 3, "failure_kind": "connect_failure"}, ("down", "no answer to the last 3 tries (connect failed)")),
        (row(), {"failures_in_a_row": 2, "failure_kind": "connect_failure"}, ("up", "")),
        (row(breaker="half_open"), {"failures_in_a_row": 5, "failure_kind": "timeout"}, ("down", "no answer to the last 5 tries (timeout)")),
        (row(health="unhealthy"), {"check_result": "connection refused"}, ("down", "health check failing (connection refused)")),
        (row(health="healthy"), {"check_result": "status 503"}, ("degraded", "last health check failed (status 503)")),
        (row(health="healthy"), {"check_result": "passed"}, ("up", "")),
        (row(ejected=True), {}, ("down", "ejected by outlier detection")),
        (row(breaker="open"), {}, ("down", "circuit breaker open")),
    ],
)
def test_judge_target_says_why(target: dict[str, Any], evidence: dict[str, Any], expected: tuple[str, str]) -> None:
    assert judge_target(target, None, 0, **evidence) == expected
    assert target_state(target, None, 0, **evidence) == expected[0]


def proxied_failure(request_id: str, target: str, kind: str) -> Any:
    """A flow whose only try got no answer at all (`kind`: connect_failure, timeout, reset)."""
    flow = proxied(request_id, [(target, None, 0.001)], 502, error=f"target {target}: connect failed")
    record = flow_state(flow).record
    record.attempts = [Attempt("default", target, kind, 0.001, None)]
    return flow


async def test_a_refusing_target_reads_down_with_its_last_error(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    """No health check, no breaker: a target refusing every connection still reads down (issue 21)."""
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        for index in range(5):
            stack.dashboard.observe(proxied_failure(f"r{index}", "b", "connect_failure"))
            stack.wall.advance(1)
        rows = target_rows(stack.dashboard.status())
        assert (rows["b"]["state"], rows["b"]["health"]) == ("down", "unchecked")
        assert rows["b"]["state_reason"] == "no answer to the last 5 tries (connect failed)"
        assert rows["b"]["last_error"] == {"at": "1999-12-31T23:00:04Z", "kind": "connect_failure", "status": None}
        assert rows["b"]["failures_in_a_row"] == 5
        assert rows["b"]["last_check"] is None
        assert (rows["a"]["state"], rows["a"]["last_error"]) == ("up", None)
        assert "127.0.0.1" not in json.dumps(rows["b"]["last_error"]) + rows["b"]["state_reason"]
        # one answer, even a 5xx, means it is reachable again; the last error stays on show
        stack.dashboard.observe(proxied("back", [("b", 503, 0.01)], 503))
        rows = target_rows(stack.dashboard.status())
        assert rows["b"]["failures_in_a_row"] == 0 and rows["b"]["state"] != "down"
        assert rows["b"]["last_error"]["kind"] == "5xx" and rows["b"]["last_error"]["status"] == 503
        line = next(line for line in tctx.command(stack.dashboard.status_command) if line.startswith("b:"))
        assert line.startswith("b: degraded (")


async def test_a_target_that_moves_to_another_url_starts_afresh(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        path = write(project)
        tctx.configure(stack.core, blueprint=str(path))
        for index in range(3):
            stack.dashboard.observe(proxied_failure(f"r{index}", "b", "timeout"))
        stack.dashboard.observe(proxied_failure("a1", "a", "timeout"))
        assert target_rows(stack.dashboard.status())["b"]["state"] == "down"
        path.write_text(path.read_text().replace("http://127.0.0.1:2", "http://127.0.0.1:3"))
        assert stack.core.reload()
        rows = target_rows(stack.dashboard.status())
        assert (rows["b"]["state"], rows["b"]["last_error"], rows["b"]["requests"]) == ("up", None, 0)
        assert rows["a"]["last_error"]["kind"] == "timeout"  # same URL: kept


class CheckedPool:
    """A pool as the dashboard reads it, with a health checker's status (no network, no tasks)."""

    name = "default"

    class config:
        load_balancing = "round_robin"

    def __init__(self, checks: dict[str, dict[str, Any]], health: dict[str, str]) -> None:
        self.checks, self.health_of = checks, health
        self.health = self

    def status(self) -> dict[str, dict[str, Any]]:
        return self.checks

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"target": name, "name": name, "url": f"http://127.0.0.1:{port}", "health": self.health_of[name], "ejected": False, "breaker": "none", "in_flight": 0}
            for port, name in enumerate(self.health_of, 1)
        ]


async def test_the_last_health_check_is_shown_and_a_failing_one_is_never_up(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        checked = {"checked": True, "last_check": START, "consecutive_failures": 1}
        pool = CheckedPool(
            {"a": {**checked, "healthy": True, "last_result": "passed"}, "b": {**checked, "healthy": True, "last_result": "connection refused"}, "c": {**checked, "healthy": False, "last_result": "timeout"}},
            {"a": "healthy", "b": "healthy", "c": "unhealthy"},
        )
        stack.core.live_pools = lambda: [pool]  # type: ignore[method-assign]
        rows = target_rows(stack.dashboard.status())
        assert rows["a"]["last_check"] == {"at": "1999-12-31T23:00:00Z", "result": "passed"}
        assert (rows["a"]["state"], rows["b"]["state"], rows["c"]["state"]) == ("up", "degraded", "down")
        assert rows["b"]["state_reason"] == "last health check failed (connection refused)"
        assert rows["c"]["state_reason"] == "health check failing (timeout)"


# -- issue 21: answers by status class, the last 15 minutes, favicon noise ------------------------


async def test_answers_by_status_class_per_endpoint_and_in_total(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        for index, status in enumerate((200, 201, 302, 404, 503)):
            stack.dashboard.observe(proxied(f"c{index}", [("a", status, 0.01)], status))
        stack.dashboard.observe(proxied("gone", [("a", 200, 0.01)], None))  # no answer
        missing = make_flow("GET", "/nothing", mode=REVERSE)
        await stack.core.request(missing)
        stack.dashboard.observe(missing)
        status = stack.dashboard.status()
        assert status["totals"]["classes"] == {"1xx": 0, "2xx": 2, "3xx": 1, "4xx": 2, "5xx": 1, "none": 1}
        endpoints = {e["label"]: e for e in status["endpoints"]}
        assert endpoints["ANY /api/{rest:path}"]["classes"] == {"1xx": 0, "2xx": 2, "3xx": 1, "4xx": 1, "5xx": 1, "none": 1}
        assert endpoints["GET /hello"]["classes"] == dict.fromkeys(("1xx", "2xx", "3xx", "4xx", "5xx", "none"), 0)
        history = status["history"]
        assert history["minutes"] == 15 and len(history["buckets"]) == 15
        now = history["buckets"][-1]
        assert now["current"] and now["start"] == "1999-12-31T23:00:00Z"
        assert (now["requests"], now["errors"]) == (7, 2)
        assert now["classes"] == status["totals"]["classes"]
        assert now["latency_ms"]["max"] == 250.0


async def test_a_browsers_own_favicon_request_is_counted_but_not_listed(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        tctx.configure(stack.core, blueprint=str(write(project)))
        for path in ("/favicon.ico", "/apple-touch-icon.png", "/favicon.ico?v=2", "/favicon.icon"):
            flow = make_flow("GET", path, mode=REVERSE)
            await stack.core.request(flow)
            assert flow.response.status_code == 404
            stack.dashboard.observe(flow)
        status = stack.dashboard.status()
        assert status["totals"]["classes"]["4xx"] == 4
        assert [e["path"] for e in status["recent_errors"]] == ["/favicon.icon"]  # only the real miss


# -- issue 21: a refused reload -------------------------------------------------------------------


BROKEN = "\nendpoints:\n  - path: /broken\n    handler: nosuch\n  - path: /worse\n    method: FETCH\n    handler: static\n"


async def test_a_refused_reload_is_in_the_status_until_the_next_good_one(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        path = write(project)
        good = path.read_text()
        tctx.configure(stack.core, blueprint=str(path))
        assert stack.dashboard.status()["blueprint"]["reload"] == {"state": "ok", "at": "1999-12-31T23:00:00Z", "file": None, "error_count": 0, "errors": []}
        stack.core.wall = lambda: START + 60  # type: ignore[method-assign]
        path.write_text(good.split("endpoints:")[0] + BROKEN)
        assert not stack.core.reload()  # what the watcher calls on a change
        blueprint = stack.dashboard.status()["blueprint"]
        reload = blueprint["reload"]
        assert blueprint["loaded_at"] == "1999-12-31T23:00:00Z"  # the previous version, still served
        assert (reload["state"], reload["at"], reload["file"]) == ("refused", "1999-12-31T23:01:00Z", str(path))
        assert reload["error_count"] == len(reload["errors"]) >= 2
        first = reload["errors"][0]
        assert first["file"] == str(path) and first["line"] and first["col"] and first["key_path"].startswith("endpoints[0]")
        assert first["text"].startswith(f"{path}:{first['line']}:{first['col']}: endpoints[0]")
        lines = tctx.command(stack.dashboard.status_command)
        assert lines[0].startswith(f"reload refused at 1999-12-31T23:01:00Z: {path} has {reload['error_count']} errors; the previous version keeps serving")
        assert lines[1] == "  " + first["text"]
        # the backworks.reload command records it too (and still fails)
        stack.core.wall = lambda: START + 120  # type: ignore[method-assign]
        with pytest.raises(exceptions.CommandError):
            stack.core.reload_command()
        assert stack.dashboard.status()["blueprint"]["reload"]["at"] == "1999-12-31T23:02:00Z"
        # the next good load clears it
        path.write_text(good)
        assert stack.core.reload()
        assert stack.dashboard.status()["blueprint"]["reload"]["state"] == "ok"
        assert stack.core.refused is None


async def test_a_refused_reload_shows_only_the_first_errors(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        path = write(project)
        tctx.configure(stack.core, blueprint=str(path))
        many = "\nendpoints:\n" + "".join(f"  - path: /b{i}\n    handler: nosuch{i}\n" for i in range(REFUSED_ERRORS_SHOWN + 3))
        path.write_text(path.read_text().split("endpoints:")[0] + many)
        assert not stack.core.reload()
        reload = stack.dashboard.status()["blueprint"]["reload"]
        assert reload["error_count"] == REFUSED_ERRORS_SHOWN + 3
        assert len(reload["errors"]) == REFUSED_ERRORS_SHOWN == 5


async def test_setting_a_broken_blueprint_while_serving_is_a_refused_reload(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        path = write(project)
        tctx.configure(stack.core, blueprint=str(path))
        broken = project.blueprint("name: x\nendpoints: 7\n", name="broken.yaml")
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(stack.core, blueprint=str(broken))
        assert stack.dashboard.status()["blueprint"]["reload"]["file"] == str(broken)
        assert stack.dashboard.status()["blueprint"]["name"] == "status-test"


async def test_a_blueprint_refused_at_startup_is_an_error_not_a_record(project, stack: Stack) -> None:  # type: ignore[no-untyped-def]
    with taddons.context(stack.core, stack.dashboard, stack.proxy) as tctx:
        broken = project.blueprint("name: x\nendpoints: 7\n", name="broken.yaml")
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(stack.core, blueprint=str(broken))
        assert stack.core.refused is None
