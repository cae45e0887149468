"""One admin listener for N workers: the status page, its JSON API and the metrics, merged.

With `backworks run FILE --workers N` every worker (a mitmdump process) keeps its own admin
listener on an ephemeral 127.0.0.1 port, and the supervisor serves the one listener the outside
sees (`server.admin`), here. A request to it is asked of every live worker at once (bounded by
`FETCH_TIMEOUT`), and what comes back decides what is answered:

- a status document (JSON with `totals` and `pools`): merged (`merge_status`): counts summed,
  each target with every worker's view of it, recent errors of all workers by time, and a
  `workers` section;
- Prometheus text: merged (`merge_metrics`): counters and histograms summed per label set,
  gauges kept per worker with a `worker` label, plus the supervisor's own worker gauges;
- anything else (the page's HTML, a 404): the answer of the lowest-numbered worker, as it is.

The paths are the workers' own (`dashboard.path`, `plugins.metrics.config.path`): the supervisor
reads no blueprint and follows reloads for free. The last page and the kind of each path are
remembered, so that the page and the merged documents still answer while no worker does.

Counts never go down: the counters of a worker that died, was replaced or restarted its
registry are kept at their last value read here (`Carry`); what a worker counted after that
last read and before it died is lost. See docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:  # the supervisor (backworks_cli.supervisor) imports this module: no cycle
    from backworks_cli.supervisor import WorkerInfo

logger = logging.getLogger(__name__)

FETCH_TIMEOUT = 2.0  # seconds for one worker's answer; a slower worker counts as not answering
RECENT_ERRORS = 50  # as the single-process page keeps
FAVICON = "/favicon.ico"
STATES = ("up", "degraded", "down")
# Worst first: what a merged cell shows when the workers disagree (their rows say who saw what).
HEALTH_ORDER = ("unhealthy", "healthy", "unchecked")
BREAKER_ORDER = ("open", "half_open", "closed", "none")
CUMULATIVE = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
WORKER_LABEL = "worker"

Doc = dict[str, Any]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else 0.0


def _int(value: Any) -> int:
    return int(_num(value))


def _round(value: float, digits: int) -> float:
    return round(value, digits)


# ==========================================================================================
# The status document


def is_status_document(doc: Any) -> bool:
    """What a worker's `<dashboard.path>/api/status` answers (addons/dashboard.py)."""
    return isinstance(doc, dict) and isinstance(doc.get("totals"), dict) and isinstance(doc.get("pools"), list)


Counts = dict[tuple[str, ...], int]
"""The cumulative counts of a status document, flat: ("totals", "requests"), ("endpoint", label,
"classes", "2xx"), ("target", pool, name, url, "requests")... what a dead worker leaves behind."""


def status_counts(doc: Mapping[str, Any]) -> Counts:
    counts: Counts = {}
    totals = doc.get("totals") or {}
    counts[("totals", "requests")] = _int(totals.get("requests"))
    for cls, n in (totals.get("classes") or {}).items():
        counts[("totals", "classes", str(cls))] = _int(n)
    for endpoint in doc.get("endpoints") or []:
        label = str(endpoint.get("label"))
        counts[("endpoint", label, "requests")] = _int(endpoint.get("requests"))
        for cls, n in (endpoint.get("classes") or {}).items():
            counts[("endpoint", label, "classes", str(cls))] = _int(n)
    for pool in doc.get("pools") or []:
        for row in pool.get("targets") or []:
            counts[("target", str(pool.get("name")), str(row.get("name")), str(row.get("url")), "requests")] = _int(row.get("requests"))
    return counts


def add_counts(into: Counts, more: Mapping[tuple[str, ...], int]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0) + value


@dataclass(frozen=True)
class WorkerView:
    """One worker as a merge sees it: its supervisor entry and what it answered (None: nothing)."""

    info: WorkerInfo
    doc: Any = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.doc is not None


def _weighted_error_rate(parts: Iterable[tuple[Any, Any]]) -> float | None:
    """Error rate over workers from (error_rate, rate_per_s) pairs: weighted by traffic, which is
    exact when the workers' windows are equally long (a full minute: any worker up a minute)."""
    errors = traffic = 0.0
    for error_rate, rate in parts:
        if isinstance(error_rate, (int, float)) and not isinstance(error_rate, bool):
            errors += float(error_rate) * _num(rate)
            traffic += _num(rate)
    return _round(errors / traffic, 4) if traffic > 0 else None


def _slowest(latencies: Iterable[Any], keys: Sequence[str] = ("p50", "p90", "p99")) -> dict[str, float | None]:
    """Percentiles over workers: the slowest worker's, an upper bound of the gateway's (the
    gateway's p-th percentile lies between the workers' lowest and highest)."""
    merged: dict[str, float | None] = dict.fromkeys(keys)
    for latency in latencies:
        if not isinstance(latency, dict):
            continue
        for key in keys:
            value = latency.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                current = merged[key]
                merged[key] = value if current is None else max(current, value)
    return merged


def _sum_classes(rows: Iterable[Any]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for classes in rows:
        for cls, n in (classes or {}).items():
            merged[str(cls)] = merged.get(str(cls), 0) + _int(n)
    return merged


def _merge_totals(docs: Sequence[tuple[int, Doc]], retired: Counts) -> Doc:
    totals = [doc.get("totals") or {} for _, doc in docs]
    classes = _sum_classes(t.get("classes") for t in totals)
    for key, n in retired.items():
        if key[:2] == ("totals", "classes"):
            classes[key[2]] = classes.get(key[2], 0) + n
    return {
        "requests": sum(_int(t.get("requests")) for t in totals) + retired.get(("totals", "requests"), 0),
        "rate_per_s": _round(sum(_num(t.get("rate_per_s")) for t in totals), 3),
        "error_rate": _weighted_error_rate((t.get("error_rate"), t.get("rate_per_s")) for t in totals),
        "latency_ms": _slowest(t.get("latency_ms") for t in totals),
        "in_flight": sum(_int(t.get("in_flight")) for t in totals),
        "classes": classes,
    }


def _merge_history(docs: Sequence[tuple[int, Doc]]) -> Doc:
    """Minute buckets by their start: counts, errors, average and maximum exact; percentiles the slowest worker's."""
    minutes = max((_int((doc.get("history") or {}).get("minutes")) for _, doc in docs), default=0)
    by_start: dict[str, list[Doc]] = {}
    for _, doc in docs:
        for bucket in (doc.get("history") or {}).get("buckets") or []:
            if isinstance(bucket, dict) and isinstance(bucket.get("start"), str):
                by_start.setdefault(bucket["start"], []).append(bucket)
    starts = sorted(by_start)[-minutes:] if minutes else []
    buckets = []
    for start in starts:
        parts = by_start[start]
        requests = sum(_int(b.get("requests")) for b in parts)
        errors = sum(_int(b.get("errors")) for b in parts)
        lat = [b.get("latency_ms") or {} for b in parts]
        weighted = sum(_num(l.get("avg")) * _int(b.get("requests")) for l, b in zip(lat, parts))
        peaks = [float(l["max"]) for l in lat if isinstance(l.get("max"), (int, float))]
        latency: dict[str, float | None] = {"avg": _round(weighted / requests, 2) if requests else None, **_slowest(lat)}
        latency["max"] = max(peaks) if peaks else None
        buckets.append(
            {
                "start": start,
                "current": start == starts[-1],
                "requests": requests,
                "errors": errors,
                "error_rate": _round(errors / requests, 4) if requests else None,
                "classes": _sum_classes(b.get("classes") for b in parts),
                "latency_ms": latency,
            }
        )
    return {"minutes": minutes, "buckets": buckets}


def _worst(values: Iterable[Any], order: Sequence[str]) -> Any:
    seen = [v for v in values if v is not None]
    for candidate in order:
        if candidate in seen:
            return candidate
    return seen[0] if seen else None


def _latest(items: Iterable[tuple[int, Any]], key: str = "at") -> Doc | None:
    """The newest of dicts with an ISO time at `key`, tagged with the worker that saw it."""
    best: Doc | None = None
    for index, item in items:
        if isinstance(item, dict) and isinstance(item.get(key), str) and (best is None or item[key] > best[key]):
            best = {**item, "worker": index}
    return best


def target_verdict(views: Sequence[tuple[int, Doc]]) -> tuple[str, str, str]:
    """(state, reason, summary) of a target from every worker's view of it.

    All workers agree: their state. They disagree: degraded (some traffic still gets through
    the workers that see it up, some does not), the reason naming the workers that see it
    worse. The summary counts: "up on 2/2 workers".
    """
    states = [str(row.get("state")) for _, row in views]
    total = len(views)
    counts = {state: states.count(state) for state in STATES if state in states}
    summary = ", ".join(f"{state} on {n}/{total} worker{'s' if total != 1 else ''}" for state, n in counts.items())
    reasons = [(i, row.get("state"), row.get("state_reason")) for i, row in views if row.get("state_reason")]
    if len(set(states)) == 1:
        distinct = {reason for _, _, reason in reasons}
        if len(distinct) == 1 and len(reasons) == total:
            return states[0], str(reasons[0][2]), summary
        return states[0], "; ".join(f"worker {i}: {reason}" for i, _, reason in reasons), summary
    worse = "; ".join(f"{state} on worker {i}" + (f" ({reason})" if reason else "") for i, state, reason in reasons)
    if not worse:
        worse = "; ".join(f"{row.get('state')} on worker {i}" for i, row in views if row.get("state") != "up")
    return "degraded", f"the workers disagree: {worse}", summary


def _merge_target(views: Sequence[tuple[int, Doc]], carried: int) -> Doc:
    first = views[0][1]
    state, reason, summary = target_verdict(views)
    rows = [row for _, row in views]
    return {
        "label": first.get("label"),
        "name": first.get("name"),
        "url": first.get("url"),
        "state": state,
        "state_reason": reason,
        "summary": summary,
        "health": _worst((r.get("health") for r in rows), HEALTH_ORDER),
        "last_check": _latest((i, r.get("last_check")) for i, r in views),
        "ejected": any(r.get("ejected") is True for r in rows),
        "breaker": _worst((r.get("breaker") for r in rows), BREAKER_ORDER),
        "in_flight": sum(_int(r.get("in_flight")) for r in rows),
        "requests": sum(_int(r.get("requests")) for r in rows) + carried,
        "rate_per_s": _round(sum(_num(r.get("rate_per_s")) for r in rows), 3),
        "error_rate": _weighted_error_rate((r.get("error_rate"), r.get("rate_per_s")) for r in rows),
        "latency_ms": _slowest(r.get("latency_ms") for r in rows),
        "last_error": _latest((i, r.get("last_error")) for i, r in views),
        "failures_in_a_row": max((_int(r.get("failures_in_a_row")) for r in rows), default=0),
        "workers": [{"worker": i, **row} for i, row in views],
    }


def _merge_pools(docs: Sequence[tuple[int, Doc]], retired: Counts) -> list[Doc]:
    """Pools by name and targets by name, in the order the workers list them."""
    pools: dict[str, Doc] = {}
    targets: dict[str, dict[str, list[tuple[int, Doc]]]] = {}
    for index, doc in docs:
        for pool in doc.get("pools") or []:
            if not isinstance(pool, dict):
                continue
            name = str(pool.get("name"))
            pools.setdefault(name, {"name": pool.get("name"), "policy": pool.get("policy")})
            for row in pool.get("targets") or []:
                if isinstance(row, dict):
                    targets.setdefault(name, {}).setdefault(str(row.get("name")), []).append((index, row))
    merged = []
    for name, pool in pools.items():
        rows = []
        for target, views in (targets.get(name) or {}).items():
            url = str(views[0][1].get("url"))
            rows.append(_merge_target(views, retired.get(("target", name, target, url, "requests"), 0)))
        merged.append({**pool, "targets": rows})
    return merged


def _merge_endpoints(docs: Sequence[tuple[int, Doc]], retired: Counts) -> list[Doc]:
    endpoints: dict[str, list[Doc]] = {}
    for _, doc in docs:
        for endpoint in doc.get("endpoints") or []:
            if isinstance(endpoint, dict):
                endpoints.setdefault(str(endpoint.get("label")), []).append(endpoint)
    merged = []
    for label, rows in endpoints.items():
        classes = _sum_classes(r.get("classes") for r in rows)
        for key, n in retired.items():
            if key[:2] == ("endpoint", label) and key[2] == "classes":
                classes[key[3]] = classes.get(key[3], 0) + n
        first = rows[0]
        merged.append(
            {
                "label": first.get("label"),
                "path": first.get("path"),
                "methods": first.get("methods"),
                "handler": first.get("handler"),
                "requests": sum(_int(r.get("requests")) for r in rows) + retired.get(("endpoint", label, "requests"), 0),
                "rate_per_s": _round(sum(_num(r.get("rate_per_s")) for r in rows), 3),
                "error_rate": _weighted_error_rate((r.get("error_rate"), r.get("rate_per_s")) for r in rows),
                "latency_ms": _slowest(r.get("latency_ms") for r in rows),
                "classes": classes,
            }
        )
    return merged


def _merge_errors(docs: Sequence[tuple[int, Doc]]) -> list[Doc]:
    """Newest first (ISO times in UTC sort as text); each tagged with its worker."""
    rows = [{**row, "worker": index} for index, doc in docs for row in doc.get("recent_errors") or [] if isinstance(row, dict)]
    rows.sort(key=lambda row: str(row.get("time") or ""), reverse=True)  # stable: a worker's own order kept on ties
    return rows[:RECENT_ERRORS]


def _merge_blueprint(docs: Sequence[tuple[int, Doc]]) -> Doc | None:
    """The newest version any worker serves; a reload any worker refused, with who refused it."""
    blueprints = [(i, doc["blueprint"]) for i, doc in docs if isinstance(doc.get("blueprint"), dict)]
    if not blueprints:
        return None
    newest = dict(max(blueprints, key=lambda item: str(item[1].get("loaded_at") or ""))[1])
    refused = [(i, bp["reload"]) for i, bp in blueprints if isinstance(bp.get("reload"), dict) and bp["reload"].get("state") == "refused"]
    if refused:
        newest["reload"] = {**refused[0][1], "workers": [i for i, _ in refused]}
    return newest


def _worker_row(view: WorkerView) -> Doc:
    info = view.info
    doc: Doc = view.doc if isinstance(view.doc, dict) else {}
    blueprint: Doc = doc["blueprint"] if isinstance(doc.get("blueprint"), dict) else {}
    reload: Doc = blueprint["reload"] if isinstance(blueprint.get("reload"), dict) else {}
    totals: Doc = doc["totals"] if isinstance(doc.get("totals"), dict) else {}
    return {
        "index": info.index,
        "pid": info.pid,
        "alive": info.alive,
        "restarts": info.restarts,
        "started_at": _iso(info.started_at) if info.started_at > 1e9 else info.started_at,
        "answered": view.answered,
        "error": view.error,
        "uptime_seconds": doc.get("uptime_seconds"),
        "requests": totals.get("requests"),
        "rate_per_s": totals.get("rate_per_s"),
        "in_flight": totals.get("in_flight"),
        "blueprint": {"version": blueprint.get("version"), "loaded_at": blueprint.get("loaded_at"), "reload": reload.get("state")} if blueprint else None,
    }


def merge_status(views: Sequence[WorkerView], *, uptime_seconds: float, retired: Counts | None = None) -> Doc:
    """One status document for all workers, in the single-process shape (addons/dashboard.py),
    plus per-worker views (`pools[].targets[].workers`, `recent_errors[].worker`) and a
    `workers` section. Pure: documents in, document out. `retired`: the counts of workers gone."""
    retired = retired or {}
    docs = sorted(((v.info.index, v.doc) for v in views if is_status_document(v.doc)), key=lambda item: item[0])
    blueprint = _merge_blueprint(docs) or {"name": None, "version": None, "path": None, "loaded_at": None, "reload": {"state": "ok", "at": None, "file": None, "error_count": 0, "errors": []}}
    return {
        "blueprint": blueprint,
        "uptime_seconds": _round(uptime_seconds, 1),
        "totals": _merge_totals(docs, retired),
        "history": _merge_history(docs),
        "pools": _merge_pools(docs, retired),
        "endpoints": _merge_endpoints(docs, retired),
        "recent_errors": _merge_errors(docs),
        "workers": [_worker_row(v) for v in sorted(views, key=lambda v: v.info.index)],
    }


# ==========================================================================================
# Prometheus metrics

SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, labels in order)


@dataclass
class Family:
    """One metric family: its type, help and samples by (name, labels) in the order first seen."""

    name: str
    type: str
    documentation: str
    samples: dict[SampleKey, float] = field(default_factory=dict)


Families = dict[str, Family]


def parse_metrics(text: str) -> Families:
    """Prometheus text (0.0.4) into families; raises ValueError when it does not parse."""
    families: Families = {}
    for metric in text_string_to_metric_families(text):
        family = families.setdefault(metric.name, Family(metric.name, metric.type, metric.documentation))
        for sample in metric.samples:
            family.samples[(sample.name, tuple(sample.labels.items()))] = float(sample.value)
    return families


def cumulative(families: Families) -> Families:
    """Only what is counted since the start (counters, histograms): what a dead worker leaves."""
    return {name: f for name, f in families.items() if f.type in CUMULATIVE}


def _addable(family: Family) -> Iterable[tuple[SampleKey, float]]:
    """A cumulative family's samples that add up across processes (a summary's quantiles do not)."""
    return ((key, value) for key, value in family.samples.items() if not (family.type == "summary" and any(k == "quantile" for k, _ in key[1])))


def merge_metrics(views: Sequence[tuple[int, Families | None]], retired: Families | None = None) -> Families:
    """Families of all workers: counters and histograms summed per label set (plus `retired`,
    the counts of workers gone); gauges (and anything not cumulative) once per worker, with a
    `worker` label. A family whose type differs between workers keeps the first type seen.
    Pure: families in, families out."""
    merged: Families = {}

    def add(family: Family, worker: int | None) -> None:
        into = merged.setdefault(family.name, Family(family.name, family.type, family.documentation))
        if into.type != family.type:
            return
        if family.type in CUMULATIVE:
            for key, value in _addable(family):
                into.samples[key] = into.samples.get(key, 0.0) + value
        elif worker is not None:
            for (name, labels), value in family.samples.items():
                into.samples[(name, tuple((k, v) for k, v in labels if k != WORKER_LABEL) + ((WORKER_LABEL, str(worker)),))] = value

    for index, families in sorted(views, key=lambda item: item[0]):
        for family in (families or {}).values():
            add(family, index)
    for family in (retired or {}).values():
        add(family, None)
    return merged


def worker_families(workers: Sequence[WorkerInfo], answered: Iterable[int]) -> Families:
    """The supervisor's own series: how many workers, which answered this scrape, restarts."""
    answered = set(answered)
    count = Family("backworks_workers", "gauge", "Worker processes the supervisor runs.", {("backworks_workers", ()): float(len(workers))})
    up = Family("backworks_worker_up", "gauge", "1 if the worker is alive and its metrics were read for this scrape.")
    restarts = Family("backworks_worker_restarts", "counter", "Times the worker at this index was replaced after it died.")
    for info in sorted(workers, key=lambda w: w.index):
        labels = ((WORKER_LABEL, str(info.index)),)
        up.samples[("backworks_worker_up", labels)] = 1.0 if info.alive and info.index in answered else 0.0
        restarts.samples[("backworks_worker_restarts_total", labels)] = float(info.restarts)
    return {f.name: f for f in (count, up, restarts)}


def exposition(families: Iterable[Family], accept: str = "") -> tuple[bytes, str]:
    """The text format, or OpenMetrics when the scraper asks for it (as a worker answers)."""
    metrics = []
    for family in families:
        metric = Metric(family.name, family.documentation, family.type)
        for (name, labels), value in family.samples.items():
            metric.add_sample(name, dict(labels), value)
        metrics.append(metric)

    class _Collected:
        def collect(self) -> list[Metric]:
            return metrics

    encoder, content_type = choose_encoder(accept)
    return encoder(_Collected()), content_type


# ==========================================================================================
# What dead workers leave


@dataclass
class _Last:
    pid: int
    value: Any


class StatusCarry:
    """The status counts of workers gone: a worker's last counts, kept when its pid changes or it dies."""

    def __init__(self) -> None:
        self.retired: Counts = {}
        self._last: dict[int, _Last] = {}

    def update(self, views: Sequence[WorkerView]) -> Counts:
        listed = {v.info.index for v in views}
        for index in [i for i in self._last if i not in listed]:
            add_counts(self.retired, self._last.pop(index).value)
        for view in views:
            last = self._last.get(view.info.index)
            if last is not None and (last.pid != view.info.pid or not view.info.alive):
                add_counts(self.retired, self._last.pop(view.info.index).value)
            if view.info.alive and is_status_document(view.doc):
                self._last[view.info.index] = _Last(view.info.pid, status_counts(view.doc))
        return self.retired


def _went_down(old: Family, new: Family | None) -> bool:
    """A counter that shrank, or vanished: the worker's registry started afresh."""
    if new is None or new.type != old.type:
        return True
    return any(new.samples.get(key, -1.0) < value for key, value in _addable(old))


class MetricsCarry:
    """The counters of workers gone, so that the sums Prometheus scrapes never go down.

    Per worker, the last families read; when its pid changes or it dies they join `retired`, and
    so does one family whose counts went down while the pid stayed (a reload that changed the
    histogram buckets starts a fresh registry). A live worker that does not answer a scrape
    counts with its last families read.
    """

    def __init__(self) -> None:
        self.retired: Families = {}
        self._last: dict[int, _Last] = {}

    def _retire(self, families: Iterable[Family]) -> None:
        for family in families:
            into = self.retired.setdefault(family.name, Family(family.name, family.type, family.documentation))
            if into.type == family.type:
                for key, value in _addable(family):
                    into.samples[key] = into.samples.get(key, 0.0) + value

    def update(self, views: Sequence[tuple[WorkerInfo, Families | None]]) -> list[tuple[int, Families | None]]:
        """The families to merge for each worker this time."""
        listed = {info.index for info, _ in views}
        for index in [i for i in self._last if i not in listed]:
            self._retire(self._last.pop(index).value.values())
        chosen: list[tuple[int, Families | None]] = []
        for info, families in views:
            last = self._last.get(info.index)
            if last is not None and (last.pid != info.pid or not info.alive):
                self._retire(self._last.pop(info.index).value.values())
                last = None
            if not info.alive:
                continue
            if families is None:
                chosen.append((info.index, last.value if last is not None else None))
                continue
            counted = cumulative(families)
            if last is not None:
                self._retire(old for name, old in last.value.items() if _went_down(old, counted.get(name)))
            self._last[info.index] = _Last(info.pid, counted)
            chosen.append((info.index, families))
        return chosen


# ==========================================================================================
# The listener


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
