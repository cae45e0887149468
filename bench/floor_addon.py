"""The floor of an owned upstream exchange: bench/throughput.py's configuration f.

A mitmproxy addon that does nothing but what Backworks' proxy handler must at least do: send the
request upstream with the same pooled aiohttp client settings (backworks_core.upstream) from an
async `request` hook, and set the answer as the flow's response. No routing, no records, no
middlewares, no metrics. Its distance to bare mitmdump (configuration a) is what owning the
exchange costs in itself; its distance to configuration b is Backworks' own per-request work.
Not part of Backworks; never loaded outside the benchmark.
"""

from __future__ import annotations

import aiohttp
from mitmproxy import http
from multidict import CIMultiDict
from yarl import URL

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"})


class Floor:
    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=512, limit_per_host=128, ttl_dns_cache=60),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        request = flow.request
        headers = CIMultiDict((k, v) for k, v in request.headers.items(multi=True) if k.lower() not in HOP_BY_HOP)
        url = URL(f"{request.scheme}://{request.host}:{request.port}{request.path}", encoded=True)
        async with self.session.request(request.method, url, headers=headers, data=request.raw_content or None, allow_redirects=False) as reply:
            body = await reply.read()
            flow.response = http.Response.make(
                reply.status, body, [(k, v) for k, v in reply.raw_headers if k.lower() not in (b"transfer-encoding", b"connection")]
            )

    async def done(self) -> None:
        if self.session is not None:
            await self.session.close()


addons = [Floor()]
