"""addons.metrics: the collectors, their labels, the exposition formats and the plugin in a gateway."""

from __future__ import annotations

from backworks_core.flowstate import flow_state, peek_state

import json
import subprocess
from collections.abc import Iterator

import prometheus_client
import pytest
from mitmproxy import exceptions, http
from mitmproxy import flow as mflow
from mitmproxy.test import taddons, tutils
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from pydantic import ValidationError

from addons import builtin_plugins
from addons.core import Backworks
from addons.metrics import DEFAULT_BUCKETS, GatewayMetrics, MetricsConfig, MetricsEndpointConfig, MetricsPlugin, TargetCollector
from addons.proxy import Pool, PoolConfig, ProxyPlugin
from backworks_core.diagnostics import BlueprintError
from backworks_core.compiler import compile_blueprint
from backworks_core.plugins import PluginRegistry
from backworks_core.telemetry import Attempt, RequestRecord, method_label

from tests.integration.prometheus import promtool_path, require

from .conftest import FakeClock, body_json, make_flow

OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


@pytest.fixture(autouse=True)
def no_created_series() -> None:
    """As in production: MetricsPlugin() turns prometheus_client's `_created` series off (process-wide)
    before any GatewayMetrics exists; tests that build GatewayMetrics alone must not depend on order."""
    MetricsPlugin()


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def two_target_pool(clock: FakeClock | None = None, **settings) -> Pool:  # type: ignore[no-untyped-def]
    config = PoolConfig.model_validate(
        {"targets": [{"name": "a", "url": "http://127.0.0.1:1"}, {"name": "b", "url": "http://127.0.0.1:2"}], **settings}
    )
    return Pool("default", config, clock=clock or FakeClock())


def proxied_record(request_id: str = "r-1", **kwargs) -> RequestRecord:  # type: ignore[no-untyped-def]
    """A request to /users/{id} that failed on `a` (502), then was answered by `b`."""
    fields = {
        "request_id": request_id,
        "method": "GET",
        "endpoint": "/users/{id}",
        "endpoint_label": "GET /users/{id}",
        "pool": "default",
        "attempts": [Attempt("default", "a", "5xx", 0.3, 502), Attempt("default", "b", "2xx", 0.02, 200)],
    }
    fields.update(kwargs)
    return RequestRecord(**fields)


def sample_count(metrics: GatewayMetrics) -> int:
    return sum(len(family.samples) for family in metrics.registry.collect())


# -- observe: one finished request ----------------------------------------------------------


def test_observe_counts_the_request_by_endpoint_method_and_status_class() -> None:
    metrics = GatewayMetrics()
    metrics.observe(proxied_record(), 200, 0.4)
    metrics.observe(proxied_record(method="POST"), 503, 0.01)
    metrics.observe(proxied_record(), None, 0.01)  # the client went away
    assert value(metrics, "backworks_requests_total", endpoint="/users/{id}", method="GET", status_class="2xx") == 1
    assert value(metrics, "backworks_requests_total", endpoint="/users/{id}", method="POST", status_class="5xx") == 1
    assert value(metrics, "backworks_requests_total", endpoint="/users/{id}", method="GET", status_class="none") == 1
    assert value(metrics, "backworks_requests_total", endpoint="/users/{id}", method="GET", status_class="5xx") is None


def test_observe_fills_the_duration_histogram() -> None:
    metrics = GatewayMetrics(buckets=(0.1, 0.5, 1.0))
    for seconds in (0.05, 0.4, 0.7, 3.0):
        metrics.observe(proxied_record(), 200, seconds)
    labels = {"endpoint": "/users/{id}", "method": "GET"}
    assert value(metrics, "backworks_request_duration_seconds_count", **labels) == 4
    assert value(metrics, "backworks_request_duration_seconds_sum", **labels) == pytest.approx(4.15)
    assert value(metrics, "backworks_request_duration_seconds_bucket", le="0.1", **labels) == 1
    assert value(metrics, "backworks_request_duration_seconds_bucket", le="0.5", **labels) == 2
    assert value(metrics, "backworks_request_duration_seconds_bucket", le="1.0", **labels) == 3
    assert value(metrics, "backworks_request_duration_seconds_bucket", le="+Inf", **labels) == 4


def test_observe_counts_every_try_upstream_with_retries_and_failovers() -> None:
    metrics = GatewayMetrics(buckets=(0.1, 1.0))
    metrics.observe(proxied_record(), 200, 0.4)
    retried_same = proxied_record(attempts=[Attempt("default", "a", "connect_failure", 0.001, None), Attempt("default", "a", "2xx", 0.05, 200)])
    metrics.observe(retried_same, 200, 0.1)
    assert value(metrics, "backworks_upstream_requests_total", pool="default", target="a", outcome="5xx") == 1
    assert value(metrics, "backworks_upstream_requests_total", pool="default", target="a", outcome="connect_failure") == 1
    assert value(metrics, "backworks_upstream_requests_total", pool="default", target="a", outcome="2xx") == 1
    assert value(metrics, "backworks_upstream_requests_total", pool="default", target="b", outcome="2xx") == 1
    assert value(metrics, "backworks_upstream_request_duration_seconds_count", pool="default", target="a") == 3
    assert value(metrics, "backworks_upstream_request_duration_seconds_bucket", pool="default", target="a", le="0.1") == 2
    assert value(metrics, "backworks_upstream_request_duration_seconds_sum", pool="default", target="b") == pytest.approx(0.02)
    assert value(metrics, "backworks_upstream_retries_total", pool="default") == 2  # one each
    assert value(metrics, "backworks_upstream_failovers_total", pool="default") == 1  # only a -> b


def test_a_request_without_tries_has_no_upstream_series() -> None:
    metrics = GatewayMetrics()
    metrics.observe(RequestRecord(request_id="r", method="GET", endpoint="/hello"), 200, 0.001)
    assert value(metrics, "backworks_upstream_retries_total", pool="default") is None
    names = {s.name for family in metrics.registry.collect() for s in family.samples}
    assert not any(name.startswith("backworks_upstream_") for name in names)


def test_observe_counts_auth_denials_rate_limits_and_gateway_errors() -> None:
    metrics = GatewayMetrics()
    denied = RequestRecord(request_id="r", method="GET", endpoint="/admin", auth_denied="expired", auth_status=401, error="token expired")
    forbidden = RequestRecord(request_id="r", method="GET", endpoint="/admin", auth_denied="forbidden", auth_status=403, error="forbidden")
    limited = RequestRecord(request_id="r", method="GET", endpoint="/admin", rate_limited=True, error="slow down")
    metrics.observe(denied, 401, 0.001)
    metrics.observe(denied, 401, 0.001)
    metrics.observe(forbidden, 403, 0.001)
    metrics.observe(limited, 429, 0.001)
    assert value(metrics, "backworks_auth_denials_total", reason="expired", status="401") == 2
    assert value(metrics, "backworks_auth_denials_total", reason="forbidden", status="403") == 1
    assert value(metrics, "backworks_rate_limited_requests_total", endpoint="/admin") == 1
    assert value(metrics, "backworks_gateway_errors_total", status="401") == 2
    assert value(metrics, "backworks_gateway_errors_total", status="403") == 1
    assert value(metrics, "backworks_gateway_errors_total", status="429") == 1


def test_an_upstream_error_passed_through_is_no_gateway_error() -> None:
    metrics = GatewayMetrics()
    metrics.observe(proxied_record(attempts=[Attempt("default", "a", "5xx", 0.01, 500)]), 500, 0.01)  # record.error is None
    metrics.observe(RequestRecord(request_id="r", method="GET", error="no answer"), None, 0.01)  # no status to label it with
    assert value(metrics, "backworks_gateway_errors_total", status="500") is None
    assert value(metrics, "backworks_requests_total", endpoint="/users/{id}", method="GET", status_class="5xx") == 1


def test_pools_with_metrics_disabled_keep_their_upstream_series_out() -> None:
    metrics = GatewayMetrics()
    metrics.disabled_pools = frozenset({"default"})
    metrics.observe(proxied_record(), 200, 0.1)
    assert value(metrics, "backworks_requests_total", endpoint="/users/{id}", method="GET", status_class="2xx") == 1
    assert value(metrics, "backworks_upstream_requests_total", pool="default", target="a", outcome="5xx") is None
    assert value(metrics, "backworks_upstream_retries_total", pool="default") is None


def test_detailed_pools_count_their_tries_by_endpoint_template_too() -> None:
    metrics = GatewayMetrics(buckets=(0.1, 1.0))
    metrics.detailed_pools = frozenset({"default"})
    metrics.observe(proxied_record(), 200, 0.4)
    metrics.observe(proxied_record(endpoint="/orders"), 200, 0.4)
    metrics.observe(proxied_record(pool="plain", attempts=[Attempt("plain", "p", "2xx", 0.01, 200)]), 200, 0.1)
    by_endpoint = "backworks_upstream_endpoint_requests_total"
    assert value(metrics, by_endpoint, endpoint="/users/{id}", pool="default", target="a", outcome="5xx") == 1
    assert value(metrics, by_endpoint, endpoint="/users/{id}", pool="default", target="b", outcome="2xx") == 1
    assert value(metrics, by_endpoint, endpoint="/orders", pool="default", target="b", outcome="2xx") == 1
    assert value(metrics, by_endpoint, endpoint="/users/{id}", pool="plain", target="p", outcome="2xx") is None  # not detailed
    assert value(metrics, "backworks_upstream_requests_total", pool="plain", target="p", outcome="2xx") == 1
    duration = "backworks_upstream_endpoint_request_duration_seconds_count"
    assert value(metrics, duration, endpoint="/orders", pool="default", target="a") == 1
    # the pool's own series are unchanged by the detail
    assert value(metrics, "backworks_upstream_requests_total", pool="default", target="b", outcome="2xx") == 2


def test_a_pool_without_detail_adds_no_endpoint_series() -> None:
    metrics = GatewayMetrics()
    metrics.observe(proxied_record(), 200, 0.4)
    names = {s.name for family in metrics.registry.collect() for s in family.samples}
    assert not any(name.startswith("backworks_upstream_endpoint_") for name in names)


def test_method_label_is_other_for_junk_methods() -> None:
    metrics = GatewayMetrics()
    for junk in ("BREW", "PROPFIND", "X" * 200):
        metrics.observe(RequestRecord(request_id="r", method=method_label(junk), endpoint="/hello"), 405, 0.001)
    assert value(metrics, "backworks_requests_total", endpoint="/hello", method="OTHER", status_class="4xx") == 3
    methods = {s.labels["method"] for family in metrics.registry.collect() for s in family.samples if "method" in s.labels}
    assert methods == {"OTHER"}


# -- per-instance registries: the hot-reload property ---------------------------------------


def test_two_gateway_metrics_never_clash_and_count_apart() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()  # "Duplicated timeseries" on a shared registry
    first.observe(proxied_record(), 200, 0.1)
    first.observe(proxied_record(), 200, 0.1)
    second.observe(proxied_record(), 200, 0.1)
    labels = {"endpoint": "/users/{id}", "method": "GET", "status_class": "2xx"}
    assert value(first, "backworks_requests_total", **labels) == 2
    assert value(second, "backworks_requests_total", **labels) == 1
    assert prometheus_client.REGISTRY.get_sample_value("backworks_requests_total", labels) is None


def test_a_second_metrics_plugin_is_independent_of_the_first() -> None:
    first = counting_plugin()
    second = counting_plugin()  # what mitmproxy's re-execution of backworks.py does
    flow = make_flow("GET", "/users/1")
    flow_state(flow).record = proxied_record()
    flow.response = http_response(200)
    first.observe(flow)
    labels = {"endpoint": "/users/{id}", "method": "GET", "status_class": "2xx"}
    assert value(first.metrics, "backworks_requests_total", **labels) == 1
    assert value(second.metrics, "backworks_requests_total", **labels) is None


def http_response(status: int) -> http.Response:
    return tutils.tresp(status_code=status)


def counting_plugin() -> MetricsPlugin:
    """A plugin as a blueprint with `plugins.metrics` leaves it: counting."""
    plugin = MetricsPlugin()
    plugin.counting = True
    return plugin


def test_the_plugin_observes_a_flow_once_whichever_hooks_fire() -> None:
    plugin = counting_plugin()
    flow = make_flow("GET", "/users/1")
    flow_state(flow).record = proxied_record()
    flow.response = http_response(502)
    plugin.observe(flow)
    plugin.observe(flow)
    plugin.observe(flow)
    assert value(plugin.metrics, "backworks_requests_total", endpoint="/users/{id}", method="GET", status_class="5xx") == 1
    assert value(plugin.metrics, "backworks_upstream_retries_total", pool="default") == 1


def test_the_plugin_ignores_flows_without_a_record() -> None:
    plugin = counting_plugin()
    flow = make_flow("GET", "/x")
    flow.response = http_response(200)
    before = sample_count(plugin.metrics)
    plugin.observe(flow)
    assert sample_count(plugin.metrics) == before


def test_an_errored_flow_is_counted_without_a_status() -> None:
    plugin = counting_plugin()
    flow = make_flow("GET", "/users/1")
    flow_state(flow).record = proxied_record()
    flow.error = mflow.Error("client disconnected")
    plugin.observe(flow)
    assert value(plugin.metrics, "backworks_requests_total", endpoint="/users/{id}", method="GET", status_class="none") == 1
    assert value(plugin.metrics, "backworks_request_duration_seconds_count", endpoint="/users/{id}", method="GET") == 1


# -- cardinality -----------------------------------------------------------------------------


def test_ten_thousand_distinct_requests_to_one_template_add_no_series() -> None:
    metrics = GatewayMetrics()
    metrics.observe(proxied_record("rid-first"), 200, 0.01)
    after_first = sample_count(metrics)
    for index in range(10_000):
        metrics.observe(proxied_record(f"rid-{index:05d}"), 200, (index % 100) / 1000)
    assert sample_count(metrics) == after_first
    assert value(metrics, "backworks_requests_total", endpoint="/users/{id}", method="GET", status_class="2xx") == 10_001
    assert "rid-" not in metrics.prometheus().body.decode()


# -- the targets, read when scraped ---------------------------------------------------------


def target_samples(pool: Pool) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in TargetCollector(lambda: [pool]).collect():
        found[family.name] = {tuple(sorted(s.labels.items())): s.value for s in family.samples}
    return found


def test_target_collector_of_an_unchecked_pool_without_breakers() -> None:
    pool = two_target_pool()
    pool.backends[1].in_flight = 3
    samples = target_samples(pool)
    assert set(samples) == {"backworks_target_healthy", "backworks_target_ejected", "backworks_circuit_breaker_state", "backworks_target_in_flight"}
    assert samples["backworks_target_healthy"] == {}  # no health checks: no claim either way
    assert samples["backworks_circuit_breaker_state"] == {}
    assert samples["backworks_target_ejected"] == {(("pool", "default"), ("target", "a")): 0.0, (("pool", "default"), ("target", "b")): 0.0}
    assert samples["backworks_target_in_flight"] == {(("pool", "default"), ("target", "a")): 0.0, (("pool", "default"), ("target", "b")): 3.0}


def test_target_collector_shows_breaker_states_and_ejections() -> None:
    clock = FakeClock()
    pool = two_target_pool(
        clock,
        circuit_breaker={"failure_threshold": 1, "recovery_timeout": 30},
        outlier_detection={"consecutive_failures": 1, "max_ejection_percent": 100},
    )
    permit = pool.breakers["a"].try_acquire()
    assert permit is not None
    permit.failure("connect_failure")
    pool.outliers.record("b", True, "500")
    assert pool.breakers["a"].state == "open" and pool.outliers.is_ejected("b")
    states = target_samples(pool)["backworks_circuit_breaker_state"]
    assert states == {
        (("pool", "default"), ("state", "closed"), ("target", "a")): 0.0,
        (("pool", "default"), ("state", "open"), ("target", "a")): 1.0,
        (("pool", "default"), ("state", "half_open"), ("target", "a")): 0.0,
        (("pool", "default"), ("state", "closed"), ("target", "b")): 1.0,
        (("pool", "default"), ("state", "open"), ("target", "b")): 0.0,
        (("pool", "default"), ("state", "half_open"), ("target", "b")): 0.0,
    }
    assert target_samples(pool)["backworks_target_ejected"][(("pool", "default"), ("target", "b"))] == 1.0
    clock.advance(30)  # a's breaker goes half-open: read again at the next scrape
    states = target_samples(pool)["backworks_circuit_breaker_state"]
    assert states[(("pool", "default"), ("state", "half_open"), ("target", "a"))] == 1.0
    assert states[(("pool", "default"), ("state", "open"), ("target", "a"))] == 0.0


def test_target_families_are_on_the_registry() -> None:
    pool = two_target_pool(circuit_breaker={"failure_threshold": 1})
    metrics = GatewayMetrics(pools=lambda: [pool], in_flight=lambda: 7)
    assert value(metrics, "backworks_circuit_breaker_state", pool="default", target="b", state="closed") == 1.0
    assert value(metrics, "backworks_requests_in_flight") == 7.0


# -- exposition -----------------------------------------------------------------------------


@pytest.fixture
def busy_metrics() -> GatewayMetrics:
    """Every family has samples: requests, tries, denials, errors, targets with breakers."""
    pool = two_target_pool(circuit_breaker={"failure_threshold": 1}, outlier_detection={"consecutive_failures": 1})
    metrics = GatewayMetrics(pools=lambda: [pool], in_flight=lambda: 2)
    metrics.observe(proxied_record(), 200, 0.4)
    metrics.observe(RequestRecord(request_id="r", method="GET", endpoint="/admin", auth_denied="missing", auth_status=401, error="no token"), 401, 0.001)
    metrics.observe(RequestRecord(request_id="r", method="GET", endpoint="/admin", rate_limited=True, error="slow down"), 429, 0.001)
    metrics.blueprint.labels("test", "1.0").set(1)
    metrics.reloads.inc()
    return metrics


def test_the_text_format_passes_promtool(busy_metrics: GatewayMetrics) -> None:
    promtool = require(promtool_path(), "promtool")  # skipped without it, except under CI
    page = busy_metrics.prometheus("")
    assert page.content_type.startswith("text/plain; version=0.0.4")
    result = subprocess.run([promtool, "check", "metrics"], input=page.body, capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""


def test_the_text_format_parses(busy_metrics: GatewayMetrics) -> None:
    text = busy_metrics.prometheus("").body.decode()
    names = {s.name for family in parse_text(text) for s in family.samples}
    assert "backworks_requests_total" in names
    assert "backworks_circuit_breaker_state" in names


def test_the_plugin_turns_created_series_off() -> None:
    prometheus_client.enable_created_metrics()
    try:
        assert any(s.name.endswith("_created") for f in counted(GatewayMetrics()).registry.collect() for s in f.samples)  # the check can fail
    finally:
        plugin = MetricsPlugin()
    names = {s.name for f in counted(plugin.metrics).registry.collect() for s in f.samples}
    assert "backworks_requests_total" in names
    assert not any(name.endswith("_created") for name in names)


def counted(metrics: GatewayMetrics) -> GatewayMetrics:
    metrics.observe(proxied_record(), 200, 0.1)
    return metrics


def test_openmetrics_when_the_scraper_asks_for_it(busy_metrics: GatewayMetrics) -> None:
    page = busy_metrics.prometheus(OPENMETRICS_ACCEPT)
    assert page.content_type.startswith("application/openmetrics-text")
    text = page.body.decode()
    assert text.endswith("# EOF\n")
    families = {family.name: family for family in parse_openmetrics(text)}  # raises on malformed input
    assert families["backworks_requests"].type == "counter"
    assert families["backworks_request_duration_seconds"].type == "histogram"
    assert not any(s.name.endswith("_created") for family in families.values() for s in family.samples)


def test_plain_accept_gets_the_text_format(busy_metrics: GatewayMetrics) -> None:
    for accept in ("", "*/*", "text/plain"):
        page = busy_metrics.prometheus(accept)
        assert page.content_type.startswith("text/plain"), accept
        assert not page.body.decode().rstrip().endswith("# EOF")


ALL_FAMILY_MARKERS = {
    "proxy": ["backworks_upstream_requests", "backworks_upstream_request_duration_seconds", "backworks_upstream_retries", "backworks_upstream_failovers"],
    "breaker": ["backworks_circuit_breaker_state"],
    "health": ["backworks_target_ejected"],
}
ALWAYS = ["backworks_requests", "backworks_request_duration_seconds", "backworks_target_in_flight", "backworks_auth_denials", "backworks_gateway_errors"]


def family_names(metrics: GatewayMetrics, fmt: str, excluded: tuple[str, ...]) -> set[str]:
    if fmt == "json":
        return set(json.loads(metrics.as_json(excluded).body)["metrics"])
    if fmt == "openmetrics":
        return {f.name for f in parse_openmetrics(metrics.prometheus(OPENMETRICS_ACCEPT, excluded).body.decode())}
    return {f.name for f in parse_text(metrics.prometheus("", excluded).body.decode())}


@pytest.mark.parametrize("fmt", ["text", "openmetrics", "json"])
@pytest.mark.parametrize("flag, dropped", [("include_proxy_metrics", "proxy"), ("include_circuit_breaker_status", "breaker"), ("include_health_check_status", "health")])
def test_include_flags_drop_their_families(busy_metrics: GatewayMetrics, fmt: str, flag: str, dropped: str) -> None:
    everything = family_names(busy_metrics, fmt, MetricsEndpointConfig().excluded())
    for names in ALL_FAMILY_MARKERS.values():
        assert set(names) <= everything, (fmt, names, everything)
    assert "backworks_target_healthy" in everything  # a family without samples is still listed
    config = MetricsEndpointConfig.model_validate({flag: False})
    kept = family_names(busy_metrics, fmt, config.excluded())
    for group, names in ALL_FAMILY_MARKERS.items():
        if group == dropped:
            assert not set(names) & kept, (fmt, names)
        else:
            assert set(names) <= kept, (fmt, names)
    assert set(ALWAYS) <= kept
    assert ("backworks_target_healthy" in kept) == (dropped != "health")


def test_json_format_shape(busy_metrics: GatewayMetrics) -> None:
    page = busy_metrics.as_json()
    assert page.content_type == "application/json"
    body = json.loads(page.body)
    assert set(body) == {"metrics"}
    for name, family in body["metrics"].items():
        assert set(family) == {"type", "help", "samples"}, name
        assert isinstance(family["help"], str) and family["help"]
        for sample in family["samples"]:
            assert set(sample) == {"name", "labels", "value"}
            assert sample["name"].startswith(name)
            assert isinstance(sample["value"], (int, float))
    requests = body["metrics"]["backworks_requests"]
    assert requests["type"] == "counter"
    assert {"name": "backworks_requests_total", "labels": {"endpoint": "/users/{id}", "method": "GET", "status_class": "2xx"}, "value": 1.0} in requests["samples"]
    duration = body["metrics"]["backworks_request_duration_seconds"]
    assert duration["type"] == "histogram"
    assert {"name": "backworks_request_duration_seconds_bucket", "labels": {"endpoint": "/users/{id}", "method": "GET", "le": "+Inf"}, "value": 1.0} in duration["samples"]
    assert body["metrics"]["backworks_requests_in_flight"]["samples"] == [{"name": "backworks_requests_in_flight", "labels": {}, "value": 2.0}]


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("buckets", [[0.1, 0.05], [0.0, 1.0], [-1.0, 1.0], [], [0.1, 0.1, 1.0]])
def test_metrics_config_refuses_bad_buckets(buckets: list[float]) -> None:
    with pytest.raises(ValidationError, match="ascending order"):
        MetricsConfig.model_validate({"buckets": buckets})


def test_metrics_config_defaults_and_good_buckets() -> None:
    config = MetricsConfig.model_validate({})
    assert (config.path, config.port, config.host, config.buckets) == ("/metrics", None, "127.0.0.1", None)
    assert MetricsConfig.model_validate({"buckets": [0.01, 0.1, 1, 10]}).buckets == [0.01, 0.1, 1.0, 10.0]
    with pytest.raises(ValidationError):
        MetricsConfig.model_validate({"port": 0})
    with pytest.raises(ValidationError):
        MetricsConfig.model_validate({"pth": "/x"})


def test_bad_buckets_in_a_blueprint_are_a_located_error(project, load_errors) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: m
        plugins:
          metrics:
            config: {buckets: [1, 0.5]}
        endpoints:
          - {path: /hello, handler: static, config: {static: {body: hi}}}
        """
    )
    errors = load_errors(path)
    assert [d.key_path for d in errors] == ["plugins.metrics.config.buckets"]
    assert errors[0].line == 4


# -- the plugin in a running gateway --------------------------------------------------------

APP = """
name: metrics-test
{plugins}
endpoints:
  - path: /hello
    handler: static
    config: {{static: {{body: {{hello: world}}}}}}
  - path: "/users/{{id}}"
    handler: static
    config: {{static: {{body: user}}}}
{extra}
"""


@pytest.fixture
def stack() -> Iterator[tuple[Backworks, MetricsPlugin, list]]:
    registry = PluginRegistry(builtin_plugins())
    plugins = [plugin() for plugin in registry.plugins.values()]
    core = Backworks(registry, plugins)
    metrics = next(p for p in plugins if isinstance(p, MetricsPlugin))
    yield core, metrics, plugins


async def finish(core: Backworks, plugin: MetricsPlugin, flow) -> None:  # type: ignore[no-untyped-def]
    """The hooks mitmproxy runs once the gateway answered."""
    core.response(flow)
    plugin.observe(flow)


EXPOSED = "server: {admin: {expose_on_api: true}}\n"


async def test_metrics_path_is_answered_by_the_gateway_with_the_opt_in(project, stack) -> None:  # type: ignore[no-untyped-def]
    core, plugin, _ = stack
    path = project.blueprint(APP.format(plugins=EXPOSED + "plugins: {metrics: {}}", extra=""))
    with taddons.context(core, plugin) as tctx:
        tctx.configure(core, blueprint=str(path))
        hello = make_flow("GET", "/hello", mode="reverse:http://127.0.0.1:9")
        await core.request(hello)
        await finish(core, plugin, hello)
        scrape = make_flow("GET", "/metrics", mode="reverse:http://127.0.0.1:9")
        await core.request(scrape)
        assert scrape.response.status_code == 200
        assert scrape.response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert scrape.response.headers["Cache-Control"] == "no-store"
        text = scrape.response.get_content().decode()
        assert 'backworks_requests_total{endpoint="/hello",method="GET",status_class="2xx"} 1.0' in text
        version = core.gateway.blueprint.settings.version
        assert f'backworks_blueprint_info{{name="metrics-test",version="{version}"}} 1.0' in text
        openmetrics = make_flow("GET", "/metrics", mode="reverse:http://127.0.0.1:9", headers={"Accept": OPENMETRICS_ACCEPT})
        await core.request(openmetrics)
        assert openmetrics.response.get_content().decode().endswith("# EOF\n")


async def test_requests_to_one_template_add_no_series_end_to_end(project, stack) -> None:  # type: ignore[no-untyped-def]
    core, plugin, _ = stack
    path = project.blueprint(APP.format(plugins="plugins: {metrics: {}}", extra=""))
    with taddons.context(core, plugin) as tctx:
        tctx.configure(core, blueprint=str(path))
        counts = []
        for index in range(1000):
            flow = make_flow("GET", f"/users/{index}?q={index}", mode="reverse:http://127.0.0.1:9", headers={"X-Request-ID": f"client-{index}"})
            await core.request(flow)
            await finish(core, plugin, flow)
            if index in (0, 999):
                counts.append(sample_count(plugin.metrics))
        assert counts[0] == counts[1]
        assert value(plugin.metrics, "backworks_requests_total", endpoint="/users/{id}", method="GET", status_class="2xx") == 1000
        junk = make_flow("BREW", "/users/1", mode="reverse:http://127.0.0.1:9")
        await core.request(junk)
        await finish(core, plugin, junk)
        assert junk.response.status_code == 405
        assert value(plugin.metrics, "backworks_requests_total", endpoint="/users/{id}", method="OTHER", status_class="4xx") is None
        assert value(plugin.metrics, "backworks_gateway_errors_total", status="405") == 1
        assert any(
            s.labels.get("method") == "OTHER" for f in plugin.metrics.registry.collect() for s in f.samples
        )


async def test_metrics_path_on_an_endpoint_path_is_a_located_error(project, stack) -> None:  # type: ignore[no-untyped-def]
    core, plugin, _ = stack
    path = project.blueprint(APP.format(plugins=EXPOSED + "plugins:\n  metrics:\n    config: {path: /hello}", extra=""))
    with pytest.raises(BlueprintError) as info:
        compile_blueprint(path, core.registry, core.plugins)
    assert [(d.key_path, d.line) for d in info.value.diagnostics] == [("plugins.metrics.config.path", 5)]
    assert "/hello (the Prometheus metrics) is also the path of endpoints[0] (GET /hello)" in info.value.diagnostics[0].message
    with taddons.context(core, plugin) as tctx:
        with pytest.raises(exceptions.OptionsError, match="plugins.metrics.config.path"):
            tctx.configure(core, blueprint=str(path))


@pytest.mark.parametrize("config", ["{}", "{port: 9100}"])
async def test_without_the_opt_in_there_is_no_metrics_route(project, stack, config: str) -> None:  # type: ignore[no-untyped-def]
    core, plugin, _ = stack
    path = project.blueprint(APP.format(plugins=f"plugins:\n  metrics:\n    config: {config}", extra=""))
    with taddons.context(core, plugin) as tctx:
        tctx.configure(core, blueprint=str(path))
        assert not any(e.internal for e in core.gateway.endpoints)
        assert [p.path for p in core.gateway.admin_pages] == ["/metrics"]  # for the admin listener
        flow = make_flow("GET", "/metrics", mode="reverse:http://127.0.0.1:9")
        await core.request(flow)
        assert flow.response.status_code == 404


async def test_without_the_plugin_in_the_blueprint_there_is_no_metrics_route(project, stack) -> None:  # type: ignore[no-untyped-def]
    core, plugin, _ = stack
    path = project.blueprint(APP.format(plugins="", extra=""))
    with taddons.context(core, plugin) as tctx:
        tctx.configure(core, blueprint=str(path))
        flow = make_flow("GET", "/metrics", mode="reverse:http://127.0.0.1:9")
        await core.request(flow)
        assert flow.response.status_code == 404


async def test_nothing_is_counted_while_nothing_can_read_the_counts(project, stack) -> None:  # type: ignore[no-untyped-def]
    core, plugin, _ = stack
    quiet = project.blueprint(APP.format(plugins="", extra=""))
    handler = project.blueprint(APP.format(plugins="", extra="  - {path: /stats, handler: metrics, config: {metrics: {format: json}}}"), name="handler.yaml")
    labels = {"endpoint": "/hello", "method": "GET", "status_class": "2xx"}
    with taddons.context(core, plugin) as tctx:
        tctx.configure(core, blueprint=str(quiet))
        flow = make_flow("GET", "/hello", mode="reverse:http://127.0.0.1:9")
        await core.request(flow)
        await finish(core, plugin, flow)
        assert flow.response.status_code == 200 and not plugin.counting
        assert value(plugin.metrics, "backworks_requests_total", **labels) is None
        tctx.configure(core, blueprint=str(handler))  # a `handler: metrics` endpoint reads them
        flow = make_flow("GET", "/hello", mode="reverse:http://127.0.0.1:9")
        await core.request(flow)
        await finish(core, plugin, flow)
        assert plugin.counting
        assert value(plugin.metrics, "backworks_requests_total", **labels) == 1


def test_a_metrics_handler_endpoint_at_metrics_loads(project, compile_gateway) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        """
        name: m
        endpoints:
          - {path: /metrics, handler: metrics}
        """
    )
    gateway = compile_gateway(path)
    assert [e.template for e in gateway.endpoints if not e.internal] == ["/metrics"]


@pytest.mark.parametrize("fmt", ["prometheus", "json"])
async def test_metrics_handler_endpoint_honours_its_flags(project, compile_gateway, send, fmt: str) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(
        f"""
        name: m
        endpoints:
          - path: /stats
            handler: metrics
            config: {{metrics: {{format: {fmt}, include_proxy_metrics: false, include_health_check_status: false}}}}
        """
    )
    gateway = compile_gateway(path)
    flow = await send(gateway, "GET", "/stats")
    assert flow.response.status_code == 200
    assert flow.response.headers["Cache-Control"] == "no-store"
    if fmt == "json":
        names = set(body_json(flow.response)["metrics"])
    else:
        names = {f.name for f in parse_text(flow.response.get_content().decode())}
    assert "backworks_requests" in names
    assert "backworks_circuit_breaker_state" in names
    assert not any(n.startswith("backworks_upstream_") for n in names)
    assert "backworks_target_healthy" not in names and "backworks_target_ejected" not in names


async def test_custom_buckets_take_effect(project, stack) -> None:  # type: ignore[no-untyped-def]
    core, plugin, _ = stack
    path = project.blueprint(APP.format(plugins="plugins:\n  metrics:\n    config: {buckets: [0.2, 2]}", extra=""))
    with taddons.context(core, plugin) as tctx:
        tctx.configure(core, blueprint=str(path))
        assert plugin.metrics.buckets == (0.2, 2.0)
        flow = make_flow("GET", "/hello", mode="reverse:http://127.0.0.1:9")
        await core.request(flow)
        await finish(core, plugin, flow)
        buckets = {le: value(plugin.metrics, "backworks_request_duration_seconds_bucket", endpoint="/hello", method="GET", le=le) for le in ("0.2", "2.0", "+Inf")}
        assert None not in buckets.values() and buckets["+Inf"] == 1.0  # the one request, under these bounds
        for default_bound in ("0.005", "0.25", "1.0", "10.0"):  # and none of the default ones
            assert value(plugin.metrics, "backworks_request_duration_seconds_bucket", endpoint="/hello", method="GET", le=default_bound) is None
        assert value(plugin.metrics, "backworks_blueprint_loads_total") == 1


async def test_removing_custom_buckets_goes_back_to_the_defaults(project, stack) -> None:  # type: ignore[no-untyped-def]
    core, plugin, _ = stack
    path = project.blueprint(APP.format(plugins="plugins:\n  metrics:\n    config: {buckets: [0.2, 2]}", extra=""))
    with taddons.context(core, plugin) as tctx:
        tctx.configure(core, blueprint=str(path))
        assert plugin.metrics.buckets == (0.2, 2.0)
        path.write_text(APP.format(plugins="plugins: {metrics: {}}", extra=""))
        assert core.reload()
        assert plugin.metrics.buckets == DEFAULT_BUCKETS

async def test_pool_metrics_disabled_in_the_blueprint(project, stack) -> None:  # type: ignore[no-untyped-def]
    core, plugin, plugins = stack
    proxy = next(p for p in plugins if isinstance(p, ProxyPlugin))
    path = project.blueprint(
        """
        name: m
        plugins:
          metrics: {}
          proxy:
            config:
              targets: [{name: a, url: "http://127.0.0.1:1"}]
              upstreams:
                quiet:
                  targets: [{name: q, url: "http://127.0.0.1:2"}]
                  metrics: {enabled: false}
                detailed:
                  targets: [{name: d, url: "http://127.0.0.1:3"}]
                  metrics: {detailed: true}
        endpoints:
          - {path: /x, handler: proxy}
        """
    )
    with taddons.context(core, plugin, proxy) as tctx:
        tctx.configure(core, blueprint=str(path))
        assert plugin.metrics.disabled_pools == frozenset({"quiet"})
        assert plugin.metrics.detailed_pools == frozenset({"detailed"})
        loud = proxied_record()
        quiet = proxied_record(pool="quiet", attempts=[Attempt("quiet", "q", "2xx", 0.01, 200)])
        plugin.metrics.observe(loud, 200, 0.1)
        plugin.metrics.observe(quiet, 200, 0.1)
        assert value(plugin.metrics, "backworks_upstream_requests_total", pool="default", target="b", outcome="2xx") == 1
        assert value(plugin.metrics, "backworks_upstream_requests_total", pool="quiet", target="q", outcome="2xx") is None
        # the pools of the live blueprint are read at scrape time
        assert value(plugin.metrics, "backworks_target_ejected", pool="default", target="a") == 0.0
        assert value(plugin.metrics, "backworks_target_ejected", pool="quiet", target="q") == 0.0
        await proxy.done()
