"""Benchmark: requests/s through Backworks against bare `mitmdump --mode reverse`, in one run.

Run with ``.venv/bin/python bench/throughput.py [--duration 10] [--connections 8] [--rounds 3]``
(``bench/run`` runs it after ``bench/setup.sh`` has installed ``wrk``).

Three upstreams (``backworks demo-backend``, aiohttp) listen on free 127.0.0.1 ports, UP1..UP3.
Up to eight configurations are then measured with ``wrk``, one at a time, never side by side
(they share the machine's cores); f, g and h only when --configs names them:

  a. bare   ``mitmdump --mode reverse:http://127.0.0.1:UP1 -p PORT -q``          GET /users
  b. proxy  the same plus ``-s backworks.py --set blueprint=BENCH.yaml
            --set connection_strategy=lazy``; a ``handler: proxy`` endpoint whose
            pool has one target, UP1                                             GET /users
  c. static the same Backworks process; a ``handler: static`` endpoint          GET /static
  d. pool3  another Backworks process, same blueprint except that the pool has
            three targets, UP1, UP2 and UP3, balanced round_robin               GET /users
  e. full   another Backworks process ("backworks-full"), b's blueprint with every
            feature on: the one-target pool gets health_check (GET /health on
            UP1 every 1 s), circuit_breaker and outlier_detection (defaults) and
            retries {attempts: 1}; the metrics plugin (Prometheus at /metrics);
            the auth plugin (jwt_secret) with a middleware on /users*, so every
            request's HS256 token is checked (its verified-token cache at its
            default, on: a client reusing its token, as wrk does)    GET /users
                                                 with Authorization: Bearer TOKEN
  f. floor  bare mitmdump plus ``-s bench/floor_addon.py --set connection_strategy=lazy``:
            an addon that only sends the request upstream with Backworks' aiohttp client
            settings and sets the answer (what owning the exchange costs in itself) GET /users
  g. table  bare mitmdump plus ``-s bench/table_addon.py``: Backworks' event table
            (addons/dispatch.py) and nothing else. Backworks dispatches mitmproxy's events
            from that table, bare mitmdump walks every addon per event; b/g and e/g put
            both on the same footing (Backworks' own cost)                    GET /users
  h. walk   e with ``--set backworks_cached_dispatch=false`` (mitmproxy's own dispatch)
                                                 with Authorization: Bearer TOKEN

Rounds are interleaved (a, b, c, d, e, a, b, c, d, e, ...) so that drift of the machine affects
all alike; each round starts its mitmdump processes afresh, checks the answers (d must reach all
three upstreams; e must answer 401 without the token and serve backworks_requests_total at
/metrics), warms up, then measures. The table reports the median over rounds of req/s and of
wrk's latency p50/p99, and the ratios b/a, c/a, d/a and e/a (with g: b/g and e/g). --configs picks a subset (a is
always measured; UP2 and UP3 are started only for d). Every load generator targets 127.0.0.1
only; every loop is bounded in count and time; every child process is killed on exit, error or
Ctrl-C.

To make noise visible rather than silently part of the figures, each measurement also records
the mitmdump process's CPU time per request (/proc), the CPU the rest of the machine used
meanwhile ("other load": everything but mitmdump, the upstreams and wrk; a measurement above
--max-other-load is taken again, at most --noise-retries times), the CPU the load side (the
upstreams and wrk) used, and a fixed-loop calibration of the CPU mitmdump runs on. By default
mitmdump is pinned to one CPU and the upstreams and wrk to the others (--no-pin to turn off).
--backworks DIR measures another checkout, e.g. one commit exported with `git archive`.
"""

from __future__ import annotations

import argparse
import asyncio
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
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from backworks_core.demo_backend import USERS  # noqa: E402

HOST = "127.0.0.1"  # the only address this benchmark ever sends load to
TARGET_RATIO = 0.90  # project target: Backworks with features on within 10% of bare mitmdump
START_TIMEOUT = 30.0  # seconds a process gets to start listening
NOISY_CORES = 0.15  # CPU busy outside the benchmark's own processes above which figures are suspect
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
FLOOR_ADDON = Path(__file__).resolve().parent / "floor_addon.py"  # configuration f's addon (not Backworks)
TABLE_ADDON = Path(__file__).resolve().parent / "table_addon.py"  # configuration g's addon (Backworks' event table only)
NOT_BACKWORKS = {  # configurations that show a footing, with no target of their own
    "f": "the floor: an owned exchange and nothing else",
    "g": "bare mitmdump with Backworks' event table (addons/dispatch.py)",
    "h": "e with backworks_cached_dispatch=false: mitmproxy walks every addon per event, as in a",
}
POOL_SIZE = 3  # targets (separate upstream processes) in configuration d's pool
# Configuration e: the auth plugin's HS256 secret (a constant: the bench needs no secrecy, only a
# key of the size RFC 7518 asks for) and a token signed with it, sub set, expiring in 2100.
BENCH_JWT_SECRET = "backworks-bench-hs256-secret-0123456789abcdef"
BENCH_JWT_EXP = 4_102_444_800  # 2100-01-01T00:00:00Z
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
    """(CPUs for mitmdump, CPUs for the upstreams and wrk): apart, so every configuration gets the
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


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: all bound at once, so the OS cannot hand out one twice."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


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


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET `url`; an HTTP error status is returned like any other answer, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _NO_PROXY_OPENER.open(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


# -- configurations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    process: str  # which mitmdump process serves it: "bare", "backworks", "backworks-pool" or "backworks-full"
    path: str
    check: Callable[[int, dict[str, str], bytes], str | None]  # None when the answer is right
    authorized: bool = False  # requests (the check's and wrk's) carry `Authorization: Bearer <bench_token()>`


def _check_bare(status: int, headers: dict[str, str], body: bytes) -> str | None:
    if status != 200 or b'"items"' not in body or headers.get("x-backend") is None:
        return f"expected the upstream's 200 /users answer, got {status} {headers} {body[:200]!r}"
    return None


def _check_proxy(status: int, headers: dict[str, str], body: bytes) -> str | None:
    if status != 200 or b'"items"' not in body or headers.get("x-proxied-by") != "backworks":
        return f"expected the upstream's answer via Backworks' proxy handler, got {status} {headers} {body[:200]!r}"
    return None


def _check_pool(answers: Sequence[tuple[int, dict[str, str], bytes]], names: Sequence[str]) -> str | None:
    """Configuration d: every answer proxied, and round_robin reached every target of the pool."""
    for answer in answers:
        problem = _check_proxy(*answer)
        if problem:
            return problem
    seen = {headers.get("x-backend") for _, headers, _ in answers}
    if seen != set(names):
        return f"expected answers from all of {sorted(names)} over {len(answers)} requests, got {sorted(map(str, seen))}"
    return None


def _check_static(status: int, headers: dict[str, str], body: bytes) -> str | None:
    if status != 200 or headers.get("x-bench") != "static" or b'"items"' not in body:
        return f"expected Backworks' static answer, got {status} {headers} {body[:200]!r}"
    return None


def _check_unauthorized(status: int, headers: dict[str, str], body: bytes) -> str | None:
    """Configuration e without its token: the auth middleware must refuse it."""
    if status != 401 or "bearer" not in headers.get("www-authenticate", "").lower():
        return f"expected the auth middleware's 401 for a request without a token, got {status} {headers} {body[:200]!r}"
    return None


def _check_metrics(status: int, headers: dict[str, str], body: bytes) -> str | None:
    """Configuration e's GET /metrics: the metrics plugin's Prometheus text."""
    if status != 200 or b"backworks_requests_total" not in body:
        return f"expected the metrics plugin's Prometheus text with backworks_requests_total, got {status} {headers} {body[:200]!r}"
    return None


CONFIGS = (
    Config("a", "bare mitmdump --mode reverse", "bare", "/users", _check_bare),
    Config("b", "backworks handler: proxy", "backworks", "/users", _check_proxy),
    Config("c", "backworks handler: static", "backworks", "/static", _check_static),
    Config("d", f"backworks proxy, {POOL_SIZE}-target pool", "backworks-pool", "/users", _check_proxy),
    Config("e", "backworks, every feature on", "backworks-full", "/users", _check_proxy, authorized=True),
    Config("f", "floor: aiohttp exchange only", "floor", "/users", _check_bare),
    Config("g", "bare mitmdump + event table", "bare-table", "/users", _check_bare),
    Config("h", "e with mitmproxy's dispatch", "backworks-full-walk", "/users", _check_proxy, authorized=True),
)
PROCESSES = ("bare", "backworks", "backworks-pool", "backworks-full", "floor", "bare-table", "backworks-full-walk")  # mitmdump processes, started in this order each round


def bench_token() -> str:
    """Configuration e's bearer token: HS256 with BENCH_JWT_SECRET, `sub` and a far `exp`."""
    import jwt  # pyjwt: a dependency of Backworks (the auth plugin); only e needs it

    return jwt.encode({"sub": "bench", "exp": BENCH_JWT_EXP}, BENCH_JWT_SECRET, algorithm="HS256")


def upstream_name(index: int) -> str:
    """The upstream's --name, its X-Backend header and its target name in the pool (index from 0)."""
    return "bench-upstream" if index == 0 else f"bench-upstream-{index + 1}"


def with_demo_upstream(prefix: str, body: Callable[[int, Path], Coroutine[Any, Any, None]]) -> None:
    """Run `body(upstream_port, work_dir)` in an event loop beside one `backworks demo-backend` in
    its own process (its CPU is not the caller's), stopped afterwards: the setup of the
    in-process benchmarks (hook_cost, dispatch_cost, trust_cost)."""
    (upstream_port,) = free_ports(1)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        procs = Processes(Path(tmp))
        try:
            name = upstream_name(0)
            procs.start(name, [sys.executable, "-m", "backworks_cli.cli", "demo-backend", "--host", HOST, "--port", str(upstream_port), "--name", name])
            wait_listening(procs, name, upstream_port)
            asyncio.run(body(upstream_port, Path(tmp)))
        finally:
            procs.stop_all()


def bench_blueprint(upstream_ports: Sequence[int]) -> dict[str, object]:
    """What a real blueprint looks like: a proxy pool with a header transform, a static endpoint
    with a header, and some other endpoints so the router is not trivially one route. The pool
    has one target per port in `upstream_ports`, balanced round_robin (the default; said outright
    when there are several, so that the one-target blueprint stays as it always was)."""
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
                    "targets": [
                        {"name": upstream_name(i), "url": f"http://{HOST}:{port}"} for i, port in enumerate(upstream_ports)
                    ],
                    **({"load_balancing": "round_robin"} if len(upstream_ports) > 1 else {}),  # the default, said
                    "transform_response": {"headers": {"X-Proxied-By": "backworks"}},
                }
            }
        },
        "endpoints": endpoints,
    }


def full_blueprint(upstream_port: int) -> dict[str, object]:
    """Configuration e: bench_blueprint with one target and every feature on. The pool gets active
    health checks (the demo backend's GET /health, every second), a circuit breaker and outlier
    detection (their defaults) and retries; the metrics plugin serves Prometheus at /metrics; the
    middlewares, in the order a user would list them: CORS, a rate limit per client address that
    the load never reaches (the bucket is still taken from on every request), the auth plugin
    verifying an HS256 bearer token on every /users request, fault injection switched on only by
    its header (never sent here); request bodies limited to 1 MB."""
    blueprint = bench_blueprint([upstream_port])
    blueprint["name"] = "backworks-bench-full"
    plugins = blueprint["plugins"]
    assert isinstance(plugins, dict)
    proxy = plugins["proxy"]["config"]
    proxy["health_check"] = {"path": "/health", "interval": 1}
    proxy["circuit_breaker"] = {}
    proxy["outlier_detection"] = {}
    proxy["retries"] = {"attempts": 1}
    plugins["metrics"] = {}
    plugins["auth"] = {"config": {"jwt_secret": BENCH_JWT_SECRET}}
    blueprint["server"] = {"max_body_size": "1mb"}
    blueprint["middlewares"] = [
        {"name": "browsers", "plugin": "cors", "config": {"path": "/*", "origins": ["https://app.example.com"], "credentials": True}},
        {"name": "per-client", "plugin": "rate_limit", "config": {"path": "/*", "requests": 1_000_000, "per": "1s"}},
        {"name": "members", "plugin": "auth", "config": {"path": "/users*"}},
        {"name": "chaos", "plugin": "fault", "config": {"path": "/*", "allow_header": True}},
    ]
    return blueprint


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
    upstream_cpu_ms: float = 0.0  # CPU time of the upstreams (all of them) per request
    upstream_shares: list[float] = field(default_factory=list)  # each upstream's part of that CPU time
    load_cores: float = 0.0  # CPU busy in the upstreams and wrk (the load side), in cores
    other_cores: float = 0.0  # CPU busy on the machine outside mitmdump, the upstreams and wrk (noise)
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


def run_wrk(
    url: str,
    seconds: float,
    connections: int,
    threads: int,
    lua: Path,
    cpus: set[int] | None = None,
    headers: Sequence[str] = (),
) -> Sample:
    assert url.startswith(f"http://{HOST}:"), url  # never load anything but localhost
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        *(arg for header in headers for arg in ("-H", header)),
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


def measure_one(
    url: str, args: argparse.Namespace, lua: Path, proxy_pid: int, upstream_pids: Sequence[int], headers: Sequence[str] = ()
) -> Sample:
    """One wrk run, with the CPU the proxy, the upstreams, wrk and everything else used meanwhile.
    Every upstream that runs is the benchmark's own, busy or idle, so none of it counts as noise."""
    calibration = calibration_ms(args.proxy_cpus)
    cpu0, ups0, wall0 = cpu_seconds(proxy_pid), [cpu_seconds(pid) for pid in upstream_pids], time.monotonic()
    sys0, wrk0 = system_busy_seconds(), children_cpu_seconds()
    sample = run_wrk(url, args.duration, args.connections, args.threads, lua, args.load_cpus, headers)
    cpu1, ups1, wall1 = cpu_seconds(proxy_pid), [cpu_seconds(pid) for pid in upstream_pids], time.monotonic()
    sys1, wrk1 = system_busy_seconds(), children_cpu_seconds()
    wall = max(wall1 - wall0, 1e-9)
    upstreams = [after - before for before, after in zip(ups0, ups1, strict=True)]
    ours = (cpu1 - cpu0) + sum(upstreams) + (wrk1 - wrk0)
    sample.other_cores = max(0.0, (sys1 - sys0) - ours) / wall
    sample.load_cores = (sum(upstreams) + (wrk1 - wrk0)) / wall
    sample.proxy_cpu_util = (cpu1 - cpu0) / wall
    sample.calibration_ms = calibration
    if sum(upstreams) > 0:
        sample.upstream_shares = [u / sum(upstreams) for u in upstreams]
    if sample.requests:
        sample.proxy_cpu_ms = (cpu1 - cpu0) * 1e3 / sample.requests
        sample.upstream_cpu_ms = sum(upstreams) * 1e3 / sample.requests
    return sample


def measure(args: argparse.Namespace, procs: Processes, work: Path, results: Results) -> dict[str, list[str]]:
    mitmdump = mitmdump_path()
    lua = work / "report.lua"
    lua.write_text(WRK_LUA)
    configs = selected(args)
    processes = [p for p in PROCESSES if any(c.process == p for c in configs)]

    # UP1 serves a, b and d; UP2.. only d's pool. All are started once, before the first round,
    # and all stay up (idle or not) until the end: every one is counted as the benchmark's own.
    upstream_count = POOL_SIZE if "backworks-pool" in processes else 1
    upstream_ports = free_ports(upstream_count)
    upstream_argvs = []
    for index, port in enumerate(upstream_ports):
        argv = [sys.executable, "-m", "backworks_cli.cli", "demo-backend", "--host", HOST, "--port", str(port), "--name", upstream_name(index)]
        upstream_argvs.append(argv)
        procs.start(upstream_name(index), argv, args.load_cpus)
    for index, port in enumerate(upstream_ports):
        wait_listening(procs, upstream_name(index), port)
    upstream_pids = [procs.running[upstream_name(i)].pid for i in range(upstream_count)]

    blueprints = {"backworks": work / "bench-blueprint.yaml", "backworks-pool": work / f"bench-blueprint-pool{POOL_SIZE}.yaml"}
    blueprints["backworks"].write_text(yaml.safe_dump(bench_blueprint(upstream_ports[:1]), sort_keys=False))
    if "backworks-pool" in processes:
        blueprints["backworks-pool"].write_text(yaml.safe_dump(bench_blueprint(upstream_ports), sort_keys=False))
    token = bench_token() if any(c.authorized for c in configs) else ""
    if "backworks-full" in processes or "backworks-full-walk" in processes:
        blueprints["backworks-full"] = blueprints["backworks-full-walk"] = work / "bench-blueprint-full.yaml"
        blueprints["backworks-full"].write_text(yaml.safe_dump(full_blueprint(upstream_ports[0]), sort_keys=False))
    mode = f"reverse:http://{HOST}:{upstream_ports[0]}"
    # Checkouts with the admin listener (addons/admin.py) serve /metrics there, on a free port of
    # each process's own; older ones (a previous main) on the proxy's listener.
    admin_listener = (args.backworks / "addons" / "admin.py").exists()
    admin_ports: dict[str, int] = {}

    def argv_for(process: str, port: int | str) -> list[str]:
        argv = [mitmdump, "--mode", mode, "-p", str(port), "--listen-host", HOST, "-q"]
        if process in blueprints:
            argv += ["-s", str(args.backworks / "backworks.py"), "--set", f"blueprint={blueprints[process]}", "--set", "connection_strategy=lazy"]
            if admin_listener:
                argv += ["--set", f"backworks_admin={HOST}:{admin_ports.get(process, 'ADMIN_PORT')}"]
            if process == "backworks-full-walk":
                argv += ["--set", "backworks_cached_dispatch=false"]
        elif process == "floor":
            argv += ["-s", str(FLOOR_ADDON), "--set", "connection_strategy=lazy"]
        elif process == "bare-table":
            argv += ["-s", str(TABLE_ADDON)]
        return argv

    commands: dict[str, list[str]] = {upstream_name(i): argv for i, argv in enumerate(upstream_argvs)}
    commands.update({process: argv_for(process, "PORT") for process in processes})
    commands["wrk"] = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{round(args.duration)}s", "--timeout", "5s", "-s", "report.lua", "URL"]
    if token:
        commands["wrk (e)"] = commands["wrk"][:-3] + ["-H", "'Authorization: Bearer TOKEN'"] + commands["wrk"][-3:]
    for name, argv in commands.items():
        print(f"{name}: {' '.join(argv)}", flush=True)
    print(f"backworks code: {describe_checkout(args.backworks)}", flush=True)
    if args.proxy_cpus:
        print(
            f"pinned: mitmdump on CPU {','.join(map(str, sorted(args.proxy_cpus)))}; the {upstream_count} upstream(s) and wrk "
            f"on CPU {','.join(map(str, sorted(args.load_cpus or ())))} (--no-pin to let the scheduler place them)",
            flush=True,
        )
    if args.print_blueprint:
        for process in processes:
            if process in blueprints:
                print(f"\n# {blueprints[process]}\n{blueprints[process].read_text()}", flush=True)
    print(flush=True)

    def get(config: Config, process: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        try:
            return fetch(url, headers)
        except OSError as exc:
            time.sleep(0.5)  # let a crashing process finish writing its log
            raise BenchError(f"{config.key} ({config.label}): GET {url} failed: {exc}\n{procs.log_tail(process)}") from None

    def check(config: Config, process: str, url: str) -> None:
        tries = 1 if config.key != "d" else 2 * POOL_SIZE  # round_robin: every target within POOL_SIZE
        headers = {"Authorization": f"Bearer {token}"} if config.authorized else None
        answers = [get(config, process, url, headers) for _ in range(tries)]
        if config.key == "d":
            problem = _check_pool(answers, [upstream_name(i) for i in range(upstream_count)])
        else:
            problem = config.check(*answers[0])
        if not problem and config.authorized:  # auth is really on: no token, no answer
            problem = _check_unauthorized(*get(config, process, url))
        if not problem and config.key in ("e", "h"):  # metrics are really on, and counted the requests above
            if admin_listener:
                wait_listening(procs, process, admin_ports[process])
            base = f"http://{HOST}:{admin_ports[process]}" if admin_listener else url.rsplit(config.path, 1)[0]
            problem = _check_metrics(*get(config, process, f"{base}/metrics"))
        if problem:
            raise BenchError(f"{config.key} ({config.label}) answers wrongly: {problem}")

    for round_no in range(1, args.rounds + 1):
        for process in processes:
            port = free_port()
            admin_ports[process] = free_port()
            procs.start(process, argv_for(process, port), args.proxy_cpus)
            try:
                wait_listening(procs, process, port)
                for config in (c for c in configs if c.process == process):
                    url = f"http://{HOST}:{port}{config.path}"
                    wrk_headers = [f"Authorization: Bearer {token}"] if config.authorized else []
                    check(config, process, url)
                    if args.warmup > 0:
                        run_wrk(url, args.warmup, args.connections, args.threads, lua, args.load_cpus, wrk_headers)
                    sample = measure_one(url, args, lua, procs.running[process].pid, upstream_pids, wrk_headers)
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
                        sample = measure_one(url, args, lua, procs.running[process].pid, upstream_pids, wrk_headers)
                    for name in (process, *(upstream_name(i) for i in range(upstream_count))):
                        if procs.running[name].poll() is not None:
                            raise BenchError(f"{name} died during the run:\n{procs.log_tail(name)}")
                    results.samples[config.key].append(sample)
                    split = (
                        "  upstream CPU split " + "/".join(f"{share:.0%}" for share in sample.upstream_shares)
                        if config.key == "d" and sample.upstream_shares
                        else ""
                    )
                    print(
                        f"round {round_no}/{args.rounds}  {config.key}  {config.label:<30} "
                        f"{sample.rps:8.1f} req/s  p50 {sample.p50_ms:6.2f} ms  p99 {sample.p99_ms:6.2f} ms  "
                        f"mitmdump CPU {sample.proxy_cpu_ms:5.3f} ms/req ({sample.proxy_cpu_util:4.0%} of a core)"
                        + f"  upstreams+wrk {sample.load_cores:.2f} cores  other load {sample.other_cores:.2f} cores"
                        + f"  calibration {sample.calibration_ms:.1f} ms"
                        + split
                        + (f"  ERRORS {sample.errors}" if sample.errors else ""),
                        flush=True,
                    )
            finally:
                procs.stop(process)
            time.sleep(0.5)  # let the stopped process release its CPU before the next starts
    return commands


def selected(args: argparse.Namespace) -> list[Config]:
    return [c for c in CONFIGS if c.key in args.configs]


def report(args: argparse.Namespace, env: dict[str, str], results: Results, commands: dict[str, list[str]]) -> dict[str, object]:
    configs = selected(args)
    others = [c.key for c in configs if c.key != "a"]
    med: dict[str, dict[str, float]] = {}
    for config in configs:
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
            "load_cores": statistics.median(s.load_cores for s in samples),
        }
    bare = med["a"]["rps"]
    round_ratios = {
        key: [b.rps / a.rps for a, b in zip(results.samples["a"], results.samples[key], strict=True)] for key in others
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
        f"{'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6} | {'CPU ms/req':>10} | {'load cores':>10} | {'vs bare':>7}"
    )
    print(header)
    print("-" * len(header))
    for config in configs:
        m = med[config.key]
        ratio = m["rps"] / bare if bare else float("nan")
        span = f"{m['rps_min']:.0f}..{m['rps_max']:.0f}"
        print(
            f"{config.key:1} | {config.label:<30} | {m['rps']:>8.1f} | {span:>15} | "
            f"{m['p50_ms']:>7.2f} | {m['p99_ms']:>7.2f} | {int(m['errors']):>6} | "
            f"{m['proxy_cpu_ms']:>10.3f} | {m['load_cores']:>10.2f} | {ratio:>7.2f}"
        )
    print()
    print(
        "CPU ms/req: CPU time (user+system) of the mitmdump process per request, median over rounds; "
        "mitmdump runs on one core, so req/s <= 1000 / CPU ms/req."
    )
    load_cpus = len(args.load_cpus) if args.load_cpus else None
    print(
        "load cores: CPU busy in the upstreams and wrk together, median over rounds"
        + (
            f"; they are pinned to {load_cpus} CPU(s), so a figure near {load_cpus} means the load side, "
            "not mitmdump, limited the rate"
            if load_cpus
            else ""
        )
        + "."
    )
    print()
    what = {"b": "proxy", "c": "static", "d": "pool3", "e": "full", "f": "floor", "g": "table", "h": "walk"}
    verdicts: dict[str, bool] = {}
    for key in others:
        ratio = med[key]["rps"] / bare if bare else float("nan")
        per_round = ", ".join(f"{r:.2f}" for r in round_ratios[key])
        line = f"ratio {key}/a ({what[key]:<6}) = {ratio:.2f}   per round: {per_round} (median {statistics.median(round_ratios[key]):.2f})"
        if key in NOT_BACKWORKS:  # the target is not theirs to meet
            print(line + f"   ({NOT_BACKWORKS[key]})")
            continue
        meets = ratio >= TARGET_RATIO
        verdicts[key] = meets
        print(line + f"   target >= {TARGET_RATIO:.2f}: {'MET' if meets else 'NOT MET'}")
    if "g" in med:  # Backworks against bare mitmdump, both dispatching from the event table
        for key in (k for k in ("b", "e") if k in med):
            same_footing = [x.rps / g.rps for g, x in zip(results.samples["g"], results.samples[key], strict=True)]
            print(
                f"ratio {key}/g ({what[key]:<6}, both with the event table: Backworks' own cost) = {med[key]['rps'] / med['g']['rps']:.2f}   "
                f"per round: {', '.join(f'{r:.2f}' for r in same_footing)}"
            )
    pool_vs_single: list[float] = []
    if "b" in med and "d" in med:
        pool_vs_single = [d.rps / b.rps for b, d in zip(results.samples["b"], results.samples["d"], strict=True)]
        print(
            f"ratio d/b (pool of {POOL_SIZE} / pool of 1, both Backworks) = {med['d']['rps'] / med['b']['rps']:.2f}   "
            f"per round: {', '.join(f'{r:.2f}' for r in pool_vs_single)} (median {statistics.median(pool_vs_single):.2f})"
        )
    if "d" in results.samples and results.samples["d"] and results.samples["d"][0].upstream_shares:
        shares = [statistics.median(s.upstream_shares[i] for s in results.samples["d"]) for i in range(POOL_SIZE)]
        print(f"d: each upstream's share of the upstreams' CPU, median over rounds: {' / '.join(f'{x:.0%}' for x in shares)}")
    quiet = [
        i
        for i in range(len(results.samples["a"]))
        if all(results.samples[c.key][i].other_cores <= args.max_other_load for c in configs)
    ]
    if quiet and len(quiet) < len(results.samples["a"]) and others:
        print(
            f"quiet rounds only ({len(quiet)} of {len(results.samples['a'])}, other load <= {args.max_other_load:g} "
            f"cores in all {len(configs)}): median per-round ratio "
            + ", ".join(f"{key}/a {statistics.median(round_ratios[key][i] for i in quiet):.2f}" for key in others)
        )
    cpu_ratios = {key: med["a"]["proxy_cpu_ms"] / med[key]["proxy_cpu_ms"] for key in others if med[key]["proxy_cpu_ms"]}
    if cpu_ratios:
        print(
            "CPU view: bare mitmdump CPU per request / this one's (the capacity ratio while mitmdump is CPU-bound) = "
            + ", ".join(f"{key}/a {ratio:.2f}" for key, ratio in cpu_ratios.items())
        )
    noisy = [s.other_cores for c in configs for s in results.samples[c.key]]
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
    calibrations = [s.calibration_ms for c in configs for s in results.samples[c.key]]
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
    ratios: dict[str, float | None] = {f"{key}/a": med[key]["rps"] / bare if bare else None for key in others}
    if pool_vs_single:
        ratios["d/b"] = med["d"]["rps"] / med["b"]["rps"]
    return {
        "environment": env,
        "commands": commands,
        "backworks": describe_checkout(args.backworks),
        "parameters": {
            k: getattr(args, k)
            for k in ("duration", "warmup", "connections", "threads", "rounds", "max_other_load", "noise_retries", "pin", "configs")
        },
        "medians": med,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "round_ratios": {**round_ratios, **({"d/b": pool_vs_single} if pool_vs_single else {})},
        "target_ratio": TARGET_RATIO,
        "target_met": verdicts,
        "samples": {c.key: [asdict(s) for s in results.samples[c.key]] for c in configs},
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of discarded load first (default 2; 0: none)")
    parser.add_argument("--connections", type=int, default=8, help="wrk keep-alive connections (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: leave the cores to the proxy)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds a,b,c,d,e (default 3)")
    parser.add_argument(
        "--configs",
        default="abcde",
        help="which configurations to measure, e.g. abc to leave out the pool of 3 and every feature on, "
        "abf to add the floor (default abcde; a is always measured)",
    )
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
        help="pin mitmdump to one CPU and the upstreams and wrk to the others, the same for every "
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
    unknown = set(args.configs) - {c.key for c in CONFIGS}
    if unknown:
        parser.error(f"--configs: unknown configuration(s) {''.join(sorted(unknown))} (choose from {''.join(c.key for c in CONFIGS)})")
    args.configs = "a" + "".join(c.key for c in CONFIGS if c.key in args.configs and c.key != "a")
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
