"""Mock features end to end: traffic recorded by a real mitmdump (`-w`), turned into mocks by
`backworks mock-from`, served offline by a second mitmdump with request validation, Prefer,
synthesised answers for unrecorded ids and scaled latency replay turned on in `server.mock`."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator

import pytest
import yaml
from aiohttp import web

from tests.integration.harness import Proxy, Upstream
from tests.integration.test_capture import run_cli

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}


async def _missing(req: web.Request) -> web.Response:
    return web.json_response({"error": "no such user"}, status=404)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, dict]]:
    """Recorded once for the module (a recording and a mock server take seconds to start)."""
    tmp_path = tmp_path_factory.mktemp("mock-features")
    upstream = Upstream("api", routes={"/users/42": _missing}, delay=0.6).start()
    running: list[Proxy] = []
    try:
        recorder = Proxy(None, ["--mode", f"reverse:{upstream.url}", "-w", str(tmp_path / "flows")])
        running.append(recorder)
        recorder.start(tmp_path)
        assert recorder.get("/users/1").status == 200
        assert recorder.get("/users/2").status == 200
        assert recorder.get("/users/42").status == 404
        assert recorder.send("POST", "/orders", body=b'{"item": "tea", "quantity": 1}', headers=JSON).status == 200
        # curl -d sends JSON labelled as a form
        assert recorder.send("POST", "/orders", body=b'{"item": "cake", "quantity": 2}', headers={"Content-Type": "application/x-www-form-urlencoded"}).status == 200
        recorder.stop()
        upstream.stop()  # offline from here on
    except BaseException:
        upstream.stop()
        for each in running:
            each.stop()
        raise
    made = run_cli("mock-from", str(tmp_path / "flows"), "-o", str(tmp_path / "mocks.yaml"))
    assert made.returncode == 0, made.stderr
    document = yaml.safe_load((tmp_path / "mocks.yaml").read_text())
    document["server"]["mock"] = {"validate": True, "unrecorded": "synthesise", "replay_latency": True, "latency_factor": 0.5}
    (tmp_path / "served.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    proxy = Proxy(tmp_path / "served.yaml", ["--mode", f"reverse:{upstream.url}"])
    running.append(proxy)
    try:
        proxy.start(tmp_path)
        yield proxy, document
    finally:
        for each in running:
            each.stop()


def test_recorded_requests_answer_and_bad_ones_are_refused(served: tuple[Proxy, dict]) -> None:
    proxy, document = served
    orders = next(e for e in document["endpoints"] if e["path"] == "/orders")["config"]["mock"]["request_body"]
    assert orders["required"] is True and orders["content_types"] == ["application/x-www-form-urlencoded"]
    assert proxy.send("POST", "/orders", body=b'{"item": "tea", "quantity": 1}', headers=JSON).status == 200
    assert proxy.send("POST", "/orders", body=b'{"item": "cake", "quantity": 2}', headers={"Content-Type": "application/x-www-form-urlencoded"}).status == 200
    refused = proxy.send("POST", "/orders", body=b'{"item": 5, "quantity": 1}', headers=JSON)
    assert refused.status == 422
    assert refused.json["path"] == "$.item" and refused.json["request_id"] == refused.header("X-Request-ID")
    assert proxy.send("POST", "/orders", body=b"<order/>", headers={"Content-Type": "application/xml"}).status == 415
    assert proxy.send("POST", "/orders", body=b'{"item": ', headers=JSON).status == 400
    assert proxy.send("POST", "/orders").status == 422


def test_unrecorded_id_is_synthesised(served: tuple[Proxy, dict]) -> None:
    proxy, _ = served
    reply = proxy.get("/users/999")
    assert reply.status == 200
    assert reply.header("X-Backworks-Mock") == "synthesised"
    assert reply.json["path"] == "/users/999" and reply.json["upstream"] == "api"
    recorded = proxy.get("/users/42")
    assert recorded.status == 404 and recorded.header("X-Backworks-Mock") is None


def test_prefer_picks_an_example(served: tuple[Proxy, dict]) -> None:
    proxy, _ = served
    reply = proxy.get("/users/1", headers={"Prefer": "code=404"})
    assert (reply.status, reply.json) == (404, {"error": "no such user"})
    assert reply.header("Preference-Applied") == "code=404"
    reply = proxy.get("/users/1", headers={"Prefer": "example=200-2"})
    assert reply.json["path"] == "/users/2"
    missing = proxy.get("/users/1", headers={"Prefer": "code=500"})
    assert missing.status == 404
    assert [e["name"] for e in missing.json["examples"]] == ["200-1", "200-2", "404-42"]


def test_latency_is_replayed_scaled_without_blocking(served: tuple[Proxy, dict]) -> None:
    proxy, document = served
    recorded = next(e for e in document["endpoints"] if e["path"].startswith("/users"))["config"]["mock"]["examples"][0]["latency"]
    assert recorded >= 0.6
    proxy.get("/users/2")  # a first connection costs more than the others
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: proxy.get("/users/1"), range(4)))
    elapsed = time.monotonic() - started
    assert [r.status for r in replies] == [200] * 4
    assert recorded * 0.5 - 0.05 <= elapsed < recorded * 0.5 * 3  # waited, and side by side
    assert json.loads(replies[0].body)["path"] == "/users/1"
