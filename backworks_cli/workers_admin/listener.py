"""The supervisor's admin listener: asks every live worker, merges what comes back, answers."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from backworks_cli.workers_admin.carry import MetricsCarry, StatusCarry
from backworks_cli.workers_admin.metrics_merge import Families, exposition, merge_metrics, parse_metrics, worker_families
from backworks_cli.workers_admin.status_merge import WorkerView, is_status_document, merge_status

if TYPE_CHECKING:  # the supervisor (backworks_cli.supervisor) imports this package: no cycle
    from backworks_cli.supervisor import WorkerInfo

logger = logging.getLogger(__name__)

FETCH_TIMEOUT = 2.0  # seconds for one worker's answer; a slower worker counts as not answering

FAVICON = "/favicon.ico"


@dataclass(frozen=True)
class Fetched:
    status: int
    content_type: str
    headers: Mapping[str, str]
    body: bytes


# Headers of a worker's answer that describe the body and stay with it when it is passed on.
PASSED_HEADERS = ("Content-Type", "Content-Security-Policy", "Cache-Control", "Allow", "X-Content-Type-Options")


class AdminAggregator:
    """The supervisor's admin listener: asks the workers, merges, answers."""

    def __init__(
        self,
        workers: Callable[[], list[WorkerInfo]],
        *,
        timeout: float = FETCH_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers = workers
        self.timeout = timeout
        self.clock = clock
        self.started = clock()
        self.kinds: dict[str, str] = {}  # path -> "status" | "metrics" | "page"
        self.pages: dict[str, Fetched] = {}  # the last HTML seen at each path
        self.status_carry: dict[str, StatusCarry] = {}
        self.metrics_carry: dict[str, MetricsCarry] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self, info: WorkerInfo, path_qs: str) -> tuple[Fetched | None, str | None]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=False)
        try:
            async with self._session.get(info.admin_url.rstrip("/") + path_qs, headers={"Accept": "*/*"}, allow_redirects=False) as reply:
                body = await reply.read()
                return Fetched(reply.status, reply.headers.get("Content-Type", ""), dict(reply.headers), body), None
        except asyncio.TimeoutError:
            return None, f"no answer in {self.timeout:g}s"
        except aiohttp.ClientError as exc:
            return None, str(exc) or type(exc).__name__

    async def ask_all(self, path_qs: str) -> list[tuple[WorkerInfo, Fetched | None, str | None]]:
        infos = sorted(self.workers(), key=lambda w: w.index)
        live = [w for w in infos if w.alive]
        answers = await asyncio.gather(*(self._fetch(w, path_qs) for w in live))
        by_index = {w.index: answer for w, answer in zip(live, answers)}
        return [(w, *by_index.get(w.index, (None, "not running"))) for w in infos]

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.json_response({"error": f"method {request.method} is not allowed here (allowed: GET, HEAD)", "status": 405}, status=405, headers={"Allow": "GET, HEAD"})
        path = request.path.rstrip("/") or "/"
        if path == FAVICON:
            return web.Response(status=204, headers={"Content-Type": "image/x-icon", "Cache-Control": "max-age=86400"})
        path_qs = request.rel_url.raw_path_qs
        if not path_qs.startswith("/") or path_qs.startswith("//"):
            return web.json_response({"error": "expected a path", "status": 400}, status=400)
        answers = await self.ask_all(path_qs)
        ok = [(info, fetched) for info, fetched, _ in answers if fetched is not None and fetched.status == 200]
        kind = self._kind(ok) or self.kinds.get(path)
        if kind == "status":
            self.kinds[path] = kind
            return self._status(path, answers)
        if kind == "metrics":
            self.kinds[path] = kind
            return self._metrics(path, answers, request.headers.get("Accept", ""))
        if ok:
            first = ok[0][1]
            if first.content_type.startswith("text/html"):
                self.kinds[path], self.pages[path] = "page", first
            return self._passed(first)
        other = next((fetched for _, fetched, _ in answers if fetched is not None), None)
        if other is not None:
            return self._passed(other)  # the workers' own 404 (or error) for this path
        if path in self.pages:
            return self._passed(self.pages[path])
        why = "; ".join(f"worker {info.index}: {error}" for info, _, error in answers) or "no workers"
        return web.json_response({"error": f"no worker answered ({why})", "status": 503}, status=503, headers={"Retry-After": "1", "Cache-Control": "no-store"})

    @staticmethod
    def _kind(ok: Sequence[tuple[WorkerInfo, Fetched]]) -> str | None:
        for _, fetched in ok:
            content_type = fetched.content_type.split(";", 1)[0].strip().lower()
            if content_type == "application/json":
                try:
                    if is_status_document(json.loads(fetched.body)):
                        return "status"
                except ValueError:
                    continue
            elif content_type == "text/plain" and "version=0.0.4" in fetched.content_type:
                return "metrics"
        return None

    @staticmethod
    def _passed(fetched: Fetched) -> web.Response:
        headers = {name: fetched.headers[name] for name in PASSED_HEADERS if name in fetched.headers}
        return web.Response(status=fetched.status, body=fetched.body, headers=headers)

    def _status(self, path: str, answers: Sequence[tuple[WorkerInfo, Fetched | None, str | None]]) -> web.Response:
        views = []
        for info, fetched, error in answers:
            doc = None
            if fetched is not None and fetched.status == 200:
                try:
                    doc = json.loads(fetched.body)
                except ValueError:
                    doc = None
                if not is_status_document(doc):
                    doc, error = None, "not a status document"
            elif fetched is not None:
                error = f"HTTP {fetched.status}"
            views.append(WorkerView(info, doc, error))
        retired = self.status_carry.setdefault(path, StatusCarry()).update(views)
        merged = merge_status(views, uptime_seconds=self.clock() - self.started, retired=retired)
        return web.Response(status=200, body=json.dumps(merged, ensure_ascii=False).encode(), headers={"Content-Type": "application/json", "Cache-Control": "no-store"})

    def _metrics(self, path: str, answers: Sequence[tuple[WorkerInfo, Fetched | None, str | None]], accept: str) -> web.Response:
        views: list[tuple[WorkerInfo, Families | None]] = []
        answered = []
        for info, fetched, error in answers:
            families = None
            if fetched is not None and fetched.status == 200:
                try:
                    families = parse_metrics(fetched.body.decode("utf-8"))
                    answered.append(info.index)
                except (ValueError, UnicodeDecodeError) as exc:
                    logger.warning("worker %d's metrics at %s do not parse (%s); its last counts are used", info.index, path, exc)
            views.append((info, families))
        chosen = self.metrics_carry.setdefault(path, MetricsCarry()).update(views)
        merged = merge_metrics(chosen, self.metrics_carry[path].retired)
        merged.update(worker_families([info for info, _ in views], answered))
        body, content_type = exposition(merged.values(), accept)
        return web.Response(status=200, body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})


async def serve_admin(host: str, port: int, workers: Callable[[], list[WorkerInfo]], stop: asyncio.Event) -> None:
    """The admin listener for all workers on HOST:PORT, until `stop` is set.

    When the address cannot be bound it logs a warning and returns at once: the API is served
    all the same (as with one process), and each worker's own listener still answers.
    """
    aggregator = AdminAggregator(workers)
    runner = web.ServerRunner(web.Server(aggregator.handle, access_log=None))
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            logger.warning(
                "the admin listener is not listening: cannot listen on %s:%d: %s; choose another port with "
                "server.admin.port in the blueprint; the API is served all the same",
                host, port, exc.strerror or exc,
            )
            return
        bound = runner.addresses[0][1] if runner.addresses else port  # port 0: the one the system chose
        logger.info("admin listener on http://%s:%d for %d workers", host if ":" not in host else f"[{host}]", bound, len(workers()))
        await stop.wait()
    finally:
        await runner.cleanup()
        await aggregator.close()
