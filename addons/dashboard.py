"""The status page: every pool and target, the endpoints and the recent errors, live.

A person reads it at a glance at `dashboard.path` on the admin listener (addons/admin.py);
the page redraws itself every second from the JSON API beside it (`<path>/api/status`), which
tools may read too. The numbers are those of the last minute (addons.stats); Prometheus (the
metrics plugin) keeps the history.
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

from addons.stats import RollingWindow
from backworks_core.gateway import Gateway
from backworks_core.loader import LoadedBlueprint
from backworks_core.flowstate import flow_state, peek_state
from backworks_core.pages import InternalEndpoint, Page
from backworks_core.telemetry import PASSTHROUGH, RequestRecord, record_for

if TYPE_CHECKING:
    from addons.core import Backworks

logger = logging.getLogger(__name__)

API_SUFFIX = "/api/status"
RECENT_ERRORS = 50
OBSERVED = "observed.dashboard"  # flowstate: counted once, whichever hook comes first


def page_html(api_url: str) -> bytes:
    template = resources.files("addons").joinpath("dashboard_page.html").read_text(encoding="utf-8")
    # As a JavaScript string inside <script>: quoted, and no "</" that could end the element.
    return template.replace("{{API_URL}}", json.dumps(api_url)[1:-1].replace("</", "<\\/")).encode()


def target_state(row: Mapping[str, Any], error_rate: float | None, window_requests: int) -> str:
    """down: no traffic goes there (unhealthy, ejected, breaker open); degraded: on trial, or
    failing more than one request in ten this minute; else up."""
    if row["health"] == "unhealthy" or row["ejected"] or row["breaker"] == "open":
        return "down"
    if row["breaker"] == "half_open" or (error_rate is not None and window_requests >= 5 and error_rate > 0.1):
        return "degraded"
    return "up"


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
        self.targets: dict[tuple[str, str], RollingWindow] = {}
        self.endpoints: dict[str, RollingWindow] = {}
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
        live = {(pool.name, row["name"]) for pool in self._pools() for row in pool.describe()}
        self.targets = {k: v for k, v in self.targets.items() if k in live}

    # -- observing ------------------------------------------------------------------------

    def observe(self, flow: http.HTTPFlow) -> None:
        record = record_for(flow)
        bystander = record is not None and record.endpoint == PASSTHROUGH and not record.request_id  # regular-mode traffic
        if record is None or record.internal or bystander or peek_state(flow).get(OBSERVED):
            return
        flow_state(flow)[OBSERVED] = True
        status = flow.response.status_code if flow.response is not None else None
        seconds = max(0.0, self.wall() - flow.request.timestamp_start)
        failed = status is None or status >= 500
        self.totals.record(seconds, failed)
        if record.endpoint_label is not None:
            self._window(self.endpoints, record.endpoint_label).record(seconds, failed)
        for attempt in record.attempts:
            failed_try = attempt.status is None or attempt.status >= 500
            self._window(self.targets, (attempt.pool, attempt.target)).record(attempt.seconds, failed_try)
        if failed or record.error is not None:
            self.recent_errors.appendleft(self._error_row(flow, record, status))

    def _window(self, windows: dict[Any, RollingWindow], key: Any) -> RollingWindow:
        window = windows.get(key)
        if window is None:
            window = windows[key] = RollingWindow(clock=self.clock)
        return window

    def _error_row(self, flow: http.HTTPFlow, record: RequestRecord, status: int | None) -> dict[str, Any]:
        if record.error is not None:
            message = record.error
        elif flow.error is not None:
            message = flow.error.msg
        else:
            message = f"the upstream answered {status}"
        return {
            "time": _iso(self.wall()),
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
        gateway = self.core.gateway
        pools = []
        for pool in self._pools():
            rows = []
            for row in pool.describe():
                window = self.targets.get((pool.name, row["name"]))
                snapshot = window.snapshot() if window is not None else RollingWindow(clock=self.clock).snapshot()
                rows.append(
                    {
                        "label": row["target"],
                        "name": row["name"],
                        "url": row["url"],
                        "state": target_state(row, snapshot.error_rate, snapshot.window_requests),
                        "health": row["health"],
                        "ejected": row["ejected"],
                        "breaker": row["breaker"],
                        "in_flight": row["in_flight"],
                        **snapshot.as_json(),
                    }
                )
            pools.append({"name": pool.name, "policy": pool.config.load_balancing, "targets": rows})
        endpoints = []
        if gateway is not None:
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
                    }
                )
        settings = gateway.blueprint.settings if gateway is not None else None
        return {
            "blueprint": {
                "name": settings.name if settings else None,
                "version": settings.version if settings else None,
                "path": str(gateway.blueprint.path) if gateway is not None else None,
                "loaded_at": _iso(self.loaded_at) if self.loaded_at is not None else None,
            },
            "uptime_seconds": round(self.clock() - self.started, 1),
            "totals": {**self.totals.snapshot().as_json(), "in_flight": self.core.in_flight},
            "pools": pools,
            "endpoints": endpoints,
            "recent_errors": list(self.recent_errors),
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
        for pool in status["pools"]:
            for row in pool["targets"]:
                lines.append(
                    f"{row['label']}: {row['state']} health={row['health']} breaker={row['breaker']} "
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
