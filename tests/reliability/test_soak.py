"""Soak: a fixed mix of requests at a fixed rate through a real mitmdump with every feature on
(proxy pool with checks, breakers, outlier detection and retries; JWT auth; rate limits;
CORS; fault injection; transforms; metrics; the status page; static, mock and Python
handlers; request limits and schema validation), for BACKWORKS_SOAK_SECONDS (600 by default).

Every ~10 s the gateway process' RSS and open file descriptors are sampled. After a warm-up,
the last third of the samples must not be above the first third by more than the bounds
below, and every answer must have the status its request expects.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from statistics import mean, median

import jwt
import pytest

from tests.integration.harness import Proxy, request
from tests.reliability.load import Call, ChaosTarget, PacedLoad, ProcessSampler, Sample, metric, percentile, scrape

pytestmark = [pytest.mark.reliability]

BLUEPRINT = Path(__file__).parent / "blueprints" / "soak.yaml"
SECONDS = float(os.environ.get("BACKWORKS_SOAK_SECONDS", "600"))
RATE = float(os.environ.get("BACKWORKS_SOAK_RATE", "100"))  # requests per second, all clients
WORKERS = 10
SECRET = "soak-secret-" + "s" * 52
ORIGIN = "https://app.example.com"
# Bounds, last third of the samples after warm-up against the first third (means):
RSS_BOUND_MB = 20.0  # and at most RSS_BOUND_SHARE of the first third's mean, whichever is less
RSS_BOUND_SHARE = 0.10
FD_BOUND = 10  # medians of open descriptors (client and upstream connections come and go)
LIMITED_BURST = 7  # requests per X-Client key, against a limit of 5 a minute


def token(sub: str, expires_in: float = 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iss": "soak", "aud": "soak-api", "iat": now, "exp": now + int(expires_in)}, SECRET, algorithm="HS256")


def mix() -> list[Callable[[int], Call]]:
    """One cycle of the plan: 100 slots (the share of each kind is its count)."""
    tokens = [token(f"user-{n}") for n in range(20)]  # the verified-token cache holds them
    expired = token("late", expires_in=-120)
    order = json.dumps({"items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]}).encode()
    json_headers = (("Content-Type", "application/json"),)

    def calls(
        kind: str,
        method: str,
        path: Callable[[int], str],
        expected: set[int] = {200},  # noqa: B006
        headers: Callable[[int], tuple] = lambda i: (),
        body: bytes | None = None,
        required: tuple[str, ...] = (),
    ) -> Callable[[int], Call]:
        return lambda i: Call(kind, method, path(i), frozenset(expected), headers(i), body, required)

    proxied = ("X-Upstream", "X-Proxied-By", "X-API-Version", "RateLimit-Remaining")  # pool, middleware, rate limit

    slots: list[tuple[int, Callable[[int], Call]]] = [
        (34, calls("proxy GET", "GET", lambda i: f"/api/items/{i % 211}?q={i}", required=proxied)),
        (5, calls("proxy HEAD", "HEAD", lambda i: f"/api/items/{i % 13}", required=proxied)),
        (5, calls("proxy GET + Origin (CORS)", "GET", lambda i: f"/api/items/c{i % 7}", headers=lambda i: (("Origin", ORIGIN),), required=(*proxied, "Access-Control-Allow-Origin"))),
        (5, calls("CORS preflight", "OPTIONS", lambda i: f"/api/items/p{i % 7}", {204}, lambda i: (("Origin", "https://a.example.org"), ("Access-Control-Request-Method", "GET"), ("Access-Control-Request-Headers", "X-Trace")), required=("Access-Control-Allow-Origin", "Access-Control-Max-Age"))),
        (10, calls("auth: valid token", "GET", lambda i: f"/api/secure/me/{i % 5}", headers=lambda i: (("Authorization", f"Bearer {tokens[i % len(tokens)]}"),), required=proxied)),
        (2, calls("auth: new token each time", "GET", lambda i: "/api/secure/fresh", headers=lambda i: (("Authorization", f"Bearer {token(f'once-{i}')}"),))),
        (2, calls("auth: no token", "GET", lambda i: "/api/secure/me/0", {401}, required=("WWW-Authenticate",))),
        (1, calls("auth: expired token", "GET", lambda i: "/api/secure/me/0", {401}, lambda i: (("Authorization", f"Bearer {expired}"),))),
        (6, calls("validate: good order", "POST", lambda i: "/api/orders", headers=lambda i: json_headers, body=order)),
        (2, calls("validate: bad order", "POST", lambda i: "/api/orders", {422}, lambda i: json_headers, json.dumps({"items": [{"sku": "A-1", "qty": 0}]}).encode())),
        (1, calls("limits: body over 64k", "POST", lambda i: "/api/orders", {413}, lambda i: json_headers, b'{"items": "' + b"x" * 70_000 + b'"}')),
        (5, calls("static + transform", "GET", lambda i: f"/api/hello/n{i % 50}", required=("X-Greeting", "X-API-Version"))),
        (3, calls("mock: example", "GET", lambda i: "/api/users/7")),
        (1, calls("mock: fallback 404", "GET", lambda i: f"/api/users/{8 + i % 100}", {404})),
        (4, calls("python: async POST", "POST", lambda i: "/api/echo", headers=lambda i: json_headers, body=b'{"n": 1}')),
        (2, calls("python: sync GET", "GET", lambda i: "/api/time")),
        (1, calls("metrics scrape", "GET", lambda i: "/metrics")),
        (1, calls("status page API", "GET", lambda i: "/__backworks/api/status")),
        (1, calls("no endpoint: 404", "GET", lambda i: f"/nothing/{i % 10}", {404})),
        (1, calls("wrong method: 405", "DELETE", lambda i: "/api/hello/x", {405})),
        (1, calls("fault: abort asked by header", "GET", lambda i: "/api/items/f", {503}, lambda i: (("X-Backworks-Fault", "abort=503"),))),
    ]
    cycle: list[Callable[[int], Call]] = []
    for count, make in slots:
        cycle += [make] * count
    assert len(cycle) == 100 - LIMITED_BURST
    # Spread the kinds over the cycle (a stride coprime with its length), then the limited burst.
    spread = [cycle[(k * 37) % len(cycle)] for k in range(len(cycle))]
    burst: list[Callable[[int], Call]] = [
        lambda i: Call(f"rate limit: X-Client burst:{i // 100}", "GET", "/api/limited", frozenset({200, 429}), (("X-Client", f"client-{i // 100}"),), required=("RateLimit-Limit",))
    ] * LIMITED_BURST
    return spread + burst


def growth_figures(samples: list[Sample], warmup: float) -> tuple[list[Sample], list[Sample]]:
    """The first and the last third of the samples taken after `warmup` seconds."""
    steady = [s for s in samples if s.elapsed >= warmup]
    third = max(1, len(steady) // 3)
    return steady[:third], steady[-third:]


@pytest.fixture
def targets() -> Iterator[dict[str, ChaosTarget]]:
    servers = {name: ChaosTarget(name).start() for name in ("b1", "b2", "b3")}
    yield servers
    for server in servers.values():
        server.stop()


# The soak runs SECONDS by design, past pytest-timeout's 300 s per test (pyproject): its own bound
# is the run plus the request timeout and the start and stop of mitmdump.
@pytest.mark.timeout(SECONDS + 180)
def test_memory_and_descriptors_stay_flat_under_mixed_load(tmp_path: Path, targets: dict[str, ChaosTarget], start_proxy: Callable[..., Proxy], report: Callable[[str], None]) -> None:
    env = {f"{name.upper()}_URL": server.url for name, server in targets.items()} | {"SOAK_JWT_SECRET": SECRET}
    proxy = start_proxy(BLUEPRINT, "--set", "flow_detail=0", env=env)
    assert proxy.process is not None
    assert request("GET", "/api/items/warm", port=proxy.port).status == 200
    cycle = mix()
    assert len(cycle) == 100

    def plan(index: int) -> Call:
        return cycle[index % len(cycle)](index)

    interval = min(10.0, SECONDS / 30)
    warmup = min(60.0, SECONDS / 4)
    load = PacedLoad(proxy.port, plan, rate=RATE, workers=WORKERS, max_requests=int(RATE * SECONDS) + 1, max_seconds=SECONDS, timeout=15)
    sampler = ProcessSampler(proxy.process.pid, load.total, interval=interval)
    cpu_before = cpu_seconds(proxy.process.pid)
    sampler.start()
    with load:
        load.join()
    sampler.stop()
    cpu = cpu_seconds(proxy.process.pid) - cpu_before
    outcomes = load.snapshot()
    samples = scrape(proxy.admin_port)
    elapsed = sampler.samples[-1].elapsed

    # -- figures ------------------------------------------------------------------------------
    unexpected = [o for o in outcomes if not o.expected]
    by_kind: dict[str, Counter[int]] = defaultdict(Counter)
    for o in outcomes:
        by_kind[o.kind.rsplit(":", 1)[0] if o.kind.startswith("rate limit") else o.kind][o.status] += 1
    bursts: dict[str, Counter[int]] = defaultdict(Counter)
    for o in outcomes:
        if o.kind.startswith("rate limit"):
            bursts[o.kind][o.status] += 1
    latencies = [o.seconds for o in outcomes]
    first, last = growth_figures(sampler.samples, warmup)
    rss_first, rss_last = mean(s.rss_mb for s in first), mean(s.rss_mb for s in last)
    fd_first, fd_last = median(s.fds for s in first), median(s.fds for s in last)
    rss_bound = min(RSS_BOUND_MB, RSS_BOUND_SHARE * rss_first)
    report(
        f"{len(outcomes)} requests in {elapsed:.0f} s ({len(outcomes) / elapsed:.0f}/s; paced at {RATE:.0f}/s, {WORKERS} clients, keep-alive); "
        f"mitmdump CPU {cpu:.0f} s ({cpu / elapsed:.0%} of a core)"
    )
    report(f"latency: p50 {percentile(latencies, 50) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f} ms, max {max(latencies) * 1000:.0f} ms")
    report(f"unexpected statuses: {len(unexpected)}")
    report("kind | statuses")
    for kind, statuses in sorted(by_kind.items()):
        report(f"{kind} | {dict(sorted(statuses.items()))}")
    report(
        f"retries {metric(samples, 'backworks_upstream_retries_total'):.0f}, rate limited {metric(samples, 'backworks_rate_limited_requests_total'):.0f}, "
        f"auth denials {metric(samples, 'backworks_auth_denials_total'):.0f}, gateway errors by status "
        + str({dict(ls)["status"]: int(v) for (n, ls), v in sorted(samples.items(), key=lambda kv: sorted(kv[0][1])) if n == "backworks_gateway_errors_total"})
    )
    report(f"warm-up {warmup:.0f} s; RSS mean first third {rss_first:.1f} MB, last third {rss_last:.1f} MB (growth {rss_last - rss_first:+.1f} MB, bound {rss_bound:.1f} MB)")
    report(f"open fds median first third {fd_first:.0f}, last third {fd_last:.0f} (bound ±{FD_BOUND})")
    report("elapsed s | requests | RSS MB | fds")
    for s in sampler.samples:
        report(f"{s.elapsed:.0f} | {s.requests} | {s.rss_mb:.1f} | {s.fds}")

    # -- the properties -------------------------------------------------------------------------
    # On a busy machine the clients may fall behind their pace; half of it is still a soak.
    assert len(outcomes) >= 0.5 * RATE * SECONDS, f"the load fell far behind its pace: {len(outcomes) / elapsed:.0f}/s"
    assert unexpected == [], f"{len(unexpected)} unexpected, first: {[(o.kind, o.status, o.detail) for o in unexpected[:5]]}"
    complete = [counts for kind, counts in bursts.items() if sum(counts.values()) == LIMITED_BURST]
    assert complete and all(counts == {200: 5, 429: 2} for counts in complete), bursts
    assert len(last) >= 2 and len(first) >= 2, sampler.samples
    assert rss_last - rss_first <= rss_bound, f"RSS grew {rss_last - rss_first:.1f} MB"
    assert abs(fd_last - fd_first) <= FD_BOUND, f"open fds {fd_first} -> {fd_last}"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
