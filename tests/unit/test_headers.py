"""backworks_core.headers answers as mitmproxy's `Headers` does, field for field."""

from __future__ import annotations

import pytest
from mitmproxy import http

from backworks_core import headers as fast

FIELDS = [
    (b"Host", b"api.test"),
    (b"X-Forwarded-For", b"10.0.0.1"),
    (b"accept", b"*/*"),
    (b"x-forwarded-for", b"10.0.0.2"),
    (b"X-Name", "Zoë".encode()),
    (b"X-Raw", b"\xff\xfe"),
    (b"Empty", b""),
]
NAMES = ["host", "HOST", "x-forwarded-for", "X-FORWARDED-FOR", "accept", "x-name", "x-raw", "empty", "missing", "X-Missing"]


def sample() -> http.Headers:
    return http.Headers(list(FIELDS))


@pytest.mark.parametrize("name", NAMES)
def test_reads_match_mitmproxy(name: str) -> None:
    headers = sample()
    assert fast.get(headers, name) == headers.get(name)
    assert fast.get(headers, name, "fallback") == headers.get(name, "fallback")
    assert fast.values(headers, name) == headers.get_all(name)
    assert fast.has(headers, name) == (name in headers)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("value", ["new", "", "Zoë", "\udcff"])
def test_put_matches_mitmproxy(name: str, value: str) -> None:
    ours, theirs = sample(), sample()
    fast.put(ours, name, value)
    theirs[name] = value
    assert ours.fields == theirs.fields


def test_put_all_sets_several_in_one_pass_as_assignments_in_turn_would() -> None:
    ours, theirs = sample(), sample()
    items = [("x-forwarded-for", "1.2.3.4"), ("RateLimit-Limit", "10"), ("Accept", "text/html"), ("RateLimit-Remaining", "9")]
    fast.put_all(ours, items)
    for name, value in items:
        theirs[name] = value
    assert ours.fields == theirs.fields
    before = ours.fields
    fast.put_all(ours, [])
    assert ours.fields == before


@pytest.mark.parametrize("name", NAMES)
def test_remove_matches_mitmproxy_pop(name: str) -> None:
    ours, theirs = sample(), sample()
    fast.remove(ours, name)
    theirs.pop(name, None)
    assert ours.fields == theirs.fields
