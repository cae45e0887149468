"""Benchmark: recorded flows → blueprint (time, peak memory) against mitmproxy2swagger, and mock
serving (req/s) against mitmproxy's own ``--server-replay``, on the same recordings.

Run with ``.venv/bin/python bench/capture_cost.py [--flows 100000] [--replay-flows 2000]
[--rounds 3] [--duration 10] [--json FILE] [--keep DIR]``. ``bench/run`` runs it with the
defaults (or with ``$CAPTURE_COST_ARGS``) after ``bench/setup.sh`` has installed ``wrk``; the
conversion figures in docs/performance.md are from a run with ``--no-serve`` (about 9 minutes on a
busy machine), the serving ones from a run with the defaults (about 10 minutes).

1. Input. A mitmproxy flow file of --flows flows is generated with ``mitmproxy.io.FlowWriter``
   from hand-built ``http.HTTPFlow``s: one host (``api.example.com``), 30 endpoints under
   ``/api/v1`` (integer ids, UUIDs, sub-collections, literal words beside ids such as
   ``/users/me`` and ``/products/search``, list endpoints with query parameters, POST/PUT/PATCH/
   DELETE with JSON bodies), JSON answers of a few hundred bytes, statuses mostly 200 with some
   201 and 404, timestamps a few tens of milliseconds apart. The generator is seeded: the same
   --flows give the same file, and one request (method, path, query) always gets the same answer
   body, so that any recorded answer to it is *the* recorded answer. Files are written to a
   temporary directory, or kept in --keep DIR and reused from there.

2. Backworks. ``backworks mock-from FLOWS -o OUT.yaml`` as a child process: wall time, CPU time
   and peak RSS (``os.wait4``'s ``ru_maxrss`` of the child); then ``backworks validate OUT.yaml``
   and the number of endpoints, against the generator's 30.

3. mitmproxy2swagger (``--m2s-spec``, default ``mitmproxy2swagger==0.14.0``), installed for this
   benchmark only into its own venv in the temporary directory (or --keep DIR), never into the
   project's .venv (``pip check`` of .venv is run before and after). It is run the way its README
   says, and measured the same way, in two passes:
     pass 1  ``mitmproxy2swagger -i FLOWS -o spec.yaml -p http://api.example.com/api/v1 -f flow``
             writes no paths, only ``x-path-templates`` (each ``ignore:``-prefixed) for review;
     pass 2  the same command again after the review a user does: every template un-ignored,
             with concrete ids replaced by ``{id}`` (its own suggestion for integer segments; UUID
             segments, which its default ``--param-regex [0-9]+`` does not suggest, replaced the
             same way by this script), literal templates first (its matching is first-match), so
             the spec gets its paths; the endpoints counted are its (path, method) pairs.
   A pass that fails or exceeds --tool-timeout is reported as such; --m2s-flows N also measures it
   on the first N flows (a smaller file from the same generator).

4. Mock serving. A smaller recording (--replay-flows, default 2,000, same generator) is turned into
   a blueprint by mock-from and served by
     backworks  ``mitmdump -s backworks.py --mode reverse:http://127.0.0.1:9 --set blueprint=B
                --set connection_strategy=lazy -p PORT``
     replay     ``mitmdump --mode reverse:http://127.0.0.1:9 --server-replay FLOWS
                --set server_replay_reuse=true --set server_replay_extra=404
                --set server_replay_ignore_host=true --set server_replay_ignore_port=true
                --set connection_strategy=lazy -p PORT``
   (server replay matches method, path, query and body; host and port are ignored because wrk's
   Host is 127.0.0.1:PORT, not the recorded one). The load is up to --paths (50) recorded GET
   requests that *both* answer 200 with the recorded body (compared as JSON); each is checked
   before measuring, in every round. A wrk Lua script cycles through them. Rounds are interleaved
   (backworks, replay, backworks, ...), each process started afresh, warmed up, then measured as
   bench/throughput.py does (its run_wrk, Lua report hook and CPU accounting), mitmdump pinned to
   one CPU and wrk to the other(s). Reported: the median over rounds of req/s, p50/p99, mitmdump's
   CPU per request, and the ratio backworks/replay.

Everything listens on and is loaded at 127.0.0.1 only; every loop is bounded in count and time;
every child (tools, mitmdumps, wrk) is killed on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import yaml  # noqa: E402

from throughput import (  # noqa: E402  - the sibling benchmark's process, wrk and CPU helpers
    HOST,
    INSTALL_HINT,
    WRK_LUA,
    BenchError,
    Processes,
    children_cpu_seconds,
    cpu_layout,
    cpu_seconds,
    describe_checkout,
    environment,
    fetch,
    free_port,
    mitmdump_path,
    run_wrk,
    system_busy_seconds,
    wait_listening,
)

API_HOST = "api.example.com"  # the one recorded host
API_PREFIX = f"http://{API_HOST}/api/v1"
EPOCH = 1_795_680_000.0  # 2026-11-26T08:00:00Z, where the recording starts
M2S_SPEC = "mitmproxy2swagger==0.14.0"
TOOL_TIMEOUT = 1800.0  # seconds one conversion may take before it is killed
USERS, PRODUCTS, CATEGORIES = 5_000, 2_000, 40  # id pools; ids above them answer 404
UUID_POOL = 3_000  # orders, carts and invoices each draw from this many UUIDs
MISS_RATE = 0.03  # share of id lookups for ids that do not exist (404)
STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled")
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima")

# (method, router template, relative weight). The 30 endpoints the recording has; a good
# inference finds exactly these (int ids become {x:int}, UUIDs {x:uuid}; names may differ).
ENDPOINTS: tuple[tuple[str, str, int], ...] = (
    ("GET", "/api/v1/users", 6),
    ("POST", "/api/v1/users", 1),
    ("GET", "/api/v1/users/me", 6),
    ("GET", "/api/v1/users/{int}", 12),
    ("PUT", "/api/v1/users/{int}", 1),
    ("DELETE", "/api/v1/users/{int}", 1),
    ("GET", "/api/v1/users/{int}/orders", 6),
    ("GET", "/api/v1/users/{int}/addresses", 2),
    ("GET", "/api/v1/orders", 4),
    ("POST", "/api/v1/orders", 2),
    ("GET", "/api/v1/orders/{uuid}", 10),
    ("PATCH", "/api/v1/orders/{uuid}", 1),
    ("GET", "/api/v1/orders/{uuid}/items", 5),
    ("POST", "/api/v1/orders/{uuid}/cancel", 1),
    ("GET", "/api/v1/products", 8),
    ("GET", "/api/v1/products/search", 4),
    ("GET", "/api/v1/products/{int}", 12),
    ("GET", "/api/v1/products/{int}/reviews", 4),
    ("POST", "/api/v1/products/{int}/reviews", 1),
    ("GET", "/api/v1/categories", 2),
    ("GET", "/api/v1/categories/{int}", 2),
    ("GET", "/api/v1/carts/{uuid}", 4),
    ("POST", "/api/v1/carts/{uuid}/items", 2),
    ("DELETE", "/api/v1/carts/{uuid}/items/{int}", 1),
    ("POST", "/api/v1/auth/login", 2),
    ("POST", "/api/v1/auth/refresh", 2),
    ("GET", "/api/v1/notifications", 3),
    ("GET", "/api/v1/invoices/{uuid}", 2),
    ("GET", "/api/v1/invoices/{uuid}/lines", 2),
    ("GET", "/api/v1/health", 2),
)


# -- the recording -----------------------------------------------------------------------------


def _uuid(kind: str, n: int) -> str:
    return str(uuid.UUID(int=random.Random(f"{kind}-{n}").getrandbits(128), version=4))


def _person(user: int) -> dict[str, Any]:
    r = random.Random(f"user-{user}")
    first, last = r.choice(WORDS).title(), r.choice(WORDS).title()
    return {
        "id": user,
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}{user}@example.com",
        "role": r.choice(("member", "member", "member", "admin")),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH - r.randrange(10**8))),
        "active": r.random() > 0.1,
    }


def _product(product: int) -> dict[str, Any]:
    r = random.Random(f"product-{product}")
    return {
        "id": product,
        "sku": f"SKU-{product:06d}",
        "name": f"{r.choice(WORDS).title()} {r.choice(WORDS)} {r.randrange(100, 999)}",
        "price": {"amount": r.randrange(99, 99_999) / 100, "currency": "EUR"},
        "category_id": r.randrange(1, CATEGORIES + 1),
        "stock": r.randrange(0, 500),
        "tags": r.sample(WORDS, 3),
    }


def _order(n: int) -> dict[str, Any]:
    r = random.Random(f"order-{n}")
    return {
        "id": _uuid("order", n),
        "user_id": r.randrange(1, USERS + 1),
        "status": r.choice(STATUSES),
        "total": {"amount": r.randrange(500, 500_000) / 100, "currency": "EUR"},
        "items": r.randrange(1, 8),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH - r.randrange(10**7))),
    }


def _page(kind: str, seed: str, size: int, make: Any) -> dict[str, Any]:
    r = random.Random(seed)
    return {"items": [make(r.randrange(1, {"u": USERS, "p": PRODUCTS, "o": UUID_POOL}[kind] + 1)) for _ in range(size)], "page": None, "total": None}


NOT_FOUND = {"error": "not_found", "message": "no such resource"}


class Recording:
    """Builds one flow after another; deterministic for a given seed."""

    def __init__(self, seed: int = 8) -> None:
        self.r = random.Random(seed)
        self.clock = EPOCH
        self.weights = [w for _, _, w in ENDPOINTS]
        self.created = 0

    def _id(self, pool: int) -> tuple[int, bool]:
        if self.r.random() < MISS_RATE:
            return pool + self.r.randrange(1, 10 * pool), False
        return self.r.randrange(1, pool + 1), True

    def _uuid(self, kind: str) -> tuple[str, int | None]:
        if self.r.random() < MISS_RATE:
            return str(uuid.UUID(int=self.r.getrandbits(128), version=4)), None
        n = self.r.randrange(1, UUID_POOL + 1)
        return _uuid(kind, n), n

    def exchange(self) -> tuple[str, str, dict[str, str], Any, int, Any]:
        """(method, path with query, query, request JSON or None, status, response JSON)."""
        method, template, _ = self.r.choices(ENDPOINTS, self.weights)[0]
        r = self.r
        query: dict[str, str] = {}
        body: Any = None
        status, answer = 200, None
        if template == "/api/v1/users":
            if method == "GET":
                page = r.randrange(1, 6)
                query = {"page": str(page), "per_page": "3"}
                answer = _page("u", f"users-{page}", 3, _person) | {"page": page, "total": USERS}
            else:
                self.created += 1
                body = {"name": f"{r.choice(WORDS).title()} {r.choice(WORDS).title()}", "email": f"new{self.created}@example.com"}
                status, answer = 201, _person(USERS + self.created) | body
        elif template == "/api/v1/users/me":
            answer = _person(1) | {"permissions": ["orders:read", "orders:write", "profile:write"]}
        elif template.startswith("/api/v1/users/{int}"):
            user, exists = self._id(USERS)
            path_vars = [str(user)]
            if not exists:
                status, answer = 404, NOT_FOUND
            elif template.endswith("/orders"):
                state = r.choice(STATUSES)
                query = {"status": state}
                answer = {"items": [_order(n) | {"user_id": user, "status": state} for n in random.Random(f"uo-{user}-{state}").sample(range(1, UUID_POOL + 1), 2)]}
            elif template.endswith("/addresses"):
                rr = random.Random(f"addr-{user}")
                answer = {"items": [{"id": i, "street": f"{rr.randrange(1, 300)} {rr.choice(WORDS).title()} Street", "city": rr.choice(WORDS).title(), "country": "DE"} for i in (1, 2)]}
            elif method == "GET":
                answer = _person(user)
            elif method == "PUT":
                body = {"name": f"{r.choice(WORDS).title()} {r.choice(WORDS).title()}", "active": r.random() > 0.5}
                answer = _person(user) | body
            else:
                answer = {"deleted": True, "id": user}
            return self._finish(method, template, path_vars, query, body, status, answer)
        elif template == "/api/v1/orders":
            if method == "GET":
                state, page = r.choice(STATUSES), r.randrange(1, 4)
                query = {"status": state, "page": str(page)}
                answer = _page("o", f"orders-{state}-{page}", 2, _order) | {"page": page, "total": 120}
            else:
                body = {"user_id": r.randrange(1, USERS + 1), "items": [{"product_id": r.randrange(1, PRODUCTS + 1), "quantity": r.randrange(1, 4)}]}
                status, answer = 201, {"id": str(uuid.UUID(int=r.getrandbits(128), version=4)), "status": "pending"} | body
        elif template.startswith("/api/v1/orders/{uuid}"):
            order, n = self._uuid("order")
            if n is None:
                status, answer = 404, NOT_FOUND
            elif template.endswith("/items"):
                rr = random.Random(f"items-{n}")
                answer = {"order_id": order, "items": [{"product_id": p, "quantity": rr.randrange(1, 4), "price": _product(p)["price"]} for p in rr.sample(range(1, PRODUCTS + 1), 3)]}
            elif template.endswith("/cancel"):
                body = {"reason": r.choice(("changed_mind", "too_slow", "duplicate"))}
                answer = _order(n) | {"status": "cancelled"}
            elif method == "PATCH":
                body = {"status": r.choice(STATUSES)}
                answer = _order(n) | body
            else:
                answer = _order(n)
            return self._finish(method, template, [order], query, body, status, answer)
        elif template == "/api/v1/products":
            category, page = r.randrange(1, CATEGORIES + 1), r.randrange(1, 4)
            query = {"category": str(category), "page": str(page), "sort": r.choice(("price", "-price", "name"))}
            answer = _page("p", f"products-{category}-{page}-{query['sort']}", 3, _product) | {"page": page, "total": 50}
        elif template == "/api/v1/products/search":
            q = r.choice(WORDS)
            query = {"q": q}
            answer = _page("p", f"search-{q}", 3, _product) | {"query": q}
        elif template.startswith("/api/v1/products/{int}"):
            product, exists = self._id(PRODUCTS)
            if not exists:
                status, answer = 404, NOT_FOUND
            elif template.endswith("/reviews") and method == "GET":
                rr = random.Random(f"reviews-{product}")
                answer = {"product_id": product, "items": [{"user_id": rr.randrange(1, USERS + 1), "stars": rr.randrange(1, 6), "text": " ".join(rr.sample(WORDS, 5))} for _ in range(2)]}
            elif template.endswith("/reviews"):
                body = {"stars": r.randrange(1, 6), "text": " ".join(r.sample(WORDS, 6))}
                status, answer = 201, {"product_id": product, "id": r.randrange(1, 10**6)} | body
            else:
                answer = _product(product)
            return self._finish(method, template, [str(product)], query, body, status, answer)
        elif template == "/api/v1/categories":
            answer = {"items": [{"id": c, "name": WORDS[c % len(WORDS)].title() + f" {c}"} for c in range(1, 9)], "total": CATEGORIES}
        elif template == "/api/v1/categories/{int}":
            category, exists = self._id(CATEGORIES)
            status, answer = (200, {"id": category, "name": WORDS[category % len(WORDS)].title() + f" {category}", "products": 50}) if exists else (404, NOT_FOUND)
            return self._finish(method, template, [str(category)], query, body, status, answer)
        elif template.startswith("/api/v1/carts/{uuid}"):
            cart, n = self._uuid("cart")
            if n is None:
                status, answer = 404, NOT_FOUND
                path_vars = [cart] + ([str(r.randrange(1, PRODUCTS + 1))] if template.endswith("{int}") else [])
            elif template.endswith("/items"):
                body = {"product_id": r.randrange(1, PRODUCTS + 1), "quantity": r.randrange(1, 4)}
                status, answer = 201, {"cart_id": cart, "items": [body], "updated_at": self._stamp()}
                path_vars = [cart]
            elif template.endswith("{int}"):
                product = r.randrange(1, PRODUCTS + 1)
                answer = {"cart_id": cart, "removed": product, "items": []}
                path_vars = [cart, str(product)]
            else:
                rr = random.Random(f"cart-{n}")
                answer = {"id": cart, "user_id": rr.randrange(1, USERS + 1), "items": [{"product_id": p, "quantity": 1} for p in rr.sample(range(1, PRODUCTS + 1), 2)], "currency": "EUR"}
                path_vars = [cart]
            return self._finish(method, template, path_vars, query, body, status, answer)
        elif template == "/api/v1/auth/login":
            user = r.randrange(1, USERS + 1)
            body = {"email": _person(user)["email"], "password": "correct horse battery staple"}
            answer = {"access_token": f"eyJhbGciOiJIUzI1NiJ9.{r.getrandbits(160):x}.{r.getrandbits(128):x}", "token_type": "Bearer", "expires_in": 3600}
        elif template == "/api/v1/auth/refresh":
            body = {"refresh_token": f"{r.getrandbits(256):x}"}
            answer = {"access_token": f"eyJhbGciOiJIUzI1NiJ9.{r.getrandbits(160):x}.{r.getrandbits(128):x}", "token_type": "Bearer", "expires_in": 3600}
        elif template == "/api/v1/notifications":
            unread = r.choice(("true", "false"))
            query = {"unread": unread, "limit": "5"}
            answer = {"items": [{"id": i, "kind": WORDS[i % len(WORDS)], "read": unread == "false"} for i in range(1, 6)], "unread": 5 if unread == "true" else 0}
        elif template.startswith("/api/v1/invoices/{uuid}"):
            invoice, n = self._uuid("invoice")
            if n is None:
                status, answer = 404, NOT_FOUND
            elif template.endswith("/lines"):
                rr = random.Random(f"lines-{n}")
                answer = {"invoice_id": invoice, "lines": [{"sku": f"SKU-{rr.randrange(1, PRODUCTS):06d}", "amount": rr.randrange(100, 20_000) / 100} for _ in range(3)]}
            else:
                rr = random.Random(f"invoice-{n}")
                answer = {"id": invoice, "order_id": _uuid("order", n), "total": {"amount": rr.randrange(500, 500_000) / 100, "currency": "EUR"}, "due": "2026-12-31"}
            return self._finish(method, template, [invoice], query, body, status, answer)
        elif template == "/api/v1/health":
            answer = {"status": "ok", "version": "4.2.1"}
        return self._finish(method, template, [], query, body, status, answer)

    def _stamp(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock))

    def _finish(self, method: str, template: str, path_vars: list[str], query: dict[str, str], body: Any, status: int, answer: Any) -> tuple[str, str, dict[str, str], Any, int, Any]:
        path = template
        for value in path_vars:
            path = re.sub(r"\{(int|uuid)\}", value, path, count=1)
        if query:
            path += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        return method, path, query, body, status, answer

    def flow(self):  # type: ignore[no-untyped-def]
        from mitmproxy import connection, http

        method, path, _, body, status, answer = self.exchange()
        self.clock += self.r.expovariate(1 / 0.05)  # ~20 requests/s
        started = self.clock
        duration = 0.004 + self.r.expovariate(1 / 0.03)
        client = connection.Client(peername=("10.0.0.7", 40_000 + self.r.randrange(20_000)), sockname=("10.0.0.2", 8080), timestamp_start=started)
        client.timestamp_end = started + duration + 0.001
        server = connection.Server(address=(API_HOST, 80), peername=("203.0.113.10", 80), sockname=("10.0.0.2", 50_000), timestamp_start=started)
        server.timestamp_tcp_setup = started + 0.001
        server.timestamp_end = started + duration + 0.001
        flow = http.HTTPFlow(client, server)
        content = json.dumps(body).encode() if body is not None else b""
        headers = [(b"Host", API_HOST.encode()), (b"User-Agent", b"shop-app/3.8.1 (Android 14)"), (b"Accept", b"application/json"), (b"Authorization", b"Bearer eyJhbGciOiJIUzI1NiJ9.c2hvcC1hcHA.c2lnbmF0dXJl")]
        if body is not None:
            headers.append((b"Content-Type", b"application/json"))
        request = http.Request.make(method, f"http://{API_HOST}{path}", content, headers)
        request.timestamp_start, request.timestamp_end = started, started + 0.0005
        flow.request = request
        payload = json.dumps(answer).encode()
        response = http.Response.make(status, payload, {"Content-Type": "application/json", "Server": "nginx", "Date": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(started)), "X-Request-Id": f"{self.r.getrandbits(64):016x}", "Cache-Control": "no-store"})
        response.timestamp_start, response.timestamp_end = started + duration - 0.0005, started + duration
        flow.response = response
        return flow


def write_recording(path: Path, flows: int) -> float:
    """Writes `flows` flows to `path` (unless it is there already); returns the seconds it took."""
    from mitmproxy import io as mio

    if path.is_file() and path.stat().st_size > 0:
        print(f"  using {path} ({path.stat().st_size / 1e6:.1f} MB, already generated)", flush=True)
        return 0.0
    started = time.monotonic()
    temporary = path.with_name(path.name + ".tmp")
    recording = Recording()
    tty = sys.stdout.isatty()
    with open(temporary, "wb") as handle:
        writer = mio.FlowWriter(handle)
        for i in range(1, flows + 1):
            writer.add(recording.flow())
            if i % 10_000 == 0 or i == flows:
                elapsed = time.monotonic() - started
                text = f"  generating {path.name}: {i:,}/{flows:,} flows, {elapsed:.0f} s"
                print(("\r" + text) if tty else text, end="" if tty and i < flows else "\n", flush=True)
    os.replace(temporary, path)
    took = time.monotonic() - started
    print(f"  wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {took:.0f} s", flush=True)
    return took


def recorded_gets(path: Path) -> list[tuple[str, bytes]]:
    """Every recorded GET with a 200 answer: (path with query, response body), in file order."""
    from mitmproxy import io as mio

    out = []
    with open(path, "rb") as handle:
        for flow in mio.FlowReader(handle).stream():
            if flow.request.method == "GET" and flow.response and flow.response.status_code == 200:
                out.append((flow.request.path, flow.response.content or b""))
    return out


# -- measuring a conversion --------------------------------------------------------------------


@dataclass
class Run:
    tool: str
    what: str
    flows: int
    ok: bool
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    endpoints: int | None = None
    note: str = ""
    command: str = ""


def measured(argv: Sequence[str], log: Path, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[int | None, float, float, float]:
    """Runs `argv` to the end: (exit code or None when killed at `timeout`, wall s, CPU s, peak RSS MB).
    The peak is the child's own ru_maxrss from wait4 (Linux: KiB)."""
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        started = time.monotonic()
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
                return proc.returncode, time.monotonic() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
            if time.monotonic() - started > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = -9
                return None, time.monotonic() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
            time.sleep(0.05)
    except BaseException:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        raise


def backworks_bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def run_backworks(flows_file: Path, flows: int, out: Path, work: Path, timeout: float) -> Run:
    argv = [backworks_bin("backworks"), "mock-from", str(flows_file), "-o", str(out)]
    code, wall, cpu, rss = measured(argv, work / "mock-from.log", timeout)
    run = Run("backworks mock-from", "blueprint", flows, code == 0, wall, cpu, rss, command=" ".join(argv))
    if code != 0:
        run.note = "killed at the timeout" if code is None else f"exit {code}: " + tail(work / "mock-from.log")
        return run
    check = subprocess.run([backworks_bin("backworks"), "validate", str(out)], capture_output=True, text=True, timeout=300)
    document = yaml.safe_load(out.read_text())
    run.endpoints = len(document.get("endpoints") or [])
    run.note = "validates" if check.returncode == 0 else f"DOES NOT VALIDATE: {(check.stdout + check.stderr)[-500:]}"
    return run


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def pip_check() -> str:
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    return (result.stdout + result.stderr).strip()


def m2s_venv(where: Path, spec: str) -> Path:
    """A venv of its own with mitmproxy2swagger (and the mitmproxy it pins); reused when there."""
    venv = where / "m2s-venv"
    tool = venv / "bin" / "mitmproxy2swagger"
    if tool.exists():
        return tool
    print(f"  installing {spec} into its own venv {venv} (not the project's .venv)", flush=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True, timeout=300)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", spec], capture_output=True, text=True, timeout=900)
    if result.returncode != 0 or not tool.exists():
        raise BenchError(f"pip install {spec} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    versions = subprocess.run([str(venv / "bin" / "pip"), "list"], capture_output=True, text=True, timeout=120).stdout
    print("  " + ", ".join(ln.split()[0] + " " + ln.split()[1] for ln in versions.splitlines() if re.match(r"(mitmproxy|mitmproxy2swagger|ruamel\.yaml) ", ln)), flush=True)
    return tool


UUID_SEGMENT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def reviewed_templates(spec: dict[str, Any]) -> list[str]:
    """What a reviewer makes of pass 1's x-path-templates: every `ignore:` entry un-ignored, concrete
    ids (integer or UUID segments) as {id}, {id1}, ... as mitmproxy2swagger itself names them,
    duplicates dropped, literal templates first (its matching takes the first template that fits)."""
    templates: dict[str, None] = {}
    for entry in spec.get("x-path-templates") or []:
        path = str(entry).removeprefix("ignore:")
        segments, n = [], 0
        for segment in path.split("/"):
            if segment.isdigit() or UUID_SEGMENT.match(segment) or (segment.startswith("{") and segment.endswith("}")):
                segments.append("{id}" if n == 0 else f"{{id{n}}}")
                n += 1
            else:
                segments.append(segment)
        templates["/".join(segments)] = None
    return sorted(templates, key=lambda t: ("{" in t, t))


def run_m2s(tool: Path, flows_file: Path, flows: int, work: Path, timeout: float) -> list[Run]:
    spec = work / f"m2s-{flows}.yaml"
    spec.unlink(missing_ok=True)
    argv = [str(tool), "-i", str(flows_file), "-o", spec.name, "-p", API_PREFIX, "-f", "flow"]
    env = dict(os.environ, TERM="dumb")
    log = work / f"m2s-{flows}.log"
    runs = []
    code, wall, cpu, rss = measured(argv, log, timeout, cwd=work, env=env)
    first = Run("mitmproxy2swagger", "pass 1: x-path-templates", flows, code == 0 and spec.exists(), wall, cpu, rss, command=" ".join(argv).replace(str(work) + "/", ""))
    runs.append(first)
    if not first.ok:
        first.note = "killed at the timeout" if code is None else f"exit {code}: " + tail(log)
        return runs
    document = yaml.safe_load(spec.read_text())
    raw = len(document.get("x-path-templates") or [])
    document["x-path-templates"] = reviewed_templates(document)
    first.note = f"{raw} x-path-templates to review, {len(document['x-path-templates'])} after the review"
    spec.write_text(yaml.safe_dump(document, sort_keys=False))
    code, wall, cpu, rss = measured(argv, log, timeout, cwd=work, env=env)
    second = Run("mitmproxy2swagger", "pass 2: paths from reviewed templates", flows, code == 0, wall, cpu, rss, command=first.command)
    runs.append(second)
    if code != 0:
        second.note = "killed at the timeout" if code is None else f"exit {code}: " + tail(log)
        return runs
    paths = yaml.safe_load(spec.read_text()).get("paths") or {}
    second.endpoints = sum(1 for operations in paths.values() for method in operations if method in ("get", "put", "post", "delete", "patch", "head", "options"))
    second.note = f"{len(paths)} paths"
    return runs


# -- mock serving ------------------------------------------------------------------------------


@dataclass
class Serve:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms: float
    other_cores: float


def serving(args: argparse.Namespace, procs: Processes, work: Path, replay_flows: Path, blueprint: Path) -> dict[str, Any]:
    mitmdump = mitmdump_path()
    argvs = {
        "backworks": [mitmdump, "-s", str(REPO / "backworks.py"), "--mode", "reverse:http://127.0.0.1:9", "--set", f"blueprint={blueprint}", "--set", "connection_strategy=lazy", "--listen-host", HOST, "-q"],
        "server-replay": [
            mitmdump, "--mode", "reverse:http://127.0.0.1:9", "--server-replay", str(replay_flows),
            "--set", "server_replay_reuse=true", "--set", "server_replay_extra=404",
            "--set", "server_replay_ignore_host=true", "--set", "server_replay_ignore_port=true",
            "--set", "connection_strategy=lazy", "--listen-host", HOST, "-q",
        ],
    }  # fmt: skip
    for name, argv in argvs.items():
        print(f"{name}: {' '.join(argv)} -p PORT", flush=True)

    def start(name: str) -> tuple[int, int]:
        port = free_port()
        proc = procs.start(name, argvs[name] + ["-p", str(port)], args.proxy_cpus)
        wait_listening(procs, name, port, timeout=120)
        return port, proc.pid

    def answers_recorded(port: int, path: str, body: bytes) -> str | None:
        status, _, got = fetch(f"http://{HOST}:{port}{path}")
        if status != 200:
            return f"{status}"
        try:
            return None if json.loads(got) == json.loads(body) else "a different body"
        except ValueError:
            return "not JSON"

    # The load: recorded GETs that both servers answer 200 with the recorded body.
    candidates = list(dict.fromkeys(recorded_gets(replay_flows)))
    ports = {name: start(name)[0] for name in argvs}
    chosen: list[str] = []
    refused: dict[str, int] = {}
    by_template: dict[str, list[tuple[str, bytes]]] = {}
    for path, body in candidates:
        by_template.setdefault(re.sub(r"/[0-9a-f-]{36}|/\d+", "/ID", path.split("?")[0]), []).append((path, body))
    order = [pair for group in zip(*(iter(v) for v in by_template.values()), strict=False) for pair in group]  # one per endpoint in turn
    order += [pair for pair in candidates if pair not in order]
    seen_paths: set[str] = set()
    for path, body in order[: 20 * args.paths]:
        if len(chosen) >= args.paths or path in seen_paths:
            continue
        seen_paths.add(path)
        problems = {name: answers_recorded(port, path, body) for name, port in ports.items()}
        if all(p is None for p in problems.values()):
            chosen.append(path)
        else:
            for name, problem in problems.items():
                if problem:
                    refused[f"{name}: {problem}"] = refused.get(f"{name}: {problem}", 0) + 1
    for name in argvs:
        procs.stop(name)
    if len(chosen) < min(10, args.paths):
        raise BenchError(f"only {len(chosen)} recorded GETs answered 200 with the recorded body by both servers; refusals: {refused}")
    print(
        f"load: {len(chosen)} recorded GET requests that both answer 200 with the recorded body, over "
        f"{len({re.sub(r'/[0-9a-f-]{36}|/[0-9]+', '/ID', p.split('?')[0]) for p in chosen})} endpoints "
        f"(of {len(seen_paths)} tried; not answered as recorded: {refused or 'none'})",
        flush=True,
    )
    lua = work / "paths.lua"
    lua.write_text(
        "paths = {" + ", ".join(json.dumps(p) for p in chosen) + "}\ncounter = 0\n"
        "request = function()\n  counter = counter + 1\n  return wrk.format(\"GET\", paths[(counter % #paths) + 1])\nend\n" + WRK_LUA
    )
    samples: dict[str, list[Serve]] = {name: [] for name in argvs}
    for round_no in range(1, args.rounds + 1):
        for name in argvs:
            port, pid = start(name)
            try:
                bad = [p for p, body in ((p, b) for p, b in candidates if p in chosen[:10]) if answers_recorded(port, p, body)]
                if bad:
                    raise BenchError(f"{name}: no longer answers {bad[:3]} as recorded")
                url = f"http://{HOST}:{port}/"
                if args.warmup > 0:
                    run_wrk(url, args.warmup, args.connections, 1, lua, args.load_cpus)
                cpu0, sys0, wrk0, wall0 = cpu_seconds(pid), system_busy_seconds(), children_cpu_seconds(), time.monotonic()
                sample = run_wrk(url, args.duration, args.connections, 1, lua, args.load_cpus)
                cpu1, sys1, wrk1, wall1 = cpu_seconds(pid), system_busy_seconds(), children_cpu_seconds(), time.monotonic()
                other = max(0.0, (sys1 - sys0) - (cpu1 - cpu0) - (wrk1 - wrk0)) / max(wall1 - wall0, 1e-9)
                serve = Serve(sample.rps, sample.p50_ms, sample.p99_ms, sample.errors, (cpu1 - cpu0) * 1e3 / max(sample.requests, 1), other)
                samples[name].append(serve)
                print(
                    f"round {round_no}/{args.rounds}  {name:<13} {serve.rps:8.1f} req/s  p50 {serve.p50_ms:6.2f} ms  "
                    f"p99 {serve.p99_ms:6.2f} ms  errors {serve.errors}  mitmdump CPU {serve.cpu_ms:5.3f} ms/req  other load {other:.2f} cores",
                    flush=True,
                )
            finally:
                procs.stop(name)
    med = {
        name: {k: statistics.median(getattr(s, k) for s in rows) for k in ("rps", "p50_ms", "p99_ms", "errors", "cpu_ms", "other_cores")}
        for name, rows in samples.items()
    }
    per_round = [b.rps / r.rps for b, r in zip(samples["backworks"], samples["server-replay"], strict=True) if r.rps]
    return {
        "commands": {name: " ".join(argv) + " -p PORT" for name, argv in argvs.items()},
        "paths": chosen,
        "refused": refused,
        "medians": med,
        "ratio": med["backworks"]["rps"] / med["server-replay"]["rps"] if med["server-replay"]["rps"] else None,
        "round_ratios": per_round,
        "samples": {name: [asdict(s) for s in rows] for name, rows in samples.items()},
    }


# -- main --------------------------------------------------------------------------------------


def report(runs: list[Run], serve: dict[str, Any] | None, expected: int) -> None:
    print("\n== capture → spec: time and peak memory ==")
    print("| tool | output | flows | wall s | CPU s | peak RSS MB | endpoints | note |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for run in runs:
        endpoints = "–" if run.endpoints is None else f"{run.endpoints}" + ("" if run.endpoints == expected else f" (recorded: {expected})")
        status = "" if run.ok else "FAILED: "
        print(f"| {run.tool} | {run.what} | {run.flows:,} | {run.seconds:.1f} | {run.cpu_seconds:.1f} | {run.peak_rss_mb:.0f} | {endpoints} | {status}{run.note.splitlines()[0] if run.note else ''} |")
    if serve:
        print("\n== mock serving: req/s (median over rounds) ==")
        print("| server | req/s | p50 ms | p99 ms | errors | mitmdump CPU ms/req | vs server-replay |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, m in serve["medians"].items():
            ratio = m["rps"] / serve["medians"]["server-replay"]["rps"]
            print(f"| {name} | {m['rps']:.1f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['errors']:.0f} | {m['cpu_ms']:.3f} | {ratio:.2f} |")
        print(f"per-round ratio backworks/server-replay: {', '.join(f'{r:.2f}' for r in serve['round_ratios'])}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=int, default=100_000, help="flows in the recording converted by both tools (default 100,000)")
    parser.add_argument("--m2s-flows", type=int, action="append", default=[], metavar="N", help="also run mitmproxy2swagger on an N-flow recording (repeatable)")
    parser.add_argument("--m2s-spec", default=M2S_SPEC, help=f"what pip installs into mitmproxy2swagger's own venv (default {M2S_SPEC})")
    parser.add_argument("--no-m2s", action="store_true", help="leave mitmproxy2swagger out")
    parser.add_argument("--replay-flows", type=int, default=2_000, help="flows in the recording both mock servers serve (default 2,000)")
    parser.add_argument("--paths", type=int, default=50, help="recorded GET requests wrk cycles through (default 50)")
    parser.add_argument("--no-serve", action="store_true", help="leave the mock-serving comparison out")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds backworks, server-replay (default 3)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of discarded load first (default 2)")
    parser.add_argument("--connections", type=int, default=8, help="wrk keep-alive connections (default 8)")
    parser.add_argument("--tool-timeout", type=float, default=TOOL_TIMEOUT, help=f"seconds one conversion may take (default {TOOL_TIMEOUT:g})")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="generate (and reuse) the recordings and the venv in DIR and keep them")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True, help="pin mitmdump to one CPU, wrk to the others (default on)")
    args = parser.parse_args(argv)
    if not (100 <= args.flows <= 2_000_000 and 100 <= args.replay_flows <= 200_000 and all(100 <= n <= 2_000_000 for n in args.m2s_flows)):
        parser.error("bounds: 100 <= --flows, --m2s-flows <= 2,000,000; 100 <= --replay-flows <= 200,000")
    if not (1 <= args.rounds <= 50 and 1 <= args.duration <= 600 and 0 <= args.warmup <= 60 and 1 <= args.paths <= 1000 and 1 <= args.connections <= 1000):
        parser.error("bounds: 1 <= --rounds <= 50, 1 <= --duration <= 600, 0 <= --warmup <= 60, 1 <= --paths <= 1000, 1 <= --connections <= 1000")
    if not 10 <= args.tool_timeout <= 7200:
        parser.error("bounds: 10 <= --tool-timeout <= 7200")
    args.proxy_cpus, args.load_cpus = cpu_layout(args.pin)
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that kills every child


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.no_serve and shutil.which("wrk") is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    work = Path(tempfile.mkdtemp(prefix="backworks-capture-bench-"))
    data = args.keep.resolve() if args.keep else work
    data.mkdir(parents=True, exist_ok=True)
    procs = Processes(work)
    started = time.monotonic()
    status = 0
    env = environment()
    print(f"backworks code: {describe_checkout(REPO)}; python {env['python']}, mitmproxy {env['mitmproxy']}; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    runs: list[Run] = []
    serve: dict[str, Any] | None = None
    try:
        pip_before = pip_check()
        sizes = sorted({args.flows, *args.m2s_flows}, reverse=True)
        files = {n: data / f"recording-{n}.flows" for n in sizes}
        print("== recordings ==", flush=True)
        for n in sizes:
            write_recording(files[n], n)
        print(f"\n== backworks mock-from, {args.flows:,} flows ==", flush=True)
        runs.append(run_backworks(files[args.flows], args.flows, work / "blueprint.yaml", work, args.tool_timeout))
        print(f"  {runs[-1].seconds:.1f} s, peak RSS {runs[-1].peak_rss_mb:.0f} MB, {runs[-1].endpoints} endpoints, {runs[-1].note.splitlines()[0] if runs[-1].note else ''}", flush=True)
        if not args.no_m2s:
            print(f"\n== mitmproxy2swagger ({args.m2s_spec}) ==", flush=True)
            tool = m2s_venv(data, args.m2s_spec)
            for n in sizes:
                for run in run_m2s(tool, files[n], n, work, args.tool_timeout):
                    runs.append(run)
                    print(f"  {n:,} flows, {run.what}: {'ok' if run.ok else 'FAILED'} {run.seconds:.1f} s, peak RSS {run.peak_rss_mb:.0f} MB, endpoints {run.endpoints}; {run.note.splitlines()[0] if run.note else ''}", flush=True)
            pip_after = pip_check()
            print(f"  pip check of the project's .venv: {pip_after}" + ("" if pip_after == pip_before else f" (was: {pip_before}) CHANGED"), flush=True)
        if not args.no_serve:
            print(f"\n== mock serving, {args.replay_flows:,}-flow recording ==", flush=True)
            replay_file = data / f"recording-{args.replay_flows}.flows"
            write_recording(replay_file, args.replay_flows)
            blueprint = work / "replay-blueprint.yaml"
            made = run_backworks(replay_file, args.replay_flows, blueprint, work, args.tool_timeout)
            if not made.ok or made.note != "validates":
                raise BenchError(f"mock-from on the replay recording: {made.note}")
            print(f"  blueprint: {made.endpoints} endpoints in {made.seconds:.1f} s", flush=True)
            serve = serving(args, procs, work, replay_file, blueprint)
        report(runs, serve, len(ENDPOINTS))
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.json:
            Path(args.json).write_text(json.dumps({"environment": env, "load_average_after": os.getloadavg(), "parameters": {k: v for k, v in vars(args).items() if k not in ("keep", "proxy_cpus", "load_cpus")}, "recorded_endpoints": len(ENDPOINTS), "conversions": [asdict(r) for r in runs], "serving": serve}, indent=2, default=str) + "\n")
            print(f"wrote {args.json}")
    except BenchError as exc:
        print(f"bench/capture_cost.py: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("\nbench/capture_cost.py: interrupted; stopping every process", file=sys.stderr)
        status = 130
    finally:
        procs.stop_all()
        if status not in (0, 130):
            print(f"logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"total bench time {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
