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

The package, by layer: `settings` (the config model), `decision` (what a bucket answers),
`local_buckets` and `redis_buckets` (the two stores), `workers` (a worker's share of a limit),
`keys` (whose bucket a request takes from), `middleware` (the per-request work) and `plugin`
(the mitmproxy addon that builds the middlewares and keeps their stores across reloads).
"""

from addons.rate_limit.decision import EPSILON, Clock, Decision, StoreUnavailable
from addons.rate_limit.keys import MAX_KEY_TEXT, client_ip, request_key
from addons.rate_limit.local_buckets import LocalBuckets
from addons.rate_limit.middleware import NOTE_KEY, REDIS_KEY_PREFIX, STATE_KEY, RateLimitMiddleware, Store
from addons.rate_limit.plugin import RateLimitPlugin
from addons.rate_limit.redis_buckets import REDIS_MAX_CONNECTIONS, TOKEN_BUCKET_LUA, TOKEN_BUCKET_SHA, RedisBuckets
from addons.rate_limit.settings import PositiveWhole, RateLimitMiddlewareConfig
from addons.rate_limit.workers import WORKER_ENV, WORKERS_ENV, WorkerShare

__all__ = [
    "EPSILON",
    "MAX_KEY_TEXT",
    "NOTE_KEY",
    "REDIS_KEY_PREFIX",
    "REDIS_MAX_CONNECTIONS",
    "STATE_KEY",
    "TOKEN_BUCKET_LUA",
    "TOKEN_BUCKET_SHA",
    "WORKERS_ENV",
    "WORKER_ENV",
    "Clock",
    "Decision",
    "LocalBuckets",
    "PositiveWhole",
    "RateLimitMiddleware",
    "RateLimitMiddlewareConfig",
    "RateLimitPlugin",
    "RedisBuckets",
    "Store",
    "StoreUnavailable",
    "WorkerShare",
    "client_ip",
    "request_key",
]
