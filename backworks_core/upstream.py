"""The upstream exchange, owned by Backworks rather than mitmproxy.

mitmproxy has no per-request timeout or retry and its `error` hook cannot replace a 502, so
proxy endpoints send the request themselves through a pooled aiohttp client. Failures are
classified (connect_failure, timeout, reset) so that retry and breaker policies can decide.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Literal

import aiohttp
from multidict import CIMultiDict
from yarl import URL

FailureKind = Literal["connect_failure", "timeout", "reset", "protocol"]

# RFC 9110 §7.6.1: connection-specific headers never travel past one hop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def hop_by_hop_and(*names: str) -> frozenset[bytes]:
    """The lower-case field names `end_to_end_fields` drops: hop-by-hop ones and `names`. Built
    once (at blueprint load), not per request."""
    return frozenset(name.lower().encode() for name in (*HOP_BY_HOP, *names))


def end_to_end_fields(
    fields: Iterable[tuple[bytes, bytes]], dropped: frozenset[bytes], encoding: str, connection_tokens: bool = True
) -> list[tuple[str, str]]:
    """The fields that may travel past this hop, decoded, in one pass: those named in `dropped`
    (from `hop_by_hop_and`) and any the Connection header names are left out. `encoding` is
    mitmproxy's ("utf-8", with surrogate escapes) for a client's request, "latin-1" for what
    aiohttp read from an upstream.

    `connection_tokens=False` for a request the gateway admitted: the client's Connection tokens
    already removed the client's own fields there (forwarding.TrustBoundary); applied here they
    would remove the fields the gateway added since (forward_claims, X-Request-ID, ...)."""
    errors = "surrogateescape" if encoding == "utf-8" else "strict"
    if connection_tokens:
        return [(name.decode(encoding, errors), value.decode(encoding, errors)) for name, value in end_to_end_bytes(fields, dropped)]
    return [(name.decode(encoding, errors), value.decode(encoding, errors)) for name, value in fields if name.lower() not in dropped]


def end_to_end_bytes(fields: Iterable[tuple[bytes, bytes]], dropped: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """`end_to_end_fields` without decoding: the fields as they came, for a head that is built
    as bytes (an upstream's answer passed on without header transforms)."""
    kept: list[tuple[bytes, bytes]] = []
    named: set[bytes] | None = None
    for name, value in fields:  # one pass, each name lowered once; Connection is rare in answers
        lowered = name.lower()
        if lowered == b"connection":
            named = (named or set()) | {token.strip().lower() for token in value.split(b",")}
        if lowered not in dropped:
            kept.append((name, value))
    if named:
        kept = [(name, value) for name, value in kept if name.lower() not in named]
    return kept


# What a client is told of a failed exchange: the kind, never the OS's text or an address.
FAILURE_PHRASES: dict[str, str] = {
    "connect_failure": "connect failed",
    "timeout": "timeout",
    "reset": "connection reset",
    "protocol": "protocol error",
}


class UpstreamError(Exception):
    """A failed try. The message is the detail for the log (it may name addresses and carry the
    OS's text); `phrase` is what a client may be told."""

    def __init__(self, kind: FailureKind, message: str, *, tls: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.tls = tls  # what of the TLS handshake failed (a connect failure for the retry rules)

    @property
    def phrase(self) -> str:
        return self.tls or FAILURE_PHRASES[self.kind]


class BodyStream:
    """A request body read from the client while it is sent upstream.

    It can be sent once: `started` tells the retry logic whether any of it has gone (a try
    that failed before reading it, e.g. on connect, may still go to another target).
    """

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.started = False
        self.sent = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        self.started = True
        async for chunk in self._chunks:
            self.sent += len(chunk)
            yield chunk


@dataclass
class UpstreamReply:
    """An upstream answer. `body` is whole unless `rest` is set: then it is the first part
    and `rest` streams the remainder (the answer was larger than the buffer limit)."""

    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    elapsed: float
    rest: aiohttp.ClientResponse | None = None

    @property
    def streamed(self) -> bool:
        return self.rest is not None

    async def chunks(self, chunk_size: int = 64 * 1024) -> AsyncIterator[bytes]:
        """The whole body, a chunk at a time; the connection is released at the end."""
        try:
            if self.body:
                yield self.body
            if self.rest is not None:
                async for chunk in self.rest.content.iter_chunked(chunk_size):
                    yield chunk
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise UpstreamError("timeout", "the upstream stopped sending its body") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("reset", f"connection lost while streaming: {exc}") from exc
        finally:
            self.close()

    def close(self) -> None:
        if self.rest is not None:
            self.rest.close()  # an unfinished body cannot go back to the pool
            self.rest = None


async def read_up_to(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether that was all of it."""
    length = response.content_length
    if response.method == "HEAD" or response.status in (204, 304) or (length is not None and length <= limit):
        return await response.read(), True
    if length is not None:
        return b"", False
    try:
        prefix = await response.content.readexactly(limit + 1)
    except asyncio.IncompleteReadError as exc:
        return exc.partial, True
    return prefix, False


# aiohttp without timers of its own: the try's asyncio.timeout covers connect, send and read.
_NO_TIMERS = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None)


def _idle_timeout(response: aiohttp.ClientResponse, timeout: float) -> None:
    """An answer that streams on past the buffer limit is held to `timeout` as an idle timeout
    (no data for that long), as aiohttp's `sock_read` would hold it."""
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    if protocol is not None:
        protocol.read_timeout = timeout
        protocol.start_timeout()


DEFAULT_CONNECTIONS_PER_TARGET = 128
"""Connections to one target at most when its `max_connections` is not set."""


class UpstreamClient:
    """One pooled keep-alive client per addon, shared by every blueprint version."""

    def __init__(self, *, limit: int = 512, limit_per_host: int = DEFAULT_CONNECTIONS_PER_TARGET) -> None:
        self._limit = limit
        self._limit_per_host = limit_per_host
        # One session per connection limit: aiohttp caps connections per host and connector, so
        # a target's `max_connections` needs a connector of its own limit (targets sharing a
        # limit share the connector, each host still counted on its own).
        self._sessions: dict[int, aiohttp.ClientSession] = {}
        self._probe_session: aiohttp.ClientSession | None = None

    def probe_session(self) -> aiohttp.ClientSession:
        """Health checks get their own connections: a target busy with traffic up to the
        per-host limit must not see its probes queue behind it and be marked unhealthy."""
        if self._probe_session is None or self._probe_session.closed:
            self._probe_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, limit_per_host=2),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._probe_session

    def _get_session(self, per_host: int | None = None) -> aiohttp.ClientSession:
        """The session whose connector allows `per_host` connections to each target: beyond
        that, a try waits for one of them to be free (within its timeout)."""
        per_host = per_host or self._limit_per_host
        session = self._sessions.get(per_host)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=max(self._limit, per_host), limit_per_host=per_host, ttl_dns_cache=60
            )
            session = self._sessions[per_host] = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # bodies pass through byte for byte
                cookie_jar=aiohttp.DummyCookieJar(),  # never mix cookies between clients
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return session

    async def send(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes | BodyStream,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | bool | None = None,
        buffer_limit: int | None = None,
        max_connections: int | None = None,
    ) -> UpstreamReply:
        """One try. `timeout` covers the answer up to its head and buffered body; a streamed
        request body, and a body streamed on past `buffer_limit`, are held to it as an idle
        timeout instead (no progress for that long), so a large transfer is not cut short.
        `max_connections`: the target's cap; waiting for a free connection counts against
        `timeout`."""
        session = self._get_session(max_connections)
        started = time.monotonic()
        streaming_request = isinstance(body, BodyStream)
        response: aiohttp.ClientResponse | None = None
        try:
            # One timer per try: the whole exchange within `timeout`; aiohttp's own per-read
            # timers only where an idle timeout is wanted (a streamed request body).
            async with asyncio.timeout(None if streaming_request else timeout):
                response = await session.request(
                    method,
                    URL(url, encoded=True),  # the path and query go as they are, not re-normalised
                    headers=CIMultiDict(headers),
                    data=body if body else None,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout) if streaming_request else _NO_TIMERS,
                    ssl=ssl_context if ssl_context is not None else True,
                )
                if buffer_limit is None:
                    content, complete = await response.read(), True
                else:
                    content, complete = await read_up_to(response, buffer_limit)
            if not complete and not streaming_request:
                _idle_timeout(response, timeout)  # the rest streams on: held to `timeout` between reads
            reply = UpstreamReply(
                status=response.status,
                reason=response.reason or "",
                headers=list(response.raw_headers),
                body=content,
                elapsed=time.monotonic() - started,
                rest=None if complete else response,
            )
            if complete:
                response.release()
            return reply
        except BaseException as exc:
            if response is not None:
                response.close()
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
                raise UpstreamError("timeout", f"no answer within {timeout:g}s") from exc
            if isinstance(exc, aiohttp.ClientConnectorCertificateError):
                raise UpstreamError("connect_failure", f"TLS handshake failed: {exc}", tls="TLS certificate verification failed") from exc
            if isinstance(exc, aiohttp.ClientConnectorSSLError):
                raise UpstreamError("connect_failure", f"TLS handshake failed: {exc}", tls="TLS handshake failed") from exc
            if isinstance(exc, aiohttp.ClientConnectorError):
                raise UpstreamError("connect_failure", f"cannot connect: {exc.os_error or exc}") from exc
            if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
                raise UpstreamError("reset", f"connection lost: {exc}") from exc
            if isinstance(exc, aiohttp.ClientError):
                raise UpstreamError("protocol", f"{type(exc).__name__}: {exc}") from exc
            raise

    async def close(self) -> None:
        for session in (*self._sessions.values(), self._probe_session):
            if session is not None and not session.closed:
                await session.close()
        self._sessions.clear()
        self._probe_session = None
