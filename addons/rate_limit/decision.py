"""What a bucket answers for one request, whichever store keeps it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

Clock = Callable[[], float]

EPSILON = 1e-9  # float slack: 0.2 s at 5 tokens/s is one whole token


class Decision(NamedTuple):
    """One bucket's answer: what the headers say. A named tuple: one is made per request, and a
    tuple is built in a third of a frozen dataclass's time."""

    allowed: bool
    limit: int
    remaining: int
    reset: int  # whole seconds until the bucket is full again
    retry_after: int  # whole seconds (>= 1) until a token is back; 0 when allowed

    @classmethod
    def of(cls, allowed: bool, tokens: float, full_in: float, rate: float, burst: int) -> Decision:
        tokens = max(0.0, min(float(burst), tokens))
        retry_after = 0 if allowed else max(1, math.ceil((1.0 - tokens) / rate - EPSILON))
        return cls(allowed, burst, math.floor(tokens + EPSILON), max(0, math.ceil(full_in - EPSILON)), retry_after)

    def headers(self) -> dict[str, str]:
        return {name.decode(): value.decode() for name, value in self.header_fields()}

    def header_fields(self) -> tuple[tuple[bytes, bytes], ...]:
        """The RateLimit headers (and Retry-After on a refusal) as raw fields, in order: what
        every allowed answer carries, so made as bytes at once."""
        fields = ((b"RateLimit-Limit", b"%d" % self.limit), (b"RateLimit-Remaining", b"%d" % self.remaining), (b"RateLimit-Reset", b"%d" % self.reset))
        return fields if self.allowed else (*fields, (b"Retry-After", b"%d" % self.retry_after))

    @property
    def severity(self) -> tuple[bool, int, int]:
        """Smaller is more restrictive: a refusal, then the fewest left, then the longest reset."""
        return (self.allowed, self.remaining, -self.reset)


class StoreUnavailable(Exception):
    """The shared store (Redis) could not decide: fail_open says what happens."""
