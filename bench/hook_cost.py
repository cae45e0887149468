#!/usr/bin/env python3
"""Benchmark: the CPU Backworks' own hooks spend per proxied request, in one process.

Run with ``.venv/bin/python bench/hook_cost.py [--requests 2000] [--repeats 5] [--profile b|e]``.

Where bench/throughput.py measures whole mitmdump processes (and so mitmproxy's HTTP layers,
the event loop and the machine's noise too), this drives the hooks alone, the way mitmproxy
would call them for one request: Backworks' core addon (`requestheaders`, `request`,
`responseheaders`, `response`) with the blueprint of throughput.py's configuration b (the
plain proxy) or e (every feature on), and, for the floor, bench/floor_addon.py's `request`
(configuration f: the aiohttp exchange and nothing else). Each request is a flow built as
mitmproxy builds one (`GET /users` in reverse mode; e's carries the bearer token), sent one
at a time to a real upstream (`backworks demo-backend` in its own process, so that its CPU is
not counted). Flows are made before the clock starts; the CPU time (time.process_time) of
`--requests` requests is taken `--repeats` times and the best repeat reported, in
microseconds per request. "Backworks' own" is a configuration's cost minus the floor's: what
Backworks adds over an owned exchange that does nothing else.

--profile b|e runs one more repeat under cProfile and prints the functions with the most
cumulative time, Backworks' and the libraries' it calls, to show where that cost goes.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mitmproxy import http  # noqa: E402
from mitmproxy.proxy.mode_specs import ProxyMode  # noqa: E402
from mitmproxy.test import taddons, tflow, tutils  # noqa: E402

from addons import builtin_plugins  # noqa: E402
from addons.core import Backworks  # noqa: E402
from addons.dashboard import Dashboard  # noqa: E402
from backworks_core.plugins import PluginRegistry  # noqa: E402
from floor_addon import Floor  # noqa: E402
from throughput import HOST, bench_blueprint, bench_token, full_blueprint, with_demo_upstream  # noqa: E402

Hooks = Callable[[http.HTTPFlow], Coroutine[Any, Any, None]]


def make_flows(count: int, upstream_port: int, token: str | None) -> list[http.HTTPFlow]:
    headers = [(b"Host", f"{HOST}:{upstream_port}".encode()), (b"User-Agent", b"wrk"), (b"Accept", b"*/*")]
    if token:
        headers.append((b"Authorization", f"Bearer {token}".encode()))
    flows = []
    for _ in range(count):
        request = tutils.treq(method=b"GET", host=HOST, port=upstream_port, path=b"/users", headers=http.Headers(headers), content=b"")
        flow = tflow.tflow(req=request)
        flow.client_conn.proxy_mode = ProxyMode.parse(f"reverse:http://{HOST}:{upstream_port}")
        flow.client_conn.peername = (HOST, 40000)
        flows.append(flow)
    return flows


def backworks_hooks(core: Backworks) -> Hooks:
    async def run(flow: http.HTTPFlow) -> None:
        await core.requestheaders(flow)
        await core.request(flow)
        core.responseheaders(flow)
        core.response(flow)

    return run


def floor_hooks(floor: Floor) -> Hooks:
    return floor.request


async def measure(hooks: Hooks, flows_for: Callable[[], list[http.HTTPFlow]], repeats: int, profile: bool = False) -> tuple[float, pstats.Stats | None]:
    """Best microseconds of CPU per request over `repeats` runs (after one warm-up run)."""
    best = float("inf")
    for run in range(repeats + 1):
        flows = flows_for()
        started = time.process_time()
        for flow in flows:
            await hooks(flow)
        spent = time.process_time() - started
        for flow in flows:
            if flow.response is None or flow.response.status_code != 200:
                raise SystemExit(f"expected 200 for every request, got {flow.response and flow.response.status_code}: {flow.response and flow.response.content[:300]!r}")
        if run:  # the first run warms the connection pool and caches
            best = min(best, spent / len(flows) * 1e6)
    stats = None
    if profile:
        flows = flows_for()
        profiler = cProfile.Profile()
        profiler.enable()
        for flow in flows:
            await hooks(flow)
        profiler.disable()
        stats = pstats.Stats(profiler)
    return best, stats


async def run_all(args: argparse.Namespace, upstream_port: int, work: Path) -> None:
    token = bench_token()
    results: dict[str, float] = {}
    profiles: dict[str, pstats.Stats] = {}

    floor = Floor()
    results["f"], _ = await measure(floor_hooks(floor), lambda: make_flows(args.requests, upstream_port, None), args.repeats)
    await floor.done()

    for key, blueprint, flow_token in (("b", bench_blueprint([upstream_port]), None), ("e", full_blueprint(upstream_port), token)):
        path = work / f"{key}.yaml"
        path.write_text(yaml.safe_dump(blueprint, sort_keys=False))
        registry = PluginRegistry(builtin_plugins())
        plugins = [plugin() for plugin in registry.plugins.values()]
        core = Backworks(registry, plugins)
        dashboard = Dashboard(core)
        core.extensions.append(dashboard)
        with taddons.context(core, dashboard, *plugins) as tctx:
            tctx.options.mode = [f"reverse:http://{HOST}:{upstream_port}"]
            tctx.configure(core, blueprint=str(path))
            for addon in (core, *plugins):
                running = getattr(addon, "running", None)
                if running is not None:
                    outcome = running()
                    if asyncio.iscoroutine(outcome):
                        await outcome
            results[key], stats = await measure(
                backworks_hooks(core), lambda t=flow_token: make_flows(args.requests, upstream_port, t), args.repeats, profile=args.profile == key
            )
            if stats is not None:
                profiles[key] = stats
            for addon in (*plugins, core):
                done = getattr(addon, "done", None)
                if done is not None:
                    outcome = done()
                    if asyncio.iscoroutine(outcome):
                        await outcome

    print(f"\nCPU per request, best of {args.repeats} runs of {args.requests} sequential requests (µs):\n")
    print("| configuration | µs/request | Backworks' own (minus the floor) |")
    print("|---|---:|---:|")
    print(f"| f: the floor, aiohttp exchange only | {results['f']:.0f} | – |")
    print(f"| b: Backworks proxy, pool of 1 | {results['b']:.0f} | {results['b'] - results['f']:.0f} |")
    print(f"| e: Backworks, every feature on | {results['e']:.0f} | {results['e'] - results['f']:.0f} |")
    for key, stats in profiles.items():
        print(f"\ncProfile of configuration {key} ({args.requests} requests; cumulative time, top {args.top}):\n")
        stats.sort_stats("cumulative").print_stats(args.top)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per configuration, best reported (default 5)")
    parser.add_argument("--profile", choices=("b", "e"), help="also profile this configuration with cProfile")
    parser.add_argument("--top", type=int, default=45, help="functions listed by --profile (default 45)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.repeats < 1:
        parser.error("--requests and --repeats must be at least 1")
    with_demo_upstream("backworks-hook-cost-", lambda upstream_port, work: run_all(args, upstream_port, work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
