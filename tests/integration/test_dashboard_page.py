"""The dashboard page (addons/dashboard_page.html) in a real headless Chromium, against a fake backend.

The fake is an aiohttp server in this file: it serves the page with {{API_URL}} replaced and a JSON
status the tests change between polls. The real backend has its own tests; these pin the page:
live updates without a reload, escaping, the connection-lost state, one request at a time.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.browser import Browser, Page, chromium_path
from tests.integration.harness import ROOT, free_port

PAGE = ROOT / "addons" / "dashboard_page.html"
ARTIFACTS = ROOT / "test-artifacts"
DASHBOARD_PATH = "/__backworks"
API_PATH = "/__backworks/api/status"
XSS = "<img src=x onerror=alert(1)>"

LOADED = "document.documentElement.dataset.loaded === 'true'"


def updates(page: Page) -> int:
    return int(page.evaluate("document.documentElement.dataset.updates"))


def wait_updates_after(page: Page, count: int, timeout: float = 5.0) -> None:
    page.wait_for(f"Number(document.documentElement.dataset.updates) > {count}", timeout=timeout)


def target(label: str, state: str = "up", **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "label": label,
        "name": label,
        "url": "http://127.0.0.1:3001",
        "state": state,
        "health": "healthy",
        "ejected": False,
        "breaker": "closed",
        "in_flight": 0,
        "requests": 60,
        "rate_per_s": 1.6,
        "error_rate": 0.0,
        "latency_ms": {"p50": 2.0, "p90": 4.0, "p99": 9.0},
    }
    entry.update(overrides)
    return entry


def history_buckets() -> list[dict[str, Any]]:
    """15 minutes, oldest first: idle at first, then traffic with a burst of 5xx at 16:09."""
    buckets = []
    for minute in range(15):
        requests = 0 if minute < 4 else 600 + 40 * minute
        bad = 120 if minute == 9 else 2
        classes = {"1xx": 0, "2xx": max(0, requests - 30 - bad), "3xx": 0, "4xx": 30 if requests else 0, "5xx": bad if requests else 0, "none": 0}
        buckets.append(
            {
                "start": f"2026-11-26T15:{46 + minute:02d}:00Z" if minute < 14 else "2026-11-26T16:00:00Z",
                "current": minute == 14,
                "requests": requests,
                "errors": classes["5xx"],
                "error_rate": round(classes["5xx"] / requests, 4) if requests else None,
                "classes": classes,
                "latency_ms": {"avg": 3.0, "p50": 2.2, "p90": 5.3, "p99": 48.5, "max": 120.0} if requests else {"avg": None, "p50": None, "p90": None, "p99": None, "max": None},
            }
        )
    return buckets


REFUSED = {
    "state": "refused",
    "at": "2026-11-26T16:05:00Z",
    "file": "/srv/blueprints/shop.yaml",
    "error_count": 7,
    "errors": [
        {"file": "/srv/blueprints/shop.yaml", "line": 12, "col": 14, "key_path": "endpoints[1].handler", "message": "unknown handler 'proxi'", "text": "/srv/blueprints/shop.yaml:12:14: endpoints[1].handler: unknown handler 'proxi'"},
        {"file": "/srv/blueprints/shop.yaml", "line": 20, "col": 5, "key_path": "endpoints[3].method", "message": "unknown method 'FETCH'", "text": "/srv/blueprints/shop.yaml:20:5: endpoints[3].method: unknown method 'FETCH'"},
    ],
}


def sample_status() -> dict[str, Any]:
    """A realistic status: two pools, every state, some nulls, a few errors."""
    return {
        "blueprint": {
            "name": "shop",
            "version": "1.0.0",
            "path": "/srv/blueprints/shop.yaml",
            "loaded_at": "2026-11-26T16:00:00Z",
            "reload": {"state": "ok", "at": "2026-11-26T16:00:00Z", "file": None, "error_count": 0, "errors": []},
        },
        "uptime_seconds": 3725.4,
        "totals": {
            "requests": 12840,
            "in_flight": 3,
            "rate_per_s": 21.37,
            "error_rate": 0.0123,
            "latency_ms": {"p50": 2.1, "p90": 5.0, "p99": 48.6},
            "classes": {"1xx": 0, "2xx": 12100, "3xx": 40, "4xx": 542, "5xx": 150, "none": 8},
        },
        "history": {"minutes": 15, "buckets": history_buckets()},
        "pools": [
            {
                "name": "users",
                "policy": "round_robin",
                "targets": [
                    target("backend-1", url="http://127.0.0.1:3001", requests=6120, rate_per_s=10.2, in_flight=1, last_check={"at": "2026-11-26T16:00:02Z", "result": "passed"}),
                    target(
                        "backend-2",
                        "degraded",
                        url="http://127.0.0.1:3002",
                        health="healthy",
                        breaker="half_open",
                        requests=5901,
                        rate_per_s=9.8,
                        in_flight=2,
                        error_rate=0.031,
                        latency_ms={"p50": 3.4, "p90": 11.2, "p99": 120.5},
                        state_reason="circuit breaker half open (on trial)",
                        last_error={"at": "2026-11-26T16:00:02Z", "kind": "5xx", "status": 503},
                    ),
                    target(
                        "backend-3",
                        "down",
                        url="http://127.0.0.1:3003",
                        health="unhealthy",
                        breaker="open",
                        ejected=True,
                        requests=819,
                        rate_per_s=0.0,
                        error_rate=0.62,
                        latency_ms={"p50": None, "p90": None, "p99": None},
                        state_reason="health check failing (connection refused)",
                        last_check={"at": "2026-11-26T16:00:03Z", "result": "connection refused"},
                        last_error={"at": "2026-11-26T16:00:01Z", "kind": "connect_failure", "status": None},
                        failures_in_a_row=4,
                    ),
                ],
            },
            {
                "name": "payments",
                "policy": "least_in_flight",
                "targets": [target("payments-eu", url="https://payments.internal.example:8443", health="unchecked", breaker="none", requests=0, rate_per_s=0.0, error_rate=None, latency_ms={"p50": None, "p90": None, "p99": None})],
            },
        ],
        "endpoints": [
            {"label": "GET /users/{id}", "path": "/users/{id}", "methods": ["GET"], "handler": "proxy", "requests": 9400, "rate_per_s": 15.1, "error_rate": 0.012, "latency_ms": {"p50": 2.0, "p90": 4.0, "p99": 9.0}, "classes": {"1xx": 0, "2xx": 9100, "3xx": 0, "4xx": 187, "5xx": 105, "none": 8}},
            {"label": "POST /users", "path": "/users", "methods": ["POST"], "handler": "proxy", "requests": 2440, "rate_per_s": 4.2, "error_rate": 0.0, "latency_ms": {"p50": 3.1, "p90": 6.0, "p99": 14.2}},
            {"label": "GET /hello", "path": "/hello", "methods": ["GET"], "handler": "static", "requests": 1000, "rate_per_s": 2.07, "error_rate": 0.0, "latency_ms": {"p50": 0.31, "p90": 0.52, "p99": 1.1}},
            {"label": "POST /pay", "path": "/pay", "methods": ["POST"], "handler": "python", "requests": 0, "rate_per_s": 0.0, "error_rate": None, "latency_ms": {"p50": None, "p90": None, "p99": None}},
        ],
        "recent_errors": [
            {"time": "2026-11-26T16:00:03Z", "request_id": "c93f", "method": "GET", "path": "/users/9", "endpoint": "GET /users/{id}", "status": 503, "message": "no healthy target in pool users", "target": None},
            {"time": "2026-11-26T16:00:02Z", "request_id": "b7e1", "method": "POST", "path": "/users", "endpoint": "POST /users", "status": 504, "message": "upstream backend-2 timed out after 5.0s", "target": "backend-2"},
            {"time": "2026-11-26T16:00:01Z", "request_id": "ab12", "method": "GET", "path": "/users/7", "endpoint": "GET /users/{id}", "status": 502, "message": "upstream backend-3 failed: connection refused (ECONNREFUSED 127.0.0.1:3003)", "target": "backend-3"},
        ],
    }


class FakeBackend:
    """An aiohttp server in its own thread: the page at DASHBOARD_PATH, `status` at API_PATH."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status: dict[str, Any] = sample_status()
        self.fail_with: int | None = None  # answer the API with this HTTP status instead
        self.delay = 0.0  # seconds before the API answers
        self.api_calls = 0
        self.other_paths: list[str] = []  # requests for anything but the page and the API
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{DASHBOARD_PATH}"

    def set_status(self, status: dict[str, Any]) -> None:
        with self._lock:
            self.status = copy.deepcopy(status)

    async def _page(self, request: web.Request) -> web.Response:
        html = PAGE.read_text(encoding="utf-8").replace("{{API_URL}}", API_PATH)
        # the same Content-Security-Policy the real backend (addons/dashboard.py) sends
        csp = "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store", "Content-Security-Policy": csp})

    async def _api(self, request: web.Request) -> web.Response:
        with self._lock:
            self.api_calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            delay, fail_with, body = self.delay, self.fail_with, json.dumps(self.status)
        try:
            if delay:
                await asyncio.sleep(delay)
            if fail_with is not None:
                return web.json_response({"error": "fake outage"}, status=fail_with)
            return web.Response(text=body, content_type="application/json", headers={"Cache-Control": "no-store"})
        finally:
            with self._lock:
                self.in_flight -= 1

    def start(self) -> FakeBackend:
        ready = threading.Event()
        runner_box: list[web.AppRunner] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            @web.middleware
            async def record_others(request: web.Request, handler: Any) -> web.StreamResponse:
                if request.path not in (DASHBOARD_PATH, API_PATH):
                    self.other_paths.append(request.path)
                return await handler(request)

            app = web.Application(middlewares=[record_others])
            app.router.add_get(DASHBOARD_PATH, self._page)
            app.router.add_get(API_PATH, self._api)
            runner = web.AppRunner(app, access_log=None)
            runner_box.append(runner)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-dashboard-backend", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise TimeoutError("the fake backend did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if chromium_path() is None:
        reason = "no Chromium binary (install the chromium package or set $CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with Browser() as running:
        yield running


@pytest.fixture
def backend() -> Iterator[FakeBackend]:
    fake = FakeBackend().start()
    yield fake
    fake.stop()


@pytest.fixture
def page(browser: Browser, backend: FakeBackend) -> Iterator[Page]:
    opened = browser.open(backend.url)
    yield opened
    opened.close()
    assert opened.errors == [], f"uncaught exceptions in the page: {opened.errors}"
    assert opened.dialogs == [], f"the page opened dialogs: {opened.dialogs}"


def state_of(page: Page, label: str) -> str | None:
    return page.evaluate(f"(document.querySelector('#pools tr[data-target=' + {json.dumps(json.dumps(label))} + ']') || {{}}).dataset?.state ?? null")


def test_renders_the_status_and_writes_a_screenshot(page: Page, backend: FakeBackend) -> None:
    page.wait_for(LOADED, timeout=10)
    assert page.evaluate("document.getElementById('bp-name').textContent") == "shop"
    assert page.evaluate("document.getElementById('bp-version').textContent") == "v1.0.0"
    assert page.evaluate("document.getElementById('t-requests').textContent") == "12,840"
    assert page.evaluate("document.getElementById('t-error').textContent") == "1.2%"
    assert page.evaluate("document.getElementById('t-uptime').textContent") == "1h 02m 05s"
    assert page.evaluate("document.documentElement.dataset.connection") == "ok"

    rows = page.evaluate("[...document.querySelectorAll('#pools tr[data-target]')].map(r => [r.dataset.target, r.dataset.state])")
    assert rows == [["backend-1", "up"], ["backend-2", "degraded"], ["backend-3", "down"], ["payments-eu", "up"]]
    assert page.evaluate("document.querySelectorAll('#pools .card.pool').length") == 2
    badge = page.evaluate(
        "(() => { const b = document.querySelector('#pools tr[data-target=\"backend-3\"] .badge');"
        " return [b.textContent, getComputedStyle(b).backgroundColor, getComputedStyle(b).color]; })()"
    )
    assert badge[0] == "down"
    assert badge[1] != badge[2]
    # null latencies and a null error rate show as a dash
    cells = page.evaluate("[...document.querySelectorAll('#pools tr[data-target=\"payments-eu\"] td')].map(c => c.textContent)")
    assert cells[-4:] == ["–", "–", "–", "–"]

    endpoints = page.evaluate("[...document.querySelectorAll('#endpoints tbody tr')].map(r => r.cells[0].textContent)")
    assert endpoints == ["GET /users/{id}", "POST /users", "GET /hello", "POST /pay"]
    errors = page.evaluate("[...document.querySelectorAll('#errors tbody tr')].map(r => r.cells[1].textContent)")
    assert errors == ["c93f", "b7e1", "ab12"]  # newest first

    # nothing in the page reaches beyond its own origin
    external = page.evaluate(
        "performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin))"
    )
    assert external == []

    ARTIFACTS.mkdir(exist_ok=True)
    shot = page.screenshot(ARTIFACTS / "dashboard-fake.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.screenshot(ARTIFACTS / "dashboard-fake-full.png", full_page=True)


def test_a_state_change_shows_without_a_reload(page: Page, backend: FakeBackend) -> None:
    page.wait_for(LOADED, timeout=10)
    assert state_of(page, "backend-1") == "up"
    page.evaluate("window.__sameDocument = 'yes'")  # gone if the page reloaded

    status = sample_status()
    status["pools"][0]["targets"][0].update(state="down", health="unhealthy", breaker="open", ejected=True)
    backend.set_status(status)

    page.wait_for("document.querySelector('#pools tr[data-target=\"backend-1\"]')?.dataset.state === 'down'", timeout=5)
    assert page.evaluate("window.__sameDocument") == "yes"
    assert page.evaluate("document.querySelector('#pools tr[data-target=\"backend-1\"] .badge').textContent") == "down"
    assert updates(page) >= 2

    status["pools"][0]["targets"][0].update(state="up", health="healthy", breaker="closed", ejected=False)
    backend.set_status(status)
    page.wait_for("document.querySelector('#pools tr[data-target=\"backend-1\"]')?.dataset.state === 'up'", timeout=5)


def test_data_is_text_never_markup(page: Page, backend: FakeBackend) -> None:
    status = sample_status()
    status["blueprint"]["name"] = XSS
    status["pools"][0]["name"] = XSS
    status["pools"][0]["targets"][0].update(label=XSS, name=XSS, url=XSS)
    status["endpoints"][0]["label"] = XSS
    status["recent_errors"][0].update(message=XSS, path=XSS, request_id=XSS)
    backend.set_status(status)

    page.wait_for(f"document.getElementById('bp-name').textContent === {json.dumps(XSS)}", timeout=10)
    row = page.evaluate(f"document.querySelector('#pools tr[data-target=' + {json.dumps(json.dumps(XSS))} + ']')?.cells[0].textContent")
    assert row == XSS
    assert page.evaluate("document.getElementById('bp-name').textContent") == XSS
    assert page.evaluate("document.querySelector('#endpoints tbody tr').cells[0].textContent") == XSS
    assert page.evaluate("document.querySelector('#errors tbody tr').cells[5].textContent") == XSS
    assert page.evaluate("[document.querySelectorAll('img').length, document.scripts.length]") == [0, 1]
    wait_updates_after(page, updates(page))  # one more render: still no markup, no alert
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert page.dialogs == []


def test_connection_lost_then_recovered(page: Page, backend: FakeBackend) -> None:
    page.wait_for(LOADED, timeout=10)
    backend.fail_with = 503
    page.wait_for("document.documentElement.dataset.connection === 'lost'", timeout=5)
    assert "connection lost" in page.evaluate("document.getElementById('conn-label').textContent")
    assert "HTTP 503" in page.evaluate("document.getElementById('banner-lost').textContent")
    assert page.evaluate("getComputedStyle(document.getElementById('banner-lost')).display") != "none"
    # the last good data stays on screen
    assert state_of(page, "backend-1") == "up"
    calls = backend.api_calls
    time.sleep(1.5)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(ARTIFACTS / "dashboard-fake-lost.png")

    backend.fail_with = None
    page.wait_for("document.documentElement.dataset.connection === 'ok'", timeout=5)
    assert backend.api_calls > calls  # it kept polling through the outage
    assert page.evaluate("getComputedStyle(document.getElementById('banner-lost')).display") == "none"


def test_one_request_at_a_time(page: Page, backend: FakeBackend) -> None:
    page.wait_for(LOADED, timeout=10)
    backend.delay = 1.5  # slower than the poll interval: a timer-driven poller would overlap
    before = updates(page)
    wait_updates_after(page, before + 1, timeout=10)  # two slow rounds
    backend.delay = 0.0
    assert backend.max_in_flight == 1


def test_garbage_json_does_not_stop_the_loop(page: Page, backend: FakeBackend) -> None:
    page.wait_for(LOADED, timeout=10)
    before = updates(page)
    backend.set_status({"pools": "not a list", "totals": None, "endpoints": [None, 7], "recent_errors": [None, {"time": "yesterday"}]})
    wait_updates_after(page, before)
    assert page.evaluate("document.querySelectorAll('#pools tr[data-target]').length") == 0
    assert page.evaluate("document.getElementById('t-requests').textContent") == "–"
    assert page.evaluate("document.querySelectorAll('#errors tbody tr').length") == 2
    assert page.evaluate("document.getElementById('banner-render').textContent") == ""
    backend.set_status("not an object")  # type: ignore[arg-type]
    page.wait_for("document.getElementById('banner-render').textContent.includes('not a JSON object')", timeout=5)
    calls = backend.api_calls
    backend.set_status(sample_status())
    page.wait_for("document.querySelectorAll('#pools tr[data-target]').length === 4", timeout=5)
    assert backend.api_calls > calls
    assert page.evaluate("document.getElementById('banner-render').textContent") == ""


# -- issue 21: refused reloads, answers by class, the last 15 minutes, why a target is down -------


def test_a_refused_reload_shows_a_banner_until_the_next_good_load(page: Page, backend: FakeBackend) -> None:
    page.wait_for(LOADED, timeout=10)
    assert page.evaluate("getComputedStyle(document.getElementById('banner-reload')).display") == "none"
    status = sample_status()
    status["blueprint"]["reload"] = REFUSED
    backend.set_status(status)
    page.wait_for("document.getElementById('banner-reload').dataset.state === 'refused'", timeout=5)
    head = page.evaluate("document.querySelector('#banner-reload .head').textContent")
    assert re.fullmatch(r"Reload refused at \d\d:\d\d:\d\d: /srv/blueprints/shop\.yaml has 7 errors; the previous version keeps serving \(loaded at \d\d:\d\d:\d\d\)\.", head), head
    items = page.evaluate("[...document.querySelectorAll('#banner-reload li')].map(li => li.textContent)")
    assert items == [e["text"] for e in REFUSED["errors"]]
    assert page.evaluate("document.querySelector('#banner-reload .more').textContent") == "\u2026 and 5 more in the gateway's log."
    assert "null" not in page.evaluate("document.getElementById('banner-reload').textContent")
    assert page.evaluate("getComputedStyle(document.getElementById('banner-reload')).display") == "block"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(ARTIFACTS / "dashboard-fake-refused.png")

    backend.set_status(sample_status())
    page.wait_for("document.getElementById('banner-reload').dataset.state === 'ok'", timeout=5)
    assert page.evaluate("getComputedStyle(document.getElementById('banner-reload')).display") == "none"
    assert page.evaluate("document.getElementById('banner-reload').textContent") == ""


def test_answers_by_class_and_the_last_fifteen_minutes(page: Page, backend: FakeBackend) -> None:
    page.wait_for(LOADED, timeout=10)
    classes = page.evaluate("[...document.querySelectorAll('#classes [data-class]')].map(c => [c.dataset.class, c.querySelector('.v').textContent])")
    assert classes == [["2xx", "12,100"], ["3xx", "40"], ["4xx", "542"], ["5xx", "150"], ["none", "8"]]  # 1xx only when there are any
    cells = page.evaluate("[...document.querySelector('#endpoints tr[data-endpoint=\"GET /users/{id}\"]').cells].map(c => c.textContent)")
    assert cells[2:7] == ["9,400", "9,100", "0", "187", "113"]  # requests, 2xx, 3xx, 4xx, 5xx and no answer
    bars = page.evaluate("[...document.querySelectorAll('#chart .bar')].map(b => [b.dataset.requests, b.dataset.errors, b.classList.contains('current'), b.offsetHeight, [...b.children].map(s => s.offsetHeight)])")
    assert len(bars) == 15
    assert [b[0] for b in bars[:4]] == ["0"] * 4 and bars[4][0] == "760"
    assert bars[9][1] == "120" and [b[2] for b in bars] == [False] * 14 + [True]
    tallest = max(sum(b[4]) for b in bars)
    assert sum(bars[-1][4]) == tallest and sum(bars[4][4]) < tallest  # heights follow the counts
    assert page.evaluate("document.querySelectorAll('#history details tbody tr').length") == 11  # minutes with requests
    assert "120 errors" in page.evaluate("document.querySelectorAll('#chart .bar')[9].title")


def test_why_a_target_is_in_its_state_its_last_check_and_its_last_error(page: Page, backend: FakeBackend) -> None:
    page.wait_for(LOADED, timeout=10)
    down = page.evaluate("(r => [r.querySelector('.reason').textContent, r.querySelector('.last-check').textContent, r.querySelector('.last-error').innerText])(document.querySelector('#pools tr[data-target=\"backend-3\"]'))")
    assert down[0] == "health check failing (connection refused)"
    assert re.fullmatch(r"checked \d\d:\d\d:\d\d: connection refused", down[1]), down[1]
    assert re.fullmatch(r"\d\d:\d\d:\d\d\nconnect failed", down[2]), down[2]
    assert page.evaluate("document.querySelector('#pools tr[data-target=\"backend-2\"] .last-error').innerText").endswith("status 503")
    assert page.evaluate("document.querySelector('#pools tr[data-target=\"payments-eu\"] .last-check').textContent") == "no health check"
    assert page.evaluate("document.getElementById('pools-count').textContent") == "2 pools · 2/4 targets up · 1 degraded · 1 down"


def test_the_page_asks_for_no_favicon(page: Page, backend: FakeBackend) -> None:
    page.wait_for(LOADED, timeout=10)
    wait_updates_after(page, updates(page))
    page.reload()
    page.wait_for(LOADED, timeout=10)
    assert backend.other_paths == []


def test_several_workers_show_a_workers_section_and_each_worker_s_view(page: Page, backend: FakeBackend) -> None:
    """The document the supervisor's admin listener merges (backworks_cli.workers_admin) from two workers."""
    from backworks_cli.supervisor import WorkerInfo
    from backworks_cli.workers_admin import WorkerView, merge_status

    page.wait_for(LOADED, timeout=10)
    assert page.evaluate("document.getElementById('workers').hidden") is True  # one process: no section
    assert page.evaluate("document.querySelectorAll('#errors th').length") == 7  # nor a worker column
    second = sample_status()
    second["pools"][0]["targets"][0].update(state="down", state_reason="no answer to the last 3 tries (connection refused)")
    second["recent_errors"] = [{"time": "2026-11-26T16:00:04Z", "request_id": "w1e", "method": "GET", "path": "/users/1", "status": 502, "message": "from worker 1", "target": "backend-1"}]
    workers = [
        WorkerInfo(0, 4100, "http://127.0.0.1:1", 1_795_000_000.0, 0, True),
        WorkerInfo(1, 4242, "http://127.0.0.1:2", 1_795_000_000.0, 2, True),
        WorkerInfo(2, 4300, "http://127.0.0.1:3", 1_795_000_000.0, 0, False),
    ]
    merged = merge_status([WorkerView(workers[0], sample_status()), WorkerView(workers[1], second), WorkerView(workers[2], None, "not running")], uptime_seconds=60)
    count = updates(page)
    backend.set_status(merged)
    wait_updates_after(page, count)
    assert page.evaluate("document.getElementById('t-requests').textContent") == "25,680"
    assert page.evaluate("document.getElementById('workers-count').textContent") == "2/3 running"
    rows = page.evaluate("[...document.querySelectorAll('#workers tr[data-worker]')].map(r => [r.dataset.worker, r.dataset.alive, r.cells[1].textContent, r.cells[3].textContent])")
    assert rows == [["0", "true", "4100", "0"], ["1", "true", "4242", "2"], ["2", "false", "4300", "0"]]
    assert page.evaluate("document.querySelector('#workers tr[data-worker=\"2\"]').cells[2].textContent") == "not running"
    merged_row = "document.querySelector('#pools tr[data-target=\"backend-1\"]:not(.worker-view)')"
    assert page.evaluate(merged_row + ".dataset.state") == "degraded"
    assert page.evaluate(merged_row + ".querySelector('.workers-summary').textContent") == "up on 1/2 workers, down on 1/2 workers"
    views = page.evaluate("[...document.querySelectorAll('#pools tr.worker-view[data-target=\"backend-1\"]')].map(r => [r.dataset.worker, r.dataset.state, r.cells[0].textContent])")
    assert views == [["0", "up", "worker 0"], ["1", "down", "worker 1"]]
    assert page.evaluate("document.getElementById('pools-count').textContent") == "2 pools · 1/4 targets up · 2 degraded · 1 down"
    first_error = page.evaluate("[...document.querySelector('#errors tbody tr').cells].map(c => c.textContent)")
    assert first_error[1] == "w1e" and first_error[-1] == "1"
    page.screenshot(str(ARTIFACTS / "dashboard-workers.png"))
