"""The upstream exchange, owned by Backworks rather than mitmproxy.

mitmproxy has no per-request timeout or retry and its `error` hook cannot replace a 502, so
proxy endpoints send the request themselves through a pooled aiohttp client. Failures are
classified (connect_failure, timeout, reset) so that retry and breaker policies can decide.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Literal

import aiohttp
from multidict import CIMultiDict

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


def end_to_end(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers, including any the Connection header names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]


class UpstreamError(Exception):
    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class UpstreamReply:
    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    elapsed: float


class UpstreamClient:
    """One pooled keep-alive client per addon, shared by every blueprint version."""

    def __init__(self, *, limit: int = 512, limit_per_host: int = 128) -> None:
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=self._limit_per_host, ttl_dns_cache=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,  # bodies pass through byte for byte
                cookie_jar=aiohttp.DummyCookieJar(),  # never mix cookies between clients
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def send(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | bool | None = None,
    ) -> UpstreamReply:
        session = self._get_session()
        started = time.monotonic()
        try:
            async with session.request(
                method,
                url,
                headers=CIMultiDict(headers),
                data=body if body else None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
                ssl=ssl_context if ssl_context is not None else True,
            ) as response:
                content = await response.read()
                return UpstreamReply(
                    status=response.status,
                    reason=response.reason or "",
                    headers=list(response.raw_headers),
                    body=content,
                    elapsed=time.monotonic() - started,
                )
        except (TimeoutError, asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError("timeout", f"no answer within {timeout:g}s") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError("connect_failure", f"cannot connect: {exc.os_error or exc}") from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
            raise UpstreamError("reset", f"connection lost: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError("protocol", f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
