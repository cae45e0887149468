"""`ProxyPlugin`: the mitmproxy addon of the proxy plugin. It owns the pooled upstream client
and the pools of the blueprint being served (built at load, their target state carried across
reloads, health checks started once mitmproxy runs), builds each `handler: proxy` endpoint's
`ProxyHandler`, warns about settings that have no effect (`lint`), and offers the
`backworks.targets` and `backworks.breaker.reset` commands."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

from mitmproxy import command, exceptions
from pydantic import BaseModel

from addons.proxy.handler import ProxyHandler
from addons.proxy.pool import Pool
from addons.proxy.settings import EndpointProxyConfig, PoolConfig, ProxyPluginConfig, retry_notes
from backworks_core.gateway import BuildError
from backworks_core.loader import EndpointSpec, LoadedBlueprint
from backworks_core.plugins import Plugin, Section
from backworks_core.upstream import UpstreamClient
from backworks_core.validation import did_you_mean


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
        return ProxyHandler(self.client, pool, endpoint, endpoint_config)

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

