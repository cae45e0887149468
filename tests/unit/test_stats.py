"""addons.stats: the status page's rolling window, driven by an injected clock."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from addons.stats import RollingWindow, WindowSnapshot, percentile

from .conftest import FakeClock


def window(clock: FakeClock, **kwargs) -> RollingWindow:  # type: ignore[no-untyped-def]
    return RollingWindow(clock=clock, rng=random.Random(1234), **kwargs)


# -- counting -------------------------------------------------------------------------------


def test_an_empty_window_has_no_rates_and_no_latencies() -> None:
    snapshot = window(FakeClock()).snapshot()
    assert snapshot == WindowSnapshot(requests=0, window_requests=0, rate_per_s=0.0, error_rate=None, p50=None, p90=None, p99=None)
    assert snapshot.as_json() == {"requests": 0, "rate_per_s": 0.0, "error_rate": None, "latency_ms": {"p50": None, "p90": None, "p99": None}}


def test_requests_and_errors_are_counted() -> None:
    clock = FakeClock()
    stats = window(clock)
    for index in range(8):
        stats.record(0.01, error=index % 4 == 0)  # 2 errors in 8
        clock.advance(0.25)
    snapshot = stats.snapshot()
    assert snapshot.requests == 8
    assert snapshot.window_requests == 8
    assert snapshot.error_rate == pytest.approx(0.25)
    assert snapshot.as_json()["error_rate"] == 0.25


def test_error_rate_is_none_without_requests_not_zero() -> None:
    clock = FakeClock()
    stats = window(clock)
    assert stats.snapshot().error_rate is None
    stats.record(0.1, error=False)
    assert stats.snapshot().error_rate == 0.0
    clock.advance(61)  # the only request left the window
    assert stats.snapshot().error_rate is None


def test_rate_is_over_the_time_since_start_before_a_full_window_has_passed() -> None:
    clock = FakeClock(1000.0)
    stats = window(clock)
    for _ in range(10):
        stats.record(0.01, error=False)
    # at the very start the span is one second (never a division by ~0)
    assert stats.snapshot().rate_per_s == pytest.approx(10.0)
    clock.advance(4.0)
    assert stats.snapshot().rate_per_s == pytest.approx(10 / 4)
    clock.advance(6.0)
    assert stats.snapshot().rate_per_s == pytest.approx(10 / 10)


def test_rate_is_over_the_whole_window_once_it_has_passed() -> None:
    clock = FakeClock(1000.0)
    stats = window(clock, window=60)
    clock.advance(120)  # running for two minutes, idle so far
    for _ in range(30):  # 30 requests, 1 a second, during the last 30 seconds
        stats.record(0.01, error=False)
        clock.advance(1)
    snapshot = stats.snapshot()
    assert snapshot.window_requests == 30
    assert snapshot.rate_per_s == pytest.approx(30 / 60)


def test_buckets_expire_after_window_seconds() -> None:
    clock = FakeClock(1000.0)
    stats = window(clock, window=10)
    stats.record(5.0, error=True)  # second 1000
    clock.advance(3)
    stats.record(1.0, error=False)  # second 1003
    clock.advance(6)  # 1009: both are in the last 10 seconds
    snapshot = stats.snapshot()
    assert (snapshot.window_requests, snapshot.error_rate, snapshot.p99) == (2, 0.5, 5.0)
    clock.advance(1)  # 1010: second 1000 is out
    snapshot = stats.snapshot()
    assert (snapshot.window_requests, snapshot.error_rate, snapshot.p99) == (1, 0.0, 1.0)
    clock.advance(3)  # 1013: everything is out; the total since the start stays
    snapshot = stats.snapshot()
    assert (snapshot.requests, snapshot.window_requests, snapshot.error_rate, snapshot.p50) == (2, 0, None, None)


def test_a_reused_slot_starts_a_fresh_bucket() -> None:
    """Second 1010 lands in the slot of second 1000 (window 10): the old counts must not add up."""
    clock = FakeClock(1000.0)
    stats = window(clock, window=10)
    for _ in range(5):
        stats.record(9.0, error=True)
    clock.advance(10)
    stats.record(0.5, error=False)
    snapshot = stats.snapshot()
    assert (snapshot.requests, snapshot.window_requests, snapshot.error_rate) == (6, 1, 0.0)
    assert (snapshot.p50, snapshot.p99) == (0.5, 0.5)


# -- percentiles ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, fraction, expected",
    [
        ([], 0.5, None),
        ([7.0], 0.5, 7.0),
        ([7.0], 0.99, 7.0),
        ([1.0, 2.0], 0.5, 1.0),
        ([1.0, 2.0], 0.9, 2.0),
        ([float(v) for v in range(1, 11)], 0.5, 5.0),
        ([float(v) for v in range(1, 11)], 0.9, 9.0),
        ([float(v) for v in range(1, 11)], 0.99, 10.0),
        ([float(v) for v in range(1, 101)], 0.5, 50.0),
        ([float(v) for v in range(1, 101)], 0.9, 90.0),
        ([float(v) for v in range(1, 101)], 0.99, 99.0),
        ([float(v) for v in range(1, 101)], 0.0, 1.0),
        ([float(v) for v in range(1, 101)], 1.0, 100.0),
    ],
)
def test_percentile_is_the_nearest_rank(values, fraction, expected) -> None:  # type: ignore[no-untyped-def]
    assert percentile(values, fraction) == expected


@pytest.mark.parametrize("fraction, exact", [(0.5, Fraction(1, 2)), (0.9, Fraction(9, 10)), (0.99, Fraction(99, 100))])
def test_percentile_rank_has_no_floating_point_off_by_one(fraction: float, exact: Fraction) -> None:
    """ceil(0.9 * n) computed in floats must be the exact rank for every sample count we may hold."""
    for n in range(1, 2001):
        values = list(range(1, n + 1))
        assert percentile(values, fraction) == math.ceil(exact * n), n


def test_snapshot_percentiles_on_known_latencies() -> None:
    clock = FakeClock()
    stats = window(clock)
    for ms in [40, 10, 100, 30, 20, 90, 60, 80, 50, 70]:  # out of order, across two seconds
        stats.record(ms / 1000, error=False)
        clock.advance(0.2)
    snapshot = stats.snapshot()
    assert (snapshot.p50, snapshot.p90, snapshot.p99) == (0.05, 0.09, 0.1)
    assert snapshot.as_json()["latency_ms"] == {"p50": 50.0, "p90": 90.0, "p99": 100.0}


# -- memory: a bounded sample per second ----------------------------------------------------


def samples_held(stats: RollingWindow) -> list[int]:
    return [len(bucket.samples) for bucket in stats._buckets if bucket is not None]


def test_samples_per_second_stay_bounded_under_ten_thousand_records() -> None:
    clock = FakeClock(1000.0)
    stats = window(clock, samples_per_second=200)
    for _ in range(10_000):
        stats.record(0.01, error=False)
    assert samples_held(stats) == [200]
    snapshot = stats.snapshot()
    assert (snapshot.requests, snapshot.window_requests) == (10_000, 10_000)  # counts stay exact


def test_samples_stay_bounded_across_many_seconds() -> None:
    clock = FakeClock(1000.0)
    stats = window(clock, window=60, samples_per_second=50)
    for _ in range(300):  # five minutes, 100 requests a second
        for _ in range(100):
            stats.record(0.01, error=False)
        clock.advance(1)
    held = samples_held(stats)
    assert len(held) <= 60
    assert max(held) == 50
    assert sum(held) <= 60 * 50


def test_reservoir_keeps_plausible_percentiles_for_uniform_latencies() -> None:
    rng = random.Random(42)
    clock = FakeClock(1000.0)
    stats = RollingWindow(clock=clock, rng=random.Random(7), samples_per_second=200)
    for _ in range(10_000):
        stats.record(rng.random(), error=False)
    snapshot = stats.snapshot()
    assert abs(snapshot.p50 - 0.5) < 0.1
    assert abs(snapshot.p90 - 0.9) < 0.1
    assert snapshot.p99 > 0.9


def test_reservoir_is_not_biased_to_the_first_requests_of_a_second() -> None:
    """Latencies rising through the second: keeping only the first 200 would give p50 ~ 0.01."""
    clock = FakeClock(1000.0)
    stats = RollingWindow(clock=clock, rng=random.Random(3), samples_per_second=200)
    for index in range(10_000):
        stats.record(index / 10_000, error=False)
    snapshot = stats.snapshot()
    assert abs(snapshot.p50 - 0.5) < 0.1
    assert abs(snapshot.p90 - 0.9) < 0.1


# -- answers by status class ----------------------------------------------------------------

from addons.stats import LATENCY_BOUNDS, STATUS_CLASSES, MinuteHistory, StatusCounts, class_index  # noqa: E402


@pytest.mark.parametrize(
    "status, name",
    [(101, "1xx"), (200, "2xx"), (204, "2xx"), (302, "3xx"), (404, "4xx"), (499, "4xx"), (500, "5xx"), (599, "5xx"), (None, "none"), (600, "none"), (99, "none")],
)
def test_status_classes(status: int | None, name: str) -> None:
    assert STATUS_CLASSES[class_index(status)] == name
    counts = StatusCounts()
    counts.record(status)
    assert counts.as_json() == {**dict.fromkeys(STATUS_CLASSES, 0), name: 1}


# -- the last 15 minutes ----------------------------------------------------------------------

T0 = 1_700_000_040.0  # 22:14:00 UTC, the start of a minute


def test_history_buckets_by_wall_clock_minute_oldest_first() -> None:
    wall = FakeClock(T0 + 10)
    history = MinuteHistory(15, wall=wall)
    for status in (200, 200, 404, 503):
        history.record(0.010, status, error=status >= 500)
    wall.advance(60)  # the next minute
    history.record(0.020, None, error=True)
    rows = history.snapshot()
    assert len(rows) == 15
    assert [r["current"] for r in rows] == [False] * 14 + [True]
    assert rows[-2]["start"] == "2023-11-14T22:14:00Z" and rows[-1]["start"] == "2023-11-14T22:15:00Z"
    assert (rows[-2]["requests"], rows[-2]["errors"], rows[-2]["error_rate"]) == (4, 1, 0.25)
    assert rows[-2]["classes"] == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 1, "5xx": 1, "none": 0}
    assert rows[-1]["classes"]["none"] == 1 and rows[-1]["errors"] == 1
    assert all(r["requests"] == 0 and r["error_rate"] is None and r["latency_ms"]["p99"] is None for r in rows[:-2])


def test_history_forgets_minutes_older_than_the_ring() -> None:
    wall = FakeClock(T0)
    history = MinuteHistory(15, wall=wall)
    history.record(0.01, 200, error=False)
    wall.advance(14 * 60)
    assert history.snapshot()[0]["requests"] == 1  # 14 minutes ago: still the oldest row
    wall.advance(60)
    assert sum(r["requests"] for r in history.snapshot()) == 0
    # its slot comes round again: reused, starting from zero
    history.record(0.02, 500, error=True)
    last = history.snapshot()[-1]
    assert (last["requests"], last["errors"], last["classes"]["2xx"], last["classes"]["5xx"]) == (1, 1, 0, 1)


def test_history_skips_idle_minutes_and_a_clock_set_back() -> None:
    wall = FakeClock(T0)
    history = MinuteHistory(15, wall=wall)
    history.record(0.01, 200, error=False)
    wall.advance(3 * 60)
    history.record(0.01, 200, error=False)
    assert [r["requests"] for r in history.snapshot()[-4:]] == [1, 0, 0, 1]
    wall.now = T0 - 3600  # set back an hour: nothing recorded "in the future" is shown
    assert sum(r["requests"] for r in history.snapshot()) == 0


def test_history_latency_summary_is_within_one_histogram_step() -> None:
    wall = FakeClock(T0)
    history = MinuteHistory(15, wall=wall)
    latencies = [i / 1000 for i in range(1, 1001)]  # 1 ms to 1 s
    random.Random(7).shuffle(latencies)
    for seconds in latencies:
        history.record(seconds, 200, error=False)
    lat = history.snapshot()[-1]["latency_ms"]
    assert lat["avg"] == pytest.approx(500.5, abs=0.01)
    assert lat["max"] == 1000.0
    for key, exact in (("p50", 500.0), ("p90", 900.0), ("p99", 990.0)):
        assert exact <= lat[key] <= exact * 2 ** 0.25 + 0.01, (key, lat[key])
    assert LATENCY_BOUNDS[0] == 0.0001 and LATENCY_BOUNDS[-1] > 100


def test_history_latency_beyond_the_last_bound_and_memory_is_fixed() -> None:
    wall = FakeClock(T0)
    history = MinuteHistory(15, wall=wall)
    history.record(500.0, None, error=True)  # slower than the last bound
    assert history.snapshot()[-1]["latency_ms"]["p99"] == 500_000.0
    ring = history._ring
    sizes = [len(b.histogram) for b in ring]
    for step in range(10_000):
        wall.advance(0.7)
        history.record(0.001 * (step % 50), 200, error=False)
    assert history._ring is ring and len(ring) == 15 and [len(b.histogram) for b in ring] == sizes
    assert sum(r["requests"] for r in history.snapshot()) <= 15 * 60 / 0.7 + 2
