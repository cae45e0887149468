#!/usr/bin/env python3
"""Benchmark: the CPU Backworks' own hooks spend per proxied request, in one process.

Run with ``.venv/bin/python bench/hook_cost.py [--requests 2000] [--repeats 5] [--stub] [--profile b|e]``.

Where bench/throughput.py measures whole mitmdump processes (and so mitmproxy's HTTP layers,
the event loop and the machine's noise too), this drives the hooks alone, the way mitmproxy
would call them for one request: Backworks' core addon (`requestheaders`, `request`,
`responseheaders`, `response`) with the blueprint of throughput.py's configuration b (the
plain proxy) or e (every feature on), and, for the floor, bench/floor_addon.py's `request`
(configuration f: the aiohttp exchange and nothing else). Each request is a flow built as
mitmproxy builds one (`GET /users` in reverse mode; e's carries the bearer token), sent one
at a time to a real upstream (`backworks demo-backend` in its own process, so that its CPU is
not counted). Flows are made before the clock starts; the CPU time (time.process_time) of
`--requests` requests is taken `--repeats` times, after a warm-up run each, and the best repeat reported, in
microseconds per request; the repeats are interleaved (f, b, e, f, b, e, …) so that the
machine's drift reaches every configuration alike. "Backworks' own" is a configuration's cost minus the floor's: what
Backworks adds over an owned exchange that does nothing else.

--stub answers every upstream try at once with a canned reply (the demo backend's, as aiohttp
hands it over), so that only Backworks' own code is timed: far less noise than the real exchange;
the floor is then not measured.

--profile b|e runs one more repeat under cProfile and prints the functions with the most
cumulative time, Backworks' and the libraries' it calls, to show where that cost goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
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


async def timed_run(hooks: Hooks, flows: list[http.HTTPFlow]) -> float:
    """Microseconds of CPU per request for `flows`, each answered 200, sent one at a time."""
    started = time.process_time()
    for flow in flows:
        await hooks(flow)
    spent = time.process_time() - started
    for flow in flows:
        if flow.response is None or flow.response.status_code != 200:
            raise SystemExit(f"expected 200 for every request, got {flow.response and flow.response.status_code}: {flow.response and flow.response.content[:300]!r}")
    return spent / len(flows) * 1e6


def profiled(hooks: Hooks, flows: list[http.HTTPFlow]) -> Coroutine[Any, Any, pstats.Stats]:
    async def run() -> pstats.Stats:
        profiler = cProfile.Profile()
        profiler.enable()
        for flow in flows:
            await hooks(flow)
        profiler.disable()
        return pstats.Stats(profiler)

    return run()


@contextlib.asynccontextmanager
async def configured(key: str, upstream_port: int, work: Path) -> AsyncIterator[Hooks]:
    """The hooks of configuration `key` (f, b or e), set up as mitmdump would, torn down after."""
    if key == "f":
        floor = Floor()
        try:
            yield floor_hooks(floor)
        finally:
            await floor.done()
        return
    blueprint = bench_blueprint([upstream_port]) if key == "b" else full_blueprint(upstream_port)
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
        try:
            yield backworks_hooks(core)
        finally:
            for addon in (*plugins, core):
                done = getattr(addon, "done", None)
                if done is not None:
                    outcome = done()
                    if asyncio.iscoroutine(outcome):
                        await outcome


STUB_BODY = b'[{"id":1,"name":"Alice"},{"id":2,"name":"Bob"}]'
STUB_HEADERS = [(b"Content-Type", b"application/json; charset=utf-8"), (b"Content-Length", str(len(STUB_BODY)).encode()),
                (b"X-Backend", b"bench-upstream"), (b"Date", b"Mon, 07 Dec 2026 12:00:00 GMT"), (b"Server", b"Python/3.11 aiohttp/3.9")]


def stub_upstream() -> None:
    """--stub: every upstream try gets a canned answer at once, without a socket or aiohttp, so
    that the figures are Backworks' own code alone (far less noise than a real exchange). The
    demo backend's answer to GET /users, as aiohttp hands it over."""
    from backworks_core import upstream

    async def send(self: Any, method: str, url: str, headers: Any, body: Any, **_: Any) -> Any:
        return upstream.UpstreamReply(status=200, reason="OK", headers=list(STUB_HEADERS), body=STUB_BODY, elapsed=0.0001)

    upstream.UpstreamClient.send = send  # type: ignore[method-assign]


async def run_all(args: argparse.Namespace, upstream_port: int, work: Path) -> None:
    """Interleaved: each repeat runs f, b and e in turn (set up afresh, one warm-up run, one
    measured run), so that the machine's drift (this CPU's speed varies by tens of percent over
    minutes) reaches all three alike; the best repeat of each is reported."""
    token = bench_token()
    tokens = {"f": None, "b": None, "e": token}
    results: dict[str, float] = {"f": float("inf"), "b": float("inf"), "e": float("inf")}
    keys = ("b", "e") if args.stub else ("f", "b", "e")
    if args.stub:
        stub_upstream()
    for _ in range(args.repeats):
        for key in keys:
            async with configured(key, upstream_port, work) as hooks:
                await timed_run(hooks, make_flows(args.requests, upstream_port, tokens[key]))  # warms the pool and caches
                results[key] = min(results[key], await timed_run(hooks, make_flows(args.requests, upstream_port, tokens[key])))
    profile = None
    if args.profile:
        async with configured(args.profile, upstream_port, work) as hooks:
            await timed_run(hooks, make_flows(args.requests, upstream_port, tokens[args.profile]))
            profile = await profiled(hooks, make_flows(args.requests, upstream_port, tokens[args.profile]))

    if args.stub:
        print(f"\nCPU per request, upstream stubbed (Backworks' own code alone), best of {args.repeats} interleaved runs of {args.requests} requests (µs):\n")
        print("| configuration | µs/request |")
        print("|---|---:|")
        print(f"| b: Backworks proxy, pool of 1 | {results['b']:.0f} |")
        print(f"| e: Backworks, every feature on | {results['e']:.0f} |")
    else:
        print(f"\nCPU per request, best of {args.repeats} interleaved runs of {args.requests} sequential requests (µs):\n")
        print_table(results)
    if profile is not None:
        print(f"\ncProfile of configuration {args.profile} ({args.requests} requests; cumulative time, top {args.top}):\n")
        profile.sort_stats("cumulative").print_stats(args.top)


def print_table(results: dict[str, float]) -> None:
    print("| configuration | µs/request | Backworks' own (minus the floor) |")
    print("|---|---:|---:|")
    print(f"| f: the floor, aiohttp exchange only | {results['f']:.0f} | – |")
    print(f"| b: Backworks proxy, pool of 1 | {results['b']:.0f} | {results['b'] - results['f']:.0f} |")
    print(f"| e: Backworks, every feature on | {results['e']:.0f} | {results['e'] - results['f']:.0f} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per configuration, best reported (default 5)")
    parser.add_argument("--profile", choices=("b", "e"), help="also profile this configuration with cProfile")
    parser.add_argument("--stub", action="store_true", help="answer every upstream try with a canned reply (no socket): Backworks' own code alone; no floor")
    parser.add_argument("--top", type=int, default=45, help="functions listed by --profile (default 45)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.repeats < 1:
        parser.error("--requests and --repeats must be at least 1")
    with_demo_upstream("backworks-hook-cost-", lambda upstream_port, work: run_all(args, upstream_port, work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
