"""The runtime of an upstream pool: its targets (`Target`) and `Pool`, which balances, holds the
retry budget and the bulkhead, and keeps failing targets out of the candidates (health checks,
outlier detection, circuit breakers), carrying their state across reloads."""

from __future__ import annotations

import math
import random
import ssl
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from addons.balancing import Backend, hash_key, make_balancer
from addons.breaker import Bulkhead, CircuitBreaker, Permit, is_failure
from addons.health import HealthChecker, HealthCheckConfig, effective_config, http_probe
from addons.outlier import OutlierDetector
from addons.proxy.settings import PoolConfig, RetryConfig, TargetConfig
from addons.proxy.tls import target_ssl_context
from addons.retry import RetryBudget
from backworks_core.context import RequestContext
from backworks_core.forwarding import client_ip
from backworks_core.transforms import CompiledTransform
from backworks_core.upstream import UpstreamClient


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
            ssl_context=target_ssl_context(config.tls_verify, config.ca_file) if parts.scheme == "https" else None,
            health_check=config.health_check,
            max_connections=config.max_connections,
            authorization=config.authorization,
        )



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

    def candidates(self, tried: Collection[str]) -> list[Backend]:
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

    def choose(self, tried: Collection[str], key: str | None) -> tuple[Backend, Permit | None] | None:
        """The target of the next try, with its breaker's permit if it has a breaker; None when
        no target can take it (none available, or the chosen one's breaker refuses a trial)."""
        candidates = self.candidates(tried)
        if not candidates:
            return None
        backend = self.balancer.choose(candidates, key)
        breaker = self.breakers.get(backend.name)
        if breaker is None:
            return backend, None
        permit = breaker.try_acquire()
        return None if permit is None else (backend, permit)

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



def _first_values(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A repeated name counts by its first value, as `{{query.NAME}}` templates read it."""
    first: dict[str, str] = {}
    for name, value in pairs:
        first.setdefault(name, value)
    return first
