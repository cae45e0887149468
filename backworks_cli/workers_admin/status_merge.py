"""The workers' status documents (`<dashboard.path>/api/status`) merged into one, in the
single-process shape plus per-worker views. Pure: documents in, document out."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the supervisor (backworks_cli.supervisor) imports this package: no cycle
    from backworks_cli.supervisor import WorkerInfo

RECENT_ERRORS = 50  # as the single-process page keeps
STATES = ("up", "degraded", "down")
# Worst first: what a merged cell shows when the workers disagree (their rows say who saw what).
HEALTH_ORDER = ("unhealthy", "healthy", "unchecked")
BREAKER_ORDER = ("open", "half_open", "closed", "none")

Doc = dict[str, Any]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else 0.0


def _int(value: Any) -> int:
    return int(_num(value))


def _round(value: float, digits: int) -> float:
    return round(value, digits)


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
