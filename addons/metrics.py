"""The metrics plugin: Prometheus metrics of the gateway, its upstreams and its decisions.

Every collector lives on a registry of this addon instance, never on prometheus_client's global
one: mitmproxy re-executes backworks.py on a hot reload without re-importing this module, and
module-level collectors would clash ("Duplicated timeseries"). Label values come from the
blueprint (endpoint templates, pools, targets) or from fixed sets of codes, never from the
request, so the number of series is bounded by the blueprint whatever clients send.

Exposed at `config.path` on the admin listener (addons/admin.py); a blueprint endpoint with
`handler: metrics` serves the same data, in Prometheus text or JSON, as the original did.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from mitmproxy import http
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field, field_validator

from backworks_core.context import Answer, RequestContext
from backworks_core.loader import EndpointSpec, LoadedBlueprint
from backworks_core.model import StrictModel, UrlPath
from backworks_core.flowstate import flow_state
from backworks_core.pages import InternalEndpoint, Page, page_response
from backworks_core.plugins import Plugin, Section
from backworks_core.telemetry import Attempt, RequestRecord, record_for, status_class

if TYPE_CHECKING:
    from addons.proxy.pool import Pool

logger = logging.getLogger(__name__)

OBSERVED = "observed.metrics"  # flowstate: counted once, whichever hook comes first
# Seconds; Prometheus' defaults, plus 25 ms and 50 ms where gateway latencies sit.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0)
BREAKER_STATES = ("closed", "open", "half_open")

# What the `include_*` flags of `handler: metrics` leave out, by metric family name.
PROXY_FAMILIES = ("backworks_upstream_",)
BREAKER_FAMILIES = ("backworks_circuit_breaker_",)
HEALTH_FAMILIES = ("backworks_target_healthy", "backworks_target_ejected")


class MetricsConfig(StrictModel):
    path: UrlPath = Field("/metrics", description="where Prometheus scrapes, on the admin listener (`server.admin`)", examples=["/prometheus"])
    port: int | None = Field(None, ge=1, le=65535, description="deprecated (a warning): the admin listener's port when neither `server.admin.port` nor `dashboard.port` is set; write `server.admin.port`", examples=[9100])
    host: str = Field("127.0.0.1", description="deprecated, with `port`: the admin listener's address when `server.admin.host` is not set", examples=["127.0.0.1"])
    buckets: list[float] | None = Field(None, description="latency histogram buckets, in seconds", examples=[[0.01, 0.05, 0.1, 0.5, 1, 5]])

    @field_validator("buckets")
    @classmethod
    def _ascending(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (not value or any(b <= 0 for b in value) or sorted(set(value)) != value):
            raise ValueError("expected positive numbers of seconds in ascending order, each once")
        return value


class MetricsEndpointConfig(StrictModel):
    """`config.metrics` of an endpoint with `handler: metrics` (the original's flags)."""

    format: Literal["prometheus", "json"] = Field("prometheus", description="prometheus (the text exposition format) or json", examples=["json"])
    include_proxy_metrics: bool = Field(True, description="include the backworks_upstream_* series", examples=[False])
    include_circuit_breaker_status: bool = Field(True, description="include the backworks_circuit_breaker_* series", examples=[False])
    include_health_check_status: bool = Field(True, description="include backworks_target_healthy and backworks_target_ejected", examples=[False])

    def excluded(self) -> tuple[str, ...]:
        return (
            (() if self.include_proxy_metrics else PROXY_FAMILIES)
            + (() if self.include_circuit_breaker_status else BREAKER_FAMILIES)
            + (() if self.include_health_check_status else HEALTH_FAMILIES)
        )


class TargetCollector(Collector):
    """Per target, read when scraped: health, ejection, breaker state and requests in flight."""

    def __init__(self, pools: Callable[[], Sequence[Pool]]) -> None:
        self.pools = pools

    def describe(self) -> Iterable[Metric]:
        return []  # the families depend on the blueprint; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        healthy = GaugeMetricFamily("backworks_target_healthy", "1 if the target passes its health checks, 0 if not (checked targets only).", labels=["pool", "target"])
        ejected = GaugeMetricFamily("backworks_target_ejected", "1 while outlier detection keeps the target out of the pool.", labels=["pool", "target"])
        breaker = GaugeMetricFamily("backworks_circuit_breaker_state", "1 for the state the target's circuit breaker is in.", labels=["pool", "target", "state"])
        in_flight = GaugeMetricFamily("backworks_target_in_flight", "Requests on their way to or from the target now.", labels=["pool", "target"])
        for pool in self.pools():
            for row in pool.describe():
                labels = [pool.name, row["name"]]
                if row["health"] != "unchecked":
                    healthy.add_metric(labels, 1.0 if row["health"] == "healthy" else 0.0)
                ejected.add_metric(labels, 1.0 if row["ejected"] else 0.0)
                if row["breaker"] != "none":
                    for state in BREAKER_STATES:
                        breaker.add_metric(labels + [state], 1.0 if row["breaker"] == state else 0.0)
                in_flight.add_metric(labels, float(row["in_flight"]))
        yield from (healthy, ejected, breaker, in_flight)


class GatewayMetrics:
    """The collectors, on a registry of their own."""

    def __init__(self, buckets: Sequence[float] = DEFAULT_BUCKETS, pools: Callable[[], Sequence[Pool]] = list, in_flight: Callable[[], int] = lambda: 0) -> None:
        registry = self.registry = CollectorRegistry(auto_describe=True)
        self.buckets = tuple(buckets)
        self.requests = Counter(
            "backworks_requests", "Requests by endpoint template, method and status class.", ["endpoint", "method", "status_class"], registry=registry
        )
        self.duration = Histogram(
            "backworks_request_duration_seconds", "Time from the request's start to the end of the answer.", ["endpoint", "method"], buckets=self.buckets, registry=registry
        )
        self.upstream = Counter(
            "backworks_upstream_requests", "Tries sent upstream, by pool, target and outcome (status class or failure).", ["pool", "target", "outcome"], registry=registry
        )
        self.upstream_duration = Histogram(
            "backworks_upstream_request_duration_seconds", "Time of one try upstream, until its head arrived or it failed.", ["pool", "target"], buckets=self.buckets, registry=registry
        )
        # Pools with `metrics: {detailed: true}` also get their tries by endpoint template: the
        # label set is bounded by the blueprint (endpoints x targets), never by request input.
        self.upstream_by_endpoint = Counter(
            "backworks_upstream_endpoint_requests",
            "Tries sent upstream by endpoint template, pool, target and outcome (pools with metrics.detailed).",
            ["endpoint", "pool", "target", "outcome"],
            registry=registry,
        )
        self.upstream_by_endpoint_duration = Histogram(
            "backworks_upstream_endpoint_request_duration_seconds",
            "Time of one try upstream by endpoint template, pool and target (pools with metrics.detailed).",
            ["endpoint", "pool", "target"],
            buckets=self.buckets,
            registry=registry,
        )
        self.retries = Counter("backworks_upstream_retries", "Tries after the first.", ["pool"], registry=registry)
        self.failovers = Counter("backworks_upstream_failovers", "Retries that went to another target than the try before.", ["pool"], registry=registry)
        self.auth_denials = Counter("backworks_auth_denials", "Requests the auth middleware denied, by reason code and status.", ["reason", "status"], registry=registry)
        self.rate_limited = Counter("backworks_rate_limited_requests", "Requests refused with 429 by rate limiting.", ["endpoint"], registry=registry)
        self.errors = Counter("backworks_gateway_errors", "Errors Backworks answered itself (not the upstream's), by status.", ["status"], registry=registry)
        in_flight_gauge = Gauge("backworks_requests_in_flight", "Requests between their head arriving and the end of their answer.", registry=registry)
        in_flight_gauge.set_function(lambda: float(in_flight()))
        self.blueprint = Gauge("backworks_blueprint_info", "The blueprint being served.", ["name", "version"], registry=registry)
        self.reloads = Counter("backworks_blueprint_loads", "Blueprints that went live (the first one included).", registry=registry)
        registry.register(TargetCollector(pools))
        self.disabled_pools: frozenset[str] = frozenset()
        self.detailed_pools: frozenset[str] = frozenset()
        self._endpoint_children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self._request_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._upstream_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, record: RequestRecord, status: int | None, seconds: float) -> None:
        """One finished request: its own series, its tries upstream, and what was refused."""
        key = (record.endpoint, record.method, status_class(status))
        children = self._request_children.get(key)
        if children is None:  # `labels()` costs a lock and a lookup; the label sets are few
            children = self._request_children[key] = (self.requests.labels(*key), self.duration.labels(*key[:2]))
        children[0].inc()
        children[1].observe(seconds)
        attempts = record.attempts
        if attempts and record.pool not in self.disabled_pools:
            for attempt in attempts:
                try_key = (attempt.pool, attempt.target, attempt.outcome)
                try_children = self._upstream_children.get(try_key)
                if try_children is None:
                    try_children = self._upstream_children[try_key] = (self.upstream.labels(*try_key), self.upstream_duration.labels(*try_key[:2]))
                try_children[0].inc()
                try_children[1].observe(attempt.seconds)
                if attempt.pool in self.detailed_pools:
                    self._observe_by_endpoint(record.endpoint, attempt)
            if len(attempts) > 1:  # most requests take one try: no retries or failovers to count
                self.retries.labels(attempts[0].pool).inc(record.retries)
                if record.failovers:
                    self.failovers.labels(attempts[0].pool).inc(record.failovers)
        if record.auth_denied is not None:
            self.auth_denials.labels(record.auth_denied, str(record.auth_status)).inc()
        if record.rate_limited:
            self.rate_limited.labels(record.endpoint).inc()
        if record.error is not None and status is not None:
            self.errors.labels(str(status)).inc()

    def _observe_by_endpoint(self, endpoint: str, attempt: Attempt) -> None:
        key = (endpoint, attempt.pool, attempt.target, attempt.outcome)
        children = self._endpoint_children.get(key)
        if children is None:
            children = self._endpoint_children[key] = (self.upstream_by_endpoint.labels(*key), self.upstream_by_endpoint_duration.labels(*key[:3]))
        children[0].inc()
        children[1].observe(attempt.seconds)

    def went_live(self, blueprint: LoadedBlueprint, disabled_pools: Iterable[str], detailed_pools: Iterable[str] = ()) -> None:
        self.blueprint.clear()
        self.blueprint.labels(blueprint.settings.name, blueprint.settings.version).set(1)
        self.reloads.inc()
        self.disabled_pools = frozenset(disabled_pools)
        self.detailed_pools = frozenset(detailed_pools) - self.disabled_pools

    # -- exposition -----------------------------------------------------------------------

    def families(self, excluded: Sequence[str] = ()) -> list[Metric]:
        return [m for m in self.registry.collect() if not m.name.startswith(tuple(excluded))]

    def prometheus(self, accept: str = "", excluded: Sequence[str] = ()) -> Page:
        """The text format, or OpenMetrics when the scraper asks for it (Prometheus does)."""
        encoder, content_type = choose_encoder(accept)
        return Page(200, content_type, encoder(_Families(self.families(excluded))))

    def as_json(self, excluded: Sequence[str] = ()) -> Page:
        """Every family with its samples: `{name: {type, help, samples: [{name, labels, value}]}}`."""
        body: dict[str, Any] = {}
        for family in self.families(excluded):
            body[family.name] = {
                "type": family.type,
                "help": family.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples],
            }
        return Page(200, "application/json", json.dumps({"metrics": body}, allow_nan=False, default=str).encode())


class _Families:
    """What prometheus_client's encoders read: something with `collect()`."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


class MetricsHandler:
    """`handler: metrics`: the gateway's metrics in the endpoint's format."""

    def __init__(self, plugin: MetricsPlugin, config: MetricsEndpointConfig) -> None:
        self.plugin = plugin
        self.config = config

    async def __call__(self, ctx: RequestContext) -> Answer:
        excluded = self.config.excluded()
        metrics = self.plugin.metrics
        page = metrics.as_json(excluded) if self.config.format == "json" else metrics.prometheus(ctx.request.headers.get("accept", ""), excluded)
        return page_response(page)


class MetricsPlugin(Plugin):
    """mitmproxy addon and Backworks plugin: observes every finished flow, serves the metrics."""

    name = "metrics"
    description = "Prometheus metrics of requests, upstreams, breakers, health and refusals"
    Config = MetricsConfig
    handlers = ("metrics",)
    sections = {"metrics": Section(MetricsEndpointConfig, "metrics")}

    def __init__(self) -> None:
        # `*_created` samples would double the series for a timestamp Prometheus does not use.
        disable_created_metrics()
        self.metrics = GatewayMetrics(pools=self._pools, in_flight=self._in_flight)
        # Counting costs CPU on every request: only while something can read the counts.
        self.counting = False

    def _pools(self) -> Sequence[Pool]:
        return self.core.live_pools() if self.core is not None else []

    def _in_flight(self) -> int:
        return self.core.in_flight if self.core is not None else 0

    def build_handler(self, handler: str, endpoint: EndpointSpec, config: BaseModel) -> MetricsHandler:
        section = endpoint.sections.get("metrics") or MetricsEndpointConfig()
        assert isinstance(section, MetricsEndpointConfig)
        return MetricsHandler(self, section)

    def internal_endpoints(self, config: BaseModel | None, blueprint: LoadedBlueprint) -> list[InternalEndpoint]:
        if not isinstance(config, MetricsConfig):
            return []
        return [InternalEndpoint(config.path, self._scrape, "metrics", ("plugins", "metrics", "config", "path"), "the Prometheus metrics")]

    def _scrape(self, headers: Mapping[str, str]) -> Page:
        return self.metrics.prometheus(headers.get("accept", ""))

    def apply_blueprint(self, config: BaseModel | None, blueprint: LoadedBlueprint) -> None:
        assert config is None or isinstance(config, MetricsConfig)
        self.counting = config is not None or any(e.handler == "metrics" for e in blueprint.endpoints)
        proxy = blueprint.plugin_configs.get("proxy")
        self.metrics.went_live(blueprint, _pools_without_metrics(proxy), _pools_with_detail(proxy))
        wanted = tuple(config.buckets) if config is not None and config.buckets is not None else DEFAULT_BUCKETS
        if wanted != self.metrics.buckets:
            # Histograms cannot change buckets in place: start a fresh registry (counters restart,
            # which Prometheus' rate() handles like a process restart).
            self.metrics = GatewayMetrics(wanted, pools=self._pools, in_flight=self._in_flight)
            self.metrics.went_live(blueprint, _pools_without_metrics(proxy), _pools_with_detail(proxy))

    @property
    def observing(self) -> bool:
        """Whether the core calls `observe` at all (decided per blueprint: see `counting`)."""
        return self.counting

    def observe(self, flow: http.HTTPFlow) -> None:
        if not self.counting:
            return  # neither `plugins.metrics` nor a `handler: metrics` endpoint: nobody reads them
        record = record_for(flow)
        if record is None or record.internal:
            return  # scrapes and status-page polls are not the API's traffic
        state = flow_state(flow)
        if state.slot(OBSERVED):
            return
        state.set_slot(OBSERVED, True)
        status = flow.response.status_code if flow.response is not None else None
        end = flow.response.timestamp_end if flow.response is not None and flow.response.timestamp_end else None
        seconds = (end or time.time()) - flow.request.timestamp_start
        self.metrics.observe(record, status, max(0.0, seconds))


def _pool_metrics(proxy: BaseModel | None) -> list[tuple[str, Any]]:
    """(pool name, its `metrics` settings) for every pool that has them."""
    if proxy is None:
        return []
    pools: list[tuple[str, Any]] = [("default", proxy)] + list(getattr(proxy, "upstreams", {}).items())
    return [(name, pool.metrics) for name, pool in pools if getattr(pool, "metrics", None) is not None]


def _pools_without_metrics(proxy: BaseModel | None) -> list[str]:
    """Pools whose `metrics: {enabled: false}` keeps their upstream series out."""
    return [name for name, metrics in _pool_metrics(proxy) if not metrics.enabled]


def _pools_with_detail(proxy: BaseModel | None) -> list[str]:
    """Pools whose `metrics: {detailed: true}` adds their tries by endpoint template."""
    return [name for name, metrics in _pool_metrics(proxy) if metrics.enabled and metrics.detailed]

