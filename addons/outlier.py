"""Passive outlier detection for one pool: eject targets that keep failing live traffic.

A pure module: no I/O, no timers. Time comes from an injectable monotonic clock; an ejected
target returns lazily, when the detector is next asked about it. Modelled on Envoy's
consecutive_5xx detection:

- `consecutive_failures` failures in a row (the caller decides what a failure is: see
  addons.breaker.is_failure) eject the target. A success resets the count, and so do an ejection
  and a return (a target comes back with a clean slate, as in Envoy). Outcomes of requests that
  finish while their target is ejected are ignored.
- The ejection lasts `base_ejection_time` x the target's ejection multiplier, capped at
  `max_ejection_time`. The multiplier grows by one with every ejection (so it is the number of
  times the target has been ejected, this one included) but stops growing once the cap is
  reached, as Envoy's does, so that it can come back down quickly.
- The multiplier decays: for every full `base_ejection_time` a returned target goes without being
  ejected again, it drops by one (Envoy decrements it on each `interval` tick once the host has
  stayed healthy for `base_ejection_time`; Backworks has no interval setting, so the step is
  `base_ejection_time` itself).
- At most `max_ejection_percent` of the pool is ejected at once, rounded down (2 targets at 50%:
  1; 3 targets at 50%: 1), and never the last un-ejected target. Unlike Envoy, which ejects one
  host whatever the percentage, the percentage is a hard cap: 3 targets at 10% eject none. A
  target held in the pool by the cap is ejected on its next failure once there is room.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from backworks_core.model import StrictModel
from backworks_core.validation import Duration

__all__ = ["OutlierDetectionConfig", "OutlierDetector"]

logger = logging.getLogger(__name__)


class OutlierDetectionConfig(StrictModel):
    consecutive_failures: int = Field(5, ge=1, description="failures in a row (connect failures, timeouts, resets, 5xx answers) that eject a target", examples=[3])
    base_ejection_time: Duration = Field(30.0, description="how long a first ejection lasts; each further ejection of the same target lasts one more multiple of it", examples=["10s"])
    max_ejection_time: Duration = Field(300.0, description="the longest an ejection lasts", examples=["2m"])
    max_ejection_percent: float = Field(50.0, ge=0, le=100, description="the largest share of the pool ejected at once (rounded down; never the last target)", examples=[25])


def _seconds(value: float) -> str:
    return f"{value:g}s"


@dataclass
class _Target:
    consecutive_failures: int = 0
    ejected_at: float | None = None  # None: in the pool
    ejected_for: float = 0.0
    multiplier: int = 0
    returned_at: float | None = None  # start of the current decay step, while multiplier > 0
    ejections: int = 0  # all ejections, for status and metrics


class OutlierDetector:
    """The ejection state of one pool's targets. See the module docstring for the rules."""

    def __init__(
        self,
        config: OutlierDetectionConfig,
        targets: Iterable[str],
        clock: Callable[[], float] = time.monotonic,
        *,
        pool: str | None = None,
    ) -> None:
        """`pool` only names the pool in log lines."""
        self.config = config
        self._clock = clock
        self._prefix = f"outlier detection [{pool}]" if pool else "outlier detection"
        self._targets: dict[str, _Target] = {}
        self.set_targets(targets)

    # -- the pool ------------------------------------------------------------------------------

    def set_targets(self, names: Iterable[str]) -> None:
        """Reload: targets that remain keep their state; new ones start in the pool."""
        old = self._targets
        self._targets = {name: old.get(name) or _Target() for name in names}

    def max_ejected(self) -> int:
        """How many targets may be ejected at once."""
        size = len(self._targets)
        allowed = math.floor(size * self.config.max_ejection_percent / 100 + 1e-9)
        return max(0, min(allowed, size - 1))

    # -- outcomes ------------------------------------------------------------------------------

    def record(self, target: str, failed: bool, reason: str = "") -> None:
        """One live-traffic outcome. Unknown targets (removed by a reload meanwhile) are ignored."""
        state = self._targets.get(target)
        if state is None:
            return
        now = self._clock()
        self._maybe_return(target, state, now)
        if state.ejected_at is not None:
            return
        if not failed:
            state.consecutive_failures = 0
            return
        state.consecutive_failures += 1
        if state.consecutive_failures < self.config.consecutive_failures:
            return
        ejected = sum(1 for name, other in self._targets.items() if self._maybe_return(name, other, now))
        if ejected >= self.max_ejected():
            logger.debug(
                "%s: %s has %d consecutive failures but stays: %d of %d targets are ejected (max_ejection_percent %g)",
                self._prefix, target, state.consecutive_failures, ejected, len(self._targets), self.config.max_ejection_percent,
            )
            return
        self._eject(target, state, now, f"{state.consecutive_failures} consecutive failures, last: {reason or 'failure'}")

    def uneject(self, target: str, reason: str) -> bool:
        """Put an ejected target back now (say, an active health check passed); True if it was out."""
        state = self._targets.get(target)
        now = self._clock()
        if state is None or not self._maybe_return(target, state, now):
            return False
        self._return(target, state, now, reason)
        return True

    # -- looking -------------------------------------------------------------------------------

    def is_ejected(self, target: str) -> bool:
        state = self._targets.get(target)
        return state is not None and self._maybe_return(target, state, self._clock())

    def ejected(self) -> list[str]:
        """The targets ejected now, in pool order."""
        now = self._clock()
        return [name for name, state in self._targets.items() if self._maybe_return(name, state, now)]

    def retry_after(self, target: str) -> float:
        """Seconds until the target returns; 0 if it is in the pool."""
        state = self._targets.get(target)
        now = self._clock()
        if state is None or not self._maybe_return(target, state, now):
            return 0.0
        assert state.ejected_at is not None
        return max(0.0, state.ejected_at + state.ejected_for - now)

    def ejection_count(self, target: str) -> int:
        """How many times the target has been ejected, in all."""
        state = self._targets.get(target)
        return state.ejections if state is not None else 0

    def ejection_multiplier(self, target: str) -> int:
        """The multiplier after decay: the next ejection lasts base x (this + 1), capped."""
        state = self._targets.get(target)
        if state is None:
            return 0
        now = self._clock()
        self._maybe_return(target, state, now)
        self._decay(state, now)
        return state.multiplier

    def status(self) -> dict[str, dict[str, Any]]:
        """Per target: ejected, seconds until it returns, consecutive failures, ejections, multiplier."""
        return {
            name: {
                "ejected": self.is_ejected(name),
                "retry_after": self.retry_after(name),
                "consecutive_failures": state.consecutive_failures,
                "ejections": state.ejections,
                "multiplier": self.ejection_multiplier(name),
            }
            for name, state in self._targets.items()
        }

    # -- moving --------------------------------------------------------------------------------

    def _maybe_return(self, name: str, state: _Target, now: float) -> bool:
        """Return the target if its time is up; whether it is (still) ejected."""
        if state.ejected_at is None:
            return False
        due = state.ejected_at + state.ejected_for
        if now < due:
            return True
        self._return(name, state, due, f"ejection of {_seconds(state.ejected_for)} over")
        return False

    def _return(self, name: str, state: _Target, when: float, reason: str) -> None:
        state.ejected_at = None
        state.returned_at = when
        state.consecutive_failures = 0
        logger.info("%s: %s is back in the pool (%s)", self._prefix, name, reason)

    def _decay(self, state: _Target, now: float) -> None:
        base = self.config.base_ejection_time
        if state.ejected_at is not None or state.returned_at is None or state.multiplier == 0 or base <= 0:
            return
        steps = math.floor((now - state.returned_at) / base)
        if steps <= 0:
            return
        state.multiplier = max(0, state.multiplier - steps)
        state.returned_at = None if state.multiplier == 0 else state.returned_at + steps * base

    def _eject(self, name: str, state: _Target, now: float, reason: str) -> None:
        config = self.config
        self._decay(state, now)
        if state.multiplier == 0 or config.base_ejection_time * state.multiplier < config.max_ejection_time:
            state.multiplier += 1
        state.ejections += 1
        state.ejected_at = now
        state.ejected_for = min(config.base_ejection_time * state.multiplier, config.max_ejection_time)
        state.returned_at = None
        state.consecutive_failures = 0
        logger.warning(
            "%s: ejecting %s for %s (%s; ejection %d)", self._prefix, name, _seconds(state.ejected_for), reason, state.ejections
        )
