"""The proxy plugin: `handler: proxy` endpoints answered by an upstream pool.

Backworks owns the upstream exchange (see backworks_core.upstream) so that timeouts, retries
and failover are decided per request: a pool's balancer (addons.balancing) picks a target, and
failed tries go to untried targets under the retry rules and budget of addons.retry. WebSocket
upgrades are handed back to mitmproxy, pointed at the chosen target. Health checks
(addons.health), outlier detection (addons.outlier) and circuit breakers (addons.breaker) keep
failing targets out of the balancer's candidates.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import random
import re
import ssl
from http import HTTPStatus
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from mitmproxy import command, exceptions, http
from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

from addons.balancing import Backend, Policy, hash_key, make_balancer
from addons.breaker import Bulkhead, CircuitBreaker, CircuitBreakerConfig, Permit, is_failure
from addons.health import HealthChecker, HealthCheckConfig, effective_config, http_probe
from addons.outlier import OutlierDetectionConfig, OutlierDetector
from addons.retry import RetryBudget, RetryPolicy
from addons.shown_target import answered_by
from backworks_core import headers as fast_headers
from backworks_core.bodies import DEFAULT_LIMIT
from backworks_core.transforms import CompiledTransform, RequestTransform, ResponseTransform, add_prefix, strip_prefix
from backworks_core.telemetry import Attempt, outcome_of
from backworks_core.credentials import redact, split_credentials, with_authorization
from backworks_core.context import (
    REQUEST_ID_HEADER,
    TRACEPARENT_HEADER,
    Answer,
    Forward,
    RequestContext,
    StreamedResponse,
    head_response,
    mark_id_added,
    template_context,
    traceparent_for,
    with_request_id,
)
from backworks_core.forwarding import client_ip, client_of, forwarded_for
from backworks_core.gateway import BuildError
from backworks_core.limits import decoded_limit
from backworks_core.loader import EndpointSpec, LoadedBlueprint
from backworks_core.model import HTTP_METHODS, BlueprintPath, StrictModel, UrlPath
from backworks_core.plugins import Plugin, Section
from backworks_core.paths import PathRefused, upstream_path_problem
from backworks_core.router import parse_template
from backworks_core.templates import TemplateContext
from backworks_core.upstream import BodyStream, UpstreamClient, UpstreamError, UpstreamReply, end_to_end_bytes, end_to_end_fields, hop_by_hop_and
from backworks_core.validation import Duration, PositiveDuration, did_you_mean

logger = logging.getLogger(__name__)


RetryCondition = Literal["connect_failure", "timeout", "reset"]
StatusCode = Annotated[int, Field(ge=100, le=599)]


class TargetConfig(StrictModel):
    name: str = Field(min_length=1, description="the target's name in logs, metrics and the status page; unique in its pool", examples=["api-1"])
    url: str = Field(description="http(s)://[user:password@]host[:port][/base/path]; credentials are sent as Basic auth, replacing a client's Authorization, and never shown", examples=["http://127.0.0.1:3001"])
    weight: float = Field(1.0, gt=0, description="relative share of traffic (weighted_round_robin, least_connections, consistent_hash, random; round_robin and ip_hash ignore it)", examples=[3])
    timeout: PositiveDuration | None = Field(None, description="the longest one try at this target may take (the pool's `timeout` still bounds the whole request)", examples=["5s"])
    retry_attempts: int | None = Field(None, ge=0, description="extra tries when neither the endpoint nor the pool sets `retries` (the first target chosen decides)", examples=[2])
    health_check: HealthCheckConfig | None = Field(None, description="this target's own health check: the keys it sets override the pool's `health_check`", examples=[{"path": "/healthz"}])
    max_connections: int | None = Field(None, ge=1, description="connections to this target at most (128 when unset); the balancer prefers targets with one free, and a try on a full target waits for one within its timeout", examples=[100])
    tls_verify: bool = Field(True, description="verify an https target's certificate", examples=[False])
    ca_file: BlueprintPath | None = Field(None, description="PEM file of CAs to verify an https target with", examples=["certs/upstream-ca.pem"])

    @field_validator("ca_file")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not os.path.isfile(value):
            raise ValueError(f"CA file {value} not found")
        try:
            verified_context(value, _file_stamp(value))
        except ssl.SSLError as exc:
            raise ValueError(f"CA file {value} holds no usable PEM certificate ({exc.reason or exc})") from None
        except OSError as exc:
            raise ValueError(f"CA file {value} cannot be read ({exc.strerror or exc})") from None
        return value

    # Credentials written in `url` (http://user:pass@host), parsed out at load: `url` keeps the
    # rest, and this the Authorization value they make (backworks_core.credentials).
    _authorization: str | None = PrivateAttr(None)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL with a host, got {redact(value)!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"a target URL takes no query or fragment, got {redact(value)!r}")
        split_credentials(value)  # what RFC 7617 forbids is refused here, located at `url`
        return value

    @model_validator(mode="after")
    def _credentials(self) -> TargetConfig:
        """Nothing that prints `url` (status, logs, comments, labels, answers) can show a password."""
        clean, authorization = split_credentials(self.url)
        if authorization is not None:
            self.__dict__["url"] = clean  # frozen model: set once, while it is being built
            self._authorization = authorization
        return self

    @property
    def authorization(self) -> str | None:
        """`Basic …` of the URL's credentials; it replaces a client's Authorization upstream."""
        return self._authorization


DEFAULT_RETRY_ON: tuple[RetryCondition | StatusCode, ...] = ("connect_failure", "timeout", "reset")
"""What is retried unless `retry_on` says otherwise: nginx's `proxy_next_upstream error timeout`."""


class RetryConfig(StrictModel):
    attempts: int = Field(2, ge=0, description="extra tries after the first", examples=[3])
    retry_on: list[RetryCondition | StatusCode] = Field(default_factory=lambda: list(DEFAULT_RETRY_ON), description="what is retried: connect_failure, timeout, reset, or status codes; a connect failure is retried for every method, the rest only for idempotent methods unless retry_non_idempotent (the default is nginx's `proxy_next_upstream error timeout`)", examples=[["connect_failure", "timeout", 503]])
    per_try_timeout: PositiveDuration | None = Field(None, description="the longest one try may take (the whole request stays within `timeout`)", examples=["2s"])
    backoff: Duration = Field(0.025, description="base of the exponential backoff with full jitter", examples=["50ms"])
    retry_non_idempotent: bool = Field(False, description="also retry POST and PATCH after a timeout, a reset or a listed status", examples=[True])
    budget_percent: float = Field(20.0, gt=0, le=100, description="retries in flight as a share of requests in flight", examples=[10])
    min_retry_concurrency: int = Field(3, ge=0, description="retries always allowed in flight, whatever the share", examples=[5])


class ProxyMetricsConfig(StrictModel):
    enabled: bool = Field(True, description="false leaves this pool's upstream series out of the metrics", examples=[False])
    detailed: bool = Field(False, description="also count this pool's tries by endpoint template (backworks_upstream_endpoint_*); targets always have their own series", examples=[True])


class PoolConfig(StrictModel):
    targets: list[TargetConfig] = Field(default_factory=list, description="the upstream servers of the pool", examples=[[{"name": "api-1", "url": "http://127.0.0.1:3001"}, {"name": "api-2", "url": "http://127.0.0.1:3002"}]])
    load_balancing: Policy = Field("round_robin", description="how a target is chosen for each try", examples=["least_connections"])
    hash_on: str = Field("ip", description="ip, path, header:NAME, cookie:NAME or query:NAME", examples=["header:X-User"])
    health_check: HealthCheckConfig | None = Field(None, description="active health checks of every target of the pool", examples=[{"path": "/health", "interval": "10s"}])
    outlier_detection: OutlierDetectionConfig | None = Field(None, description="eject targets that keep failing live traffic", examples=[{"consecutive_failures": 3}])
    circuit_breaker: CircuitBreakerConfig | None = Field(None, description="a circuit breaker per target, and a limit on requests in flight", examples=[{"failure_threshold": 5, "recovery_timeout": "30s"}])
    retries: RetryConfig | None = Field(None, description="the pool's retry rules (an endpoint's `config.proxy.retries` win)", examples=[{"attempts": 2, "retry_on": ["connect_failure", 503]}])
    metrics: ProxyMetricsConfig | None = Field(None, description="the pool's upstream metrics", examples=[{"enabled": False}])
    timeout: PositiveDuration = Field(30.0, description="the whole request, every try included", examples=["10s"])
    forwarded_headers: bool = Field(True, description="set X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host on requests sent upstream", examples=[False])
    preserve_host: bool = Field(False, description="send the client's Host header upstream instead of the target's", examples=[True])
    transform_request: RequestTransform | None = Field(None, description="applied to every request sent to the pool (the plugin level's first, then a named pool's own)", examples=[{"headers": {"X-Gateway": "backworks"}}])
    transform_response: ResponseTransform | None = Field(None, description="applied to every answer from the pool (a named pool's own first, then the plugin level's)", examples=[{"remove_headers": ["Server"]}])

    @field_validator("hash_on")
    @classmethod
    def _hash_key(cls, value: str) -> str:
        if value in ("ip", "path"):
            return value
        kind, _, name = value.partition(":")
        if kind in ("header", "cookie", "query") and name:
            return value
        raise ValueError(f"expected ip, path, header:NAME, cookie:NAME or query:NAME, got {value!r}")

    @model_validator(mode="after")
    def _unique_names(self) -> PoolConfig:
        seen: set[str] = set()
        for target in self.targets:
            if target.name in seen:
                raise ValueError(f"two targets are named {target.name!r}")
            seen.add(target.name)
        return self


class ProxyPluginConfig(PoolConfig):
    upstreams: dict[str, PoolConfig] = Field(default_factory=dict, description="named pools", examples=[{"orders": {"targets": [{"name": "orders-1", "url": "http://127.0.0.1:3002"}]}}])


class EndpointProxyConfig(StrictModel):
    upstream: str | None = Field(None, description="a pool from `upstreams`; the default pool if absent", examples=["orders"])
    path: str | None = Field(None, description="upstream path template over the endpoint's parameters", examples=["/v2/orders/{id}"])
    method: str | None = Field(None, description="send the request upstream with this method instead of the client's", examples=["POST"])
    strip_prefix: UrlPath | None = Field(None, description="removed from the start of the upstream path, on a segment boundary", examples=["/api"])
    add_prefix: UrlPath | None = Field(None, description="added in front of the upstream path (after strip_prefix)", examples=["/v1"])
    timeout: PositiveDuration | None = Field(None, description="the whole request, every try included, for this endpoint (instead of the pool's `timeout`)", examples=["5s"])
    retries: RetryConfig | None = Field(None, description="this endpoint's retry rules, instead of the pool's (budget_percent and min_retry_concurrency apply to pools only)", examples=[{"attempts": 1, "retry_on": ["timeout"]}])
    transform_request: RequestTransform | None = Field(None, description="applied to this endpoint's requests after the pool's transforms", examples=[{"query": {"set": {"source": "gateway"}}}])
    transform_response: ResponseTransform | None = Field(None, description="applied to this endpoint's answers before the pool's transforms", examples=[{"headers": {"Cache-Control": "no-store"}}])

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.upper() not in HTTP_METHODS or value.upper() == "ANY":
            known = ", ".join(sorted(HTTP_METHODS - {"ANY"}))
            raise ValueError(f"unknown HTTP method {value!r} (expected one of {known})")
        return value.upper()



# -- runtime ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    origin: str  # scheme://host:port
    base_path: str  # "" or "/base"
    timeout: float | None
    weight: float = 1.0
    retry_attempts: int | None = None
    ssl_context: ssl.SSLContext | None = None  # https targets only
    health_check: HealthCheckConfig | None = None
    max_connections: int | None = None
    # `Basic …` from the URL's credentials (TargetConfig.authorization); never in a repr or log.
    authorization: str | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: TargetConfig) -> Target:
        parts = urlsplit(config.url)  # without credentials: TargetConfig parsed them out
        return cls(
            name=config.name,
            origin=f"{parts.scheme}://{parts.netloc}",
            base_path=parts.path.rstrip("/"),
            timeout=config.timeout,
            weight=config.weight,
            retry_attempts=config.retry_attempts,
            ssl_context=target_ssl_context(config) if parts.scheme == "https" else None,
            health_check=config.health_check,
            max_connections=config.max_connections,
            authorization=config.authorization,
        )


def target_ssl_context(config: TargetConfig) -> ssl.SSLContext:
    """Verified against the system CAs, or `ca_file`; `tls_verify: false` turns checking off."""
    if not config.tls_verify:
        return unverified_context()
    return verified_context(config.ca_file, _file_stamp(config.ca_file) if config.ca_file else None)


@functools.lru_cache(maxsize=32)
def verified_context(ca_file: str | None, stamp: tuple[int, int] | None) -> ssl.SSLContext:
    """One context per CA file version, shared by every target that uses it: loading the CAs
    takes ~50 ms, paid once rather than per target and per reload. `stamp` (mtime, size) makes
    an edited CA file a new entry."""
    return ssl.create_default_context(cafile=ca_file)


@functools.lru_cache(maxsize=1)
def unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _file_stamp(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_mtime_ns, status.st_size


class Pool:
    """The targets of one pool: balancing, retry budget, and what keeps failing targets out.

    Health, ejection and breaker state outlive a reload for targets that stay (`adopt`); the
    health checker's tasks run from `running` (or the reload) until the pool is retired.
    """

    def __init__(
        self,
        name: str,
        config: PoolConfig,
        plugin_config: PoolConfig | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`plugin_config`: the plugin-level settings a named pool inherits transforms from."""
        self.name = name
        self.config = config
        self.targets = [Target.from_config(t) for t in config.targets]
        self.backends = [Backend(t.name, t.weight) for t in self.targets]
        self.target_by_name = {t.name: t for t in self.targets}
        self.capped = any(t.max_connections is not None for t in self.targets)
        self.balancer = make_balancer(config.load_balancing, self.backends, rng)
        retries = config.retries or RetryConfig()
        self.budget = RetryBudget(retries.budget_percent, retries.min_retry_concurrency)
        self.hashing = config.load_balancing in ("ip_hash", "consistent_hash")
        levels = [c for c in (plugin_config, config) if c is not None]
        # Requests: plugin level first; responses: the reverse (the pool's own is innermost).
        self.request_transforms = [CompiledTransform(c.transform_request) for c in levels]
        self.response_transforms = [CompiledTransform(c.transform_response) for c in reversed(levels)]
        breaker = config.circuit_breaker
        self.breakers = {t.name: CircuitBreaker(self.label(t.name), breaker, clock) for t in self.targets} if breaker else {}
        self.bulkhead = Bulkhead(breaker.max_concurrent_requests if breaker else None)
        self.outliers = (
            OutlierDetector(config.outlier_detection, [t.name for t in self.targets], clock, pool=name)
            if config.outlier_detection
            else None
        )
        checked = config.health_check is not None or any(t.health_check is not None for t in config.targets)
        self.health: HealthChecker | None = None
        # An https target's ca_file/tls_verify for its probes; updated in place by `adopt`, since
        # the checker (and the probe reading this) outlives the pool that created it.
        self.tls_contexts = {t.origin: t.ssl_context for t in self.targets}
        # The URL credentials a probe sends (a target behind Basic auth answers its probes too).
        self.probe_authorizations = {t.origin: t.authorization for t in self.targets if t.authorization}
        self._health_wanted = checked

    def label(self, target: str) -> str:
        """A target as logs and commands name it: `pool/target` for named pools."""
        return target if self.name == "default" else f"{self.name}/{target}"

    def public_name(self, target: str) -> str:
        """A target as an error answer names it: its `name` (and pool), never its address."""
        return f"target {target}" if self.name == "default" else f"target {target} of pool {self.name}"

    def start_health_checks(self, client: UpstreamClient) -> HealthChecker | None:
        """Create (once) the checker of this pool; the caller starts it on the running loop."""
        if self.health is None and self._health_wanted:
            contexts, authorizations = self.tls_contexts, self.probe_authorizations
            probe = http_probe(
                client.probe_session(), lambda url: contexts.get(_origin(url)), lambda url: authorizations.get(_origin(url))
            )
            self.health = HealthChecker(self.config.targets, self.config.health_check, probe=probe, pool=None if self.name == "default" else self.name)
        return self.health

    def adopt(self, previous: Pool) -> None:
        """Keep the state of targets that survive a reload (same name; same settings for breakers)."""
        same_breaker = previous.config.circuit_breaker == self.config.circuit_breaker
        for name in self.breakers:
            if same_breaker and name in previous.breakers:
                self.breakers[name] = previous.breakers[name]
        if self.outliers is not None and previous.outliers is not None and previous.outliers.config == self.outliers.config:
            previous.outliers.set_targets(t.name for t in self.targets)
            self.outliers = previous.outliers
        if self._health_wanted and previous.health is not None:
            previous.tls_contexts.clear()
            previous.tls_contexts.update(self.tls_contexts)
            self.tls_contexts = previous.tls_contexts
            previous.probe_authorizations.clear()
            previous.probe_authorizations.update(self.probe_authorizations)
            self.probe_authorizations = previous.probe_authorizations
            previous.health.update(self.config.targets, self.config.health_check)
            self.health = previous.health
            previous.health = None  # now ours: retiring the old pool must not stop it

    def available(self, name: str) -> bool:
        """Healthy, not ejected, and its breaker lets a request through."""
        if self.health is not None and not self.health.is_healthy(name):
            return False
        if self.outliers is not None and self.outliers.is_ejected(name):
            return False
        breaker = self.breakers.get(name)
        return breaker is None or breaker.available()

    def candidates(self, tried: set[str]) -> list[Backend]:
        """Targets that can take this try: untried ones while any remain; none if none can.

        Of those, the ones with a connection free under their `max_connections`, when any: a
        full target is passed over while another has room (nginx's `max_conns`), and waited
        for only when all are full.
        """
        usable = [b for b in self.backends if self.available(b.name)]
        fresh = [b for b in usable if b.name not in tried] or usable
        if not self.capped:
            return fresh
        return [b for b in fresh if self.has_room(b)] or fresh

    def has_room(self, backend: Backend) -> bool:
        """Fewer tries in flight to this target than its `max_connections`."""
        cap = self.target_by_name[backend.name].max_connections
        return cap is None or backend.in_flight < cap

    def retry_after(self) -> int:
        """Whole seconds until some target may take traffic again (at least 1)."""
        waits: list[float] = []
        for target in self.targets:
            wait = 0.0
            if self.health is not None and not self.health.is_healthy(target.name):
                check = effective_config(target.health_check, self.config.health_check)
                wait = max(wait, check.interval if check is not None else 1.0)  # the next probe, at the soonest
            if self.outliers is not None:
                wait = max(wait, self.outliers.retry_after(target.name))
            breaker = self.breakers.get(target.name)
            if breaker is not None:
                wait = max(wait, breaker.retry_after())
            waits.append(wait)
        return max(1, math.ceil(min(waits, default=1.0)))

    def record(self, target: str, outcome: str | int, permit: Permit | None) -> None:
        """One try's outcome: a failure kind, or the status the target answered with."""
        if permit is not None:
            permit.record(outcome)
        if self.outliers is not None:
            self.outliers.record(target, is_failure(outcome), str(outcome))

    def describe(self) -> list[dict[str, Any]]:
        """Per target: health, ejection, breaker state and in-flight requests."""
        health = self.health.status() if self.health is not None else {}
        rows = []
        for backend in self.backends:
            name = backend.name
            breaker = self.breakers.get(name)
            target = self.target_by_name[name]
            rows.append(
                {
                    "target": self.label(name),
                    "name": name,
                    "url": target.origin + target.base_path,
                    "health": ("healthy" if health[name]["healthy"] else "unhealthy") if health.get(name, {}).get("checked") else "unchecked",
                    "ejected": (self.outliers.is_ejected(name) if self.outliers is not None else False),
                    "breaker": breaker.state if breaker is not None else "none",
                    "in_flight": backend.in_flight,
                }
            )
        return rows

    def key_for(self, ctx: RequestContext) -> str | None:
        if not self.hashing:
            return None
        request = ctx.flow.request
        return hash_key(
            self.config.hash_on,
            client_ip=client_ip(ctx.flow),  # the trusted_proxies rule (backworks_core.forwarding)
            path=request.path.split("?", 1)[0],
            headers=request.headers,
            cookies=_first_values(request.cookies.items(multi=True)),
            query=_first_values(request.query.items(multi=True)),
        )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what aiohttp refuses in a header ("header injection")


def unsendable_header(headers: Sequence[tuple[str, str]]) -> str | None:
    """Why a request header cannot go upstream, if one cannot: mitmproxy accepts control
    characters and bytes that are not UTF-8 (as lone surrogates); the upstream client does not."""
    # Nearly every request has none: one search and one encode over all of it says so.
    whole = "\t".join([text for field in headers for text in field])
    if not _CONTROL.search(whole):
        try:
            whole.encode()
            return None
        except UnicodeEncodeError:
            pass
    for name, value in headers:  # the first field at fault, for the message
        if _CONTROL.search(name) or _CONTROL.search(value):
            return f"request header {name!r} holds a control character"
        try:
            name.encode()
            value.encode()
        except UnicodeEncodeError:
            return f"request header {name!r} is not UTF-8"
    return None


def _first_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A repeated name counts by its first value, as `{{query.NAME}}` templates read it."""
    first: dict[str, str] = {}
    for name, value in pairs:
        first.setdefault(name, value)
    return first


def retry_notes(retries: RetryConfig, timeout: float | None) -> list[tuple[tuple[str, ...], str]]:
    """Retry settings that can have no effect, as (key path under `retries`, why) for a lint warning."""
    notes: list[tuple[tuple[str, ...], str]] = []
    per_try = retries.per_try_timeout
    if per_try is not None and "timeout" not in retries.retry_on:
        notes.append((("per_try_timeout",), "a try that runs out of per_try_timeout is not retried: add timeout to retry_on, or a hanging target answers 504"))
    if per_try is not None and timeout is not None and per_try >= timeout:
        notes.append((("per_try_timeout",), f"per_try_timeout ({per_try:g}s) is not shorter than the request's timeout ({timeout:g}s): no try after a timed-out one fits"))
    if retries.attempts == 0 and retries.model_fields_set - {"attempts"}:
        notes.append((("attempts",), "attempts is 0: the other retry settings have no effect"))
    return notes


def retry_policy(endpoint: RetryConfig | None, pool: RetryConfig | None, target_attempts: int | None, pool_size: int) -> RetryPolicy:
    """Endpoint `retries`, else the pool's, else the first target's `retry_attempts`, else failover.

    With nothing configured, a target that refuses connections is skipped for another one
    (up to two more): nothing reached it, so this is safe for every request.
    """
    config = endpoint or pool
    if config is None and target_attempts is not None:
        config = RetryConfig(attempts=target_attempts)
    if config is None:
        return RetryPolicy(min(2, pool_size - 1), frozenset({"connect_failure"}), frozenset(), None, 0.0, False)
    return RetryPolicy(
        attempts=config.attempts,
        conditions=frozenset(c for c in config.retry_on if isinstance(c, str)),
        statuses=frozenset(c for c in config.retry_on if isinstance(c, int)),
        per_try_timeout=config.per_try_timeout,
        backoff=config.backoff,
        retry_non_idempotent=config.retry_non_idempotent,
    )


class UpstreamPath:
    """The path sent upstream: a template over the endpoint's parameters, or the request's own."""

    def __init__(self, endpoint: EndpointSpec, config: EndpointProxyConfig) -> None:
        self.parts: list[tuple[str, str]] | None = None
        if config.path is not None:
            try:
                segments = parse_template(config.path)
            except ValueError as exc:
                raise BuildError(str(exc), ("config", "proxy", "path")) from exc
            available = {s.value: s.kind for s in parse_template(endpoint.settings.path) if s.kind != "literal"}
            self.parts = []
            for segment in segments:
                if segment.kind == "literal":
                    self.parts.append(("literal", quote(segment.value, safe="")))
                    continue
                if segment.value not in available:
                    hint = did_you_mean(segment.value, available)
                    raise BuildError(
                        f"path parameter {{{segment.value}}} is not in the endpoint's path {endpoint.settings.path!r}"
                        + (f"; did you mean {{{hint}}}?" if hint else ""),
                        ("config", "proxy", "path"),
                    )
                self.parts.append(("path" if available[segment.value] == "path" else "param", segment.value))
        self.strip = config.strip_prefix
        self.add = config.add_prefix
        # The template's literal start ("/public/" for /public/{p}): no value may climb out of it.
        self.prefix = ""
        if self.parts is not None:
            literals: list[str] = []
            for kind, value in self.parts:
                if kind != "literal":
                    self.prefix = "/" + "".join(f"{v}/" for v in literals)
                    break
                literals.append(value)

    def render(self, ctx: RequestContext, request_path: str) -> str:
        """The upstream path; PathRefused (a 400) when it would leave its template's literal
        prefix or hold a dot or empty segment (a parameter of `..`, `{x:path}` of `a/../..`)."""
        if self.parts is not None:
            rendered = []
            for kind, value in self.parts:
                if kind == "literal":
                    rendered.append(value)
                else:
                    # surrogateescape: a parameter of invalid UTF-8 goes on as the bytes the client sent
                    rendered.append(quote(ctx.params[value], safe="/" if kind == "path" else "", errors="surrogateescape"))
            path = "/" + "/".join(rendered)
            problem = upstream_path_problem(path, self.prefix)
            if problem is not None:
                raise PathRefused(problem)
        else:
            path = request_path
        if self.strip:
            path = strip_prefix(path, self.strip)
        if self.add:
            path = add_prefix(path, self.add)
        return path


class ProxyHandler:
    accepts_body_stream = True  # a request body too large to hold is sent upstream as it arrives
    # The endpoint's `transform:` goes innermost in this handler's chain (after the plugin-level,
    # pool and config.proxy ones for requests; first for responses), not around the handler.
    applies_endpoint_transform = True

    def __init__(self, plugin: ProxyPlugin, pool: Pool, endpoint: EndpointSpec, config: EndpointProxyConfig) -> None:
        self.client = plugin.client
        self.pool = pool
        self.path = UpstreamPath(endpoint, config)
        self.method = config.method
        self.timeout = config.timeout if config.timeout is not None else pool.config.timeout
        own = endpoint.transform
        request_chain = [*pool.request_transforms, CompiledTransform(config.transform_request), CompiledTransform(own.request if own else None)]
        response_chain = [CompiledTransform(own.response if own else None), CompiledTransform(config.transform_response), *pool.response_transforms]
        self.request_transforms = [t for t in request_chain if not t.is_empty]
        self.response_transforms = [t for t in response_chain if not t.is_empty]
        # Headers-only chains work on the header list; path, query or body need a whole message.
        self.reshapes_request = any(t.touches_path or t.touches_body for t in self.request_transforms)
        self.reshapes_response = any(t.touches_body for t in self.response_transforms)
        self.forwarded = pool.config.forwarded_headers
        self.preserve_host = pool.config.preserve_host
        # What of the client's header fields never goes upstream as it came (besides hop-by-hop
        # fields): Backworks sets these itself, or (Host, Content-Length) the upstream client does.
        self.replaced_fields = hop_by_hop_and(
            "content-length",
            REQUEST_ID_HEADER,
            TRACEPARENT_HEADER,
            *(() if self.preserve_host else ("host",)),
            *(("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host") if self.forwarded else ()),
        )
        # Endpoint retries win; otherwise decided per request (the first target's retry_attempts).
        self.retries = retry_policy(config.retries, None, None, len(pool.backends)) if config.retries else None
        self.rng = random.Random()
        self.sleep = asyncio.sleep
        self._target_policies: dict[str, RetryPolicy] = {}

    def _policy_for(self, target: Target) -> RetryPolicy:
        """The pool's retry rules as the first target chosen sets them, built once per target."""
        policy = self._target_policies.get(target.name)
        if policy is None:
            pool = self.pool
            policy = self._target_policies[target.name] = retry_policy(None, pool.config.retries, target.retry_attempts, len(pool.backends))
        return policy

    def reshape_request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes, tctx: TemplateContext, body_limit: int = DEFAULT_LIMIT
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """Run path, query and body transforms on the request as it will be sent upstream."""
        upstream = http.Request(
            host="upstream",
            port=80,
            method=method.encode(),
            scheme=b"http",
            authority=b"",
            path=path.encode(),
            http_version=b"HTTP/1.1",
            headers=http.Headers([(_header_bytes(n), _header_bytes(v)) for n, v in headers]),
            content=body,
            trailers=None,
            timestamp_start=0.0,
            timestamp_end=0.0,
        )
        for transform in self.request_transforms:
            transform.apply_request(upstream, tctx, body_limit=body_limit)  # BodyError: the gateway's 413/415/400
        fields = [(n, v) for n, v in upstream.headers.items(multi=True) if n.lower() != "content-length"]
        return upstream.path, fields, upstream.raw_content or b""

    def upstream_headers(self, ctx: RequestContext) -> list[tuple[str, str]]:
        request = ctx.flow.request
        # The client's Connection tokens were applied to the client's fields when the gateway
        # admitted the request; here they would also remove the fields the gateway added.
        headers = end_to_end_fields(request.headers.fields, self.replaced_fields, "utf-8", connection_tokens=False)
        if self.forwarded:
            # Written by the gateway; a trusted proxy's values kept (server.trusted_proxies).
            state = ctx.flow_state
            client = state.client if state is not None and state.client is not None else client_of(ctx.flow)
            proto = fast_headers.get(request.headers, "X-Forwarded-Proto") if client.trusted_peer else None
            host = fast_headers.get(request.headers, "X-Forwarded-Host") if client.trusted_peer else None
            headers.append(("X-Forwarded-For", forwarded_for(request, client)))
            headers.append(("X-Forwarded-Proto", proto or ("https" if ctx.flow.client_conn.tls_established else "http")))
            headers.append(("X-Forwarded-Host", host or _host_header(request) or request.pretty_host))
        # The id Backworks logs and answers with, so upstream logs line up with ours.
        headers.append((REQUEST_ID_HEADER, ctx.request_id))
        headers.append((TRACEPARENT_HEADER, traceparent_for(ctx.flow, ctx.request_id, ctx.flow_state)))
        return headers

    async def __call__(self, ctx: RequestContext) -> Answer:
        request = ctx.flow.request
        raw_path, _, query = request.path.partition("?")
        try:
            path = self.path.render(ctx, raw_path) + (f"?{query}" if query else "")
        except PathRefused as exc:
            return ctx.error(400, f"request path refused: {exc}")
        # The template context only for the transforms that read it (none: nothing to build).
        tctx = template_context(ctx) if self.request_transforms or self.response_transforms else None
        headers = self.upstream_headers(ctx)
        method = self.method or ctx.method or request.method
        body: bytes | BodyStream = request.raw_content or b""
        try:
            if self.reshapes_request and ctx.body_stream is None:
                assert tctx is not None and isinstance(body, bytes)  # a streamed body is never reshaped
                path, headers, body = self.reshape_request(method, path, headers, body, tctx, decoded_limit(ctx.endpoint.guard))
            else:
                for transform in self.request_transforms:
                    assert tctx is not None
                    headers = transform.apply_headers(headers, tctx)
                    if transform.touches_path:
                        path = transform.apply_target(path, tctx)
        except ValueError as exc:  # a value from the request would carry CR or LF
            return ctx.error(400, f"request transform refused: {exc}")
        # What goes upstream (HTTP or WebSocket) after prefixes and transforms: canonical too.
        if (refused := upstream_path_problem(path.partition("?")[0])) is not None:
            return ctx.error(400, f"request path refused: {refused}")
        if (refused := unsendable_header(headers)) is not None:
            return ctx.error(400, refused)
        if ctx.body_stream is not None:
            if self.reshapes_request:
                logger.info("[%s] body transforms skipped: the request body streams (larger than the buffer limit)", ctx.request_id)
            body = BodyStream(ctx.body_stream)
            if "content-length" in request.headers:  # the upstream gets the length it would have had
                headers.append(("Content-Length", request.headers["content-length"]))
        pool = self.pool
        if ctx.record is not None:
            ctx.record.pool = pool.name
        if self.request_transforms or self.response_transforms:
            ctx.notes["transforms"] = f"request:{len(self.request_transforms)}+response:{len(self.response_transforms)}"
        key = pool.key_for(ctx)
        if is_websocket_upgrade(request):
            return self.forward_websocket(ctx, path, headers, key)
        if not pool.bulkhead.try_enter():
            ctx.notes["refused"] = "max_concurrent_requests"
            return ctx.error(
                503, f"upstream pool {pool.name!r} is at max_concurrent_requests ({pool.bulkhead.limit})", {"Retry-After": "1"}
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        tried: list[str] = []
        policy: RetryPolicy | None = None
        started = time.time()
        reply: UpstreamReply | None = None
        failure: UpstreamError | None = None
        holds_retry = False  # a retry counts against the budget from its backoff to its answer
        pool.budget.active_requests += 1
        try:
            while True:
                candidates = pool.candidates(set(tried))
                permit: Permit | None = None
                backend = pool.balancer.choose(candidates, key) if candidates else None
                if backend is not None and backend.name in pool.breakers:
                    permit = pool.breakers[backend.name].try_acquire()
                    if permit is None:
                        backend = None
                if backend is None:
                    if not tried:  # nothing could take it: say so at once, never wait
                        return self.unavailable(ctx)
                    break  # the last try's answer stands
                target = pool.target_by_name[backend.name]
                if reply is not None:
                    reply.close()  # retried instead of passed on
                if policy is None:  # the first target chosen decides `retry_attempts`
                    policy = self.retries or self._policy_for(target)
                tried.append(target.name)
                remaining = deadline - loop.time()
                per_try = min(t for t in (remaining, policy.per_try_timeout, target.timeout) if t is not None)
                queued = target.max_connections is not None and backend.in_flight >= target.max_connections
                if queued:  # every connection busy: the try waits for one (within per_try)
                    ctx.notes["queued"] = target.name
                backend.in_flight += 1
                try_started = loop.time()
                try:
                    reply = await self.client.send(
                        method,
                        target.origin + target.base_path + path,
                        headers if target.authorization is None else with_authorization(headers, target.authorization),
                        body,
                        timeout=max(per_try, 0.001),
                        ssl_context=target.ssl_context,
                        buffer_limit=ctx.buffer_limit,
                        max_connections=target.max_connections,
                    )
                    failure = None
                    pool.record(target.name, reply.status, permit)
                    outcome: str | int | None = reply.status if reply.status in policy.statuses else None
                except UpstreamError as exc:
                    reply, outcome, failure = None, exc.kind, exc
                    pool.record(target.name, exc.kind, permit)
                finally:
                    if ctx.record is not None:
                        status = reply.status if reply is not None else None
                        ctx.record.attempts.append(
                            Attempt(pool.name, target.name, outcome_of(status, failure.kind if failure else None), loop.time() - try_started, status)
                        )
                    backend.in_flight -= 1
                    if permit is not None:
                        permit.release()  # no-op once recorded; frees a trial slot if cancelled
                    if holds_retry:
                        pool.budget.release()
                        holds_retry = False
                if outcome is None:
                    break
                logger.info("[%s] %s: try %d on %s failed: %s", ctx.request_id, ctx.endpoint.label, len(tried), target.name, failure or outcome)
                retries_done = len(tried) - 1
                if (
                    retries_done >= policy.attempts
                    or not policy.retryable(outcome, method)
                    or (isinstance(body, BodyStream) and body.started)  # what was sent cannot be sent again
                    or deadline - loop.time() <= 0
                ):
                    break
                # The budget keeps retries from multiplying the load on struggling upstreams. A
                # refused connection put no load anywhere, so failing over from it is not counted.
                if outcome != "connect_failure":
                    if not pool.budget.try_acquire():
                        logger.info("[%s] %s: no retry after try %d: the pool's retry budget is spent", ctx.request_id, ctx.endpoint.label, len(tried))
                        break
                    holds_retry = True
                pause = min(policy.delay(retries_done + 1, self.rng), max(0.0, deadline - loop.time()))
                if pause:
                    await self.sleep(pause)
        finally:
            if holds_retry:
                pool.budget.release()
            pool.budget.active_requests -= 1
            pool.bulkhead.leave()
        ctx.notes["target"] = tried[-1]
        answered_by(ctx.flow, target.origin)  # the console and mitmweb name it (addons.shown_target)
        ctx.notes["attempts"] = str(len(tried))
        if len(tried) > 1:
            ctx.notes["failover"] = ">".join(tried)
        if tried[-1] in pool.breakers:
            ctx.notes["cb"] = pool.breakers[tried[-1]].state
        if reply is not None:
            if isinstance(body, BodyStream):
                ctx.notes["request_bytes"] = str(body.sent)
            return self.build_response(ctx, reply, started, method == "HEAD" if self.method is None else request.method == "HEAD", tctx)
        assert failure is not None
        logger.warning("[%s] %s → %s failed after %d tries: %s", ctx.request_id, ctx.endpoint.label, tried[-1], len(tried), failure)
        ctx.notes["upstream_error"] = failure.kind
        # The client learns the kind and the target's name; the address and the OS's text stay
        # in the log line above, under the request id.
        named = self.pool.public_name(tried[-1])
        if failure.kind == "timeout":
            busy = f"; it waited for one of the target's {target.max_connections} connections (max_connections)" if queued else ""
            return ctx.error(504, f"upstream timeout ({named}): no answer in time (tries: {len(tried)}{busy})")
        return ctx.error(502, f"upstream {failure.phrase} ({named}) (tries: {len(tried)})")

    def unavailable(self, ctx: RequestContext) -> http.Response:
        """No target can take traffic (unhealthy, ejected or breaker open): 503 with Retry-After."""
        pool = self.pool
        retry_after = pool.retry_after()
        ctx.notes["upstream_error"] = "unavailable"
        states = ", ".join(
            f"{row['target']}: " + ("unhealthy" if row["health"] == "unhealthy" else "ejected" if row["ejected"] else f"breaker {row['breaker']}")
            for row in pool.describe()
        )
        logger.warning("[%s] %s: no target of pool %r can take traffic (%s)", ctx.request_id, ctx.endpoint.label, pool.name, states)
        return ctx.error(503, f"no upstream target of pool {pool.name!r} can take traffic ({states})", {"Retry-After": str(retry_after)})

    def forward_websocket(self, ctx: RequestContext, path: str, headers: list[tuple[str, str]], key: str | None) -> Forward | http.Response:
        """mitmproxy relays WebSocket frames itself: point the flow at the chosen target."""
        candidates = self.pool.candidates(set())
        if not candidates:
            return self.unavailable(ctx)
        backend = self.pool.balancer.choose(candidates, key)
        target = self.pool.target_by_name[backend.name]
        # The upgrade needs its hop-by-hop headers back (they were dropped for the HTTP exchange).
        request = ctx.flow.request
        # Connection says Upgrade only: any other token would name a field the gateway set.
        upgrade = [("Connection", "Upgrade")] + [(n, v) for n, v in request.headers.items(multi=True) if n.lower() == "upgrade"]
        if not self.preserve_host:
            headers = [(n, v) for n, v in headers if n.lower() != "host"]
            headers.insert(0, ("Host", target.origin.split("://", 1)[1]))
        if target.authorization is not None:  # the same rule as the HTTP exchange's
            headers = with_authorization(headers, target.authorization)
        ctx.notes["target"] = target.name
        ctx.notes["websocket"] = "yes"
        logger.debug("[%s] websocket upgrade to %s", ctx.request_id, target.name)
        return Forward(target.origin + target.base_path + path, headers + upgrade)

    def build_response(
        self, ctx: RequestContext, reply: UpstreamReply, started: float, is_head: bool, tctx: TemplateContext | None
    ) -> http.Response | StreamedResponse:
        """The client's answer; one larger than the buffer limit streams on (its length as sent).

        Without header transforms the head stays bytes from the upstream's fields to the
        client's, and the request id goes in with it (not added to the finished head after)."""
        sized = not is_head and reply.status not in (204, 304) and not reply.streamed
        status = reply.status
        reason = reply.reason
        head = end_to_end_bytes(reply.headers, _RESIZED_ANSWER_DROPS if sized else _ANSWER_DROPS)
        if sized:
            head.append((b"content-length", str(len(reply.body)).encode()))
        if self.response_transforms and not self.reshapes_response:  # headers and status only: on the bytes
            assert tctx is not None
            try:
                for transform in self.response_transforms:
                    head = transform.apply_header_fields(head, tctx, _header_bytes)
                    status = transform.apply_status(status)
            except ValueError as exc:
                reply.close()
                return ctx.error(502, f"response transform refused: {exc}")
            if status != reply.status:
                reason = _reason_phrase(status)
        state = ctx.flow_state if ctx.request_id and not self.reshapes_response else None  # a body transform may reshape the head
        if state is not None:
            with_request_id(head, ctx.request_id, state)
        response = head_response(
            status, reason.encode("latin-1", "replace"), fast_headers.from_fields(head), None if reply.streamed else reply.body, started, time.time()
        )
        if self.reshapes_response:
            assert tctx is not None
            if reply.streamed:
                logger.info("[%s] body transforms skipped: the response body streams (larger than the buffer limit)", ctx.request_id)
            try:
                for transform in self.response_transforms:
                    transform.apply_response(response, tctx)
            except ValueError as exc:
                reply.close()
                return ctx.error(502, f"response transform refused: {exc}")
        if state is not None:
            mark_id_added(state, response)
        if reply.streamed:
            return StreamedResponse(response, reply.chunks(), reply.close)
        return response


_RESIZED_ANSWER_DROPS = hop_by_hop_and("content-length")  # Backworks sets the length of what it holds
_ANSWER_DROPS = hop_by_hop_and()


def is_websocket_upgrade(request: http.Request) -> bool:
    upgrade = fast_headers.get(request.headers, "upgrade")
    return upgrade is not None and upgrade.lower() == "websocket" and "upgrade" in (fast_headers.get(request.headers, "connection") or "").lower()


def _host_header(request: http.Request) -> str | None:
    """`request.host_header` (HTTP/2 and 3: the authority, else Host) by one pass over the fields."""
    if request.is_http2 or request.is_http3:
        return request.authority or fast_headers.get(request.headers, "host")
    return fast_headers.get(request.headers, "host")


def _header_bytes(value: str) -> bytes:
    """Upstream fields round-trip through latin-1; a rendered value beyond it goes as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class ProxyPlugin(Plugin):
    """mitmproxy addon and Backworks plugin: owns the pooled upstream client."""

    name = "proxy"
    description = "upstream pools, load balancing and the upstream exchange"
    Config = ProxyPluginConfig
    handlers = ("proxy",)
    sections = {"proxy": Section(EndpointProxyConfig, "proxy")}

    def __init__(self) -> None:
        self.client = UpstreamClient()
        self._pools: dict[int, tuple[ProxyPluginConfig, dict[str | None, Pool]]] = {}
        self._live: dict[str | None, Pool] = {}  # the pools of the blueprint being served
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def lint(cls, config: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
        assert isinstance(config, ProxyPluginConfig)
        notes: list[tuple[tuple[str | int, ...], str]] = []
        pools: list[tuple[tuple[str | int, ...], PoolConfig]] = [((), config)]
        pools += [(("upstreams", name), pool) for name, pool in config.upstreams.items()]
        for loc, pool in pools:
            if pool.metrics is not None and pool.metrics.detailed and not pool.metrics.enabled:
                notes.append((loc + ("metrics", "detailed"), "detailed has no effect while enabled is false"))
            if pool.hash_on != "ip" and pool.load_balancing not in ("ip_hash", "consistent_hash"):
                notes.append((loc + ("hash_on",), f"hash_on is used by ip_hash and consistent_hash, not by {pool.load_balancing}"))
            for index, target in enumerate(pool.targets):
                if target.weight != 1 and pool.load_balancing in ("round_robin", "ip_hash"):
                    notes.append((loc + ("targets", index, "weight"), f"{pool.load_balancing} ignores weights"))
            if pool.retries is not None:
                notes += [(loc + key, note) for key, note in retry_notes(pool.retries, pool.timeout)]
        return notes

    @classmethod
    def lint_section(cls, section: str, config: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
        retries = getattr(config, "retries", None)
        if retries is None:
            return []
        notes: list[tuple[tuple[str | int, ...], str]] = [
            (("retries", key), f"{key} applies to a pool's retries; on an endpoint it has no effect")
            for key in ("budget_percent", "min_retry_concurrency")
            if key in retries.model_fields_set
        ]
        return notes + [(("retries", *key), note) for key, note in retry_notes(retries, getattr(config, "timeout", None))]

    def pools_for(self, config: ProxyPluginConfig | None) -> dict[str | None, Pool]:
        if config is None:
            return {}
        cached = self._pools.get(id(config))
        if cached is None or cached[0] is not config:
            pools: dict[str | None, Pool] = {}
            if config.targets:
                pools[None] = Pool("default", config)
            for name, pool_config in config.upstreams.items():
                pools[name] = Pool(name, pool_config, plugin_config=config)
            cached = (config, pools)
            self._pools[id(config)] = cached
        return cached[1]

    def build_handler(self, handler: str, endpoint: EndpointSpec, config: BaseModel) -> ProxyHandler:
        assert isinstance(config, ProxyPluginConfig)
        endpoint_config = endpoint.sections.get("proxy") or EndpointProxyConfig()
        assert isinstance(endpoint_config, EndpointProxyConfig)
        pools = self.pools_for(config)
        pool = pools.get(endpoint_config.upstream)
        if pool is None:
            if endpoint_config.upstream is None:
                raise BuildError(
                    "handler 'proxy' needs upstream targets: add plugins.proxy.config.targets, or name a pool "
                    "from plugins.proxy.config.upstreams in config.proxy.upstream",
                    ("handler",),
                )
            named = [name for name in pools if name is not None]
            hint = did_you_mean(endpoint_config.upstream, named)
            raise BuildError(
                f"no upstream pool named {endpoint_config.upstream!r}"
                + (f"; did you mean {hint!r}?" if hint else f" (pools: {', '.join(named) or 'none'})"),
                ("config", "proxy", "upstream"),
            )
        if not pool.targets:
            raise BuildError(f"upstream pool {pool.name!r} has no targets", ("config", "proxy"))
        return ProxyHandler(self, pool, endpoint, endpoint_config)

    def apply_blueprint(self, config: BaseModel | None, blueprint: LoadedBlueprint) -> None:
        """The new pools take over the state of the old ones' surviving targets; checks restart."""
        assert config is None or isinstance(config, ProxyPluginConfig)
        pools = self.pools_for(config)
        previous = self._live
        for name, pool in pools.items():
            old = previous.get(name)
            if old is not None and old is not pool:
                pool.adopt(old)
        for name, old in previous.items():
            if old.health is not None and pools.get(name) is not old:
                self._spawn(old.health.stop())  # not adopted: its targets are gone or unchecked now
                old.health = None
        self._live = pools
        # Keep only the pools of the blueprint now live.
        self._pools = {k: v for k, v in self._pools.items() if v[0] is config}
        if self._running:
            self._start_health_checks()

    def running(self) -> None:
        self._running = True
        self._start_health_checks()

    def _start_health_checks(self) -> None:
        for pool in self._live.values():
            checker = pool.start_health_checks(self.client)
            if checker is not None and not checker.running:
                self._spawn(checker.start())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def done(self) -> None:
        self._running = False
        for pool in self._live.values():
            if pool.health is not None:
                await pool.health.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()

    def live_pools(self) -> list[Pool]:
        """The pools of the blueprint being served (for the metrics and the status page)."""
        return list(self._live.values())

    @command.command("backworks.targets")
    def targets_command(self) -> Sequence[str]:
        """Each upstream target: health, ejection, circuit breaker state and requests in flight."""
        lines = []
        for pool in self._live.values():
            for row in pool.describe():
                lines.append(
                    f"{row['target']}: health={row['health']} ejected={'yes' if row['ejected'] else 'no'} "
                    f"breaker={row['breaker']} in_flight={row['in_flight']}"
                )
        return lines

    @command.command("backworks.breaker.reset")
    def breaker_reset_command(self, target: str) -> None:
        """Close the circuit breaker of TARGET (`name`, or `pool/name` for a named pool)."""
        breakers = [(pool, name) for pool in self._live.values() for name in pool.breakers]
        # An exact label wins (`orders/api`, or `api` for the default pool, also `default/api`);
        # a bare name reaches a named pool's target when no other pool has it.
        found = [pool.breakers[name] for pool, name in breakers if target in (pool.label(name), f"{pool.name}/{name}")]
        if not found:
            found = [pool.breakers[name] for pool, name in breakers if target == name]
        if len(found) != 1:
            known = [pool.label(name) for pool in self._live.values() for name in pool.breakers]
            if not found:
                hint = did_you_mean(target, known)
                raise exceptions.CommandError(
                    f"no circuit breaker for target {target!r}"
                    + (f"; did you mean {hint!r}?" if hint else f" (targets with breakers: {', '.join(known) or 'none'})")
                )
            raise exceptions.CommandError(f"{target!r} names targets in several pools; use pool/target ({', '.join(known)})")
        found[0].reset("reset by command backworks.breaker.reset")
