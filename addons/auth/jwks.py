"""Keys at run time: a JWKS document parsed (`parse_jwks`), fetched (`fetch_url`) and cached
(`JwksCache`), and the `KeyRing` that hands the Verifier the keys for a token."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from addons.auth.keys import ASYMMETRIC_ALGORITHMS, HMAC_ALGORITHMS, key_fits, unsupported_key
from addons.auth.settings import AuthConfig
from addons.auth.tokens import MAX_KID_LENGTH, TokenRejected, safe_text, strict_json
from backworks_core.credentials import redact

logger = logging.getLogger("addons.auth")  # the plugin's one logger, as the docs name it

MAX_JWKS_BYTES = 512 * 1024
MAX_JWKS_KEYS = 100
MAX_CANDIDATE_KEYS = 16  # keys tried for one token without a kid


@dataclass(frozen=True)
class JwksKey:
    kid: str | None
    key: Any  # a cryptography public key
    algorithm: str | None  # the JWK's `alg`, when it names one

    def allows(self, algorithm: str) -> bool:
        return (self.algorithm is None or self.algorithm == algorithm) and key_fits(algorithm, self.key)


class JwksError(Exception):
    pass


def parse_jwks(body: bytes) -> list[JwksKey]:
    """The usable verification keys of a JWKS document; raises JwksError when it is not one.

    Symmetric (`oct`) keys, private keys, keys for another use, unsupported or weak keys are
    skipped (each logged): a JWKS publishes public signing keys, nothing else.
    """
    try:
        document = strict_json(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JwksError(f"not JSON ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("not a JWKS: expected an object with a `keys` list")
    keys: list[JwksKey] = []
    for index, jwk in enumerate(document["keys"][:MAX_JWKS_KEYS]):
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        label = f"key {index}" + (f" ({safe_text(str(kid))[:64]})" if kid is not None else "")
        if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH):
            logger.warning("JWKS %s skipped: its kid is not a short string", label)
            continue
        if jwk.get("kty") == "oct" or "d" in jwk or "k" in jwk:
            logger.warning("JWKS %s skipped: a JWKS must hold public keys only", label)
            continue
        if jwk.get("use", "sig") != "sig" or ("key_ops" in jwk and "verify" not in (jwk.get("key_ops") or [])):
            continue
        algorithm = jwk.get("alg")
        if algorithm is not None and algorithm not in ASYMMETRIC_ALGORITHMS:
            logger.warning("JWKS %s skipped: algorithm %s is not supported", label, safe_text(str(algorithm))[:32])
            continue
        try:
            key = jwt.PyJWK(jwk).key
        except Exception as exc:  # pyjwt raises several kinds for a JWK it cannot read
            logger.warning("JWKS %s skipped: %s", label, type(exc).__name__)
            continue
        problem = unsupported_key(key)
        if problem is not None:
            logger.warning("JWKS %s skipped: %s", label, problem)
            continue
        keys.append(JwksKey(kid, key, algorithm))
    return keys


Fetch = Callable[[str, float], Awaitable[bytes]]


async def fetch_url(url: str, timeout: float) -> bytes:
    """GET a JWKS with aiohttp (on the running loop); no redirects, at most MAX_JWKS_BYTES."""
    import aiohttp

    # Not decompressed: a compressed JWKS could inflate far past MAX_JWKS_BYTES within one chunk.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), auto_decompress=False) as session:
        async with session.get(url, headers={"Accept": "application/json", "Accept-Encoding": "identity"}, allow_redirects=False) as response:
            if response.status != 200:
                raise JwksError(f"HTTP {response.status}")
            if response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
                raise JwksError(f"Content-Encoding {response.headers['Content-Encoding'][:32]!r} (identity was asked for)")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
            return bytes(body)


class JwksCache:
    """The keys of one JWKS URL: fetched when first needed, when older than `max_age`, or when
    a token names an unknown kid; never more often than once per `min_interval`.

    A failed fetch keeps the keys already known (and still counts against the interval, so an
    issuer that is down is not hammered). `clock` is monotonic seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        min_interval: float = 30.0,
        max_age: float = 600.0,
        timeout: float = 5.0,
        fetch: Fetch = fetch_url,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.min_interval = min_interval
        self.max_age = max_age
        self.timeout = timeout
        self._fetch = fetch
        self.clock = clock
        self.keys: list[JwksKey] = []
        self.fetched_at: float | None = None  # last successful fetch
        self.attempted_at: float | None = None
        self.fetches = 0
        self._inflight: asyncio.Future[None] | None = None

    def by_kid(self, kid: str) -> list[JwksKey]:
        return [k for k in self.keys if k.kid == kid]

    def needs_refresh(self, kid: str | None) -> bool:
        """Never fetched, too old, or the token names a kid the cache does not know."""
        if self.fetched_at is None or self.clock() - self.fetched_at >= self.max_age:
            return True
        return kid is not None and not self.by_kid(kid)

    def may_fetch(self) -> bool:
        return self.attempted_at is None or self.clock() - self.attempted_at >= self.min_interval

    async def ensure(self, kid: str | None = None) -> None:
        """Fetch when the cache needs it and the rate allows; requests arriving meanwhile wait
        for the fetch in flight rather than start another (or fail for want of the new key)."""
        if not self.needs_refresh(kid):
            return
        if self._inflight is None:
            if not self.may_fetch():
                return
            self._inflight = asyncio.ensure_future(self._refresh())
        await asyncio.shield(self._inflight)

    async def _refresh(self) -> None:
        self.attempted_at = self.clock()
        self.fetches += 1
        try:
            keys = parse_jwks(await self._fetch(self.url, self.timeout))
        except Exception as exc:  # the network, the issuer, or its document: keep what we have
            logger.warning("JWKS %s: fetch failed (%s: %s); keeping %d known keys", redact(self.url), type(exc).__name__, redact(str(exc)), len(self.keys))
            return
        finally:
            self._inflight = None
        self.keys = keys
        self.fetched_at = self.clock()
        logger.info("JWKS %s: %d keys (%s)", redact(self.url), len(keys), ", ".join(safe_text(k.kid or "-")[:64] for k in keys))


class KeyRing:
    """The KeyProvider of a config: the shared secret for HS*, the local key and the JWKS for the rest."""

    def __init__(self, config: AuthConfig, jwks: JwksCache | None = None) -> None:
        self.secret = config.secret
        self.public_key = config.verification_key
        self.jwks = jwks

    def keys_for(self, algorithm: str, kid: str | None) -> Sequence[Any]:
        if algorithm in HMAC_ALGORITHMS:
            if self.secret is None:
                raise TokenRejected("no_key")
            return [self.secret]
        found: list[Any] = []
        if self.jwks is not None:
            if kid is not None:
                found = [k.key for k in self.jwks.by_kid(kid) if k.allows(algorithm)]
            else:
                found = [k.key for k in self.jwks.keys if k.allows(algorithm)][:MAX_CANDIDATE_KEYS]
        if not found and self.public_key is not None and key_fits(algorithm, self.public_key):
            found = [self.public_key]
        if not found:
            raise TokenRejected("unknown_kid" if kid is not None and self.jwks is not None else "no_key")
        return found
