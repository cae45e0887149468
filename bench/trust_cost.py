#!/usr/bin/env python3
"""Benchmark: what the trust-boundary checks cost per request, in one process.

Run with ``.venv/bin/python bench/trust_cost.py [--requests 2000] [--repeats 7]``.

The checks of docs/security.md are of two kinds, and each is measured as it runs:

- **addons of their own** that see every request (the header read timeout, the regular-mode
  target guard) or every connection (the admin listener, the upstream-connect guard). Their cost
  is mitmproxy dispatching a request's hooks to them (requestheaders, request, responseheaders,
  response, each followed by the `update` hook mitmproxy sends after it), timed as mitmproxy
  runs them: as children of the addon that loads the script (one traversal of the script's
  addon list per event), on a flow in the state each hook meets it, best of --repeats;
- **checks inside the core's pass**: the canonical path (`paths.canonical_path`), the identity
  and forwarding screening (`forwarding.TrustBoundary.admit`), the middleware filters' path forms
  (`Gateway.middlewares_for`, which this work rewrote: the whole call is counted) and the check of
  the path sent upstream (`paths.upstream_path_problem`): each timed alone on the same flows.

The requests are bench/throughput.py's configuration e (every feature on: the auth middleware
on /users with a bearer token, rate limiting, breaker, health checks, metrics), proxied to a
real upstream (`backworks demo-backend` in its own process). The report gives the checks' cost in
microseconds, as a share of the whole request as Backworks' addons handle it in this process (the
aiohttp exchange included; an upper bound, since mitmdump's HTTP layers, parsing and sockets come
on top), and as a share of mitmdump's whole CPU per request, which bench/throughput.py then
measures for configuration e in the same run (--throughput ROUNDS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mitmproxy import http  # noqa: E402
from mitmproxy.addonmanager import safecall  # noqa: E402
from mitmproxy.hooks import UpdateHook  # noqa: E402
from mitmproxy.proxy.layers.http import _hooks as http_hooks  # noqa: E402
from mitmproxy.proxy.server_hooks import ClientConnectedHook, ClientDisconnectedHook  # noqa: E402
from mitmproxy.test import taddons  # noqa: E402

from addons import builtin_plugins  # noqa: E402
from addons.admin import AdminListener  # noqa: E402
from addons.core import Backworks  # noqa: E402
from addons.dashboard import Dashboard  # noqa: E402
from addons.exposure import TargetGuard  # noqa: E402
from addons.header_timeout import HeaderTimeout  # noqa: E402
from addons.upstream_connect import UpstreamConnectGuard  # noqa: E402
from backworks_core.paths import canonical_path, upstream_path_problem  # noqa: E402
from backworks_core.plugins import PluginRegistry  # noqa: E402
from hook_cost import make_flows  # noqa: E402
from throughput import HOST, bench_token, full_blueprint, with_demo_upstream  # noqa: E402

LIFECYCLE = (http_hooks.HttpRequestHeadersHook, http_hooks.HttpRequestHook, http_hooks.HttpResponseHeadersHook, http_hooks.HttpResponseHook)


async def dispatch_cost(master: Any, flows: list[http.HTTPFlow]) -> float:
    """Microseconds of CPU per request to run `flows` through every addon's hooks, one at a time."""
    addons = master.addons
    client = flows[0].client_conn  # one keep-alive connection, as wrk's
    for flow in flows:
        flow.client_conn = client
    await addons.handle_lifecycle(ClientConnectedHook(client))
    started = time.process_time()
    for flow in flows:
        for hook in LIFECYCLE:
            await addons.handle_lifecycle(hook(flow))
    spent = time.process_time() - started
    await addons.handle_lifecycle(ClientDisconnectedHook(client))
    bad = [f for f in flows if f.response is None or f.response.status_code != 200]
    if bad:
        raise SystemExit(f"expected 200 for every request, got {bad[0].response and bad[0].response.status_code}")
    return spent / len(flows) * 1e6


def best_of(repeats: int, number: int, call: Callable[[], object]) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeats)) / number * 1e6


async def run(args: argparse.Namespace, upstream_port: int, work: Path) -> None:
    token = bench_token()
    blueprint = work / "e.yaml"
    blueprint.write_text(yaml.safe_dump(full_blueprint(upstream_port), sort_keys=False))
    registry = PluginRegistry(builtin_plugins())
    plugins = [plugin() for plugin in registry.plugins.values()]
    core = Backworks(registry, plugins)
    dashboard, admin, guard = Dashboard(core), AdminListener(core), TargetGuard(core)
    core.extensions += [dashboard, admin, guard]
    header_timeout, upstream_connect = HeaderTimeout(), UpstreamConnectGuard(core)
    everything = [header_timeout, core, dashboard, admin, guard, *plugins, upstream_connect]  # as backworks.py
    with taddons.context(*everything) as tctx:
        tctx.options.mode = [f"reverse:http://{HOST}:{upstream_port}"]
        tctx.options.backworks_admin = "off"
        tctx.configure(core, blueprint=str(blueprint))
        for addon in (core, *plugins):
            outcome = getattr(addon, "running", lambda: None)()
            if asyncio.iscoroutine(outcome):
                await outcome
        master = tctx.master
        new_flows = lambda: make_flows(args.requests, upstream_port, token)  # noqa: E731
        # The whole request as Backworks' addons handle it: the denominator (it includes a network
        # exchange, so it varies more than the checks below).
        whole = float("inf")
        for repeat in range(args.repeats + 1):
            spent = await dispatch_cost(master, new_flows())
            if repeat:
                whole = min(whole, spent)
        # The four addons' own hooks, dispatched as mitmproxy's trigger_event does (its safecall
        # included), on a flow in the state each hook meets it: nothing on the network, so it is
        # steady enough to time alone.
        answered = new_flows()[:1]
        await dispatch_cost(master, answered)
        flow = answered[0]
        # each lifecycle hook, then the UpdateHook mitmproxy's handle_lifecycle sends after it
        events = [event for hook in LIFECYCLE for event in (hook(flow), UpdateHook([flow]))]
        four = (header_timeout, guard, admin, upstream_connect)

        # mitmdump registers the module that `-s backworks.py` loads, and so its `addons` list, as
        # the children of one Script addon: an event reaches them by one traversal of that list
        # (mitmproxy's `traverse`), not by a dispatch of its own each. So each addon is timed as
        # one more child of such a holder, less the holder alone.
        class Holder:
            def __init__(self, children: list[Any]) -> None:
                self.addons = children

        async def hooks_of(holder: Holder) -> None:
            for event in events:
                with safecall():
                    await master.addons.invoke_addon(holder, event)

        async def cost(holder: Holder) -> float:
            rounds = []
            for _ in range(args.repeats):
                started = time.process_time()
                for _ in range(args.requests):
                    await hooks_of(holder)
                rounds.append((time.process_time() - started) / args.requests * 1e6)
            return min(rounds)

        empty = await cost(Holder([]))
        each: dict[str, float] = {type(addon).__name__: max(0.0, await cost(Holder([addon])) - empty) for addon in four}

        gateway = core.gateway
        assert gateway is not None
        endpoint = next(e for e in gateway.endpoints if e.template == "/users")
        flow = make_flows(1, upstream_port, token)[0]
        n = 20000
        checks = {
            "canonical_path (route)": best_of(args.repeats, n, lambda: canonical_path("/users")),
            "TrustBoundary.admit (route)": best_of(args.repeats, n, lambda: gateway.trust_boundary.admit(flow)),
            "middlewares_for, whole call (answer)": best_of(args.repeats, n, lambda: gateway.middlewares_for(endpoint, "GET", "/users")),
            "upstream_path_problem (proxy)": best_of(args.repeats, n, lambda: upstream_path_problem("/users", "/users")),
        }
        for addon in (*plugins, core):
            outcome = getattr(addon, "done", lambda: None)()
            if asyncio.iscoroutine(outcome):
                await outcome

    addons_cost = sum(each.values())
    in_core = sum(checks.values())
    total = addons_cost + in_core
    print(f"\nPer request, best of {args.repeats} runs of {args.requests} requests (configuration e, CPU µs):\n")
    print("| what | µs/request |")
    print("|---|---:|")
    print(f"| the whole request through every addon's hooks (backworks.py's list, the aiohttp exchange included) | {whole:.1f} |")
    for name, value in each.items():
        print(f"| {name}: its hooks, dispatched as a child of the script | {value:.2f} |")
    print(f"| **the four addons** | **{addons_cost:.1f}** |")
    for name, value in checks.items():
        print(f"| {name} | {value:.2f} |")
    print(f"| **checks inside the core's pass** | **{in_core:.1f}** |")
    print(f"| **all trust-boundary checks** | **{total:.1f}** |")
    print(f"\nShare of the request as Backworks' addons handle it: {total / whole * 100:.1f} % (an upper bound:")
    print("mitmdump's whole CPU per request, its HTTP layers included, is larger).")
    if args.throughput:
        whole_process = mitmdump_cpu_per_request(args)
        print(f"Share of mitmdump's whole CPU per request (bench/throughput.py, configuration e, same run: "
              f"{whole_process:.0f} µs): {total / whole_process * 100:.1f} %")


def mitmdump_cpu_per_request(args: argparse.Namespace) -> float:
    """Configuration e's CPU per request of the whole mitmdump process, by bench/throughput.py."""
    with tempfile.TemporaryDirectory(prefix="backworks-trust-cost-") as tmp:
        out = Path(tmp) / "throughput.json"
        command = [sys.executable, str(ROOT / "bench" / "throughput.py"), "--configs", "ae", "--rounds", str(args.throughput), "--json", str(out)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return float(json.loads(out.read_text())["medians"]["e"]["proxy_cpu_ms"]) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=7, help="runs, best reported (default 7)")
    parser.add_argument("--throughput", type=int, default=2, metavar="ROUNDS", help="then measure mitmdump's whole CPU per request with bench/throughput.py (rounds; 0: skip; default 2)")
    args = parser.parse_args(argv)
    with_demo_upstream("backworks-trust-cost-", lambda upstream_port, work: run(args, upstream_port, work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
