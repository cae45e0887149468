"""The two-gateway recipe (docs/recipes/two-gateways/, docs/scaling.md): two separate `backworks
run` instances, each with its own API and admin port as two machines would run them, behind a
real HAProxy (Debian's `haproxy`) running the recipe's haproxy.cfg as it is (its addresses come
from the environment), with one real `redis-server` and one real upstream.

The test clients connect to HAProxy from loopback addresses other than 127.0.0.1 (127.0.0.11,
127.0.0.12, ...), while HAProxy connects to the gateways from 127.0.0.1, the address the recipe's
blueprint trusts: so the client's address and the balancer's differ, as on a network, and an
address the gateways believed can only have come from HAProxy's X-Forwarded-For.

HAProxy and redis-server come from tests/system-tools.sh; when one is missing the tests skip
locally and fail under CI (env CI set).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from workers import haproxy_path  # noqa: E402  (bench/workers.py: the same HAProxy, located once)

from tests.integration.harness import BIN, ROOT, Proxy, Upstream, free_port, request, stop_process_group, wait_for_port
from tests.integration.prometheus import require
from tests.integration.test_rate_limit import RedisServer

pytestmark = pytest.mark.integration

RECIPE = ROOT / "docs" / "recipes" / "two-gateways"
BALANCER = "127.0.0.1"  # where HAProxy connects to the gateways from: the blueprint's trusted proxy
CATCH_ALL = "/{rest:path}"  # the recipe's proxied, rate-limited endpoint


class HAProxy:
    """The real haproxy in the foreground on 127.0.0.1:<free port>, with the recipe's haproxy.cfg
    and the gateways' addresses in its environment; its log (stdout) in `workdir`."""

    def __init__(self, workdir: Path, gateways: list[int]) -> None:
        self.binary = require(haproxy_path(), "haproxy")
        self.workdir = workdir
        self.port = free_port()
        self.env = {"BALANCER_BIND": f"127.0.0.1:{self.port}", **{f"GATEWAY_{i}": f"127.0.0.1:{port}" for i, port in enumerate(gateways, 1)}}
        self.log_path = workdir / f"haproxy-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        config = RECIPE / "haproxy.cfg"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [self.binary, "-db", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=self.workdir,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, timeout=15, process=self.process)
        except Exception:
            raise RuntimeError(f"haproxy did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in haproxy's log after {timeout}s:\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process_group(self.process)


@dataclass
class Gateway(Proxy):
    """One instance as the recipe runs it: `backworks run blueprint.yaml --port N -- --set
    backworks_admin=127.0.0.1:M` (reverse mode, lazy connections; mitmdump replaces the CLI, so
    `process.pid` is the gateway itself)."""

    tool: str = "gateway"

    def command(self) -> list[str]:
        assert self.blueprint is not None
        return [
            str(BIN / "backworks"), "run", str(self.blueprint), "--host", "127.0.0.1", "--port", str(self.port), "--flow-detail", "0",
            "--", "--set", f"backworks_admin=127.0.0.1:{self.admin_port}",
        ]  # fmt: skip

    def status(self) -> dict[str, Any]:
        reply = self.admin_get("/__backworks/api/status")
        assert reply.status == 200, reply.body[:500]
        return reply.json

    def served(self) -> dict[str, int]:
        """Answers of the proxied endpoint by status class (`2xx`, `4xx`, ...): not the health checks."""
        endpoint = next(e for e in self.status()["endpoints"] if e["path"] == CATCH_ALL)
        return endpoint["classes"]


@dataclass
class Recipe:
    upstream: Upstream
    redis: RedisServer
    gateways: list[Gateway]
    balancer: HAProxy

    def get(self, path: str, *, source: str = "127.0.0.1", headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
        """One request through HAProxy on a connection of its own, from the loopback address `source`."""
        connection = http.client.HTTPConnection("127.0.0.1", self.balancer.port, timeout=timeout, source_address=(source, 0))
        try:
            connection.request("GET", path, headers={"Connection": "close", **(headers or {})})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


@pytest.fixture
def start_recipe(tmp_path: Path) -> Iterator[Callable[..., Recipe]]:
    """Start upstream, redis-server, two gateways and HAProxy; all stopped at teardown."""
    stops: list[Callable[[], None]] = []

    def start(*, requests: int, per: str, upstream_delay: float = 0.0) -> Recipe:
        require(haproxy_path(), "haproxy")  # before anything starts
        upstream = Upstream("api", delay=upstream_delay).start()
        stops.append(upstream.stop)
        redis = RedisServer(tmp_path).start()
        stops.append(redis.stop)
        env = {
            "API_URL": upstream.url,
            "REDIS_URL": redis.url,
            "BALANCER_ADDRESS": BALANCER,
            "RATE_LIMIT_REQUESTS": str(requests),
            "RATE_LIMIT_PER": per,
        }
        gateways = []
        for _ in range(2):
            gateway = Gateway(RECIPE / "blueprint.yaml", env=env)
            stops.append(gateway.stop)
            gateway.start(tmp_path)
            gateways.append(gateway)
        balancer = HAProxy(tmp_path, [g.port for g in gateways])
        stops.append(balancer.stop)
        balancer.start()
        recipe = Recipe(upstream, redis, gateways, balancer)
        # Both gateways answer through the balancer before the test begins (checks run every second).
        deadline = time.monotonic() + 20
        while not all(g.status()["endpoints"] for g in gateways) or recipe.get("/healthz")[0] != 200:
            assert time.monotonic() < deadline, f"the recipe did not come up:\n{balancer.log()[-3000:]}"
            time.sleep(0.1)
        return recipe

    yield start
    for stop in reversed(stops):
        stop()


def test_the_limit_is_shared_and_the_client_is_the_balancers_x_forwarded_for(start_recipe: Callable[..., Recipe]) -> None:
    recipe = start_recipe(requests=10, per="1h")  # no token comes back during the test
    first, second = recipe.gateways

    # (a) 30 requests from one client, round robin over the two gateways: 10 allowed in total, not 20.
    statuses = [recipe.get(f"/orders/{i}", source="127.0.0.11")[0] for i in range(30)]
    assert statuses == [200] * 10 + [429] * 20
    one, two = first.served(), second.served()
    assert one["2xx"] + two["2xx"] == 10 and one["4xx"] + two["4xx"] == 20
    # each instance answered, and each refused although it had allowed fewer than 10 itself
    assert one["2xx"] > 0 and one["4xx"] > 0 and two["2xx"] > 0 and two["4xx"] > 0, (one, two)
    assert one["2xx"] < 10 and two["2xx"] < 10

    # (b) another client is another bucket, even when it claims to be someone else: the address
    # the gateways believe is the one HAProxy appended, not the client's X-Forwarded-For.
    received = len(recipe.upstream.received)
    spoofed = [recipe.get("/orders", source="127.0.0.12", headers={"X-Forwarded-For": f"198.51.100.{i}"})[0] for i in range(12)]
    assert spoofed == [200] * 10 + [429] * 2
    seen = [r.headers.get("X-Forwarded-For") for r in recipe.upstream.received[received:]]
    # upstream gets the chain as received (the client's claim, HAProxy's client address) with
    # the gateway's peer, the balancer, appended
    assert seen == [f"198.51.100.{i}, 127.0.0.12, {BALANCER}" for i in range(10)]
    assert recipe.get("/orders", source="127.0.0.13")[0] == 200  # a third client: its own bucket
    keys = sorted(key.decode() for key in recipe.redis.client().keys("backworks:rl:*"))
    assert keys == [f"backworks:rl:two-gateways:per-client:global:ip:127.0.0.{n}" for n in (11, 12, 13)]

    # (d) each instance's admin listener answers for itself, on its own port, and only there
    statuses_by_admin = [g.status() for g in recipe.gateways]
    assert [s["blueprint"]["name"] for s in statuses_by_admin] == ["two-gateways"] * 2
    totals = [g.served() for g in recipe.gateways]
    assert sum(t["2xx"] for t in totals) == 21 and sum(t["4xx"] for t in totals) == 22
    assert len({first.admin_port, second.admin_port, first.port, second.port}) == 4
    for gateway in recipe.gateways:  # each instance's own Prometheus metrics, beside its status
        metrics = gateway.admin_get("/metrics")
        assert metrics.status == 200 and b"backworks_" in metrics.body
    # not on the API port: there the path is the API's like any other (the catch-all proxies it)
    assert request("GET", "/__backworks/api/status", port=first.port).json["upstream"] == "api"


@dataclass
class Outcome:
    started: float
    ended: float
    ok: bool
    detail: str


def test_killing_one_instance_under_load_fails_only_what_was_in_flight(start_recipe: Callable[..., Recipe]) -> None:
    recipe = start_recipe(requests=1_000_000, per="1m", upstream_delay=0.02)
    victim, survivor = recipe.gateways
    concurrency, per_client_cap, time_cap = 4, 600, 45.0
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        deadline = time.monotonic() + time_cap
        for i in range(per_client_cap):
            if stop.is_set() or time.monotonic() > deadline:
                return
            started = time.monotonic()
            try:
                status, body = recipe.get(f"/load/{number}/{i}", timeout=10)
                ok, detail = status == 200, f"HTTP {status}: {body[:200]!r}"
            except OSError as error:  # refused, reset, timed out
                ok, detail = False, repr(error)
            with lock:
                outcomes.append(Outcome(started, time.monotonic(), ok, detail))

    def answered(after: float = 0.0) -> int:
        with lock:
            return sum(1 for o in outcomes if o.ok and o.started >= after)

    threads = [threading.Thread(target=client, args=(n,), name=f"load-{n}", daemon=True) for n in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: answered() >= 60 and victim.served()["2xx"] >= 10 and survivor.served()["2xx"] >= 10, "load on both instances")
        assert victim.process is not None
        killed_at = time.monotonic()
        os.kill(victim.process.pid, signal.SIGKILL)  # the gateway itself: `backworks run` exec'd mitmdump
        victim.process.wait(10)
        dead_at = time.monotonic()  # from here on its sockets are closed
        # HAProxy's checks (inter 1s, fall 2) take it out; requests go on meanwhile
        recipe.balancer.wait_for_log("gateway-1 is DOWN", timeout=20)
        wait_until(lambda: answered(after=dead_at) >= 100, "100 answers after the kill")
        marked_down_at = time.monotonic()
        wait_until(lambda: answered(after=marked_down_at) >= 40, "40 answers once HAProxy knows")
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    assert not any(t.is_alive() for t in threads)

    failed = [o for o in outcomes if not o.ok]
    # errors only for the requests in flight when the instance died: each client has one at most
    assert all(o.started < dead_at and o.ended >= killed_at for o in failed), [(o.started - killed_at, o.detail) for o in failed]
    assert len(failed) <= concurrency, [o.detail for o in failed]
    later = [o for o in outcomes if o.started >= dead_at]
    assert len(later) >= 100 and all(o.ok for o in later)
    # (d) the survivor's admin still answers and counts its own share; the victim's is gone
    assert survivor.served()["2xx"] >= len(later)
    with pytest.raises(ConnectionRefusedError):
        request("GET", "/__backworks/api/status", port=victim.admin_port, timeout=2)
    print(json.dumps({"requests": len(outcomes), "failed": len(failed), "after_kill": len(later), "failures": [o.detail for o in failed]}))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout}s")
        time.sleep(0.05)


def test_the_docs_show_the_recipes_files_as_they_are() -> None:
    """docs/scaling.md quotes haproxy.cfg (after its header) and the blueprint's settings: the
    files the tests above run, so the page cannot drift from them."""
    doc = (ROOT / "docs" / "scaling.md").read_text()
    config = (RECIPE / "haproxy.cfg").read_text()
    assert config[config.index("global\n") :] in doc
    blueprint = (RECIPE / "blueprint.yaml").read_text()
    assert blueprint[blueprint.index("server:\n") : blueprint.index("endpoints:\n")].rstrip("\n") + "\n" in doc
