"""The rate_limit middleware's settings (`middlewares[].config`), validated when the blueprint loads."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from backworks_core.model import MiddlewareFilter
from backworks_core.validation import PositiveDuration

_TOKEN_CHARS = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token: a header name


def _whole_number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a whole number, not a boolean")
    return value


def _limiter_key(value: str) -> str:
    if value == "ip":
        return value
    kind, sep, name = value.partition(":")
    if sep and kind == "header" and _TOKEN_CHARS.match(name):
        return value
    if sep and kind == "claim" and name and name == name.strip():
        return value
    raise ValueError(f"expected ip, header:NAME or claim:NAME, got {value!r}")


def _redis_url(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None  # `${REDIS_URL:-}` unset: the local store
    value = value.strip()
    scheme = value.partition("://")[0].lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {value!r}")
    return value


PositiveWhole = Annotated[int, Field(ge=1), BeforeValidator(_whole_number)]
"""A whole number >= 1; a boolean is refused (YAML `yes` is not a count)."""


class RateLimitMiddlewareConfig(MiddlewareFilter):
    """`middlewares[].config` for `plugin: rate_limit`."""

    requests: PositiveWhole = Field(description="tokens added per `per`: the sustained rate", examples=[100])
    per: PositiveDuration = Field(description="the period of `requests` (30s, 1m, 1h, or seconds)", examples=["1m"])
    key: str = Field("ip", description="whose bucket: ip, header:NAME or claim:NAME (falls back to ip when absent)", examples=["header:X-Api-Key"])
    burst: PositiveWhole | None = Field(None, description="the bucket's capacity; default: requests", examples=[20])
    scope: Literal["endpoint", "global"] = Field("endpoint", description="buckets per matched endpoint, or shared by all", examples=["global"])
    redis_url: str | None = Field(None, description="share buckets across processes through this Redis (redis://, rediss://, unix://)", examples=["redis://127.0.0.1:6379/0"])
    redis_timeout: PositiveDuration = Field(0.5, description="the most one Redis call may take", examples=["200ms"])
    fail_open: bool = Field(False, description="when Redis fails: true lets requests through, false answers 503", examples=[True])
    max_keys: PositiveWhole = Field(50_000, description="the most buckets kept in this process (least recently used go first)", examples=[10000])

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        return _limiter_key(value)

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis(cls, value: Any) -> Any:
        return _redis_url(value) if isinstance(value, str) else value

    @property
    def capacity(self) -> int:
        return self.burst if self.burst is not None else self.requests

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self.requests / self.per


def seconds_text(value: float) -> str:
    """A period as the messages write it: `60s`."""
    return f"{value:g}s"
