"""The proxy plugin's wiring of health checks, outlier detection and circuit breakers.

Pool state is driven with an injected clock; requests go through a compiled gateway to real
aiohttp servers on 127.0.0.1 in the test's own event loop; the plugin's lifecycle and commands
run under mitmproxy's taddons.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import textwrap
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons import builtin_plugins
from addons.breaker import HALF_OPEN_RETRY_AFTER
from addons.core import Backworks
from addons.proxy.plugin import ProxyPlugin
from addons.proxy.pool import Pool
from addons.proxy.settings import PoolConfig
from backworks_core.plugins import PluginRegistry
from backworks_core.upstream import UpstreamClient

from .conftest import FakeClock, body_json, make_flow

HEALTH_UA = "backworks-health-check"




class Backend:
    """A real HTTP server on 127.0.0.1, in this test's loop: answers `status` after `delay`.

    Health probes (recognised by their User-Agent) get `health_status` at once. Every request is
    counted, and requests in flight too.
    """

    def __init__(self, name: str, status: int = 200, delay: float = 0.0, health_status: int = 200) -> None:
        self.name = name
        self.status = status
        self.delay = delay
        self.health_status = health_status
        self.requests: list[str] = []
        self.probes: list[str] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.connections: set[Any] = set()  # the client ends of the connections requests came on
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        if request.headers.get("User-Agent") == HEALTH_UA:
            self.probes.append(request.path)
            return web.Response(status=self.health_status, text="health")
        self.requests.append(request.path)
        self.connections.add(request.transport.get_extra_info("peername") if request.transport else None)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            return web.json_response({"upstream": self.name}, status=self.status)
        finally:
            self.in_flight -= 1

    async def start(self) -> Backend:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[Backend]]]:
    started: list[Backend] = []

    async def make(name: str, **kwargs: Any) -> Backend:
        backend = await Backend(name, **kwargs).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await backend.stop()


def pool_config(targets: list[tuple[str, str]], **settings: Any) -> PoolConfig:
    return PoolConfig.model_validate({"targets": [{"name": n, "url": u} for n, u in targets], **settings})


UNROUTABLE = [("a", "http://127.0.0.1:1"), ("b", "http://127.0.0.1:2"), ("c", "http://127.0.0.1:3")]


def names(backends: list[Any]) -> list[str]:
    return [b.name for b in backends]


def fail(pool: Pool, target: str, times: int, outcome: str | int = "connect_failure") -> None:
    """`times` failed tries on `target`, recorded as the handler records them."""
    for _ in range(times):
        breaker = pool.breakers.get(target)
        permit = breaker.try_acquire() if breaker is not None else None
        pool.record(target, outcome, permit)


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what}: not after {timeout}s")


async def at_once(send, gateway, count: int) -> list[Any]:  # type: ignore[no-untyped-def]
    """`count` GET requests sent together (paths /x0, /x1, ...), their flows in order; 10 s at most."""
    return list(await asyncio.wait_for(asyncio.gather(*(send(gateway, "GET", f"/x{i}") for i in range(count))), 10))


def health_tasks() -> set[str]:
    return {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("health check") and not t.done()}


# -- Pool: which targets may take a try ------------------------------------------------------------


def test_candidates_exclude_open_breakers_and_ejected_targets() -> None:
    clock = FakeClock()
    config = pool_config(
        UNROUTABLE,
        circuit_breaker={"failure_threshold": 2, "recovery_timeout": 30},
        outlier_detection={"consecutive_failures": 3, "base_ejection_time": 10, "max_ejection_percent": 100},
    )
    pool = Pool("default", config, clock=clock)
    assert names(pool.candidates(set())) == ["a", "b", "c"]
    fail(pool, "a", 2)  # its breaker opens (the detector has seen only 2 failures)
    assert pool.breakers["a"].state == "open" and not pool.outliers.is_ejected("a")
    for _ in range(3):  # ejected, its breaker untouched
        pool.outliers.record("b", True, "500")
    assert pool.outliers.is_ejected("b") and pool.breakers["b"].state == "closed"
    assert [pool.available(n) for n in "abc"] == [False, False, True]
    assert names(pool.candidates(set())) == ["c"]
    assert names(pool.candidates({"c"})) == ["c"]  # a tried target is better than none
    clock.advance(10)  # b's ejection is over
    assert names(pool.candidates(set())) == ["b", "c"]
    assert names(pool.candidates({"c"})) == ["b"]
    clock.advance(20)  # a's breaker lets a trial through
    assert pool.breakers["a"].state == "half_open"
    assert names(pool.candidates(set())) == ["a", "b", "c"]
    permit = pool.breakers["a"].try_acquire()  # the one trial slot (half_open_max_calls: 1) is taken
    assert permit is not None and names(pool.candidates(set())) == ["b", "c"]
    pool.record("a", 200, permit)
    assert pool.breakers["a"].state == "closed" and pool.available("a")


def test_record_counts_5xx_and_failure_kinds_against_both_breaker_and_detector() -> None:
    clock = FakeClock()
    config = pool_config(
        UNROUTABLE,
        circuit_breaker={"failure_threshold": 3},
        outlier_detection={"consecutive_failures": 3, "max_ejection_percent": 100},
    )
    pool = Pool("default", config, clock=clock)
    fail(pool, "a", 1, 503)
    fail(pool, "a", 1, "timeout")
    fail(pool, "a", 1, 404)  # the target answered: a success, both counts start again
    fail(pool, "a", 2, 500)
    assert pool.available("a")
    fail(pool, "a", 1, "reset")
    assert pool.breakers["a"].state == "open" and pool.outliers.is_ejected("a")


async def test_candidates_exclude_unhealthy_targets(backends) -> None:  # type: ignore[no-untyped-def]
    sick, well = await backends("sick", health_status=503), await backends("well")
    config = pool_config(
        [("sick", sick.url), ("well", well.url)],
        health_check={"interval": 30, "timeout": 2, "unhealthy_threshold": 2, "healthy_threshold": 2},
    )
    pool = Pool("default", config, clock=FakeClock())
    client = UpstreamClient()
    try:
        checker = pool.start_health_checks(client)
        assert checker is not None and pool.start_health_checks(client) is checker  # created once
        assert names(pool.candidates(set())) == ["sick", "well"]  # healthy until checked
        assert not await checker.check_now("sick")
        assert pool.available("sick")  # one failure is below unhealthy_threshold
        assert not await checker.check_now("sick")
        assert await checker.check_now("well")
        assert sick.probes == ["/health"] * 2 and well.probes == ["/health"]
        assert not pool.available("sick") and names(pool.candidates(set())) == ["well"]
        assert names(pool.candidates({"well"})) == ["well"]
        assert [row["health"] for row in pool.describe()] == ["unhealthy", "healthy"]
        sick.health_status = 200
        await checker.check_now("sick")
        await checker.check_now("sick")
        assert names(pool.candidates(set())) == ["sick", "well"]
    finally:
        if pool.health is not None:
            await pool.health.stop()
        await client.close()


def test_a_pool_without_settings_has_no_guards() -> None:
    pool = Pool("default", pool_config(UNROUTABLE), clock=FakeClock())
    assert pool.breakers == {} and pool.outliers is None and pool.bulkhead.limit is None
    assert pool.start_health_checks(UpstreamClient()) is None
    fail(pool, "a", 50)
    assert names(pool.candidates(set())) == ["a", "b", "c"]
    assert [r["breaker"] for r in pool.describe()] == ["none"] * 3


# -- Pool.retry_after ------------------------------------------------------------------------------


def test_retry_after_is_the_soonest_return_in_whole_seconds() -> None:
    clock = FakeClock()
    config = pool_config(
        UNROUTABLE[:2],
        circuit_breaker={"failure_threshold": 1, "recovery_timeout": 30, "half_open_max_calls": 1},
        outlier_detection={"consecutive_failures": 5, "base_ejection_time": 7, "max_ejection_percent": 100},
    )
    pool = Pool("default", config, clock=clock)
    assert pool.retry_after() == 1  # everything available: the floor
    fail(pool, "a", 1)  # breaker open for 30 s
    for _ in range(5):  # ejected for 7 s, breaker still closed
        pool.outliers.record("b", True, "500")
    assert pool.candidates(set()) == []
    assert pool.retry_after() == 7
    clock.advance(3.5)
    assert pool.retry_after() == 4  # 3.5 s, rounded up
    clock.advance(3.5)
    assert pool.retry_after() == 1  # b is back
    fail(pool, "b", 1)  # now b's breaker is open too, for 30 s from now; a's has 23 s left
    assert pool.retry_after() == 23
    clock.advance(0.2)
    assert pool.retry_after() == math.ceil(22.8)
    clock.advance(22.8)  # a is half-open, its trial slot free
    assert pool.retry_after() == 1
    assert pool.breakers["a"].try_acquire() is not None  # the slot is taken: "ask again soon"
    assert pool.breakers["a"].retry_after() == HALF_OPEN_RETRY_AFTER and pool.retry_after() == 1


async def test_retry_after_of_an_unhealthy_target_is_its_check_interval(backends) -> None:  # type: ignore[no-untyped-def]
    sick = await backends("sick", health_status=500)
    config = pool_config(
        [("sick", sick.url)],
        health_check={"interval": 12, "timeout": 2, "unhealthy_threshold": 1},
        outlier_detection={"consecutive_failures": 1, "base_ejection_time": 4, "max_ejection_percent": 100},
    )
    pool = Pool("default", config, clock=FakeClock())
    client = UpstreamClient()
    try:
        checker = pool.start_health_checks(client)
        assert checker is not None and not await checker.check_now("sick")
        assert pool.candidates(set()) == [] and pool.retry_after() == 12
    finally:
        await client.close()


# -- Pool.adopt ------------------------------------------------------------------------------------


async def test_adopt_keeps_the_state_of_surviving_targets_and_takes_the_health_checker(backends) -> None:  # type: ignore[no-untyped-def]
    servers = {name: await backends(name) for name in ("a", "b", "c", "d")}
    clock = FakeClock()
    settings = {
        "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": 30},
        "outlier_detection": {"consecutive_failures": 3, "base_ejection_time": 10, "max_ejection_percent": 100},
        "health_check": {"interval": 30, "timeout": 2},
    }
    old = Pool("default", pool_config([(n, servers[n].url) for n in "abc"], **settings), clock=clock)
    client = UpstreamClient()
    checker = old.start_health_checks(client)
    assert checker is not None
    try:
        await checker.start()
        assert health_tasks() == {"health check: a", "health check: b", "health check: c"}
        fail(old, "a", 2)  # breaker open
        for _ in range(3):
            old.outliers.record("b", True, "timeout")  # ejected
        fail(old, "c", 1)  # one failure counted on c's breaker
        new = Pool("default", pool_config([(n, servers[n].url) for n in "abd"], **settings), clock=clock)
        new.adopt(old)
        assert new.breakers["a"] is old.breakers["a"] and new.breakers["a"].state == "open"
        assert new.breakers["d"].state == "closed" and "c" not in new.breakers
        assert new.outliers is old.outliers and new.outliers.is_ejected("b")
        assert set(new.outliers.status()) == {"a", "b", "d"}
        assert new.health is checker and old.health is None  # handed over, still running
        assert checker.running
        await until(lambda: health_tasks() == {"health check: a", "health check: b", "health check: d"}, what="tasks follow the targets")
        assert set(checker.status()) == {"a", "b", "d"}
        assert names(new.candidates(set())) == ["d"]
        clock.advance(30)
        assert names(new.candidates(set())) == ["a", "b", "d"]
    finally:
        await checker.stop()
        await client.close()
    assert health_tasks() == set()


def test_adopt_starts_afresh_when_the_settings_changed() -> None:
    clock = FakeClock()
    settings = {
        "circuit_breaker": {"failure_threshold": 2, "recovery_timeout": 30},
        "outlier_detection": {"consecutive_failures": 2, "base_ejection_time": 10, "max_ejection_percent": 100},
    }
    old = Pool("default", pool_config(UNROUTABLE, **settings), clock=clock)
    fail(old, "a", 2)
    assert old.breakers["a"].state == "open" and old.outliers.is_ejected("a")
    changed = {
        "circuit_breaker": {"failure_threshold": 3, "recovery_timeout": 30},
        "outlier_detection": {"consecutive_failures": 4, "base_ejection_time": 10, "max_ejection_percent": 100},
    }
    new = Pool("default", pool_config(UNROUTABLE, **changed), clock=clock)
    new.adopt(old)
    assert new.breakers["a"] is not old.breakers["a"] and new.breakers["a"].state == "closed"
    assert new.outliers is not old.outliers and not new.outliers.is_ejected("a")
    assert names(new.candidates(set())) == ["a", "b", "c"]


# -- the handler -----------------------------------------------------------------------------------


def proxy_blueprint(project, targets: list[tuple[str, ...]], pool: str, upstreams: str = "") -> Path:  # type: ignore[no-untyped-def]
    """`targets`: (name, url) or (name, url, more inline keys such as "max_connections: 2")."""
    lines = "\n".join(f'        - {{name: {n}, url: "{u}"{", " + more[0] if more else ""}}}' for n, u, *more in targets)
    text = textwrap.dedent(
        """
        name: resilience
        plugins:
          proxy:
            config:
              targets:
        {lines}
        {pool}
        {upstreams}
        endpoints:
          - path: /{{rest:path}}
            method: ANY
            handler: proxy
        """
    ).format(
        lines=lines,
        pool=textwrap.indent(textwrap.dedent(pool).strip(), " " * 6),
        upstreams=textwrap.indent(textwrap.dedent(upstreams).strip(), " " * 6),
    )
    return project.blueprint(text)


async def test_no_candidate_is_a_503_with_retry_after(project, compile_gateway, send, backends) -> None:  # type: ignore[no-untyped-def]
    broken = await backends("broken", status=500)
    gateway = compile_gateway(proxy_blueprint(project, [("broken", broken.url)], "circuit_breaker: {failure_threshold: 2, recovery_timeout: 30}"))
    handler = gateway.endpoints[0].handler
    try:
        first = await send(gateway, "GET", "/x")
        assert first.response.status_code == 500 and "cb=closed" in first.comment  # one failure of two
        second = await send(gateway, "GET", "/x")
        assert second.response.status_code == 500 and "cb=open" in second.comment
        assert len(broken.requests) == 2
        refused = await send(gateway, "GET", "/x")
        assert refused.response.status_code == 503
        assert refused.response.headers["Retry-After"] == "30"
        body = body_json(refused.response)
        assert body["status"] == 503 and body["request_id"]
        assert body["error"] == "no upstream target of pool 'default' can take traffic (broken: breaker open)"
        assert "unavailable" in refused.comment
        assert len(broken.requests) == 2  # nothing was sent
        # a WebSocket upgrade has nowhere to go either
        upgrade = await send(gateway, "GET", "/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
        assert upgrade.response.status_code == 503 and upgrade.response.headers["Retry-After"] == "30"
        pool = handler.pool
        assert pool.bulkhead.in_flight == 0 and pool.budget.active_requests == 0
    finally:
        await handler.client.close()


async def test_failover_goes_to_the_other_targets_while_one_is_open(project, compile_gateway, send, backends) -> None:  # type: ignore[no-untyped-def]
    bad, good = await backends("bad", status=502), await backends("good")
    blueprint = proxy_blueprint(
        project,
        [("bad", bad.url), ("good", good.url)],
        """
        circuit_breaker: {failure_threshold: 2, recovery_timeout: 30}
        retries: {attempts: 1, retry_on: [502], backoff: 0}
        """,
    )
    gateway = compile_gateway(blueprint)
    handler = gateway.endpoints[0].handler
    try:
        flows = [await send(gateway, "GET", "/x") for _ in range(8)]
        assert [f.response.status_code for f in flows] == [200] * 8
        assert len(bad.requests) == 2  # then its breaker opened: it is not even tried any more
        assert handler.pool.breakers["bad"].state == "open"
        assert "failover=bad>good" in flows[0].comment and "cb=closed" in flows[0].comment
        assert all("failover" not in f.comment for f in flows[-4:])
    finally:
        await handler.client.close()


async def test_half_open_max_calls_holds_under_concurrent_requests(project, compile_gateway, send, backends, caplog) -> None:  # type: ignore[no-untyped-def]
    slow = await backends("slow", status=500)
    blueprint = proxy_blueprint(
        project, [("slow", slow.url)], "circuit_breaker: {failure_threshold: 1, recovery_timeout: 0.2, half_open_max_calls: 2}"
    )
    gateway = compile_gateway(blueprint)
    handler = gateway.endpoints[0].handler
    breaker = handler.pool.breakers["slow"]
    caplog.set_level(logging.INFO, logger="addons.breaker")
    try:
        assert (await send(gateway, "GET", "/x")).response.status_code == 500
        assert breaker.state == "open"
        slow.status, slow.delay = 200, 0.3
        await until(lambda: breaker.state == "half_open", what="half-open after recovery_timeout")
        flows = await at_once(send, gateway, 6)
        statuses = Counter(f.response.status_code for f in flows)
        assert statuses == {200: 2, 503: 4}, statuses
        assert len(slow.requests) == 3  # the first failure, then only the two trials
        for flow in flows:
            if flow.response.status_code == 503:
                assert flow.response.headers["Retry-After"] == str(math.ceil(HALF_OPEN_RETRY_AFTER))
                assert "slow: breaker half_open" in body_json(flow.response)["error"]
        assert breaker.state == "closed"
        assert {c.split("cb=")[1].split()[0] for c in (f.comment for f in flows) if "cb=" in c} <= {"half_open", "closed"}
        messages = [r.getMessage() for r in caplog.records if r.name == "addons.breaker"]
        assert [m for m in messages if "->" in m] == [
            "circuit breaker for slow: closed -> open (1 consecutive failures: 500)",
            "circuit breaker for slow: open -> half_open (recovery_timeout of 0.2s elapsed)",
            "circuit breaker for slow: half_open -> closed (2 trial requests succeeded)",
        ]
    finally:
        await handler.client.close()


async def test_a_cancelled_trial_gives_its_slot_back(project, compile_gateway, send, backends) -> None:  # type: ignore[no-untyped-def]
    slow = await backends("slow", status=500)
    gateway = compile_gateway(proxy_blueprint(project, [("slow", slow.url)], "circuit_breaker: {failure_threshold: 1, recovery_timeout: 0.1}"))
    handler = gateway.endpoints[0].handler
    breaker = handler.pool.breakers["slow"]
    try:
        await send(gateway, "GET", "/x")
        slow.status, slow.delay = 200, 5.0
        await until(lambda: breaker.state == "half_open", what="half-open")
        trial = asyncio.create_task(send(gateway, "GET", "/trial"))
        await until(lambda: slow.in_flight == 1, what="the trial reaches the server")
        assert not breaker.available()  # its one slot is taken
        assert (await send(gateway, "GET", "/other")).response.status_code == 503
        trial.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await trial
        assert breaker.state == "half_open" and breaker.available()
        assert handler.pool.bulkhead.in_flight == 0 and handler.pool.budget.active_requests == 0
        slow.delay = 0
        assert (await send(gateway, "GET", "/again")).response.status_code == 200
        assert breaker.state == "closed"
    finally:
        await handler.client.close()


async def test_bulkhead_refuses_requests_beyond_max_concurrent(project, compile_gateway, send, backends) -> None:  # type: ignore[no-untyped-def]
    a, b = await backends("a", delay=0.3), await backends("b", delay=0.3)
    blueprint = proxy_blueprint(project, [("a", a.url), ("b", b.url)], "circuit_breaker: {max_concurrent_requests: 2}")
    gateway = compile_gateway(blueprint)
    handler = gateway.endpoints[0].handler
    try:
        flows = await at_once(send, gateway, 5)
        assert Counter(f.response.status_code for f in flows) == {200: 2, 503: 3}
        for flow in flows:
            if flow.response.status_code == 503:
                assert flow.response.headers["Retry-After"] == "1"
                assert "max_concurrent_requests (2)" in body_json(flow.response)["error"]
                assert "refused=max_concurrent_requests" in flow.comment
        assert len(a.requests) + len(b.requests) == 2
        assert handler.pool.bulkhead.in_flight == 0 and handler.pool.bulkhead.rejected == 3
        # the refusals said nothing about the targets: their breakers are untouched
        assert {n: br.state for n, br in handler.pool.breakers.items()} == {"a": "closed", "b": "closed"}
        assert (await send(gateway, "GET", "/x")).response.status_code == 200
    finally:
        await handler.client.close()


async def test_max_connections_caps_the_connections_to_a_target_and_queues_the_rest(project, compile_gateway, send, backends) -> None:  # type: ignore[no-untyped-def]
    slow = await backends("slow", delay=0.2)
    blueprint = proxy_blueprint(project, [("slow", slow.url, "max_connections: 2")], "")
    gateway = compile_gateway(blueprint)
    handler = gateway.endpoints[0].handler
    try:
        flows = await at_once(send, gateway, 6)
        assert [f.response.status_code for f in flows] == [200] * 6  # queued, not refused
        assert slow.peak_in_flight == 2
        assert len(slow.connections) == 2  # two connections, each reused
    finally:
        await handler.client.close()


async def test_a_full_target_is_passed_over_while_another_has_room(project, compile_gateway, send, backends) -> None:  # type: ignore[no-untyped-def]
    small, large = await backends("small", delay=0.3), await backends("large", delay=0.3)
    blueprint = proxy_blueprint(project, [("small", small.url, "max_connections: 1"), ("large", large.url)], "")
    gateway = compile_gateway(blueprint)
    handler = gateway.endpoints[0].handler
    try:
        flows = await at_once(send, gateway, 4)
        assert [f.response.status_code for f in flows] == [200] * 4
        assert (len(small.requests), len(large.requests)) == (1, 3)  # round robin alone would give 2 and 2
        assert small.peak_in_flight == 1
    finally:
        await handler.client.close()


async def test_waiting_for_a_connection_counts_against_the_timeout(project, compile_gateway, send, backends) -> None:  # type: ignore[no-untyped-def]
    slow = await backends("slow", delay=1.0)
    blueprint = proxy_blueprint(project, [("slow", slow.url, "max_connections: 1")], "timeout: 1.5s")
    gateway = compile_gateway(blueprint)
    handler = gateway.endpoints[0].handler
    try:
        first, second = await asyncio.wait_for(asyncio.gather(send(gateway, "GET", "/a"), send(gateway, "GET", "/b")), 10)
        assert sorted([first.response.status_code, second.response.status_code]) == [200, 504]
        late = first if first.response.status_code == 504 else second
        assert body_json(late.response)["error"] == (
            "upstream timeout (target slow): no answer in time (tries: 1; it waited for one of the target's 1 connections (max_connections))"
        )
        assert "queued=slow" in late.comment
        assert slow.peak_in_flight == 1  # the second was sent only once the first had its answer
    finally:
        await handler.client.close()


# -- the plugin: lifecycle across reloads, and its commands ---------------------------------------


@pytest.fixture
def addons_() -> tuple[Backworks, ProxyPlugin]:
    registry = PluginRegistry(builtin_plugins())
    plugins = [plugin() for plugin in registry.plugins.values()]
    proxy = next(p for p in plugins if isinstance(p, ProxyPlugin))
    return Backworks(registry, plugins), proxy


async def test_health_checks_follow_reloads_and_stop_when_done(project, addons_, backends) -> None:  # type: ignore[no-untyped-def]
    core, plugin = addons_
    servers = {n: await backends(n) for n in ("b1", "b2", "b3", "b4")}
    check = 'health_check: {interval: 0.1, timeout: 1, unhealthy_threshold: 1}'
    path = proxy_blueprint(project, [(n, servers[n].url) for n in ("b1", "b2", "b3")], check)
    with taddons.context(core, plugin) as tctx:
        tctx.configure(core, blueprint=str(path))
        assert health_tasks() == set()  # not before `running`
        plugin.running()
        await until(lambda: health_tasks() == {"health check: b1", "health check: b2", "health check: b3"}, what="checks start")
        checker = plugin._live[None].health
        await until(lambda: all(servers[n].probes for n in ("b1", "b2", "b3")), what="every target probed")
        path.write_text(path.read_text().replace(servers["b3"].url, servers["b4"].url).replace("name: b3", "name: b4"))
        assert core.reload()
        assert plugin._live[None].health is checker  # handed over, not restarted
        await until(lambda: health_tasks() == {"health check: b1", "health check: b2", "health check: b4"}, what="b3 out, b4 in")
        await until(lambda: len(servers["b4"].probes) >= 2, what="b4 probed")
        probed = len(servers["b3"].probes)
        await asyncio.sleep(0.4)  # four intervals
        assert len(servers["b3"].probes) == probed
        # a reload without health checks stops them all
        path.write_text(path.read_text().replace(check, ""))
        assert core.reload()
        await until(lambda: health_tasks() == set(), what="checks stop")
        assert plugin._live[None].health is None
        # ... and one that brings them back starts them again
        path.write_text(proxy_blueprint(project, [("b1", servers["b1"].url)], check).read_text())
        assert core.reload()
        await until(lambda: health_tasks() == {"health check: b1"}, what="checks start again")
        await plugin.done()
        assert health_tasks() == set() and plugin._tasks == set()
        await core.done()


def commands_blueprint(project, broken_url: str) -> Path:  # type: ignore[no-untyped-def]
    return proxy_blueprint(
        project,
        [("orders-1", broken_url), ("orders-2", "http://127.0.0.1:1")],
        """
        circuit_breaker: {failure_threshold: 1, recovery_timeout: 60}
        outlier_detection: {consecutive_failures: 1, max_ejection_percent: 100}
        """,
        upstreams=f"""
        upstreams:
          billing:
            targets: [{{name: invoices, url: "{broken_url}"}}, {{name: pay, url: "{broken_url}"}}]
            circuit_breaker: {{failure_threshold: 1}}
          audit:
            targets: [{{name: log, url: "{broken_url}"}}]
        """,
    )


async def test_targets_command_lists_every_target_of_every_pool(project, addons_, backends) -> None:  # type: ignore[no-untyped-def]
    core, plugin = addons_
    broken = await backends("broken", status=500, health_status=500)
    with taddons.context(core, plugin) as tctx:
        tctx.configure(core, blueprint=str(commands_blueprint(project, broken.url)))
        assert tctx.command(plugin.targets_command) == [
            "orders-1: health=unchecked ejected=no breaker=closed in_flight=0",
            "orders-2: health=unchecked ejected=no breaker=closed in_flight=0",
            "billing/invoices: health=unchecked ejected=no breaker=closed in_flight=0",
            "billing/pay: health=unchecked ejected=no breaker=closed in_flight=0",
            "audit/log: health=unchecked ejected=no breaker=none in_flight=0",
        ]
        fail(plugin._live[None], "orders-1", 1, 500)
        fail(plugin._live["billing"], "pay", 1, "reset")
        lines = tctx.command(plugin.targets_command)
        assert lines[0] == "orders-1: health=unchecked ejected=yes breaker=open in_flight=0"
        assert lines[3] == "billing/pay: health=unchecked ejected=no breaker=open in_flight=0"
        # health-checked targets say so
        path = project.root / "blueprint.yaml"
        path.write_text(path.read_text().replace("outlier_detection:", "health_check: {interval: 30, unhealthy_threshold: 1}\n      outlier_detection:"))
        assert core.reload()
        plugin.running()
        checker = plugin._live[None].health
        assert checker is not None and not await checker.check_now("orders-1")
        lines = tctx.command(plugin.targets_command)
        assert lines[0] == "orders-1: health=unhealthy ejected=yes breaker=open in_flight=0"  # state kept across the reload
        assert lines[1].startswith("orders-2: health=healthy ") and lines[2].startswith("billing/invoices: health=unchecked ")
        await plugin.done()
        await core.done()


async def test_breaker_reset_command(project, addons_, backends, caplog) -> None:  # type: ignore[no-untyped-def]
    core, plugin = addons_
    broken = await backends("broken", status=500)
    caplog.set_level(logging.INFO, logger="addons.breaker")
    with taddons.context(core, plugin) as tctx:
        tctx.configure(core, blueprint=str(commands_blueprint(project, broken.url)))
        default, billing = plugin._live[None], plugin._live["billing"]
        fail(default, "orders-1", 1, 500)
        fail(billing, "pay", 1, 500)
        with pytest.raises(exceptions.CommandError, match=r"^no circuit breaker for target 'order-1'; did you mean 'orders-1'\?$"):
            tctx.command(plugin.breaker_reset_command, "order-1")
        with pytest.raises(exceptions.CommandError, match=r"did you mean 'billing/pay'\?"):
            tctx.command(plugin.breaker_reset_command, "billing/pya")
        with pytest.raises(
            exceptions.CommandError,
            match=r"^no circuit breaker for target 'zzz' \(targets with breakers: orders-1, orders-2, billing/invoices, billing/pay\)$",
        ):
            tctx.command(plugin.breaker_reset_command, "zzz")
        with pytest.raises(exceptions.CommandError, match="no circuit breaker for target 'audit/log'"):
            tctx.command(plugin.breaker_reset_command, "audit/log")  # its pool has no breakers
        assert default.breakers["orders-1"].state == "open" and billing.breakers["pay"].state == "open"
        tctx.command(plugin.breaker_reset_command, "orders-1")
        tctx.command(plugin.breaker_reset_command, "pay")  # unique: the bare name is enough
        tctx.command(plugin.breaker_reset_command, "billing/invoices")  # closed already: its counts are cleared
        assert default.breakers["orders-1"].state == "closed" and billing.breakers["pay"].state == "closed"
        messages = [r.getMessage() for r in caplog.records if r.name == "addons.breaker" and r.levelno >= logging.INFO]
        assert messages[-3:] == [
            "circuit breaker for orders-1: open -> closed (reset by command backworks.breaker.reset)",
            "circuit breaker for billing/pay: open -> closed (reset by command backworks.breaker.reset)",
            "circuit breaker for billing/invoices: counters cleared (reset by command backworks.breaker.reset; it was closed)",
        ]
        # the breaker lets traffic through again: the next request reaches the target
        before = len(broken.requests)
        gateway = core.gateway
        assert gateway is not None
        default.outliers.uneject("orders-1", "test")  # the detector ejected it too; that is not the breaker's business
        for _ in range(2):  # round robin: one of the two reaches orders-1
            await gateway.handle(make_flow("GET", "/x"), reverse_mode=True, direct=False)
        assert len(broken.requests) == before + 1
        await plugin.done()
        await core.done()


async def test_breaker_reset_of_a_default_pool_target_whose_name_a_named_pool_shares(project, addons_, backends) -> None:  # type: ignore[no-untyped-def]
    core, plugin = addons_
    broken = await backends("broken", status=500)
    blueprint = proxy_blueprint(
        project,
        [("api", broken.url)],
        "circuit_breaker: {failure_threshold: 1}",
        upstreams=f"""
        upstreams:
          billing:
            targets: [{{name: api, url: "{broken.url}"}}]
            circuit_breaker: {{failure_threshold: 1}}
        """,
    )
    with taddons.context(core, plugin) as tctx:
        tctx.configure(core, blueprint=str(blueprint))
        fail(plugin._live[None], "api", 1, 500)
        fail(plugin._live["billing"], "api", 1, 500)
        # `api` is exactly the default pool's label (billing's is billing/api): it names it, and
        # so does `default/api`.
        assert plugin._live[None].breakers["api"].state == "open"
        tctx.command(plugin.breaker_reset_command, "api")
        assert plugin._live[None].breakers["api"].state == "closed"
        assert plugin._live["billing"].breakers["api"].state == "open"  # billing's api is another target
        fail(plugin._live[None], "api", 1, 500)
        tctx.command(plugin.breaker_reset_command, "default/api")
        assert plugin._live[None].breakers["api"].state == "closed"
        await plugin.done()
        await core.done()


# -- https targets: the health probe verifies them as the proxy does ------------------------------


def self_signed(folder: Path) -> tuple[Path, Path]:
    from tests.certs import write_self_signed

    return write_self_signed(folder)


@pytest.fixture
async def https_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    cert, key = self_signed(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    backend = Backend("secure")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", backend._handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    backend.port = runner.addresses[0][1]
    yield backend
    await runner.cleanup()


def https_url(backend: Backend) -> str:
    return f"https://127.0.0.1:{backend.port}"


async def test_health_probe_of_an_https_target_uses_its_tls_settings(https_backend: Backend) -> None:
    config = PoolConfig.model_validate(
        {"targets": [{"name": "secure", "url": https_url(https_backend), "tls_verify": False}], "health_check": {"interval": 30}}
    )
    pool = Pool("default", config)
    client = UpstreamClient()
    try:
        checker = pool.start_health_checks(client)
        assert checker is not None and await checker.check_now("secure")
        assert https_backend.probes == ["/health"]
    finally:
        await client.close()


async def test_health_probe_of_an_https_target_added_by_a_reload_uses_its_tls_settings(https_backend: Backend, backends) -> None:  # type: ignore[no-untyped-def]
    plain = await backends("plain")
    check = {"interval": 30}
    old = Pool("default", PoolConfig.model_validate({"targets": [{"name": "plain", "url": plain.url}], "health_check": check}))
    client = UpstreamClient()
    try:
        assert old.start_health_checks(client) is not None
        targets = [{"name": "plain", "url": plain.url}, {"name": "secure", "url": https_url(https_backend), "tls_verify": False}]
        new = Pool("default", PoolConfig.model_validate({"targets": targets, "health_check": check}))
        new.adopt(old)
        assert new.health is not None
        passed = await new.health.check_now("secure")
        assert passed, new.health.status()["secure"]["last_error"]
    finally:
        await client.close()


# Found by tests/reliability/test_request_fuzz.py: each of these was a 500 "the handler failed".


async def test_what_the_upstream_client_cannot_send_is_a_400_and_raw_bytes_go_on_as_sent(project, compile_gateway, backends) -> None:  # type: ignore[no-untyped-def]
    backend = await backends("b")
    blueprint = project.blueprint(
        f"""
        name: raw-bytes
        plugins:
          proxy:
            config:
              targets: [{{name: b, url: "{backend.url}"}}]
        endpoints:
          - path: /users/{{id}}
            handler: proxy
            config: {{proxy: {{path: "/people/{{id}}"}}}}
        """
    )
    gateway = compile_gateway(blueprint)
    try:
        invalid_utf8 = make_flow("GET", "/users/x")
        invalid_utf8.request.data.path = b"/users/\xff\xfe"  # mitmproxy: "/users/\udcff\udcfe"
        await gateway.handle(invalid_utf8, reverse_mode=True, direct=False)
        assert invalid_utf8.response.status_code == 200 and len(backend.requests) == 1

        control = make_flow("GET", "/users/1", headers={"X-Bad": "a\x0bb"})
        await gateway.handle(control, reverse_mode=True, direct=False)
        assert control.response.status_code == 400
        assert body_json(control.response)["error"] == "request header 'X-Bad' holds a control character"

        latin1 = make_flow("GET", "/users/1")
        latin1.request.headers.fields += ((b"X-Latin", b"caf\xe9"),)
        await gateway.handle(latin1, reverse_mode=True, direct=False)
        assert latin1.response.status_code == 400
        assert body_json(latin1.response)["error"] == "request header 'X-Latin' is not UTF-8"
        assert len(backend.requests) == 1  # neither went upstream
    finally:
        await gateway.endpoints[0].handler.client.close()
