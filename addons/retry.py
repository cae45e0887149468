"""Retry decisions for the proxy plugin: what is retried, how long to wait, and the retry budget.

Pure functions and small state objects, so that the rules are tested without a network:
- a connect failure is retried for every method, because nothing reached the upstream (as
  nginx's proxy_next_upstream does); timeouts, resets and listed statuses only for idempotent
  methods unless `retry_non_idempotent`;
- backoff is exponential with full jitter, capped at ten times the base (Envoy's default shape);
- a retry budget (Envoy's: 20% of the requests in flight, at least 3 concurrent retries) keeps
  retries from multiplying the load on a pool during an outage.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
FAILURE_KINDS = frozenset({"connect_failure", "timeout", "reset"})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int  # extra tries after the first
    conditions: frozenset[str]  # connect_failure / timeout / reset
    statuses: frozenset[int]
    per_try_timeout: float | None
    backoff: float
    retry_non_idempotent: bool

    def retryable(self, outcome: str | int, method: str) -> bool:
        """Whether a failed try (a failure kind, or a status code) may be tried again."""
        if isinstance(outcome, int):
            matched = outcome in self.statuses
        else:
            matched = outcome in self.conditions
        if not matched:
            return False
        if outcome == "connect_failure":
            return True  # the request never left: safe whatever the method
        return self.retry_non_idempotent or method.upper() in IDEMPOTENT_METHODS

    def delay(self, retry_number: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(base * 2^(n-1), 10 * base)]."""
        if self.backoff <= 0:
            return 0.0
        ceiling = min(self.backoff * (2 ** (retry_number - 1)), self.backoff * 10)
        return rng.uniform(0, ceiling)


NO_RETRIES = RetryPolicy(0, frozenset(), frozenset(), None, 0.0, False)


@dataclass
class RetryBudget:
    """Retries in flight may not exceed `percent` of requests in flight (but `min_concurrency` always may)."""

    percent: float = 20.0
    min_concurrency: int = 3
    active_requests: int = 0
    active_retries: int = 0
    refused: int = field(default=0)

    def try_acquire(self) -> bool:
        limit = max(self.min_concurrency, self.active_requests * self.percent / 100)
        if self.active_retries + 1 > limit:
            self.refused += 1
            return False
        self.active_retries += 1
        return True

    def release(self) -> None:
        self.active_retries = max(0, self.active_retries - 1)
