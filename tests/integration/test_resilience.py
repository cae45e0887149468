"""Health checks, outlier detection and circuit breakers through a real mitmdump.

Real upstream servers are stopped, restarted on the same port, slowed and made to answer 500
while traffic flows; what clients see, what reaches each upstream, and the log lines that say
why are checked. Every loop is bounded in count and time; every wait polls with a deadline.
"""

from __future__ import annotations

import re
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.harness import Proxy, Upstream, request, write_atomically

pytestmark = pytest.mark.integration

HEALTH_UA = "backworks-health-check"


def blueprint_text(targets: list[tuple[str, str]], pool: str, target_extra: dict[str, str] | None = None) -> str:
    """A blueprint with one catch-all proxy endpoint over a default pool of `targets`."""
    target_extra = target_extra or {}
    lines = "\n".join(
        f'        - {{name: {name}, url: "{url}"' + (f", {target_extra[name]}" if name in target_extra else "") + "}"
        for name, url in targets
    )
    return textwrap.dedent(
        """
        name: resilience
        plugins:
          proxy:
            config:
              targets:
        {lines}
        {pool}
        endpoints:
          - path: /{{rest:path}}
            method: ANY
            handler: proxy
        """
    ).format(lines=lines, pool=textwrap.indent(textwrap.dedent(pool).strip(), " " * 6))


def write_blueprint(folder: Path, targets: list[tuple[str, str]], pool: str, target_extra: dict[str, str] | None = None) -> Path:
    path = folder / "blueprint.yaml"
    path.write_text(blueprint_text(targets, pool, target_extra))
    return path


def wait_until(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(step)
    raise AssertionError(f"{what}: not after {timeout}s")


def served(upstream: Upstream) -> list[str]:
    """Paths of the requests an upstream received from clients (health checks left out)."""
    return [r.path for r in list(upstream.received) if r.headers.get("User-Agent") != HEALTH_UA]


def health_checks(upstream: Upstream) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in list(upstream.received) if r.headers.get("User-Agent") == HEALTH_UA]


def count(log: str, text: str) -> int:
    return log.count(text)


def assert_chain(lines: list[tuple[str, str]], first: str) -> None:
    """Transition log lines (from, to) follow each other: one line per state change, none repeated."""
    state = first
    for before, after in lines:
        assert before == state and before != after, lines
        state = after


BREAKER_LINE = re.compile(r"circuit breaker for (\S+): (closed|open|half_open) -> (closed|open|half_open) \(")


def breaker_transitions(log: str, target: str) -> list[tuple[str, str]]:
    return [(m.group(2), m.group(3)) for m in BREAKER_LINE.finditer(log) if m.group(1) == target]


def health_transitions(log: str, target: str) -> list[str]:
    return re.findall(rf"health check: {re.escape(target)} is (healthy|unhealthy) \(", log)


def outlier_transitions(log: str, target: str) -> list[str]:
    pattern = rf"outlier detection \[default\]: (?:(ejecting) {re.escape(target)} for|{re.escape(target)} is (back) in the pool)"
    return [a or b for a, b in re.findall(pattern, log)]


# -- a bounded load generator ------------------------------------------------------------------


@dataclass
class Outcome:
    started: float
    finished: float
    status: int  # 0: the client saw an exception
    upstream: str | None
    detail: str


class Load:
    """`threads` clients sending GETs back to back; stops at `limit` requests or `max_seconds`."""

    def __init__(self, proxy: Proxy, threads: int = 8, limit: int = 6000, max_seconds: float = 90.0) -> None:
        self.proxy = proxy
        self.limit = limit
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline and len(self.outcomes) < self.limit:
            started = time.monotonic()
            try:
                reply = request("GET", "/x", port=self.proxy.port, timeout=10)
                upstream = reply.json.get("upstream") if reply.status == 200 else None
                outcome = Outcome(started, time.monotonic(), reply.status, upstream, reply.body[:300].decode("utf-8", "replace"))
            except Exception as exc:  # any client-side failure counts as an error
                outcome = Outcome(started, time.monotonic(), 0, None, f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.outcomes.append(outcome)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def total(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def wait_total(self, n: int, timeout: float = 30.0) -> None:
        wait_until(lambda: self.total() >= n, timeout, f"{n} requests done (have {self.total()})")


# -- 1. one of three targets dies and comes back, under load -------------------------------------


HEALTH = "health_check: {interval: 0.2, timeout: 0.5, unhealthy_threshold: 2, healthy_threshold: 2}"
OUTLIERS = "outlier_detection: {consecutive_failures: 3, base_ejection_time: 0.5, max_ejection_time: 1}"
BREAKER = "circuit_breaker: {failure_threshold: 5, recovery_timeout: 0.5}"
RETRIES = "retries: {attempts: 2, retry_on: [connect_failure, reset, timeout], per_try_timeout: 2, backoff: 0.01}"


@pytest.mark.parametrize(
    "guards",
    [
        pytest.param([HEALTH, OUTLIERS, BREAKER], id="health+outliers+breaker"),
        pytest.param([HEALTH], id="health"),
        pytest.param([OUTLIERS], id="outliers"),
        pytest.param([BREAKER], id="breaker"),
    ],
)
def test_a_target_dies_and_returns_under_load_with_no_client_error(guards: list[str], tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    servers = {name: make_upstream(name) for name in ("b1", "b2", "b3")}
    proxy = start_proxy(write_blueprint(tmp_path, [(n, s.url) for n, s in servers.items()], "\n".join([*guards, RETRIES])))
    started = time.monotonic()
    with Load(proxy, threads=8) as load:
        load.wait_total(100)
        down_at = load.total()
        servers["b2"].stop()
        stopped = time.monotonic()
        if HEALTH in guards:
            proxy.wait_for_log("health check: b2 is unhealthy", timeout=10)
        load.wait_total(down_at + 200)
        wait_until(lambda: time.monotonic() - stopped >= 1.0, 5, "an outage of a second")  # several checks, ejections, recoveries
        up_at = time.monotonic()
        back = make_upstream("b2", port=servers["b2"].port)  # the same address, a new process
        wait_until(lambda: len(served(back)) > 0, 15, "the restarted b2 serves traffic again")
        returned = time.monotonic()
        load.wait_total(max(500, load.total() + 300), timeout=60)
    outcomes = load.snapshot()
    elapsed = time.monotonic() - started
    errors = [o for o in outcomes if o.status != 200]
    assert len(outcomes) >= 500
    assert errors == [], f"{len(errors)} of {len(outcomes)} failed, first: {errors[:3]}"
    down = [o for o in outcomes[down_at:] if o.started < up_at]
    after = [o for o in outcomes if o.started >= returned]
    share = sum(o.upstream == "b2" for o in after) / len(after)
    assert len(after) >= 300 and share >= 0.2, (len(after), Counter(o.upstream for o in after))
    slowest = max(o.finished - o.started for o in outcomes)
    log = proxy.log()
    # One line per change of state, in order, never the same change twice; the others untouched.
    assert health_transitions(log, "b2") == (["unhealthy", "healthy"] if HEALTH in guards else [])
    breaker = breaker_transitions(log, "b2")
    assert_chain(breaker, "closed")
    assert not breaker or breaker[-1][1] == "closed", breaker
    assert (BREAKER in guards and HEALTH not in guards and OUTLIERS not in guards) <= bool(breaker)
    ejections = outlier_transitions(log, "b2")
    assert ejections == ["ejecting", "back"] * (len(ejections) // 2), ejections
    assert (OUTLIERS in guards) >= bool(ejections)
    for other in ("b1", "b3"):
        assert health_transitions(log, other) == breaker_transitions(log, other) == outlier_transitions(log, other) == []
    print(
        f"\n{len(outcomes)} requests ({len(down)} while b2 was down), 0 errors; b2 served again {returned - up_at:.2f}s "
        f"after its restart and then {share:.0%} of {len(after)} requests; slowest {slowest:.3f}s; "
        f"breaker {len(breaker)} transitions, outlier {ejections}; {elapsed:.1f}s"
    )


# -- 2. every target down -----------------------------------------------------------------------


def test_every_target_down_is_a_quick_503_with_retry_after(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    servers = [make_upstream(name) for name in ("b1", "b2", "b3")]
    pool = """
        health_check: {interval: 0.2, timeout: 0.5, unhealthy_threshold: 2, healthy_threshold: 2}
        retries: {attempts: 2, retry_on: [connect_failure, reset, timeout]}
    """
    proxy = start_proxy(write_blueprint(tmp_path, [(s.name, s.url) for s in servers], pool))
    assert proxy.get("/x").status == 200
    for server in servers:
        server.stop()
    # Before the checks have caught up, a request tries the targets and gets 502 (or 503 once
    # some are marked): either way quickly, never a hang.
    early = []
    for _ in range(3):
        began = time.monotonic()
        reply = proxy.get("/x", timeout=5)
        early.append((reply.status, time.monotonic() - began))
    assert all(status in (502, 503) and took < 1.0 for status, took in early), early
    for server in servers:
        proxy.wait_for_log(f"health check: {server.name} is unhealthy", timeout=10)
    timings = []
    for _ in range(20):
        began = time.monotonic()
        reply = proxy.get("/x", timeout=5)
        timings.append(time.monotonic() - began)
        assert reply.status == 503, reply.body
        assert (reply.header("Content-Type") or "").startswith("application/json")
        body = reply.json
        assert body["status"] == 503 and body["request_id"] and "can take traffic" in body["error"]
        assert "b1: unhealthy" in body["error"] and "b3: unhealthy" in body["error"]
        assert reply.header("Retry-After") is not None and int(reply.header("Retry-After")) >= 1
    assert max(timings) < 0.5, timings
    print(f"\nearly answers {early}; 20 x 503 with Retry-After {reply.header('Retry-After')}, slowest {max(timings):.3f}s")


# -- 3. a target answering 500 opens its breaker -------------------------------------------------


def test_a_failing_target_opens_its_breaker_then_recovers(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    failing = {"on": True}

    async def sometimes_500(req: web.Request) -> web.Response:
        if failing["on"]:
            return web.json_response({"upstream": "bad", "error": "boom"}, status=500)
        return web.json_response({"upstream": "bad"})

    good1, bad, good2 = make_upstream("good1"), make_upstream("bad", routes={"/x": sometimes_500}), make_upstream("good2")
    recovery = 1.5
    pool = f"circuit_breaker: {{failure_threshold: 3, recovery_timeout: {recovery}, half_open_max_calls: 1}}"
    proxy = start_proxy(write_blueprint(tmp_path, [("good1", good1.url), ("bad", bad.url), ("good2", good2.url)], pool))
    statuses = []
    for _ in range(30):  # round robin: every third request reaches `bad` until its breaker opens
        statuses.append(proxy.get("/x").status)
        if len(served(bad)) == 3:
            break
    opened = time.monotonic()
    assert len(served(bad)) == 3 and statuses.count(500) == 3
    proxy.wait_for_log("circuit breaker for bad: closed -> open (3 consecutive failures: 500)", timeout=5)
    # Open: for a while nothing reaches it, and nobody gets an error.
    quiet = []
    while time.monotonic() - opened < recovery / 3:
        quiet.append(proxy.get("/x").status)
    assert quiet and set(quiet) == {200} and len(served(bad)) == 3, (quiet, served(bad))
    # After recovery_timeout one trial reaches it; it fails, and the breaker opens again.
    wait_until(lambda: proxy.get("/x").status in (200, 500) and len(served(bad)) == 4, 10, "a trial request reaches bad")
    trial_after = time.monotonic() - opened
    assert trial_after >= recovery * 0.9, trial_after
    reopened = time.monotonic()
    proxy.wait_for_log("circuit breaker for bad: half_open -> open (trial request failed: 500)", timeout=5)
    for _ in range(6):
        assert proxy.get("/x").status == 200
    assert len(served(bad)) == 4
    # Healthy again: the next trial succeeds, the breaker closes and traffic returns.
    failing["on"] = False
    wait_until(lambda: proxy.get("/x").status == 200 and len(served(bad)) == 5, 10, "a second trial reaches bad")
    assert time.monotonic() - reopened >= recovery * 0.9
    proxy.wait_for_log("circuit breaker for bad: half_open -> closed (1 trial request succeeded)", timeout=5)
    names = Counter(proxy.get("/x").json["upstream"] for _ in range(30))
    assert names == {"good1": 10, "bad": 10, "good2": 10}, names
    log = proxy.log()
    assert breaker_transitions(log, "bad") == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("open", "half_open"), ("half_open", "closed")
    ]
    assert breaker_transitions(log, "good1") == breaker_transitions(log, "good2") == []
    print(f"\nbreaker opened after 3 x 500; first trial after {trial_after:.2f}s; back to 1/3 of traffic: {dict(names)}")


# -- 4. a slow target is ejected ------------------------------------------------------------------


def test_a_slow_target_is_ejected_by_outlier_detection(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    fast1, slow, fast2 = make_upstream("fast1"), make_upstream("slow"), make_upstream("fast2")
    pool = """
        outlier_detection: {consecutive_failures: 2, base_ejection_time: 30}
        retries: {attempts: 2, retry_on: [timeout, connect_failure], per_try_timeout: 0.3, backoff: 0}
    """
    proxy = start_proxy(write_blueprint(tmp_path, [("fast1", fast1.url), ("slow", slow.url), ("fast2", fast2.url)], pool))
    assert Counter(proxy.get("/x").json["upstream"] for _ in range(3)) == {"fast1": 1, "slow": 1, "fast2": 1}
    slow.delay = 2.0
    for _ in range(30):  # every try on `slow` times out and is retried on another target
        reply = proxy.get("/x", timeout=5)
        assert reply.status == 200 and reply.json["upstream"] in ("fast1", "fast2"), reply.body
        if "outlier detection [default]: ejecting slow" in proxy.log():
            break
    log = proxy.wait_for_log("outlier detection [default]: ejecting slow for 30s (2 consecutive failures, last: timeout; ejection 1)", timeout=5)
    reached = len(served(slow))
    assert reached == 3  # the first, fast request and the two that timed out
    timings = []
    for _ in range(30):
        began = time.monotonic()
        reply = proxy.get("/x", timeout=5)
        timings.append(time.monotonic() - began)
        assert reply.status == 200 and reply.json["upstream"] in ("fast1", "fast2")
    assert len(served(slow)) == reached, "an ejected target got traffic"
    assert max(timings) < 0.3, timings  # nothing waits on the slow target any more
    assert count(proxy.log(), "ejecting slow") == 1
    print(f"\nslow ejected after 2 timeouts; 30 later requests all on fast targets, slowest {max(timings):.3f}s")


# -- 6. a reload hands the checks over ------------------------------------------------------------


def test_reload_checks_added_targets_and_stops_checking_removed_ones(tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    async def healthz(req: web.Request) -> web.Response:
        return web.Response(text="ok")

    b1, b2, b3 = make_upstream("b1"), make_upstream("b2"), make_upstream("b3")
    b4 = make_upstream("b4", routes={"/healthz": healthz})
    pool = "health_check: {interval: 0.2, timeout: 0.5, path: /health, unhealthy_threshold: 2, healthy_threshold: 2}"
    path = write_blueprint(tmp_path, [("b1", b1.url), ("b2", b2.url), ("b3", b3.url)], pool)
    proxy = start_proxy(path)
    wait_until(lambda: all(len(health_checks(s)) >= 2 for s in (b1, b2, b3)), 10, "every target is checked")
    assert set(health_checks(b1)) == {("GET", "/health")}
    before = len(proxy.log())
    write_atomically(path, blueprint_text([("b1", b1.url), ("b2", b2.url), ("b4", b4.url)], pool, {"b4": "health_check: {path: /healthz}"}))
    proxy.wait_for_log("backworks: reloaded blueprint", timeout=10, after=before)
    reloaded = time.monotonic()
    wait_until(lambda: len(health_checks(b4)) >= 3, 10, "the added target is checked")
    assert set(health_checks(b4)) == {("GET", "/healthz")}  # its own path overrides the pool's
    time.sleep(0.3)  # a probe of b3 that was in flight at the reload may still land
    b3_checks, b1_checks = len(health_checks(b3)), len(health_checks(b1))
    time.sleep(1.2)  # six intervals
    assert len(health_checks(b3)) == b3_checks, "a removed target is still checked"
    assert len(health_checks(b1)) >= b1_checks + 3, "a surviving target is no longer checked"
    # one checker per target: about one probe per interval, not two (a leftover task would double it)
    per_second = (len(health_checks(b1)) - b1_checks) / 1.2
    assert per_second < 1 / 0.2 * 1.5, per_second
    assert Counter(proxy.get("/x").json["upstream"] for _ in range(6)) == {"b1": 2, "b2": 2, "b4": 2}
    assert "is unhealthy" not in proxy.log()
    print(f"\nafter the reload b4 checked at /healthz ({len(health_checks(b4))} probes), b3 stopped at {b3_checks}, "
          f"b1 at {per_second:.1f} probes/s; {time.monotonic() - reloaded:.1f}s")
