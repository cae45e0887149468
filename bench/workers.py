"""Benchmark: `backworks run --workers 2` against `--workers 1`, same run, interleaved rounds.

Run with ``.venv/bin/python bench/workers.py [--duration 10] [--connections 32] [--rounds 3]``
(wrk from ``bench/setup.sh``). One upstream listens on a free 127.0.0.1 port: by default
HAProxy (Debian's ``haproxy``, one thread) answering a fixed JSON body itself (``http-request
return``), a C server whose few µs per request leave the cores to the workers, as an upstream on
another machine would; ``--upstream demo`` uses ``backworks demo-backend`` (aiohttp), which takes
about a third of a core at the workers' rate and so lowers the proxied ratio. Each round starts ``backworks run BENCH.yaml --workers 1`` and then
``--workers 2`` (one at a time, never side by side: they share the machine's cores), checks that
the answers are right and, for 2, that both workers answer, warms up, and measures with wrk:

  static   a ``handler: static`` endpoint                  GET /static
  proxied  a ``handler: proxy`` endpoint, one target (UP)  GET /users

and prints the median req/s over rounds and the ratios workers-2 / workers-1. SO_REUSEPORT
spreads *connections*, not requests: wrk's keep-alive connections each stay with the worker
that accepted them, so use many more connections than workers (the default, 32) or the split
is uneven by chance. The upstream and wrk run on the same machine and take CPU from the
workers: the ratio on a 2-core machine is the floor of what two cores give, not a ceiling.
Every load goes to 127.0.0.1 only; every loop is bounded; every child is killed on exit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import os  # noqa: E402

import yaml  # noqa: E402
from throughput import HOST, INSTALL_HINT, WRK_LUA, BenchError, Processes, fetch, free_ports, run_wrk, wait_listening  # noqa: E402

TARGET = 1.6  # issue 20: two workers on a 2-core machine answer at least 1.6× one worker
ENDPOINTS = {"static": "/static", "proxied": "/users"}


def blueprint(upstream_port: int) -> dict[str, object]:
    return {
        "name": "bench-workers",
        "server": {"host": HOST},
        "dashboard": {"enabled": False},
        "plugins": {"proxy": {"config": {"targets": [{"name": "up", "url": f"http://{HOST}:{upstream_port}"}]}}},
        "endpoints": [
            {"path": "/static", "method": "GET", "handler": "static", "config": {"static": {"body": {"ok": True}}}},
            {"path": "/users", "method": "GET", "handler": "proxy"},
        ],
    }


USERS_BODY = '[{"id":1,"name":"Alice"},{"id":2,"name":"Bob"},{"id":3,"name":"Carol"}]'


def haproxy_path() -> str | None:
    found = shutil.which("haproxy")
    if found:
        return found
    fallback = Path("/usr/sbin/haproxy")  # not on PATH for users without sbin directories
    return str(fallback) if fallback.is_file() and os.access(fallback, os.X_OK) else None


def haproxy_upstream_config(port: int) -> str:
    """HAProxy as the upstream: one thread, keep-alive, every request answered with USERS_BODY."""
    return f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout client 60s
    timeout connect 5s
    timeout server 60s
    timeout http-keep-alive 60s
frontend upstream
    bind {HOST}:{port}
    http-request return status 200 content-type application/json string '{USERS_BODY}' hdr X-Backend haproxy
"""


def start_upstream(procs: Processes, kind: str, port: int, work: Path) -> None:
    if kind == "haproxy":
        binary = haproxy_path()
        if binary is None:
            raise BenchError("haproxy not found (Debian: apt-get install haproxy); or run with --upstream demo")
        config = work / "upstream-haproxy.cfg"
        config.write_text(haproxy_upstream_config(port))
        procs.start("upstream", [binary, "-db", "-f", str(config)])
    else:
        procs.start("upstream", [backworks(), "demo-backend", "--port", str(port)])
    wait_listening(procs, "upstream", port)


def backworks() -> str:
    found = Path(sys.executable).with_name("backworks")
    if not found.exists():
        raise BenchError(f"backworks not found next to {sys.executable}; run ./run.sh once to install")
    return str(found)


def start(procs: Processes, name: str, bench_yaml: Path, port: int, workers: int) -> None:
    procs.start(name, [backworks(), "run", str(bench_yaml), "--port", str(port), "--workers", str(workers), "--flow-detail", "0",
                       "--", "--set", "backworks_admin=off"])
    wait_listening(procs, name, port)
    deadline = time.monotonic() + 30
    log = procs.log_dir / f"{name}.log"
    while log.read_text(errors="replace").count("listening at") < workers:
        if time.monotonic() > deadline:
            raise BenchError(f"{name}: not every worker listens after 30 s:\n{procs.log_tail(name)}")
        time.sleep(0.1)


def check(port: int, workers: int) -> None:
    status, _, body = fetch(f"http://{HOST}:{port}/static")
    if status != 200 or json.loads(body) != {"ok": True}:
        raise BenchError(f"/static answered {status} {body[:200]!r}")
    status, _, body = fetch(f"http://{HOST}:{port}/users")
    if status != 200:
        raise BenchError(f"/users answered {status} {body[:200]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measurement (default 2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="workers compared with one (default 2)")
    parser.add_argument("--upstream", choices=("haproxy", "demo"), default="haproxy",
                        help="the proxied endpoint's upstream: haproxy answering a fixed body (default), or backworks demo-backend")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="backworks-bench-workers-"))
    procs = Processes(work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    results: dict[tuple[int, str], list[float]] = {}
    errors = 0
    try:
        lua = work / "report.lua"
        lua.write_text(WRK_LUA)
        upstream_port, port = free_ports(2)
        start_upstream(procs, args.upstream, upstream_port, work)
        bench_yaml = work / "bench.yaml"
        bench_yaml.write_text(yaml.safe_dump(blueprint(upstream_port)))
        for round_ in range(1, args.rounds + 1):
            # ABBA: 1 then N, next round N then 1, so that a drift of the CPU's speed within a
            # round (this machine's varies by tens of percent over minutes) favours neither.
            for workers in ((1, args.workers) if round_ % 2 else (args.workers, 1)):
                name = f"workers-{workers}"
                start(procs, name, bench_yaml, port, workers)
                try:
                    check(port, workers)
                    for label, path in ENDPOINTS.items():
                        url = f"http://{HOST}:{port}{path}"
                        run_wrk(url, args.warmup, args.connections, args.threads, lua)
                        sample = run_wrk(url, args.duration, args.connections, args.threads, lua)
                        errors += sample.errors
                        results.setdefault((workers, label), []).append(sample.rps)
                        print(f"round {round_}: --workers {workers} {label:8} {sample.rps:8.0f} req/s  p99 {sample.p99_ms:6.1f} ms  errors {sample.errors}", flush=True)
                finally:
                    procs.stop(name)
    except BenchError as exc:
        print(f"bench/workers.py: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"{'endpoint':10} {'1 worker':>10} {f'{args.workers} workers':>10} {'ratio':>7} {'per-round ratios (median)':>28}   (median req/s over {args.rounds} round(s))")
    for label in ENDPOINTS:
        one = statistics.median(results[(1, label)])
        many = statistics.median(results[(args.workers, label)])
        ratio = many / one if one else 0.0
        # Each round's own ratio: its two measurements were minutes apart at most.
        per_round = [m / o for o, m in zip(results[(1, label)], results[(args.workers, label)]) if o]
        rounds_text = ", ".join(f"{r:.2f}" for r in per_round) + f" ({statistics.median(per_round):.2f})" if per_round else "-"
        print(f"{label:10} {one:10.0f} {many:10.0f} {ratio:6.2f}× {rounds_text:>28}{'' if ratio >= TARGET else '  (below the target)'}")
    print(f"target: ≥{TARGET}× with 2 workers on a 2-core machine; upstream: {args.upstream}; wrk errors: {errors}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
