"""capture.build: every distinct recorded exchange answerable, matched on content, not arrival order.

Each test writes a journal, builds a blueprint with `write_output`, compiles it as the gateway
does and replays the recorded requests through it, in the recorded order and shuffled.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import yaml

from backworks_core.capture.build import BuildInputError, write_output
from backworks_core.capture.model import Exchange
from backworks_core.capture.redact import RedactionRules, placeholder


def exchange(
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    headers: list[tuple[str, str]] | None = None,
    status: int = 200,
    body: object = None,
    request_body: bytes = b"",
) -> Exchange:
    content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode() if not isinstance(body, bytes) else body
    response_headers = [("Content-Type", "application/json")] if content else []
    return Exchange(method, "http", "api.test", 80, path, query or [], headers or [], request_body, status, response_headers, content, 0.0, 0.001)


def build(tmp_path: Path, exchanges: list[Exchange], *, max_examples: int = 5, rules: RedactionRules | None = None, name: str = "out.yaml", **kwargs) -> tuple[Path, str]:
    journal = tmp_path / "journal.jsonl"
    journal.write_text("".join(e.to_json() + "\n" for e in exchanges))
    output = tmp_path / name
    summary = write_output([str(journal)], str(output), "blueprint", name="t", max_examples=max_examples, rules=rules, **kwargs)
    return output, summary


async def replay(gateway, send, exchanges: list[Exchange], order: list[int]) -> list[tuple[int, bytes]]:
    got: dict[int, tuple[int, bytes]] = {}
    for index in order:
        e = exchanges[index]
        target = e.path + ("?" + "&".join(f"{k}={v}" for k, v in e.query) if e.query else "")
        flow = await send(gateway, e.method, target, headers=list(e.request_headers), body=e.request_body)
        got[index] = (flow.response.status_code, flow.response.get_content())
    return [got[i] for i in range(len(exchanges))]


def expected(exchanges: list[Exchange]) -> list[tuple[int, bytes]]:
    return [(e.status, e.response_body) for e in exchanges]


def orders(count: int) -> list[list[int]]:
    """The recorded order, reversed, and three shuffles with fixed seeds."""
    shuffled = []
    for seed in (1, 2, 3):
        order = list(range(count))
        random.Random(seed).shuffle(order)
        shuffled.append(order)
    return [list(range(count)), list(reversed(range(count))), *shuffled]


STATUSES = [200, 201, 202, 204, 400, 404, 418, 500, 503]


# -- nothing recorded is lost ---------------------------------------------------------------


async def test_every_recorded_status_answers_beyond_max_examples(tmp_path, compile_gateway, send):
    exchanges = [exchange("GET", f"/status/{code}", status=code, body=None if code == 204 else {"code": code}) for code in STATUSES]
    output, summary = build(tmp_path, exchanges, max_examples=3)
    document = yaml.safe_load(output.read_text())
    (endpoint,) = document["endpoints"]
    mock = endpoint["config"]["mock"]
    assert len(mock["examples"]) == 3  # max_examples: what the blueprint shows
    data = output.parent / mock["examples_file"]
    assert mock["examples_file"] == "out.yaml.data/001-get-status-status-id-int.jsonl"
    assert len(data.read_text().splitlines()) == len(STATUSES) - 3
    assert os.stat(data).st_mode & 0o777 == 0o600 and os.stat(data.parent).st_mode & 0o777 == 0o700
    assert "every one of the 9 distinct exchange(s) answerable" in summary
    assert "6 answer(s) beyond max_examples in out.yaml.data/ (1 file(s))" in summary
    gateway = compile_gateway(output)
    for order in orders(len(exchanges)):
        assert await replay(gateway, send, exchanges, order) == expected(exchanges)


async def test_repeated_answers_are_collapsed_and_counted(tmp_path, compile_gateway, send):
    poll = [exchange("GET", "/counter", body={"n": n}) for n in (1, 1, 2, 2, 2, 3)]
    output, summary = build(tmp_path, [*poll, Exchange("GET", "http", "api.test", 80, "*", status=200)])
    assert "3 repeated answer(s) left out" in summary
    assert "1 flow(s) left out: a path no endpoint can serve" in summary
    gateway = compile_gateway(output)
    got = [(await send(gateway, "GET", "/counter")).response.get_content() for _ in range(5)]
    assert [json.loads(b)["n"] for b in got] == [1, 2, 3, 3, 3]  # identical requests: still a sequence


async def test_a_long_sequence_continues_from_the_blueprint_into_the_data_file(tmp_path, compile_gateway, send):
    poll = [exchange("GET", "/counter", body={"n": n}) for n in range(1, 9)]
    output, _ = build(tmp_path, poll, max_examples=3)
    mock = yaml.safe_load(output.read_text())["endpoints"][0]["config"]["mock"]
    assert [e["body"]["n"] for e in mock["examples"]] == [1, 2, 3]
    gateway = compile_gateway(output)
    got = [json.loads((await send(gateway, "GET", "/counter")).response.get_content())["n"] for _ in range(10)]
    assert got == [1, 2, 3, 4, 5, 6, 7, 8, 8, 8]


def test_stale_data_files_are_removed_and_a_planted_folder_is_refused(tmp_path):
    many = [exchange("GET", f"/status/{code}", status=code, body={"code": code}) for code in (200, 201, 400, 404)]
    output, _ = build(tmp_path, many, max_examples=2)
    folder = tmp_path / "out.yaml.data"
    assert [p.name for p in folder.iterdir()] == ["001-get-status-status-id-int.jsonl"]
    (folder / "notes.txt").write_text("mine")
    build(tmp_path, many[:1], max_examples=2)  # everything inline now
    assert "examples_file" not in output.read_text()
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]  # ours removed, the user's kept
    (folder / "notes.txt").unlink()
    build(tmp_path, many[:1])
    assert not folder.exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder.symlink_to(elsewhere)
    with pytest.raises(BuildInputError, match="is a symbolic link"):
        build(tmp_path, many, max_examples=2)
    assert list(elsewhere.iterdir()) == []


async def test_data_file_strings_are_read_as_they_are(tmp_path, compile_gateway, send):
    exchanges = [exchange("GET", f"/t/{n}", body={"text": "${HOME} and $${x}"}) for n in range(1, 5)]
    output, _ = build(tmp_path, exchanges, max_examples=1)
    assert "examples_file" in output.read_text()
    gateway = compile_gateway(output)
    for order in orders(len(exchanges))[:2]:
        assert await replay(gateway, send, exchanges, order) == expected(exchanges)


# -- matching on content, not order ---------------------------------------------------------

SECRET = "Basic dXNlcjpwYXNzd2Q="
WRONG = "Basic dXNlcjp3cm9uZw=="


def auth_and_etag() -> list[Exchange]:
    return [
        exchange("GET", "/basic-auth/user/passwd", status=401, body=b""),
        exchange("GET", "/basic-auth/user/passwd", headers=[("Authorization", SECRET)], body={"authenticated": True, "user": "user"}),
        exchange("GET", "/basic-auth/user/passwd", headers=[("Authorization", WRONG)], status=401, body=b""),
        exchange("GET", "/etag/abc", body={"etag": "abc"}),
        exchange("GET", "/etag/abc", headers=[("If-None-Match", '"abc"')], status=304),
        exchange("GET", "/etag/abc", headers=[("If-Match", '"zzz"')], status=412),
        exchange("GET", "/etag/abc", headers=[("If-Match", '"abc"')], body={"etag": "abc", "matched": True}),
        exchange("GET", "/range", body=b"0123456789"),
        exchange("GET", "/range", headers=[("Range", "bytes=0-3")], status=206, body=b"0123"),
        exchange("GET", "/negotiate", headers=[("Accept", "application/json")], body={"as": "json"}),
        exchange("GET", "/negotiate", headers=[("Accept", "text/html")], body=b"<p>html</p>"),
    ]


@pytest.mark.parametrize("redacted", [True, False], ids=["redacted", "not-redacted"])
async def test_header_dependent_answers_replay_in_any_order(tmp_path, compile_gateway, send, redacted):
    exchanges = auth_and_etag()
    if redacted:  # as the capture writes them: each secret as its fingerprint
        journal = [
            Exchange(**{**e.__dict__, "request_headers": [(n, placeholder(v) if n == "Authorization" else v) for n, v in e.request_headers]})
            for e in exchanges
        ]
    else:
        journal = exchanges
    output, _ = build(tmp_path, journal, rules=RedactionRules(enabled=False))
    text = output.read_text()
    assert ("[REDACTED:" in text) is redacted and (SECRET in text) is not redacted
    gateway = compile_gateway(output)
    for order in orders(len(exchanges)):
        assert await replay(gateway, send, exchanges, order) == expected(exchanges)


async def test_the_default_redaction_keeps_present_and_absent_credentials_apart(tmp_path, compile_gateway, send):
    exchanges = auth_and_etag()[:2]
    output, _ = build(tmp_path, exchanges)  # the default rules redact Authorization
    assert SECRET not in output.read_text()
    gateway = compile_gateway(output)
    for order in orders(2):  # statuses: the body's `authenticated` is redaction's business
        assert [status for status, _ in await replay(gateway, send, exchanges, order)] == [401, 200]


async def test_headers_enter_when_only_where_they_changed_the_answer(tmp_path, compile_gateway, send):
    same = [
        exchange("GET", "/users/1", headers=[("Authorization", "Bearer one"), ("Accept", "*/*")], body={"id": 1}),
        exchange("GET", "/users/2", headers=[("Authorization", "Bearer two"), ("Accept", "application/json")], body={"id": 2}),
    ]
    output, _ = build(tmp_path, same, rules=RedactionRules(enabled=False))
    examples = yaml.safe_load(output.read_text())["endpoints"][0]["config"]["mock"]["examples"]
    assert all("headers" not in e["when"] for e in examples)
    gateway = compile_gateway(output)  # another client's token still gets the recorded answers
    flow = await send(gateway, "GET", "/users/2", headers={"Authorization": "Bearer three"})
    assert json.loads(flow.response.get_content()) == {"id": 2}


async def test_a_header_value_never_recorded_gets_the_first_answer(tmp_path, compile_gateway, send):
    exchanges = [
        exchange("GET", "/items/1", headers=[("Accept", "application/json")], body={"as": "json"}),
        exchange("GET", "/items/1", headers=[("Accept", "text/plain")], body=b"plain"),
    ]
    output, _ = build(tmp_path, exchanges)
    gateway = compile_gateway(output)
    assert json.loads((await send(gateway, "GET", "/items/1", headers={"Accept": "*/*"})).response.get_content()) == {"as": "json"}
    assert (await send(gateway, "GET", "/items/1", headers={"Accept": "text/plain"})).response.get_content() == b"plain"
    assert (await send(gateway, "GET", "/items/2")).response.status_code == 404  # an id never recorded


async def test_a_less_specific_request_never_takes_another_requests_answer(tmp_path, compile_gateway, send):
    """Header conditions are decided per endpoint, so a request's own `when` is always the most
    specific one that matches it, even against examples of other requests with more headers."""
    exchanges = [
        exchange("GET", "/x", query=[("a", "1")], headers=[("Authorization", "t"), ("If-None-Match", '"e"')], body={"which": "query"}),
        exchange("GET", "/x", headers=[("Authorization", "t"), ("If-None-Match", '"e"')], status=304),
        exchange("GET", "/x", headers=[("Authorization", "t")], body={"which": "plain"}),
        exchange("GET", "/x", status=401, body={"which": "anonymous"}),
    ]
    output, _ = build(tmp_path, exchanges, rules=RedactionRules(enabled=False))
    gateway = compile_gateway(output)
    for order in orders(len(exchanges)):
        assert await replay(gateway, send, exchanges, order) == expected(exchanges)


async def test_a_redacted_query_value_matches_its_own_request(tmp_path, compile_gateway, send):
    exchanges = [
        exchange("GET", "/users/7", query=[("session_id", "s1")], body={"id": 7, "session": 1}),
        exchange("GET", "/users/7", query=[("session_id", "s2")], body={"id": 7, "session": 2}),
    ]
    output, _ = build(tmp_path, exchanges)  # session_id is redacted by name
    assert "s1" not in output.read_text().replace("session", "")
    gateway = compile_gateway(output)
    replies = await replay(gateway, send, exchanges, [1, 0])
    assert all(status == 200 for status, _ in replies)
    if "[REDACTED:" in output.read_text():  # fingerprints tell the two sessions apart
        assert replies == expected(exchanges)


async def test_json_bodies_keep_posts_apart_and_match_headers_are_configurable(tmp_path, compile_gateway, send):
    exchanges = [
        exchange("POST", "/orders", request_body=b'{"item": "a"}', headers=[("X-Tenant", "t1")], status=201, body={"id": 1}),
        exchange("POST", "/orders", request_body=b'{"item": "b"}', headers=[("X-Tenant", "t1")], status=201, body={"id": 2}),
        exchange("POST", "/orders", request_body=b'{"item": "b"}', headers=[("X-Tenant", "t2")], status=403, body={"error": "tenant"}),
    ]
    output, _ = build(tmp_path, exchanges, match_headers=["x-tenant"])
    assert "x-tenant: t2" in output.read_text()
    gateway = compile_gateway(output)
    for order in orders(len(exchanges)):
        assert await replay(gateway, send, exchanges, order) == expected(exchanges)


async def test_a_value_and_its_placeholder_are_the_same_request(tmp_path, compile_gateway, send):
    """The capture redacts a secret from the flow it is seen in on: a path recorded before
    (`passwd`) and after (`[REDACTED:…]`) is one endpoint and one request, told apart by headers."""
    recorded = [
        exchange("GET", "/basic-auth/user/passwd", status=401, body=b""),
        exchange("GET", f"/basic-auth/user/{placeholder('passwd')}", headers=[("Authorization", placeholder(SECRET))], body={"authenticated": True}),
        exchange("GET", f"/basic-auth/user/{placeholder('passwd')}", status=401, body=b""),
    ]
    sent = [exchange("GET", "/basic-auth/user/passwd", headers=e.request_headers and [("Authorization", SECRET)], status=e.status, body=e.response_body) for e in recorded]
    output, _ = build(tmp_path, recorded, rules=RedactionRules(enabled=False))
    assert len(yaml.safe_load(output.read_text())["endpoints"]) == 1
    gateway = compile_gateway(output)
    for order in orders(len(sent)):
        assert await replay(gateway, send, sent, order) == expected(sent)
