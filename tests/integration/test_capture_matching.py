"""Issue 18, items 1 and 2, end to end: nothing recorded is lost, answers depend on content, not order.

`backworks capture --upstream` records an upstream that behaves like httpbin's /basic-auth,
/etag/{etag} and /status/{code}, and an API that wants a session in its query, driven by real
clients (curl, http.client, urllib). The upstream is stopped, the written blueprint (and its
data file) is served by a real mitmdump, and every request is replayed, with the client that
sent it, in the recorded order and shuffled: each answer's status and body must be the
recorded one.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.integration.harness import BIN, free_port, request, start_capture, stop_capture, stop_process_group, Upstream, wait_for_port

pytestmark = pytest.mark.integration

STATUSES = [200, 201, 202, 204, 400, 404, 418, 500, 503]
GOOD = "Basic " + base64.b64encode(b"user:passwd").decode()
WRONG = "Basic " + base64.b64encode(b"user:nope").decode()


def httpbin_like() -> Upstream:
    routes = {}

    async def basic_auth(req: web.Request) -> web.Response:
        if req.headers.get("Authorization") == GOOD:
            return web.json_response({"authenticated": True, "user": "user"})
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="Fake Realm"'})

    def etag(tag: str):
        async def handler(req: web.Request) -> web.Response:
            quoted = f'"{tag}"'
            if_none_match = req.headers.get("If-None-Match")
            if_match = req.headers.get("If-Match")
            if if_none_match is not None and quoted in if_none_match:
                return web.Response(status=304, headers={"ETag": quoted})
            if if_match is not None and quoted not in if_match:
                return web.Response(status=412)
            return web.json_response({"etag": tag}, headers={"ETag": quoted})

        return handler

    def status(code: int):
        async def handler(req: web.Request) -> web.Response:
            return web.Response(status=code) if code == 204 else web.json_response({"status": code}, status=code)

        return handler

    async def user(req: web.Request) -> web.Response:
        session = req.query.get("session_id")
        if session is None:
            return web.json_response({"error": "no session"}, status=401)
        if session != "s1":
            return web.json_response({"error": "session expired"}, status=403)
        return web.json_response({"id": 7, "name": "Ada"})

    routes["/basic-auth/user/passwd"] = basic_auth
    for tag in ("abc", "xyz"):
        routes[f"/etag/{tag}"] = etag(tag)
    for code in STATUSES:
        routes[f"/status/{code}"] = status(code)
    routes["/users/7"] = user
    return Upstream("httpbin-like", routes=routes)


def with_curl(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    marker = b"\n--status:"
    command = ["curl", "-s", "--max-time", "10", "-o", "-", "-w", "\n--status:%{http_code}"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run([*command, f"http://127.0.0.1:{port}{path}"], capture_output=True, timeout=20, check=True).stdout
    body, _, status = out.rpartition(marker)
    return int(status), body


def with_http_client(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    reply = request("GET", path, port=port, headers=headers)
    return reply.status, reply.body


def with_urllib(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers), timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:  # 4xx and 5xx: still an answer
        return error.code, error.read()


CLIENTS = {"curl": with_curl, "http.client": with_http_client, "urllib": with_urllib}


def traffic() -> list[tuple[str, str, dict[str, str]]]:
    """(client, path, headers): headers differ where answers do; the order matters live."""
    requests = [
        ("curl", "/basic-auth/user/passwd", {}),
        ("http.client", "/basic-auth/user/passwd", {"Authorization": GOOD}),
        ("urllib", "/basic-auth/user/passwd", {"Authorization": WRONG}),
        ("http.client", "/etag/abc", {}),
        ("http.client", "/etag/abc", {"If-None-Match": '"abc"'}),
        ("curl", "/etag/abc", {"If-Match": '"zzz"'}),
        ("curl", "/etag/abc", {"If-Match": '"abc"'}),
        ("urllib", "/etag/xyz", {"If-None-Match": '"abc"'}),
        ("http.client", "/users/7?session_id=s1", {}),
        ("http.client", "/users/7?session_id=s2", {}),
        ("curl", "/users/7", {}),
    ]
    clients = list(CLIENTS)
    requests += [(clients[n % 3], f"/status/{code}", {}) for n, code in enumerate(STATUSES)]
    return requests


def send(port: int, order: list[int]) -> list[tuple[int, bytes]]:
    plan = traffic()
    answers: dict[int, tuple[int, bytes]] = {}
    for index in order:
        client, path, headers = plan[index]
        answers[index] = CLIENTS[client](port, path, headers)
    return [answers[i] for i in range(len(plan))]


def test_a_recording_replays_right_in_any_order_with_nothing_lost(tmp_path: Path, start_proxy) -> None:
    upstream = httpbin_like().start()
    port = free_port()
    output = tmp_path / "httpbin.yaml"
    process = start_capture(port, "--upstream", upstream.url, "-o", str(output), "--max-examples", "3")
    try:
        live = send(port, list(range(len(traffic()))))
        log = stop_capture(process)
    finally:
        stop_process_group(process)
        upstream.stop()
    assert process.returncode == 0, log
    assert [status for status, _ in live] == [401, 200, 401, 200, 304, 412, 200, 200, 200, 403, 401, *STATUSES]

    mocks = start_proxy(output, "--mode", "reverse:http://127.0.0.1:9")  # the upstream is gone
    for seed in (None, 1, 2, 3):
        order = list(range(len(live)))
        if seed is not None:
            random.Random(seed).shuffle(order)
        replayed = send(mocks.port, order)
        mismatches = [(traffic()[i], live[i], replayed[i]) for i in range(len(live)) if replayed[i] != live[i]]
        assert not mismatches, (seed, mismatches)

    # max_examples shows three answers of /status/{code}; the other six are in the data file.
    document = yaml.safe_load(output.read_text())
    status_endpoint = next(e for e in document["endpoints"] if e["path"].startswith("/status/"))
    assert len(status_endpoint["config"]["mock"]["examples"]) == 3
    assert len((output.parent / status_endpoint["config"]["mock"]["examples_file"]).read_text().splitlines()) == 6
    assert "every one of the 20 distinct exchange(s) answerable" in log, log
    assert "answer(s) beyond max_examples in httpbin.yaml.data/" in log, log
