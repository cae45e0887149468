"""The Prometheus harness itself (tests/integration/prometheus.py), against a tiny exporter.

A real Prometheus (2.42) scrapes its first sample ~5-6 s after it is ready (its discovery and scrape
managers only apply new targets on a 5 s tick), so one server is shared by the scrape tests here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.harness import Upstream
from tests.integration.prometheus import PrometheusServer, check_metrics, prometheus_path, promtool_path, require

pytestmark = pytest.mark.integration

VALID = "# HELP demo_total A demo counter.\n# TYPE demo_total counter\ndemo_total {value}\n"


class Exporter:
    """Serves VALID with a value the test can change, at /custom/metrics."""

    path = "/custom/metrics"

    def __init__(self) -> None:
        self.value = 7
        self.upstream = Upstream("exporter", routes={self.path: self._metrics})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=VALID.format(value=self.value), content_type="text/plain", charset="utf-8")


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    exporter = Exporter()
    exporter.upstream.start()
    yield exporter
    exporter.upstream.stop()


@pytest.fixture(scope="module")
def prom(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    require(prometheus_path(), "prometheus")
    server = PrometheusServer([f"127.0.0.1:{exporter.upstream.port}"], metrics_path=exporter.path, workdir=tmp_path_factory.mktemp("prom"))
    with server:
        yield server


# -- promtool ---------------------------------------------------------------------------------


@pytest.fixture
def promtool() -> str:
    return require(promtool_path(), "promtool")


def test_promtool_accepts_valid_text(promtool: str) -> None:
    assert check_metrics(VALID.format(value=7)) == (0, "")


def test_promtool_lint_problem_exits_3(promtool: str) -> None:
    code, output = check_metrics("# HELP demo A demo counter.\n# TYPE demo counter\ndemo 7\n")
    assert code == 3, output
    assert 'counter metrics should have "_total" suffix' in output


def test_promtool_missing_help_is_a_lint_problem(promtool: str) -> None:
    code, output = check_metrics("# TYPE demo_total counter\ndemo_total 7\n")
    assert code == 3, output
    assert "no help text" in output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# HELP demo_total x\n# TYPE demo_total counter\ndemo_total seven\n", "expected float as value"),
        ('# HELP demo_total x\n# TYPE demo_total counter\ndemo_total{a="b} 7\n', "text format parsing error"),
        ("# HELP demo_total x\n# TYPE demo_total counter\ndemo_total 7", "unexpected end of input"),  # no final newline
        ("# HELP demo_total x\n# TYPE demo_total counter\n# TYPE demo_total counter\ndemo_total 7\n", "second TYPE line"),
    ],
)
def test_promtool_parse_error_exits_1(promtool: str, text: str, message: str) -> None:
    code, output = check_metrics(text)
    assert code == 1, output
    assert message in output


# -- a real Prometheus ------------------------------------------------------------------------


def test_prometheus_scrapes_the_exporter(prom: PrometheusServer, exporter: Exporter) -> None:
    exporter.value = 7
    assert prom.wait_for_value("demo_total", 7, timeout=20) == 7
    assert prom.wait_for_value('up{job="backworks"}', 1, timeout=5) == 1
    [target] = prom.targets()
    assert target["health"] == "up", target
    assert target["scrapeUrl"] == f"http://127.0.0.1:{exporter.upstream.port}{exporter.path}"
    [sample] = prom.query("demo_total")
    assert sample["metric"] == {"__name__": "demo_total", "instance": f"127.0.0.1:{exporter.upstream.port}", "job": "backworks"}


def test_prometheus_sees_a_changed_value(prom: PrometheusServer, exporter: Exporter) -> None:
    prom.wait_for_value("demo_total", exporter.value, timeout=20)
    exporter.value = 9
    assert prom.wait_for_value("demo_total", 9, timeout=10) == 9
    assert prom.query("scalar(demo_total) * 2")[0]["value"][1] == "18"


def test_wait_for_value_times_out_with_diagnostics(prom: PrometheusServer) -> None:
    with pytest.raises(TimeoutError, match=r"did not become 1.*last result: \[\].*health=up"):
        prom.wait_for_value("no_such_metric", 1, timeout=0.3)


def test_bad_promql_raises(prom: PrometheusServer) -> None:
    with pytest.raises(RuntimeError, match="bad_data"):
        prom.query("demo_total{")


def test_prometheus_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    require(prometheus_path(), "prometheus")
    server = PrometheusServer(["127.0.0.1:1"], workdir=tmp_path, extra_args=["--no-such-flag"], ready_timeout=10)
    with pytest.raises(RuntimeError, match="no-such-flag"):
        server.start()
    assert server.process is None
