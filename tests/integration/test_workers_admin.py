"""The admin listener for several workers over two real mitmdump workers.

Two `mitmdump -s backworks.py` processes, each on its own port with its own admin listener (as
`backworks run --workers 2` starts them, with BACKWORKS_WORKER / BACKWORKS_WORKERS set), and the
supervisor's aggregating listener (backworks_cli.workers_admin.serve_admin) in this process
over a hand-made list of WorkerInfo. Checked: merged totals equal the requests sent to both, each
worker's view of a target, the page, `/metrics` through `promtool`, a killed worker's counts,
and each worker's share of a rate limit without Redis.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from backworks_cli.supervisor import WorkerInfo
from backworks_cli.workers_admin import serve_admin
from tests.integration.harness import Proxy, Upstream, free_port, request
from tests.integration.prometheus import check_metrics, promtool_path, require

pytestmark = pytest.mark.integration


class Aggregate:
    """serve_admin on 127.0.0.1:<free port> in a thread of its own, over `self.workers`."""

    def __init__(self, workers: list[WorkerInfo]) -> None:
        self.workers = workers
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._stop = asyncio.Event()
        self._loop.run_until_complete(serve_admin("127.0.0.1", self.port, lambda: list(self.workers), self._stop))

    def start(self) -> Aggregate:
        self._thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                request("GET", "/favicon.ico", port=self.port, timeout=2)
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("the aggregating admin listener did not start")

    def get(self, path: str, **kwargs: object):  # type: ignore[no-untyped-def]
        return request("GET", path, port=self.port, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


def write_blueprint(folder: Path, first: Upstream, second: Upstream) -> Path:
    path = folder / "shop.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: shop
            version: 3.0.0
            plugins:
              proxy:
                config:
                  targets:
                    - {{name: backend-1, url: "{first.url}"}}
                    - {{name: backend-2, url: "{second.url}"}}
                  retries: {{attempts: 1}}
              metrics: {{}}
            middlewares:
              - name: per-ip
                plugin: rate_limit
                config: {{path: "/limited", requests: 5, per: 1h}}
            endpoints:
              - {{path: "/users/{{id}}", handler: proxy}}
              - {{path: /hello, handler: static, config: {{static: {{body: {{hello: world}}}}}}}}
              - {{path: /limited, handler: static, config: {{static: {{body: ok}}}}}}
            """
        )
    )
    return path


@pytest.fixture
def workers(tmp_path: Path, make_upstream) -> Iterator[tuple[list[Proxy], list[WorkerInfo], Aggregate]]:
    first, second = make_upstream("backend-1"), make_upstream("backend-2")
    blueprint = write_blueprint(tmp_path, first, second)
    proxies = [Proxy(blueprint, env={"BACKWORKS_WORKERS": "2", "BACKWORKS_WORKER": str(i)}) for i in range(2)]
    aggregate: Aggregate | None = None
    try:
        for proxy in proxies:
            proxy.start(tmp_path)
        infos = [
            WorkerInfo(index=i, pid=p.process.pid, admin_url=f"http://127.0.0.1:{p.admin_port}", started_at=time.time(), restarts=0, alive=True)  # type: ignore[union-attr]
            for i, p in enumerate(proxies)
        ]
        aggregate = Aggregate(infos).start()
        yield proxies, infos, aggregate
    finally:
        if aggregate is not None:
            aggregate.stop()
        for proxy in proxies:
            proxy.stop()


def metric(text: str, series: str) -> float:
    match = re.search("^" + re.escape(series) + r" (\S+)$", text, re.M)
    assert match, f"{series} not in:\n{text}"
    return float(match.group(1))


def test_totals_and_every_worker_s_view_merged(workers) -> None:  # type: ignore[no-untyped-def]
    proxies, infos, aggregate = workers
    sent = [0, 0]
    for i, count in ((0, 5), (1, 3)):
        for n in range(count):
            assert proxies[i].get(f"/users/{n}").status == 200
            assert proxies[i].get("/hello").status == 200
            sent[i] += 2
    assert proxies[1].get("/nothing").status == 404
    sent[1] += 1

    reply = aggregate.get("/__backworks/api/status")
    assert reply.status == 200 and reply.header("Content-Type") == "application/json"
    status = reply.json
    assert status["totals"]["requests"] == sum(sent) == 17
    assert status["totals"]["classes"]["2xx"] == 16 and status["totals"]["classes"]["4xx"] == 1
    endpoints = {e["label"]: e for e in status["endpoints"]}
    assert endpoints["GET /users/{id}"]["requests"] == 8 and endpoints["GET /hello"]["requests"] == 8
    [pool] = status["pools"]
    assert [t["name"] for t in pool["targets"]] == ["backend-1", "backend-2"]
    for row in pool["targets"]:
        assert row["summary"] == "up on 2/2 workers" and row["state"] == "up"
        assert [w["worker"] for w in row["workers"]] == [0, 1]
    assert sum(t["requests"] for t in pool["targets"]) == 8
    assert [sum(w["requests"] for w in (t["workers"][i] for t in pool["targets"])) for i in range(2)] == [5, 3]
    assert [(w["index"], w["pid"], w["alive"], w["answered"]) for w in status["workers"]] == [(i, infos[i].pid, True, True) for i in range(2)]
    assert [w["requests"] for w in status["workers"]] == sent
    assert status["blueprint"]["name"] == "shop" and status["blueprint"]["version"] == "3.0.0"

    page = aggregate.get("/__backworks")
    assert page.status == 200 and page.header("Content-Type").startswith("text/html")
    assert "renderWorkers" in page.body.decode() and page.header("Content-Security-Policy")
    assert aggregate.get("/favicon.ico").status == 204
    missing = aggregate.get("/not-an-admin-page")
    assert missing.status == 404  # the workers' own answer


def test_metrics_aggregate_passes_promtool_and_counts_every_worker(workers) -> None:  # type: ignore[no-untyped-def]
    require(promtool_path(), "promtool")
    proxies, infos, aggregate = workers
    for i, count in ((0, 4), (1, 6)):
        for n in range(count):
            assert proxies[i].get(f"/users/{n}").status == 200
    text = aggregate.get("/metrics").body.decode()
    code, output = check_metrics(text)
    assert code == 0, output
    requests = 'backworks_requests_total{endpoint="/users/{id}",method="GET",status_class="2xx"}'
    assert metric(text, requests) == 10
    assert metric(text, 'backworks_request_duration_seconds_count{endpoint="/users/{id}",method="GET"}') == 10
    tries = sum(metric(text, f'backworks_upstream_requests_total{{outcome="2xx",pool="default",target="backend-{n}"}}') for n in (1, 2))
    assert tries == 10
    assert metric(text, 'backworks_requests_in_flight{worker="0"}') == 0 and metric(text, 'backworks_requests_in_flight{worker="1"}') == 0
    assert metric(text, 'backworks_blueprint_info{name="shop",version="3.0.0",worker="1"}') == 1
    assert metric(text, 'backworks_worker_up{worker="0"}') == 1 and metric(text, "backworks_workers") == 2

    # worker 1 is killed after this scrape: its 6 stay counted, and the text still passes promtool
    os.kill(infos[1].pid, signal.SIGKILL)
    proxies[1].process.wait(10)  # type: ignore[union-attr]
    aggregate.workers[1] = replace(infos[1], alive=False)
    assert proxies[0].get("/users/9").status == 200
    text = aggregate.get("/metrics").body.decode()
    code, output = check_metrics(text)
    assert code == 0, output
    assert metric(text, requests) == 11
    assert metric(text, 'backworks_worker_up{worker="1"}') == 0
    assert 'backworks_requests_in_flight{worker="1"}' not in text
    status = aggregate.get("/__backworks/api/status").json
    assert [(w["alive"], w["answered"]) for w in status["workers"]] == [(True, True), (False, False)]


def test_a_worker_that_does_not_answer_is_shown_and_the_others_still_count(workers) -> None:  # type: ignore[no-untyped-def]
    proxies, infos, aggregate = workers
    assert aggregate.get("/__backworks/api/status").json["totals"]["requests"] == 0
    for n in range(3):
        assert proxies[0].get("/hello").status == 200
        assert proxies[1].get("/hello").status == 200
    assert aggregate.get("/__backworks/api/status").json["totals"]["requests"] == 6
    os.kill(infos[1].pid, signal.SIGSTOP)  # alive but silent: its answer never comes
    try:
        status = aggregate.get("/__backworks/api/status", timeout=15).json
        assert [(w["alive"], w["answered"]) for w in status["workers"]] == [(True, True), (True, False)]
        assert status["workers"][1]["error"].startswith("no answer in")
        assert status["totals"]["requests"] == 3  # what answered; the metrics keep the silent one's last counts
    finally:
        os.kill(infos[1].pid, signal.SIGCONT)


def test_each_worker_enforces_its_share_of_a_limit_without_redis(workers) -> None:  # type: ignore[no-untyped-def]
    proxies, _, _ = workers
    # 5 per hour over 2 workers: burst 3 on worker 0, 2 on worker 1; 5 in all, never more
    answers = [[proxies[i].get("/limited").status for _ in range(4)] for i in range(2)]
    assert answers == [[200, 200, 200, 429], [200, 200, 429, 429]]
    assert "rate_limit 'per-ip': no redis_url, so each of the 2 workers keeps its own buckets" in proxies[0].log()
    assert "rate_limit 'per-ip': no redis_url" not in proxies[1].log()  # worker 0 says it for all


def test_through_backworks_run_with_two_workers(tmp_path: Path) -> None:
    """The supervisor's own listener: totals of both workers, and a killed worker's counts kept."""
    from tests.integration.test_workers import Run, alive, blueprint_text

    require(promtool_path(), "promtool")
    blueprint = tmp_path / "blueprint.yaml"
    blueprint.write_text(blueprint_text("one", "plugins:\n  metrics: {}\n"))
    run = Run(blueprint, 2, tmp_path / "run.log")
    try:
        run.start()
        sent, seen = 0, set()
        while (len(seen) < 2 or sent < 30) and sent < 400:  # new connections: the kernel spreads them
            seen.add(request("GET", "/pid", port=run.port, timeout=10).json["worker"])
            sent += 1
        assert seen == {"0", "1"}
        status = request("GET", "/__backworks/api/status", port=run.admin_port, timeout=10).json
        assert sorted(w["pid"] for w in status["workers"]) == sorted(run.children())
        assert all(w["answered"] for w in status["workers"])
        total = status["totals"]["requests"]
        assert total == sent == sum(w["requests"] for w in status["workers"])
        text = request("GET", "/metrics", port=run.admin_port, timeout=10).body.decode()
        code, output = check_metrics(text)
        assert code == 0, output
        series = 'backworks_requests_total{endpoint="/pid",method="GET",status_class="2xx"}'
        assert metric(text, series) == total

        victim = status["workers"][1]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # replaced: a new pid at index 1, answering
            status = request("GET", "/__backworks/api/status", port=run.admin_port, timeout=10).json
            if status["workers"][1]["pid"] != victim and status["workers"][1]["answered"]:
                break
            time.sleep(0.2)
        assert status["workers"][1]["pid"] != victim and not alive(victim)
        assert status["workers"][1]["restarts"] == 1
        assert status["totals"]["requests"] == total  # the dead worker's counts stay
        text = request("GET", "/metrics", port=run.admin_port, timeout=10).body.decode()
        assert metric(text, series) == total
        assert metric(text, 'backworks_worker_restarts_total{worker="1"}') == 1
    finally:
        run.stop()
