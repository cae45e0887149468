"""Passive outlier detection: ejection, its duration, the caps, returns and reloads."""

from __future__ import annotations

import logging

import pytest

from addons.outlier import OutlierDetectionConfig, OutlierDetector
from .conftest import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(500.0)


def detector(clock: FakeClock, targets: list[str] | None = None, **settings: object) -> OutlierDetector:
    settings.setdefault("consecutive_failures", 3)
    settings.setdefault("base_ejection_time", 10)
    settings.setdefault("max_ejection_time", 300)
    settings.setdefault("max_ejection_percent", 100)
    return OutlierDetector(OutlierDetectionConfig(**settings), targets or ["a", "b", "c", "d"], clock)


def fail(d: OutlierDetector, target: str, times: int, reason: str = "502") -> None:
    for _ in range(times):
        d.record(target, True, reason)


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "addons.outlier"]


def test_consecutive_failures_eject(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="addons.outlier")
    d = detector(clock)
    fail(d, "b", 2)
    assert not d.is_ejected("b")
    fail(d, "b", 1, "timeout")
    assert d.is_ejected("b")
    assert d.ejected() == ["b"]
    assert d.retry_after("b") == pytest.approx(10)
    assert d.ejection_count("b") == 1
    assert messages(caplog) == [
        ("WARNING", "outlier detection: ejecting b for 10s (3 consecutive failures, last: timeout; ejection 1)")
    ]


def test_a_success_resets_the_count(clock: FakeClock) -> None:
    d = detector(clock)
    for _ in range(5):
        fail(d, "a", 2)
        d.record("a", False, "")
    assert d.ejected() == []
    fail(d, "a", 1)
    assert d.ejected() == []
    fail(d, "a", 2)
    assert d.ejected() == ["a"]


def test_failures_of_other_targets_do_not_add_up(clock: FakeClock) -> None:
    d = detector(clock)
    for target in ("a", "b", "a", "b", "c", "d"):
        d.record(target, True, "reset")
    assert d.ejected() == []


def test_returns_automatically_when_its_time_is_up_logged_once(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:

    d = detector(clock)
    fail(d, "c", 3)
    caplog.set_level(logging.INFO, logger="addons.outlier")
    caplog.clear()
    clock.advance(9.5)
    assert d.is_ejected("c")
    assert d.retry_after("c") == pytest.approx(0.5)
    clock.advance(0.5)
    assert not d.is_ejected("c")
    assert d.ejected() == []
    assert d.retry_after("c") == 0
    d.status()
    assert messages(caplog) == [("INFO", "outlier detection: c is back in the pool (ejection of 10s over)")]


def test_a_returned_target_starts_from_a_clean_count(clock: FakeClock) -> None:
    d = detector(clock)
    fail(d, "a", 3)
    fail(d, "a", 10)  # requests that were in flight: ignored while ejected
    clock.advance(10)
    fail(d, "a", 2)
    assert not d.is_ejected("a")
    fail(d, "a", 1)
    assert d.is_ejected("a")


def test_ejection_time_grows_with_each_ejection_and_is_capped(clock: FakeClock) -> None:
    d = detector(clock, base_ejection_time=10, max_ejection_time=35)
    durations = []
    for _ in range(5):
        fail(d, "a", 3)
        durations.append(d.retry_after("a"))
        clock.advance(d.retry_after("a"))
        assert not d.is_ejected("a")
    assert durations == [10, 20, 30, 35, 35]
    assert d.ejection_count("a") == 5
    assert d.ejection_multiplier("a") == 4  # stops growing at the cap: ceil(35 / 10)


def test_multiplier_decays_while_a_returned_target_stays_in(clock: FakeClock) -> None:
    d = detector(clock, base_ejection_time=10, max_ejection_time=300)
    for _ in range(3):
        fail(d, "a", 3)
        clock.advance(d.retry_after("a"))
    assert d.ejection_multiplier("a") == 3
    clock.advance(9.9)
    assert d.ejection_multiplier("a") == 3
    clock.advance(0.1)  # one base_ejection_time in the pool
    assert d.ejection_multiplier("a") == 2
    clock.advance(10)
    assert d.ejection_multiplier("a") == 1
    fail(d, "a", 3)
    assert d.retry_after("a") == pytest.approx(20)  # base x (1 + 1)
    clock.advance(20 + 100)  # long enough to forget everything
    assert d.ejection_multiplier("a") == 0
    fail(d, "a", 3)
    assert d.retry_after("a") == pytest.approx(10)
    assert d.ejection_count("a") == 5


def test_max_ejection_percent_caps_ejections(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    d = detector(clock, targets=["a", "b", "c", "d", "e"], max_ejection_percent=50)  # 2.5 -> 2
    assert d.max_ejected() == 2
    caplog.set_level(logging.INFO, logger="addons.outlier")
    for target in ("a", "b", "c"):
        fail(d, target, 3)
    assert d.ejected() == ["a", "b"]
    fail(d, "c", 5)
    assert d.ejected() == ["a", "b"]
    assert [m for lvl, m in messages(caplog) if lvl == "WARNING"] == [
        "outlier detection: ejecting a for 10s (3 consecutive failures, last: 502; ejection 1)",
        "outlier detection: ejecting b for 10s (3 consecutive failures, last: 502; ejection 1)",
    ]
    # once there is room again, the target still failing goes on its next failure
    clock.advance(10)
    fail(d, "c", 1)
    assert d.ejected() == ["c"]


@pytest.mark.parametrize(
    ("size", "percent", "expected"),
    [
        (1, 100, 0),  # the last target always stays
        (2, 100, 1),
        (2, 50, 1),
        (3, 50, 1),
        (4, 50, 2),
        (10, 10, 1),
        (3, 10, 0),  # rounded down: a hard cap
        (5, 0, 0),
        (7, 100 / 7, 1),
        (4, 100, 3),
    ],
)
def test_max_ejected(clock: FakeClock, size: int, percent: float, expected: int) -> None:
    d = detector(clock, targets=[f"t{i}" for i in range(size)], max_ejection_percent=percent)
    assert d.max_ejected() == expected
    for i in range(size):
        fail(d, f"t{i}", 3)
    assert len(d.ejected()) == expected


def test_at_least_one_target_stays(clock: FakeClock) -> None:
    d = detector(clock, targets=["a", "b"], max_ejection_percent=100)
    fail(d, "a", 3)
    fail(d, "b", 30)
    assert d.ejected() == ["a"]
    assert not d.is_ejected("b")
    solo = detector(clock, targets=["only"], max_ejection_percent=100)
    fail(solo, "only", 10)
    assert solo.ejected() == []


def test_set_targets_keeps_state_for_remaining_names(clock: FakeClock) -> None:
    d = detector(clock, targets=["a", "b", "c"])
    fail(d, "a", 3)
    fail(d, "b", 2)
    d.set_targets(["b", "a", "new"])
    assert d.ejected() == ["a"]
    assert d.retry_after("a") == pytest.approx(10)
    fail(d, "b", 1)  # 2 + 1: the count survived the reload
    assert d.ejected() == ["b", "a"]
    assert not d.is_ejected("c") and d.ejection_count("c") == 0
    fail(d, "c", 5)  # removed: its outcomes are ignored
    assert "c" not in d.status()
    assert list(d.status()) == ["b", "a", "new"]


def test_set_targets_changes_the_cap(clock: FakeClock) -> None:
    d = detector(clock, targets=["a", "b"], max_ejection_percent=50)
    fail(d, "a", 3)
    fail(d, "b", 3)
    assert d.ejected() == ["a"]
    d.set_targets(["a", "b", "c", "d"])
    fail(d, "b", 1)
    assert d.ejected() == ["a", "b"]


def test_uneject(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    d = detector(clock)
    fail(d, "a", 3)
    caplog.set_level(logging.INFO, logger="addons.outlier")
    caplog.clear()
    assert d.uneject("a", "health check passed")
    assert not d.is_ejected("a")
    assert not d.uneject("a", "again")
    assert not d.uneject("nobody", "x")
    assert messages(caplog) == [("INFO", "outlier detection: a is back in the pool (health check passed)")]


def test_unknown_targets_are_ignored(clock: FakeClock) -> None:
    d = detector(clock)
    d.record("ghost", True, "timeout")
    assert not d.is_ejected("ghost")
    assert d.retry_after("ghost") == 0
    assert d.ejection_count("ghost") == 0


def test_pool_name_in_logs(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="addons.outlier")
    d = OutlierDetector(OutlierDetectionConfig(consecutive_failures=1), ["a", "b"], clock, pool="orders")
    d.record("a", True, "reset")
    assert messages(caplog) == [
        ("WARNING", "outlier detection [orders]: ejecting a for 30s (1 consecutive failures, last: reset; ejection 1)")
    ]


def test_config_defaults_and_validation() -> None:
    config = OutlierDetectionConfig()
    assert (config.consecutive_failures, config.base_ejection_time, config.max_ejection_time, config.max_ejection_percent) == (
        5, 30.0, 300.0, 50.0,
    )
    assert OutlierDetectionConfig(base_ejection_time="500ms").base_ejection_time == 0.5
    for bad in ({"consecutive_failures": 0}, {"max_ejection_percent": 101}, {"base_ejection_time": -1}, {"x": 1}):
        with pytest.raises(ValueError):
            OutlierDetectionConfig(**bad)
