"""backworks_core.relay.StreamRelay: the loopback endpoint large bodies stream through, with a real client."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from backworks_core.relay import RelayAnswer, StreamRelay

MB = 1024 * 1024


@pytest.fixture
async def relay() -> AsyncIterator[StreamRelay]:
    relay = StreamRelay(claim_timeout=30.0)
    await relay.start()
    yield relay
    await relay.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


class Expiries:
    """An `on_expire` callback that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def wait_until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def bytes_job(status: int, body: bytes, seen: list[str] | None = None):  # type: ignore[no-untyped-def]
    async def job(request: web.BaseRequest) -> RelayAnswer:
        if seen is not None:
            seen.append(f"{request.method} {request.path}")
        await request.read()
        return RelayAnswer(status, body)

    return job


# -- start and stop -------------------------------------------------------------------------


async def test_start_listens_on_loopback_once() -> None:
    relay = StreamRelay()
    assert relay.port is None
    try:
        await relay.start()
        port = relay.port
        assert isinstance(port, int) and port > 0
        await relay.start()
        await asyncio.gather(relay.start(), relay.start())
        assert relay.port == port  # later calls reuse the listener
        token = relay.register(bytes_job(200, b"ok"))
        assert relay.url(token) == f"http://127.0.0.1:{port}/{token}"
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        await relay.stop()


async def test_url_before_start_is_refused() -> None:
    relay = StreamRelay()
    with pytest.raises(AssertionError):
        relay.url("token")


async def test_stop_expires_pending_jobs_and_closes_the_listener(client: aiohttp.ClientSession) -> None:
    relay = StreamRelay(claim_timeout=0.2)
    await relay.start()
    port = relay.port
    first, second = Expiries(), Expiries()
    relay.register(bytes_job(200, b"a"), first)
    relay.register(bytes_job(200, b"b"), second)
    relay.register(bytes_job(200, b"c"))  # no callback: nothing to call
    assert relay.pending == 3
    await relay.stop()
    assert (first.calls, second.calls) == (1, 1)
    assert relay.pending == 0
    assert relay.port is None
    await asyncio.sleep(0.4)  # past claim_timeout: the timers were cancelled, no second call
    assert (first.calls, second.calls) == (1, 1)
    with pytest.raises(aiohttp.ClientConnectorError):
        await client.get(f"http://127.0.0.1:{port}/anything")
    await relay.stop()  # stopping twice is harmless
    assert (first.calls, second.calls) == (1, 1)


async def test_the_relay_starts_again_after_stop(client: aiohttp.ClientSession) -> None:
    relay = StreamRelay()
    await relay.start()
    await relay.stop()
    await relay.start()
    try:
        async with client.get(relay.url(relay.register(bytes_job(200, b"again")))) as response:
            assert response.status == 200
            assert await response.read() == b"again"
    finally:
        await relay.stop()


# -- tokens ---------------------------------------------------------------------------------


async def test_a_token_answers_once(relay: StreamRelay, client: aiohttp.ClientSession) -> None:
    seen: list[str] = []
    token = relay.register(bytes_job(201, b"created", seen))
    assert relay.pending == 1
    async with client.post(relay.url(token), data=b"payload") as response:
        assert response.status == 201
        assert await response.read() == b"created"
    assert seen == [f"POST /{token}"]
    assert relay.pending == 0
    async with client.post(relay.url(token), data=b"payload") as response:
        assert response.status == 404
        assert "unknown or expired relay token" in await response.text()
    assert seen == [f"POST /{token}"]  # the job ran once


async def test_an_unknown_token_is_a_404(relay: StreamRelay, client: aiohttp.ClientSession) -> None:
    expiries = Expiries()
    relay.register(bytes_job(200, b"never"), expiries)
    for path in ("/not-a-token", "/", "/x/y"):
        async with client.get(f"http://127.0.0.1:{relay.port}{path}") as response:
            assert response.status == 404, path
    assert relay.pending == 1  # a wrong guess costs the real job nothing
    assert expiries.calls == 0


async def test_two_jobs_answer_independently(relay: StreamRelay, client: aiohttp.ClientSession) -> None:
    one = relay.register(bytes_job(200, b"one"))
    two = relay.register(bytes_job(202, b"two"))
    assert one != two
    async with client.get(relay.url(two)) as response:
        assert (response.status, await response.read()) == (202, b"two")
    async with client.get(relay.url(one)) as response:
        assert (response.status, await response.read()) == (200, b"one")


# -- answers --------------------------------------------------------------------------------


async def test_a_bytes_answer_has_its_content_length(relay: StreamRelay, client: aiohttp.ClientSession) -> None:
    body = bytes(range(256)) * 1000
    async with client.get(relay.url(relay.register(bytes_job(200, body)))) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(len(body))
        assert "Transfer-Encoding" not in response.headers
        assert await response.read() == body


async def test_an_empty_bytes_answer(relay: StreamRelay, client: aiohttp.ClientSession) -> None:
    async with client.get(relay.url(relay.register(bytes_job(404, b"")))) as response:
        assert response.status == 404
        assert response.headers["Content-Length"] == "0"
        assert await response.read() == b""


async def test_an_async_iterator_answer_is_chunked_and_complete(relay: StreamRelay, client: aiohttp.ClientSession) -> None:
    parts = [b"first-", b"", b"x" * 200_000, b"-last"]
    produced: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for index, part in enumerate(parts):
            produced.append(index)
            await asyncio.sleep(0)
            yield part

    async def job(request: web.BaseRequest) -> RelayAnswer:
        return RelayAnswer(206, body())

    async with client.get(relay.url(relay.register(job))) as response:
        assert response.status == 206
        assert response.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in response.headers
        assert await response.read() == b"".join(parts)
    assert produced == [0, 1, 2, 3]


# -- expiry ---------------------------------------------------------------------------------


async def test_an_unclaimed_token_expires_once(client: aiohttp.ClientSession) -> None:
    relay = StreamRelay(claim_timeout=0.1)
    await relay.start()
    try:
        expiries = Expiries()
        ran: list[str] = []
        token = relay.register(bytes_job(200, b"late", ran), expiries)
        await wait_until(lambda: expiries.calls > 0)
        assert relay.pending == 0
        async with client.get(relay.url(token)) as response:
            assert response.status == 404
        await asyncio.sleep(0.3)
        assert expiries.calls == 1
        assert ran == []
    finally:
        await relay.stop()
    assert expiries.calls == 1  # stop() does not expire it a second time


async def test_a_claimed_token_does_not_expire(client: aiohttp.ClientSession) -> None:
    relay = StreamRelay(claim_timeout=0.2)
    await relay.start()
    try:
        expiries = Expiries()
        release = asyncio.Event()

        async def slow_job(request: web.BaseRequest) -> RelayAnswer:
            await asyncio.wait_for(release.wait(), 5)  # outlives claim_timeout while running
            return RelayAnswer(200, b"done")

        token = relay.register(slow_job, expiries)
        fetch = asyncio.ensure_future(client.get(relay.url(token)))
        await wait_until(lambda: relay.pending == 0)
        await asyncio.sleep(0.4)
        release.set()
        async with await fetch as response:
            assert response.status == 200
            assert await response.read() == b"done"
        assert expiries.calls == 0
    finally:
        await relay.stop()
    assert expiries.calls == 0


# -- request bodies -------------------------------------------------------------------------


async def test_the_job_reads_a_5_mb_request_body_as_it_streams(relay: StreamRelay, client: aiohttp.ClientSession) -> None:
    size = 5 * MB
    block = bytes(range(256)) * 256
    first_chunk_seen = asyncio.Event()
    sent_when_first_seen: list[int] = []
    sent = 0
    result: dict[str, object] = {}

    async def job(request: web.BaseRequest) -> RelayAnswer:
        hasher, count, chunks = hashlib.sha256(), 0, 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            if not first_chunk_seen.is_set():
                sent_when_first_seen.append(sent)
                first_chunk_seen.set()
            hasher.update(chunk)
            count += len(chunk)
            chunks += 1
        result.update(bytes=count, sha256=hasher.hexdigest(), chunks=chunks)
        return RelayAnswer(200, hasher.hexdigest().encode())

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < size:
            yield block
            sent += len(block)
            if sent == 1 * MB:
                # the rest waits for the job to have seen the start: the body is not read whole first
                await asyncio.wait_for(first_chunk_seen.wait(), 5)

    expected = hashlib.sha256(block * (size // len(block))).hexdigest()
    async with client.post(relay.url(relay.register(job)), data=body()) as response:
        assert response.status == 200
        assert (await response.read()).decode() == expected
    assert result["bytes"] == size
    assert result["sha256"] == expected
    assert isinstance(result["chunks"], int) and result["chunks"] > 1
    assert sent_when_first_seen and sent_when_first_seen[0] <= 1 * MB
