"""capture.build reads each input once: a reader that can be consumed only once gives the same
output, and a secret first seen in the last flow is still scrubbed from the first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import backworks_core.capture.recording as reader  # where capture.build reads its inputs (read_any)
from backworks_core.capture.build import write_output
from backworks_core.capture.formats import read_any
from backworks_core.capture.model import Exchange
from backworks_core.capture.redact import Redactor, placeholder

SLASHED = "tok/Zq9x7Wv2LmAb"  # a password with a slash: JSON may write it `tok\/...`
ESCAPED = "Zq9x7Wv2LmAb"  # written `\u005aq9x7Wv2LmAb` in a JSON string: no run of the raw text finds it
IN_PATH = "Pa55wordXy42"
FORMATS = [("blueprint", "out.yaml"), ("openapi", "out.yaml"), ("har", "out.har")]


def exchange(method: str, path: str, *, status: int = 200, body: bytes = b"", request_body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> Exchange:
    response_headers = [("Content-Type", "application/json")] if body else []
    request_headers = (headers or []) + ([("Content-Type", "application/json")] if request_body else [])
    return Exchange(method, "http", "api.test", 80, path, [], request_headers, request_body, status, response_headers, body, 1_700_000_000.0, 0.01)


def recording() -> list[Exchange]:
    """The first flow holds three values that only the last flow shows to be secrets."""
    first = exchange(
        "GET",
        f"/share/{IN_PATH}",
        headers=[("X-Note", f"shared by {IN_PATH}")],
        body=b'{"text": "use tok\\/Zq9x7Wv2LmAb", "again": "\\u005aq9x7Wv2LmAb", "public": true}',
    )
    middle = [exchange("GET", f"/items/{n}", body=json.dumps({"id": n, "name": f"item {n}"}).encode()) for n in range(1, 30)]
    last = exchange("POST", "/login", request_body=json.dumps({"password": SLASHED, "passphrase": IN_PATH, "pin": ESCAPED}).encode(), body=b'{"ok": true}')
    return [first, *middle, last]


def journal(tmp_path: Path, exchanges: list[Exchange]) -> Path:
    path = tmp_path / "journal.jsonl"
    path.write_text("".join(e.to_json() + "\n" for e in exchanges))
    return path


def output_text(output: Path) -> str:
    """The output and every data file beside it."""
    texts = [output.read_text()]
    data = output.parent / (output.name + ".data")
    if data.is_dir():
        texts += [p.read_text() for p in sorted(data.iterdir())]
    return "\n".join(texts)


@pytest.fixture
def read_once_only(monkeypatch):
    """`read_any` as a pipe would be: each input can be opened once; a second open fails."""
    opened: list[str] = []

    def once(path):
        if str(path) in opened:
            raise AssertionError(f"{path} read a second time")
        opened.append(str(path))
        return read_any(path)

    monkeypatch.setattr(reader, "read_any", once)
    return opened


@pytest.mark.parametrize("fmt, name", FORMATS)
def test_each_input_is_read_once_and_the_output_is_the_same(tmp_path, monkeypatch, fmt, name):
    source = journal(tmp_path, recording())
    (tmp_path / "free").mkdir()
    (tmp_path / "once").mkdir()
    free = write_output([str(source)], str(tmp_path / "free" / name), fmt, name="t")
    opened: list[str] = []

    def once(path):
        assert str(path) not in opened, f"{path} read a second time"
        opened.append(str(path))
        return read_any(path)

    monkeypatch.setattr(reader, "read_any", once)
    single = write_output([str(source)], str(tmp_path / "once" / name), fmt, name="t")
    assert opened == [str(source)]
    assert single.replace("/once/", "/") == free.replace("/free/", "/")
    assert output_text(tmp_path / "once" / name) == output_text(tmp_path / "free" / name)


@pytest.mark.parametrize("fmt, name", FORMATS)
def test_a_secret_first_seen_in_the_last_flow_is_scrubbed_from_the_first(tmp_path, read_once_only, fmt, name):
    output = tmp_path / name
    write_output([str(journal(tmp_path, recording()))], str(output), fmt, name="t")
    text = output_text(output)
    for secret in (SLASHED, ESCAPED, IN_PATH, "q9x7Wv2LmAb"):
        assert secret not in text and secret.replace("/", "\\/") not in text
    assert placeholder(IN_PATH) in text  # the first flow's path, header, kept as placeholders
    assert placeholder(SLASHED) in text
    assert "item 1" in text and "public" in text  # what is no secret stays


def test_the_first_flows_example_keeps_its_shape_with_the_late_secrets_replaced(tmp_path, read_once_only):
    import yaml

    output = tmp_path / "out.yaml"
    write_output([str(journal(tmp_path, recording()))], str(output), "blueprint", name="t")
    endpoints = yaml.safe_load(output.read_text())["endpoints"]
    (share,) = [e for e in endpoints if e["path"].startswith("/share")]
    (example,) = share["config"]["mock"]["examples"]
    body = example["body"] if isinstance(example["body"], dict) else json.loads(example["body"])
    assert body == {"text": f"use {placeholder(SLASHED)}", "again": placeholder(ESCAPED), "public": True}


# -- Redactor.outdated: the test that decides which exchanges are redacted again -----------


def test_outdated_says_yes_only_where_a_later_secret_may_be():
    redactor = Redactor()
    redactor.secret("EarlySecret99")
    since = redactor.learned
    plain = exchange("GET", "/a", body=b'{"x": "nothing here"}')
    assert not redactor.outdated(plain, since)  # nothing learned since
    redactor.secret(ESCAPED)
    assert not redactor.outdated(plain, since)
    assert not redactor.outdated(exchange("GET", "/a", body=b'{"x": "EarlySecret99"}'), since)  # known then: done
    assert redactor.outdated(exchange("GET", f"/a/{ESCAPED}"), since)
    assert redactor.outdated(exchange("GET", "/a", headers=[("X-Note", f"it is {ESCAPED}")]), since)
    assert redactor.outdated(exchange("GET", "/a", body=b'{"x": "\\u005aq9x7Wv2LmAb"}'), since)  # JSON unescaped
    form = Exchange("POST", "http", "h", 80, "/f", [], [("Content-Type", "application/x-www-form-urlencoded")], b"note=%5Aq9x7Wv2LmAb", 200, [], b"", 0.0, 0.0)
    assert redactor.outdated(form, since)  # form values unquoted
    encoded = Exchange("GET", "http", "h", 80, "/g", [], [], b"", 200, [("Content-Encoding", "gzip")], b"\x1f\x8b...", 0.0, 0.0)
    assert redactor.outdated(encoded, since)  # a body still encoded cannot be looked into: redone


def test_outdated_finds_a_loose_secret_learned_later():
    redactor = Redactor()
    since = redactor.learned
    redactor.secret("p@ss-w0rd!")  # no run of six letters or digits: looked up as a substring
    assert redactor.outdated(exchange("GET", "/a", body=b'{"x": "p@ss-w0rd!"}'), since)
    assert not redactor.outdated(exchange("GET", "/a", body=b'{"x": "p@ss-w0rd"}'), since)


# -- an answer recorded without a Content-Type is served without one -----------------------

TEAPOT = b"\n    -=[ teapot ]=-\n\n       _...._\n     .'  _ _ `.\n"


async def test_an_answer_recorded_without_content_type_is_served_without_one(tmp_path, compile_gateway, send):
    import yaml

    teapot = Exchange("GET", "http", "api.test", 80, "/teapot", [], [], b"", 418, [("x-more-info", "http://tools.ietf.org/html/rfc2324")], TEAPOT, 0.0, 0.001)
    typed = exchange("GET", "/json", body=b'{"a": 1}')
    untyped_json = Exchange("GET", "http", "api.test", 80, "/raw", [], [], b"", 200, [], b'{"a":1}', 0.0, 0.001)
    output = tmp_path / "out.yaml"
    write_output([str(journal(tmp_path, [teapot, typed, untyped_json]))], str(output), "blueprint", name="t")
    mocks = {e["path"]: e["config"]["mock"]["examples"][0] for e in yaml.safe_load(output.read_text())["endpoints"]}
    assert mocks["/teapot"]["add_content_type"] is False and mocks["/raw"]["add_content_type"] is False
    assert "add_content_type" not in mocks["/json"]
    gateway = compile_gateway(output)
    for path, body in (("/teapot", TEAPOT), ("/raw", b'{"a":1}')):
        flow = await send(gateway, "GET", path)
        assert flow.response.get_content() == body
        assert "content-type" not in flow.response.headers, path
    flow = await send(gateway, "GET", "/json")
    assert flow.response.headers["content-type"] == "application/json"


async def test_a_hand_written_example_still_gets_a_content_type_by_its_body(tmp_path, compile_gateway, send):
    blueprint = tmp_path / "b.yaml"
    blueprint.write_text(
        "name: t\nversion: 1.0.0\nendpoints:\n"
        "- path: /text\n  handler: mock\n  config: {mock: {examples: [{body: hello}]}}\n"
        "- path: /bare\n  handler: mock\n  config: {mock: {examples: [{body: hello, add_content_type: false}]}}\n"
        "- path: /own\n  handler: mock\n  config: {mock: {examples: [{body: hello, add_content_type: false, headers: {Content-Type: text/x-own}}]}}\n"
    )
    gateway = compile_gateway(blueprint)
    assert (await send(gateway, "GET", "/text")).response.headers["content-type"] == "text/plain; charset=utf-8"
    bare = (await send(gateway, "GET", "/bare")).response
    assert "content-type" not in bare.headers and bare.get_content() == b"hello"
    assert (await send(gateway, "GET", "/own")).response.headers["content-type"] == "text/x-own"


# -- flow files: read fast, read the same -----------------------------------------------------


def flows_for_reading() -> list:
    """Flows of every shape a flow file holds: HTTP/1 and HTTP/2, an IP host named by its Host
    header, encoded and undecodable bodies, odd queries, trailers, a WebSocket, no response, TCP."""
    from mitmproxy.test import tflow

    flows = []
    plain = tflow.tflow(resp=True)
    plain.request.path = "/a/b?x=1&y=&x=2&z=%E2%82%AC&w=%ff"
    flows.append(plain)
    h2 = tflow.tflow(resp=True)
    h2.request.http_version = "HTTP/2.0"
    h2.request.authority = "api.example.com"
    h2.request.host = "10.0.0.1"
    h2.response.headers["content-encoding"] = "gzip"
    h2.response.content = b'{"gz": true}'  # encoded by mitmproxy: read back decoded
    flows.append(h2)
    ip = tflow.tflow(resp=True)
    ip.request.host = "192.0.2.7"
    ip.request.headers["Host"] = "named.example"
    ip.response.headers["content-encoding"] = "x-unknown"
    ip.response.raw_content = b"\x00\x01raw"
    ip.request.trailers = __import__("mitmproxy.http", fromlist=["Headers"]).Headers(grpc_status="0")
    flows.append(ip)
    frag = tflow.tflow(resp=True)
    frag.request.path = "/p;m=1/q?u=a+b#frag"
    frag.request.method = "POST"
    frag.request.content = "€ body".encode()
    flows.append(frag)
    flows.append(tflow.tflow(resp=False))
    flows.append(tflow.twebsocketflow())
    flows.append(tflow.ttcpflow())
    return flows


def test_a_flow_file_reads_as_mitmproxy_restores_each_flow(tmp_path):
    from mitmproxy import io as mio

    from backworks_core.capture.formats import exchange_from_flow, read_flows

    flows = flows_for_reading()
    path = tmp_path / "f.flows"
    with path.open("wb") as handle:
        writer = mio.FlowWriter(handle)
        for flow in flows:
            writer.add(flow)
    with path.open("rb") as handle:
        restored = [e for e in (exchange_from_flow(f) for f in mio.FlowReader(handle).stream()) if e is not None]
    assert len(restored) == 4
    assert list(read_flows(path)) == restored
