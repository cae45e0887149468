"""Bounded load, controllable targets and a process sampler for the reliability suite.

- `PacedLoad`: a few client threads, each with its own keep-alive connection, sending the
  requests a plan names at a fixed rate; it stops at `max_requests` or `max_seconds`, whichever
  comes first, and records every outcome (any exception is an outcome with status 0).
- `ChaosTarget`: a real aiohttp upstream (tests.integration.harness.Upstream) whose behaviour
  a test switches while traffic flows: ok, 500 on the API (health checks still pass), slow
  (everything, health checks included), reset (every connection is reset after the request
  was read), cut (API answers send their head and part of the body, then reset; health checks
  pass). Stopping and restarting it on the same port is the harness' own stop/start.
- `ProcessSampler`: VmRSS and open file descriptors of a process every `interval` seconds.
- `scrape`: the gateway's Prometheus text as {(name, labels): value}.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import Upstream, request

# -- load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request of a plan and the statuses it may get."""

    kind: str
    method: str
    path: str
    expected: frozenset[int] = frozenset({200})
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    required: tuple[str, ...] = ()  # response headers an expected answer carries


@dataclass(slots=True)
class Outcome:
    kind: str
    started: float  # monotonic
    seconds: float
    status: int  # 0: the client saw an exception
    expected: bool  # the status is one the call expects, with the headers it requires
    target: str | None  # the upstream that answered (X-Upstream), if any
    version: str | None  # X-Blueprint-Version, if any
    detail: str  # the error, or the body's start for unexpected statuses


class PacedLoad:
    """`workers` threads send `plan(i)` for i = 0, 1, ... at `rate` requests per second in all.

    Each request has its slot in time (start + i / rate); a worker that is late sends at once,
    but never more than `workers` requests are in flight. Bounded by `max_requests` and
    `max_seconds` (no request starts after it, so a slow gateway gets fewer requests, not a
    longer run); `stop()` ends it early.
    """

    def __init__(
        self,
        port: int,
        plan: Callable[[int], Call],
        rate: float,
        workers: int = 8,
        max_requests: int = 100_000,
        max_seconds: float = 120.0,
        timeout: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.port = port
        self.plan = plan
        self.rate = rate
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.timeout = timeout
        self.clock = clock
        self.outcomes: list[Outcome] = []
        self.started_at = 0.0
        self._tickets = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"load-{i}", daemon=True) for i in range(workers)]

    # one keep-alive connection per worker, replaced after any failure
    def _run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        deadline = self.started_at + self.max_seconds
        while not self._stop.is_set():
            with self._lock:
                index = next(self._tickets)
            if index >= self.max_requests:
                break
            slot = self.started_at + index / self.rate
            if slot >= deadline or self.clock() >= deadline:  # a late client does not run over
                break
            wait = slot - self.clock()
            if wait > 0 and self._stop.wait(wait):
                break
            call = self.plan(index)
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            began = self.clock()
            try:
                connection.request(call.method, call.path, body=call.body, headers=dict(call.headers))
                response = connection.getresponse()
                body = response.read()
                status = response.status
                target, version = response.getheader("X-Upstream"), response.getheader("X-Blueprint-Version")
                missing = [name for name in call.required if response.getheader(name) is None]
                ok = status in call.expected and not missing
                detail = "" if ok else f"missing {missing}: " * bool(missing) + body[:300].decode("utf-8", "replace")
                if response.will_close:
                    connection.close()
                    connection = None
            except Exception as exc:  # every client-side failure is an outcome
                status, ok, target, version, detail = 0, False, None, None, f"{type(exc).__name__}: {exc}"
                connection.close()
                connection = None
            outcome = Outcome(call.kind, began, self.clock() - began, status, ok, target, version, detail)
            with self._lock:
                self.outcomes.append(outcome)
        if connection is not None:
            connection.close()

    def start(self) -> PacedLoad:
        self.started_at = self.clock()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def join(self) -> None:
        """Wait for the plan to run out (bounded by max_seconds and the request timeout)."""
        for thread in self._threads:
            thread.join(self.max_seconds + self.timeout + 5)

    def __enter__(self) -> PacedLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def total(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty collection."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(step)
    raise AssertionError(f"{what}: not after {timeout}s")


# -- targets ---------------------------------------------------------------------------------

HEALTH_PATH = "/health"
KEEP_RECORDED = 200  # requests an upstream remembers (the harness records all; a soak would grow)


@dataclass
class Behaviour:
    """What a target does now; shared by the instances that serve one address in turn."""

    mode: str = "ok"  # ok | error500 | slow | reset | cut
    slow_seconds: float = 3.0
    answered: int = 0  # API requests answered 2xx, over every instance


@dataclass
class ChaosTarget(Upstream):
    behaviour: Behaviour = field(default_factory=Behaviour)

    async def _default(self, req: web.Request) -> web.StreamResponse:
        mode = self.behaviour.mode
        if mode == "reset":
            await req.read()
            self._reset(req)
        if mode == "cut" and req.path != HEALTH_PATH:  # the head and a little of the body, then RST
            await req.read()
            if req.method == "HEAD":  # a HEAD answer has no body to cut (bytes after its head are garbage)
                self._reset(req)
            response = web.StreamResponse(headers={"Content-Length": "1000", "Content-Type": "application/json", "X-Upstream": self.name})
            await response.prepare(req)
            await response.write(b'{"upstream": "' + self.name.encode())
            await asyncio.sleep(0.01)
            self._reset(req)
        if mode == "slow":
            await asyncio.sleep(self.behaviour.slow_seconds)
        if req.path == HEALTH_PATH:
            await req.read()
            return web.Response(text="ok")
        if mode == "error500":
            await req.read()
            return web.json_response({"upstream": self.name, "error": "boom"}, status=500, headers={"X-Upstream": self.name})
        response = await super()._default(req)
        if len(self.received) > 2 * KEEP_RECORDED:
            del self.received[:-KEEP_RECORDED]
        self.behaviour.answered += 1
        return response


    @staticmethod
    def _reset(req: web.Request) -> None:
        transport = req.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:  # RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise asyncio.CancelledError  # nothing more to send on a connection that is gone


# -- the gateway process -----------------------------------------------------------------------


@dataclass
class Sample:
    elapsed: float
    requests: int
    rss_mb: float
    fds: int


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class ProcessSampler:
    """Samples a process' RSS and open descriptors every `interval` s in a thread (bounded by
    `max_samples`); `requests()` says how many requests were sent so far."""

    def __init__(self, pid: int, requests: Callable[[], int], interval: float = 10.0, max_samples: int = 1000) -> None:
        self.pid = pid
        self.requests = requests
        self.interval = interval
        self.max_samples = max_samples
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._started = 0.0

    def sample(self) -> Sample:
        sample = Sample(time.monotonic() - self._started, self.requests(), rss_mb(self.pid), open_fds(self.pid))
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while len(self.samples) < self.max_samples:
            self.sample()
            if self._stop.wait(self.interval):
                break

    def start(self) -> ProcessSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()  # the state at the end


# -- metrics ---------------------------------------------------------------------------------


def scrape(port: int, path: str = "/metrics") -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the gateway's Prometheus text, by name and labels."""
    reply = request("GET", path, port=port, timeout=10)
    if reply.status != 200:
        raise RuntimeError(f"{path}: {reply.status} {reply.body[:200]!r}")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def status_json(port: int, path: str = "/__backworks/api/status") -> dict[str, Any]:
    reply = request("GET", path, port=port, timeout=10)
    if reply.status != 200:
        raise RuntimeError(f"{path}: {reply.status} {reply.body[:200]!r}")
    return reply.json  # type: ignore[no-any-return]
