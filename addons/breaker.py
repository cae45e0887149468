"""Circuit breakers (one per target) and the pool-level bulkhead for the proxy plugin.

A pure module: no I/O, no timers, no mitmproxy. Time comes from an injectable monotonic clock and
every time-based move (open -> half_open) is made lazily, when the breaker is next looked at.
Breakers do no locking: mitmproxy runs addons on one event-loop thread and every call here is a
short synchronous one.

The states, as in Resilience4j and Envoy's outlier-ejection vocabulary:
- closed: everything is let through. It opens after `failure_threshold` consecutive failures, or
  when the failed share of the outcomes in the last `window` seconds reaches `failure_rate`
  (at least `min_requests` outcomes in the window; "reaches", so `failure_rate: 1` means "every
  request failed"). The window is kept in 60 buckets of `window / 60` seconds (1 s for the default
  60 s), as Resilience4j's time-based window does, so memory does not grow with traffic: an
  outcome leaves the window between `window - window/60` and `window` seconds after it was
  recorded. The rate is evaluated after every outcome, so the success that brings the window up
  to `min_requests` can open it (as in Resilience4j).
- open: nothing is let through until `recovery_timeout` has passed since it opened.
- half_open: at most `half_open_max_calls` trial requests are admitted. Admission is counted when
  a trial is admitted, not when it finishes, so concurrent requests cannot overshoot the limit. It
  closes once `half_open_max_calls` trials have succeeded and opens again (the recovery timer
  restarting) on the first trial that fails.

Admission hands out a `Permit`, and exactly one verdict on it counts: `success()`, `failure()`,
or `release()` (abandoned with no verdict: the client went away). A permit remembers the breaker
state it was issued in, so a slow request admitted while closed that finishes after the breaker
opened, went half-open or was reset is ignored instead of being taken for a trial (with the
default 30 s request timeout and 30 s recovery timeout that would otherwise be common).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from backworks_core.model import StrictModel
from backworks_core.validation import Duration, PositiveDuration

__all__ = [
    "FAILURE_KINDS",
    "HALF_OPEN_RETRY_AFTER",
    "BreakerState",
    "Bulkhead",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "Permit",
    "is_failure",
]

logger = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]

# The failure kinds of backworks_core.upstream.UpstreamError: none of them produced an answer.
FAILURE_KINDS = frozenset({"connect_failure", "timeout", "reset", "protocol"})

# What retry_after() says while half-open with every trial slot taken: the trials' verdict decides
# (admitting again at once, or after another recovery_timeout), so a client is told to come back
# soon and ask again rather than being promised a time nobody knows.
HALF_OPEN_RETRY_AFTER = 1.0

WINDOW_BUCKETS = 60


class CircuitBreakerConfig(StrictModel):
    failure_threshold: int = Field(5, ge=1, description="consecutive failures (connect failures, timeouts, resets, 5xx answers) that open the breaker", examples=[3])
    failure_rate: float | None = Field(None, gt=0, le=1, description="fraction of failed requests in `window`", examples=[0.5])
    window: PositiveDuration = Field(60.0, description="the sliding window that failure_rate is measured over", examples=["30s"])
    min_requests: int = Field(20, ge=1, description="outcomes needed in the window before failure_rate can open the breaker", examples=[10])
    recovery_timeout: Duration = Field(30.0, description="how long an open breaker refuses requests before letting trial requests through", examples=["10s"])
    half_open_max_calls: int = Field(1, ge=1, description="trial requests let through while half-open; that many successes close the breaker, one failure opens it again", examples=[3])
    max_concurrent_requests: int | None = Field(None, ge=1, description="requests in flight to the pool at most (a bulkhead); default: no limit", examples=[200])


def is_failure(outcome: str | int) -> bool:
    """Whether an upstream try's outcome counts against the target.

    A failure kind (connect_failure, timeout, reset, protocol) or a 5xx status is a failure; any
    other status (4xx included: the target answered, the client was wrong) is a success.
    """
    if isinstance(outcome, bool):
        raise TypeError(f"expected a failure kind or an HTTP status, got {outcome!r}")
    if isinstance(outcome, int):
        return outcome >= 500
    if outcome in FAILURE_KINDS:
        return True
    raise ValueError(f"unknown failure kind {outcome!r} (expected one of {', '.join(sorted(FAILURE_KINDS))} or a status code)")


def _seconds(value: float) -> str:
    return f"{value:g}s"


class _OutcomeWindow:
    """Counts of outcomes and failures over the last `window` seconds, in fixed buckets."""

    __slots__ = ("_buckets", "_width", "total", "failures")

    def __init__(self, window: float) -> None:
        self._width = window / WINDOW_BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket index, total, failures], oldest first
        self.total = 0
        self.failures = 0

    def _index(self, now: float) -> int:
        return math.floor(now / self._width)

    def prune(self, now: float) -> None:
        oldest_kept = self._index(now) - WINDOW_BUCKETS + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest_kept:
            _, total, failures = buckets.popleft()
            self.total -= total
            self.failures -= failures

    def add(self, now: float, failed: bool) -> None:
        self.prune(now)
        index = self._index(now)
        buckets = self._buckets
        if not buckets or buckets[-1][0] != index:
            buckets.append([index, 0, 0])
        bucket = buckets[-1]
        bucket[1] += 1
        self.total += 1
        if failed:
            bucket[2] += 1
            self.failures += 1

    def clear(self) -> None:
        self._buckets.clear()
        self.total = 0
        self.failures = 0


class Permit:
    """One admitted request. Exactly one verdict counts; later calls are no-ops.

    So a caller may always `release()` in a `finally:` after recording the outcome.
    """

    __slots__ = ("_breaker", "_epoch", "trial", "settled")

    def __init__(self, breaker: CircuitBreaker, epoch: int, trial: bool) -> None:
        self._breaker = breaker
        self._epoch = epoch
        self.trial = trial  # admitted as a half-open trial
        self.settled = False

    def success(self) -> None:
        self._settle(False, "")

    def failure(self, reason: str) -> None:
        """`reason` goes into the log line if this failure changes the breaker's state."""
        self._settle(True, reason)

    def record(self, outcome: str | int) -> None:
        """A failure kind or a status, classified by `is_failure`."""
        if is_failure(outcome):
            self.failure(str(outcome))
        else:
            self.success()

    def release(self) -> None:
        """The try was abandoned with no verdict: give back the half-open trial slot, if any."""
        if self.settled:
            return
        self.settled = True
        self._breaker._release(self)

    def _settle(self, failed: bool, reason: str) -> None:
        if self.settled:
            return
        self.settled = True
        self._breaker._record(self, failed, reason)


class CircuitBreaker:
    """The breaker of one target. See the module docstring for the states."""

    def __init__(self, target: str, config: CircuitBreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.config = config
        self._clock = clock
        self._state: BreakerState = "closed"
        self._epoch = 0  # bumped on every state change: permits from an earlier state are stale
        self._opened_at = 0.0
        self._consecutive_failures = 0
        self._window = _OutcomeWindow(config.window) if config.failure_rate is not None else None
        self._trials = 0  # half-open: admitted trials not released (in flight or succeeded)
        self._trial_successes = 0
        self.times_opened = 0
        self.rejected = 0  # try_acquire() refusals

    # -- looking -----------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        self._tick()
        return self._state

    def available(self) -> bool:
        """Whether a request could be admitted now; consumes nothing (for filtering candidates)."""
        state = self.state
        return state == "closed" or (state == "half_open" and self._trials < self.config.half_open_max_calls)

    def retry_after(self) -> float:
        """Seconds until a request may be admitted again; 0 if one may be now."""
        state = self.state
        if state == "closed":
            return 0.0
        if state == "open":
            return max(0.0, self._opened_at + self.config.recovery_timeout - self._clock())
        return 0.0 if self._trials < self.config.half_open_max_calls else HALF_OPEN_RETRY_AFTER

    def status(self) -> dict[str, Any]:
        """For status listings and metrics."""
        state = self.state
        info: dict[str, Any] = {
            "state": state,
            "consecutive_failures": self._consecutive_failures,
            "retry_after": self.retry_after(),
            "times_opened": self.times_opened,
            "rejected": self.rejected,
        }
        if self._window is not None:
            self._window.prune(self._clock())
            info["window_requests"] = self._window.total
            info["window_failures"] = self._window.failures
        if state == "half_open":
            info["trials_admitted"] = self._trials
            info["trials_succeeded"] = self._trial_successes
        return info

    # -- admitting ---------------------------------------------------------------------------

    def try_acquire(self) -> Permit | None:
        """Admit one request (a trial slot while half-open), or None when it must not be sent.

        The caller settles the permit with exactly one of success(), failure(reason), release().
        """
        if not self.available():
            self.rejected += 1
            return None
        trial = self._state == "half_open"
        if trial:
            self._trials += 1
        return Permit(self, self._epoch, trial)

    def reset(self, reason: str = "reset by command") -> None:
        """Back to closed with every counter cleared (`backworks.breaker.reset TARGET`)."""
        previous = self._state  # not `state`: no lazy half-open move logged just before the reset
        self._change("closed", reason)
        if previous == "closed":  # _change logs transitions only
            logger.info("circuit breaker for %s: counters cleared (%s; it was closed)", self.target, reason)

    # -- verdicts (through Permit) --------------------------------------------------------------

    def _record(self, permit: Permit, failed: bool, reason: str) -> None:
        if permit._epoch != self._epoch:
            return  # admitted in an earlier state: it says nothing about this one
        if self._state == "half_open":
            if failed:
                self._change("open", f"trial request failed: {reason}")
                return
            self._trial_successes += 1
            if self._trial_successes >= self.config.half_open_max_calls:
                self._change("closed", f"{self._trial_successes} trial request{'s' if self._trial_successes != 1 else ''} succeeded")
            return
        # closed (permits are never issued while open, and every state change bumps the epoch)
        if failed:
            self._consecutive_failures += 1
            if self._consecutive_failures >= self.config.failure_threshold:
                self._change("open", f"{self._consecutive_failures} consecutive failures: {reason}")
                return
        else:
            self._consecutive_failures = 0
        window = self._window
        if window is None:
            return
        # Evaluated after every outcome, as Resilience4j does: a success can be the one that
        # brings the window up to min_requests.
        window.add(self._clock(), failed)
        rate = self.config.failure_rate
        assert rate is not None
        if window.total >= self.config.min_requests and window.failures >= rate * window.total:
            self._change(
                "open",
                f"{window.failures} of the last {window.total} requests in {_seconds(self.config.window)} failed, "
                f"failure_rate {rate:g} reached" + (f": {reason}" if failed else ""),
            )

    def _release(self, permit: Permit) -> None:
        if permit._epoch == self._epoch and permit.trial:
            self._trials -= 1

    # -- moving --------------------------------------------------------------------------------

    def _tick(self) -> None:
        if self._state == "open" and self._clock() - self._opened_at >= self.config.recovery_timeout:
            self._change("half_open", f"recovery_timeout of {_seconds(self.config.recovery_timeout)} elapsed")

    def _change(self, state: BreakerState, reason: str) -> None:
        previous = self._state
        self._state = state
        self._epoch += 1
        self._consecutive_failures = 0
        if self._window is not None:
            self._window.clear()
        self._trials = 0
        self._trial_successes = 0
        if state == "open":
            self._opened_at = self._clock()
            self.times_opened += 1
        if previous != state:
            level = logging.WARNING if state == "open" else logging.INFO
            logger.log(level, "circuit breaker for %s: %s -> %s (%s)", self.target, previous, state, reason)


class Bulkhead:
    """A pool's `max_concurrent_requests`: requests in flight beyond `limit` are refused.

    `None` means no limit. The caller calls `leave()` once for every successful `try_enter()`.
    """

    __slots__ = ("limit", "in_flight", "rejected")

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"a bulkhead limit must be at least 1, got {limit}")
        self.limit = limit
        self.in_flight = 0
        self.rejected = 0

    def try_enter(self) -> bool:
        if self.limit is not None and self.in_flight >= self.limit:
            self.rejected += 1
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
