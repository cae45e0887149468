"""Several workers without a shared store: each worker's own buckets enforce its share of a limit."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from addons.rate_limit.settings import RateLimitMiddlewareConfig, seconds_text

logger = logging.getLogger(__package__)  # one logger for the plugin, "addons.rate_limit": the name users filter on

WORKER_ENV = "BACKWORKS_WORKER"  # set by `backworks run --workers N` (backworks_cli/supervisor.py)
WORKERS_ENV = "BACKWORKS_WORKERS"


@dataclass(frozen=True)
class WorkerShare:
    """This worker's part of a limit that N workers enforce each in its own buckets."""

    index: int  # 0 .. workers-1
    workers: int  # > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerShare | None:
        """From `backworks run --workers N`'s environment; None for one process.

        An index that is missing or out of range gets the smallest share (the last worker's):
        the limit is never exceeded because of a bad environment.
        """
        try:
            workers = int(env.get(WORKERS_ENV, "1"))
        except ValueError:
            logger.warning("rate_limit: %s=%r is not a number of workers; limits are this process's own", WORKERS_ENV, env.get(WORKERS_ENV))
            return None
        if workers <= 1:
            return None
        try:
            index = int(env.get(WORKER_ENV, ""))
        except ValueError:
            index = -1
        if not 0 <= index < workers:
            logger.warning("rate_limit: %s=%r is not a worker index below %d; this worker takes the smallest share", WORKER_ENV, env.get(WORKER_ENV), workers)
            index = workers - 1
        return cls(index, workers)

    def rate(self, rate: float) -> float:
        return rate / self.workers

    def burst(self, burst: int) -> int:
        """burst // N, one more for the first burst % N workers: the shares add up to `burst`."""
        return burst // self.workers + (1 if self.index < burst % self.workers else 0)

    def describe(self, config: RateLimitMiddlewareConfig) -> str:
        """Every worker's share, in words, for the warning at load."""
        capacity = config.capacity
        low, extra = capacity // self.workers, capacity % self.workers
        bursts = f"a burst of {low}" if not extra else f"a burst of {low + 1} on {_workers(0, extra - 1)} and {low} on the others"
        text = f"{config.requests / self.workers:g} request(s) per {seconds_text(config.per)} and {bursts}"
        if low == 0:
            empty = _workers(extra, self.workers - 1)
            text += f" (burst {capacity} < {self.workers} workers: {empty} {'has' if extra == self.workers - 1 else 'have'} no tokens and refuse{'s' if extra == self.workers - 1 else ''} every request this limit applies to)"
        return text


def _workers(first: int, last: int) -> str:
    return f"worker {first}" if first == last else f"workers {first}-{last}"
