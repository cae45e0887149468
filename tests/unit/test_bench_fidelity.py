"""The fidelity suite's comparison (bench/fidelity.py): what counts as the same answer, and what does not."""

from __future__ import annotations

import base64
import gzip
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import fidelity  # noqa: E402


def answer(status: int = 200, headers: list[list[str]] | None = None, body: bytes | dict[str, Any] = b"", decoded: bool = True) -> dict[str, Any]:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    return {"status": status, "headers": headers or [], "body": base64.b64encode(raw).decode(), "decoded": decoded, "error": None}


def test_same_answer_on_another_port_with_another_date_matches() -> None:
    live = answer(headers=[["Content-Type", "application/json"]], body={"url": "http://127.0.0.1:5001/get", "at": "2026-12-07T10:00:00Z"})
    got = answer(headers=[["Content-Type", "application/json"]], body={"url": "http://127.0.0.1:8080/get", "at": "2026-12-07T11:22:33Z"})
    assert fidelity.compare(live, got).ok


def test_status_and_headers_that_matter_are_compared() -> None:
    live = answer(401, [["WWW-Authenticate", 'Basic realm="x"'], ["Set-Cookie", "lang=en; Path=/"]])
    assert "status 200 (live 401)" in fidelity.compare(live, answer(200, live["headers"])).reasons[0]
    reasons = fidelity.compare(live, answer(401, [["Set-Cookie", "[REDACTED]"]])).reasons
    assert any("www-authenticate missing" in r for r in reasons)
    assert any("Set-Cookie names" in r for r in reasons)
    # the cookie's value may be redacted; its name stays
    assert fidelity.compare(live, answer(401, [["WWW-Authenticate", 'Basic realm="x"'], ["Set-Cookie", "lang=[REDACTED:0123456789ab]; Path=/"]])).ok


def test_placeholder_stands_only_for_a_secret_the_requests_sent() -> None:
    live = answer(body={"headers": {"Authorization": "Bearer tok-3fK9qLmZ2xR7"}, "cookies": {"lang": "en"}, "authenticated": True})
    good = answer(body={"headers": {"Authorization": "[REDACTED]"}, "cookies": {"lang": "en"}, "authenticated": True})
    assert fidelity.compare(live, good).ok
    over = fidelity.compare(live, answer(body={"headers": {"Authorization": "[REDACTED]"}, "cookies": {"lang": "[REDACTED]"}, "authenticated": True}))
    assert not over.ok and "over-redaction" in over.reasons[0]
    boolean = fidelity.compare(live, answer(body={"headers": {"Authorization": "[REDACTED]"}, "cookies": {"lang": "en"}, "authenticated": "[REDACTED]"}))
    assert not boolean.ok and "over-redaction" in boolean.reasons[0]


def test_compressed_body_is_compared_decoded_and_json_by_value() -> None:
    body = b'{"a": 1,\n "b": [1, 2]}'
    live = answer(headers=[["Content-Encoding", "gzip"]], body=gzip.compress(body), decoded=False)  # curl: as sent
    compact = answer(body=b'{"a":1,"b":[1,2]}')
    verdict = fidelity.compare(live, compact)
    assert verdict.ok and not verdict.byte_identical
    assert fidelity.compare(live, answer(body=body)).byte_identical
    assert not fidelity.compare(live, answer(body=b'{"a":2,"b":[1,2]}')).ok


def test_an_echo_of_an_added_header_is_a_mismatch() -> None:
    live = answer(body={"headers": {"Host": "127.0.0.1:5001"}})
    got = answer(body={"headers": {"Host": "127.0.0.1:8080", "Traceparent": "00-abc-def-01"}})
    verdict = fidelity.compare(live, got)
    assert not verdict.ok and "Traceparent" in verdict.reasons[0]
    assert fidelity.area("backworks", verdict.reasons, got) == "transparent capture"


def test_no_answer_is_a_mismatch() -> None:
    assert not fidelity.compare(answer(), {"error": "ConnectionError: refused"}).ok


def test_corpus_is_about_sixty_requests_per_app_with_every_client() -> None:
    for app in fidelity.APPS.values():
        assert 50 <= len(app.requests) <= 80
        assert {r["client"] for r in app.requests} == set(fidelity.CLIENTS)
        assert len({r["id"] for r in app.requests}) == len(app.requests)


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="schemathesis">
<testcase name="GET /users/{id}"><failure type="failure" message="ST103, ST202">1. Test Case ID: aaa

- ST202 Schema-valid request rejected

    Valid data should have been accepted

- ST103 Undocumented status code

    Received: 400

[400] Bad Request:

    `{"error":"request path refused: an escaped control character (%0F) in the path","status":400,"request_id":"r1"}`

2. Test Case ID: bbb

- ST108 Response violates schema

    "id" is a required property

[200] OK:

    `{}`</failure></testcase>
<testcase name="GET /ok"/>
</testsuite></testsuites>
"""


def test_schemathesis_failures_are_blamed_by_side(tmp_path: Path) -> None:
    """On the mock, a response that does not fit the document is Backworks' (the mock serves only
    recorded answers); on the app, it is the app's answer to input never recorded."""
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    mock = fidelity.parse_junit(junit, "mock")
    assert mock["operations"] == 2
    assert mock["blame"] == {"design": 2, "backworks": 1}  # the gateway's path refusal is its design
    assert mock["failures"]["ST108"] == ['GET /users/{id}: "id" is a required property']
    app = fidelity.parse_junit(junit, "app")
    assert app["blame"].get("backworks", 0) == 0 and sum(app["blame"].values()) == 3
    assert fidelity.classify_st("ST101", "mock", '`{"error":"boom","status":500,"request_id":"r"}`')[0] == "backworks"
    assert fidelity.classify_st("ST101", "mock", "<h1>Internal Server Error</h1>")[0] == "recording"
    assert fidelity.classify_st("ST103", "mock")[0] == "backworks"
    assert fidelity.classify_st("error", "mock")[0] == "backworks"  # a mock that does not answer


# -- the throughput phase ------------------------------------------------------------------------


def sample(rps: float, errors: int = 0) -> Any:
    return fidelity.Sample(rps=rps, requests=int(rps * 10), p50_ms=1.0, p90_ms=2.0, p99_ms=3.0, errors=errors)


def test_workers_are_started_the_way_users_run_them() -> None:
    files = {"blueprint": Path("/bp/captured.yaml"), "openapi": Path("/bp/openapi.json"), "flows": Path("/bp/flows.mitm")}
    argv = fidelity.mock_argv("backworks-w2", files, None, 4321)
    assert argv is not None and Path(argv[0]).name == "backworks"
    assert argv[1:3] == ["run", "/bp/captured.yaml"] and argv[argv.index("--workers") + 1] == "2" and argv[argv.index("--port") + 1] == "4321"
    assert argv[argv.index("--") :] == ["--", "--set", "backworks_admin=off"]
    quiet = fidelity.mock_argv("backworks-w2", files, None, 4321, quiet=True)
    assert quiet is not None and quiet[quiet.index("--flow-detail") + 1] == "0" and quiet.index("--flow-detail") < quiet.index("--")  # backworks run's own option
    for tool in ("backworks", "server-replay"):  # the same logging for every tool
        single = fidelity.mock_argv(tool, files, None, 4321, quiet=True)
        assert single is not None and single[single.index("--flow-detail") + 1] == "0"
    assert fidelity.mock_argv("prism", files, Path("/p/prism"), 4321, quiet=True)[-2:] == ["-v", "warn"]  # type: ignore[index]
    assert fidelity.workers_of("backworks-w2") == 2 and fidelity.workers_of("backworks") == fidelity.workers_of("prism-m") == 1
    prism = fidelity.mock_argv("prism-m", files, Path("/p/prism"), 4321)
    assert prism is not None and prism[:3] == ["/p/prism", "mock", "-m"] and prism[-1] == "/bp/openapi.json"
    assert fidelity.mock_argv("prism-m", files, None, 4321) is None  # Prism not installed: left out
    assert fidelity.mock_argv("backworks-w0", files, None, 4321) is None


def test_throughput_loads_workers_and_prism_m_beside_what_was_replayed() -> None:
    assert fidelity.throughput_tools(["backworks", "server-replay", "prism"], 2) == ["backworks", "backworks-w2", "server-replay", "prism", "prism-m"]
    assert fidelity.throughput_tools(["backworks"], 3) == ["backworks", "backworks-w3"]  # Prism's answers were never compared
    assert fidelity.throughput_tools(["prism"], 2) == ["prism", "prism-m"]


def test_load_goes_only_to_gets_every_tool_answered_right_with_a_2xx_or_3xx() -> None:
    requests = [
        {"id": "a", "method": "GET", "path": "/get", "headers": {}},
        {"id": "b", "method": "GET", "path": "/basic-auth/u/p", "headers": {}},  # a recorded 401: a wrk error
        {"id": "c", "method": "GET", "path": "/redirect/1", "headers": {}},
        {"id": "d", "method": "GET", "path": "/bearer", "headers": {"Authorization": "Bearer x"}},
        {"id": "e", "method": "POST", "path": "/post", "headers": {}},
        {"id": "f", "method": "GET", "path": "/uuid", "headers": {}},
    ]
    live = {"a": answer(200), "b": answer(401), "c": answer(302), "d": answer(200), "e": answer(200), "f": answer(200)}
    runs = [fidelity.Run("httpbin", "prism", "recorded", mismatches=[{"id": "f"}]), fidelity.Run("httpbin", "server-replay", "shuffled s1", mismatches=[{"id": "a"}])]
    assert [r["id"] for r in fidelity.throughput_requests(requests, live, runs)] == ["a", "c"]


def test_summary_is_the_median_over_rounds_against_each_prism() -> None:
    rows = fidelity.throughput_summary({
        "backworks": [sample(700), sample(100), sample(720)],
        "backworks-w2": [sample(1300), sample(1250, errors=2), sample(1400)],
        "prism": [sample(1000), sample(1100), sample(900)],
        "prism-m": [sample(1200), sample(1150), sample(5000)],
    })  # fmt: skip
    by = {r["tool"]: r for r in rows}
    assert by["backworks"]["rps"] == 700 and by["backworks"]["vs"]["prism"] == 0.7  # one slow round does not decide
    assert by["backworks-w2"]["errors"] == 2 and by["backworks-w2"]["rounds"] == 3
    assert round(by["backworks-w2"]["vs"]["prism-m"], 3) == round(1300 / 1200, 3)
    assert by["backworks-w2"]["label"] == "backworks run --workers 2"
    verdict = fidelity.workers_verdict(rows)
    assert verdict is not None and "NOT ahead" in verdict and "2 wrk error(s)" in verdict  # errors are not a win
    clean = fidelity.throughput_summary({"backworks-w2": [sample(1300)], "prism": [sample(1000)], "prism-m": [sample(1200)]})
    assert "ahead of Prism" in (fidelity.workers_verdict(clean) or "") and "NOT" not in (fidelity.workers_verdict(clean) or "")
    slower = fidelity.throughput_summary({"backworks-w2": [sample(1100)], "prism": [sample(1000)], "prism-m": [sample(1200)]})
    assert "NOT ahead" in (fidelity.workers_verdict(slower) or "")  # ahead of every Prism configuration, or not ahead
    assert fidelity.workers_verdict(fidelity.throughput_summary({"backworks-w2": [sample(1100)]})) is None  # no Prism: no verdict


def test_connections_are_counted_per_worker_from_the_prefixed_log() -> None:
    log = (
        "[w0] [17:00:01.100][127.0.0.1:50000] client connect\n"
        "[w1] [17:00:01.101][127.0.0.1:50002] client connect\n"
        "[w0] [17:00:01.102][127.0.0.1:50004] client connect\n"
        "[w0] [17:00:01.300][127.0.0.1:50000] client disconnect\n"
        "[17:00:01.400][127.0.0.1:50006] client connect\n"  # a single process: no prefix, not counted
    )
    assert fidelity.connections_per_worker(log) == {0: 2, 1: 1}
