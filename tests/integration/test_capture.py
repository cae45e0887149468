"""Capture → mocks end to end: record real traffic, serve it offline, leak nothing.

A capturing mitmdump sits in reverse mode in front of a real upstream with several resources;
the blueprint it writes is validated, then served by a second mitmdump with the upstream
stopped, which must answer the same requests with the same statuses and bodies. Seeded tokens,
cookies and passwords must appear in no output (journal, blueprint, HAR, OpenAPI).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from backworks_core.capture.redact import matches_placeholder
from tests.integration.harness import BIN, ROOT, free_port, request, start_capture, stop_capture, stop_process_group, Upstream, wait_for_port

pytestmark = pytest.mark.integration

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsInJvbGUiOiJhZG1pbiJ9.Zm9yZ2VkLXNpZ25hdHVyZS1ieXRlcw"
SECRETS = {
    "jwt": JWT,
    "cookie": "sess-Q7f3kP9xZ2mL8vN4",
    "password": "correct-horse-battery-staple",
    "api_key": "sk_live_9fK2mQ7xL3pZ8vB1nR4tW6yC",
    "set_cookie": "srv-Hj4Kd9Lm2Np7Qr5St8Vw",
    "refresh": "rt_5Gh8Jk2Lm9Np3Qr7St1Vx4Zb",
}
USERS = {1: {"id": 1, "name": "Ada", "email": "ada@example.com"}, 2: {"id": 2, "name": "Grace", "email": "grace@example.com"}, 3: {"id": 3, "name": "Alan", "email": "alan@example.com"}}


def shop_upstream() -> Upstream:
    """Users, orders, a login that hands out tokens, and a counter that changes between calls."""
    routes: dict[str, Any] = {}
    counter = {"n": 0}

    async def users(req: web.Request) -> web.Response:
        if req.method == "POST":
            body = await req.json()
            return web.json_response({"id": 4, "name": body.get("name")}, status=201)
        return web.json_response({"items": list(USERS.values()), "page": int(req.query.get("page", "1"))})

    def user(user_id: int) -> Any:
        async def handler(req: web.Request) -> web.Response:
            return web.json_response(USERS[user_id])

        return handler

    async def missing(req: web.Request) -> web.Response:
        return web.json_response({"error": "no such user"}, status=404)

    async def login(req: web.Request) -> web.Response:
        response = web.json_response({"access_token": SECRETS["jwt"], "refresh_token": SECRETS["refresh"], "token_type": "Bearer"})
        response.headers["Set-Cookie"] = f"session={SECRETS['set_cookie']}; HttpOnly"
        return response

    async def ticks(req: web.Request) -> web.Response:
        counter["n"] += 1
        return web.json_response({"tick": counter["n"]})

    async def orders(req: web.Request) -> web.Response:
        return web.json_response({"orders": [{"id": 100, "status": "shipped", "placed": "2026-11-20T10:00:00Z"}]})

    routes["/users"] = users
    for user_id in USERS:
        routes[f"/users/{user_id}"] = user(user_id)
    routes["/users/99"] = missing
    routes["/login"] = login
    routes["/ticks"] = ticks
    routes["/orders"] = orders
    return Upstream("shop", routes=routes)


# The requests a client makes: method, path, headers, body. Each is sent while capturing and again to the mocks.
def traffic() -> list[tuple[str, str, dict[str, str], bytes | None]]:
    auth = {"Authorization": f"Bearer {SECRETS['jwt']}", "Cookie": f"sid={SECRETS['cookie']}"}
    return [
        ("GET", "/users", auth, None),
        ("GET", "/users?page=2", auth, None),
        ("GET", "/users/1", auth, None),
        ("GET", "/users/2", auth, None),
        ("GET", "/users/3", auth, None),
        ("GET", "/users/99", auth, None),
        ("POST", "/users", {**auth, "Content-Type": "application/json"}, json.dumps({"name": "Zed", "password": SECRETS["password"]}).encode()),
        ("POST", "/login", {"Content-Type": "application/json"}, json.dumps({"username": "alice", "password": SECRETS["password"]}).encode()),
        ("GET", f"/orders?api_key={SECRETS['api_key']}", {}, None),
        ("GET", "/ticks", {}, None),
        ("GET", "/ticks", {}, None),
        ("GET", "/ticks", {}, None),
    ]


def send_all(port: int) -> list[tuple[int, Any]]:
    answers = []
    for method, path, headers, body in traffic():
        reply = request(method, path, port=port, headers=headers, body=body)
        answers.append((reply.status, json.loads(reply.body) if reply.body else None))
    return answers


def capture_blueprint(folder: Path, output: str = "captured.yaml", fmt: str = "blueprint") -> Path:
    path = folder / "capture.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: shop
            server: {{unmatched: passthrough}}
            plugins:
              capture:
                config: {{output: {output}, format: {fmt}, max_examples: 10}}
            endpoints:
              - {{path: /__capture, handler: static, config: {{static: {{body: capturing}}}}}}
            """
        )
    )
    return path


def stop_gracefully(proxy: Any) -> None:
    """SIGINT, as Ctrl-C: mitmproxy runs its `done` hooks, and the capture writes its output."""
    os.killpg(proxy.process.pid, signal.SIGINT)
    proxy.process.wait(60)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "backworks"), *args], capture_output=True, text=True, timeout=300)


def redacted_equal(recorded: Any, replayed: Any) -> bool:
    """Equal, except where the recording holds a placeholder for the live value."""
    if isinstance(recorded, str) and isinstance(replayed, str) and matches_placeholder(recorded, replayed):
        return True
    if isinstance(recorded, dict) and isinstance(replayed, dict):
        return recorded.keys() == replayed.keys() and all(redacted_equal(recorded[k], replayed[k]) for k in recorded)
    if isinstance(recorded, list) and isinstance(replayed, list):
        return len(recorded) == len(replayed) and all(redacted_equal(a, b) for a, b in zip(recorded, replayed))
    return recorded == replayed


def test_captured_traffic_replays_offline_with_the_same_answers(tmp_path: Path, start_proxy) -> None:
    upstream = shop_upstream().start()
    try:
        capturing = start_proxy(capture_blueprint(tmp_path), "--mode", f"reverse:{upstream.url}")
        live = send_all(capturing.port)
        stop_gracefully(capturing)
    finally:
        upstream.stop()
    assert [status for status, _ in live] == [200, 200, 200, 200, 200, 404, 201, 200, 200, 200, 200, 200]
    output = tmp_path / "captured.yaml"
    assert "capture: wrote" in capturing.log(), capturing.log()[-3000:]

    checked = run_cli("validate", str(output))
    assert checked.returncode == 0, checked.stderr
    document = yaml.safe_load(output.read_text())
    templates = {(e["method"], e["path"]) for e in document["endpoints"]}
    assert ("GET", "/users/{user_id:int}") in templates and ("GET", "/users") in templates

    # The upstream is gone: the mocks answer alone.
    mocks = start_proxy(output, "--mode", "reverse:http://127.0.0.1:9")
    replayed = send_all(mocks.port)
    for (method, path, _, _), (live_status, live_body), (mock_status, mock_body) in zip(traffic(), live, replayed):
        assert mock_status == live_status, (method, path)
        assert redacted_equal(mock_body, live_body), (method, path, mock_body, live_body)
    # The three different answers to the same request come back in their order.
    assert [body for status, body in replayed[-3:]] == [{"tick": 1}, {"tick": 2}, {"tick": 3}]
    # Never recorded: 404 (no endpoint, and an id no example has).
    for path in ("/never/recorded", "/users/7", "/products"):
        reply = mocks.get(path)
        assert reply.status == 404, path
        assert reply.json["request_id"]


def test_no_output_leaks_tokens_cookies_or_passwords(tmp_path: Path, start_proxy) -> None:
    upstream = shop_upstream().start()
    try:
        capturing = start_proxy(capture_blueprint(tmp_path), "--mode", f"reverse:{upstream.url}")
        send_all(capturing.port)
        stop_gracefully(capturing)
    finally:
        upstream.stop()
    journal = tmp_path / "captured.yaml.jsonl"
    outputs = [tmp_path / "captured.yaml", journal]
    for fmt, name in (("har", "captured.har"), ("openapi", "openapi.json"), ("blueprint", "again.yaml")):
        made = run_cli("mock-from", str(journal), "-o", str(tmp_path / name), "--format", fmt)
        assert made.returncode == 0, made.stderr
        outputs.append(tmp_path / name)
    for output in outputs:
        text = output.read_text()
        assert "[REDACTED:" in text, output
        for what, secret in SECRETS.items():
            assert secret not in text, f"{what} leaked into {output.name}"


def test_the_journal_survives_a_crash_and_mock_from_reads_it(tmp_path: Path, start_proxy) -> None:
    upstream = shop_upstream().start()
    try:
        capturing = start_proxy(capture_blueprint(tmp_path), "--mode", f"reverse:{upstream.url}")
        send_all(capturing.port)
        os.killpg(capturing.process.pid, signal.SIGKILL)  # no `done` hook: only the journal remains
        capturing.process.wait(10)
    finally:
        upstream.stop()
    assert not (tmp_path / "captured.yaml").exists()
    journal = tmp_path / "captured.yaml.jsonl"
    assert len(journal.read_text().splitlines()) == len(traffic())
    made = run_cli("mock-from", str(journal), "-o", str(tmp_path / "from-journal.yaml"))
    assert made.returncode == 0, made.stderr
    assert "6 endpoint(s) from 12 flow(s)" in made.stdout, made.stdout
    assert run_cli("validate", str(tmp_path / "from-journal.yaml")).returncode == 0


def test_openapi_output_is_valid_openapi_3_1(tmp_path: Path, start_proxy) -> None:
    from openapi_spec_validator import validate

    upstream = shop_upstream().start()
    try:
        capturing = start_proxy(capture_blueprint(tmp_path, "openapi.yaml", "openapi"), "--mode", f"reverse:{upstream.url}")
        send_all(capturing.port)
        stop_gracefully(capturing)
    finally:
        upstream.stop()
    document = yaml.safe_load((tmp_path / "openapi.yaml").read_text())
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert "/users/{user_id}" in document["paths"]


@pytest.mark.parametrize("har", ["chrome.har", "firefox.har", "mitmproxy-savehar.har"])
def test_mock_from_har_files_gives_a_blueprint_that_validates_and_serves(tmp_path: Path, start_proxy, har: str) -> None:
    source = ROOT / "tests" / "data" / "capture" / har
    output = tmp_path / "mocks.yaml"
    made = run_cli("mock-from", str(source), "-o", str(output))
    assert made.returncode == 0, made.stderr
    assert run_cli("validate", str(output)).returncode == 0
    document = yaml.safe_load(output.read_text())
    assert document["endpoints"]
    first = document["endpoints"][0]
    example = first["config"]["mock"]["examples"][0]
    path = first["path"]
    for name, value in (example.get("when", {}).get("path") or {}).items():
        path = path.replace("{" + name + "}", value).replace("{" + name + ":int}", value).replace("{" + name + ":uuid}", value)
    extra = ["--mode", "reverse:http://127.0.0.1:9"]
    if first.get("host"):
        extra = []
    mocks = start_proxy(output, *extra)
    if first.get("host"):
        return  # several hosts: endpoints filter on the Host header; served, not replayed here
    query = "&".join(f"{k}={v}" for k, v in (example.get("when", {}).get("query") or {}).items() if not isinstance(v, list))
    reply = mocks.send(first["method"], path + (f"?{query}" if query else ""))
    assert reply.status == example["status"]


def test_the_capture_command_records_in_reverse_mode_and_writes_on_ctrl_c(tmp_path: Path) -> None:
    upstream = shop_upstream().start()
    port = free_port()
    output = tmp_path / "cli.yaml"
    process = start_capture(port, "--upstream", upstream.url, "-o", str(output))
    try:
        assert request("GET", "/users/1", port=port).status == 200
        assert request("GET", "/users/2", port=port).status == 200
        log = stop_capture(process)
    finally:
        stop_process_group(process)
        upstream.stop()
    assert process.returncode == 0, log
    assert "a reverse proxy in front of" in log
    document = yaml.safe_load(output.read_text())
    assert [(e["method"], e["path"]) for e in document["endpoints"]] == [("GET", "/users/{user_id:int}")]
    assert document["name"] == "cli"


def test_the_capture_command_as_a_regular_proxy(tmp_path: Path) -> None:
    import urllib.request

    upstream = shop_upstream().start()
    port = free_port()
    output = tmp_path / "regular.yaml"
    process = subprocess.Popen(
        [str(BIN / "backworks"), "capture", "-p", str(port), "-o", str(output), "--name", "shop"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))
    try:
        wait_for_port(port, process=process)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # mitmproxy 12 listens before its scripts have loaded
            if request("GET", "/__backworks/capture", port=port).status == 200:
                break
            time.sleep(0.1)
        for path in ("/users/1", "/users/2", "/orders"):
            with opener.open(f"{upstream.url}{path}", timeout=10) as reply:  # through the proxy, to the upstream
                assert reply.status == 200
        log = stop_capture(process)
    finally:
        stop_process_group(process)
        upstream.stop()
    assert "a regular HTTP(S) proxy" in log
    document = yaml.safe_load(output.read_text())
    assert document["name"] == "shop"
    assert {(e["method"], e["path"]) for e in document["endpoints"]} == {("GET", "/users/{user_id:int}"), ("GET", "/orders")}


def test_mock_from_shows_progress_on_large_inputs(tmp_path: Path) -> None:
    from backworks_core.capture.model import Exchange

    journal = tmp_path / "big.jsonl"
    with journal.open("w") as out:
        for n in range(2500):
            exchange = Exchange("GET", "http", "api.test", 80, f"/items/{n}", status=200, response_headers=[("Content-Type", "application/json")], response_body=json.dumps({"id": n}).encode())
            out.write(exchange.to_json() + "\n")
    made = run_cli("mock-from", str(journal), "-o", str(tmp_path / "big.yaml"))
    assert made.returncode == 0, made.stderr
    assert "reading: 1,000/2,500 flows" in made.stderr and "grouping: 2,500/2,500 flows" in made.stderr, made.stderr
    assert "1 endpoint(s) from 2500 flow(s)" in made.stdout


def test_mock_from_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("just some text\n")
    made = run_cli("mock-from", str(bad), str(tmp_path / "missing.har"), "-o", str(tmp_path / "x.yaml"))
    assert made.returncode == 1
    assert str(bad) in made.stderr and "Traceback" not in made.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_flows_saved_with_w_through_backworks_become_mocks_too(tmp_path: Path, start_proxy) -> None:
    """`mitmdump -s backworks.py -w FILE` keeps working (flow.metadata stays serializable)."""
    from mitmproxy import io as mitmproxy_io

    upstream = shop_upstream().start()
    flows = tmp_path / "flows.mitm"
    try:
        proxy = start_proxy(capture_blueprint(tmp_path), "--mode", f"reverse:{upstream.url}", "-w", str(flows))
        send_all(proxy.port)
        stop_gracefully(proxy)
    finally:
        upstream.stop()
    assert "unserializable" not in proxy.log()
    with flows.open("rb") as handle:
        saved = list(mitmproxy_io.FlowReader(handle).stream())
    assert len(saved) == len(traffic())
    made = run_cli("mock-from", str(flows), "-o", str(tmp_path / "from-flows.yaml"))
    assert made.returncode == 0, made.stderr
    assert "6 endpoint(s) from 12 flow(s)" in made.stdout
