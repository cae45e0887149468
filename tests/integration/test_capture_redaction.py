"""Precise redaction end to end (issue 18, item 3): every secret of the leak corpus, sent through
the real `backworks capture --upstream` to an upstream that echoes and sets them, and written to a
HAR file that `backworks mock-from` reads, is absent from every file written (journal, blueprint,
data files, HAR, OpenAPI) and from the console; the non-secret corpus comes out unchanged."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from backworks_core.capture.formats import write_har
from backworks_core.capture.redact import placeholder
from tests.integration.harness import BIN, ROOT, free_port, request, stop_capture, stop_process_group, Upstream, wait_for_port
from tests.unit.test_capture_redact import LEAKS, NON_SECRET_HTML, NON_SECRET_JSON, leak_exchanges

pytestmark = pytest.mark.integration

L = LEAKS


def echoing_upstream() -> Upstream:
    """Echoes what it is sent (as httpbin does), sets a session cookie and hands out a token."""
    upstream = Upstream("leaky")

    async def login(req: web.Request) -> web.Response:
        body = await req.json()
        answer = web.json_response({"access_token": L["login token"], "message": f"welcome, your password {body['pass']} was accepted", "authenticated": True, "cookies": {"lang": "en"}})
        answer.headers.add("Set-Cookie", f"sid={L['set-cookie']}; Path=/; HttpOnly; SameSite=Lax")
        answer.headers.add("Set-Cookie", "lang=en; Path=/")
        return answer

    async def headers(req: web.Request) -> web.Response:
        return web.json_response({"headers": dict(req.headers)})

    async def page(req: web.Request) -> web.Response:
        return web.Response(text=NON_SECRET_HTML, content_type="text/html")

    async def me(req: web.Request) -> web.Response:
        return web.json_response(NON_SECRET_JSON)

    upstream.routes.update({"/login": login, "/headers": headers, "/page": page, "/me": me})
    return upstream


def send_leaks(port: int) -> None:
    multipart = (
        b'--XyZ\r\nContent-Disposition: form-data; name="password"\r\n\r\n' + L["multipart password"].encode() + b"\r\n"
        b'--XyZ\r\nContent-Disposition: form-data; name="api_key"\r\n\r\n' + L["multipart api_key"].encode() + b"\r\n"
        b'--XyZ\r\nContent-Disposition: form-data; name="avatar"; filename="me.png"\r\nContent-Type: image/png\r\n\r\n\x89PNG\xff\x00\r\n--XyZ--\r\n'
    )
    query = f"key={L['query key']}&access_key={L['query access_key']}&pass={L['query pass']}&pwd={L['query pwd']}&code={L['query code']}&sig={L['query sig']}&page=2"
    referer = f"https://app.example/reset/{L['referer path token']}?next=/home&session_token={L['referer token']}"
    basic = "Basic " + base64.b64encode(f"ada:{L['basic password']}".encode()).decode()
    login_body = {"user": "ada", "pass": L["json pass"], "pwd": L["json pwd"], "pin": L["json pin"], "passphrase": L["json passphrase"], "card_number": L["json card_number"], "refresh": L["json refresh"]}
    graphql = {"query": f'mutation {{ login(email: "ada@example.com", password: "{L["graphql inline"]}") {{ id }} }}', "variables": {"token": L["graphql variable"]}}
    xml = f'<Envelope><wsse:Password Type="text">{L["xml password"]}</wsse:Password><credentials apiKey="{L["xml attribute"]}"/></Envelope>'
    sent = [
        ("POST", f"/login?{query}", {"Content-Type": "application/json", "Referer": referer, "Authorization": basic}, json.dumps(login_body)),
        ("GET", "/headers", {"Cookie": f"sid={L['set-cookie']}; lang=en", "Authorization": f"Bearer {L['login token']}", "Referer": referer}, None),
        ("POST", "/echo", {"Content-Type": "multipart/form-data; boundary=XyZ"}, multipart),
        ("POST", "/soap", {"Content-Type": "text/xml"}, xml),
        ("POST", "/graphql", {"Content-Type": "application/json", "Authorization": f"Bearer {L['login token']}"}, json.dumps(graphql)),
        ("POST", "/notes", {"Content-Type": "text/plain"}, f"password={L['text password']}\nAuthorization: Bearer {L['text bearer']}\n"),
        ("GET", f"/unsubscribe/{L['path token']}", {}, None),
        ("GET", "/page", {}, None),
        ("GET", "/me", {"Cookie": "lang=en; theme=dark"}, None),
    ]
    for method, path, headers, body in sent:
        assert request(method, path, port=port, headers=headers, body=body).status == 200, path


def run_capture(output: Path, upstream: Upstream) -> str:
    """`backworks capture --upstream`, the leak corpus through it, then Ctrl-C; the console output."""
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "backworks"), "capture", "--upstream", upstream.url, "-p", str(port), "-o", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
    )
    try:
        wait_for_port(port, process=process)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and request("GET", "/__backworks/capture", port=port).status != 200:
            time.sleep(0.1)  # mitmproxy 12 listens before its scripts have loaded
        send_leaks(port)
        time.sleep(0.3)
        return stop_capture(process)
    finally:
        stop_process_group(process)


def mock_from(*args: str) -> None:
    made = subprocess.run([str(BIN / "backworks"), "mock-from", *args], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    for what, secret in LEAKS.items():
        assert secret not in made.stdout + made.stderr, what


def assert_no_leak(folder: Path, skip: tuple[Path, ...] = ()) -> list[Path]:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p not in skip]
    for path in files:
        text = path.read_text(errors="replace")
        leaked = [what for what, secret in LEAKS.items() if secret in text]
        assert not leaked, f"{leaked} leaked into {path.relative_to(folder)}"
    return files


def parsed(answer: dict[str, Any]) -> Any:
    """A recorded body as JSON, whether the blueprint keeps it as text (byte for byte) or parsed."""
    body = answer["body"]
    return json.loads(body) if isinstance(body, str) else body


def endpoint(blueprint: dict[str, Any], path: str) -> list[dict[str, Any]]:
    found = [e for e in blueprint["endpoints"] if e["path"] == path]
    assert found, [e["path"] for e in blueprint["endpoints"]]
    return found[0]["config"]["mock"]["examples"]


def test_capture_leaks_no_secret_and_keeps_every_non_secret(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    upstream = echoing_upstream().start()
    try:
        log = run_capture(out / "captured.yaml", upstream)
    finally:
        upstream.stop()
    assert (out / "captured.yaml").is_file(), log
    for fmt, name in (("har", "again.har"), ("openapi", "openapi.json"), ("openapi", "openapi.yaml"), ("blueprint", "again.yaml")):
        mock_from(str(out / "captured.yaml.jsonl"), "-o", str(out / name), "--format", fmt)
    files = assert_no_leak(out)
    assert len(files) >= 6, files
    leaked = [what for what, secret in LEAKS.items() if secret in log]
    assert not leaked, (leaked, log)
    assert f"/unsubscribe/{placeholder(L['path token'])}" in log  # the console line, redacted as the files

    for name in ("captured.yaml", "again.yaml"):
        blueprint = yaml.safe_load((out / name).read_text())
        me = endpoint(blueprint, "/me")[0]
        assert parsed(me) == NON_SECRET_JSON  # booleans, numbers, null, ids, paths: unchanged
        assert endpoint(blueprint, "/page")[0]["body"] == NON_SECRET_HTML
        login = endpoint(blueprint, "/login")[0]
        assert parsed(login)["authenticated"] is True and parsed(login)["cookies"] == {"lang": "en"}
        assert parsed(login)["access_token"] == placeholder(L["login token"])
        assert parsed(login)["message"] == f"welcome, your password {placeholder(L['json pass'])} was accepted"
        cookies = login["headers"]["Set-Cookie"]
        assert cookies == [f"sid={placeholder(L['set-cookie'])}; Path=/; HttpOnly; SameSite=Lax", "lang=en; Path=/"]


def test_mock_from_a_har_file_leaks_no_secret(tmp_path: Path) -> None:
    source = tmp_path / "browser.har"
    write_har(iter(leak_exchanges()), source)
    assert LEAKS["set-cookie"] in source.read_text()  # the input holds them all
    out = tmp_path / "out"
    out.mkdir()
    for fmt, name in (("blueprint", "mocks.yaml"), ("openapi", "openapi.json"), ("har", "clean.har")):
        mock_from(str(source), "-o", str(out / name), "--format", fmt)
    assert len(assert_no_leak(out)) >= 3
    blueprint = yaml.safe_load((out / "mocks.yaml").read_text())
    assert parsed(endpoint(blueprint, "/login")[0])["authenticated"] is True
