"""Active health checks: status ranges, thresholds, per-target settings, tasks and reloads."""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from addons.health import (
    CheckTarget,
    HealthCheckConfig,
    HealthChecker,
    describe_error,
    effective_config,
    first_delay,
    http_probe,
    jittered_interval,
    parse_status_ranges,
    probe_url,
)

# -- helpers -----------------------------------------------------------------------------------------


class ScriptedProbe:
    """Answers per URL from a script (a status, or an exception to raise); records every call."""

    def __init__(self, default: int | BaseException = 200) -> None:
        self.default = default
        self.script: dict[str, list[int | BaseException]] = {}
        self.calls: list[tuple[str, float]] = []

    def then(self, url: str, *outcomes: int | BaseException) -> None:
        self.script.setdefault(url, []).extend(outcomes)

    async def __call__(self, url: str, timeout: float) -> int:
        self.calls.append((url, timeout))
        queue = self.script.get(url)
        outcome = queue.pop(0) if queue else self.default
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def urls(self) -> set[str]:
        return {url for url, _ in self.calls}


class YieldingSleep:
    """Records each delay and only yields to the loop, so checks run as fast as the test wants."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool], steps: int = 2000) -> None:
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def health_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "addons.health" and r.levelno >= logging.INFO]


def our_tasks() -> set[str]:
    return {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("health check")}


POOL = HealthCheckConfig(interval=10, timeout=2, path="/health", healthy_threshold=2, unhealthy_threshold=3)
A = CheckTarget("a", "http://127.0.0.1:3001")
B = CheckTarget("backend-2", "http://127.0.0.1:3002/base/")
A_URL = "http://127.0.0.1:3001/health"
B_URL = "http://127.0.0.1:3002/base/health"


def checker(probe: ScriptedProbe, targets: list[CheckTarget] | None = None, pool: HealthCheckConfig | None = POOL, **kwargs: object) -> HealthChecker:
    return HealthChecker(targets if targets is not None else [A, B], pool, probe=probe, rng=random.Random(1), **kwargs)  # type: ignore[arg-type]


# -- status ranges -------------------------------------------------------------------------------------


def test_parse_status_ranges() -> None:
    matches = parse_status_ranges("200-299,304")
    assert [s for s in (199, 200, 250, 299, 300, 303, 304, 305, 500) if matches(s)] == [200, 250, 299, 304]
    assert 304 in matches and 305 not in matches and "304" not in matches
    assert str(matches) == "200-299,304"
    single = parse_status_ranges(204)
    assert single(204) and not single(200)
    assert parse_status_ranges(" 200 - 204 , 418 ").ranges == ((200, 204), (418, 418))
    assert parse_status_ranges("200-399")(302)


@pytest.mark.parametrize("bad", ["abc", "300-200", "99", "200-600", "", "200,", "2xx", 600, True])
def test_parse_status_ranges_refuses(bad: str | int) -> None:
    with pytest.raises(ValueError):
        parse_status_ranges(bad)


@pytest.mark.parametrize("value", ["200-299,304", 204, "abc", "300-200", "200-600", "", " 200 ", "200-204-300"])
def test_parser_and_config_validator_agree(value: str | int) -> None:
    try:
        parse_status_ranges(value)
        parsed = True
    except ValueError:
        parsed = False
    try:
        HealthCheckConfig(expected_status=value)
        validated = True
    except ValueError:
        validated = False
    assert parsed == validated


def test_config_defaults() -> None:
    config = HealthCheckConfig()
    assert (config.enabled, config.interval, config.timeout, config.path) == (True, 30.0, 5.0, "/health")
    assert (config.expected_status, config.healthy_threshold, config.unhealthy_threshold) == ("200-399", 2, 3)
    with pytest.raises(ValueError):
        HealthCheckConfig(path="health")
    with pytest.raises(ValueError):
        HealthCheckConfig(interval=0)


# -- pure helpers ----------------------------------------------------------------------------------------


def test_effective_config_merges_the_targets_keys_over_the_pools() -> None:
    pool = HealthCheckConfig(interval=5, path="/health", unhealthy_threshold=4)
    target = HealthCheckConfig(path="/healthz", unhealthy_threshold=1)
    merged = effective_config(target, pool)
    assert merged is not None
    assert (merged.path, merged.unhealthy_threshold, merged.interval) == ("/healthz", 1, 5.0)
    assert effective_config(None, pool) == pool
    assert effective_config(target, None) == target
    assert effective_config(None, None) is None


def test_effective_config_enabled() -> None:
    on = HealthCheckConfig()
    off = HealthCheckConfig(enabled=False)
    assert effective_config(off, on) is None  # the target opts out
    assert effective_config(None, off) is None
    assert effective_config(HealthCheckConfig(path="/x"), off) is None  # the pool's `enabled: false` still holds
    assert effective_config(HealthCheckConfig(enabled=True, path="/x"), off) is not None  # unless the target says so


def test_probe_url_keeps_the_base_path() -> None:
    assert probe_url("http://h:1", "/health") == "http://h:1/health"
    assert probe_url("http://h:1/base/", "/health") == "http://h:1/base/health"
    assert probe_url("https://h/api/v1", "/ping") == "https://h/api/v1/ping"


def test_jitter_bounds() -> None:
    rng = random.Random(3)
    samples = [jittered_interval(30, rng) for _ in range(2000)]
    assert all(27 <= s <= 33 for s in samples)
    assert min(samples) < 27.3 and max(samples) > 32.7  # the whole range is used
    firsts = [first_delay(30, rng) for _ in range(2000)]
    assert all(0 <= s <= 3 for s in firsts)
    assert min(firsts) < 0.1 and max(firsts) > 2.9


def test_describe_error() -> None:
    assert describe_error(ConnectionRefusedError(111, "Connection refused")) == "connection refused"
    assert describe_error(asyncio.TimeoutError()) == "timeout"
    assert describe_error(ConnectionResetError("peer reset")) == "peer reset"
    assert describe_error(RuntimeError()) == "RuntimeError"


# -- thresholds -------------------------------------------------------------------------------------------


async def test_unhealthy_after_threshold_failures_and_back_after_threshold_passes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="addons.health")
    probe = ScriptedProbe()
    hc = checker(probe)
    assert hc.is_healthy("backend-2")  # healthy before any check
    refused = ConnectionRefusedError(111, "Connection refused")
    probe.then(B_URL, refused, refused, 200, refused, refused, refused, refused, 200, 503, 200, 200, 200)
    results = [await hc.check_now("backend-2") for _ in range(3)]
    assert results == [False, False, True]
    assert hc.is_healthy("backend-2")  # the pass reset the failure count
    for _ in range(2):
        assert not await hc.check_now("backend-2")
    assert hc.is_healthy("backend-2")
    assert not await hc.check_now("backend-2")  # third in a row
    assert not hc.is_healthy("backend-2")
    assert hc.unhealthy() == ["backend-2"]
    assert not await hc.check_now("backend-2")  # a fourth: still unhealthy, not logged again
    assert await hc.check_now("backend-2")
    assert not hc.is_healthy("backend-2")  # one pass is not enough
    assert not await hc.check_now("backend-2")  # 503 resets the pass count
    assert await hc.check_now("backend-2")
    assert not hc.is_healthy("backend-2")
    assert await hc.check_now("backend-2")
    assert hc.is_healthy("backend-2")
    assert await hc.check_now("backend-2")
    assert hc.is_healthy("a")  # never probed
    assert health_logs(caplog) == [
        ("WARNING", "health check: backend-2 is unhealthy (3 consecutive failures: connection refused)"),
        ("INFO", "health check: backend-2 is healthy (2 consecutive passes: status 200)"),
    ]


async def test_a_status_outside_expected_is_a_failure() -> None:
    probe = ScriptedProbe(default=503)
    config = HealthCheckConfig(expected_status="200-299,304", unhealthy_threshold=1, healthy_threshold=1)
    hc = checker(probe, [A], config)
    assert not await hc.check_now("a")
    assert hc.status()["a"]["last_error"] == "status 503, expected 200-299,304"
    assert hc.status()["a"]["last_status"] == 503
    probe.default = 304
    assert await hc.check_now("a")
    probe.default = 302
    assert not await hc.check_now("a")


async def test_a_probe_that_raises_is_a_failure_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="addons.health")
    probe = ScriptedProbe(default=OSError("no route to host"))
    hc = checker(probe, [A], HealthCheckConfig(unhealthy_threshold=1))
    assert not await hc.check_now("a")
    assert not hc.is_healthy("a")
    assert hc.status()["a"]["last_error"] == "no route to host"
    assert hc.status()["a"]["last_status"] is None
    assert health_logs(caplog) == [("WARNING", "health check: a is unhealthy (1 consecutive failures: no route to host)")]


async def test_timeout_is_passed_to_the_probe_and_enforced() -> None:
    calls: list[tuple[str, float]] = []

    async def hangs(url: str, timeout: float) -> int:
        calls.append((url, timeout))
        await asyncio.sleep(3600)
        return 200

    hc = HealthChecker([A], HealthCheckConfig(timeout="50ms", unhealthy_threshold=1), probe=hangs)
    assert not await asyncio.wait_for(hc.check_now("a"), 5)
    assert calls == [(A_URL, 0.05)]
    assert hc.status()["a"]["last_error"] == "timeout after 0.05s"
    assert not hc.is_healthy("a")


async def test_status_listing() -> None:
    probe = ScriptedProbe()
    times = iter([1700000000.0, 1700000030.0])
    hc = checker(probe, [A, B, CheckTarget("unchecked", "http://x", HealthCheckConfig(enabled=False))], clock=lambda: next(times))
    await hc.check_now("a")
    status = hc.status()
    assert list(status) == ["a", "backend-2", "unchecked"]
    assert status["a"] == {
        "checked": True,
        "healthy": True,
        "consecutive_passes": 1,
        "consecutive_failures": 0,
        "last_status": 200,
        "last_error": None,
        "last_check": 1700000000.0,
        "last_result": "passed",
        "url": A_URL,
    }
    assert status["backend-2"]["last_check"] is None
    assert status["backend-2"]["last_result"] is None
    assert status["unchecked"] == {"checked": False, "healthy": True}


async def test_the_last_result_names_the_failure_without_addresses() -> None:
    """The status page shows `last_result`; `last_error` (for the log) may name the address."""
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 3001)")
    outcomes: list[Any] = [refused, 503, TimeoutError(), OSError(errno.EHOSTUNREACH, "No route to host 10.0.0.7"), 200]

    async def probe(url: str, timeout: float) -> int:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    hc = HealthChecker([A], HealthCheckConfig(unhealthy_threshold=9), probe=probe)
    results = []
    for _ in range(5):
        await hc.check_now("a")
        results.append(hc.status()["a"]["last_result"])
    assert results == ["connection refused", "status 503", "timeout", "connect failed", "passed"]
    assert all("127.0.0.1" not in r and "10.0.0.7" not in r for r in results)


# -- which targets are checked ------------------------------------------------------------------------------


async def test_per_target_config_overrides_the_pools(caplog: pytest.LogCaptureFixture) -> None:
    probe = ScriptedProbe(default=500)
    special = CheckTarget("special", "http://127.0.0.1:3003", HealthCheckConfig(path="/healthz", unhealthy_threshold=1, timeout=1))
    hc = checker(probe, [A, special])
    assert not await hc.check_now("special")
    assert probe.calls == [("http://127.0.0.1:3003/healthz", 1.0)]
    assert not hc.is_healthy("special")  # its own threshold of 1
    for _ in range(2):
        await hc.check_now("a")
    assert hc.is_healthy("a")  # the pool's threshold of 3
    assert probe.calls[-1] == (A_URL, 2.0)


async def test_disabled_and_unconfigured_targets_are_not_checked() -> None:
    probe = ScriptedProbe(default=ConnectionRefusedError(111, "refused"))
    off = CheckTarget("off", "http://127.0.0.1:3009", HealthCheckConfig(enabled=False))
    hc = checker(probe, [A, off], sleep=YieldingSleep())
    assert hc.is_healthy("off")
    with pytest.raises(KeyError):
        await hc.check_now("off")
    bare = checker(probe, [A, B], pool=None, sleep=YieldingSleep())
    with pytest.raises(KeyError):
        await bare.check_now("a")
    before = our_tasks()
    await hc.start()
    await bare.start()
    try:
        assert our_tasks() - before == {"health check: a"}
        await until(lambda: len(probe.calls) >= 10)
        assert not hc.is_healthy("a")
        assert hc.is_healthy("off")
    finally:
        await hc.stop()
        await bare.stop()
    assert {url for url, _ in probe.calls} == {A_URL}
    assert hc.is_healthy("unknown-target")


# -- tasks ------------------------------------------------------------------------------------------------


async def test_start_probes_every_target_on_a_jittered_interval_and_stop_leaves_no_task() -> None:
    before = asyncio.all_tasks()
    probe = ScriptedProbe()
    sleep = YieldingSleep()
    hc = checker(probe, sleep=sleep)
    await hc.start()
    await hc.start()  # idempotent
    assert hc.running
    assert our_tasks() == {"health check: a", "health check: backend-2"}
    await until(lambda: sum(1 for u, _ in probe.calls if u == A_URL) >= 5 and sum(1 for u, _ in probe.calls if u == B_URL) >= 5)
    await hc.stop()
    assert not hc.running
    assert asyncio.all_tasks() == before
    assert all(timeout == 2.0 for _, timeout in probe.calls)
    first_two, later = sleep.delays[:2], sleep.delays[2:]
    assert all(0 <= d <= 1.0 for d in first_two)  # within 10% of the 10 s interval
    assert later and all(9.0 <= d <= 11.0 for d in later)
    assert len(set(later)) > 1  # jittered, not fixed
    count = len(probe.calls)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(probe.calls) == count  # nothing runs after stop()


async def test_checks_run_by_the_tasks_change_health() -> None:
    probe = ScriptedProbe()
    refused = ConnectionRefusedError(111, "Connection refused")
    probe.then(B_URL, refused, refused, refused)
    hc = checker(probe, sleep=YieldingSleep())
    await hc.start()
    try:
        await until(lambda: not hc.is_healthy("backend-2"))
        await until(lambda: hc.is_healthy("backend-2"))  # then 200s: two passes bring it back
    finally:
        await hc.stop()


async def test_stop_waits_for_tasks_blocked_in_a_probe() -> None:
    before = asyncio.all_tasks()
    started = asyncio.Event()

    async def hangs(url: str, timeout: float) -> int:
        started.set()
        await asyncio.sleep(3600)
        return 200

    async def no_wait(delay: float) -> None:
        await asyncio.sleep(0)

    hc = HealthChecker([A, B], HealthCheckConfig(timeout=3000), probe=hangs, sleep=no_wait)
    await hc.start()
    await asyncio.wait_for(started.wait(), 5)
    await hc.stop()
    assert asyncio.all_tasks() == before


async def test_update_adds_and_removes_targets() -> None:
    before = asyncio.all_tasks()
    probe = ScriptedProbe()
    hc = checker(probe, sleep=YieldingSleep())
    C = CheckTarget("c", "http://127.0.0.1:3004")
    C_URL = "http://127.0.0.1:3004/health"
    try:
        await hc.start()
        probe.then(B_URL, *[ConnectionRefusedError(111, "refused")] * 3)
        await until(lambda: not hc.is_healthy("backend-2") and any(u == A_URL for u, _ in probe.calls))
        hc.update([B, C], POOL)
        await asyncio.sleep(0)
        assert our_tasks() == {"health check: backend-2", "health check: c"}
        assert not hc.is_healthy("backend-2")  # same name and URL, same settings: state kept
        probe.calls.clear()
        await until(lambda: C_URL in probe.urls() and B_URL in probe.urls())
        assert A_URL not in probe.urls()
        assert list(hc.status()) == ["backend-2", "c"]
        assert hc.is_healthy("a")  # no longer known: counts as healthy
    finally:
        await hc.stop()
    assert asyncio.all_tasks() == before


async def test_update_applies_changed_settings() -> None:
    before = asyncio.all_tasks()
    probe = ScriptedProbe()
    hc = checker(probe, [A], sleep=YieldingSleep())
    try:
        await hc.start()
        await until(lambda: A_URL in probe.urls())
        hc.update([CheckTarget("a", A.url, HealthCheckConfig(path="/ready"))], POOL)
        probe.calls.clear()
        await until(lambda: "http://127.0.0.1:3001/ready" in probe.urls())
        await asyncio.sleep(0)
        assert our_tasks() == {"health check: a"}
        hc.update([A], HealthCheckConfig(enabled=False))  # checks switched off
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert our_tasks() == set()
        assert hc.status() == {"a": {"checked": False, "healthy": True}}
    finally:
        await hc.stop()
    assert asyncio.all_tasks() == before


async def test_update_before_start_then_start() -> None:
    probe = ScriptedProbe()
    hc = checker(probe, [A])
    hc.update([A, B], POOL)
    assert our_tasks() == set()
    await hc.start()
    try:
        assert our_tasks() == {"health check: a", "health check: backend-2"}
    finally:
        await hc.stop()
    assert our_tasks() == set()


async def test_a_moved_target_starts_afresh() -> None:
    probe = ScriptedProbe(default=500)
    hc = checker(probe, [A], HealthCheckConfig(unhealthy_threshold=1))
    await hc.check_now("a")
    assert not hc.is_healthy("a")
    hc.update([CheckTarget("a", "http://127.0.0.1:4001")], HealthCheckConfig(unhealthy_threshold=1))
    assert hc.is_healthy("a")
    assert hc.status()["a"]["url"] == "http://127.0.0.1:4001/health"


async def test_pool_name_in_logs_and_task_names(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="addons.health")
    probe = ScriptedProbe(default=500)
    hc = HealthChecker([A], HealthCheckConfig(unhealthy_threshold=1), probe=probe, pool="orders")
    await hc.check_now("a")
    assert health_logs(caplog) == [
        ("WARNING", "health check [orders]: a is unhealthy (1 consecutive failures: status 500, expected 200-399)")
    ]


# -- the production probe ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_http_probe_against_a_real_server() -> None:
    seen: list[tuple[str, str]] = []

    async def health(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("User-Agent", "")))
        return web.Response(status=204)

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    app = web.Application()
    app.router.add_get("/base/health", health)
    app.router.add_get("/moved", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session:
            probe = http_probe(session)
            assert await probe(f"http://127.0.0.1:{port}/base/health", 5) == 204
            assert await probe(f"http://127.0.0.1:{port}/moved", 5) == 302  # not followed
            with pytest.raises(aiohttp.ClientConnectionError) as info:
                await probe(f"http://127.0.0.1:{free_port()}/health", 5)
            assert describe_error(info.value) == "connection refused"
            hc = HealthChecker(
                [CheckTarget("real", f"http://127.0.0.1:{port}/base")],
                HealthCheckConfig(expected_status=204),
                probe=probe,
            )
            assert await hc.check_now("real")
    finally:
        await runner.cleanup()
    assert seen == [("/base/health", "backworks-health-check"), ("/base/health", "backworks-health-check")]
