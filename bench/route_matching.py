"""Benchmark: route matching cost versus blueprint size (10, 1,000, 10,000 endpoints).

Run with ``.venv/bin/python bench/route_matching.py``.  It shows that the trie's
cost per match stays roughly flat as endpoints grow, and, for contrast, how a
naive first-match scan over compiled regexes grows linearly.
"""

from __future__ import annotations

import random
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backworks_core.route_conflicts import check_routes  # noqa: E402
from backworks_core.router import (  # noqa: E402
    Match,
    MethodNotAllowed,
    Route,
    Router,
    Segment,
    parse_template,
)

SIZES = (10, 1_000, 10_000)
REQUESTS = 30_000  # per size: 60% hits, 20% misses, 20% 405s
REPEATS = 5  # best-of, to damp scheduler noise
BASELINE_REQUESTS = 300  # the linear scan is slow at 10,000 endpoints; sample fewer
SEED = 20240501


@dataclass(frozen=True)
class Request:
    kind: str  # "hit", "miss", "405"
    method: str
    path: str
    host: str


def make_routes(n: int) -> list[Route]:
    """A realistic REST-ish blueprint: collections, items, nested resources, a few catch-alls."""
    routes: list[Route] = [
        Route("/", frozenset({"GET"}), None, "root"),
        Route("/health", frozenset({"GET"}), None, "health"),
        Route("/docs/{rest:path}", frozenset({"GET"}), None, "docs"),
    ]
    k = 0
    while len(routes) < n:
        base = f"/api/v{k % 3 + 1}/res{k}"
        batch: list[tuple[str, set[str], str | None]] = [
            (base, {"GET", "POST"}, None),
            (base + "/{id:int}", {"GET", "PUT", "DELETE"}, None),
            (base + "/search", {"GET"}, None),
            (base + "/{id}", {"PATCH"}, None),
            (base + "/{id}/comments", {"GET", "POST"}, None),
            (base + "/{id}/comments/{cid:int}", {"GET", "DELETE"}, None),
            (base + "/{id:uuid}/events", {"GET"}, None),
        ]
        if k % 10 == 0:
            batch.append((f"/static/s{k}/{{rest:path}}", {"GET"}, None))
        if k % 25 == 0:
            batch.append((base, {"GET"}, f"tenant{k}.*"))
        if k % 50 == 0:
            batch.append((base + "/{id}/proxy", {"ANY"}, None))
        for template, methods, host in batch:
            if len(routes) < n:
                routes.append(Route(template, frozenset(methods), host, template))
        k += 1
    return routes


def concrete_path(segments: Sequence[Segment], rng: random.Random) -> str:
    """A request path that the template matches."""
    parts: list[str] = []
    for segment in segments:
        if segment.kind == "literal":
            parts.append(segment.value)
        elif segment.kind == "int":
            parts.append(str(rng.randrange(1, 10**6)))
        elif segment.kind == "uuid":
            parts.append(str(uuid.UUID(int=rng.getrandbits(128))))
        elif segment.kind == "path":
            parts.append("assets/js/app%20bundle.js")
        else:
            parts.append(f"item{rng.randrange(1000)}")
    return "/" + "/".join(parts)


def make_requests(routes: Sequence[Route], count: int, rng: random.Random) -> list[Request]:
    parsed = [parse_template(r.template) for r in routes]
    requests: list[Request] = []
    for i in range(count):
        index = rng.randrange(len(routes))
        r, segments = routes[index], parsed[index]
        path = concrete_path(segments, rng)
        host = "api.example.com" if r.host is None else r.host.replace("*", "example.com")
        bucket = i % 10
        if bucket < 6:
            methods = sorted(r.methods - {"ANY"}) or ["GET"]
            requests.append(Request("hit", rng.choice(methods), path, host))
        elif bucket < 8:
            k = rng.randrange(max(1, len(routes) // 8))
            miss = rng.choice(
                [
                    f"/api/v1/nosuch{rng.randrange(10**6)}",  # fails at the first dict lookup
                    f"/api/v{k % 3 + 1}/res{k}/7/comments/not-an-int",  # fails deep, after backtracking
                    f"/api/v{k % 3 + 1}/res{k}/7/unknown/extra",
                    f"/unknown/{rng.randrange(10**6)}/thing",
                ]
            )
            requests.append(Request("miss", "GET", miss, host))
        elif "ANY" not in r.methods:
            requests.append(Request("405", "TRACE", path, host))
        else:
            requests.append(Request("hit", "TRACE", path, host))
    return requests


class LinearScan:
    """The naive alternative, for contrast: try every endpoint's regex in order."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._table = [(self._compile(parse_template(r.template)), r) for r in routes]

    @staticmethod
    def _compile(segments: Sequence[Segment]) -> re.Pattern[str]:
        pieces = {"param": "[^/]+", "int": "[0-9]+", "uuid": "[0-9a-fA-F-]{36}", "path": ".+"}
        body = "".join(
            "/" + (re.escape(s.value) if s.kind == "literal" else f"(?P<{s.value}>{pieces[s.kind]})")
            for s in segments
        )
        return re.compile((body or "/") + "/?")

    def match(self, method: str, path: str, host: str = "") -> Route | None:
        for pattern, r in self._table:
            if pattern.fullmatch(path) and (method in r.methods or "ANY" in r.methods):
                return r
        return None


def best_mean_us(fn: Callable[[str, str, str], object], requests: Sequence[Request], repeats: int) -> float:
    """Best-of-``repeats`` mean microseconds per call over ``requests``."""
    best = float("inf")
    calls = [(q.method, q.path, q.host) for q in requests]
    for _ in range(repeats):
        start = time.perf_counter()
        for method, path, host in calls:
            fn(method, path, host)
        best = min(best, time.perf_counter() - start)
    return best / len(calls) * 1e6


def main() -> None:
    started = time.perf_counter()
    rows: list[dict[str, float]] = []
    for size in SIZES:
        rng = random.Random(SEED + size)
        routes = make_routes(size)

        t0 = time.perf_counter()
        router = Router(routes)
        build_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        conflicts = check_routes(routes)
        check_ms = (time.perf_counter() - t0) * 1e3
        assert not [c for c in conflicts if c.severity == "error"], conflicts[:3]

        requests = make_requests(routes, REQUESTS, rng)
        expected: dict[str, type] = {"hit": Match, "miss": type(None), "405": MethodNotAllowed}
        for q in requests:  # make sure we time what we think we time
            result = router.match(q.method, q.path, q.host)
            assert isinstance(result, expected[q.kind]), (q, result)

        row: dict[str, float] = {"endpoints": size, "build_ms": build_ms, "check_ms": check_ms}
        row["all"] = best_mean_us(router.match, requests, REPEATS)
        for kind in ("hit", "miss", "405"):
            row[kind] = best_mean_us(router.match, [q for q in requests if q.kind == kind], REPEATS)
        row["linear"] = best_mean_us(LinearScan(routes).match, requests[:BASELINE_REQUESTS], 1)
        rows.append(row)

    print(f"Route matching: {REQUESTS:,} requests per size (60% hit / 20% miss / 20% 405), best of {REPEATS}")
    print()
    header = (
        f"{'endpoints':>9} | {'build ms':>8} | {'check ms':>8} | {'µs/match':>8} | "
        f"{'hit µs':>6} | {'miss µs':>7} | {'405 µs':>6} | {'linear-scan µs':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{int(r['endpoints']):>9,} | {r['build_ms']:>8.1f} | {r['check_ms']:>8.1f} | {r['all']:>8.2f} | "
            f"{r['hit']:>6.2f} | {r['miss']:>7.2f} | {r['405']:>6.2f} | {r['linear']:>14.1f}"
        )
    small, large = rows[0], rows[-1]
    print()
    print(
        f"ratio {int(large['endpoints']):,} / {int(small['endpoints']):,} endpoints "
        f"(x{large['endpoints'] / small['endpoints']:,.0f} more): "
        f"trie x{large['all'] / small['all']:.2f} per match, "
        f"naive linear scan x{large['linear'] / small['linear']:.0f}"
    )
    print(f"total bench time {time.perf_counter() - started:.1f} s (Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
