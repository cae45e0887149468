"""The proxy plugin's settings: the plugin-level pools (`plugins.proxy.config`) and an
endpoint's `config.proxy`, validated when the blueprint loads; and the retry rules they make
(`retry_policy`) with the lint notes on retry settings that can have no effect (`retry_notes`)."""

from __future__ import annotations

import os
import ssl
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, field_validator, model_validator

from addons.balancing import Policy
from addons.breaker import CircuitBreakerConfig
from addons.health import HealthCheckConfig
from addons.outlier import OutlierDetectionConfig
from addons.proxy.tls import file_stamp, verified_context
from addons.retry import RetryPolicy
from backworks_core.credentials import redact, split_credentials
from backworks_core.model import HTTP_METHODS, BlueprintPath, StrictModel, UrlPath
from backworks_core.transforms import RequestTransform, ResponseTransform
from backworks_core.validation import Duration, PositiveDuration


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
            verified_context(value, file_stamp(value))
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
