"""The rate_limit plugin (middleware): token buckets per key. Being written (issue 9)."""

from __future__ import annotations

from backworks_core.model import MiddlewareFilter
from backworks_core.plugins import Plugin


class RateLimitMiddlewareConfig(MiddlewareFilter):
    """Placeholder until the middleware lands."""


class RateLimitPlugin(Plugin):
    name = "rate_limit"
    description = "token-bucket rate limits per client key (429 with Retry-After)"
    MiddlewareConfig = RateLimitMiddlewareConfig
