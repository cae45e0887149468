"""The `rate_limit` plugin: a middleware that limits requests per client key with token buckets.

```yaml
middlewares:
  - name: per-client
    plugin: rate_limit
    config: {path: "/api/*", requests: 100, per: 1m, key: "header:X-API-Key", burst: 20}
```

Each key has a bucket holding up to `burst` tokens (default: `requests`) that refills at
`requests` per `per`; a request takes one token, and a request that finds none is refused
with `429`. Three layers, each testable alone:

- **settings** (`RateLimitMiddlewareConfig`), validated when the blueprint loads;
- **stores**: `LocalBuckets` (in the process: an injectable clock, idle buckets expire, a hard
  cap on the number of keys) and `RedisBuckets` (shared by every process using the same Redis:
  one atomic Lua script, Redis' own clock);
- **the middleware** (`RateLimitMiddleware`), which finds the request's key, asks the store and
  answers `429`, or lets the request through and puts the `RateLimit-*` headers on the answer.

Decisions where the blueprint format is silent (documented here and in the reference):

- `key`: `ip` (the client's address: the connection's peer, or from a peer listed in
  `server.trusted_proxies` the right-most untrusted X-Forwarded-For address, see
  backworks_core/forwarding.py; an IPv4-mapped IPv6 address counts as the IPv4 one), `header:NAME` (all values of the header, joined with ", "),
  `claim:NAME` (from `ctx.user.claims`, set by an auth middleware that runs before this one; a
  name is looked up as written, then as a dotted path, as auth does). A request without the
  header or claim (or with an empty one) falls back to its client address: it is limited,
  never waved through, and its bucket is never the bucket of a header or claim value (the kinds
  are prefixed: `ip:…`, `header:…`, `claim:…`). Values longer than 64 characters, or with
  characters outside printable ASCII, are replaced by their SHA-256.
- `scope`: `endpoint` (default) gives each matched endpoint its own buckets; `global` shares
  them across every endpoint the middleware applies to.
- Headers (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Limit` is the bucket's capacity
  (`burst`), `RateLimit-Remaining` the whole tokens left after this request, `RateLimit-Reset`
  the whole seconds until the bucket is full again (Remaining back to Limit). They are on every
  answer the middleware decided on, allowed (added in `on_response`) or refused. `Retry-After`
  (on the `429` only) is the whole seconds, at least 1, until one token is back. When several
  rate_limit middlewares apply, the headers describe the most restrictive (a refusal first,
  then the fewest remaining).
- A refused request: `429` with the standard JSON error, `ctx.record.rate_limited = True` (the
  metrics count it), note `rate_limit=denied`; an allowed one: note `rate_limit=remaining:N`.
- Redis (`redis_url`, e.g. `${REDIS_URL}`; an empty value means "no Redis": the local store):
  bucket `backworks:rl:<blueprint>:<middleware>:<scope>:<key>` (a hash of tokens and time), the
  time from Redis' `TIME` so that every process agrees, a TTL of the time until the bucket is
  full again (plus a second): a full bucket and a missing one are the same. The script goes by
  EVALSHA, and by EVAL when Redis does not know it (after a restart or SCRIPT FLUSH). Pooled
  connections, no retries, `redis_timeout` for connecting, each reply and the whole call.
- Redis unreachable, slow or failing: `fail_open: false` (default: Backworks fails closed)
  answers `503` with `Retry-After: 1`; `fail_open: true` lets the request through without
  RateLimit headers. Either way one WARNING when the outage starts and one INFO when Redis
  answers again, never a line per request.
- Any other exception inside the middleware denies: the gateway turns a raising `on_request`
  into a `500` and never forwards the request (backworks_core.gateway.Gateway.answer).
- The local store keeps at most `max_keys` buckets (least recently used evicted first; an
  evicted bucket that was not full is forgotten, which only ever gives that key more room, and
  is logged once per middleware). Buckets full again are dropped as they are met and in a sweep
  at most once per refill period. A reload keeps the buckets of a middleware with the same name.
- Several workers (`backworks run --workers N`: env `BACKWORKS_WORKERS=N`, `BACKWORKS_WORKER=i`)
  without `redis_url`: each worker's local buckets enforce its share of the limit
  (`WorkerShare`): `requests / N` per `per`, and `burst // N` tokens, the first `burst % N`
  workers one more, so that the shares add up to the limit and never exceed it. A client whose
  requests all reach one worker (one keep-alive connection does) gets that worker's share; spread
  over the workers it gets at most the whole limit. A burst smaller than N leaves some workers
  without tokens: they refuse every request the limit applies to. Worker 0 warns at load, and
  recommends `redis_url`; with `redis_url` the workers share one limit, as separate processes do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from mitmproxy import http
from pydantic import BaseModel, BeforeValidator, Field, field_validator

from backworks_core import headers as fast_headers
from backworks_core.context import RequestContext
from backworks_core.forwarding import client_ip as forwarded_client_ip
from backworks_core.model import MiddlewareFilter
from backworks_core.plugins import Plugin
from backworks_core.validation import PositiveDuration

if TYPE_CHECKING:
    from backworks_core.loader import LoadedBlueprint, MiddlewareSpec

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

STATE_KEY = "rate_limit"  # ctx.state: {middleware name: Decision}
NOTE_KEY = "rate_limit"
MAX_KEY_TEXT = 64  # longer key values are hashed
EPSILON = 1e-9  # float slack: 0.2 s at 5 tokens/s is one whole token
REDIS_KEY_PREFIX = "backworks:rl"
REDIS_MAX_CONNECTIONS = 32
WORKER_ENV = "BACKWORKS_WORKER"  # set by `backworks run --workers N` (backworks_cli/supervisor.py)
WORKERS_ENV = "BACKWORKS_WORKERS"

_TOKEN_CHARS = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token: a header name
_PLAIN_TEXT = re.compile(r"^[\x21-\x7e]+$")


# ------------------------------------------------------------------------------------------
# Settings


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


# ------------------------------------------------------------------------------------------
# Decisions


@dataclass(frozen=True)
class Decision:
    """One bucket's answer: what the headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset: int  # whole seconds until the bucket is full again
    retry_after: int  # whole seconds (>= 1) until a token is back; 0 when allowed

    @classmethod
    def of(cls, allowed: bool, tokens: float, full_in: float, rate: float, burst: int) -> Decision:
        tokens = max(0.0, min(float(burst), tokens))
        retry_after = 0 if allowed else max(1, math.ceil((1.0 - tokens) / rate - EPSILON))
        return cls(allowed, burst, int(math.floor(tokens + EPSILON)), max(0, math.ceil(full_in - EPSILON)), retry_after)

    def headers(self) -> dict[str, str]:
        headers = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining), "RateLimit-Reset": str(self.reset)}
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers

    @property
    def severity(self) -> tuple[bool, int, int]:
        """Smaller is more restrictive: a refusal, then the fewest left, then the longest reset."""
        return (self.allowed, self.remaining, -self.reset)


class StoreUnavailable(Exception):
    """The shared store (Redis) could not decide: fail_open says what happens."""


# ------------------------------------------------------------------------------------------
# Several workers without a shared store


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
        text = f"{config.requests / self.workers:g} request(s) per {_seconds(config.per)} and {bursts}"
        if low == 0:
            empty = _workers(extra, self.workers - 1)
            text += f" (burst {capacity} < {self.workers} workers: {empty} {'has' if extra == self.workers - 1 else 'have'} no tokens and refuse{'s' if extra == self.workers - 1 else ''} every request this limit applies to)"
        return text


def _workers(first: int, last: int) -> str:
    return f"worker {first}" if first == last else f"workers {first}-{last}"


# ------------------------------------------------------------------------------------------
# The store in this process


class _Bucket:
    __slots__ = ("tokens", "updated", "full_at")

    def __init__(self, tokens: float, updated: float, full_at: float) -> None:
        self.tokens, self.updated, self.full_at = tokens, updated, full_at


class LocalBuckets:
    """Token buckets in this process, at most `max_keys` of them.

    A bucket that is full again is the same as no bucket, so it is dropped: when it is the least
    recently used one met on a take, or in a sweep of all buckets at most once per `sweep_every`
    seconds (the time a bucket takes to fill from empty: after that every idle one is full).
    """

    def __init__(self, max_keys: int = 50_000, clock: Clock = time.monotonic) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._next_sweep: float | None = None
        self.evicted = 0  # buckets dropped by the cap before they were full
        self._warned_cap = False

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, rate: float, burst: int) -> Decision:
        now = self.clock()
        self._expire(now, burst / rate)
        bucket = self._buckets.get(key)
        if bucket is None:
            tokens = float(burst)
        else:
            tokens = min(float(burst), bucket.tokens + max(0.0, now - bucket.updated) * rate)
            self._buckets.move_to_end(key)
        allowed = tokens + EPSILON >= 1.0
        if allowed:
            tokens = max(0.0, tokens - 1.0)
        full_in = (burst - tokens) / rate
        if bucket is None:
            self._buckets[key] = _Bucket(tokens, now, now + full_in)
            if len(self._buckets) > self.max_keys:
                self._evict(now)
        else:
            bucket.tokens, bucket.updated, bucket.full_at = tokens, now, now + full_in
        return Decision.of(allowed, tokens, full_in, rate, burst)

    def _expire(self, now: float, fill_time: float) -> None:
        buckets = self._buckets
        while buckets:
            first = next(iter(buckets.values()))
            if first.full_at > now:
                break
            buckets.popitem(last=False)
        if self._next_sweep is None:
            self._next_sweep = now + fill_time
        elif now >= self._next_sweep:
            self._next_sweep = now + fill_time
            for key in [k for k, b in buckets.items() if b.full_at <= now]:
                del buckets[key]

    def _evict(self, now: float) -> None:
        while len(self._buckets) > self.max_keys:
            _, bucket = self._buckets.popitem(last=False)
            if bucket.full_at > now:
                self.evicted += 1
                if not self._warned_cap:
                    self._warned_cap = True
                    logger.warning(
                        "rate_limit: more than %d client keys are being limited at once; the least recently "
                        "used buckets are forgotten (raise max_keys, or use redis_url)",
                        self.max_keys,
                    )

    async def close(self) -> None:
        return None


# ------------------------------------------------------------------------------------------
# The store shared through Redis

# KEYS[1]: the bucket; ARGV[1]: tokens per second, ARGV[2]: capacity.
# Returns {allowed (0/1), tokens left (string), seconds until full (string)}: Lua numbers would
# come back truncated to integers.
TOKEN_BUCKET_LUA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
else
  local elapsed = now - ts
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tokens + elapsed * rate)
end
local allowed = 0
if tokens + 1e-9 >= 1 then
  allowed = 1
  tokens = math.max(0, tokens - 1)
end
local full_in = (burst - tokens) / rate
redis.call('HSET', KEYS[1], 'tokens', string.format('%.9f', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(full_in * 1000) + 1000)
return {allowed, string.format('%.9f', tokens), string.format('%.6f', full_in)}
"""
TOKEN_BUCKET_SHA = hashlib.sha1(TOKEN_BUCKET_LUA.encode()).hexdigest()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RedisBuckets:
    """Token buckets in Redis, one atomic script per request; the connection pool is made lazily."""

    def __init__(self, url: str, timeout: float = 0.5, max_connections: int = REDIS_MAX_CONNECTIONS) -> None:
        self.url = url
        self.timeout = timeout
        self.max_connections = max_connections
        self._client: Any = None
        self.down = False  # in an outage: logged once when it starts, once when it ends
        self.failures = 0

    def _redis(self) -> Any:
        if self._client is None:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            pool = BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=self.timeout,  # waiting for a free connection
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),  # no retries: a failure is reported at once
                health_check_interval=0,
            )
            self._client = Redis(connection_pool=pool)
        return self._client

    async def take(self, key: str, rate: float, burst: int) -> Decision:
        from redis.exceptions import NoScriptError, RedisError

        client = self._redis()
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    reply = await client.evalsha(TOKEN_BUCKET_SHA, 1, key, repr(float(rate)), str(burst))
                except NoScriptError:
                    reply = await client.eval(TOKEN_BUCKET_LUA, 1, key, repr(float(rate)), str(burst))
            allowed, tokens, full_in = int(reply[0]), float(reply[1]), float(reply[2])
        except (RedisError, OSError, TimeoutError, ValueError, TypeError, IndexError) as exc:
            self._failed(exc)
            raise StoreUnavailable(_describe(exc)) from exc
        if self.down:
            logger.info("rate_limit: Redis at %s answers again (after %d failed request(s))", self.safe_url, self.failures)
            self.down, self.failures = False, 0
        return Decision.of(bool(allowed), tokens, full_in, rate, burst)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        if not self.down:
            self.down = True
            logger.warning("rate_limit: Redis at %s failed (%s); logged once until it answers again", self.safe_url, _describe(exc))

    @property
    def safe_url(self) -> str:
        """The URL without a password, for the log."""
        return re.sub(r"//[^@/]*@", "//***@", self.url)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            closer = getattr(client, "aclose", None) or client.close
            try:
                await closer(close_connection_pool=True)
            except Exception:  # closing is best effort
                logger.debug("rate_limit: closing the Redis pool failed", exc_info=True)


Store = LocalBuckets | RedisBuckets


# ------------------------------------------------------------------------------------------
# Keys


def _key_text(value: str) -> str:
    if len(value) <= MAX_KEY_TEXT and _PLAIN_TEXT.match(value):
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def client_ip(flow: http.HTTPFlow) -> str:
    """The client's address by the gateway's one rule (server.trusted_proxies; default: the peer)."""
    return forwarded_client_ip(flow)


def _claim_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str)


def request_key(ctx: RequestContext, key: str) -> str:
    """The bucket's client key: `ip:…`, `header:…` or `claim:…` (falling back to `ip:…`)."""
    kind, _, name = key.partition(":")
    if kind == "header":
        values = [v.strip() for v in ctx.flow.request.headers.get_all(name)]
        text = ", ".join(v for v in values if v)
        if text:
            return "header:" + _key_text(text)
    elif kind == "claim" and ctx.user is not None:
        from addons.auth import claim_value

        text = _claim_text(claim_value(ctx.user.claims, name))
        if text:
            return "claim:" + _key_text(text)
    return "ip:" + client_ip(ctx.flow)


def _seconds(value: float) -> str:
    return f"{value:g}s"


# ------------------------------------------------------------------------------------------
# The middleware


class RateLimitMiddleware:
    """Takes a token for the request's key: 429 without one; RateLimit headers on the answer."""

    def __init__(
        self,
        name: str,
        config: RateLimitMiddlewareConfig,
        *,
        blueprint: str = "",
        store: Store | None = None,
        clock: Clock = time.monotonic,
        share: WorkerShare | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.blueprint = blueprint
        # Shared through Redis: the whole limit; in this worker's own buckets: its share.
        self.share = share if not config.redis_url else None
        self.rate = config.rate if self.share is None else self.share.rate(config.rate)
        self.burst = config.capacity if self.share is None else self.share.burst(config.capacity)
        if store is None:
            store = RedisBuckets(config.redis_url, config.redis_timeout) if config.redis_url else LocalBuckets(config.max_keys, clock)
        self.store: Store = store

    def bucket_key(self, ctx: RequestContext) -> str:
        scope = "global" if self.config.scope == "global" else ctx.endpoint.label
        client = request_key(ctx, self.config.key)
        if isinstance(self.store, RedisBuckets):
            return f"{REDIS_KEY_PREFIX}:{self.blueprint}:{self.name}:{scope}:{client}"
        return f"{scope}\n{client}"  # one store per middleware: the names are implied

    async def on_request(self, ctx: RequestContext) -> http.Response | None:
        # Anything raised here denies: the gateway answers 500 and never forwards (fail closed).
        key = self.bucket_key(ctx)
        try:
            if isinstance(self.store, RedisBuckets):
                decision = await self.store.take(key, self.rate, self.burst)
            else:
                decision = self.store.take(key, self.rate, self.burst)
        except StoreUnavailable as exc:
            if self.config.fail_open:
                ctx.notes[NOTE_KEY] = "unavailable:allowed"
                return None
            ctx.notes[NOTE_KEY] = "unavailable:denied"
            logger.debug("[%s] rate_limit %r: store unavailable (%s); denied", ctx.request_id, self.name, exc)
            return ctx.error(503, f"rate limit {self.name!r} cannot be checked (its store is unavailable); the request was denied", {"Retry-After": "1"})
        decisions: dict[str, Decision] = ctx.state.setdefault(STATE_KEY, {})
        decisions[self.name] = decision
        if decision.allowed:
            strictest = min(decisions.values(), key=lambda d: d.severity)
            if strictest.allowed:
                ctx.notes[NOTE_KEY] = f"remaining:{strictest.remaining}"
            return None
        ctx.notes[NOTE_KEY] = "denied"
        if ctx.record is not None:
            ctx.record.rate_limited = True
        shared = "" if self.share is None else f" across {self.share.workers} workers, this one's share {self.rate * self.config.per:g} with a burst of {self.burst}"
        return ctx.error(
            429,
            f"rate limit exceeded: {self.config.requests} request(s) per {_seconds(self.config.per)}{shared}; retry after {decision.retry_after}s",
            decision.headers(),
        )

    async def on_response(self, ctx: RequestContext, response: http.Response) -> None:
        decisions: dict[str, Decision] = ctx.state.get(STATE_KEY) or {}
        if not decisions:
            return
        strictest = min(decisions.values(), key=lambda d: d.severity)
        fast_headers.put_all(response.headers, strictest.headers().items())

    async def close(self) -> None:
        await self.store.close()


# ------------------------------------------------------------------------------------------
# The plugin


class RateLimitPlugin(Plugin):
    """mitmproxy addon and Backworks plugin: keeps the buckets (and Redis pools) across reloads."""

    name = "rate_limit"
    description = "token-bucket rate limits per client key (429 with Retry-After)"
    MiddlewareConfig = RateLimitMiddlewareConfig

    def __init__(self, clock: Clock = time.monotonic, env: Mapping[str, str] | None = None) -> None:
        self.clock = clock
        # `backworks run --workers N`: this worker's share of limits kept without Redis.
        self.share = WorkerShare.from_env(os.environ if env is None else env)
        # Built for a blueprint not yet live: (the plugin config object, its middlewares).
        self._built: list[tuple[BaseModel, RateLimitMiddleware]] = []
        # Live middlewares by (blueprint name, middleware name): their stores outlive a reload.
        self._live: dict[tuple[str, str], RateLimitMiddleware] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def build_middleware(self, middleware: MiddlewareSpec, config: BaseModel) -> RateLimitMiddleware:
        assert isinstance(middleware.config, RateLimitMiddlewareConfig)
        built = RateLimitMiddleware(middleware.name, middleware.config, clock=self.clock, share=self.share)
        self._built = [(c, m) for c, m in self._built if c is config]  # those of an older compile are gone
        self._built.append((config, built))
        return built

    def apply_blueprint(self, config: BaseModel | None, blueprint: LoadedBlueprint) -> None:
        """Name the new middlewares' buckets after the blueprint, hand them the old stores."""
        fresh = [m for c, m in self._built if c is config] if config is not None else []
        self._built = []
        live: dict[tuple[str, str], RateLimitMiddleware] = {}
        kept: set[int] = set()
        for middleware in fresh:
            middleware.blueprint = blueprint.settings.name
            previous = self._live.get((middleware.blueprint, middleware.name))
            if middleware.share is not None and (previous is None or previous.config != middleware.config):
                _warn_divided(middleware, middleware.share)
            if previous is not None and _same_store(previous, middleware):
                middleware.store = previous.store
                kept.add(id(previous.store))
            live[(middleware.blueprint, middleware.name)] = middleware
        for old in self._live.values():
            if id(old.store) not in kept:
                self._close_later(old)
        self._live = live

    def _close_later(self, middleware: RateLimitMiddleware) -> None:
        if not isinstance(middleware.store, RedisBuckets):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (tools, tests): nothing was connected from here
        task = loop.create_task(middleware.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def done(self) -> None:
        """mitmproxy shutdown: close the Redis pools."""
        for middleware in self._live.values():
            await middleware.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _warn_divided(middleware: RateLimitMiddleware, share: WorkerShare) -> None:
    """Once per new or changed limit, from worker 0 (the others say it at debug level)."""
    logger.log(
        logging.WARNING if share.index == 0 else logging.DEBUG,
        "rate_limit %r: no redis_url, so each of the %d workers keeps its own buckets and allows its share: %s. "
        "A client whose requests reach one worker gets that share only; set redis_url to share one limit across workers",
        middleware.name,
        share.workers,
        share.describe(middleware.config),
    )


def _same_store(old: RateLimitMiddleware, new: RateLimitMiddleware) -> bool:
    """Whether the new version of a middleware can keep the old one's buckets."""
    if isinstance(old.store, LocalBuckets) and isinstance(new.store, LocalBuckets):
        old.store.max_keys = new.store.max_keys
        old.store.clock = new.store.clock
        return True
    if isinstance(old.store, RedisBuckets) and isinstance(new.store, RedisBuckets):
        return old.store.url == new.store.url and old.store.timeout == new.store.timeout
    return False
