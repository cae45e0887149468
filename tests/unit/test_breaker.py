"""Circuit breaker and bulkhead: every state transition, with a fake clock."""

from __future__ import annotations

import logging

import pytest

from addons.breaker import (
    HALF_OPEN_RETRY_AFTER,
    Bulkhead,
    CircuitBreaker,
    CircuitBreakerConfig,
    Permit,
    is_failure,
)
from .conftest import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def breaker(clock: FakeClock, **settings: object) -> CircuitBreaker:
    return CircuitBreaker("backend-2", CircuitBreakerConfig(**settings), clock)


def fail(b: CircuitBreaker, times: int = 1, reason: str = "timeout") -> None:
    for _ in range(times):
        permit = b.try_acquire()
        assert permit is not None, f"refused while {b.state}"
        permit.failure(reason)


def succeed(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        permit = b.try_acquire()
        assert permit is not None, f"refused while {b.state}"
        permit.success()


def transitions(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "addons.breaker"]


def open_breaker(clock: FakeClock, **settings: object) -> CircuitBreaker:
    b = breaker(clock, failure_threshold=2, recovery_timeout=30, **settings)
    fail(b, 2)
    assert b.state == "open"
    return b


# -- is_failure ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ("connect_failure", True),
        ("timeout", True),
        ("reset", True),
        ("protocol", True),
        (500, True),
        (502, True),
        (503, True),
        (599, True),
        (200, False),
        (304, False),
        (400, False),
        (404, False),
        (429, False),
        (499, False),
    ],
)
def test_is_failure(outcome: str | int, expected: bool) -> None:
    assert is_failure(outcome) is expected


def test_is_failure_refuses_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown failure kind"):
        is_failure("tiemout")
    with pytest.raises(TypeError):
        is_failure(True)


# -- closed -> open ----------------------------------------------------------------------------


def test_opens_after_consecutive_failures_logged_once(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="addons.breaker")
    b = breaker(clock, failure_threshold=5)
    fail(b, 4)
    assert b.state == "closed" and b.available()
    fail(b, 1, "timeout")
    assert b.state == "open"
    assert not b.available()
    assert b.try_acquire() is None
    assert b.state == "open"
    assert transitions(caplog) == [
        ("WARNING", "circuit breaker for backend-2: closed -> open (5 consecutive failures: timeout)")
    ]


def test_a_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=3)
    fail(b, 2)
    succeed(b)
    fail(b, 2)
    assert b.state == "closed"
    fail(b)
    assert b.state == "open"


def test_4xx_are_not_failures(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=2)
    for outcome in (503, 404, 502, 429, "reset", 400):
        permit = b.try_acquire()
        assert permit is not None
        permit.record(outcome)
    assert b.state == "closed"  # every failure was followed by a 4xx, which resets the count
    for outcome in (500, "connect_failure"):
        permit = b.try_acquire()
        assert permit is not None
        permit.record(outcome)
    assert b.state == "open"


def test_failure_rate_opens_once_min_requests_are_in_the_window(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="addons.breaker")
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, window=60, min_requests=10)
    # 4 failures out of 8: 50%, but fewer than min_requests outcomes -> stays closed.
    for _ in range(4):
        succeed(b)
        fail(b, reason="503")
    assert b.state == "closed"
    succeed(b)  # 4/9
    assert b.state == "closed"
    fail(b, reason="502")  # 5/10: the rate is reached with min_requests in the window
    assert b.state == "open"
    logs = transitions(caplog)
    assert len(logs) == 1
    level, message = logs[0]
    assert level == "WARNING"
    assert message.startswith("circuit breaker for backend-2: closed -> open (5 of the last 10 requests in 60s failed")
    assert message.endswith(": 502)")


def test_failure_rate_below_the_threshold_stays_closed(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, window=60, min_requests=10)
    for _ in range(20):  # 1 failure in 3
        succeed(b, 2)
        fail(b)
    assert b.state == "closed"


def test_old_outcomes_leave_the_window(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, window=60, min_requests=4)
    fail(b, 3)  # 3 of 3, below min_requests
    assert b.state == "closed"
    clock.advance(61)  # the 3 failures are now 61 s old: gone (with them, the next success would open it)
    succeed(b)  # 0 of 1
    fail(b)  # 1 of 2
    succeed(b, 2)  # 1 of 4
    assert b.state == "closed"
    assert b.status()["window_requests"] == 4
    assert b.status()["window_failures"] == 1
    fail(b)  # 2 of 5
    assert b.state == "closed"
    fail(b)  # 3 of 6: 50%
    assert b.state == "open"


def test_a_success_that_reaches_min_requests_can_open(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="addons.breaker")
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, window=60, min_requests=4)
    fail(b, 3)
    assert b.state == "closed"
    succeed(b)  # 3 of 4
    assert b.state == "open"
    assert [m for _, m in transitions(caplog)] == [
        "circuit breaker for backend-2: closed -> open (3 of the last 4 requests in 60s failed, failure_rate 0.5 reached)"
    ]


def test_failure_rate_one_means_every_request_failed(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=100, failure_rate=1, window=60, min_requests=3)
    fail(b, 2)
    succeed(b)
    fail(b, 10)  # 11 of 12
    assert b.state == "closed"
    clock.advance(61)
    fail(b, 3)
    assert b.state == "open"


def test_outcomes_stay_in_the_window_until_it_has_passed(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=100, failure_rate=0.5, window=60, min_requests=4)
    fail(b, 3)
    clock.advance(58.5)
    fail(b)  # the first three still count: 4 of 4
    assert b.state == "open"


def test_without_failure_rate_only_consecutive_failures_count(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=3)
    for _ in range(50):
        fail(b, 2)
        succeed(b)
    assert b.state == "closed"
    assert "window_requests" not in b.status()


# -- open -> half_open -> closed / open ----------------------------------------------------------


def test_open_becomes_half_open_after_recovery_timeout(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    b = open_breaker(clock)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="addons.breaker")
    clock.advance(29.9)
    assert b.state == "open"
    assert not b.available()
    clock.advance(0.1)
    assert b.state == "half_open"
    assert b.available()
    assert b.state == "half_open"
    assert transitions(caplog) == [
        ("INFO", "circuit breaker for backend-2: open -> half_open (recovery_timeout of 30s elapsed)")
    ]


def test_half_open_admits_at_most_max_calls_concurrently(clock: FakeClock) -> None:
    b = open_breaker(clock, half_open_max_calls=3)
    clock.advance(30)
    permits = [b.try_acquire() for _ in range(4)]  # four requests before any has an answer
    assert all(isinstance(p, Permit) and p.trial for p in permits[:3])
    assert permits[3] is None
    assert not b.available()
    assert b.state == "half_open"
    # still refused while the trials are in flight, however many ask
    assert b.try_acquire() is None
    assert b.rejected == 2


def test_half_open_closes_when_all_trials_succeed(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    b = open_breaker(clock, half_open_max_calls=3)
    clock.advance(30)
    caplog.set_level(logging.INFO, logger="addons.breaker")
    assert b.state == "half_open"
    caplog.clear()
    permits = [b.try_acquire() for _ in range(3)]
    assert all(permits)
    permits[0].success()
    permits[1].success()
    assert b.state == "half_open"
    assert b.try_acquire() is None  # succeeded trials still hold their slot
    permits[2].success()
    assert b.state == "closed"
    assert b.available()
    assert transitions(caplog) == [("INFO", "circuit breaker for backend-2: half_open -> closed (3 trial requests succeeded)")]
    # a closed breaker starts counting from zero again
    fail(b)
    assert b.state == "closed"
    fail(b)
    assert b.state == "open"


def test_a_trial_failure_opens_again_and_restarts_the_timer(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    b = open_breaker(clock, half_open_max_calls=2)
    clock.advance(30)
    first, second = b.try_acquire(), b.try_acquire()
    assert first is not None and second is not None
    first.success()
    clock.advance(5)
    caplog.set_level(logging.INFO, logger="addons.breaker")
    caplog.clear()
    second.failure("connect_failure")
    assert b.state == "open"
    assert b.retry_after() == pytest.approx(30)
    clock.advance(29)
    assert b.state == "open"
    clock.advance(1)
    assert b.state == "half_open"
    assert transitions(caplog) == [
        ("WARNING", "circuit breaker for backend-2: half_open -> open (trial request failed: connect_failure)"),
        ("INFO", "circuit breaker for backend-2: open -> half_open (recovery_timeout of 30s elapsed)"),
    ]


def test_release_frees_a_trial_slot(clock: FakeClock) -> None:
    b = open_breaker(clock, half_open_max_calls=1)
    clock.advance(30)
    trial = b.try_acquire()
    assert trial is not None
    assert b.try_acquire() is None
    trial.release()  # the client went away: no verdict
    assert b.state == "half_open"
    again = b.try_acquire()
    assert again is not None
    again.success()
    assert b.state == "closed"


def test_only_the_first_verdict_on_a_permit_counts(clock: FakeClock) -> None:
    b = open_breaker(clock, half_open_max_calls=2)
    clock.advance(30)
    trial = b.try_acquire()
    assert trial is not None
    trial.success()
    trial.release()  # e.g. a finally: block; must not free the slot a second time
    trial.success()  # must not count as the second successful trial
    assert b.state == "half_open"
    assert b.status()["trials_admitted"] == 1
    assert b.status()["trials_succeeded"] == 1


def test_releasing_a_closed_permit_changes_nothing(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=2)
    permit = b.try_acquire()
    assert permit is not None and not permit.trial
    permit.release()
    assert b.state == "closed" and b.available()


def test_outcomes_from_an_earlier_state_are_ignored(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=2, recovery_timeout=30, half_open_max_calls=1)
    slow = b.try_acquire()  # admitted while closed, answers much later
    assert slow is not None
    fail(b, 2)
    assert b.state == "open"
    clock.advance(30)
    assert b.state == "half_open"
    slow.success()  # not a trial: must not close the breaker
    assert b.state == "half_open"
    trial = b.try_acquire()
    assert trial is not None
    late = b.try_acquire()
    assert late is None


def test_a_late_failure_does_not_reopen_a_half_open_breaker(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, recovery_timeout=30)
    slow = b.try_acquire()
    assert slow is not None
    fail(b)
    clock.advance(30)
    slow.failure("timeout")
    assert b.state == "half_open"


# -- reset and retry_after -------------------------------------------------------------------------


def test_reset_closes_and_clears_counters(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    b = open_breaker(clock)
    caplog.set_level(logging.INFO, logger="addons.breaker")
    caplog.clear()
    b.reset()
    assert b.state == "closed"
    assert b.retry_after() == 0
    assert transitions(caplog) == [("INFO", "circuit breaker for backend-2: open -> closed (reset by command)")]
    fail(b)  # the count starts from zero: one failure of two does not open it
    assert b.state == "closed"


def test_reset_of_a_closed_breaker_clears_its_counts(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    b = breaker(clock, failure_threshold=2)
    fail(b)
    caplog.set_level(logging.INFO, logger="addons.breaker")
    b.reset()
    assert b.status()["consecutive_failures"] == 0
    fail(b)
    assert b.state == "closed"
    assert [m for _, m in transitions(caplog)] == [
        "circuit breaker for backend-2: counters cleared (reset by command; it was closed)"
    ]


def test_reset_while_half_open_drops_the_trials(clock: FakeClock) -> None:
    b = open_breaker(clock, half_open_max_calls=1)
    clock.advance(30)
    trial = b.try_acquire()
    assert trial is not None
    b.reset()
    trial.failure("timeout")  # from before the reset: ignored
    assert b.state == "closed"


def test_retry_after(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, recovery_timeout=30, half_open_max_calls=1)
    assert b.retry_after() == 0
    fail(b)
    assert b.retry_after() == pytest.approx(30)
    clock.advance(12.5)
    assert b.retry_after() == pytest.approx(17.5)
    clock.advance(17.5)
    assert b.retry_after() == 0  # half-open with a free slot
    trial = b.try_acquire()
    assert trial is not None
    assert b.retry_after() == HALF_OPEN_RETRY_AFTER  # every slot taken, verdict pending
    trial.success()
    assert b.retry_after() == 0


def test_zero_recovery_timeout_goes_half_open_at_once(clock: FakeClock) -> None:
    b = breaker(clock, failure_threshold=1, recovery_timeout=0)
    fail(b)
    assert b.state == "half_open"
    assert b.times_opened == 1


def test_every_transition_is_logged_exactly_once(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="addons.breaker")
    b = breaker(clock, failure_threshold=1, recovery_timeout=10, half_open_max_calls=1)
    for _ in range(3):
        b.available(), b.retry_after(), b.status()
    fail(b, reason="reset")
    for _ in range(3):
        b.available(), b.retry_after(), b.status(), b.try_acquire()
    clock.advance(10)
    for _ in range(3):
        b.available(), b.retry_after(), b.status()
    succeed(b)
    for _ in range(3):
        b.available(), b.retry_after(), b.status()
    assert transitions(caplog) == [
        ("WARNING", "circuit breaker for backend-2: closed -> open (1 consecutive failures: reset)"),
        ("INFO", "circuit breaker for backend-2: open -> half_open (recovery_timeout of 10s elapsed)"),
        ("INFO", "circuit breaker for backend-2: half_open -> closed (1 trial request succeeded)"),
    ]


# -- bulkhead ----------------------------------------------------------------------------------------


def test_bulkhead_limits_requests_in_flight() -> None:
    bulkhead = Bulkhead(2)
    assert bulkhead.try_enter() and bulkhead.try_enter()
    assert not bulkhead.try_enter()
    assert bulkhead.in_flight == 2 and bulkhead.rejected == 1
    bulkhead.leave()
    assert bulkhead.in_flight == 1
    assert bulkhead.try_enter()
    assert not bulkhead.try_enter()


def test_bulkhead_without_limit_admits_everything() -> None:
    bulkhead = Bulkhead(None)
    assert all(bulkhead.try_enter() for _ in range(1000))
    assert bulkhead.in_flight == 1000 and bulkhead.rejected == 0


def test_bulkhead_leave_never_goes_negative() -> None:
    bulkhead = Bulkhead(1)
    bulkhead.leave()
    assert bulkhead.in_flight == 0
    assert bulkhead.try_enter()
    assert not bulkhead.try_enter()


def test_bulkhead_refuses_a_zero_limit() -> None:
    with pytest.raises(ValueError):
        Bulkhead(0)


def test_config_defaults_and_validation() -> None:
    config = CircuitBreakerConfig()
    assert (config.failure_threshold, config.failure_rate, config.window, config.min_requests) == (5, None, 60.0, 20)
    assert (config.recovery_timeout, config.half_open_max_calls, config.max_concurrent_requests) == (30.0, 1, None)
    assert CircuitBreakerConfig(recovery_timeout="1m", window="30s").recovery_timeout == 60.0
    for bad in ({"failure_rate": 0}, {"failure_rate": 1.5}, {"failure_threshold": 0}, {"window": 0}, {"bogus": 1}):
        with pytest.raises(ValueError):
            CircuitBreakerConfig(**bad)
