"""The rate_limit plugin: the mitmproxy addon that builds the middlewares and hands their stores
(buckets, Redis pools) over across reloads."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel

from addons.rate_limit.decision import Clock
from addons.rate_limit.local_buckets import LocalBuckets
from addons.rate_limit.middleware import RateLimitMiddleware
from addons.rate_limit.redis_buckets import RedisBuckets
from addons.rate_limit.settings import RateLimitMiddlewareConfig
from addons.rate_limit.workers import WorkerShare
from backworks_core.plugins import Plugin

if TYPE_CHECKING:
    from backworks_core.loader import LoadedBlueprint, MiddlewareSpec

logger = logging.getLogger(__package__)  # one logger for the plugin, "addons.rate_limit": the name users filter on


class RateLimitPlugin(Plugin):
    """mitmproxy addon and Backworks plugin: keeps the buckets (and Redis pools) across reloads."""

    name = "rate_limit"
    description = "token-bucket rate limits per client key (429 with Retry-After)"
    MiddlewareConfig = RateLimitMiddlewareConfig

    def __init__(self, clock: Clock = time.monotonic, env: Mapping[str, str] | None = None) -> None:
        self.clock = clock
        # `backworks run --workers N`: this worker's share of limits kept without Redis.
        self.share = WorkerShare.from_env(os.environ if env is None else env)
        # Built for a blueprint not yet live: (the plugin config object, its middlewares).
        self._built: list[tuple[BaseModel, RateLimitMiddleware]] = []
        # Live middlewares by (blueprint name, middleware name): their stores outlive a reload.
        self._live: dict[tuple[str, str], RateLimitMiddleware] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def build_middleware(self, middleware: MiddlewareSpec, config: BaseModel) -> RateLimitMiddleware:
        assert isinstance(middleware.config, RateLimitMiddlewareConfig)
        built = RateLimitMiddleware(middleware.name, middleware.config, clock=self.clock, share=self.share)
        self._built = [(c, m) for c, m in self._built if c is config]  # those of an older compile are gone
        self._built.append((config, built))
        return built

    def apply_blueprint(self, config: BaseModel | None, blueprint: LoadedBlueprint) -> None:
        """Name the new middlewares' buckets after the blueprint, hand them the old stores."""
        fresh = [m for c, m in self._built if c is config] if config is not None else []
        self._built = []
        live: dict[tuple[str, str], RateLimitMiddleware] = {}
        kept: set[int] = set()
        for middleware in fresh:
            middleware.blueprint = blueprint.settings.name
            previous = self._live.get((middleware.blueprint, middleware.name))
            if middleware.share is not None and (previous is None or previous.config != middleware.config):
                _warn_divided(middleware, middleware.share)
            if previous is not None and _same_store(previous, middleware):
                middleware.store = previous.store
                kept.add(id(previous.store))
            live[(middleware.blueprint, middleware.name)] = middleware
        for old in self._live.values():
            if id(old.store) not in kept:
                self._close_later(old)
        self._live = live

    def _close_later(self, middleware: RateLimitMiddleware) -> None:
        if not isinstance(middleware.store, RedisBuckets):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (tools, tests): nothing was connected from here
        task = loop.create_task(middleware.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def done(self) -> None:
        """mitmproxy shutdown: close the Redis pools."""
        for middleware in self._live.values():
            await middleware.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _warn_divided(middleware: RateLimitMiddleware, share: WorkerShare) -> None:
    """Once per new or changed limit, from worker 0 (the others say it at debug level)."""
    logger.log(
        logging.WARNING if share.index == 0 else logging.DEBUG,
        "rate_limit %r: no redis_url, so each of the %d workers keeps its own buckets and allows its share: %s. "
        "A client whose requests reach one worker gets that share only; set redis_url to share one limit across workers",
        middleware.name,
        share.workers,
        share.describe(middleware.config),
    )


def _same_store(old: RateLimitMiddleware, new: RateLimitMiddleware) -> bool:
    """Whether the new version of a middleware can keep the old one's buckets."""
    if isinstance(old.store, LocalBuckets) and isinstance(new.store, LocalBuckets):
        old.store.max_keys = new.store.max_keys
        old.store.clock = new.store.clock
        return True
    if isinstance(old.store, RedisBuckets) and isinstance(new.store, RedisBuckets):
        return old.store.url == new.store.url and old.store.timeout == new.store.timeout
    return False
