"""The fault middleware: delays and aborts at a percentage, or asked for by a request header."""

from __future__ import annotations

import pytest

from addons.fault import FaultMiddleware, HeaderError, Plan, parse_fault_header
from tests.unit.conftest import body_json, diagnostic_lines


def blueprint(config: str) -> str:
    return f"""
        name: faults
        middlewares:
          - name: chaos
            plugin: fault
            config: {config}
        endpoints:
          - path: /x
            handler: static
            middleware: [chaos]
            config: {{static: {{body: {{ok: true}}}}}}
        """


class Recorder:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def fault_of(gateway) -> tuple[FaultMiddleware, Recorder]:
    middleware = gateway.middlewares[0].instance
    assert isinstance(middleware, FaultMiddleware)
    sleep = Recorder()
    middleware.sleep = sleep
    return middleware, sleep


async def test_delay_and_abort_at_100_percent(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint(blueprint("{delay: {duration: 250ms}, abort: {status: 503}}")))
    _, sleep = fault_of(gateway)
    flow = await send(gateway, "GET", "/x")
    assert sleep.slept == [0.25]
    assert flow.response.status_code == 503
    body = body_json(flow.response)
    assert body == {"error": "fault injected by middleware 'chaos' (abort=503)", "status": 503, "request_id": flow.response.headers["X-Request-ID"]}
    assert "fault=delay=250ms+abort=503" in flow.comment
    assert flow.marked == ""  # marks are set by the core's response hook


async def test_percentages_use_the_random_source(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint(blueprint("{delay: {duration: 1s, percent: 30}, abort: {status: 500, percent: 10, body: chaos monkey}}")))
    middleware, sleep = fault_of(gateway)
    rolls = iter([0.29, 0.10, 0.30, 0.09])  # delay yes, abort no; delay no, abort yes
    middleware.rng = lambda: next(rolls)
    first = await send(gateway, "GET", "/x")
    assert first.response.status_code == 200 and sleep.slept == [1.0]
    assert "fault=delay=1000ms" in first.comment
    second = await send(gateway, "GET", "/x")
    assert second.response.status_code == 500 and sleep.slept == [1.0]
    assert body_json(second.response)["error"] == "chaos monkey"


async def test_zero_percent_never(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint(blueprint("{abort: {status: 503, percent: 0}}")))
    middleware, _ = fault_of(gateway)
    middleware.rng = lambda: 0.0
    flow = await send(gateway, "GET", "/x")
    assert flow.response.status_code == 200 and "fault=" not in flow.comment


async def test_header_ignored_unless_allowed(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint(blueprint("{delay: {duration: 1s, percent: 0}}")))
    _, sleep = fault_of(gateway)
    flow = await send(gateway, "GET", "/x", headers={"X-Backworks-Fault": "abort=503"})
    assert flow.response.status_code == 200 and sleep.slept == []
    assert flow.request.headers["X-Backworks-Fault"] == "abort=503"


async def test_header_when_allowed(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint(blueprint("{delay: {duration: 1s, percent: 0}, abort: {status: 502, percent: 0}, allow_header: true, header: X-Chaos}")))
    _, sleep = fault_of(gateway)
    flow = await send(gateway, "GET", "/x", headers={"X-Chaos": "delay=250ms, abort=503"})
    assert sleep.slept == [0.25] and flow.response.status_code == 503
    assert "fault=delay=250ms+abort=503+header" in flow.comment
    assert "X-Chaos" not in flow.request.headers
    on = await send(gateway, "GET", "/x", headers={"x-chaos": "on"})
    assert sleep.slept == [0.25, 1.0] and on.response.status_code == 502
    bad = await send(gateway, "GET", "/x", headers={"X-Chaos": "explode"})
    assert bad.response.status_code == 400
    assert body_json(bad.response)["error"].startswith("X-Chaos: expected on, off")
    plain = await send(gateway, "GET", "/x")
    assert plain.response.status_code == 200


async def test_off_skips_configured_faults(project, compile_gateway, send) -> None:
    gateway = compile_gateway(project.blueprint(blueprint("{abort: {status: 503}, allow_header: true}")))
    flow = await send(gateway, "GET", "/x", headers={"X-Backworks-Fault": "off"})
    assert flow.response.status_code == 200


def test_an_open_switch_header_is_a_located_warning(project, compile_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = compile_gateway(project.blueprint(blueprint("{abort: {status: 503}, allow_header: true, header: X-Chaos}")))
    assert [str(w).split(": warning: ", 1)[1] for w in gateway.warnings] == [
        "middlewares[0].config.allow_header: any client can inject faults with the X-Chaos header: for test environments only"
    ]
    quiet = compile_gateway(project.blueprint(blueprint("{abort: {status: 503}}")))
    assert quiet.warnings == []


def test_parse_fault_header() -> None:
    assert parse_fault_header("on", 10) == "on"
    assert parse_fault_header("delay=1s", 10) == Plan(1.0, None)
    assert parse_fault_header("abort=429,delay=5ms", 10) == Plan(0.005, 429)
    for bad in ("delay=20s", "abort=200", "abort=x", "delay=soon", "", "on,off", "pause=1s"):
        with pytest.raises(HeaderError):
            parse_fault_header(bad, 10)


def test_config_errors(project, load_errors) -> None:
    path = project.blueprint(blueprint("{delay: {percent: 150}, abort: {status: 200}, mode: x}"))
    lines = diagnostic_lines(load_errors(path))
    joined = "\n".join(lines)
    assert "middlewares[0].config.delay.duration" in joined
    assert "middlewares[0].config.delay.percent" in joined
    assert "middlewares[0].config.abort.status" in joined
    assert "middlewares[0].config.mode" in joined
    empty = project.blueprint(blueprint("{path: /x}"), name="empty.yaml")
    assert any("needs `delay`, `abort`, or `allow_header: true`" in line for line in diagnostic_lines(load_errors(empty)))
