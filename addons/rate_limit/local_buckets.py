"""The token buckets kept in this process: an injectable clock, idle buckets expire, a cap on keys."""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict

from addons.rate_limit.decision import EPSILON, Clock, Decision

logger = logging.getLogger(__package__)  # one logger for the plugin, "addons.rate_limit": the name users filter on


class _Bucket:
    __slots__ = ("tokens", "updated", "full_at")

    def __init__(self, tokens: float, updated: float, full_at: float) -> None:
        self.tokens, self.updated, self.full_at = tokens, updated, full_at


class LocalBuckets:
    """Token buckets in this process, at most `max_keys` of them.

    A bucket that is full again is the same as no bucket, so it is dropped: when it is the least
    recently used one met on a take, or in a sweep of all buckets at most once per `sweep_every`
    seconds (the time a bucket takes to fill from empty: after that every idle one is full).
    """

    def __init__(self, max_keys: int = 50_000, clock: Clock = time.monotonic) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._next_sweep: float | None = None
        self.evicted = 0  # buckets dropped by the cap before they were full
        self._warned_cap = False

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, rate: float, burst: int) -> Decision:
        now = self.clock()
        buckets = self._buckets
        if buckets:
            self._expire(now, burst / rate)
        bucket = buckets.get(key)
        if bucket is None:
            tokens = float(burst)
        else:
            tokens = min(float(burst), bucket.tokens + max(0.0, now - bucket.updated) * rate)
            buckets.move_to_end(key)
        allowed = tokens + EPSILON >= 1.0
        if allowed:
            tokens = max(0.0, tokens - 1.0)
        full_in = (burst - tokens) / rate
        if bucket is None:
            buckets[key] = _Bucket(tokens, now, now + full_in)
            if len(buckets) > self.max_keys:
                self._evict(now)
        else:
            bucket.tokens, bucket.updated, bucket.full_at = tokens, now, now + full_in
        if allowed:  # Decision.of for a bucket that had a token, without its clamps: one per request
            return Decision(True, burst, math.floor(tokens + EPSILON), math.ceil(full_in - EPSILON) if full_in > EPSILON else 0, 0)
        return Decision.of(allowed, tokens, full_in, rate, burst)

    def _expire(self, now: float, fill_time: float) -> None:
        buckets = self._buckets
        while buckets:  # the least recently used first: drop those full again
            first = next(iter(buckets.values()))
            if first.full_at > now:
                break
            buckets.popitem(last=False)
        if self._next_sweep is None:
            self._next_sweep = now + fill_time
        elif now >= self._next_sweep:
            self._next_sweep = now + fill_time
            for key in [k for k, b in buckets.items() if b.full_at <= now]:
                del buckets[key]

    def _evict(self, now: float) -> None:
        while len(self._buckets) > self.max_keys:
            _, bucket = self._buckets.popitem(last=False)
            if bucket.full_at > now:
                self.evicted += 1
                if not self._warned_cap:
                    self._warned_cap = True
                    logger.warning(
                        "rate_limit: more than %d client keys are being limited at once; the least recently "
                        "used buckets are forgotten (raise max_keys, or use redis_url)",
                        self.max_keys,
                    )

    async def close(self) -> None:
        return None
