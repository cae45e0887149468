"""The rate_limit middleware in a real mitmdump: limits, headers, isolated keys, and two mitmdump
processes sharing one real `redis-server` (Debian's package, see tests/system-tools.sh; the test
skips locally and fails under CI when it is missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from addons.rate_limit import TOKEN_BUCKET_SHA
from tests.integration.harness import Proxy, Reply, free_port, wait_for_port
from tests.integration.prometheus import require

pytestmark = pytest.mark.integration


def redis_server_path() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    fallback = Path("/usr/bin/redis-server")  # PATH may lack /usr/bin in odd environments
    return str(fallback) if fallback.is_file() and os.access(fallback, os.X_OK) else None


class RedisServer:
    """A throw-away redis-server on 127.0.0.1:<free port>: no persistence, log in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require(redis_server_path(), "redis-server")
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = (self.workdir / f"redis-{self.port}.log").open("wb")
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        wait_for_port(self.port, timeout=15, process=self.process)
        return self

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def blueprint(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "blueprint.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def burst_of(proxies: list[Proxy], count: int, path: str = "/limited", headers: dict[str, str] | None = None) -> tuple[list[Reply], float]:
    """`count` requests, one connection each, round robin over `proxies`; and the seconds they took."""
    started = time.monotonic()
    replies = [proxies[i % len(proxies)].get(path, headers=headers or {}) for i in range(count)]
    return replies, time.monotonic() - started


def check_limit(replies: list[Reply], elapsed: float, *, limit: int, requests: int, per: float) -> None:
    """About `limit` allowed (±5%, and no more than the refill over `elapsed` allows), the rest 429."""
    statuses = [r.status for r in replies]
    allowed = statuses.count(200)
    assert set(statuses) <= {200, 429}, statuses
    assert abs(allowed - limit) <= limit * 0.05, (allowed, statuses)
    assert allowed <= limit + elapsed * requests / per + 1, (allowed, elapsed)
    assert statuses[: limit - 2] == [200] * (limit - 2)  # the burst goes through first
    for reply in replies:
        assert reply.header("RateLimit-Limit") == str(limit)
        remaining, reset = int(reply.header("RateLimit-Remaining") or -1), int(reply.header("RateLimit-Reset") or -1)
        assert 0 <= remaining < limit and 0 <= reset <= per
        if reply.status == 429:
            assert remaining == 0
            assert 1 <= int(reply.header("Retry-After") or 0) <= per / requests + 1
            body = reply.json
            assert body["status"] == 429 and body["error"].startswith("rate limit exceeded") and body["request_id"]
            assert reply.header("X-Request-ID") == body["request_id"]
        else:
            assert reply.header("Retry-After") is None


LOCAL = """
    name: limited
    middlewares:
      - name: per-ip
        plugin: rate_limit
        config: {path: "/limited", requests: 50, per: 1m, burst: 50}
      - name: per-key
        plugin: rate_limit
        config: {path: "/keyed", requests: 5, per: 1m, key: "header:X-API-Key"}
    endpoints:
      - {path: /limited, handler: static, config: {static: {body: {ok: true}}}}
      - {path: /keyed, handler: static, config: {static: {body: {ok: true}}}}
      - {path: /free, handler: static, config: {static: {body: {ok: true}}}}
"""


def test_limit_is_enforced_with_the_headers(tmp_path: Path, start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(blueprint(tmp_path, LOCAL))
    replies, elapsed = burst_of([proxy], 60)
    check_limit(replies, elapsed, limit=50, requests=50, per=60)
    remaining = [int(r.header("RateLimit-Remaining") or -1) for r in replies[:10]]
    assert remaining == list(range(49, 39, -1))
    free = proxy.get("/free")
    assert free.status == 200 and free.header("RateLimit-Limit") is None


def test_keys_are_isolated(tmp_path: Path, start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(blueprint(tmp_path, LOCAL))
    alice = [proxy.get("/keyed", headers={"X-API-Key": "alice"}).status for _ in range(7)]
    bob = [proxy.get("/keyed", headers={"X-API-Key": "bob"}).status for _ in range(7)]
    assert alice == [200] * 5 + [429] * 2
    assert bob == [200] * 5 + [429] * 2
    # without the header: the client's address, a bucket of its own
    assert [proxy.get("/keyed").status for _ in range(6)] == [200] * 5 + [429]


SHARED = """
    name: shared-limit
    middlewares:
      - name: everyone
        plugin: rate_limit
        config: {path: "/limited", requests: 40, per: 1m, burst: 40, scope: global, redis_url: "${REDIS_URL}", redis_timeout: 2s}
    endpoints:
      - {path: /limited, handler: static, config: {static: {body: {ok: true}}}}
"""


def test_two_processes_share_one_limit_through_redis(tmp_path: Path, start_proxy: Callable[..., Proxy], redis_server: RedisServer) -> None:
    path = blueprint(tmp_path, SHARED)
    env = {"REDIS_URL": redis_server.url}
    first, second = start_proxy(path, env=env), start_proxy(path, env=env)
    replies, elapsed = burst_of([first, second], 60)
    check_limit(replies, elapsed, limit=40, requests=40, per=60)
    assert {r.status for r in replies[0::2]} == {200, 429} == {r.status for r in replies[1::2]}  # both processes refused
    client = redis_server.client()
    keys = client.keys("backworks:rl:*")
    assert keys == [b"backworks:rl:shared-limit:everyone:global:ip:127.0.0.1"]
    assert 0 < client.pttl(keys[0]) <= 61_000
    # the script was loaded once, then run by its hash
    assert client.script_exists(TOKEN_BUCKET_SHA) == [True]


def test_redis_outage_fails_closed_then_recovers(tmp_path: Path, start_proxy: Callable[..., Proxy], redis_server: RedisServer) -> None:
    path = blueprint(tmp_path, SHARED)
    proxy = start_proxy(path, env={"REDIS_URL": redis_server.url})
    assert proxy.get("/limited").status == 200
    redis_server.stop()
    down = [proxy.get("/limited") for _ in range(3)]
    assert [r.status for r in down] == [503] * 3
    assert down[0].header("Retry-After") == "1" and down[0].json["status"] == 503
    assert proxy.log().count("logged once until it answers again") == 1
    redis_server.start()  # a new, empty Redis on the same port: the script is loaded again by EVAL
    deadline = time.monotonic() + 10
    reply = proxy.get("/limited")
    while reply.status != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        reply = proxy.get("/limited")
    assert reply.status == 200 and reply.header("RateLimit-Remaining") == "39"
    proxy.wait_for_log("answers again")
