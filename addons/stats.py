"""Rolling request statistics for the status page: rate, error rate and latency percentiles.

Prometheus keeps the long history; the status page answers "what is happening now", so each
window holds the last minute in one-second buckets, and a bounded sample of latencies per
bucket (reservoir sampling) so that memory stays flat at any request rate.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    second: int
    requests: int = 0
    errors: int = 0
    samples: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class WindowSnapshot:
    """What the status page shows of one window (latencies in milliseconds, None without data)."""

    requests: int  # since the start, not only in the window
    window_requests: int
    rate_per_s: float
    error_rate: float | None
    p50: float | None
    p90: float | None
    p99: float | None

    def as_json(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "rate_per_s": round(self.rate_per_s, 3),
            "error_rate": round(self.error_rate, 4) if self.error_rate is not None else None,
            "latency_ms": {"p50": _ms(self.p50), "p90": _ms(self.p90), "p99": _ms(self.p99)},
        }


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 2) if seconds is not None else None


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class RollingWindow:
    """Requests, errors and latencies of the last `window` seconds; `clock` is injectable."""

    def __init__(
        self,
        window: int = 60,
        clock: Callable[[], float] = time.monotonic,
        samples_per_second: int = 200,
        rng: random.Random | None = None,
    ) -> None:
        self.window = window
        self.clock = clock
        self.samples_per_second = samples_per_second
        self.rng = rng or random.Random()
        self.started = clock()
        self.total = 0
        self._buckets: list[_Bucket | None] = [None] * window

    def record(self, seconds: float, error: bool) -> None:
        now = int(self.clock())
        slot = now % self.window
        bucket = self._buckets[slot]
        if bucket is None or bucket.second != now:
            bucket = self._buckets[slot] = _Bucket(now)
        bucket.requests += 1
        bucket.errors += 1 if error else 0
        self.total += 1
        if len(bucket.samples) < self.samples_per_second:
            bucket.samples.append(seconds)
        else:  # reservoir: every request of the second is equally likely to be kept
            keep = self.rng.randrange(bucket.requests)
            if keep < self.samples_per_second:
                bucket.samples[keep] = seconds

    def snapshot(self) -> WindowSnapshot:
        now_float = self.clock()
        now = int(now_float)
        live = [b for b in self._buckets if b is not None and now - self.window < b.second <= now]
        requests = sum(b.requests for b in live)
        errors = sum(b.errors for b in live)
        samples = sorted(s for b in live for s in b.samples)
        span = min(float(self.window), max(1.0, now_float - self.started))
        return WindowSnapshot(
            requests=self.total,
            window_requests=requests,
            rate_per_s=requests / span,
            error_rate=errors / requests if requests else None,
            p50=percentile(samples, 0.50),
            p90=percentile(samples, 0.90),
            p99=percentile(samples, 0.99),
        )
