"""The rate_limit middleware: takes a token per request, answers 429 (or 503), stamps the headers."""

from __future__ import annotations

import logging
import time

from mitmproxy import http

from addons.rate_limit.decision import Clock, Decision, StoreUnavailable
from addons.rate_limit.keys import request_key
from addons.rate_limit.local_buckets import LocalBuckets
from addons.rate_limit.redis_buckets import RedisBuckets
from addons.rate_limit.settings import RateLimitMiddlewareConfig, seconds_text
from addons.rate_limit.workers import WorkerShare
from backworks_core import headers as fast_headers
from backworks_core.context import RequestContext

logger = logging.getLogger(__package__)  # one logger for the plugin, "addons.rate_limit": the name users filter on

STATE_KEY = "rate_limit"  # ctx.state: {middleware name: Decision}
NOTE_KEY = "rate_limit"
REDIS_KEY_PREFIX = "backworks:rl"


Store = LocalBuckets | RedisBuckets


class RateLimitMiddleware:
    """Takes a token for the request's key: 429 without one; RateLimit headers on the answer."""

    def __init__(
        self,
        name: str,
        config: RateLimitMiddlewareConfig,
        *,
        blueprint: str = "",
        store: Store | None = None,
        clock: Clock = time.monotonic,
        share: WorkerShare | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.blueprint = blueprint
        # Shared through Redis: the whole limit; in this worker's own buckets: its share.
        self.share = share if not config.redis_url else None
        self.rate = config.rate if self.share is None else self.share.rate(config.rate)
        self.burst = config.capacity if self.share is None else self.share.burst(config.capacity)
        if store is None:
            store = RedisBuckets(config.redis_url, config.redis_timeout) if config.redis_url else LocalBuckets(config.max_keys, clock)
        self.store: Store = store
        self._global = config.scope == "global"
        self._shared = isinstance(store, RedisBuckets)

    def bucket_key(self, ctx: RequestContext) -> str:
        scope = "global" if self._global else ctx.endpoint.label
        client = request_key(ctx, self.config.key)
        if self._shared:  # `blueprint` may be set after construction (the plugin names it at load)
            return f"{REDIS_KEY_PREFIX}:{self.blueprint}:{self.name}:{scope}:{client}"
        return f"{scope}\n{client}"  # one store per middleware: the names are implied

    async def on_request(self, ctx: RequestContext) -> http.Response | None:
        # Anything raised here denies: the gateway answers 500 and never forwards (fail closed).
        key = self.bucket_key(ctx)
        try:
            if isinstance(self.store, RedisBuckets):
                decision = await self.store.take(key, self.rate, self.burst)
            else:
                decision = self.store.take(key, self.rate, self.burst)
        except StoreUnavailable as exc:
            if self.config.fail_open:
                ctx.notes[NOTE_KEY] = "unavailable:allowed"
                return None
            ctx.notes[NOTE_KEY] = "unavailable:denied"
            logger.debug("[%s] rate_limit %r: store unavailable (%s); denied", ctx.request_id, self.name, exc)
            return ctx.error(503, f"rate limit {self.name!r} cannot be checked (its store is unavailable); the request was denied", {"Retry-After": "1"})
        decisions: dict[str, Decision] = ctx.state.setdefault(STATE_KEY, {})
        decisions[self.name] = decision
        if decision.allowed:
            strictest = _strictest(decisions)
            if strictest.allowed:
                ctx.notes[NOTE_KEY] = f"remaining:{strictest.remaining}"
            return None
        ctx.notes[NOTE_KEY] = "denied"
        if ctx.record is not None:
            ctx.record.rate_limited = True
        shared = "" if self.share is None else f" across {self.share.workers} workers, this one's share {self.rate * self.config.per:g} with a burst of {self.burst}"
        return ctx.error(
            429,
            f"rate limit exceeded: {self.config.requests} request(s) per {seconds_text(self.config.per)}{shared}; retry after {decision.retry_after}s",
            decision.headers(),
        )

    async def on_response(self, ctx: RequestContext, response: http.Response) -> None:
        decisions: dict[str, Decision] | None = ctx.state.get(STATE_KEY)
        if decisions:
            fast_headers.put_fields(response.headers, _strictest(decisions).header_fields())

    async def close(self) -> None:
        await self.store.close()


def _strictest(decisions: dict[str, Decision]) -> Decision:
    """The decision whose headers the client sees (the one limit, mostly: no sort for it)."""
    if len(decisions) == 1:
        return next(iter(decisions.values()))
    return min(decisions.values(), key=lambda d: d.severity)
