"""The proxy plugin: `handler: proxy` endpoints answered by an upstream pool.

Backworks owns the upstream exchange (see backworks_core.upstream) so that timeouts, retries
and failover are decided per request: a pool's balancer (addons.balancing) picks a target, and
failed tries go to untried targets under the retry rules and budget of addons.retry. WebSocket
upgrades are handed back to mitmproxy, pointed at the chosen target. Health checks
(addons.health), outlier detection (addons.outlier) and circuit breakers (addons.breaker) keep
failing targets out of the balancer's candidates.

The package, by layer; each module imports only modules listed above it here (never this
package's `__init__`; nothing imports `plugin`):

- `tls`: the TLS contexts of https targets, one per CA file version;
- `settings`: the config models (`ProxyPluginConfig`, `PoolConfig`, `TargetConfig`,
  `RetryConfig`, `EndpointProxyConfig`), validated when the blueprint loads, and the retry
  rules they make (`retry_policy`, `retry_notes`);
- `pool`: `Target` and `Pool` (balancing, the retry budget and bulkhead, health, ejection and
  breakers, the choice of a try's target);
- `handler`: `ProxyHandler`, the per-request work: request shaping, the tries, the answer;
- `plugin`: `ProxyPlugin`, the mitmproxy addon (pools across reloads, health-check start,
  lint, the `backworks.targets` and `backworks.breaker.reset` commands).

This module only re-exports the plugin, its handler and pool, and the config models. The log
lines keep their name: `addons.proxy`.
"""

from addons.proxy.handler import ProxyHandler
from addons.proxy.plugin import ProxyPlugin
from addons.proxy.pool import Pool, Target
from addons.proxy.settings import EndpointProxyConfig, PoolConfig, ProxyMetricsConfig, ProxyPluginConfig, RetryConfig, TargetConfig

__all__ = [
    "EndpointProxyConfig",
    "Pool",
    "PoolConfig",
    "ProxyHandler",
    "ProxyMetricsConfig",
    "ProxyPlugin",
    "ProxyPluginConfig",
    "RetryConfig",
    "Target",
    "TargetConfig",
]
