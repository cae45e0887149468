"""The metrics plugin through a real mitmdump: promtool, a real Prometheus, and bounded series.

The exposition text is checked by Debian's `promtool`; a real `prometheus` server scrapes the
gateway and answers a PromQL query with the number of requests the test sent. A cardinality
test sends 10,000 requests to distinct ids and counts the series before and after.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

import aiohttp
import pytest

from tests.integration.harness import Upstream, free_port, request
from tests.integration.prometheus import PrometheusServer, check_metrics, prometheus_path, promtool_path, require

pytestmark = pytest.mark.integration


def write_blueprint(folder: Path, targets: list[Upstream], metrics: str = "{}", extra_endpoints: str = "") -> Path:
    lines = "\n".join(f'        - {{name: {t.name}, url: "{t.url}"}}' for t in targets)
    text = textwrap.dedent(
        """
        name: shop
        version: 2.1.0
        plugins:
          proxy:
            config:
              targets:
        {lines}
              circuit_breaker: {{failure_threshold: 5}}
              retries: {{attempts: 1}}
              metrics: {{detailed: true}}
          metrics: {metrics}
          auth:
            config:
              jwt_secret: "0123456789abcdef0123456789abcdef"
        middlewares:
          - name: members
            plugin: auth
            config: {{path: "/members*"}}
        endpoints:
          - {{path: "/users/{{id}}", handler: proxy}}
          - {{path: /items, handler: static, config: {{static: {{body: [1, 2, 3]}}}}}}
          - {{path: /members, handler: static, config: {{static: {{body: secret}}}}}}
        {extra}
        """
    ).format(lines=lines, metrics=metrics, extra=textwrap.indent(textwrap.dedent(extra_endpoints).strip(), "  "))
    path = folder / "blueprint.yaml"
    path.write_text(text)
    return path


def series(text: str) -> set[str]:
    """The series of an exposition: each sample's name and labels, without its value."""
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


async def _load(port: int, paths: list[str], concurrency: int = 16) -> list[int]:
    statuses: list[int] = []
    queue = list(reversed(paths))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while queue:
                path = queue.pop()
                async with session.get(f"http://127.0.0.1:{port}{path}") as reply:
                    await reply.read()
                    statuses.append(reply.status)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout=300)
    return statuses


def load(port: int, paths: list[str]) -> list[int]:
    return asyncio.run(_load(port, paths))


@pytest.fixture
def shop(tmp_path: Path, make_upstream, start_proxy):
    first, second = make_upstream("backend-1"), make_upstream("backend-2")
    proxy = start_proxy(write_blueprint(tmp_path, [first, second]))
    return proxy, first, second


def test_exposed_text_passes_promtool_and_counts_what_happened(shop) -> None:
    require(promtool_path(), "promtool")
    proxy, first, second = shop
    for user in range(4):
        assert proxy.get(f"/users/{user}").status == 200
    assert proxy.get("/members").status == 401  # no token
    assert proxy.get("/nothing-here").status == 404
    second.stop()  # connection refused: one failover to backend-1
    for user in range(4):
        assert proxy.get(f"/users/{user}").status == 200

    reply = proxy.admin_get("/metrics")
    assert reply.status == 200
    assert reply.header("content-type").startswith("text/plain")
    text = reply.body.decode()
    code, output = check_metrics(text)
    assert code == 0, output
    assert output.strip() == ""

    def value(pattern: str) -> float:
        match = re.search("^" + re.escape(pattern) + r" (\S+)$", text, re.M)
        assert match, f"{pattern} not in:\n{text}"
        return float(match.group(1))

    assert value('backworks_requests_total{endpoint="/users/{id}",method="GET",status_class="2xx"}') == 8
    assert value('backworks_requests_total{endpoint="/members",method="GET",status_class="4xx"}') == 1
    assert value('backworks_requests_total{endpoint="(unmatched)",method="GET",status_class="4xx"}') == 1
    assert value('backworks_auth_denials_total{reason="missing",status="401"}') == 1
    assert value('backworks_upstream_requests_total{outcome="connect_failure",pool="default",target="backend-2"}') >= 1
    assert value('backworks_upstream_failovers_total{pool="default"}') >= 1
    assert value('backworks_request_duration_seconds_count{endpoint="/users/{id}",method="GET"}') == 8
    assert value('backworks_upstream_request_duration_seconds_count{pool="default",target="backend-1"}') >= 6
    assert value('backworks_circuit_breaker_state{pool="default",state="closed",target="backend-1"}') == 1
    # the pool's metrics.detailed: its tries by endpoint template as well
    assert value('backworks_upstream_endpoint_requests_total{endpoint="/users/{id}",outcome="connect_failure",pool="default",target="backend-2"}') >= 1
    assert value('backworks_upstream_endpoint_request_duration_seconds_count{endpoint="/users/{id}",pool="default",target="backend-1"}') >= 6
    assert value('backworks_blueprint_info{name="shop",version="2.1.0"}') == 1
    assert value("backworks_requests_in_flight") == 0  # the scrape is on the admin listener, not API traffic


def test_a_real_prometheus_scrapes_the_gateway_and_counts_the_requests_sent(shop, tmp_path: Path) -> None:
    require(prometheus_path(), "prometheus")
    proxy = shop[0]
    sent = 37
    statuses = load(proxy.port, ["/items"] * sent)
    assert statuses == [200] * sent
    with PrometheusServer([f"127.0.0.1:{proxy.admin_port}"], workdir=tmp_path) as prometheus:
        got = prometheus.wait_for_value('sum(backworks_requests_total{endpoint="/items"})', sent, timeout=40)
        assert got == sent
        targets = prometheus.targets()
        assert [t["health"] for t in targets] == ["up"]
        # The histogram is usable as Prometheus users query it.
        p99 = prometheus.query('histogram_quantile(0.99, sum by (le) (backworks_request_duration_seconds_bucket{endpoint="/items"}))')
        assert p99 and float(p99[0]["value"][1]) > 0


def test_10000_distinct_ids_leave_the_number_of_series_bounded(tmp_path: Path, make_upstream, start_proxy) -> None:
    blueprint = write_blueprint(
        tmp_path,
        [make_upstream("backend-1")],
        extra_endpoints="- {path: \"/accounts/{id}\", handler: static, config: {static: {body: {id: \"{{path.id}}\"}}}}",
    )
    proxy = start_proxy(blueprint)
    load(proxy.port, [f"/accounts/{n}" for n in range(10)])
    before = series(proxy.admin_get("/metrics").body.decode())
    statuses = load(proxy.port, [f"/accounts/{n}?session=s{n}" for n in range(10, 10_010)])
    assert len(statuses) == 10_000 and set(statuses) == {200}
    after_text = proxy.admin_get("/metrics").body.decode()
    after = series(after_text)
    assert after == before, sorted(after ^ before)
    assert len(after) < 100
    assert re.search(r'backworks_requests_total\{endpoint="/accounts/\{id\}",method="GET",status_class="2xx"\} 10010', after_text)
    assert "/accounts/1" not in after_text and "session" not in after_text


def test_the_deprecated_metrics_port_becomes_the_admin_port(tmp_path: Path, make_upstream, start_proxy) -> None:
    port = free_port()
    blueprint = write_blueprint(tmp_path, [make_upstream("backend-1")], metrics=f"{{config: {{port: {port}, path: /prom}}}}")
    proxy = start_proxy(blueprint, "--set", "backworks_admin=")  # the blueprint decides
    assert proxy.get("/items").status == 200
    log = proxy.wait_for_log(f"admin listener on http://127.0.0.1:{port}")
    assert "warning: plugins.metrics.config.port: deprecated" in log and "server: {admin: {port:" in log
    reply = request("GET", "/prom", port=port)
    assert reply.status == 200
    assert 'backworks_requests_total{endpoint="/items",method="GET",status_class="2xx"} 1.0' in reply.body.decode()
    assert request("GET", "/other", port=port).status == 404
    assert request("GET", "/__backworks/api/status", port=port).json["blueprint"]["name"] == "shop"
    assert proxy.get("/prom").status == 404  # not on the proxy listener


def test_handler_metrics_serves_json_with_the_original_flags(tmp_path: Path, make_upstream, start_proxy) -> None:
    blueprint = write_blueprint(
        tmp_path,
        [make_upstream("backend-1")],
        extra_endpoints="""
        - path: /stats
          handler: metrics
          config:
            metrics: {format: json, include_proxy_metrics: false, include_circuit_breaker_status: true}
        """,
    )
    proxy = start_proxy(blueprint)
    assert proxy.get("/users/1").status == 200
    body = proxy.get("/stats").json["metrics"]
    assert "backworks_requests" in body and "backworks_circuit_breaker_state" in body
    assert not [name for name in body if name.startswith("backworks_upstream_")]
    counted = {tuple(sorted(s["labels"].items())): s["value"] for s in body["backworks_requests"]["samples"]}
    assert counted[(("endpoint", "/users/{id}"), ("method", "GET"), ("status_class", "2xx"))] == 1
