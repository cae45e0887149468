"""The status page: every pool and target, the endpoints and the recent errors, live.

A person reads it at a glance at `dashboard.path` on the admin listener (addons/admin.py);
the page redraws itself every second from the JSON API beside it (`<path>/api/status`), which
tools may read too. The numbers are those of the last minute (addons.stats), with answers by
status class since the start and a per-minute history of the last 15 minutes; Prometheus (the
metrics plugin) keeps the long history. A reload the core refused (addons.core.RefusedReload)
shows until the next good one: the file on disk is then not what is served.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any

from mitmproxy import command, http

from addons.stats import MinuteHistory, RollingWindow, StatusCounts, class_index
from backworks_core.gateway import Gateway
from backworks_core.loader import LoadedBlueprint
from backworks_core.flowstate import flow_state
from backworks_core.pages import InternalEndpoint, Page
from backworks_core.telemetry import PASSTHROUGH, UNMATCHED, RequestRecord, record_for
from backworks_core.upstream import FAILURE_PHRASES

if TYPE_CHECKING:
    from addons.core import Backworks

logger = logging.getLogger(__name__)

API_SUFFIX = "/api/status"
RECENT_ERRORS = 50
HISTORY_MINUTES = 15
REFUSED_ERRORS_SHOWN = 5  # the first errors of a refused reload; the log has them all
DOWN_AFTER_FAILURES = 3  # tries in a row that got no answer at all make a target read "down"
OBSERVED = "observed.dashboard"  # flowstate: counted once, whichever hook comes first
# What browsers ask of any site on their own: a 404 for them, unrouted, is counted but not listed.
BROWSER_OWN_PATHS = frozenset({"/favicon.ico", "/apple-touch-icon.png", "/apple-touch-icon-precomposed.png"})


def page_html(api_url: str) -> bytes:
    template = resources.files("addons").joinpath("dashboard_page.html").read_text(encoding="utf-8")
    # As a JavaScript string inside <script>: quoted, and no "</" that could end the element.
    return template.replace("{{API_URL}}", json.dumps(api_url)[1:-1].replace("</", "<\\/")).encode()


def judge_target(
    row: Mapping[str, Any],
    error_rate: float | None,
    window_requests: int,
    *,
    failures_in_a_row: int = 0,
    failure_kind: str | None = None,
    check_result: str | None = None,
) -> tuple[str, str]:
    """The target's state and why, in words.

    down: no traffic goes there (health check unhealthy, ejected, breaker open), or its last
    `DOWN_AFTER_FAILURES` tries got no answer at all (connect failed, timeout, reset: a target
    refusing connections is down whether or not anything checks it); degraded: breaker on
    trial, its last health check failed (not yet enough in a row to count as unhealthy), or more
    than one try in ten failed this minute (with at least 5 tries); else up.
    """
    if row["health"] == "unhealthy":
        return "down", f"health check failing ({check_result})" if check_result and check_result != "passed" else "health check failing"
    if row["ejected"]:
        return "down", "ejected by outlier detection"
    if row["breaker"] == "open":
        return "down", "circuit breaker open"
    if failures_in_a_row >= DOWN_AFTER_FAILURES:
        phrase = FAILURE_PHRASES.get(failure_kind or "", failure_kind or "no answer")
        return "down", f"no answer to the last {failures_in_a_row} tries ({phrase})"
    if row["breaker"] == "half_open":
        return "degraded", "circuit breaker half open (on trial)"
    if row["health"] == "healthy" and check_result is not None and check_result != "passed":
        return "degraded", f"last health check failed ({check_result})"
    if error_rate is not None and window_requests >= 5 and error_rate > 0.1:
        return "degraded", f"{round(error_rate * 100)}% of the last minute's tries failed"
    return "up", ""


def target_state(row: Mapping[str, Any], error_rate: float | None, window_requests: int, **evidence: Any) -> str:
    """up, degraded or down (see judge_target)."""
    return judge_target(row, error_rate, window_requests, **evidence)[0]


def is_browser_own(path: str, status: int | None, endpoint: str) -> bool:
    """A browser's own request for an icon that nothing serves: not worth a line in the errors."""
    return status == 404 and endpoint == UNMATCHED and path.split("?", 1)[0] in BROWSER_OWN_PATHS


def refused_json(refused: Any, iso: Callable[[float], str]) -> dict[str, Any]:
    """A RefusedReload as the API shows it: when, which file, how many errors, the first ones."""
    errors = [
        {
            "file": d.file,
            "line": d.line or None,
            "col": d.col or None,
            "key_path": d.key_path,
            "message": d.message,
            "text": str(d),
        }
        for d in refused.errors[:REFUSED_ERRORS_SHOWN]
    ]
    return {"state": "refused", "at": iso(refused.at), "file": refused.file, "error_count": len(refused.errors), "errors": errors}


class _TargetNotes:
    """What the windows do not keep of a target: its last failed try, and failures in a row."""

    __slots__ = ("last_error_at", "last_error_kind", "last_error_status", "failures_in_a_row", "failure_kind")

    def __init__(self) -> None:
        self.last_error_at: float | None = None
        self.last_error_kind: str | None = None
        self.last_error_status: int | None = None
        self.failures_in_a_row = 0  # tries with no answer at all, since the last answer
        self.failure_kind: str | None = None

    def failed(self, at: float, outcome: str, status: int | None) -> None:
        self.last_error_at, self.last_error_kind, self.last_error_status = at, outcome, status
        if status is None:
            self.failures_in_a_row += 1
            self.failure_kind = outcome
        else:
            self.failures_in_a_row = 0

    def answered(self) -> None:
        self.failures_in_a_row = 0


def status_page_endpoints(
    blueprint: LoadedBlueprint,
    page: Callable[[str], Page] = lambda api: Page(200, "text/html", b""),
    api: Callable[[], Page] = lambda: Page(200, "application/json", b"{}"),
) -> list[InternalEndpoint]:
    """The page at `dashboard.path` and its JSON API beside it (on the admin listener); `backworks
    validate` calls it without the pages, to find clashes with endpoints."""
    settings = blueprint.settings.dashboard
    if not settings.enabled:
        return []
    path = settings.path.rstrip("/") or "/"
    api_path = (path if path != "/" else "") + API_SUFFIX
    return [
        InternalEndpoint(path, lambda _: page(api_path), "dashboard", ("dashboard", "path"), "the status page"),
        InternalEndpoint(api_path, lambda _: api(), "dashboard", ("dashboard", "path"), "the status page's JSON API"),
    ]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Dashboard:
    """mitmproxy addon beside the core: feeds the windows from finished flows, serves the page."""

    def __init__(self, core: Backworks, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.core = core
        self.clock = clock
        self.wall = wall
        self.started = clock()
        self.totals = RollingWindow(clock=clock)
        self.classes = StatusCounts()
        self.history = MinuteHistory(HISTORY_MINUTES, wall=wall)
        self.targets: dict[tuple[str, str], RollingWindow] = {}
        self.target_notes: dict[tuple[str, str], _TargetNotes] = {}
        self.target_urls: dict[tuple[str, str], str] = {}
        self.endpoints: dict[str, RollingWindow] = {}
        self.endpoint_classes: dict[str, StatusCounts] = {}
        self.recent_errors: deque[dict[str, Any]] = deque(maxlen=RECENT_ERRORS)
        self.loaded_at: float | None = None

    # -- the core's extension points ------------------------------------------------------

    def internal_endpoints(self, blueprint: LoadedBlueprint) -> list[InternalEndpoint]:
        return status_page_endpoints(blueprint, self.page, self.api)

    def apply_gateway(self, gateway: Gateway) -> None:
        """A blueprint went live: forget windows of targets and endpoints that are gone."""
        self.loaded_at = self.wall()
        labels = {e.label for e in gateway.endpoints}
        self.endpoints = {k: v for k, v in self.endpoints.items() if k in labels}
        self.endpoint_classes = {k: v for k, v in self.endpoint_classes.items() if k in labels}
        live = {(pool.name, row["name"]): row["url"] for pool in self._pools() for row in pool.describe()}
        # a target that keeps its name but moves to another URL is another server: start afresh
        kept = {k for k, url in live.items() if self.target_urls.get(k, url) == url}
        self.targets = {k: v for k, v in self.targets.items() if k in kept}
        self.target_notes = {k: v for k, v in self.target_notes.items() if k in kept}
        self.target_urls = live

    # -- observing ------------------------------------------------------------------------

    def observe(self, flow: http.HTTPFlow) -> None:
        record = record_for(flow)
        bystander = record is not None and record.endpoint == PASSTHROUGH and not record.request_id  # regular-mode traffic
        if record is None or record.internal or bystander:
            return
        state = flow_state(flow)
        if state.slot(OBSERVED):
            return
        state.set_slot(OBSERVED, True)
        status = flow.response.status_code if flow.response is not None else None
        now = self.wall()
        ticks = self.clock()  # the windows' clock, read once for the three of them
        seconds = max(0.0, now - flow.request.timestamp_start)
        failed = status is None or status >= 500
        self.totals.record(seconds, failed, ticks)
        answer_class = class_index(status)
        self.classes.counts[answer_class] += 1
        self.history.record(seconds, status, failed, now)
        label = record.endpoint_label
        if label is not None:
            self._window(self.endpoints, label).record(seconds, failed, ticks)
            classes = self.endpoint_classes.get(label)
            if classes is None:
                classes = self.endpoint_classes[label] = StatusCounts()
            classes.counts[answer_class] += 1
        for attempt in record.attempts:
            failed_try = attempt.status is None or attempt.status >= 500
            key = (attempt.pool, attempt.target)
            self._window(self.targets, key).record(attempt.seconds, failed_try, ticks)
            notes = self.target_notes.get(key)
            if notes is None:
                notes = self.target_notes[key] = _TargetNotes()
            if failed_try:
                notes.failed(now, attempt.outcome, attempt.status)
            else:
                notes.answered()
        if (failed or record.error is not None) and not is_browser_own(flow.request.path, status, record.endpoint):
            self.recent_errors.appendleft(self._error_row(flow, record, status, now))

    def _window(self, windows: dict[Any, RollingWindow], key: Any) -> RollingWindow:
        window = windows.get(key)
        if window is None:
            window = windows[key] = RollingWindow(clock=self.clock)
        return window

    def _error_row(self, flow: http.HTTPFlow, record: RequestRecord, status: int | None, now: float) -> dict[str, Any]:
        if record.error is not None:
            message = record.error
        elif flow.error is not None:
            message = flow.error.msg
        else:
            message = f"the upstream answered {status}"
        return {
            "time": _iso(now),
            "request_id": record.request_id,
            "method": flow.request.method,
            "path": flow.request.path.split("?", 1)[0][:300],
            "endpoint": record.endpoint_label or record.endpoint,
            "status": status,
            "message": message[:500],
            "target": record.attempts[-1].target if record.attempts else None,
        }

    # -- what it shows --------------------------------------------------------------------

    def _pools(self) -> Sequence[Any]:
        return self.core.live_pools() if self.core is not None else []

    def status(self) -> dict[str, Any]:
        """The status document (`<dashboard.path>/api/status`): what the page and `backworks.status` show."""
        gateway = self.core.gateway
        pools = [
            {"name": pool.name, "policy": pool.config.load_balancing, "targets": self._target_rows(pool)} for pool in self._pools()
        ]
        endpoints = self._endpoint_rows(gateway)
        return {
            "blueprint": self._blueprint_json(gateway),
            "uptime_seconds": round(self.clock() - self.started, 1),
            "totals": {**self.totals.snapshot().as_json(), "in_flight": self.core.in_flight, "classes": self.classes.as_json()},
            "history": {"minutes": HISTORY_MINUTES, "buckets": self.history.snapshot()},
            "pools": pools,
            "endpoints": endpoints,
            "recent_errors": list(self.recent_errors),
        }

    def _target_rows(self, pool: Any) -> list[dict[str, Any]]:
        """Each target of a pool: its state judged from the window, the notes and the health check."""
        rows = []
        checker = getattr(pool, "health", None)
        checks = checker.status() if checker is not None else {}
        for row in pool.describe():
            key = (pool.name, row["name"])
            window = self.targets.get(key)
            snapshot = window.snapshot() if window is not None else RollingWindow(clock=self.clock).snapshot()
            notes = self.target_notes.get(key) or _TargetNotes()
            check = checks.get(row["name"], {})
            check_result = check.get("last_result") if check.get("checked") else None
            state, reason = judge_target(
                row,
                snapshot.error_rate,
                snapshot.window_requests,
                failures_in_a_row=notes.failures_in_a_row,
                failure_kind=notes.failure_kind,
                check_result=check_result,
            )
            rows.append(
                {
                    "label": row["target"],
                    "name": row["name"],
                    "url": row["url"],
                    "state": state,
                    "state_reason": reason,
                    "health": row["health"],
                    "last_check": (
                        {"at": _iso(check["last_check"]), "result": check_result}
                        if check.get("checked") and check.get("last_check") is not None
                        else None
                    ),
                    "ejected": row["ejected"],
                    "breaker": row["breaker"],
                    "in_flight": row["in_flight"],
                    **snapshot.as_json(),
                    "last_error": (
                        {"at": _iso(notes.last_error_at), "kind": notes.last_error_kind, "status": notes.last_error_status}
                        if notes.last_error_at is not None
                        else None
                    ),
                    "failures_in_a_row": notes.failures_in_a_row,
                }
            )
        return rows

    def _endpoint_rows(self, gateway: Gateway | None) -> list[dict[str, Any]]:
        """Each endpoint the blueprint declares (not the internal ones): its window and answer classes."""
        endpoints: list[dict[str, Any]] = []
        if gateway is None:
            return endpoints
        for plan in gateway.endpoints:
            if plan.internal:
                continue
            window = self.endpoints.get(plan.label)
            snapshot = (window or RollingWindow(clock=self.clock)).snapshot()
            endpoints.append(
                {
                    "label": plan.label,
                    "path": plan.template,
                    "methods": sorted(plan.spec.methods),
                    "handler": plan.spec.handler,
                    **snapshot.as_json(),
                    "classes": (self.endpoint_classes.get(plan.label) or StatusCounts()).as_json(),
                }
            )
        return endpoints

    def _blueprint_json(self, gateway: Gateway | None) -> dict[str, Any]:
        """The blueprint being served, and the last reload: ok, or refused with its errors."""
        settings = gateway.blueprint.settings if gateway is not None else None
        loaded_at = _iso(self.loaded_at) if self.loaded_at is not None else None
        refused = getattr(self.core, "refused", None)
        return {
            "name": settings.name if settings else None,
            "version": settings.version if settings else None,
            "path": str(gateway.blueprint.path) if gateway is not None else None,
            "loaded_at": loaded_at,
            "reload": refused_json(refused, _iso) if refused is not None else {"state": "ok", "at": loaded_at, "file": None, "error_count": 0, "errors": []},
        }

    def api(self) -> Page:
        return Page(200, "application/json", json.dumps(self.status(), ensure_ascii=False).encode())

    def page(self, api_url: str) -> Page:
        return Page(200, "text/html; charset=utf-8", page_html(api_url), {"Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    @command.command("backworks.status")
    def status_command(self) -> Sequence[str]:
        """Each target's state with its last minute (req/s, errors, p99), and the totals."""
        status = self.status()
        lines = []
        reload = status["blueprint"]["reload"]
        if reload["state"] == "refused":
            count = reload["error_count"]
            lines.append(f"reload refused at {reload['at']}: {reload['file']} has {count} error{'s' if count != 1 else ''}; the previous version keeps serving")
            lines.extend(f"  {error['text']}" for error in reload["errors"])
        for pool in status["pools"]:
            for row in pool["targets"]:
                lines.append(
                    f"{row['label']}: {row['state']}{' (' + row['state_reason'] + ')' if row['state_reason'] else ''} health={row['health']} breaker={row['breaker']} "
                    f"in_flight={row['in_flight']} rate={row['rate_per_s']}/s errors={_percent(row['error_rate'])} p99={_ms_text(row['latency_ms']['p99'])}"
                )
        totals = status["totals"]
        lines.append(
            f"all: {totals['requests']} requests, in_flight={totals['in_flight']} rate={totals['rate_per_s']}/s "
            f"errors={_percent(totals['error_rate'])} p99={_ms_text(totals['latency_ms']['p99'])}"
        )
        return lines


def _ms_text(value: float | None) -> str:
    return f"{value}ms" if value is not None else "-"


def _percent(rate: float | None) -> str:
    return f"{rate * 100:.1f}%" if rate is not None else "-"
