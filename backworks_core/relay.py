"""A loopback HTTP endpoint through which mitmproxy streams the bodies Backworks exchanges itself.

mitmproxy streams a body only between its own client and server connections, and an addon can
hand it neither an async request body nor a response still arriving. So a flow whose body is
too large to hold (either way) is pointed at this relay: mitmproxy streams the client's body in
and streams the relay's answer out, while the job registered under the flow's one-time token
does the work in between: the upstream exchange with Backworks' timeouts, retries and
failover. Only flows with large or unknown-length bodies take this path; everything else is
answered in the `request` hook as before.

The relay listens on 127.0.0.1 on a random port; a token is 128 random bits and is good for
one request within `claim_timeout` seconds.

The flow's side is here too: `point_at_relay` sends a flow there (keeping the client's request
in its FlowState), `relay_answer` records the head the job answered with, and `restore_relayed`
(the core addon's `responseheaders`) puts that head and the client's request back on the flow.
The streamed request path that registers such jobs is backworks_core.streaming.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from mitmproxy import http

from backworks_core.context import StreamedResponse
from backworks_core.flowstate import flow_state, peek_state

logger = logging.getLogger(__name__)


@dataclass
class RelayAnswer:
    """What the relay sends back to mitmproxy: the body only matters, the head is put on the
    flow by the core addon's `responseheaders` hook (so aiohttp's own headers never show)."""

    status: int
    body: bytes | AsyncIterator[bytes]


RelayJob = Callable[[web.BaseRequest], Awaitable[RelayAnswer]]


@dataclass
class _Entry:
    job: RelayJob
    on_expire: Callable[[], None] | None
    timer: asyncio.TimerHandle | None = field(default=None)


class StreamRelay:
    def __init__(self, *, buffer_limit: int = 1024 * 1024, claim_timeout: float = 30.0, host: str = "127.0.0.1") -> None:
        self.buffer_limit = buffer_limit  # bodies larger than this are streamed, not held
        self.claim_timeout = claim_timeout
        self.host = host
        self.port: int | None = None
        self._jobs: dict[str, _Entry] = {}
        self._server: asyncio.base_events.Server | None = None
        self._web: web.Server | None = None
        self._starting: asyncio.Lock | None = None

    async def start(self) -> None:
        """Listen, once; later calls return at once."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._server is not None:
                return
            # auto_decompress off: the body as the client sent it, counted and bounded as received
            # (aiohttp would inflate a Content-Encoding bomb here, whole, before any limit applies).
            self._web = web.Server(self._handle, access_log=None, auto_decompress=False)
            self._server = await asyncio.get_running_loop().create_server(self._web, self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]
            logger.debug("stream relay listening on %s:%d", self.host, self.port)

    def register(self, job: RelayJob, on_expire: Callable[[], None] | None = None) -> str:
        """A one-time token for `job`; `on_expire` runs if nobody claims it in time."""
        token = secrets.token_urlsafe(16)
        entry = _Entry(job, on_expire)
        entry.timer = asyncio.get_running_loop().call_later(self.claim_timeout, self._expire, token)
        self._jobs[token] = entry
        return token

    def url(self, token: str) -> str:
        assert self.port is not None, "start() the relay first"
        return f"http://{self.host}:{self.port}/{token}"

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def _expire(self, token: str) -> None:
        entry = self._jobs.pop(token, None)
        if entry is not None and entry.on_expire is not None:
            logger.debug("stream relay: token expired unclaimed")
            entry.on_expire()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        entry = self._jobs.pop(request.path.lstrip("/"), None)
        if entry is None:
            return web.Response(status=404, text="unknown or expired relay token\n")
        if entry.timer is not None:
            entry.timer.cancel()
        answer = await entry.job(request)
        response = web.StreamResponse(status=answer.status)
        if isinstance(answer.body, bytes):
            response.content_length = len(answer.body)
            await response.prepare(request)
            if answer.body:
                await response.write(answer.body)
        else:
            response.enable_chunked_encoding()
            await response.prepare(request)
            async for chunk in answer.body:
                await response.write(chunk)
        await response.write_eof()
        return response

    async def stop(self) -> None:
        for token in list(self._jobs):
            entry = self._jobs.pop(token)
            if entry.timer is not None:
                entry.timer.cancel()
            if entry.on_expire is not None:
                entry.on_expire()
        await close_listener(self._server, self._web)
        self._server = self._web = None
        self.port = None


async def close_listener(server: asyncio.base_events.Server | None, web_server: web.Server | None) -> None:
    """Stop accepting, then let the requests under way finish (a second at most)."""
    if server is not None:
        server.close()
        await server.wait_closed()
    if web_server is not None:
        await web_server.shutdown(1.0)


# --------------------------------------------------------------------------- the flow's side

RELAY_CHUNK = 64 * 1024  # read size of a body arriving through the relay


@dataclass
class Relayed:
    """What the core addon's `responseheaders` hook puts back on a flow answered through the relay."""

    url: str
    headers: http.Headers
    head: http.Response | None = None
    streamed: bool = False
    restored: bool = False


def point_at_relay(flow: http.HTTPFlow, relay: StreamRelay, job: RelayJob, on_expire: Callable[[], None] | None = None) -> None:
    """Send the flow to the relay, where `job` answers it; mitmweb gets the client's request back."""
    flow_state(flow).relayed = Relayed(flow.request.url, flow.request.headers.copy())
    flow.request.url = relay.url(relay.register(job, on_expire))


def relay_answer(flow: http.HTTPFlow, answer: http.Response | StreamedResponse) -> RelayAnswer:
    relayed: Relayed = flow_state(flow).relayed
    if isinstance(answer, StreamedResponse):
        relayed.head, relayed.streamed = answer.head, True
        return RelayAnswer(answer.head.status_code, answer.body)
    relayed.head = answer
    return RelayAnswer(answer.status_code, answer.raw_content or b"")


async def ready(answer: RelayAnswer) -> RelayAnswer:
    """A relay job's answer made before the relay claimed it (a streamed response)."""
    return answer


def restore_relayed(flow: http.HTTPFlow) -> None:
    """`responseheaders` of a relayed flow: the answer's own head, and the client's request."""
    state = peek_state(flow)
    relayed: Relayed | None = state.relayed if state is not None else None
    if relayed is None or relayed.restored or flow.response is None:
        return
    relayed.restored = True  # the marker stays: the `request` hook of a streamed request comes later
    flow.request.url = relayed.url
    flow.request.headers = relayed.headers
    if relayed.head is None:  # the relay did not know the token (expired): its 404 stands
        return
    response = flow.response
    response.status_code = relayed.head.status_code
    response.reason = relayed.head.reason
    response.headers = relayed.head.headers.copy()
    if relayed.streamed:
        response.stream = True
        http1 = flow.request.http_version.startswith("HTTP/1")
        if http1 and "content-length" not in response.headers and flow.request.method != "HEAD":
            response.headers["transfer-encoding"] = "chunked"
