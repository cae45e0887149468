"""Fidelity suite: does a recording answer like the real API, in any order? Backworks against its peers.

Run with ``.venv/bin/python bench/fidelity.py [--apps httpbin,datasette] [--seeds 1,2]
[--schemathesis] [--throughput SECONDS [--throughput-rounds 3]] [--keep DIR] [--json FILE]``; about 3 minutes without
the optional phases, the first run longer (it installs the venv and Prism).

For each **real application** installed from PyPI into a throwaway venv (in a temporary folder,
or --keep DIR; never the project's .venv, whose ``pip check`` is not touched):

- ``httpbin`` served by gunicorn (statuses, basic/bearer/digest auth, conditional requests,
  cookies, redirects, compression, forms, multipart, ranges, content negotiation, echoes);
- ``datasette`` serving a small SQLite database this script creates (a JSON API with filters,
  sorting, facets, paging, SQL queries, CSV, HTML pages, redirects, 404/400s)

the script

1. starts the app on 127.0.0.1 and sends it a fixed list of requests (``HTTPBIN``/``DATASETTE``
   below, ~60 each) with real clients, spread over curl, python-requests and httpie
   (bench/fidelity_driver.py, run by the venv's Python): the **live** answers;
2. records the same requests through ``backworks capture --upstream`` (the project's CLI), stops it
   with SIGINT (it writes the blueprint), and makes the OpenAPI document from its journal with
   ``backworks mock-from --format openapi``; then records them once more through plain
   ``mitmdump --mode reverse:… -w FLOWS`` for mitmproxy's own replay;
3. stops the app, and replays the requests, **in recorded order and shuffled** (``--seeds``, fixed),
   each run against a fresh server, against
     backworks      ``mitmdump -s backworks.py --set blueprint=BLUEPRINT`` (reverse mode, lazy
                    connections: an upstream that is not running is never contacted),
     server-replay  ``mitmdump --server-replay FLOWS`` with ``server_replay_extra=404``, host and
                    port ignored (mitmproxy's defaults otherwise: flows consumed in order),
     prism          ``prism mock OPENAPI`` (@stoplight/prism-cli from npm, installed in the temp
                    folder; static examples, no ``Prefer`` header);
4. compares every answer with the live one (below) and prints one table, matches/total per tool,
   app and order, then every remaining mismatch with its reason and the area it belongs to.

**What "identical" means** (``compare``): the same status; the same body once both are decoded
(``Content-Encoding``) and normalised; and the same headers that matter: ``Content-Type``,
``Location``, ``ETag`` and ``WWW-Authenticate`` (normalised as bodies), and the *names* of the
``Set-Cookie`` cookies. A header present on one side only is a mismatch. Bodies are compared as
JSON values when both parse (key order and spacing aside; the count of bodies that are also
byte-identical is printed as well), as text otherwise, as bytes when not UTF-8.

**Normalisation** (``NORMALISE``, applied to bodies and the compared headers on both sides), the
values that legitimately differ between two runs or two ports:

- ``127.0.0.1:PORT`` and ``localhost:PORT`` → ``HOST:PORT`` (the app, the capture proxy and the
  mocks listen on different ports, and httpbin echoes ``Host`` and URLs);
- UUIDs, with or without dashes (32 hex digits: httpbin's ``/cache`` ETag is random) → ``<uuid>``; HTTP dates and ISO 8601 date-times → ``<date>``;
- digest-auth ``nonce``/``opaque`` values → ``<nonce>`` (random per answer);
- datasette's timings (``"query_ms": …`` in JSON, ``N.Nms`` in HTML) → ``<ms>`` and its
  per-session CSRF token in HTML forms → ``<csrftoken>``.

**Redaction placeholders** (``[REDACTED]``, ``[REDACTED:…]``) in a replayed answer stand for the
live text at that place *only when that text holds one of the secrets the requests sent*
(``SECRETS``, and their Basic-auth encodings) or a server-issued secret (a CSRF token): a
placeholder standing for anything else (a boolean, a number, a cookie's ``en``) is an over-reach
and counted as a mismatch.

Optional phases: ``--schemathesis`` runs ``st run`` (PyPI ``schemathesis`` in the venv) against
the generated OpenAPI, on the real app and on the Backworks mock, and blames each failure
(``classify_st``: on the mock, which serves only recorded answers, a response that does not fit
the document is Backworks'; on the real app it is the app answering input never recorded), with
a ``Backworks-blamed`` count per run; ``--throughput SECONDS`` measures mock serving with wrk (bench/throughput.py's
``run_wrk``) on httpbin's recording, on the recorded GETs without headers that every replayed tool answers
like the live app and that the live app answered 2xx/3xx (server replay with ``server_replay_reuse=true``
there, so a flow can be answered more than once; wrk counts any non-2xx/3xx answer as an error, so a
recorded 401 is left out rather than counted as one). Loaded, one at a time, in
``--throughput-rounds`` interleaved rounds (default 3, the order rotated each round), each with
``wrk -t2 -c32`` (``--throughput-connections``; the same for every tool, and many more than workers,
because SO_REUSEPORT spreads connections, not requests) for SECONDS after 2 s of warm-up:

  backworks                  the replayed ``mitmdump -s backworks.py`` (one process),
  backworks run --workers 2  ``backworks run BLUEPRINT --workers 2`` (``--throughput-workers``), as users
                             run it (reverse mode, lazy connections; admin listener off); its answers to
                             the GETs are compared with the live ones first, every worker must listen
                             before the load, and the connections each accepted are printed from its log,
  server-replay              as replayed,
  prism, prism -m            ``prism mock`` and ``prism mock -m``: Prism's only multi-process option
                             forks one HTTP server from the CLI process, which then formats the logs
                             (two processes, one server; Prism has no clustered mode);

no tool writes a line per request (mitmdump ``--flow-detail 0``, Prism ``-v warn``) unless
``--throughput-log`` keeps each one's default (``--flow-detail 1``, Prism ``info``); then the
median req/s, latency and errors per tool over the rounds, each as a ratio of both Prism
configurations, and whether Backworks with workers is ahead of both (without wrk errors).

Everything listens on and is sent to 127.0.0.1 only; every loop is bounded in count and time;
every child is killed on exit, error or Ctrl-C (each runs in its own process group).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from throughput import HOST, INSTALL_HINT, WRK_LUA, Processes, Sample, free_port, run_wrk, wait_listening  # noqa: E402

VENV_PACKAGES = ["httpbin", "gunicorn", "datasette", "requests", "httpie", "schemathesis"]
PRISM_PACKAGE = "@stoplight/prism-cli@5"
DRIVER = BENCH / "fidelity_driver.py"
DRIVE_TIMEOUT = 300  # seconds for one pass of ~60 requests
PLACEHOLDER = re.compile(r"\[REDACTED[^\]\s]{0,40}\]")

# -- the requests ------------------------------------------------------------------------------

# Every credential the requests send: a placeholder may stand only for text holding one of these.
SECRETS = [
    "passwd",
    "wrong-pass",
    "tok-3fK9qLmZ2xR7",
    "sk_live_9fK2mQ7xL3pZ8vB1nR4tW6yC",
    "s3cr3t-Pa55word",
    "sess-8KqZ2mW4xR9t",
    base64.b64encode(b"user:passwd").decode(),
    base64.b64encode(b"user:wrong-pass").decode(),
]
BOUNDARY = "fidelity-boundary-7d41"
CLIENTS = ("curl", "requests", "httpie")


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, str, str]]) -> bytes:
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    parts += [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{k}"; filename="{fn}"\r\nContent-Type: {ct}\r\n\r\n{data}\r\n'
        for k, (fn, ct, data) in files.items()
    ]
    return ("".join(parts) + f"--{BOUNDARY}--\r\n").encode()


def req(method: str, path: str, headers: dict[str, str] | None = None, body: bytes | str | dict | None = None, *, form: bool = False, follow: bool = False, ctype: str | None = None) -> dict[str, Any]:
    """One request of the corpus; a dict body is sent as JSON (or a form with form=True)."""
    hdrs = dict(headers or {})
    raw: bytes | None
    if isinstance(body, dict):
        if form:
            from urllib.parse import urlencode

            raw, hdrs["Content-Type"] = urlencode(body).encode(), "application/x-www-form-urlencoded"
        else:
            raw, hdrs["Content-Type"] = json.dumps(body).encode(), "application/json"
    else:
        raw = body.encode() if isinstance(body, str) else body
    if ctype:
        hdrs["Content-Type"] = ctype
    return {"method": method, "path": path, "headers": list(hdrs.items()), "body": base64.b64encode(raw).decode() if raw is not None else None, "follow": follow}


def _numbered(app: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each request an id and a client: curl, requests, httpie in turn (a fixed spread)."""
    return [dict(item, id=f"{app}#{i:02d}", client=item.get("client") or CLIENTS[i % 3]) for i, item in enumerate(items)]


BASIC = "Basic " + base64.b64encode(b"user:passwd").decode()
BASIC_WRONG = "Basic " + base64.b64encode(b"user:wrong-pass").decode()

HTTPBIN = _numbered("httpbin", [
    req("GET", "/get"),
    req("GET", "/get?a=1&b=two"),
    req("GET", "/get?a=1&a=2"),
    req("GET", "/anything/orders/17?expand=items"),
    req("POST", "/post", body={"name": "ada", "n": 1, "ok": True, "tags": ["x", "y"]}),
    req("POST", "/post", body={"a": "1", "b": "two words"}, form=True),
    req("POST", "/post", body=_multipart({"title": "report"}, {"file": ("notes.txt", "text/plain", "hello, multipart")}), ctype=f"multipart/form-data; boundary={BOUNDARY}"),
    req("PUT", "/put", body={"id": 7, "name": "grace"}),
    req("PATCH", "/patch", body={"name": "alan"}),
    req("DELETE", "/delete"),
    *(req("GET", f"/status/{code}") for code in (200, 201, 204, 400, 401, 403, 404, 418, 500, 503)),
    req("GET", "/basic-auth/user/passwd"),
    req("GET", "/basic-auth/user/passwd", {"Authorization": BASIC}),
    req("GET", "/basic-auth/user/passwd", {"Authorization": BASIC_WRONG}),
    req("GET", "/bearer"),
    req("GET", "/bearer", {"Authorization": "Bearer tok-3fK9qLmZ2xR7"}),
    req("GET", "/hidden-basic-auth/user/passwd"),
    req("GET", "/hidden-basic-auth/user/passwd", {"Authorization": BASIC}),
    req("GET", "/digest-auth/auth/user/passwd"),
    req("GET", "/headers", {"X-Demo": "1"}),
    req("GET", "/user-agent"),
    req("GET", "/ip"),
    req("GET", "/uuid"),
    req("GET", "/etag/abc"),
    req("GET", "/etag/abc", {"If-None-Match": '"abc"'}),
    req("GET", "/etag/abc", {"If-Match": '"zzz"'}),
    req("GET", "/etag/abc", {"If-Match": '"abc"'}),
    req("GET", "/cache"),
    req("GET", "/cache", {"If-Modified-Since": "Mon, 07 Dec 2026 10:00:00 GMT"}),
    req("GET", "/response-headers?X-Foo=bar&Content-Type=text/plain"),
    req("GET", "/redirect/2", follow=True),
    req("GET", "/redirect/2"),
    req("GET", "/redirect-to?url=/get&status_code=307"),
    req("GET", "/absolute-redirect/1"),
    req("GET", "/relative-redirect/1"),
    req("GET", "/cookies", {"Cookie": "lang=en; session=sess-8KqZ2mW4xR9t"}),
    req("GET", "/cookies/set?lang=en"),
    req("GET", "/cookies/set/theme/dark"),
    req("GET", "/cookies/delete?lang="),
    req("GET", "/gzip", {"Accept-Encoding": "gzip"}),
    req("GET", "/deflate", {"Accept-Encoding": "deflate"}),
    req("GET", "/brotli", {"Accept-Encoding": "br"}),
    req("GET", "/json"),
    req("GET", "/xml"),
    req("GET", "/html"),
    req("GET", "/robots.txt"),
    req("GET", "/encoding/utf8"),
    req("GET", "/base64/SFRUUEJJTiBpcyBhd2Vzb21l"),
    req("GET", "/bytes/64?seed=1"),
    req("GET", "/range/100", {"Range": "bytes=0-9"}),
    req("GET", "/range/100"),
    req("GET", "/image", {"Accept": "image/png"}),
    req("GET", "/image", {"Accept": "image/svg+xml"}),
    req("GET", "/anything/negotiate", {"Accept": "application/json"}),
    req("GET", "/anything/negotiate", {"Accept": "application/xml"}),
    req("GET", "/links/3/1"),
    req("GET", "/anything?api_key=sk_live_9fK2mQ7xL3pZ8vB1nR4tW6yC&page=2"),
    req("POST", "/anything/login", body={"user": "ada", "password": "s3cr3t-Pa55word", "remember": True, "attempts": 3}),
    req("HEAD", "/get"),
    req("GET", "/stream/3"),
])  # fmt: skip


def datasette_db(path: Path) -> None:
    """The small database datasette serves: users and their orders, with a foreign key."""
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, email TEXT, active INTEGER, score REAL, city TEXT);
            CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), total REAL, status TEXT);
        """)
        cities = ["London", "Paris", "Berlin", "Lisbon"]
        names = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "John", "Margaret", "Tim"]
        for i, name in enumerate(names, 1):
            db.execute("INSERT INTO users VALUES (?,?,?,?,?,?)", (i, name, f"{name.lower()}@example.com", i % 3 != 0, round(i * 7.25 % 100, 2), cities[i % 4]))
        for i in range(1, 41):
            db.execute("INSERT INTO orders VALUES (?,?,?,?)", (i, 1 + i * 5 % 12, round(i * 13.7 % 250, 2), ["new", "paid", "shipped", "cancelled"][i % 4]))


DATASETTE = _numbered("datasette", [
    req("GET", "/.json"),
    req("GET", "/shop.json"),
    req("GET", "/shop/users.json"),
    req("GET", "/shop/users.json?_shape=array"),
    req("GET", "/shop/users.json?_shape=objects"),
    req("GET", "/shop/users.json?_shape=array&_size=3"),
    req("GET", "/shop/users.json?_shape=array&_sort=name"),
    req("GET", "/shop/users.json?_shape=array&_sort_desc=score"),
    req("GET", "/shop/users.json?_shape=array&name__startswith=A"),
    req("GET", "/shop/users.json?_shape=array&active=1"),
    req("GET", "/shop/users.json?_shape=array&city=Paris"),
    req("GET", "/shop/users.json?_shape=array&score__gt=50"),
    req("GET", "/shop/users.json?_shape=array&_col=name&_col=email"),
    req("GET", "/shop/users.json?_shape=array&_nocol=email"),
    req("GET", "/shop/users.json?_size=5"),
    req("GET", "/shop/users.json?_size=5&_next=5"),
    req("GET", "/shop/users/1.json"),
    req("GET", "/shop/users/2.json"),
    req("GET", "/shop/users/3.json?_shape=array"),
    req("GET", "/shop/users/4.json"),
    req("GET", "/shop/users/5.json"),
    req("GET", "/shop/users/6.json"),
    req("GET", "/shop/users/7.json"),
    req("GET", "/shop/users/999.json"),
    req("GET", "/shop/orders.json?_shape=array&user_id=1"),
    req("GET", "/shop/orders.json?_shape=array&status=paid"),
    req("GET", "/shop/orders.json?_facet=status&_size=0"),
    req("GET", "/shop/orders.json?_labels=on&_size=3&_shape=array"),
    req("GET", "/shop/orders.json?_shape=array&total__lt=20&_sort=total"),
    req("GET", "/shop/orders/1.json"),
    req("GET", "/shop/orders/2.json"),
    req("GET", "/shop.json?sql=select+count(*)+as+n+from+users&_shape=array"),
    req("GET", "/shop.json?sql=select+city,+count(*)+as+n+from+users+group+by+city+order+by+city&_shape=array"),
    req("GET", "/shop.json?sql=select+*+from+users+where+id+%3D+:id&id=3&_shape=array"),
    req("GET", "/shop.json?sql=select+nonsense+from"),
    req("GET", "/shop/users.csv"),
    req("GET", "/shop/orders.csv?status=new"),
    req("GET", "/shop/users.json?_shape=array", {"Accept": "application/json"}),
    req("GET", "/-/versions.json"),
    req("GET", "/-/plugins.json"),
    req("GET", "/-/databases.json"),
    req("GET", "/-/metadata.json"),
    req("GET", "/-/settings.json"),
    req("GET", "/-/actor.json"),
    req("GET", "/-/actor.json", {"Cookie": "ds_actor=sess-8KqZ2mW4xR9t"}),
    req("GET", "/shop/users.json?_shape=array&_size=2", {"Authorization": "Bearer tok-3fK9qLmZ2xR7"}),
    req("GET", "/shop/nonexistent.json"),
    req("GET", "/nonexistent"),
    req("GET", "/shop/users/"),
    req("GET", "/shop/users?_shape=array"),
    req("GET", "/shop/users/1"),
    req("GET", "/shop"),
    req("GET", "/"),
    req("GET", "/shop/users.json?_shape=array&_size=1", {"Accept-Encoding": "gzip"}),
    req("POST", "/shop/users.json", body={"name": "x"}),
    req("GET", "/-/static/app.css"),
    req("GET", "/shop/users.json?_shape=array&_where=score+>+80"),
    req("GET", "/shop/users.json?_shape=array&_search=ada"),
])  # fmt: skip


@dataclass
class App:
    name: str
    requests: list[dict[str, Any]]
    start: Callable[[Path, Path, int], list[str]]  # (venv, work, port) -> argv
    server_secrets: list[re.Pattern[str]] = field(default_factory=list)


def _httpbin_argv(venv: Path, work: Path, port: int) -> list[str]:
    return [str(venv / "bin/gunicorn"), "-b", f"{HOST}:{port}", "-w", "2", "httpbin:app"]


def _datasette_argv(venv: Path, work: Path, port: int) -> list[str]:
    db = work / "shop.db"
    if not db.exists():
        datasette_db(db)
    return [str(venv / "bin/datasette"), "serve", "-i", str(db), "-h", HOST, "-p", str(port), "--setting", "num_sql_threads", "1"]


APPS = {
    "httpbin": App("httpbin", HTTPBIN, _httpbin_argv),
    "datasette": App("datasette", DATASETTE, _datasette_argv, [re.compile(r"[A-Za-z0-9_.~+/=-]{16,}")]),
}

# -- comparison --------------------------------------------------------------------------------

NORMALISE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(127\.0\.0\.1|localhost):\d+"), "HOST:PORT"),
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "<uuid>"),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<uuid>"),  # uuid4().hex: httpbin's /cache ETag, random per answer
    (re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT"), "<date>"),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?"), "<date>"),
    (re.compile(r'\b(nonce|opaque)="[^"]*"'), r'\1="<nonce>"'),
    (re.compile(r'("query_ms":\s*)[0-9.eE+-]+'), r"\1<ms>"),
    (re.compile(r"\b\d+(\.\d+)?ms\b"), "<ms>"),
    (re.compile(r'(name="csrftoken"\s+value=")[^"]*'), r"\1<csrftoken>"),
]
HEADERS_COMPARED = ("content-type", "location", "etag", "www-authenticate")
VARYING_KEYS = {"query_ms"}  # JSON keys whose values are timings


def normalise(text: str) -> str:
    for pattern, repl in NORMALISE:
        text = pattern.sub(repl, text)
    return text


def decode_body(answer: dict[str, Any]) -> bytes:
    """The body without its Content-Encoding (curl's answers; requests and httpie decoded theirs)."""
    headers, body = answer["headers"], base64.b64decode(answer["body"])
    if answer.get("decoded"):
        return body
    enc = next((v.lower() for k, v in headers if k.lower() == "content-encoding"), "")
    try:
        if enc == "gzip":
            return gzip.decompress(body)
        if enc == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
        if enc == "br":
            import brotli

            return brotli.decompress(body)
    except Exception:  # noqa: BLE001 - a body that says it is encoded and is not: compared as it is
        return body
    return body


def _secret_ok(text: str, server_secrets: Sequence[re.Pattern[str]]) -> bool:
    return any(s in text for s in SECRETS) or any(p.fullmatch(text.strip()) for p in server_secrets)


def text_equal(live: str, got: str, server_secrets: Sequence[re.Pattern[str]]) -> str | None:
    """None when equal after normalisation, placeholders standing only for secrets; else why not."""
    live, got = normalise(live), normalise(got)
    if live == got:
        return None
    pieces = PLACEHOLDER.split(got)
    if len(pieces) == 1:
        return _first_difference(live, got)
    pattern = "(.+?)".join(re.escape(p) for p in pieces)
    m = re.fullmatch(pattern, live, re.DOTALL)
    if not m:
        return "differs beyond placeholders: " + _first_difference(live, got)
    for value in m.groups():
        if not _secret_ok(value, server_secrets):
            return f"over-redaction: a placeholder replaced {value[:40]!r}"
    return None


def _first_difference(a: str, b: str) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"at {i}: live {a[max(0, i - 25):i + 35]!r} / replay {b[max(0, i - 25):i + 35]!r}"


def json_equal(live: Any, got: Any, where: str, secrets: Sequence[re.Pattern[str]]) -> str | None:
    if isinstance(got, str) and PLACEHOLDER.search(got) and not isinstance(live, str):
        return f"{where}: over-redaction: {json.dumps(live)[:40]} became {got!r}"
    if isinstance(live, dict) and isinstance(got, dict):
        if live.keys() != got.keys():
            extra, missing = sorted(got.keys() - live.keys()), sorted(live.keys() - got.keys())
            return f"{where}: keys differ (replay adds {extra}, lacks {missing})"
        for k in live:
            if k in VARYING_KEYS:
                continue
            why = json_equal(live[k], got[k], f"{where}.{k}", secrets)
            if why:
                return why
        return None
    if isinstance(live, list) and isinstance(got, list):
        if len(live) != len(got):
            return f"{where}: {len(live)} items live, {len(got)} replayed"
        for i, (a, b) in enumerate(zip(live, got, strict=True)):
            why = json_equal(a, b, f"{where}[{i}]", secrets)
            if why:
                return why
        return None
    if isinstance(live, str) and isinstance(got, str):
        why = text_equal(live, got, secrets)
        return f"{where}: {why}" if why else None
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (live, got))
    if numbers and live == got:
        return None  # one JSON number type: 29.0 and 29 are equal here (the byte-identical count sees the difference)
    if type(live) is not type(got) or live != got:
        return f"{where}: live {json.dumps(live)[:40]} / replay {json.dumps(got)[:40]}"
    return None


def _header(headers: list[list[str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


def cookie_names(headers: list[list[str]]) -> list[str]:
    return sorted(v.split("=", 1)[0].strip() for v in _header(headers, "set-cookie"))


@dataclass
class Verdict:
    ok: bool
    byte_identical: bool
    reasons: list[str]


def compare(live: dict[str, Any], got: dict[str, Any], secrets: Sequence[re.Pattern[str]] = ()) -> Verdict:
    """Compare a replayed answer with the live one: status, body, the headers that matter."""
    if got.get("error"):
        return Verdict(False, False, [f"no answer: {got['error'][:120]}"])
    reasons = []
    if live["status"] != got["status"]:
        reasons.append(f"status {got['status']} (live {live['status']})")
    for name in HEADERS_COMPARED:
        a, b = _header(live["headers"], name), _header(got["headers"], name)
        if name == "content-type":
            a, b = [v.lower().replace(" ", "") for v in a], [v.lower().replace(" ", "") for v in b]
        if not a and not b:
            continue
        if not b:
            reasons.append(f"{name} missing (live {a[0]!r})")
        elif not a:
            reasons.append(f"{name} added ({b[0]!r})")
        else:
            why = text_equal(a[0], b[0], secrets)
            if why:
                reasons.append(f"{name}: {why}")
    if cookie_names(live["headers"]) != cookie_names(got["headers"]):
        reasons.append(f"Set-Cookie names {cookie_names(got['headers'])} (live {cookie_names(live['headers'])})")
    lb, gb = decode_body(live), decode_body(got)
    byte_identical = False
    try:
        lt, gt = lb.decode("utf-8"), gb.decode("utf-8")
        byte_identical = normalise(lt) == normalise(gt)
    except UnicodeDecodeError:
        byte_identical = lb == gb
        if not byte_identical:
            reasons.append(f"binary body differs ({len(gb)} bytes, live {len(lb)})")
        lt = gt = None  # type: ignore[assignment]
    if lt is not None and not byte_identical:
        try:
            lj, gj = json.loads(lt), json.loads(gt)
        except ValueError:
            why = text_equal(lt, gt, secrets)
            if why:
                reasons.append(f"body {why}")
        else:
            why = json_equal(lj, gj, "$", secrets)
            if why:
                reasons.append(f"body {why}")
    return Verdict(not reasons, byte_identical and not reasons, reasons)


def area(tool: str, reasons: list[str], got: dict[str, Any]) -> str:
    """Which part of issue 18 a mismatch belongs to (a heuristic on the reason; read the reason)."""
    text = " ".join(reasons).lower()
    body = base64.b64decode(got.get("body") or "").decode("utf-8", "replace").lower()
    if tool == "prism":
        return "OpenAPI (Prism serves the generated document)"
    if tool == "server-replay":
        return "peer (mitmproxy server replay)"
    if "traceparent" in text or "x-request-id" in text:
        return "transparent capture"
    if "redact" in text or "placeholder" in text:
        return "redaction"
    if "no mock example" in body or "no endpoint" in body or (got.get("status") == 404 and "backworks" in body):
        return "matching / nothing lost"
    if "status" in text:
        return "matching / nothing lost"
    if "missing" in text or "added" in text or "set-cookie" in text or "content-type" in text:
        return "bodies & headers"
    if "body" in text:
        return "bodies & headers"
    return "?"


# -- processes ---------------------------------------------------------------------------------


def sh(argv: Sequence[str], log: Path, timeout: float, cwd: Path | None = None) -> None:
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.run(list(argv), stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False, cwd=cwd, start_new_session=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}; see {log}")


def ensure_venv(work: Path, packages: Sequence[str] = VENV_PACKAGES, timeout: float = 600) -> Path:
    """A throwaway venv in WORK with PACKAGES (the apps and clients), never the project's .venv."""
    venv = work / "venv"
    marker = venv / ".fidelity-installed"
    if not marker.exists():
        print(f"installing {', '.join(packages)} into {venv} (a throwaway venv)", flush=True)
        sh([shutil.which("python3") or "python3", "-m", "venv", str(venv)], work / "install.log", 120)
        sh([str(venv / "bin/pip"), "install", "-q", *packages], work / "install.log", timeout)
        marker.touch()
    return venv


def ensure_prism(work: Path) -> Path | None:
    prism = work / "prism/node_modules/.bin/prism"
    if not prism.exists():
        if not shutil.which("npm"):
            print("npm not found: Prism left out", flush=True)
            return None
        print(f"installing {PRISM_PACKAGE} into {work / 'prism'}", flush=True)
        (work / "prism").mkdir(exist_ok=True)
        try:
            sh(["npm", "install", "--prefix", str(work / "prism"), "--no-audit", "--no-fund", PRISM_PACKAGE], work / "install.log", 600)
        except SystemExit as exc:
            print(f"Prism left out: {exc}", flush=True)
            return None
    return prism


def drive(venv: Path, port: int, requests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Send the requests in this order with their clients; the answers by request id."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.run(
        [str(venv / "bin/python"), str(DRIVER), f"http://{HOST}:{port}"],
        input=json.dumps(requests).encode(), capture_output=True, timeout=DRIVE_TIMEOUT, check=False, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"the client driver failed: {proc.stderr.decode(errors='replace')[-2000:]}")
    return {r["id"]: r for r in json.loads(proc.stdout)}


def stop_with_sigint(procs: Processes, name: str, timeout: float = 60) -> int | None:
    proc = procs.running.get(name)
    if proc is None:
        return None
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    procs.stop(name)
    return proc.returncode


def still_running(procs: Processes, name: str, settle: float = 1.0) -> None:
    """mitmdump listens before it loads its script, and exits when the script fails to load."""
    time.sleep(settle)
    proc = procs.running[name]
    if proc.poll() is not None:
        raise SystemExit(f"{name} exited with code {proc.returncode} after listening:\n{procs.log_tail(name)}")


def mitmdump() -> str:
    return str(Path(sys.executable).with_name("mitmdump"))


def backworks() -> str:
    return str(Path(sys.executable).with_name("backworks"))


WORKERS_TOOL = re.compile(r"backworks-w([1-9][0-9]?)")  # backworks-wN: `backworks run BLUEPRINT --workers N`


def workers_of(tool: str) -> int:
    """How many processes serve a tool's port: N for backworks-wN, else 1 (Prism's -m forks one server)."""
    found = WORKERS_TOOL.fullmatch(tool)
    return int(found.group(1)) if found else 1


def mock_argv(tool: str, files: dict[str, Path], prism: Path | None, port: int, reuse: bool = False, quiet: bool = False) -> list[str] | None:
    """How each mock is started; REUSE lets server replay answer a flow more than once (for load);
    QUIET turns every tool's line per request off (mitmdump's --flow-detail 0, Prism's warn level)."""
    base = ["--mode", "reverse:http://127.0.0.1:9", "--set", "connection_strategy=lazy", "--listen-host", HOST, "-p", str(port)]
    base += ["--flow-detail", "0"] if quiet else []
    if tool == "backworks":
        return [mitmdump(), "-s", str(REPO / "backworks.py"), "--set", f"blueprint={files['blueprint']}", *base]
    if WORKERS_TOOL.fullmatch(tool):  # as users run it: reverse mode and lazy connections are `backworks run`'s own
        admin_off = ["--", "--set", "backworks_admin=off"]  # the aggregate listener's default port (9901) may be taken here
        run = [backworks(), "run", str(files["blueprint"]), "--host", HOST, "--port", str(port), "--workers", str(workers_of(tool))]
        return [*run, *(["--flow-detail", "0"] if quiet else []), *admin_off]
    if tool == "server-replay":
        return [
            mitmdump(), "--server-replay", str(files["flows"]), "--set", "server_replay_extra=404",
            "--set", "server_replay_ignore_host=true", "--set", "server_replay_ignore_port=true",
            *(["--set", "server_replay_reuse=true"] if reuse else []), *base,
        ]  # fmt: skip
    if tool in ("prism", "prism-m") and prism is not None:  # -m: the HTTP server forked from the CLI, which formats its logs
        argv = [str(prism), "mock", *(["-m"] if tool == "prism-m" else []), "-h", HOST, "-p", str(port), str(files["openapi"])]
        return argv + (["-v", "warn"] if quiet else [])
    return None


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Run:
    app: str
    tool: str
    order: str
    total: int = 0
    matches: int = 0
    byte_identical: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)


def record(app: App, venv: Path, work: Path, procs: Processes, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Path], dict[str, Any]]:
    """Live answers, the Backworks capture (blueprint + OpenAPI) and plain mitmdump flows."""
    out = work / app.name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = {"blueprint": out / "captured.yaml", "openapi": out / "openapi.json", "flows": out / "flows.mitm"}
    app_port = free_port()
    procs.start(f"{app.name}-app", app.start(venv, work, app_port))
    wait_listening(procs, f"{app.name}-app", app_port, timeout=60)
    time.sleep(0.5)
    live = drive(venv, app_port, app.requests)
    extra: dict[str, Any] = {}

    cap_port = free_port()
    procs.start(f"{app.name}-capture", [backworks(), "capture", "--upstream", f"http://{HOST}:{app_port}", "-p", str(cap_port), "-o", str(files["blueprint"]), *args.capture_arg])
    wait_listening(procs, f"{app.name}-capture", cap_port, timeout=60)
    captured = drive(venv, cap_port, app.requests)
    rc = stop_with_sigint(procs, f"{app.name}-capture")
    if not files["blueprint"].exists():
        raise SystemExit(f"backworks capture (exit {rc}) wrote no blueprint:\n{procs.log_tail(app.name + '-capture')}")
    sh([backworks(), "mock-from", str(files["blueprint"]) + ".jsonl", "-o", str(files["openapi"]), "--format", "openapi"], out / "mock-from.log", 120)
    # Transparency: what a client gets through the capture proxy against what it gets directly.
    through = {r["id"]: compare(live[r["id"]], captured[r["id"]], app.server_secrets) for r in app.requests}
    extra["through_capture"] = sum(v.ok for v in through.values())
    extra["through_capture_diff"] = [(rid, v.reasons) for rid, v in through.items() if not v.ok]

    rec_port = free_port() if "server-replay" in args.tools else 0  # flows for mitmproxy's replay
    if rec_port:
        procs.start(f"{app.name}-mitm-record", [mitmdump(), "--mode", f"reverse:http://{HOST}:{app_port}", "--listen-host", HOST, "-p", str(rec_port), "-w", str(files["flows"]), "-q"])
        wait_listening(procs, f"{app.name}-mitm-record", rec_port, timeout=60)
        drive(venv, rec_port, app.requests)
        stop_with_sigint(procs, f"{app.name}-mitm-record")

    if args.schemathesis:
        extra["schemathesis_app"] = schemathesis(venv, files["openapi"], app_port, out / "st-app", args.st_max_examples)
    procs.stop(f"{app.name}-app")  # offline from here on
    return live, files, extra


def replay(app: App, venv: Path, live: dict[str, Any], files: dict[str, Path], prism: Path | None, procs: Processes, args: argparse.Namespace) -> list[Run]:
    runs = []
    orders = [("recorded", list(app.requests))]
    for seed in args.seeds:
        shuffled = list(app.requests)
        random.Random(seed).shuffle(shuffled)
        orders.append((f"shuffled s{seed}", shuffled))
    for tool in args.tools:
        for order_name, order in orders:
            port = free_port()
            argv = mock_argv(tool, files, prism, port)
            if argv is None:
                continue
            name = f"{app.name}-{tool}"
            procs.start(name, argv)
            wait_listening(procs, name, port, timeout=90)
            still_running(procs, name)
            answers = drive(venv, port, order)
            procs.stop(name)
            run = Run(app.name, tool, order_name, total=len(order))
            for r in app.requests:
                v = compare(live[r["id"]], answers[r["id"]], app.server_secrets)
                run.matches += v.ok
                run.byte_identical += v.byte_identical
                if not v.ok:
                    run.mismatches.append({"id": r["id"], "request": f"{r['client']} {r['method']} {r['path']} {dict(r['headers']) or ''}".strip(), "reasons": v.reasons, "area": area(tool, v.reasons, answers[r["id"]])})
            runs.append(run)
            print(f"  {app.name:10} {tool:14} {order_name:12} {run.matches}/{run.total}", flush=True)
    return runs


# -- schemathesis ------------------------------------------------------------------------------

# Who is at fault for a Schemathesis failure (``st explain CODE``). The generated document is
# Backworks' output and the mock serves only recorded answers, so the two runs split the blame:
# on the **mock**, a response check failing means the document contradicts the recording it was
# written from (Backworks); on the **real app**, the recording's every answer fits the document
# (the mock run shows it), so a response check failing means the app answered input no recorded
# request had outside every recorded answer (the app's answer, which a recording cannot know).
BLAMES = {
    "backworks": "Backworks' output",
    "app": "the app",
    "recording": "the recording's limits",
    "design": "the mock's documented design",
}
# code -> (blame, why) on the real app, and on the mock
ST_CLASSES: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "ST101": (("app", "a 5xx for generated input"), ("recording", "a recorded 5xx replayed")),
    "ST103": (("recording", "a status the app never answered while recording"), ("backworks", "the mock answered a status its document does not list")),
    "ST104": (("app", "no Content-Type where every recorded answer of that status had one"), ("backworks", "the mock's answer lacks the recorded Content-Type")),
    "ST105": (("app", "a media type no recorded answer of that status had"), ("backworks", "the mock's media type is not in its document")),
    "ST107": (("app", "a header every recorded answer (two or more) of that status had is missing"), ("backworks", "a header declared required that the mock does not send")),
    "ST108": (("app", "an answer to input never recorded, outside every recorded answer's shape"), ("backworks", "a recorded answer does not fit the schema written beside it")),
    "ST109": (("app", "a body labelled JSON that is not JSON (httpbin's /stream: JSON lines)"), ("app", "the app's recorded body labelled JSON that is not JSON, replayed")),
    "ST110": (("app", "a body its Content-Type's parser cannot read"), ("app", "the app's recorded body, replayed")),
    "ST201": (("app", "accepts input outside what its recorded clients sent (no validation)"), ("design", "matches recorded requests; validates bodies only with `validate: true`")),
    "ST202": (("recording", "rejects input the recording never showed rejected (a constraint no recorded request showed)"), ("recording", "a recorded refusal replayed")),
    "ST203": (("app", "accepts a request without a header every recorded request sent"), ("design", "matches recorded requests; headers it does not match on are not checked")),
    "ST204": (("app", "answers an undeclared method with other than 405 + Allow"), ("backworks", "the mock should answer 405 with Allow")),
    "ST205": (("app", "OPTIONS lists other methods than the document"), ("backworks", "OPTIONS lists other methods than the document")),
    "ST401": (("app", "accepts missing or invalid credentials where the recording showed them refused"), ("backworks", "the mock answered 2xx without the credentials the recording showed required")),
}
# The mock's own answers carry Backworks' error body: a 5xx with it is the mock failing, not a replay.
_MOCK_ERROR_BODY = re.compile(r'"request_id"\s*:')


def classify_st(code: str, side: str, text: str = "") -> tuple[str, str]:
    """(blame, why) for failure CODE on SIDE ("app" or "mock"); TEXT is the failure's report
    (its response), for the cases the code alone does not decide."""
    if code == "error":
        return ("recording", "network error or crash of the checker") if side == "app" else ("backworks", "the mock did not answer")
    classes = ST_CLASSES.get(code)
    if classes is None:
        return ("backworks", f"unclassified ({code}): read it") if side == "mock" else ("app", f"unclassified ({code}): read it")
    blame, why = classes[side == "mock"]
    if side == "mock" and code == "ST101" and _MOCK_ERROR_BODY.search(text):
        return "backworks", "the mock failed (its own 5xx)"
    if side == "mock" and code in ("ST202", "ST103") and "request path refused" in text:
        return "design", "the gateway refuses an ambiguous path (escaped control character, '/', ';') with 400, as Envoy does (paths.py)"
    if side == "app" and code == "ST108" and "ST201" in text:
        return "app", "an answer to input the document rules out, which the app accepted (ST201)"
    return blame, why


def schemathesis(venv: Path, spec: Path, port: int, out: Path, max_examples: int, side: str = "app") -> dict[str, Any]:
    """``st run`` against SPEC on 127.0.0.1:PORT (SIDE: "app" or "mock"); the failures by code and
    blame, from the JUnit report."""
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    argv = [
        str(venv / "bin/st"), "run", str(spec), "--url", f"http://{HOST}:{port}", "--checks", "all",
        "--max-examples", str(max_examples), "--seed", "1", "--workers", "1", "--request-timeout", "5",
        "--max-time", "120", "--report", "junit", "--report-junit-path", str(junit), "--no-color",
        "--generation-database", "none", "--phases", "examples,coverage,fuzzing",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=400, check=False, env=env, cwd=out, start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    (out / "st.log").write_bytes(proc.stdout + proc.stderr)
    result = parse_junit(junit, side)
    tail = [ln for ln in proc.stdout.decode(errors="replace").strip().splitlines() if ln.strip()][-1:]
    return dict(result, exit=proc.returncode, summary=tail, log=str(out / "st.log"))


def parse_junit(junit: Path, side: str = "app") -> dict[str, Any]:
    """Schemathesis' JUnit report: per failure code, its title and ``operation: first detail``,
    and each failure's blame (``classify_st``) counted in ``blame``."""
    failures: dict[str, list[str]] = {}
    titles: dict[str, str] = {}
    blame: dict[str, int] = {}
    why: dict[str, list[str]] = {}
    operations = 0
    if not junit.exists():
        return {"operations": 0, "failures": {}, "titles": {}, "blame": {}, "why": {}}
    for case in ET.parse(junit).getroot().iter("testcase"):
        operations += 1
        for fail in [*case.iter("failure"), *case.iter("error")]:
            text = fail.text or fail.get("message") or ""
            for chunk in re.split(r"^\d+\. Test Case ID: \S+\s*$", text, flags=re.M):
                found = False
                for m in re.finditer(r"^- (ST\d+) ([^\n(]+)(?:\([^)]*\))?\n+\s*((?!- ST)[^\n]*)", chunk, re.M):
                    found = True
                    code, title, detail = m.group(1), m.group(2).strip(), m.group(3).strip()
                    titles[code] = title
                    item = f"{case.get('name')}: {detail[:110]}"
                    if item not in failures.setdefault(code, []):
                        failures[code].append(item)
                        who, reason = classify_st(code, side, chunk)
                        blame[who] = blame.get(who, 0) + 1
                        reasons = why.setdefault(code, [])
                        if f"{who}: {reason}" not in reasons:
                            reasons.append(f"{who}: {reason}")
                if not found and chunk.strip():
                    item = f"{case.get('name')}: {chunk.strip().splitlines()[0][:110]}"
                    if item not in failures.setdefault("error", []):
                        failures["error"].append(item)
                        who, reason = classify_st("error", side, chunk)
                        blame[who] = blame.get(who, 0) + 1
                        why.setdefault("error", [f"{who}: {reason}"])
    return {"operations": operations, "failures": failures, "titles": titles, "blame": blame, "why": why}


# -- report ------------------------------------------------------------------------------------


def report(runs: list[Run], extras: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    apps = list(dict.fromkeys(r.app for r in runs))
    orders = list(dict.fromkeys(r.order for r in runs))
    tools = list(dict.fromkeys(r.tool for r in runs))
    print("\n== fidelity: answers identical to the live app (status, body modulo normalisation and redaction, Content-Type, Location, ETag, WWW-Authenticate, Set-Cookie names)")
    head = f"{'app':10} {'order':12} " + " ".join(f"{t:>20}" for t in tools)
    print(head)
    print("-" * len(head))
    for app in apps:
        for order in orders:
            cells = []
            for tool in tools:
                r = next((x for x in runs if x.app == app and x.tool == tool and x.order == order), None)
                cells.append(f"{r.matches}/{r.total} {100 * r.matches / r.total:5.1f}%" if r else "-")
            print(f"{app:10} {order:12} " + " ".join(f"{c:>20}" for c in cells))
        through = extras.get(app, {}).get("through_capture")
        if through is not None:
            n = next(x.total for x in runs if x.app == app)
            print(f"{app:10} {'(capture)':12} {f'{through}/{n} through backworks capture':>20}")
    print("\nbyte-identical bodies (after normalisation) among the matches: " + "; ".join(f"{r.app}/{r.tool}/{r.order}: {r.byte_identical}" for r in runs if r.order == "recorded"))
    print("\n== mismatches (each request once per tool; the orders it failed in)")
    for app in apps:
        for tool in tools:
            seen: dict[str, dict[str, Any]] = {}
            for r in runs:
                if r.app == app and r.tool == tool:
                    for m in r.mismatches:
                        seen.setdefault(m["id"], dict(m, orders=[]))["orders"].append(r.order)
            if not seen:
                continue
            print(f"-- {app} / {tool}: {len(seen)} request(s)")
            for m in seen.values():
                print(f"  {m['id']} [{', '.join(m['orders'])}] {m['request'][:110]}\n      -> {'; '.join(m['reasons'])[:400]}\n      area: {m['area']}")
    for app, extra in extras.items():
        diff = extra.get("through_capture_diff")
        if diff:
            print(f"-- {app}: answers that differ when the client goes through backworks capture (transparency): {len(diff)}")
            for rid, reasons in diff:
                print(f"  {rid}: {'; '.join(reasons)[:300]}")
        for where in ("schemathesis_app", "schemathesis_mock"):
            st = extra.get(where)
            if not st:
                continue
            side = 0 if where.endswith("app") else 1
            print(f"\n== schemathesis on the {'real app' if side == 0 else 'Backworks mock'} ({app}): {st.get('operations', 0)} operation(s), exit {st.get('exit')}, log {st.get('log')}")
            for line in st.get("summary", []):
                print(f"   {line}")
            counts = st.get("blame", {})
            print("   by fault: " + (", ".join(f"{BLAMES.get(who, who)} {n}" for who, n in sorted(counts.items())) or "none") + f"; Backworks-blamed: {counts.get('backworks', 0)}")
            for code, items in sorted(st.get("failures", {}).items()):
                print(f"  {code} {st.get('titles', {}).get(code, '')}: {len(items)} failure(s); {'; '.join(st.get('why', {}).get(code, []))}")
                for item in items[:6]:
                    print(f"     {item}")


THROUGHPUT_TOOLS = ("backworks", "backworks-w{workers}", "server-replay", "prism", "prism-m")
THROUGHPUT_LABELS = {
    "backworks": "mitmdump -s backworks.py",
    "server-replay": "mitmdump --server-replay",
    "prism": "prism mock",
    "prism-m": "prism mock -m",
}
PRISMS = ("prism", "prism-m")  # the ratios are against each of Prism's configurations
_CLIENT_CONNECT = re.compile(r"^\[w(\d+)\] .*\] client connect$", re.M)


def throughput_label(tool: str) -> str:
    found = WORKERS_TOOL.fullmatch(tool)
    return f"backworks run --workers {found.group(1)}" if found else THROUGHPUT_LABELS.get(tool, tool)


def throughput_tools(replayed: Sequence[str], workers: int) -> list[str]:
    """The tools the throughput phase loads: those replayed (whose answers were compared), and
    Backworks with workers and Prism with -m beside Backworks and Prism (answers checked in the phase)."""
    tools = [t.format(workers=workers) for t in THROUGHPUT_TOOLS]
    base = {f"backworks-w{workers}": "backworks", "prism-m": "prism"}
    return [t for t in tools if base.get(t, t) in replayed or t in replayed]


def throughput_requests(requests: list[dict[str, Any]], live: dict[str, Any], runs: list[Run]) -> list[dict[str, Any]]:
    """The GETs wrk sends: no headers, answered like the live app by every tool in the recorded
    order, and 2xx/3xx live (wrk counts any other status as an error, even a right one)."""
    failed = {m["id"] for r in runs if r.order == "recorded" for m in r.mismatches}
    return [r for r in requests if r["method"] == "GET" and not r["headers"] and r["id"] not in failed and 200 <= (live[r["id"]].get("status") or 0) < 400]


def throughput_summary(samples: dict[str, list[Sample]]) -> list[dict[str, Any]]:
    """One row per tool: medians over rounds, errors summed, and req/s as a ratio of each Prism's."""
    prisms = {p: statistics.median(s.rps for s in samples[p]) for p in PRISMS if samples.get(p)}
    rows = []
    for tool, got in samples.items():
        if not got:
            continue
        rps = statistics.median(s.rps for s in got)
        rows.append({
            "tool": tool, "label": throughput_label(tool), "rounds": len(got), "rps": rps,
            "p50_ms": statistics.median(s.p50_ms for s in got), "p99_ms": statistics.median(s.p99_ms for s in got),
            "errors": sum(s.errors for s in got), "requests": sum(s.requests for s in got),
            "vs": {p: rps / base for p, base in prisms.items() if base},
        })  # fmt: skip
    return rows


def workers_verdict(rows: list[dict[str, Any]]) -> str | None:
    """Backworks with workers against every Prism configuration measured: ahead only if faster than
    each, without errors."""
    prisms = [r for r in rows if r["tool"] in PRISMS]
    lines = []
    for row in rows:
        if workers_of(row["tool"]) < 2 or not prisms:
            continue
        ahead = not row["errors"] and all(row["rps"] > p["rps"] for p in prisms)
        ratios = ", ".join(f"{row['vs'][p['tool']]:.2f}× {p['label']}" for p in prisms if p["tool"] in row["vs"])
        lines.append(f"{row['label']}: {ratios}: {'ahead of Prism' if ahead else 'NOT ahead of Prism'}" + (f" ({row['errors']} wrk error(s))" if row["errors"] else ""))
    return "; ".join(lines) or None


def wait_workers(procs: Processes, name: str, count: int, offset: int, timeout: float = 60) -> None:
    """Every worker listens (the first one listening is not enough: the kernel would give it every connection)."""
    log = procs.log_dir / f"{name}.log"
    deadline = time.monotonic() + timeout
    while log.read_bytes()[offset:].count(b"listening at") < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}: not every one of {count} workers listens after {timeout:g}s:\n{procs.log_tail(name)}")
        still_running(procs, name, settle=0.1)


def connections_per_worker(text: str) -> dict[int, int]:
    """Client connections each worker accepted, from `backworks run --workers N`'s prefixed log."""
    counts: dict[int, int] = {}
    for found in _CLIENT_CONNECT.finditer(text):
        counts[int(found.group(1))] = counts.get(int(found.group(1)), 0) + 1
    return counts


def throughput(app: App, venv: Path, files: dict[str, Path], prism: Path | None, live: dict[str, Any], runs: list[Run], procs: Processes, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """wrk against each mock on the recorded GETs (no headers) that all of them answer like the live
    app, in interleaved rounds; Backworks with workers is checked against the live answers first."""
    if shutil.which("wrk") is None:
        raise SystemExit(INSTALL_HINT)
    chosen = throughput_requests(app.requests, live, [r for r in runs if r.app == app.name])
    if not chosen:
        print("throughput: no recorded 2xx/3xx GET that every mock answers right; skipped")
        return []
    paths = [r["path"] for r in chosen]
    lua = work / "paths.lua"
    lua.write_text("paths = {" + ", ".join(json.dumps(p) for p in paths) + "}\ni = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n" + WRK_LUA)
    tools = [t for t in throughput_tools(args.tools, args.throughput_workers) if mock_argv(t, files, prism, 0, reuse=True) is not None]
    conns, secs = args.throughput_connections, args.throughput
    logging_ = "each tool's line per request (mitmdump --flow-detail 1, Prism info)" if args.throughput_log else "no line per request (mitmdump --flow-detail 0, Prism -v warn)"
    print(f"\n== mock serving throughput ({app.name}): wrk -t2 -c{conns} for every tool, {secs:g}s after 2s of warm-up, "
          f"{args.throughput_rounds} interleaved round(s), cycling over {len(paths)} recorded 2xx/3xx GET(s) every tool answers like the live app; {logging_}", flush=True)  # fmt: skip
    samples: dict[str, list[Sample]] = {t: [] for t in tools}
    checked: set[str] = set()
    for round_ in range(args.throughput_rounds):
        for tool in tools[round_ % len(tools) :] + tools[: round_ % len(tools)]:  # a new order each round: drift spreads over all
            port, name = free_port(), f"tp-{tool}"
            argv = mock_argv(tool, files, prism, port, reuse=True, quiet=not args.throughput_log) or []
            log = procs.log_dir / f"{name}.log"
            offset = log.stat().st_size if log.exists() else 0
            procs.start(name, argv)
            try:
                wait_listening(procs, name, port, timeout=90)
                if workers_of(tool) > 1:
                    wait_workers(procs, name, workers_of(tool), offset)
                if tool not in checked and tool not in args.tools:  # not replayed above: its answers are checked here
                    answers = drive(venv, port, chosen)
                    wrong = [r["id"] for r in chosen if not compare(live[r["id"]], answers[r["id"]], app.server_secrets).ok]
                    if wrong:
                        raise SystemExit(f"throughput: {tool} answers {len(wrong)} of the {len(chosen)} GETs unlike the live app: {wrong}")
                    checked.add(tool)
                run_wrk(f"http://{HOST}:{port}/", 2, conns, 2, lua)  # warm-up
                s = run_wrk(f"http://{HOST}:{port}/", secs, conns, 2, lua)
            finally:
                procs.stop(name)
            samples[tool].append(s)
            split = ""
            if workers_of(tool) > 1:
                per = connections_per_worker(log.read_bytes()[offset:].decode(errors="replace"))
                split = "  connections per worker " + (":".join(str(per.get(i, 0)) for i in range(workers_of(tool))) if per else "(not in the log)")
            print(f"  round {round_ + 1} {throughput_label(tool):28} {s.rps:9.0f} req/s  p50 {s.p50_ms:6.2f} ms  p99 {s.p99_ms:6.2f} ms  errors {s.errors}{split}", flush=True)
    rows = throughput_summary(samples)
    print(f"\n{'tool':28} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>7} " + " ".join(f"{'× ' + throughput_label(p):>16}" for p in PRISMS if p in samples and samples[p]) + f"   (median over {args.throughput_rounds} round(s))")
    for row in rows:
        ratios = " ".join(f"{row['vs'][p]:15.2f}×" for p in PRISMS if p in row["vs"])
        print(f"{row['label']:28} {row['rps']:9.0f} {row['p50_ms']:7.2f} {row['p99_ms']:7.2f} {row['errors']:7d} {ratios}")
    verdict = workers_verdict(rows)
    if verdict:
        print(verdict)
    print(f"(load average {os.getloadavg()[0]:.2f} after the phase, {os.cpu_count()} CPU(s); wrk runs on the same machine)", flush=True)
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--apps", default="httpbin,datasette", help="comma-separated: httpbin, datasette (default both)")
    p.add_argument("--tools", default="backworks,server-replay,prism", help="comma-separated mocks to replay against (also backworks-wN: `backworks run --workers N`, and prism-m: `prism mock -m`)")
    p.add_argument("--seeds", default="1,2", help="shuffle seeds (default 1,2)")
    p.add_argument("--schemathesis", action="store_true", help="also run st run on the real app and on the mock")
    p.add_argument("--st-max-examples", type=int, default=10, help="schemathesis test cases per operation (default 10)")
    p.add_argument("--throughput", type=float, default=0, metavar="SECONDS", help="also measure mock serving with wrk (httpbin's recording), SECONDS per measurement")
    p.add_argument("--throughput-rounds", type=int, default=3, metavar="N", help="interleaved rounds of the throughput phase (default 3)")
    p.add_argument("--throughput-connections", type=int, default=32, metavar="N", help="wrk connections for every tool: many more than workers, as SO_REUSEPORT spreads connections (default 32)")
    p.add_argument("--throughput-log", action="store_true", help="keep every tool's line per request in the throughput phase (mitmdump --flow-detail 1, Prism info; default: off for all)")
    p.add_argument("--throughput-workers", type=int, default=2, metavar="N", help="workers of `backworks run --workers N` in the throughput phase (default 2)")
    p.add_argument("--keep", type=Path, metavar="DIR", help="work (venv, Prism, recordings) in DIR and keep it")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--capture-arg", action="append", default=[], metavar="ARG", help="one more argument for backworks capture (repeatable)")
    args = p.parse_args(argv)
    args.apps = [a for a in args.apps.split(",") if a]
    args.tools = [t for t in args.tools.split(",") if t]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    unknown = [a for a in args.apps if a not in APPS]
    if unknown:
        p.error(f"unknown app(s) {unknown}; known: {sorted(APPS)}")
    if args.throughput_rounds < 1 or args.throughput_connections < 1 or not 2 <= args.throughput_workers <= 99:
        p.error("--throughput-rounds and --throughput-connections are at least 1; --throughput-workers 2 to 99")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="backworks-fidelity-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    procs = Processes(work / "logs")
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    try:
        venv = ensure_venv(work)
        prism = ensure_prism(work) if {"prism", "prism-m"} & set(args.tools) else None
        runs: list[Run] = []
        extras: dict[str, dict[str, Any]] = {}
        for name in args.apps:
            app = APPS[name]
            print(f"{name}: recording {len(app.requests)} requests (live, backworks capture, mitmdump -w)", flush=True)
            live, files, extra = record(app, venv, work, procs, args)
            extras[name] = extra
            app_runs = replay(app, venv, live, files, prism, procs, args)
            runs += app_runs
            if args.schemathesis:
                port = free_port()
                procs.start(f"{name}-st-mock", mock_argv("backworks", files, prism, port) or [])
                wait_listening(procs, f"{name}-st-mock", port, timeout=90)
                still_running(procs, f"{name}-st-mock")
                extra["schemathesis_mock"] = schemathesis(venv, files["openapi"], port, work / name / "st-mock", args.st_max_examples, "mock")
                procs.stop(f"{name}-st-mock")
            if args.throughput and name == "httpbin":
                extra["throughput"] = throughput(app, venv, files, prism, live, app_runs, procs, work, args)
        report(runs, extras, args)
        print(f"\n(work folder {work}; {time.monotonic() - started:.0f}s)")
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": [r.__dict__ for r in runs], "extras": extras}, indent=1, default=str))
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
