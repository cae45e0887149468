"""The admin listener for N workers: merging status documents and Prometheus text (pure), and
what the counts of a worker that died or restarted become."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from backworks_cli.supervisor import WorkerInfo
from backworks_cli.workers_admin import (
    RECENT_ERRORS,
    MetricsCarry,
    StatusCarry,
    WorkerView,
    exposition,
    merge_metrics,
    merge_status,
    parse_metrics,
    status_counts,
    target_verdict,
    worker_families,
)


def info(index: int, pid: int | None = None, *, alive: bool = True, restarts: int = 0) -> WorkerInfo:
    return WorkerInfo(index=index, pid=pid if pid is not None else 1000 + index, admin_url=f"http://127.0.0.1:{9000 + index}", started_at=1_800_000_000.0, restarts=restarts, alive=alive)


def target(name: str, state: str = "up", **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "label": name, "name": name, "url": f"http://127.0.0.1:3{name[-1]}", "state": state, "state_reason": "",
        "health": "healthy", "last_check": None, "ejected": False, "breaker": "closed", "in_flight": 0,
        "requests": 10, "rate_per_s": 1.0, "error_rate": 0.0, "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0},
        "last_error": None, "failures_in_a_row": 0,
    }
    row.update(overrides)
    return row


def bucket(start: str, requests: int, errors: int = 0, *, avg: float = 1.0, p99: float = 2.0, mx: float = 3.0, current: bool = False) -> dict[str, Any]:
    classes = {"1xx": 0, "2xx": requests - errors, "3xx": 0, "4xx": 0, "5xx": errors, "none": 0}
    return {"start": start, "current": current, "requests": requests, "errors": errors, "error_rate": errors / requests if requests else None,
            "classes": classes, "latency_ms": {"avg": avg, "p50": avg, "p90": p99, "p99": p99, "max": mx}}


def status(requests: int, *, rate: float, error_rate: float | None, p99: float, targets: list[dict[str, Any]], errors: list[dict[str, Any]] = (), loaded_at: str = "2027-01-01T10:00:00Z", **extra: Any) -> dict[str, Any]:  # type: ignore[assignment]
    doc = {
        "blueprint": {"name": "shop", "version": "1.0", "path": "/srv/shop.yaml", "loaded_at": loaded_at,
                      "reload": {"state": "ok", "at": loaded_at, "file": None, "error_count": 0, "errors": []}},
        "uptime_seconds": 100.0,
        "totals": {"requests": requests, "rate_per_s": rate, "error_rate": error_rate, "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": p99},
                   "in_flight": 1, "classes": {"1xx": 0, "2xx": requests - 1, "3xx": 0, "4xx": 1, "5xx": 0, "none": 0}},
        "history": {"minutes": 3, "buckets": [bucket("2027-01-01T10:00:00Z", 0), bucket("2027-01-01T10:01:00Z", requests // 2), bucket("2027-01-01T10:02:00Z", requests - requests // 2, current=True)]},
        "pools": [{"name": "default", "policy": "round_robin", "targets": targets}],
        "endpoints": [{"label": "GET /users", "path": "/users", "methods": ["GET"], "handler": "proxy", "requests": requests, "rate_per_s": rate,
                       "error_rate": error_rate, "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": p99}, "classes": {"2xx": requests - 1, "4xx": 1}}],
        "recent_errors": list(errors),
    }
    doc.update(extra)
    return doc


def two_workers() -> list[WorkerView]:
    first = status(
        30, rate=3.0, error_rate=0.1, p99=9.0,
        targets=[target("backend-1", requests=20, rate_per_s=2.0), target("backend-2", requests=10)],
        errors=[{"time": "2027-01-01T10:02:05Z", "request_id": "a1", "status": 502, "message": "first"},
                {"time": "2027-01-01T10:01:00Z", "request_id": "a2", "status": 500, "message": "older"}],
    )
    second = status(
        10, rate=1.0, error_rate=0.5, p99=40.0,
        targets=[target("backend-1", requests=4, rate_per_s=0.5),
                 target("backend-2", "down", requests=6, health="unhealthy", breaker="open", state_reason="health check failing",
                        last_error={"at": "2027-01-01T10:02:01Z", "kind": "connect_failure", "status": None}, failures_in_a_row=4)],
        errors=[{"time": "2027-01-01T10:02:03Z", "request_id": "b1", "status": 503, "message": "second"}],
    )
    return [WorkerView(info(0), first), WorkerView(info(1), second)]


# ------------------------------------------------------------------------------------------
# Status


def test_totals_are_summed_and_rates_weighted_by_traffic() -> None:
    merged = merge_status(two_workers(), uptime_seconds=12.34)
    totals = merged["totals"]
    assert totals["requests"] == 40
    assert totals["in_flight"] == 2
    assert totals["rate_per_s"] == 4.0
    assert totals["error_rate"] == pytest.approx((0.1 * 3 + 0.5 * 1) / 4, abs=1e-4)
    assert totals["latency_ms"] == {"p50": 1.0, "p90": 2.0, "p99": 40.0}  # the slowest worker's: an upper bound
    assert totals["classes"] == {"1xx": 0, "2xx": 38, "3xx": 0, "4xx": 2, "5xx": 0, "none": 0}
    assert merged["uptime_seconds"] == 12.3
    [endpoint] = merged["endpoints"]
    assert (endpoint["label"], endpoint["requests"], endpoint["classes"]) == ("GET /users", 40, {"2xx": 38, "4xx": 2})


def test_every_worker_s_view_of_a_target_is_kept() -> None:
    [pool] = merge_status(two_workers(), uptime_seconds=1)["pools"]
    first, second = pool["targets"]
    assert (first["name"], first["state"], first["summary"], first["requests"], first["rate_per_s"]) == ("backend-1", "up", "up on 2/2 workers", 24, 2.5)
    assert [(w["worker"], w["state"], w["requests"]) for w in first["workers"]] == [(0, "up", 20), (1, "up", 4)]
    assert second["state"] == "degraded"
    assert second["summary"] == "up on 1/2 workers, down on 1/2 workers"
    assert second["state_reason"] == "the workers disagree: down on worker 1 (health check failing)"
    assert (second["health"], second["breaker"], second["failures_in_a_row"]) == ("unhealthy", "open", 4)
    assert second["last_error"] == {"at": "2027-01-01T10:02:01Z", "kind": "connect_failure", "status": None, "worker": 1}
    assert [(w["worker"], w["state"], w["health"]) for w in second["workers"]] == [(0, "up", "healthy"), (1, "down", "unhealthy")]


def test_verdicts_when_the_workers_agree_or_not() -> None:
    down = target("b-1", "down", state_reason="circuit breaker open")
    assert target_verdict([(0, down), (1, down)]) == ("down", "circuit breaker open", "down on 2/2 workers")
    assert target_verdict([(0, target("b-1"))]) == ("up", "", "up on 1/1 worker")
    degraded = target("b-1", "degraded", state_reason="50% of the last minute's tries failed")
    state, reason, summary = target_verdict([(0, down), (1, degraded), (2, target("b-1"))])
    assert (state, summary) == ("degraded", "up on 1/3 workers, degraded on 1/3 workers, down on 1/3 workers")
    assert reason == "the workers disagree: down on worker 0 (circuit breaker open); degraded on worker 1 (50% of the last minute's tries failed)"


def test_recent_errors_are_merged_by_time_and_name_their_worker() -> None:
    errors = merge_status(two_workers(), uptime_seconds=1)["recent_errors"]
    assert [(e["request_id"], e["worker"]) for e in errors] == [("a1", 0), ("b1", 1), ("a2", 0)]
    many = [WorkerView(info(i), status(1, rate=0, error_rate=None, p99=1, targets=[], errors=[{"time": f"2027-01-01T10:{m:02d}:00Z", "request_id": f"{i}-{m}"} for m in range(59, 19, -1)])) for i in range(2)]
    merged = merge_status(many, uptime_seconds=1)["recent_errors"]
    assert len(merged) == RECENT_ERRORS and merged[0]["time"] == "2027-01-01T10:59:00Z" and merged[-1]["time"] == "2027-01-01T10:35:00Z"


def test_history_minutes_are_summed_by_their_start() -> None:
    views = two_workers()
    views[1].doc["history"]["buckets"][2] = bucket("2027-01-01T10:02:00Z", 5, 2, avg=10.0, p99=50.0, mx=80.0, current=True)
    history = merge_status(views, uptime_seconds=1)["history"]
    assert history["minutes"] == 3
    assert [b["start"][-9:-4] for b in history["buckets"]] == ["10:00", "10:01", "10:02"]
    last = history["buckets"][-1]
    assert (last["requests"], last["errors"], last["current"], last["error_rate"]) == (20, 2, True, 0.1)
    assert last["latency_ms"]["avg"] == pytest.approx((15 * 1.0 + 5 * 10.0) / 20, abs=0.01)
    assert (last["latency_ms"]["p99"], last["latency_ms"]["max"]) == (50.0, 80.0)
    assert last["classes"]["5xx"] == 2 and last["classes"]["2xx"] == 18


def test_the_workers_section_says_who_answered() -> None:
    views = two_workers()[:1] + [WorkerView(info(1, restarts=2), None, "no answer in 2s"), WorkerView(info(2, alive=False), None, "not running")]
    merged = merge_status(views, uptime_seconds=1)
    rows = merged["workers"]
    assert [(w["index"], w["pid"], w["alive"], w["answered"], w["restarts"], w["error"]) for w in rows] == [
        (0, 1000, True, True, 0, None), (1, 1001, True, False, 2, "no answer in 2s"), (2, 1002, False, False, 0, "not running"),
    ]
    assert rows[0]["started_at"] == "2027-01-15T08:00:00Z" and rows[0]["blueprint"] == {"version": "1.0", "loaded_at": "2027-01-01T10:00:00Z", "reload": "ok"}
    assert merged["totals"]["requests"] == 30  # only what answered


def test_no_worker_answering_still_gives_a_document() -> None:
    merged = merge_status([WorkerView(info(0), None, "no answer")], uptime_seconds=1, retired={("totals", "requests"): 7})
    assert merged["totals"]["requests"] == 7 and merged["pools"] == [] and merged["blueprint"]["name"] is None
    assert merged["workers"][0]["answered"] is False


def test_a_reload_one_worker_refused_shows_with_who_refused_it() -> None:
    views = two_workers()
    refused = {"state": "refused", "at": "2027-01-01T10:03:00Z", "file": "/srv/shop.yaml", "error_count": 1, "errors": [{"text": "bad"}]}
    views[1].doc["blueprint"]["reload"] = refused
    views[0].doc["blueprint"]["loaded_at"] = "2027-01-01T10:04:00Z"
    blueprint = merge_status(views, uptime_seconds=1)["blueprint"]
    assert blueprint["reload"] == {**refused, "workers": [1]}
    assert blueprint["loaded_at"] == "2027-01-01T10:04:00Z"  # the newest version any worker serves


def test_the_merge_does_not_change_its_inputs() -> None:
    views = two_workers()
    before = copy.deepcopy([v.doc for v in views])
    merge_status(views, uptime_seconds=1)
    assert [v.doc for v in views] == before


def test_a_dead_or_replaced_worker_s_counts_are_kept() -> None:
    carry = StatusCarry()
    views = two_workers()
    assert carry.update(views) == {}
    # worker 1 is replaced (a new pid): its last counts stay in the totals; the new one starts at 0
    fresh = status(2, rate=1.0, error_rate=None, p99=1.0, targets=[target("backend-1", requests=2), target("backend-2", "down", requests=0)])
    replaced = [views[0], WorkerView(info(1, pid=2001, restarts=1), fresh)]
    retired = carry.update(replaced)
    assert retired[("totals", "requests")] == 10
    merged = merge_status(replaced, uptime_seconds=1, retired=retired)
    assert merged["totals"]["requests"] == 30 + 10 + 2
    assert merged["totals"]["classes"]["4xx"] == 1 + 1 + 1
    assert merged["endpoints"][0]["requests"] == 42
    assert [t["requests"] for t in merged["pools"][0]["targets"]] == [20 + 4 + 2, 10 + 6 + 0]
    # the same answer again: nothing counted twice
    assert carry.update(replaced)[("totals", "requests")] == 10
    # worker 0 dies: its last counts are kept too
    retired = carry.update([WorkerView(info(0, alive=False), None, "not running"), replaced[1]])
    assert retired[("totals", "requests")] == 40
    assert status_counts(views[0].doc)[("endpoint", "GET /users", "classes", "2xx")] == 29


# ------------------------------------------------------------------------------------------
# Metrics


def worker_text(requests: int, duration: list[int], in_flight: int, healthy: int = 1, blueprint: str = "1.0") -> str:
    buckets = "".join(f'backworks_request_duration_seconds_bucket{{endpoint="/users",method="GET",le="{le}"}} {n}.0\n' for le, n in zip(("0.1", "1.0", "+Inf"), duration))
    return (
        "# HELP backworks_requests_total Requests by endpoint template, method and status class.\n"
        "# TYPE backworks_requests_total counter\n"
        f'backworks_requests_total{{endpoint="/users",method="GET",status_class="2xx"}} {requests}.0\n'
        "# HELP backworks_request_duration_seconds Time from the request's start to the end of the answer.\n"
        "# TYPE backworks_request_duration_seconds histogram\n"
        + buckets
        + f'backworks_request_duration_seconds_count{{endpoint="/users",method="GET"}} {duration[-1]}.0\n'
        + f'backworks_request_duration_seconds_sum{{endpoint="/users",method="GET"}} {duration[-1] * 0.05}\n'
        "# HELP backworks_requests_in_flight Requests between their head arriving and the end of their answer.\n"
        "# TYPE backworks_requests_in_flight gauge\n"
        f"backworks_requests_in_flight {in_flight}.0\n"
        "# HELP backworks_target_healthy 1 if the target passes its health checks.\n"
        "# TYPE backworks_target_healthy gauge\n"
        f'backworks_target_healthy{{pool="default",target="b-1"}} {healthy}.0\n'
        "# HELP backworks_blueprint_info The blueprint being served.\n"
        "# TYPE backworks_blueprint_info gauge\n"
        f'backworks_blueprint_info{{name="shop",version="{blueprint}"}} 1.0\n'
    )


def sample(families: Any, name: str, **labels: str) -> float | None:
    for family in families.values():
        for (sample_name, sample_labels), value in family.samples.items():
            if sample_name == name and dict(sample_labels) == labels:
                return value
    return None


def test_counters_and_histograms_are_summed_and_gauges_kept_per_worker() -> None:
    merged = merge_metrics([(0, parse_metrics(worker_text(5, [2, 4, 5], 1))), (1, parse_metrics(worker_text(3, [1, 3, 3], 2, healthy=0)))])
    assert sample(merged, "backworks_requests_total", endpoint="/users", method="GET", status_class="2xx") == 8
    assert sample(merged, "backworks_request_duration_seconds_bucket", endpoint="/users", method="GET", le="1.0") == 7
    assert sample(merged, "backworks_request_duration_seconds_count", endpoint="/users", method="GET") == 8
    assert sample(merged, "backworks_request_duration_seconds_sum", endpoint="/users", method="GET") == pytest.approx(0.4)
    assert sample(merged, "backworks_requests_in_flight", worker="0") == 1 and sample(merged, "backworks_requests_in_flight", worker="1") == 2
    assert sample(merged, "backworks_target_healthy", pool="default", target="b-1", worker="1") == 0
    assert sample(merged, "backworks_requests_in_flight") is None  # no unlabelled sum of a gauge


def test_the_exposition_reads_back_as_it_was_merged() -> None:
    merged = merge_metrics([(0, parse_metrics(worker_text(5, [2, 4, 5], 1))), (1, parse_metrics(worker_text(3, [1, 3, 3], 2)))])
    merged.update(worker_families([info(0), info(1, restarts=3)], answered=[0]))
    body, content_type = exposition(merged.values())
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert 'backworks_requests_total{endpoint="/users",method="GET",status_class="2xx"} 8.0' in text
    assert 'backworks_worker_restarts_total{worker="1"} 3.0' in text
    assert 'backworks_worker_up{worker="0"} 1.0' in text and 'backworks_worker_up{worker="1"} 0.0' in text
    assert parse_metrics(text).keys() == merged.keys()
    openmetrics, content_type = exposition(merged.values(), "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and openmetrics.decode().endswith("# EOF\n")


def test_counts_of_a_worker_gone_or_reset_are_kept_and_never_go_down() -> None:
    carry = MetricsCarry()

    def scrape(*views: tuple[WorkerInfo, str | None]) -> float | None:
        chosen = carry.update([(worker, parse_metrics(text) if text is not None else None) for worker, text in views])
        return sample(merge_metrics(chosen, carry.retired), "backworks_requests_total", endpoint="/users", method="GET", status_class="2xx")

    assert scrape((info(0), worker_text(5, [5, 5, 5], 0)), (info(1), worker_text(3, [3, 3, 3], 0))) == 8
    # worker 1 does not answer this scrape: its last counts stand in
    assert scrape((info(0), worker_text(6, [6, 6, 6], 0)), (info(1), None)) == 9
    # worker 1 was replaced: the new process starts at 1, the old one's 3 are kept
    assert scrape((info(0), worker_text(6, [6, 6, 6], 0)), (info(1, pid=5001, restarts=1), worker_text(1, [1, 1, 1], 0))) == 10
    # worker 0 restarted its registry (a reload changed the buckets): its 6 are kept
    assert scrape((info(0), worker_text(2, [2, 2, 2], 0)), (info(1, pid=5001, restarts=1), worker_text(1, [1, 1, 1], 0))) == 2 + 6 + 1 + 3
    # worker 1 is dead: its last 1 is kept, its gauges are gone
    chosen = carry.update([(info(0), parse_metrics(worker_text(2, [2, 2, 2], 7))), (info(1, pid=5001, alive=False), None)])
    merged = merge_metrics(chosen, carry.retired)
    assert sample(merged, "backworks_requests_total", endpoint="/users", method="GET", status_class="2xx") == 12
    assert sample(merged, "backworks_request_duration_seconds_count", endpoint="/users", method="GET") == 12
    assert sample(merged, "backworks_requests_in_flight", worker="1") is None
    assert sample(merged, "backworks_requests_in_flight", worker="0") == 7


def test_text_that_does_not_parse_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_metrics("backworks_requests_total{endpoint=\"/x\" 3\n")
