#!/usr/bin/env python3
"""Benchmark: what a request costs between mitmproxy's hook dispatch and Backworks' own hooks.

Run with ``.venv/bin/python bench/dispatch_cost.py [--requests 2000] [--repeats 5]``.

bench/hook_cost.py calls the core addon's four hooks directly. In mitmdump a request's hooks
are events that mitmproxy's AddonManager sends through every addon it has: its ~40 default
addons, then the Script addon that holds backworks.py's list (one traversal of it per event),
each lifecycle hook followed by an `update` event. This measures, in one process, for
bench/throughput.py's configuration e (every feature on) against a real upstream
(`backworks demo-backend`, its own process), the CPU per request of

1. the core's hooks called directly (what hook_cost.py measures);
2. the same requests dispatched by a DumpMaster as `mitmdump -q -s backworks.py` builds it, with
   `backworks_cached_dispatch=false` (mitmproxy's own walk of every addon)
   (default addons, quiet dumper and event log, backworks.py's addons as one script's children;
   no proxy server: the flows are made as mitmproxy makes them, not read from a socket);
3. as 2 with Python's garbage collector off, to show its share;
4. as 2 with Backworks' event table (addons/dispatch.py, option backworks_cached_dispatch, on by
   default in mitmdump): only the addons that handle an event are called;

and counts the addons each event reaches. What is left between 2 and bench/throughput.py's
whole-process figure is mitmproxy's own HTTP layers, sockets and the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mitmproxy import http, options  # noqa: E402
from mitmproxy.addonmanager import traverse  # noqa: E402
from mitmproxy.hooks import UpdateHook  # noqa: E402
from mitmproxy.proxy.layers.http import _hooks as http_hooks  # noqa: E402
from mitmproxy.tools.dump import DumpMaster  # noqa: E402

from hook_cost import make_flows  # noqa: E402
from throughput import HOST, bench_token, full_blueprint, with_demo_upstream  # noqa: E402

WALK = "dispatched by mitmproxy's AddonManager, walking every addon per event"
TABLE = "dispatched from Backworks' event table (backworks_cached_dispatch, the default)"
LIFECYCLE = (http_hooks.HttpRequestHeadersHook, http_hooks.HttpRequestHook, http_hooks.HttpResponseHeadersHook, http_hooks.HttpResponseHook)


class ScriptHolder:
    """What mitmproxy's Script addon is to the module it loads: the parent of its `addons`."""

    def __init__(self, children: list[Any]) -> None:
        self.addons = children


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("backworks_script", ROOT / "backworks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def per_request(run: Callable[[http.HTTPFlow], Awaitable[None]], flows_for: Callable[[], list[http.HTTPFlow]], repeats: int) -> float:
    """Best CPU µs per request over `repeats` runs, after one warm-up run."""
    best = float("inf")
    for index in range(repeats + 1):
        flows = flows_for()
        started = time.process_time()
        for flow in flows:
            await run(flow)
        spent = (time.process_time() - started) / len(flows) * 1e6
        bad = [f for f in flows if f.response is None or f.response.status_code != 200]
        if bad:
            raise SystemExit(f"expected 200 for every request, got {bad[0].response and bad[0].response.status_code}")
        if index:
            best = min(best, spent)
    return best


async def run(args: argparse.Namespace, upstream_port: int, work: Path) -> None:
    token = bench_token()
    blueprint = work / "e.yaml"
    blueprint.write_text(yaml.safe_dump(full_blueprint(upstream_port), sort_keys=False))
    opts = options.Options()
    master = DumpMaster(opts, loop=asyncio.get_running_loop(), with_termlog=True, with_dumper=True)
    script = load_script()
    master.addons.add(ScriptHolder(script.addons))
    # as `mitmdump -q --mode reverse:… -s backworks.py --set blueprint=…`, without a listening server
    opts.update(server=False, mode=[f"reverse:http://{HOST}:{upstream_port}"], flow_detail=0, termlog_verbosity="error")
    opts.update(blueprint=str(blueprint), backworks_admin="off")
    core = script.core
    for addon in (core, *script.plugins):
        outcome = getattr(addon, "running", lambda: None)()
        if asyncio.iscoroutine(outcome):
            await outcome
    flows_for = lambda: make_flows(args.requests, upstream_port, token)  # noqa: E731

    async def direct(flow: http.HTTPFlow) -> None:
        await core.requestheaders(flow)
        await core.request(flow)
        core.responseheaders(flow)
        core.response(flow)

    async def dispatched(flow: http.HTTPFlow) -> None:
        for hook in LIFECYCLE:
            await master.addons.handle_lifecycle(hook(flow))

    results: dict[str, float] = {}
    results["direct"] = await per_request(direct, flows_for, args.repeats)
    opts.update(backworks_cached_dispatch=False)
    results[WALK] = await per_request(dispatched, flows_for, args.repeats)
    gc.disable()
    try:
        results[f"{WALK}, gc off"] = await per_request(dispatched, flows_for, args.repeats)
    finally:
        gc.enable()
    opts.update(backworks_cached_dispatch=True)
    if master.addons.__dict__.get("trigger_event") is None:
        raise SystemExit("backworks_cached_dispatch=true did not install the event table")
    results[TABLE] = await per_request(dispatched, flows_for, args.repeats)

    # How many addons each event reaches, and which of them are Backworks'.
    flow = flows_for()[0]
    everything = list(traverse(master.addons.chain))
    ours = set(map(id, traverse(script.addons)))
    reach = []
    for hook in (*LIFECYCLE, UpdateHook):
        name = hook.name
        having = [a for a in everything if callable(getattr(a, name, None))]
        reach.append((name, len(having), sum(1 for a in having if id(a) in ours), [type(a).__name__ for a in having if id(a) not in ours]))
    del flow

    for addon in (*script.plugins, core):
        outcome = getattr(addon, "done", lambda: None)()
        if asyncio.iscoroutine(outcome):
            await outcome

    print(f"\nConfiguration e, CPU µs per request, best of {args.repeats} runs of {args.requests} requests:\n")
    print("| how the hooks are called | µs/request |")
    print("|---|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:.0f} |")
    print(f"\nmitmproxy's walk and the other addons: {results[WALK] - results['direct']:.0f} µs; the collector's share: "
          f"{results[WALK] - results[f'{WALK}, gc off']:.0f} µs; the event table and the other addons: "
          f"{results[TABLE] - results['direct']:.0f} µs\n")
    print(f"Addons in the chain: {len(everything)} ({len(ours)} of them Backworks').\n")
    print("| event | addons with the hook | Backworks' | mitmproxy's |")
    print("|---|---:|---:|---|")
    for name, count, own, others in reach:
        print(f"| {name} | {count} | {own} | {', '.join(others) or '–'} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="measured runs, best reported (default 5)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.repeats < 1:
        parser.error("--requests and --repeats must be at least 1")
    with_demo_upstream("backworks-dispatch-cost-", lambda upstream_port, work: run(args, upstream_port, work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
