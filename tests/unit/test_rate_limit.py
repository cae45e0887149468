"""The rate_limit middleware: token-bucket math on a fake clock, keys, scopes, memory bounds,
the headers, and failing closed (or open) when Redis cannot be reached."""

from __future__ import annotations

import logging
import tracemalloc
from typing import Any

import pytest
from pydantic import ValidationError

from addons import builtin_plugins
from addons.auth import issue_token
from addons.rate_limit import (
    REDIS_KEY_PREFIX,
    TOKEN_BUCKET_LUA,
    TOKEN_BUCKET_SHA,
    Decision,
    LocalBuckets,
    RateLimitMiddleware,
    RateLimitMiddlewareConfig,
    RateLimitPlugin,
    RedisBuckets,
    WorkerShare,
    client_ip,
)
from backworks_core.compiler import build_gateway
from backworks_core.gateway import Gateway
from backworks_core.loader import load_blueprint
from backworks_core.plugins import PluginRegistry
from backworks_core.telemetry import record_for

from .conftest import Project, body_json, diagnostic_lines, make_flow

UNREACHABLE = "redis://127.0.0.1:1"  # nothing listens on port 1: connection refused at once


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ------------------------------------------------------------------------------------------
# Settings


def test_settings_defaults_and_durations() -> None:
    config = RateLimitMiddlewareConfig(requests=50, per="10s")
    assert (config.key, config.scope, config.capacity, config.fail_open, config.redis_url) == ("ip", "endpoint", 50, False, None)
    assert config.rate == 5.0
    assert RateLimitMiddlewareConfig(requests="3", per="1m", burst=9).capacity == 9  # `${LIMIT}` arrives as a string
    assert RateLimitMiddlewareConfig(requests=1, per=1, redis_url="").redis_url is None  # `${REDIS_URL:-}` unset
    assert RateLimitMiddlewareConfig(requests=1, per=1, redis_url=" redis://h:6379/0 ").redis_url == "redis://h:6379/0"


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"requests": 0, "per": 1}, "requests"),
        ({"requests": True, "per": 1}, "requests"),
        ({"requests": 1.5, "per": 1}, "requests"),
        ({"requests": 1, "per": 0}, "per"),
        ({"requests": 1, "per": "soon"}, "per"),
        ({"requests": 1, "per": 1, "burst": 0}, "burst"),
        ({"requests": 1, "per": 1, "key": "cookie:x"}, "key"),
        ({"requests": 1, "per": 1, "key": "header:"}, "key"),
        ({"requests": 1, "per": 1, "key": "header:X Bad"}, "key"),
        ({"requests": 1, "per": 1, "key": "claim:"}, "key"),
        ({"requests": 1, "per": 1, "scope": "host"}, "scope"),
        ({"requests": 1, "per": 1, "redis_url": "http://127.0.0.1:6379"}, "redis_url"),
        ({"requests": 1, "per": 1, "fail_open": "maybe"}, "fail_open"),
        ({"requests": 1, "per": 1, "limit": 5}, "limit"),
        ({"per": 1}, "requests"),
    ],
)
def test_settings_are_strict(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RateLimitMiddlewareConfig(**settings)
    assert [error["loc"][0] for error in info.value.errors()] == [field]


def test_blueprint_errors_are_located(project: Project) -> None:
    path = project.blueprint(
        """
        name: limits
        middlewares:
          - name: limit
            plugin: rate_limit
            config: {path: "/*", requests: 0, per: 10s, key: "cookie:sid"}
        endpoints:
          - {path: /x, handler: static, config: {static: {body: ok}}}
        """
    )
    from backworks_core.diagnostics import BlueprintError

    with pytest.raises(BlueprintError) as info:
        load_blueprint(path, PluginRegistry(builtin_plugins()), env={})
    lines = diagnostic_lines(info.value.diagnostics)
    assert any(":5:" in line and "middlewares[0].config.requests" in line for line in lines), lines
    assert any("middlewares[0].config.key" in line and "ip, header:NAME or claim:NAME" in line for line in lines), lines


# ------------------------------------------------------------------------------------------
# The bucket


def test_burst_then_refill_at_the_rate() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    rate, burst = 5.0, 10  # 50 per 10 s with a burst of 10
    decisions = [buckets.take("k", rate, burst) for _ in range(12)]
    assert [d.allowed for d in decisions] == [True] * 10 + [False] * 2
    assert [d.remaining for d in decisions[:10]] == list(range(9, -1, -1))
    clock.advance(0.2)  # one token
    assert buckets.take("k", rate, burst).allowed
    assert not buckets.take("k", rate, burst).allowed
    clock.advance(0.19)
    assert not buckets.take("k", rate, burst).allowed
    clock.advance(0.01)
    assert buckets.take("k", rate, burst).allowed
    clock.advance(3600)  # never more than the burst
    assert [buckets.take("k", rate, burst).allowed for _ in range(11)] == [True] * 10 + [False]


def test_sustained_rate_over_a_long_run() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    allowed = 0
    for _ in range(10_000):  # 100 requests per second for 100 s against 50 per 10 s, burst 50
        allowed += buckets.take("k", 5.0, 50).allowed
        clock.advance(0.01)
    assert allowed == pytest.approx(50 + 5 * 100, abs=2)


def test_retry_after_reset_and_remaining() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    rate, burst = 1 / 30, 2  # 2 per minute
    first = buckets.take("k", rate, burst)
    assert (first.allowed, first.limit, first.remaining, first.reset) == (True, 2, 1, 30)
    second = buckets.take("k", rate, burst)
    assert (second.remaining, second.reset) == (0, 60)
    denied = buckets.take("k", rate, burst)
    assert (denied.allowed, denied.remaining, denied.retry_after, denied.reset) == (False, 0, 30, 60)
    assert denied.headers() == {"RateLimit-Limit": "2", "RateLimit-Remaining": "0", "RateLimit-Reset": "60", "Retry-After": "30"}
    clock.advance(29.5)
    assert buckets.take("k", rate, burst).retry_after == 1  # 0.5 s rounds up, never 0
    clock.advance(0.5)
    assert buckets.take("k", rate, burst).allowed
    assert "Retry-After" not in first.headers()


def test_retry_after_is_at_least_one_second_at_high_rates() -> None:
    buckets = LocalBuckets(clock=FakeClock())
    buckets.take("k", 1000.0, 1)
    assert buckets.take("k", 1000.0, 1).retry_after == 1


def test_decision_severity_prefers_a_refusal_then_the_fewest_left() -> None:
    refused = Decision(False, 10, 3, 5, 1)
    low = Decision(True, 10, 1, 5, 0)
    high = Decision(True, 10, 8, 1, 0)
    assert min([high, low, refused], key=lambda d: d.severity) is refused
    assert min([high, low], key=lambda d: d.severity) is low


def test_idle_buckets_expire_once_full_again() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    for i in range(100):
        buckets.take(f"k{i}", 1.0, 10)  # 9 tokens left: full again after 1 s
    assert len(buckets) == 100
    clock.advance(0.99)
    buckets.take("other", 1.0, 10)
    assert len(buckets) == 101
    clock.advance(0.02)
    buckets.take("other", 1.0, 10)
    assert len(buckets) == 1


def test_expiry_sweep_finds_full_buckets_behind_busy_ones() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    for _ in range(10):
        buckets.take("busy", 1.0, 10)  # empty: full again only after 10 s
    for i in range(50):
        buckets.take(f"idle{i}", 1.0, 10)  # full again after 1 s
    clock.advance(5)
    buckets.take("busy", 1.0, 10)  # `busy` is now last; the idle ones were behind it
    clock.advance(5.5)  # past the sweep (once per 10 s refill period)
    buckets.take("new", 1.0, 10)
    assert len(buckets) <= 2


def test_a_hundred_thousand_distinct_keys_stay_bounded() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(max_keys=5_000, clock=clock)
    for i in range(100_000):  # all at once: nothing is full again, only the cap bounds them
        assert buckets.take(f"ip:10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 5.0, 50).allowed
    assert len(buckets) == 5_000
    tracemalloc.start()
    try:
        for i in range(10_000):  # every bucket kept is now one traced
            buckets.take(f"more:{i}", 5.0, 50)
        before, _ = tracemalloc.get_traced_memory()
        for i in range(10_000, 40_000):  # at the cap, more distinct keys cost no more memory
            buckets.take(f"more:{i}", 5.0, 50)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert before < 2 * 1024 * 1024, before  # 5,000 buckets: about 1 MB
    assert after - before < 64 * 1024, (before, after)
    assert len(buckets) == 5_000
    for i in range(80_000, 100_000):  # the latest 5,000 are the ones kept
        buckets.take(f"more:{i}", 5.0, 50)
    assert buckets.evicted == 155_000
    assert buckets.take("more:99999", 5.0, 50).remaining == 48  # kept: its second token
    assert buckets.take("ip:10.0.0.0", 5.0, 50).remaining == 49  # evicted: a full bucket again
    # and with time, idle buckets go whatever their number
    clock.advance(11)
    for i in range(100_000):
        buckets.take(f"other{i}", 5.0, 50)
        clock.advance(0.001)  # 100 s in all: each bucket is full again 0.2 s after its request
    assert len(buckets) <= 5_000
    assert buckets.evicted == 155_001  # no more evictions (one for `ip:10.0.0.0` above): expiry kept up
    assert len(buckets) <= 250


def test_the_default_cap_holds_a_hundred_thousand_keys_too() -> None:
    buckets = LocalBuckets(clock=FakeClock())
    for i in range(100_000):
        buckets.take(str(i), 1.0, 1)
    assert len(buckets) == RateLimitMiddlewareConfig(requests=1, per=1).max_keys == 50_000


def test_the_cap_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    buckets = LocalBuckets(max_keys=3, clock=FakeClock())
    with caplog.at_level(logging.WARNING, logger="addons.rate_limit"):
        for i in range(10):
            buckets.take(str(i), 1.0, 5)
    assert len([r for r in caplog.records if "max_keys" in r.getMessage()]) == 1


# ------------------------------------------------------------------------------------------
# Through the gateway


BLUEPRINT = """
name: limits
middlewares:
  - name: per-ip
    plugin: rate_limit
    config: {path: "/ip/*", requests: 3, per: 3s}
  - name: per-key
    plugin: rate_limit
    config: {path: "/key/*", requests: 2, per: 10s, key: "header:X-API-Key"}
  - name: shared
    plugin: rate_limit
    config: {path: "/global/*", requests: 2, per: 10s, scope: global}
endpoints:
  - {path: /ip/a, handler: static, config: {static: {body: {ok: a}}}}
  - {path: /ip/b, handler: static, config: {static: {body: {ok: b}}}}
  - {path: /key/a, handler: static, config: {static: {body: {ok: a}}}}
  - {path: /global/a, handler: static, config: {static: {body: {ok: a}}}}
  - {path: /global/b, handler: static, config: {static: {body: {ok: b}}}}
  - {path: /free, handler: static, config: {static: {body: {ok: free}}}}
"""


def gateway_for(project: Project, text: str, clock: FakeClock, env: dict[str, str] | None = None) -> tuple[Gateway, RateLimitPlugin]:
    registry = PluginRegistry(builtin_plugins())
    plugin = RateLimitPlugin(clock=clock)
    plugins = {name: (plugin if name == "rate_limit" else cls()) for name, cls in registry.plugins.items()}
    loaded = load_blueprint(project.blueprint(text), registry, env=env or {})
    gateway = build_gateway(loaded, plugins)
    for name, instance in plugins.items():
        instance.apply_blueprint(loaded.plugin_configs.get(name), loaded)
    return gateway, plugin


async def call(gateway: Gateway, path: str, *, ip: str = "192.0.2.1", headers: dict[str, str] | None = None) -> Any:
    flow = make_flow("GET", path, headers=headers)
    flow.client_conn.peername = (ip, 40000)
    await gateway.handle(flow, reverse_mode=True, direct=False)
    assert flow.response is not None
    return flow


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_limit_429_with_the_standard_error_and_headers(project: Project, clock: FakeClock) -> None:
    gateway, _ = gateway_for(project, BLUEPRINT, clock)
    answers = [await call(gateway, "/ip/a") for _ in range(4)]
    assert [f.response.status_code for f in answers] == [200, 200, 200, 429]
    assert [f.response.headers["RateLimit-Remaining"] for f in answers] == ["2", "1", "0", "0"]
    assert all(f.response.headers["RateLimit-Limit"] == "3" for f in answers)
    assert [f.response.headers["RateLimit-Reset"] for f in answers] == ["1", "2", "3", "3"]
    assert "Retry-After" not in answers[0].response.headers
    denied = answers[3]
    assert denied.response.headers["Retry-After"] == "1"
    assert denied.response.reason == "Too Many Requests"  # mitmproxy's own table has no phrase for 429
    body = body_json(denied.response)
    assert body == {"error": "rate limit exceeded: 3 request(s) per 3s; retry after 1s", "status": 429, "request_id": body["request_id"]}
    assert denied.response.headers["X-Request-ID"] == body["request_id"]
    record = record_for(denied)
    assert record is not None and record.rate_limited and record.error == body["error"]
    assert not record_for(answers[0]).rate_limited  # type: ignore[union-attr]
    assert "rate_limit=denied" in denied.comment
    assert "rate_limit=remaining:2" in answers[0].comment
    clock.advance(1)
    assert (await call(gateway, "/ip/a")).response.status_code == 200


async def test_unlimited_paths_carry_no_headers(project: Project, clock: FakeClock) -> None:
    gateway, _ = gateway_for(project, BLUEPRINT, clock)
    flow = await call(gateway, "/free")
    assert flow.response.status_code == 200 and "RateLimit-Limit" not in flow.response.headers


async def test_ips_are_isolated_and_ipv4_mapped_addresses_are_the_same_client(project: Project, clock: FakeClock) -> None:
    gateway, _ = gateway_for(project, BLUEPRINT, clock)
    for _ in range(3):
        await call(gateway, "/ip/a", ip="192.0.2.1")
    assert (await call(gateway, "/ip/a", ip="192.0.2.1")).response.status_code == 429
    assert (await call(gateway, "/ip/a", ip="::ffff:192.0.2.1")).response.status_code == 429
    assert (await call(gateway, "/ip/a", ip="192.0.2.2")).response.status_code == 200
    assert (await call(gateway, "/ip/a", ip="2001:db8::1")).response.status_code == 200


def test_client_ip_forms() -> None:
    flow = make_flow()
    flow.client_conn.peername = ("::ffff:10.0.0.7", 1)
    assert client_ip(flow) == "10.0.0.7"
    flow.client_conn.peername = ("fe80::1%eth0", 1, 0, 2)
    assert client_ip(flow) == "fe80::1"


async def test_scope_endpoint_gives_each_endpoint_its_own_bucket(project: Project, clock: FakeClock) -> None:
    gateway, _ = gateway_for(project, BLUEPRINT, clock)
    assert [(await call(gateway, "/ip/a")).response.status_code for _ in range(4)] == [200, 200, 200, 429]
    assert [(await call(gateway, "/ip/b")).response.status_code for _ in range(4)] == [200, 200, 200, 429]


async def test_scope_global_shares_one_bucket(project: Project, clock: FakeClock) -> None:
    gateway, _ = gateway_for(project, BLUEPRINT, clock)
    statuses = [(await call(gateway, path)).response.status_code for path in ("/global/a", "/global/b", "/global/a", "/global/b")]
    assert statuses == [200, 200, 429, 429]


async def test_header_keys_are_isolated_and_missing_falls_back_to_the_ip(project: Project, clock: FakeClock) -> None:
    gateway, _ = gateway_for(project, BLUEPRINT, clock)

    async def status(headers: dict[str, str] | None = None, ip: str = "192.0.2.1") -> int:
        return (await call(gateway, "/key/a", headers=headers, ip=ip)).response.status_code  # type: ignore[no-any-return]

    alice, bob = {"X-API-Key": "alice"}, {"X-API-Key": "bob"}
    assert [await status(alice) for _ in range(3)] == [200, 200, 429]
    assert [await status(bob) for _ in range(3)] == [200, 200, 429]
    # the same key from another address is the same client
    assert await status(alice, ip="198.51.100.9") == 429
    # no key: limited by address, in buckets no header value can reach
    assert [await status() for _ in range(3)] == [200, 200, 429]
    assert [await status({"X-API-Key": "ip:192.0.2.2"}) for _ in range(2)] == [200, 200]
    assert await status(ip="192.0.2.2") == 200
    assert await status({"X-API-Key": ""}, ip="192.0.2.3") == 200  # empty: the address's bucket
    # long or binary-looking values are hashed, still one bucket each
    long_key = {"X-API-Key": "k" * 5000}
    assert [await status(long_key) for _ in range(3)] == [200, 200, 429]


async def test_claim_keys_follow_the_auth_middleware(project: Project, clock: FakeClock) -> None:
    text = """
    name: claims
    plugins:
      auth: {config: {jwt_secret: "0123456789abcdef0123456789abcdef"}}
    middlewares:
      - name: authenticate
        plugin: auth
        config: {path: "/api/*"}
      - name: per-user
        plugin: rate_limit
        config: {path: "/api/*", requests: 1, per: 1m, key: "claim:tenant.id"}
    endpoints:
      - {path: /api/x, handler: static, config: {static: {body: ok}}}
    """
    gateway, _ = gateway_for(project, text, clock)
    auth_config = gateway.blueprint.plugin_configs["auth"]

    def bearer(user: str, tenant: Any = None) -> dict[str, str]:
        extra = {"tenant": {"id": tenant}} if tenant is not None else None
        return {"Authorization": "Bearer " + issue_token(auth_config, user, [], extra)}  # type: ignore[arg-type]

    async def status(headers: dict[str, str], ip: str = "192.0.2.1") -> int:
        return (await call(gateway, "/api/x", headers=headers, ip=ip)).response.status_code  # type: ignore[no-any-return]

    assert await status(bearer("ann", "t1")) == 200
    assert await status(bearer("bob", "t1")) == 429  # same tenant, same bucket
    assert await status(bearer("bob", "t2"), ip="192.0.2.99") == 200
    assert await status(bearer("cid", 7)) == 200  # a number is a value like any other
    assert await status(bearer("cid", 7), ip="192.0.2.50") == 429
    assert await status(bearer("dan"), ip="198.51.100.1") == 200  # no claim: by address
    assert await status(bearer("eve"), ip="198.51.100.1") == 429
    assert await status({}) == 401  # auth denies first: no token is ever counted here


async def test_several_limits_report_the_strictest(project: Project, clock: FakeClock) -> None:
    text = """
    name: stacked
    middlewares:
      - name: loose
        plugin: rate_limit
        config: {path: "/*", requests: 100, per: 1s}
      - name: tight
        plugin: rate_limit
        config: {path: "/*", requests: 2, per: 1m}
    endpoints:
      - {path: /x, handler: static, config: {static: {body: ok}}}
    """
    gateway, _ = gateway_for(project, text, clock)
    first = await call(gateway, "/x")
    assert (first.response.headers["RateLimit-Limit"], first.response.headers["RateLimit-Remaining"]) == ("2", "1")
    await call(gateway, "/x")
    denied = await call(gateway, "/x")
    assert denied.response.status_code == 429
    assert (denied.response.headers["RateLimit-Limit"], denied.response.headers["Retry-After"]) == ("2", "30")


async def test_a_reload_keeps_the_buckets(project: Project, clock: FakeClock) -> None:
    registry = PluginRegistry(builtin_plugins())
    plugin = RateLimitPlugin(clock=clock)
    plugins = {name: (plugin if name == "rate_limit" else cls()) for name, cls in registry.plugins.items()}

    def load() -> Gateway:
        loaded = load_blueprint(project.blueprint(BLUEPRINT), registry, env={})
        gateway = build_gateway(loaded, plugins)
        plugin.apply_blueprint(loaded.plugin_configs.get("rate_limit"), loaded)
        return gateway

    first = load()
    for _ in range(3):
        await call(first, "/ip/a")
    second = load()
    assert (await call(second, "/ip/a")).response.status_code == 429


async def test_a_broken_middleware_denies(project: Project, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, _ = gateway_for(project, BLUEPRINT, clock)

    def broken(*args: Any) -> Any:
        raise RuntimeError("bucket bug")

    monkeypatch.setattr(LocalBuckets, "take", broken)
    flow = await call(gateway, "/ip/a")
    assert flow.response.status_code == 500
    assert body_json(flow.response)["error"] == "middleware 'per-ip' failed; the request was denied"


# ------------------------------------------------------------------------------------------
# Redis unreachable


def redis_blueprint(fail_open: bool) -> str:
    return f"""
    name: shared
    middlewares:
      - name: limit
        plugin: rate_limit
        config: {{path: "/*", requests: 5, per: 1s, redis_url: "${{REDIS_URL}}", redis_timeout: 2s, fail_open: {str(fail_open).lower()}}}
    endpoints:
      - {{path: /x, handler: static, config: {{static: {{body: ok}}}}}}
    """


async def test_unreachable_redis_fails_closed_and_logs_once(project: Project, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    gateway, plugin = gateway_for(project, redis_blueprint(False), clock, env={"REDIS_URL": UNREACHABLE})
    with caplog.at_level(logging.INFO, logger="addons.rate_limit"):
        flows = [await call(gateway, "/x") for _ in range(3)]
    assert [f.response.status_code for f in flows] == [503] * 3
    assert flows[0].response.headers["Retry-After"] == "1"
    assert "RateLimit-Limit" not in flows[0].response.headers
    body = body_json(flows[0].response)
    assert body["status"] == 503 and "store is unavailable" in body["error"]
    assert "rate_limit=unavailable:denied" in flows[0].comment
    assert not record_for(flows[0]).rate_limited  # type: ignore[union-attr]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "127.0.0.1:1" in warnings[0].getMessage()
    await plugin.done()


async def test_unreachable_redis_fails_open_when_told(project: Project, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    gateway, plugin = gateway_for(project, redis_blueprint(True), clock, env={"REDIS_URL": UNREACHABLE})
    with caplog.at_level(logging.INFO, logger="addons.rate_limit"):
        flows = [await call(gateway, "/x") for _ in range(8)]  # more than the limit: nothing counts
    assert [f.response.status_code for f in flows] == [200] * 8
    assert "RateLimit-Limit" not in flows[0].response.headers
    assert "rate_limit=unavailable:allowed" in flows[0].comment
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    await plugin.done()


async def test_redis_outage_end_is_logged_once(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    store = RedisBuckets(UNREACHABLE, timeout=1)
    replies: list[Any] = [RedisConnectionError("refused"), RedisConnectionError("refused"), [1, b"4.0", b"0.2"], [1, b"3.0", b"0.4"]]

    class FakeRedis:
        async def evalsha(self, *args: Any) -> Any:
            reply = replies.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply

    monkeypatch.setattr(store, "_redis", lambda: FakeRedis())
    from addons.rate_limit import StoreUnavailable

    with caplog.at_level(logging.INFO, logger="addons.rate_limit"):
        for _ in range(2):
            with pytest.raises(StoreUnavailable):
                await store.take("k", 5.0, 5)
        decision = await store.take("k", 5.0, 5)
        await store.take("k", 5.0, 5)
    assert (decision.allowed, decision.remaining, decision.reset) == (True, 4, 1)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(messages) == 2
    assert messages[0][0] == logging.WARNING and messages[1][0] == logging.INFO and "after 2 failed" in messages[1][1]


async def test_evalsha_falls_back_to_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    from redis.exceptions import NoScriptError

    calls: list[str] = []

    class FakeRedis:
        async def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:
            calls.append("evalsha")
            assert sha == TOKEN_BUCKET_SHA
            raise NoScriptError("NOSCRIPT No matching script")

        async def eval(self, script: str, numkeys: int, *args: Any) -> Any:
            calls.append("eval")
            assert script == TOKEN_BUCKET_LUA and numkeys == 1 and args[0] == "bucket"
            return [0, b"0.25", b"1.5"]

    store = RedisBuckets("redis://127.0.0.1:6379")
    monkeypatch.setattr(store, "_redis", lambda: FakeRedis())
    decision = await store.take("bucket", 0.5, 2)
    assert calls == ["evalsha", "eval"]
    assert (decision.allowed, decision.remaining, decision.retry_after, decision.reset) == (False, 0, 2, 2)


def test_redis_keys_name_the_blueprint_middleware_scope_and_client() -> None:
    config = RateLimitMiddlewareConfig(requests=1, per=1, redis_url="redis://127.0.0.1:6379", key="header:X-API-Key", scope="global")
    middleware = RateLimitMiddleware("per-key", config, blueprint="shop")

    class Ctx:
        flow = make_flow("GET", "/x", headers={"X-API-Key": "abc"})
        user = None
        endpoint = None

    assert middleware.bucket_key(Ctx()) == f"{REDIS_KEY_PREFIX}:shop:per-key:global:header:abc"  # type: ignore[arg-type]


def test_redis_url_password_is_not_logged() -> None:
    assert RedisBuckets("redis://user:s3cret@127.0.0.1:6379/0").safe_url == "redis://***@127.0.0.1:6379/0"


def test_plugin_hands_stores_over_and_names_them(project: Project, clock: FakeClock) -> None:
    gateway, plugin = gateway_for(project, BLUEPRINT, clock)
    names = sorted(plugin._live)
    assert names == [("limits", "per-ip"), ("limits", "per-key"), ("limits", "shared")]
    assert all(m.blueprint == "limits" for m in plugin._live.values())
    plugin.apply_blueprint(None, gateway.blueprint)  # the plugin no longer in use
    assert plugin._live == {}


# ------------------------------------------------------------------------------------------
# Several workers without Redis: each enforces its share


def worker_gateway(project: Project, text: str, clock: FakeClock, index: int, workers: int) -> tuple[Gateway, RateLimitPlugin]:
    """One worker of `backworks run --workers N`, as its environment makes it."""
    registry = PluginRegistry(builtin_plugins())
    plugin = RateLimitPlugin(clock=clock, env={"BACKWORKS_WORKERS": str(workers), "BACKWORKS_WORKER": str(index)})
    plugins = {name: (plugin if name == "rate_limit" else cls()) for name, cls in registry.plugins.items()}
    loaded = load_blueprint(project.blueprint(text), registry, env={})
    gateway = build_gateway(loaded, plugins)
    plugin.apply_blueprint(loaded.plugin_configs.get("rate_limit"), loaded)
    return gateway, plugin


@pytest.mark.parametrize("workers", [2, 3, 4, 7])
def test_the_shares_add_up_to_the_limit_and_never_more(workers: int) -> None:
    for burst in range(1, 40):
        shares = [WorkerShare(i, workers).burst(burst) for i in range(workers)]
        assert sum(shares) == burst
        assert max(shares) - min(shares) <= 1
    assert sum(WorkerShare(i, workers).rate(10.0) for i in range(workers)) == pytest.approx(10.0)


def test_the_share_comes_from_the_environment(caplog: pytest.LogCaptureFixture) -> None:
    assert WorkerShare.from_env({}) is None
    assert WorkerShare.from_env({"BACKWORKS_WORKERS": "1", "BACKWORKS_WORKER": "0"}) is None
    assert WorkerShare.from_env({"BACKWORKS_WORKERS": "3", "BACKWORKS_WORKER": "1"}) == WorkerShare(1, 3)
    # fail closed: a bad index takes the smallest share, never a bigger one
    assert WorkerShare.from_env({"BACKWORKS_WORKERS": "3", "BACKWORKS_WORKER": "9"}) == WorkerShare(2, 3)
    assert WorkerShare.from_env({"BACKWORKS_WORKERS": "3"}) == WorkerShare(2, 3)
    assert WorkerShare.from_env({"BACKWORKS_WORKERS": "many"}) is None
    assert any("BACKWORKS_WORKERS='many'" in r.getMessage() for r in caplog.records)


async def test_two_workers_together_allow_the_limit_and_refill_at_its_rate(project: Project) -> None:
    clocks = [FakeClock(), FakeClock()]
    gateways = [worker_gateway(project, BLUEPRINT, clocks[i], i, 2)[0] for i in range(2)]
    # requests: 3 per 3s (1 token/s): worker 0 holds 2 tokens, worker 1 one; 0.5 token/s each
    answers = [[(await call(gateways[i], "/ip/a")).response for _ in range(4)] for i in range(2)]
    assert [[r.status_code for r in worker] for worker in answers] == [[200, 200, 429, 429], [200, 429, 429, 429]]
    assert answers[0][0].headers["RateLimit-Limit"] == "2" and answers[1][0].headers["RateLimit-Limit"] == "1"
    assert answers[0][2].headers["Retry-After"] == "2"  # one token at 0.5/s
    assert body_json(answers[1][1])["error"] == "rate limit exceeded: 3 request(s) per 3s across 2 workers, this one's share 1.5 with a burst of 1; retry after 2s"
    for clock in clocks:
        clock.advance(2)  # 2 s at 1 token/s in all: one token back on each worker
    assert [(await call(gateways[i], "/ip/a")).response.status_code for i in range(2)] == [200, 200]
    assert [(await call(gateways[i], "/ip/a")).response.status_code for i in range(2)] == [429, 429]


@pytest.mark.parametrize("workers", [2, 3, 5])
async def test_whatever_the_spread_the_workers_never_allow_more_than_the_burst(project: Project, workers: int) -> None:
    clock = FakeClock()
    gateways = [worker_gateway(project, BLUEPRINT, clock, i, workers)[0] for i in range(workers)]
    allowed = 0
    for turn in range(30):  # round robin, then all on one worker: the burst (3) in total, never more
        flow = await call(gateways[turn % workers if turn < 15 else 0], "/ip/a")
        allowed += flow.response.status_code == 200
    assert allowed == 3


async def test_a_burst_smaller_than_the_workers_leaves_some_without_tokens(project: Project, caplog: pytest.LogCaptureFixture) -> None:
    text = BLUEPRINT.replace("requests: 2, per: 10s, scope: global", "requests: 1, per: 10s, scope: global")
    clock = FakeClock()
    with caplog.at_level(logging.DEBUG, logger="addons.rate_limit"):
        gateways = [worker_gateway(project, text, clock, i, 3)[0] for i in range(3)]
    assert [(await call(g, "/global/a")).response.status_code for g in gateways] == [200, 429, 429]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "'shared'" in r.getMessage()]
    assert len(warnings) == 1  # worker 0 only
    assert "burst 1 < 3 workers: workers 1-2 have no tokens" in warnings[0]


async def test_workers_warn_at_load_once_per_new_limit_and_recommend_redis(project: Project, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    registry = PluginRegistry(builtin_plugins())
    plugin = RateLimitPlugin(clock=clock, env={"BACKWORKS_WORKERS": "2", "BACKWORKS_WORKER": "0"})
    plugins = {name: (plugin if name == "rate_limit" else cls()) for name, cls in registry.plugins.items()}

    def load(text: str) -> None:
        loaded = load_blueprint(project.blueprint(text), registry, env={})
        build_gateway(loaded, plugins)
        plugin.apply_blueprint(loaded.plugin_configs.get("rate_limit"), loaded)

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "addons.rate_limit"]

    load(BLUEPRINT)
    assert len(warned()) == 3
    assert all("set redis_url" in w and "each of the 2 workers" in w for w in warned())
    assert any("'per-ip'" in w and "1.5 request(s) per 3s and a burst of 2 on worker 0 and 1 on the others" in w for w in warned())
    load(BLUEPRINT)  # a reload with the same limits: nothing new to say
    assert len(warned()) == 3
    load(BLUEPRINT.replace("requests: 3, per: 3s", "requests: 4, per: 3s"))
    assert len(warned()) == 4 and "2 request(s) per 3s and a burst of 2" in warned()[-1]


def test_with_redis_the_workers_share_the_whole_limit(caplog: pytest.LogCaptureFixture) -> None:
    config = RateLimitMiddlewareConfig(requests=10, per=1, redis_url="redis://127.0.0.1:6379/0")
    middleware = RateLimitMiddleware("limit", config, share=WorkerShare(1, 4))
    assert (middleware.share, middleware.rate, middleware.burst) == (None, 10.0, 10)
    assert isinstance(middleware.store, RedisBuckets)
    local = RateLimitMiddleware("limit", RateLimitMiddlewareConfig(requests=10, per=1), share=WorkerShare(1, 4))
    assert (local.rate, local.burst) == (2.5, 3)
