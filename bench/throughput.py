"""Benchmark: requests/s through Backworks against bare `mitmdump --mode reverse`, in one run.

Run with ``.venv/bin/python bench/throughput.py [--duration 10] [--connections 8] [--rounds 3]``
(``bench/run`` runs it after ``bench/setup.sh`` has installed ``wrk``).

One upstream (``backworks demo-backend``, aiohttp) listens on a free 127.0.0.1 port. Three
configurations are then measured with ``wrk``, one at a time, never side by side (they share
the machine's cores):

  a. bare   ``mitmdump --mode reverse:http://127.0.0.1:UP -p PORT -q``           GET /users
  b. proxy  the same plus ``-s backworks.py --set blueprint=BENCH.yaml
            --set connection_strategy=lazy``; a ``handler: proxy`` endpoint      GET /users
  c. static the same Backworks process; a ``handler: static`` endpoint          GET /static

Rounds are interleaved (a, b, c, a, b, c, ...) so that drift of the machine affects all three
alike; each round starts its mitmdump processes afresh, checks the answers, warms up, then
measures. The table reports the median over rounds of req/s and of wrk's latency p50/p99, and
the ratios b/a and c/a. Every load generator targets 127.0.0.1 only; every loop is bounded in
count and time; every child process is killed on exit, error or Ctrl-C.

To make noise visible rather than silently part of the figures, each measurement also records
the mitmdump process's CPU time per request (/proc), the CPU the rest of the machine used
meanwhile ("other load"; a measurement above --max-other-load is taken again, at most
--noise-retries times), and a fixed-loop calibration of the CPU mitmdump runs on. By default
mitmdump is pinned to one CPU and the upstream and wrk to the others (--no-pin to turn off).
--backworks DIR measures another checkout, e.g. one commit exported with `git archive`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from backworks_core.demo_backend import USERS  # noqa: E402

HOST = "127.0.0.1"  # the only address this benchmark ever sends load to
TARGET_RATIO = 0.90  # project target: Backworks with features on within 10% of bare mitmdump
START_TIMEOUT = 30.0  # seconds a process gets to start listening
NOISY_CORES = 0.15  # CPU busy outside the benchmark's own processes above which figures are suspect
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
INSTALL_HINT = (
    "wrk (HTTP load generator) is not installed.\n"
    "  run:  bench/setup.sh      (does: apt-get update && apt-get install -y wrk)\n"
    "  or install the Debian/Ubuntu package `wrk` yourself, then re-run."
)

# wrk reports through this Lua hook: one machine-readable line, latencies in microseconds.
WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,"
    .. "\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d,"
    .. "\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"mean_us\":%.1f,\"max_us\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


# -- processes ---------------------------------------------------------------------------------


class Processes:
    """Every child this benchmark starts, each in its own process group, so all can be killed."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: Sequence[str], cpus: set[int] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        log.write(f"$ {' '.join(argv)}\n".encode())
        log.flush()
        env = dict(os.environ)
        for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            env.pop(var, None)  # the upstream client must connect to 127.0.0.1 directly
        env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: Ctrl-C reaches us, we kill them
            preexec_fn=pinner(cpus),
        )
        log.close()  # the child holds its own copy
        self.running[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.running.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def pinner(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child (and every thread it starts) to `cpus`."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def cpu_layout(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(CPUs for mitmdump, CPUs for the upstream and wrk): apart, so every configuration gets the
    same placement; mitmdump is single-threaded, one CPU is all it can use."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return {available[-1]}, set(available[:-1])


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_listening(procs: Processes, name: str, port: int, timeout: float = START_TIMEOUT) -> None:
    proc = procs.running[name]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with code {proc.returncode} before listening:\n{procs.log_tail(name)}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on {HOST}:{port} within {timeout:g}s:\n{procs.log_tail(name)}")


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    with _NO_PROXY_OPENER.open(url, timeout=10) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()


# -- configurations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    process: str  # which mitmdump process serves it: "bare" or "backworks"
    path: str
    check: Callable[[int, dict[str, str], bytes], str | None]  # None when the answer is right


def _check_bare(status: int, headers: dict[str, str], body: bytes) -> str | None:
    if status != 200 or b'"items"' not in body or headers.get("x-backend") is None:
        return f"expected the upstream's 200 /users answer, got {status} {headers} {body[:200]!r}"
    return None


def _check_proxy(status: int, headers: dict[str, str], body: bytes) -> str | None:
    if status != 200 or b'"items"' not in body or headers.get("x-proxied-by") != "backworks":
        return f"expected the upstream's answer via Backworks' proxy handler, got {status} {headers} {body[:200]!r}"
    return None


def _check_static(status: int, headers: dict[str, str], body: bytes) -> str | None:
    if status != 200 or headers.get("x-bench") != "static" or b'"items"' not in body:
        return f"expected Backworks' static answer, got {status} {headers} {body[:200]!r}"
    return None


CONFIGS = (
    Config("a", "bare mitmdump --mode reverse", "bare", "/users", _check_bare),
    Config("b", "backworks handler: proxy", "backworks", "/users", _check_proxy),
    Config("c", "backworks handler: static", "backworks", "/static", _check_static),
)


def bench_blueprint(upstream_port: int) -> dict[str, object]:
    """What a real blueprint looks like: a proxy pool with a header transform, a static endpoint
    with a header, and some other endpoints so the router is not trivially one route."""
    endpoints: list[dict[str, object]] = [
        {
            "path": "/users",
            "methods": ["GET", "POST"],
            "handler": "proxy",
            "description": "proxied to the bench upstream, same path as bare mitmdump",
        },
        {
            "path": "/static",
            "method": "GET",
            "handler": "static",
            "description": "a constant JSON answer about the size of the upstream's",
            "config": {"static": {"headers": {"X-Bench": "static"}, "body": {"backend": "static", "items": USERS}}},
        },
        {"path": "/users/{id:int}", "method": "GET", "handler": "proxy"},
        {"path": "/orders", "method": "GET", "handler": "proxy"},
        {"path": "/orders/{id:int}", "method": "GET", "handler": "proxy"},
        {"path": "/health", "method": "GET", "handler": "static", "config": {"static": {"body": {"ok": True}}}},
    ]
    for i in range(14):
        endpoints.append(
            {
                "path": f"/api/v1/res{i}/{{id}}",
                "method": "GET",
                "handler": "static",
                "config": {"static": {"body": {"resource": i, "id": "{{path.id}}"}}},
            }
        )
    return {
        "name": "backworks-bench",
        "version": "1.0.0",
        "description": "generated by bench/throughput.py",
        "plugins": {
            "proxy": {
                "config": {
                    "targets": [{"name": "bench-upstream", "url": f"http://{HOST}:{upstream_port}"}],
                    "transform_response": {"headers": {"X-Proxied-By": "backworks"}},
                }
            }
        },
        "endpoints": endpoints,
    }


# -- wrk ---------------------------------------------------------------------------------------


@dataclass
class Sample:
    rps: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int  # socket errors plus non-2xx/3xx answers
    proxy_cpu_ms: float = 0.0  # CPU time of the mitmdump process per request
    proxy_cpu_util: float = 0.0  # its CPU time / wall time: 1.0 means one core saturated
    upstream_cpu_ms: float = 0.0  # CPU time of the upstream per request
    other_cores: float = 0.0  # CPU busy on the machine outside mitmdump, upstream and wrk (noise)
    calibration_ms: float = 0.0  # a fixed CPU loop on mitmdump's CPU just before: the CPU's speed then


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def system_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores, Linux /proc/stat); 0.0 where unavailable."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, IndexError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / CLOCK_TICKS


def calibration_ms(cpus: set[int] | None) -> float:
    """Best of 3 runs of a fixed pure-Python loop on `cpus`: a reading of how fast that CPU is now.
    On shared (virtual) machines it changes by tens of percent from second to second."""
    previous = os.sched_getaffinity(0) if cpus and hasattr(os, "sched_setaffinity") else None
    if previous is not None:
        os.sched_setaffinity(0, cpus)  # type: ignore[arg-type]
    try:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            x = 0
            for i in range(100_000):
                x += i * i % 7
            best = min(best, time.perf_counter() - started)
        return best * 1e3
    finally:
        if previous is not None:
            os.sched_setaffinity(0, previous)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished children: the wrk runs
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc); 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def run_wrk(url: str, seconds: float, connections: int, threads: int, lua: Path, cpus: set[int] | None = None) -> Sample:
    assert url.startswith(f"http://{HOST}:"), url  # never load anything but localhost
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(lua),
        url,
    ]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=False, preexec_fn=pinner(cpus)
    )
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("BENCHJSON ")), None)
    if result.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    data = json.loads(line.split(" ", 1)[1])
    duration = data["duration_us"] / 1e6
    errors = data["connect"] + data["read"] + data["write"] + data["status"] + data["timeout"]
    return Sample(
        rps=data["requests"] / duration if duration else 0.0,
        requests=data["requests"],
        p50_ms=data["p50_us"] / 1e3,
        p90_ms=data["p90_us"] / 1e3,
        p99_ms=data["p99_us"] / 1e3,
        errors=errors,
    )


# -- environment -------------------------------------------------------------------------------


def mitmdump_path() -> str:
    beside = Path(sys.executable).with_name("mitmdump")
    if beside.exists():
        return str(beside)
    found = shutil.which("mitmdump")
    if found is None:
        raise BenchError(f"mitmdump not found next to {sys.executable} nor on PATH; run ./run.sh once to install")
    return found


def describe_checkout(directory: Path) -> str:
    """Which Backworks is measured: the directory, its git commit, and whether its code is modified."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return f"{directory} (not a git checkout)"
        status = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--", "backworks.py", "addons", "backworks_core"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return f"{directory} (git unavailable)"
    changed = len(status.stdout.splitlines())
    return f"{directory} at {commit.stdout.strip()}" + (f" with {changed} uncommitted change(s) in its code" if changed else "")


def environment() -> dict[str, str]:
    import aiohttp
    from mitmproxy.version import VERSION as MITMPROXY_VERSION

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        wrk = "unknown"
    return {
        "python": sys.version.split()[0],
        "mitmproxy": MITMPROXY_VERSION,
        "aiohttp": aiohttp.__version__,
        "wrk": " ".join(wrk.split()[:2]),
        "cpus": str(os.cpu_count()),
        "cpu_model": cpu,
        "platform": platform.platform(),
    }


# -- main --------------------------------------------------------------------------------------


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {c.key: [] for c in CONFIGS})


def measure_one(url: str, args: argparse.Namespace, lua: Path, proxy_pid: int, upstream_pid: int) -> Sample:
    """One wrk run, with the CPU the proxy, the upstream, wrk and everything else used meanwhile."""
    calibration = calibration_ms(args.proxy_cpus)
    cpu0, up0, wall0 = cpu_seconds(proxy_pid), cpu_seconds(upstream_pid), time.monotonic()
    sys0, wrk0 = system_busy_seconds(), children_cpu_seconds()
    sample = run_wrk(url, args.duration, args.connections, args.threads, lua, args.load_cpus)
    cpu1, up1, wall1 = cpu_seconds(proxy_pid), cpu_seconds(upstream_pid), time.monotonic()
    sys1, wrk1 = system_busy_seconds(), children_cpu_seconds()
    wall = max(wall1 - wall0, 1e-9)
    ours = (cpu1 - cpu0) + (up1 - up0) + (wrk1 - wrk0)
    sample.other_cores = max(0.0, (sys1 - sys0) - ours) / wall
    sample.proxy_cpu_util = (cpu1 - cpu0) / wall
    sample.calibration_ms = calibration
    if sample.requests:
        sample.proxy_cpu_ms = (cpu1 - cpu0) * 1e3 / sample.requests
        sample.upstream_cpu_ms = (up1 - up0) * 1e3 / sample.requests
    return sample


def measure(args: argparse.Namespace, procs: Processes, work: Path, results: Results) -> dict[str, list[str]]:
    mitmdump = mitmdump_path()
    lua = work / "report.lua"
    lua.write_text(WRK_LUA)

    upstream_port = free_port()
    upstream_argv = [sys.executable, "-m", "backworks_core.cli", "demo-backend", "--host", HOST, "--port", str(upstream_port), "--name", "bench-upstream"]
    procs.start("upstream", upstream_argv, args.load_cpus)
    wait_listening(procs, "upstream", upstream_port)

    blueprint = work / "bench-blueprint.yaml"
    blueprint.write_text(yaml.safe_dump(bench_blueprint(upstream_port), sort_keys=False))
    mode = f"reverse:http://{HOST}:{upstream_port}"

    def argv_for(process: str, port: int | str) -> list[str]:
        argv = [mitmdump, "--mode", mode, "-p", str(port), "--listen-host", HOST, "-q"]
        if process == "backworks":
            argv += ["-s", str(args.backworks / "backworks.py"), "--set", f"blueprint={blueprint}", "--set", "connection_strategy=lazy"]
        return argv

    commands = {
        "upstream": upstream_argv,
        "bare": argv_for("bare", "PORT"),
        "backworks": argv_for("backworks", "PORT"),
        "wrk": ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{round(args.duration)}s", "--timeout", "5s", "-s", "report.lua", "URL"],
    }
    for name, argv in commands.items():
        print(f"{name}: {' '.join(argv)}", flush=True)
    print(f"backworks code: {describe_checkout(args.backworks)}", flush=True)
    if args.proxy_cpus:
        print(
            f"pinned: mitmdump on CPU {','.join(map(str, sorted(args.proxy_cpus)))}; upstream and wrk on CPU "
            f"{','.join(map(str, sorted(args.load_cpus or ())))} (--no-pin to let the scheduler place them)",
            flush=True,
        )
    if args.print_blueprint:
        print(f"\n# {blueprint}\n{blueprint.read_text()}", flush=True)
    print(flush=True)

    for round_no in range(1, args.rounds + 1):
        for process in ("bare", "backworks"):
            port = free_port()
            procs.start(process, argv_for(process, port), args.proxy_cpus)
            try:
                wait_listening(procs, process, port)
                for config in (c for c in CONFIGS if c.process == process):
                    url = f"http://{HOST}:{port}{config.path}"
                    try:
                        status, headers, body = fetch(url)
                    except OSError as exc:
                        time.sleep(0.5)  # let a crashing process finish writing its log
                        raise BenchError(
                            f"{config.key} ({config.label}): GET {url} failed: {exc}\n{procs.log_tail(process)}"
                        ) from None
                    problem = config.check(status, headers, body)
                    if problem:
                        raise BenchError(f"{config.key} ({config.label}) answers wrongly: {problem}")
                    if args.warmup > 0:
                        run_wrk(url, args.warmup, args.connections, args.threads, lua, args.load_cpus)
                    sample = measure_one(url, args, lua, procs.running[process].pid, procs.running["upstream"].pid)
                    for retry in range(1, args.noise_retries + 1):
                        if sample.other_cores <= args.max_other_load:
                            break
                        print(
                            f"round {round_no}/{args.rounds}  {config.key}  other load {sample.other_cores:.2f} cores "
                            f"> {args.max_other_load:g}: measuring again ({retry}/{args.noise_retries}) "
                            f"[discarded: {sample.rps:.1f} req/s]",
                            flush=True,
                        )
                        time.sleep(args.noise_pause)
                        sample = measure_one(url, args, lua, procs.running[process].pid, procs.running["upstream"].pid)
                    if procs.running[process].poll() is not None:
                        raise BenchError(f"{process} died during the run:\n{procs.log_tail(process)}")
                    results.samples[config.key].append(sample)
                    print(
                        f"round {round_no}/{args.rounds}  {config.key}  {config.label:<30} "
                        f"{sample.rps:8.1f} req/s  p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms  "
                        f"mitmdump CPU {sample.proxy_cpu_ms:5.3f} ms/req ({sample.proxy_cpu_util:4.0%} of a core)"
                        + f"  other load {sample.other_cores:.2f} cores  calibration {sample.calibration_ms:.1f} ms"
                        + (f"  ERRORS {sample.errors}" if sample.errors else ""),
                        flush=True,
                    )
            finally:
                procs.stop(process)
            time.sleep(0.5)  # let the stopped process release its CPU before the next starts
    return commands


def report(args: argparse.Namespace, env: dict[str, str], results: Results, commands: dict[str, list[str]]) -> dict[str, object]:
    med: dict[str, dict[str, float]] = {}
    for config in CONFIGS:
        samples = results.samples[config.key]
        med[config.key] = {
            "rps": statistics.median(s.rps for s in samples),
            "rps_min": min(s.rps for s in samples),
            "rps_max": max(s.rps for s in samples),
            "p50_ms": statistics.median(s.p50_ms for s in samples),
            "p99_ms": statistics.median(s.p99_ms for s in samples),
            "errors": sum(s.errors for s in samples),
            "proxy_cpu_ms": statistics.median(s.proxy_cpu_ms for s in samples),
            "proxy_cpu_util": statistics.median(s.proxy_cpu_util for s in samples),
            "upstream_cpu_ms": statistics.median(s.upstream_cpu_ms for s in samples),
        }
    bare = med["a"]["rps"]
    round_ratios = {
        key: [b.rps / a.rps for a, b in zip(results.samples["a"], results.samples[key], strict=True)] for key in ("b", "c")
    }

    print()
    print(
        f"Throughput: wrk -t{args.threads} -c{args.connections}, {args.duration:g} s per measurement "
        f"after {args.warmup:g} s warm-up, {args.rounds} interleaved round(s), median over rounds"
    )
    print(
        f"Python {env['python']}, mitmproxy {env['mitmproxy']}, aiohttp {env['aiohttp']}, {env['wrk']}, "
        f"{env['cpus']} CPU(s): {env['cpu_model']}"
    )
    print()
    header = (
        f"{'':1} | {'configuration':<30} | {'req/s':>8} | {'min..max req/s':>15} | "
        f"{'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6} | {'CPU ms/req':>10} | {'vs bare':>7}"
    )
    print(header)
    print("-" * len(header))
    for config in CONFIGS:
        m = med[config.key]
        ratio = m["rps"] / bare if bare else float("nan")
        span = f"{m['rps_min']:.0f}..{m['rps_max']:.0f}"
        print(
            f"{config.key:1} | {config.label:<30} | {m['rps']:>8.1f} | {span:>15} | "
            f"{m['p50_ms']:>7.2f} | {m['p99_ms']:>7.2f} | {int(m['errors']):>6} | "
            f"{m['proxy_cpu_ms']:>10.3f} | {ratio:>7.2f}"
        )
    print()
    print(
        "CPU ms/req: CPU time (user+system) of the mitmdump process per request, median over rounds; "
        "mitmdump runs on one core, so req/s <= 1000 / CPU ms/req."
    )
    print()
    verdicts: dict[str, bool] = {}
    for key, what in (("b", "proxy"), ("c", "static")):
        ratio = med[key]["rps"] / bare if bare else float("nan")
        per_round = ", ".join(f"{r:.2f}" for r in round_ratios[key])
        meets = ratio >= TARGET_RATIO
        verdicts[key] = meets
        print(
            f"ratio {key}/a ({what:<6}) = {ratio:.2f}   per round: {per_round} (median {statistics.median(round_ratios[key]):.2f})   "
            f"target >= {TARGET_RATIO:.2f}: {'MET' if meets else 'NOT MET'}"
        )
    quiet = [
        i
        for i in range(len(results.samples["a"]))
        if all(results.samples[c.key][i].other_cores <= args.max_other_load for c in CONFIGS)
    ]
    if quiet and len(quiet) < len(results.samples["a"]):
        print(
            f"quiet rounds only ({len(quiet)} of {len(results.samples['a'])}, other load <= {args.max_other_load:g} "
            "cores in all three): median per-round ratio "
            + ", ".join(f"{key}/a {statistics.median(round_ratios[key][i] for i in quiet):.2f}" for key in ("b", "c"))
        )
    cpu_ratios = {key: med["a"]["proxy_cpu_ms"] / med[key]["proxy_cpu_ms"] for key in ("b", "c") if med[key]["proxy_cpu_ms"]}
    if cpu_ratios:
        print(
            "CPU view: bare mitmdump CPU per request / this one's (the capacity ratio while mitmdump is CPU-bound) = "
            + ", ".join(f"{key}/a {ratio:.2f}" for key, ratio in cpu_ratios.items())
        )
    noisy = [s.other_cores for samples in results.samples.values() for s in samples]
    over = sum(1 for n in noisy if n > args.max_other_load)
    print(
        f"other load on the machine during the kept measurements: median {statistics.median(noisy):.2f}, "
        f"max {max(noisy):.2f} cores"
        + (
            f"; {over} of {len(noisy)} above {args.max_other_load:g} (NOISY: other processes competed for the CPU; "
            "prefer a quiet machine for figures to publish)"
            if over
            else " (quiet)"
        )
    )
    calibrations = [s.calibration_ms for samples in results.samples.values() for s in samples]
    spread = max(calibrations) / min(calibrations) - 1 if min(calibrations) > 0 else 0.0
    print(
        f"CPU speed check (fixed loop on mitmdump's CPU before each measurement): {min(calibrations):.1f}..{max(calibrations):.1f} ms"
        + (
            f", a {spread:.0%} spread: the CPU itself ran at different speeds during the run (shared or virtual "
            "machine); trust the median over more rounds (--rounds) rather than any single round"
            if spread > 0.15
            else " (steady)"
        )
    )
    if any(m["errors"] for m in med.values()):
        print("WARNING: some requests failed (socket errors or non-2xx/3xx answers); see the per-round lines")
    return {
        "environment": env,
        "commands": commands,
        "backworks": describe_checkout(args.backworks),
        "parameters": {k: getattr(args, k) for k in ("duration", "warmup", "connections", "threads", "rounds", "max_other_load", "noise_retries", "pin")},
        "medians": med,
        "ratios": {"b/a": med["b"]["rps"] / bare if bare else None, "c/a": med["c"]["rps"] / bare if bare else None},
        "cpu_ratios": cpu_ratios,
        "round_ratios": round_ratios,
        "target_ratio": TARGET_RATIO,
        "target_met": verdicts,
        "samples": {k: [asdict(s) for s in v] for k, v in results.samples.items()},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of discarded load first (default 2; 0: none)")
    parser.add_argument("--connections", type=int, default=8, help="wrk keep-alive connections (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: leave the cores to the proxy)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds a,b,c (default 3)")
    parser.add_argument(
        "--max-other-load",
        type=float,
        default=NOISY_CORES,
        help=f"CPU cores busy outside the benchmark above which a measurement is taken again (default {NOISY_CORES:g})",
    )
    parser.add_argument(
        "--noise-retries", type=int, default=2, help="at most this many re-measurements of a noisy sample (default 2; 0: never)"
    )
    parser.add_argument("--noise-pause", type=float, default=3.0, help="seconds to wait before re-measuring (default 3)")
    parser.add_argument("--json", metavar="FILE", help="also write every sample and the medians to FILE as JSON")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin mitmdump to one CPU and the upstream and wrk to the others, the same for every "
        "configuration (default: on when there are 2 or more CPUs)",
    )
    parser.add_argument(
        "--backworks",
        type=Path,
        default=REPO,
        metavar="DIR",
        help="the checkout whose backworks.py mitmdump loads (default: this one), e.g. a `git worktree` of a commit",
    )
    parser.add_argument("--print-blueprint", action="store_true", help="print the generated bench blueprint")
    parser.add_argument("--keep-logs", action="store_true", help="keep the process logs and print where")
    args = parser.parse_args(argv)
    if not (1 <= args.duration <= 600 and 0 <= args.warmup <= 60 and 1 <= args.rounds <= 50):
        parser.error("bounds: 1 <= --duration <= 600, 0 <= --warmup <= 60, 1 <= --rounds <= 50")
    if not (0 <= args.noise_retries <= 5 and 0 <= args.noise_pause <= 60):
        parser.error("bounds: 0 <= --noise-retries <= 5, 0 <= --noise-pause <= 60")
    if not (1 <= args.threads <= args.connections <= 1000):
        parser.error("bounds: 1 <= --threads <= --connections <= 1000")
    args.backworks = args.backworks.resolve()
    if not (args.backworks / "backworks.py").is_file():
        parser.error(f"--backworks {args.backworks}: no backworks.py there")
    args.proxy_cpus, args.load_cpus = cpu_layout(args.pin)
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that kills every child


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    work = Path(tempfile.mkdtemp(prefix="backworks-bench-"))
    procs = Processes(work)
    results = Results()
    env = environment()
    started = time.monotonic()
    status = 0
    try:
        commands = measure(args, procs, work, results)
        summary = report(args, env, results, commands)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
            print(f"wrote {args.json}")
    except BenchError as exc:
        print(f"bench/throughput.py: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("\nbench/throughput.py: interrupted; stopping every process", file=sys.stderr)
        status = 130
    finally:
        procs.stop_all()
        if args.keep_logs or status not in (0, 130):
            print(f"process logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"total bench time {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
