"""Rolling request statistics for the status page: rate, error rate and latency percentiles.

Prometheus keeps the long history; the status page answers "what is happening now", so each
window holds the last minute in one-second buckets, and a bounded sample of latencies per
bucket (reservoir sampling) so that memory stays flat at any request rate. Beside it: answers
counted by status class (`StatusCounts`) and a short history of the last minutes
(`MinuteHistory`: a ring of one-minute buckets with a fixed latency histogram each). Every
`record` is O(1) and allocates nothing: it runs on every request.
"""

from __future__ import annotations

import math
import random
import time
from bisect import bisect_left
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

    def record(self, seconds: float, error: bool, clock_now: float | None = None) -> None:
        """One request; `clock_now`: `clock()` read by the caller already (several windows per request)."""
        now = int(self.clock() if clock_now is None else clock_now)
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


# -- answers by status class ------------------------------------------------------------------

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "none")
"""`none`: the request ended without an answer (the client went away, the gateway failed)."""


def class_index(status: int | None) -> int:
    """The index of `status`'s class in STATUS_CLASSES (as backworks_core.telemetry.status_class)."""
    if status is None or not 100 <= status <= 599:
        return 5
    return status // 100 - 1


class StatusCounts:
    """Answers counted by status class since the start."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0] * len(STATUS_CLASSES)

    def record(self, status: int | None) -> None:
        self.counts[status // 100 - 1 if status is not None and 100 <= status <= 599 else 5] += 1  # class_index, inlined

    def as_json(self) -> dict[str, int]:
        return dict(zip(STATUS_CLASSES, self.counts))


# -- the last minutes ---------------------------------------------------------------------------

# Upper bounds (seconds) of the latency histogram: 0.1 ms to about 105 s in steps of 2^(1/4)
# (+19%), then one bucket for anything slower. A percentile read from it is the upper bound of
# its bucket (never above the slowest latency seen): at most 19% above the true value.
LATENCY_BOUNDS: tuple[float, ...] = tuple(0.0001 * 2 ** (step / 4) for step in range(81))


class _Minute:
    __slots__ = ("minute", "requests", "errors", "classes", "latency_sum", "latency_max", "histogram")

    def __init__(self) -> None:
        self.minute = -1
        self.requests = 0
        self.errors = 0
        self.classes = [0] * len(STATUS_CLASSES)
        self.latency_sum = 0.0
        self.latency_max = 0.0
        self.histogram = [0] * (len(LATENCY_BOUNDS) + 1)

    def reset(self, minute: int) -> None:
        self.minute = minute
        self.requests = self.errors = 0
        self.latency_sum = self.latency_max = 0.0
        for index in range(len(self.classes)):
            self.classes[index] = 0
        for index in range(len(self.histogram)):
            self.histogram[index] = 0

    def percentile(self, fraction: float) -> float | None:
        """Nearest rank over the histogram: the upper bound of the bucket holding that rank."""
        if not self.requests:
            return None
        rank = max(1, math.ceil(fraction * self.requests))
        seen = 0
        for index, count in enumerate(self.histogram):
            seen += count
            if seen >= rank:
                bound = LATENCY_BOUNDS[index] if index < len(LATENCY_BOUNDS) else self.latency_max
                return min(bound, self.latency_max)
        return self.latency_max  # not reached: the counts add up to `requests`


class MinuteHistory:
    """Requests, errors, status classes and latency of each of the last `minutes` wall-clock minutes.

    A ring of `minutes` buckets, each reused when its minute comes round again: memory is fixed
    whatever the rate. Minutes are those of the wall clock (`HH:MM:00` to `HH:MM:59`), so that the
    page can name them; a clock set back only makes the minutes in between read as empty.
    """

    def __init__(self, minutes: int = 15, wall: Callable[[], float] = time.time) -> None:
        self.minutes = minutes
        self.wall = wall
        self._ring = [_Minute() for _ in range(minutes)]

    def record(self, seconds: float, status: int | None, error: bool, now: float | None = None) -> None:
        """One answer (or none: `status` None) that took `seconds`; `now`: wall time, if known."""
        minute = int((self.wall() if now is None else now) // 60)
        bucket = self._ring[minute % self.minutes]
        if bucket.minute != minute:
            bucket.reset(minute)
        bucket.requests += 1
        if error:
            bucket.errors += 1
        bucket.classes[status // 100 - 1 if status is not None and 100 <= status <= 599 else 5] += 1  # class_index, inlined
        bucket.latency_sum += seconds
        if seconds > bucket.latency_max:
            bucket.latency_max = seconds
        bucket.histogram[bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def snapshot(self) -> list[dict[str, object]]:
        """Every one of the last `minutes` minutes, oldest first, the current (partial) one last."""
        now = int(self.wall() // 60)
        rows: list[dict[str, object]] = []
        for minute in range(now - self.minutes + 1, now + 1):
            bucket = self._ring[minute % self.minutes]
            if bucket.minute != minute:
                rows.append(_minute_json(minute, None, minute == now))
            else:
                rows.append(_minute_json(minute, bucket, minute == now))
        return rows


def _minute_json(minute: int, bucket: _Minute | None, current: bool) -> dict[str, object]:
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(minute * 60))
    if bucket is None or not bucket.requests:
        classes = dict.fromkeys(STATUS_CLASSES, 0)
        latency: dict[str, float | None] = {"avg": None, "p50": None, "p90": None, "p99": None, "max": None}
        return {"start": start, "current": current, "requests": 0, "errors": 0, "error_rate": None, "classes": classes, "latency_ms": latency}
    return {
        "start": start,
        "current": current,
        "requests": bucket.requests,
        "errors": bucket.errors,
        "error_rate": round(bucket.errors / bucket.requests, 4),
        "classes": dict(zip(STATUS_CLASSES, bucket.classes)),
        "latency_ms": {
            "avg": _ms(bucket.latency_sum / bucket.requests),
            "p50": _ms(bucket.percentile(0.50)),
            "p90": _ms(bucket.percentile(0.90)),
            "p99": _ms(bucket.percentile(0.99)),
            "max": _ms(bucket.latency_max),
        },
    }
