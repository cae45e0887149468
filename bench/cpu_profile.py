#!/usr/bin/env python3
"""Where the proxy path's CPU goes: py-spy samples of bare mitmdump and of Backworks under wrk load.

Starts the same demo-backend upstream and the same mitmdump processes as bench/throughput.py
(configuration a, bare `mitmdump --mode reverse`, and e, Backworks with every feature on, or b,
the plain proxy, or f, the floor: an addon doing only the aiohttp exchange), loads each in turn with wrk, samples it with py-spy and prints the CPU time per
request by where it is spent (mitmproxy's hook dispatch, its HTTP layers, asyncio, aiohttp,
Backworks' own code, the rest). It explains the gap that throughput.py measures; it is not a
throughput figure (sampling slows the process a little).

py-spy is not a Backworks dependency: the script uses `py-spy` from PATH, or installs it once into
a venv of its own under ~/.cache/backworks-bench (--py-spy names another).

    .venv/bin/python bench/cpu_profile.py                  # a and e, 10 s of samples each
    .venv/bin/python bench/cpu_profile.py --configs abe --seconds 20
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Sequence
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import FLOOR_ADDON, HOST, Processes, bench_blueprint, bench_token, free_ports, full_blueprint, mitmdump_path, upstream_name, wait_listening  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "backworks-bench"
LABELS = {"a": "bare mitmdump --mode reverse", "b": "Backworks proxy, pool of 1", "e": "Backworks, every feature on", "f": "floor: aiohttp exchange only"}
GROUPS = (
    ("Backworks' own code", ("(addons/", "(backworks_core/")),
    ("aiohttp (Backworks' upstream exchange)", ("aiohttp/", "multidict/", "yarl/")),
    ("mitmproxy hook dispatch", ("mitmproxy/addonmanager.py", "contextlib.py")),
    ("mitmproxy HTTP layers and connections", ("mitmproxy/proxy/", "mitmproxy/http.py", "mitmproxy/net/", "mitmproxy/coretypes/")),
    ("asyncio event loop and socket writes", ("asyncio/", "selectors.py", "socket.py")),
)
OTHER = "stdlib, the rest of mitmproxy, other"


def find_py_spy(given: str | None) -> str:
    """py-spy from --py-spy, PATH, or a venv of the bench's own (created on first use)."""
    if given:
        return given
    found = shutil.which("py-spy")
    if found:
        return found
    own = CACHE / "py-spy" / "bin" / "py-spy"
    if not own.exists():
        print(f"installing py-spy into {own.parent.parent} (once)", flush=True)
        venv.create(own.parent.parent, with_pip=True)
        subprocess.run([str(own.parent / "python"), "-m", "pip", "install", "--quiet", "py-spy"], check=True)
    return str(own)


def group_of(frame: str) -> str:
    for name, markers in GROUPS:
        if any(marker in frame for marker in markers):
            return name
    return OTHER


def breakdown(raw: Path, rate: int, requests: int) -> dict[str, float]:
    """ms of CPU per request by group, from py-spy's raw (collapsed) output: self time of each leaf."""
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        totals[group_of(stack.split(";")[-1])] += int(count)
    return {name: 1000 * samples / rate / requests for name, samples in totals.items()}


def profile_one(key: str, argv: list[str], port: int, token: str, args: argparse.Namespace, py_spy: str, procs: Processes, work: Path) -> dict[str, float]:
    procs.start(key, argv)
    wait_listening(procs, key, port)
    time.sleep(2)  # health checks and the first connections settle
    headers = ["-H", f"Authorization: Bearer {token}"] if key == "e" else []
    load_seconds = args.seconds + 4
    wrk = subprocess.Popen(
        ["wrk", "-t1", f"-c{args.connections}", f"-d{load_seconds}s", *headers, f"http://{HOST}:{port}/users"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)  # sample the steady state, not the ramp-up
    raw = work / f"{key}.raw"
    pid = procs.running[key].pid
    subprocess.run([py_spy, "record", "--nonblocking", "-p", str(pid), "-r", str(args.rate), "-d", str(args.seconds), "-f", "raw", "-o", str(raw)], check=True, capture_output=True)
    out, _ = wrk.communicate()
    procs.stop(key)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise SystemExit(f"wrk gave no rate for {key}:\n{out}")
    requests = round(float(match.group(1)) * args.seconds)  # requests within the sampled window
    result = breakdown(raw, args.rate, requests)
    print(f"{key}: {float(match.group(1)):.1f} req/s while sampled, {sum(result.values()):.3f} ms of CPU per request", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="ae", help="a (bare), b (proxy), e (every feature on) and/or f (the floor: bench/floor_addon.py); default ae")
    parser.add_argument("--seconds", type=int, default=10, help="seconds of samples per configuration (default 10)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (default 200)")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections (default 4)")
    parser.add_argument("--py-spy", help="the py-spy to use")
    parser.add_argument("--keep", type=Path, help="copy py-spy's raw (collapsed-stack) files into this directory, for a closer look")
    args = parser.parse_args(argv)
    keys = [k for k in "abef" if k in args.configs]
    if not keys or set(args.configs) - set("abef"):
        parser.error("--configs takes a, b, e and f")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (bench/setup.sh installs it)")
    py_spy = find_py_spy(args.py_spy)

    with tempfile.TemporaryDirectory(prefix="backworks-profile-") as tmp:
        work = Path(tmp)
        procs = Processes(work)
        try:
            upstream_port, *ports = free_ports(1 + len(keys))
            procs.start(upstream_name(0), [sys.executable, "-m", "backworks_cli.cli", "demo-backend", "--host", HOST, "--port", str(upstream_port), "--name", upstream_name(0)])
            wait_listening(procs, upstream_name(0), upstream_port)
            blueprints = {"b": bench_blueprint([upstream_port]), "e": full_blueprint(upstream_port)}
            results: dict[str, dict[str, float]] = {}
            for key, port in zip(keys, ports):
                argv = [mitmdump_path(), "--mode", f"reverse:http://{HOST}:{upstream_port}", "-p", str(port), "--listen-host", HOST, "-q"]
                if key in blueprints:
                    path = work / f"{key}.yaml"
                    path.write_text(yaml.safe_dump(blueprints[key], sort_keys=False))
                    argv += ["-s", str(ROOT / "backworks.py"), "--set", f"blueprint={path}", "--set", "connection_strategy=lazy"]
                elif key == "f":
                    argv += ["-s", str(FLOOR_ADDON), "--set", "connection_strategy=lazy"]
                results[key] = profile_one(key, argv, port, bench_token(), args, py_spy, procs, work)
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(work / f"{key}.raw", args.keep / f"{key}.raw")
        finally:
            procs.stop_all()

    names = [name for name, _ in GROUPS] + [OTHER]
    print("\nCPU time per request by where it is spent (ms; self time of the sampled frames):\n")
    print("| group | " + " | ".join(LABELS[k] for k in keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{results[k].get(name, 0.0):.2f}" for k in keys) + " |")
    print("| total | " + " | ".join(f"{sum(results[k].values()):.2f}" for k in keys) + " |")
    if args.keep:
        print(f"\nraw py-spy stacks kept in {args.keep}/<configuration>.raw")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
