"""Redaction: credentials and token-like values never reach a capture file; ids stay."""

from __future__ import annotations

import json

import pytest

from backworks_core.capture.model import Exchange
from backworks_core.capture.redact import REDACTED, RedactionRules, looks_like_secret_value, redact_body, redact_exchange, redact_headers, redact_json, redact_pairs

RULES = RedactionRules.build(fields=["ssn"], headers=["X-Tenant-Key"])
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize(
    "value",
    [JWT, "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "ghp_16C7e42F292c6912E7710c838347Ae178B4a", "Bearer abcdefgh12345678", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
)
def test_secret_values_are_recognised(value: str) -> None:
    assert looks_like_secret_value(value)


@pytest.mark.parametrize(
    "value",
    ["42", "3f2504e0-4f89-41d3-9a0c-0305e82c3301", "507f1f77bcf86cd799439011", "4bf92f3577b34da6a3ce929d0e0e4736", "hello world", "Ada Lovelace", "2026-11-26T16:00:00Z", "ada@example.com", "aaaaaaaaaaaaaaaaaaaaaaaa"],
)
def test_ids_dates_and_words_stay(value: str) -> None:
    assert not looks_like_secret_value(value)


def test_credential_headers_lose_their_values_and_keep_their_names() -> None:
    headers = [
        ("Authorization", "Bearer x"),
        ("Cookie", "sid=1"),
        ("Set-Cookie", "sid=2; HttpOnly"),
        ("X-API-Key", "k"),
        ("X-Tenant-Key", "configured"),
        ("X-Upstream-Token", "named like a secret"),
        ("X-Request-ID", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("Content-Type", "application/json"),
        ("WWW-Authenticate", 'Bearer realm="api"'),
        ("X-Debug", f"forwarded {JWT}"),
    ]
    assert redact_headers(headers, RULES) == [
        ("Authorization", REDACTED),
        ("Cookie", REDACTED),
        ("Set-Cookie", REDACTED),
        ("X-API-Key", REDACTED),
        ("X-Tenant-Key", REDACTED),
        ("X-Upstream-Token", REDACTED),
        ("X-Request-ID", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("Content-Type", "application/json"),
        ("WWW-Authenticate", 'Bearer realm="api"'),
        ("X-Debug", f"forwarded {REDACTED}"),
    ]


def test_json_fields_by_name_by_shape_and_configured() -> None:
    body = {
        "username": "alice",
        "password": "hunter2",
        "profile": {"ssn": "078-05-1120", "api_key": "short", "author": "bob"},
        "tokens": [{"access_token": "a", "refresh_token": None, "token_type": "Bearer", "expires_in": 3600}],
        "note": f"see {JWT} for details",
        "session_blob": "",
        "opaque": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "id": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
    }
    assert redact_json(body, RULES) == {
        "username": "alice",
        "password": REDACTED,
        "profile": {"ssn": REDACTED, "api_key": REDACTED, "author": "bob"},
        "tokens": [{"access_token": REDACTED, "refresh_token": None, "token_type": REDACTED, "expires_in": REDACTED}],
        "note": f"see {REDACTED} for details",
        "session_blob": "",
        "opaque": REDACTED,
        "id": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
    }


def test_query_form_and_text_bodies() -> None:
    assert redact_pairs([("page", "2"), ("api_key", "k"), ("sig", "aB3dE5fG7hI9jK1lM3nO5pQ7")], RULES) == [("page", "2"), ("api_key", REDACTED), ("sig", REDACTED)]
    form = redact_body(b"user=alice&password=hunter2", "application/x-www-form-urlencoded", RULES)
    assert form == b"user=alice&password=%5BREDACTED%5D"
    text = redact_body(f"Authorization: Bearer {JWT}\nok".encode(), "text/plain", RULES)
    assert JWT.encode() not in text and b"ok" in text
    binary = bytes(range(256))
    assert redact_body(binary, "image/png", RULES) == binary


def test_a_whole_exchange_keeps_nothing_secret_and_can_be_switched_off() -> None:
    exchange = Exchange(
        method="POST",
        scheme="https",
        host="api.example.com",
        port=443,
        path=f"/magic-link/{JWT}",
        query=[("token", "t0k3n"), ("page", "1")],
        request_headers=[("Authorization", f"Bearer {JWT}"), ("Content-Type", "application/json")],
        request_body=json.dumps({"password": "hunter2", "name": "Ada"}).encode(),
        status=200,
        response_headers=[("Set-Cookie", "session=abc123; HttpOnly"), ("Content-Type", "application/json")],
        response_body=json.dumps({"access_token": JWT, "id": 7}).encode(),
    )
    redacted = redact_exchange(exchange, RULES)
    text = redacted.to_json()
    for secret in (JWT, "hunter2", "t0k3n", "abc123"):
        assert secret not in text
    assert redacted.path == f"/magic-link/{REDACTED}"
    assert json.loads(redacted.response_body) == {"access_token": REDACTED, "id": 7}
    assert redact_exchange(exchange, RedactionRules.build(enabled=False)) == exchange


def test_hostile_nesting_is_bounded() -> None:
    deep: object = "leaf"
    for _ in range(200):
        deep = {"a": deep}
    assert "leaf" not in json.dumps(redact_json(deep, RULES))


# The console and the files agree (issue 17, item 6): one set of rules for both


def test_redact_target_is_the_query_as_the_files_have_it() -> None:
    from backworks_core.capture.redact import redact_target

    rules = RedactionRules()
    assert redact_target("/orders?api_key=abc123&token=t0k&page=2", rules) == "/orders?api_key=[REDACTED]&token=[REDACTED]&page=2"
    assert redact_target("/cb?next=%2Fx%3Fapi_key%3Dabc123", rules) == "/cb?next=/x%3Fapi_key%3D[REDACTED]"
    assert redact_target("/x;session=abc123/y", rules) == "/x;session=[REDACTED]/y"
    assert redact_target("/plain", rules) == "/plain"
    assert redact_target("/o?api_key=abc123", RedactionRules(enabled=False)) == "/o?api_key=abc123"  # --no-redact: the files keep it too
    assert redact_target("/o?pin=1234", RedactionRules.build(fields=["pin"])) == "/o?pin=[REDACTED]"


def test_secret_assignments_inside_text_headers_and_short_json_strings_go() -> None:
    from backworks_core.capture.redact import redact_headers, redact_json, redact_text

    rules = RedactionRules()
    assert redact_text("echo: api_key=abc123&page=2") == "echo: api_key=[REDACTED]&page=2"
    assert redact_json({"query": "api_key=abc123", "q": "a=b", "author": "x"}, rules) == {"query": "api_key=[REDACTED]", "q": "a=b", "author": "x"}
    assert redact_headers([("Referer", "http://a/?access_token=abc123&x=1"), ("Content-Type", "text/plain; charset=utf-8")], rules) == [
        ("Referer", "http://a/?access_token=[REDACTED]&x=1"),
        ("Content-Type", "text/plain; charset=utf-8"),
    ]
