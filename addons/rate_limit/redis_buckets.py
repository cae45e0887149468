"""The token buckets shared through Redis: one atomic Lua script per request, Redis' own clock."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from typing import Any

from addons.rate_limit.decision import Decision, StoreUnavailable

logger = logging.getLogger(__package__)  # one logger for the plugin, "addons.rate_limit": the name users filter on

REDIS_MAX_CONNECTIONS = 32


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
