"""Request and response transforms: headers, path, query, JSON and text bodies, status_map.

Every operation is table-driven; bodies go through real mitmproxy messages (`treq`/`tresp`),
compressed with the real codecs, and load-time mistakes through the real blueprint loader.
"""

from __future__ import annotations

import datetime
import gzip
import json
import logging
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import brotli
import pytest
from mitmproxy import http
from mitmproxy.test import tutils
from pydantic import ValidationError

from backworks_core.transforms import (
    CompiledHeaderTransform,
    CompiledTransform,
    HeaderTransform,
    RequestTransform,
    ResponseTransform,
)
from backworks_core.diagnostics import Diagnostic
from backworks_core.templates import TemplateContext

LOGGER = "backworks_core.transforms"
FIXED = datetime.datetime(2026, 11, 22, 3, 4, 5, 123000, tzinfo=datetime.timezone.utc)


def request(
    target: str = "/",
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    *,
    length: bool = True,
) -> http.Request:
    fields = [(k.encode(), v.encode()) for k, v in headers or []]
    if length:
        fields.append((b"content-length", str(len(body)).encode()))
    return tutils.treq(path=target.encode(), headers=http.Headers(fields), content=body)


def response(status: int = 200, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> http.Response:
    fields = [(k.encode(), v.encode()) for k, v in headers or []]
    fields.append((b"content-length", str(len(body)).encode()))
    return tutils.tresp(status_code=status, headers=http.Headers(fields), content=body)


def ctx_for(req: http.Request | None = None, **overrides: Any) -> TemplateContext:
    """A pinned context reading `req` the way backworks_core.context.template_context does."""
    counter = iter(range(1, 1000))
    values: dict[str, Any] = {
        "path": {"id": "42"},
        "query": req.query if req is not None else {},
        "headers": req.headers if req is not None else {},
        "auth": {"sub": "alice", "name": "Jürgen 名前"},
        "env": {"SECRET": "s3cr3t", "REGION": "eu"},
        "now": lambda: FIXED,
        "new_uuid": lambda: f"uuid-{next(counter)}",
    }
    values.update(overrides)
    return TemplateContext(**values)


def compiled_request(**spec: Any) -> CompiledTransform:
    return CompiledTransform(RequestTransform(**spec))


def compiled_response(**spec: Any) -> CompiledTransform:
    return CompiledTransform(ResponseTransform(**spec))


def assert_length_right(message: http.Message) -> None:
    assert message.headers["content-length"] == str(len(message.raw_content or b""))


def transform_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.INFO]


# -- compiled form --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, flags",
    [
        ({}, (True, False, False, False)),
        ({"headers": {"X": "1"}}, (False, True, False, False)),
        ({"remove_headers": ["X"]}, (False, True, False, False)),
        ({"path": {"strip_prefix": "/api"}}, (False, False, True, False)),
        ({"path": {}}, (True, False, False, False)),
        ({"query": {"remove": ["a"]}}, (False, False, True, False)),
        ({"body": {"set": {"a": 1}}}, (False, False, False, True)),
        ({"body": {"replace": [{"pattern": "a", "replacement": "b"}]}}, (False, False, False, True)),
        ({"body": {}}, (True, False, False, False)),
    ],
)
def test_compiled_flags(spec: dict, flags: tuple) -> None:
    t = compiled_request(**spec)
    assert (t.is_empty, t.touches_headers, t.touches_path, t.touches_body) == flags


def test_the_names_addons_proxy_imports_still_work() -> None:
    assert CompiledHeaderTransform is CompiledTransform
    assert CompiledHeaderTransform(None).is_empty
    t = CompiledHeaderTransform(ResponseTransform(status_map={404: 200}))
    assert t.status_map == {404: 200} and not t.is_empty
    assert t.apply_status(404) == 200 and t.apply_status(500) == 500
    headers = [("A", "1")]
    assert CompiledHeaderTransform(HeaderTransform()).apply_headers(headers, ctx_for()) is headers


def test_a_headers_only_transform_leaves_the_body_and_target_alone() -> None:
    body = b'{"a": 1}'
    req = request("/p?a=1", body, [("Content-Type", "application/json")])
    raw = req.raw_content
    compiled_request(headers={"X-A": "1"}).apply_request(req, ctx_for(req))
    assert req.raw_content is raw and req.path == "/p?a=1"
    assert req.headers["x-a"] == "1"


# -- headers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, before, after",
    [
        ({"headers": {"X": "v"}}, [("A", "1")], [("A", "1"), ("X", "v")]),
        ({"headers": {"X": "v"}}, [("x", "1"), ("B", "b"), ("X", "2")], [("B", "b"), ("X", "v")]),
        ({"remove_headers": ["cookie"]}, [("Cookie", "a"), ("A", "1"), ("COOKIE", "b")], [("A", "1")]),
        ({"remove_headers": ["Missing"]}, [("A", "1")], [("A", "1")]),
        (
            {"rename_headers": {"X-Old": "X-New"}},
            [("x-old", "1"), ("A", "2"), ("X-OLD", "3")],
            [("X-New", "1"), ("A", "2"), ("X-New", "3")],
        ),
        ({"rename_headers": {"A": "B", "B": "C"}}, [("A", "1")], [("C", "1")]),
        (
            {"remove_headers": ["X-New"], "rename_headers": {"X-Old": "X-New"}, "headers": {"X-Set": "s"}},
            [("X-New", "gone"), ("X-Old", "kept"), ("X-Set", "old")],
            [("X-New", "kept"), ("X-Set", "s")],
        ),
        ({"headers": {"X-Name": "Jürgen ✓"}}, [], [("X-Name", "Jürgen ✓")]),
    ],
)
def test_header_operations(spec: dict, before: list, after: list) -> None:
    t = compiled_request(**spec)
    assert t.apply_headers(before, ctx_for()) == after
    req = request("/", headers=before, length=False)  # the same operations on mitmproxy's fields
    t.apply_request(req, ctx_for(req))
    assert [(k.decode(), v.decode()) for k, v in req.headers.fields] == after


def test_header_templates_render_every_form() -> None:
    req = request("/p?q=hello", headers=[("X-In", "from-client")])
    spec = {
        "X-Id": "{{path.id}}",
        "X-Q": "{{query.q}}",
        "X-H": "{{header.x-in}}",
        "X-User": "{{auth.sub}}",
        "X-Env": "{{env.REGION}}",
        "X-Now": "{{now}}",
        "X-Uuid": "{{uuid}}",
        "X-Mixed": "id={{path.id}};missing={{query.nope}}",
    }
    compiled_request(headers=spec).apply_request(req, ctx_for(req))
    got = {name: req.headers[name] for name in spec}
    assert got == {
        "X-Id": "42",
        "X-Q": "hello",
        "X-H": "from-client",
        "X-User": "alice",
        "X-Env": "eu",
        "X-Now": "2026-11-22T03:04:05.123Z",
        "X-Uuid": "uuid-1",
        "X-Mixed": "id=42;missing=",
    }


def test_request_values_are_inserted_as_data_never_evaluated() -> None:
    req = request("/p?q=%7B%7Benv.SECRET%7D%7D", headers=[("X-In", "{{env.SECRET}}")])
    compiled_request(headers={"X-Q": "{{query.q}}", "X-H": "{{header.X-In}}"}).apply_request(req, ctx_for(req))
    assert (req.headers["X-Q"], req.headers["X-H"]) == ("{{env.SECRET}}", "{{env.SECRET}}")


def test_non_ascii_header_values_reach_the_wire_as_utf8() -> None:
    req = request("/")
    compiled_request(headers={"X-Name": "{{auth.name}}"}).apply_request(req, ctx_for(req))
    assert dict(req.headers.fields)[b"X-Name"] == "Jürgen 名前".encode()


@pytest.mark.parametrize("value", ["a%0d%0aX-Evil:%201", "a%0aB", "a%0dB", "a%00b"])
def test_a_header_value_carrying_cr_lf_or_nul_is_refused_and_nothing_changes(value: str) -> None:
    body = b'{"a": 1}'
    req = request(f"/api/p?q={value}&x=1", body, [("Cookie", "c")])
    before = (req.path, req.headers.fields, req.raw_content)
    t = compiled_request(
        headers={"X-Q": "{{query.q}}"},
        remove_headers=["Cookie"],
        path={"strip_prefix": "/api"},
        query={"remove": ["x"]},
        body={"set": {"b": 2}},
    )
    with pytest.raises(ValueError, match="header X-Q would carry CR, LF or NUL"):
        t.apply_request(req, ctx_for(req))
    assert (req.path, req.headers.fields, req.raw_content) == before
    with pytest.raises(ValueError, match="header X-Q would carry CR, LF or NUL"):
        t.apply_headers([], ctx_for(req))


def test_templates_read_the_message_as_it_reached_the_transform() -> None:
    req = request("/p?q=orig", b'{"a": 1}', [("X-In", "client")])
    t = compiled_request(
        remove_headers=["X-In"],
        headers={"X-Q": "{{query.q}}"},
        query={"rename": {"q": "search"}},
        body={"set": {"h": "{{header.X-In}}", "q": "{{query.q}}"}},
    )
    t.apply_request(req, ctx_for(req))
    assert req.headers["X-Q"] == "orig" and "X-In" not in req.headers
    assert req.path == "/p?search=orig"
    assert json.loads(req.content) == {"a": 1, "h": "client", "q": "orig"}


# -- path -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, target, expected",
    [
        ({"strip_prefix": "/api"}, "/api/users?x=1", "/users?x=1"),
        ({"strip_prefix": "/api"}, "/api", "/"),
        ({"strip_prefix": "/api"}, "/api?x=1", "/?x=1"),
        ({"strip_prefix": "/api/"}, "/api/users", "/users"),
        ({"strip_prefix": "/api"}, "/apix/users", "/apix/users"),
        ({"strip_prefix": "/api"}, "/other/api/x", "/other/api/x"),
        ({"add_prefix": "/v2"}, "/users", "/v2/users"),
        ({"add_prefix": "/v2"}, "/", "/v2"),
        ({"add_prefix": "/v2/"}, "/users?x=1", "/v2/users?x=1"),
        ({"strip_prefix": "/api", "add_prefix": "/v2"}, "/api/users", "/v2/users"),
        ({"rewrite": [{"pattern": r"^/users/(\d+)$", "replacement": r"/people/\1"}]}, "/users/42?x=1", "/people/42?x=1"),
        ({"rewrite": [{"pattern": r"^/users/(\d+)$", "replacement": r"/people/\1"}]}, "/users/abc", "/users/abc"),
        ({"rewrite": [{"pattern": r"^/u/(?P<id>\d+)", "replacement": r"/user/\g<id>"}]}, "/u/7/x", "/user/7/x"),
        ({"rewrite": [{"pattern": "/old(?=/|$)", "replacement": "/new"}]}, "/old/a/old", "/new/a/new"),
        (
            {"strip_prefix": "/api", "add_prefix": "/v2", "rewrite": [{"pattern": "^/v2/(.*)$", "replacement": r"/v3/\1"}]},
            "/api/items",
            "/v3/items",
        ),
        (
            {"rewrite": [{"pattern": "a", "replacement": "b"}, {"pattern": "b", "replacement": "c"}]},
            "/a",
            "/c",
        ),
        ({"rewrite": [{"pattern": "^/drop$", "replacement": ""}]}, "/drop?x=1", "/?x=1"),
        ({"rewrite": [{"pattern": "^/", "replacement": ""}]}, "/a/b", "/a/b"),
        ({"rewrite": [{"pattern": "x", "replacement": "y"}]}, "/x?x=x", "/y?x=x"),
        ({"rewrite": [{"pattern": "caf%C3%A9", "replacement": "coffee"}]}, "/caf%C3%A9", "/coffee"),
        ({"strip_prefix": "/api"}, "*", "*"),
    ],
)
def test_path_operations(spec: dict, target: str, expected: str) -> None:
    t = compiled_request(path=spec)
    assert t.apply_target(target, ctx_for()) == expected
    req = request(target)
    t.apply_request(req, ctx_for(req))
    assert req.path == expected


# -- query ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, target, expected",
    [
        ({"remove": ["a"]}, "/p?a=1&b=2&a=3&c", "/p?b=2&c"),
        ({"remove": ["a", "b"]}, "/p?a=1&b=2", "/p"),
        ({"remove": ["missing"]}, "/p?a=1", "/p?a=1"),
        ({"rename": {"a": "z"}}, "/p?a=1&b=2&a=3", "/p?z=1&b=2&z=3"),
        ({"rename": {"flag": "f"}}, "/p?flag&x=1", "/p?f&x=1"),
        ({"rename": {"a": "b", "b": "c"}}, "/p?a=1", "/p?c=1"),
        ({"rename": {"a": "x y"}}, "/p?a=1", "/p?x%20y=1"),
        ({"set": {"a": "9"}}, "/p?a=1&b=2&a=3", "/p?a=9&b=2"),
        ({"set": {"b": "9"}}, "/p?a=1&b=2&c=3&b=4", "/p?a=1&b=9&c=3"),
        ({"set": {"a": "x y&z=1#"}}, "/p?b=2", "/p?b=2&a=x%20y%26z%3D1%23"),
        ({"set": {"a": "1"}}, "/p", "/p?a=1"),
        ({"set": {"a": ""}}, "/p", "/p?a="),
        ({"set": {"n": "1"}}, "/p?x=a+b&y=%7e&flag&&z=", "/p?x=a+b&y=%7e&flag&&z=&n=1"),
        ({"remove": ["my key"]}, "/p?my+key=1&my%20key=2&k=3", "/p?k=3"),
        ({"remove": ["b"], "rename": {"a": "b"}, "set": {"a": "new"}}, "/p?a=1&b=2", "/p?b=1&a=new"),
        ({"set": {"名": "値"}}, "/p", "/p?%E5%90%8D=%E5%80%A4"),
        ({"remove": ["名"]}, "/p?%E5%90%8D=1&x=2", "/p?x=2"),
    ],
)
def test_query_operations(spec: dict, target: str, expected: str) -> None:
    t = compiled_request(query=spec)
    req = request(target)
    t.apply_request(req, ctx_for(req))
    assert req.path == expected


def test_query_templates_insert_request_values_as_data() -> None:
    req = request("/p?q=%7B%7Benv.SECRET%7D%7D")
    t = compiled_request(query={"set": {"user": "{{auth.sub}}", "echo": "{{query.q}}", "env": "{{env.REGION}}"}})
    t.apply_request(req, ctx_for(req))
    assert req.path == "/p?q=%7B%7Benv.SECRET%7D%7D&user=alice&echo=%7B%7Benv.SECRET%7D%7D&env=eu"
    assert req.query.get_all("echo") == ["{{env.SECRET}}"]


@pytest.mark.parametrize("value", ["%0d%0a", "a%0Ab", "%00"])
def test_a_query_value_carrying_cr_lf_or_nul_is_refused(value: str) -> None:
    req = request(f"/p?q={value}")
    with pytest.raises(ValueError, match="query parameter echo would carry CR, LF or NUL"):
        compiled_request(query={"set": {"echo": "{{query.q}}"}}).apply_request(req, ctx_for(req))
    assert req.path == f"/p?q={value}"


# -- JSON bodies ----------------------------------------------------------------------------

ORDER = {"id": 7, "password": "pw", "items": [{"sku": "a", "price": 1}, {"sku": "b", "price": 2}], "meta": {"v": 1}}


@pytest.mark.parametrize(
    "spec, before, after",
    [
        ({"set": {"meta.source": "gateway"}}, ORDER, {**ORDER, "meta": {"v": 1, "source": "gateway"}}),
        ({"set": {"a.b.c": [1, {"d": None}]}}, {}, {"a": {"b": {"c": [1, {"d": None}]}}}),
        ({"set": {"flag": True, "n": 1.5, "nil": None}}, {}, {"flag": True, "n": 1.5, "nil": None}),
        (
            {"set": {"items[*].currency": "EUR"}},
            ORDER,
            {**ORDER, "items": [{"sku": "a", "price": 1, "currency": "EUR"}, {"sku": "b", "price": 2, "currency": "EUR"}]},
        ),
        ({"set": {"items[1].price": 20}}, ORDER, {**ORDER, "items": [{"sku": "a", "price": 1}, {"sku": "b", "price": 20}]}),
        ({"set": {"items[-1].sku": "z"}}, ORDER, {**ORDER, "items": [{"sku": "a", "price": 1}, {"sku": "z", "price": 2}]}),
        (
            {"set": {"orders[*].lines[*].tax": 0}},
            {"orders": [{"lines": [{"q": 1}, {"q": 2}]}, {"lines": []}, {"lines": [{"q": 3}]}]},
            {"orders": [{"lines": [{"q": 1, "tax": 0}, {"q": 2, "tax": 0}]}, {"lines": []}, {"lines": [{"q": 3, "tax": 0}]}]},
        ),
        ({"set": {"grid[*][0]": 0}}, {"grid": [[1, 2], [3, 4]]}, {"grid": [[0, 2], [0, 4]]}),
        ({"set": {"[*].seen": True}}, [{"id": 1}, {"id": 2}], [{"id": 1, "seen": True}, {"id": 2, "seen": True}]),
        ({"remove": ["password"]}, ORDER, {k: v for k, v in ORDER.items() if k != "password"}),
        ({"remove": ["items[*].price"]}, ORDER, {**ORDER, "items": [{"sku": "a"}, {"sku": "b"}]}),
        ({"remove": ["items[0]"]}, ORDER, {**ORDER, "items": [{"sku": "b", "price": 2}]}),
        ({"remove": ["items[*]"]}, ORDER, {**ORDER, "items": []}),
        (
            {"remove": ["o[*].l[*].secret"]},
            {"o": [{"l": [{"secret": 1, "k": 1}]}, {"l": [{"k": 2}]}]},
            {"o": [{"l": [{"k": 1}]}, {"l": [{"k": 2}]}]},
        ),
        ({"rename": {"id": "order_id"}}, {"id": 7, "x": 1}, {"order_id": 7, "x": 1}),
        (
            {"rename": {"items[*].price": "items[*].amount"}},
            ORDER,
            {**ORDER, "items": [{"sku": "a", "amount": 1}, {"sku": "b", "amount": 2}]},
        ),
        ({"rename": {"meta.v": "version"}}, {"meta": {"v": 1}}, {"meta": {}, "version": 1}),
        (
            {"remove": ["b"], "rename": {"a": "b"}, "set": {"a": "new"}},
            {"a": 1, "b": 2},
            {"b": 1, "a": "new"},
        ),
        ({"set": {"名前.姓": "山田", "emoji": "✓ 🎉"}}, {"名前": {}}, {"名前": {"姓": "山田"}, "emoji": "✓ 🎉"}),
        ({"rename": {"名前": "name"}, "remove": ["ключ"]}, {"名前": "値", "ключ": 1}, {"name": "値"}),
        ({"set": {'["a.b"]': 1}}, {}, {"a.b": 1}),
    ],
)
def test_json_operations(spec: dict, before: Any, after: Any) -> None:
    body = json.dumps(before, ensure_ascii=False).encode()
    req = request("/", body, [("Content-Type", "application/json")])
    compiled_request(body=spec).apply_request(req, ctx_for(req))
    assert json.loads(req.content) == after
    assert_length_right(req)


def test_a_changed_body_is_compact_utf8_json() -> None:
    t = compiled_request(body={"set": {"名": "値"}})
    assert t.body_transform(b'{ "a" : 1 }', None, "application/json", ctx_for()) == '{"a":1,"名":"値"}'.encode()


@pytest.mark.parametrize(
    "spec",
    [
        {"remove": ["missing", "a.b.c", "list[9]"]},
        {"rename": {"missing": "x"}},
        {"set": {"list[5]": 1}},
        {"set": {"a.b": 1}},  # a is a number
    ],
)
def test_a_body_nothing_changed_keeps_its_exact_bytes(spec: dict) -> None:
    body = b'{ "a" : 1,\n  "list": [1] }'
    req = request("/", body)
    compiled_request(body=spec).apply_request(req, ctx_for(req))
    assert req.raw_content == body
    assert_length_right(req)


def test_a_set_that_cannot_apply_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    t = compiled_request(body={"set": {"items[5].x": 1, "ok": 1}})
    out = t.body_transform(b'{"items": [1]}', None, None, ctx_for())
    assert json.loads(out or b"") == {"items": [1], "ok": 1}
    assert transform_logs(caplog) == [
        "body: body.set items[5].x: index 5 is out of range at items (the array has 1 element)"
    ]


def test_body_templates_render_and_insert_request_values_as_data() -> None:
    req = request("/p?q=%7B%7Benv.SECRET%7D%7D", b'{"items": [{}, {}]}', [("X-In", "{{uuid}}")])
    spec = {
        "set": {
            "who": "{{auth.sub}}",
            "echo": "{{query.q}}",
            "hdr": "{{header.X-In}}",
            "meta": {"id": "{{path.id}}", "at": "{{now}}", "n": 1, "tags": ["{{env.REGION}}"]},
            "items[*].rid": "{{uuid}}",
            "literal": "\\{{not a template}}",
        }
    }
    compiled_request(body=spec).apply_request(req, ctx_for(req))
    assert json.loads(req.content) == {
        "items": [{"rid": "uuid-1"}, {"rid": "uuid-1"}],  # one render per message, copied to each place
        "who": "alice",
        "echo": "{{env.SECRET}}",
        "hdr": "{{uuid}}",
        "meta": {"id": "42", "at": "2026-11-22T03:04:05.123Z", "n": 1, "tags": ["eu"]},
        "literal": "{{not a template}}",
    }


@pytest.mark.parametrize(
    "body, why",
    [
        (b"hello <b>world</b>", "body is not JSON: Expecting value at 1:1"),
        (b'{"a": 1,}', "body is not JSON: Expecting property name enclosed in double quotes at 1:9"),
        (b'{"a": 1}\n{"b": 2}', "body is not JSON: Extra data at 2:1"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "body is not JSON: not UTF-8 text (invalid start byte at byte 0)"),
    ],
)
def test_json_operations_leave_a_non_json_body_untouched_and_log_why(
    body: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    req = request("/", body, [("Content-Type", "application/json")])
    compiled_request(body={"set": {"a": 1}, "remove": ["b"], "rename": {"c": "d"}}).apply_request(req, ctx_for(req))
    assert req.raw_content == body
    assert_length_right(req)
    assert transform_logs(caplog) == [f"request body left unchanged: {why}"]  # once, never the body


def test_an_empty_body_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    req = request("/", b"")
    compiled_request(body={"set": {"a": 1}}).apply_request(req, ctx_for(req))
    assert req.raw_content == b"" and req.headers["content-length"] == "0"
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == LOGGER] == [
        ("DEBUG", "request body is empty: body transform skipped")
    ]


def test_a_json_content_type_is_not_required() -> None:
    t = compiled_request(body={"set": {"b": 2}})
    assert t.body_transform(b'{"a":1}', None, "text/plain", ctx_for()) == b'{"a":1,"b":2}'
    assert t.body_transform(b'{"a":1}', None, None, ctx_for()) == b'{"a":1,"b":2}'


def test_a_declared_charset_is_honoured() -> None:
    t = compiled_request(body={"set": {"b": "ü✓"}})
    out = t.body_transform('{"a":"é"}'.encode("latin-1"), None, "application/json; charset=ISO-8859-1", ctx_for())
    assert out is not None and json.loads(out.decode("latin-1")) == {"a": "é", "b": "ü✓"}
    out16 = t.body_transform('{"a":"é"}'.encode("utf-16"), None, "application/json; charset=utf-16", ctx_for())
    assert out16 is not None and json.loads(out16.decode("utf-16")) == {"a": "é", "b": "ü✓"}


def test_a_utf8_bom_is_accepted() -> None:
    t = compiled_request(body={"set": {"b": 2}})
    assert t.body_transform(b'\xef\xbb\xbf{"a":1}', None, "application/json; charset=utf-8", ctx_for()) == b'{"a":1,"b":2}'


def test_an_unknown_charset_leaves_the_body_alone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    t = compiled_request(body={"set": {"b": 1}})
    assert t.body_transform(b'{"a":1}', None, "application/json; charset=klingon", ctx_for()) is None
    assert transform_logs(caplog) == ["body left unchanged: unknown charset in Content-Type 'application/json; charset=klingon'"]


# -- text bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "replace, before, after",
    [
        ([{"pattern": r"(\w+)@example\.com", "replacement": r"\1@example.org"}], "a@example.com, b@example.com", "a@example.org, b@example.org"),
        ([{"pattern": "http://internal:8080", "replacement": "https://api.example.com"}], '{"next": "http://internal:8080/p/2"}', '{"next": "https://api.example.com/p/2"}'),
        ([{"pattern": "a", "replacement": "b"}, {"pattern": "b", "replacement": "c"}], "ab", "cc"),
        ([{"pattern": "(?i)secret", "replacement": "***"}], "Secret SECRET", "*** ***"),
        ([{"pattern": "café", "replacement": "カフェ"}], "un café", "un カフェ"),
        ([{"pattern": "^", "replacement": "> "}], "line", "> line"),
    ],
)
def test_replace_on_text_bodies(replace: list, before: str, after: str) -> None:
    req = request("/", before.encode(), [("Content-Type", "text/plain")])
    compiled_request(body={"replace": replace}).apply_request(req, ctx_for(req))
    assert req.content == after.encode()
    assert_length_right(req)


def test_replace_runs_after_the_json_operations() -> None:
    t = compiled_request(body={"set": {"url": "http://internal/x"}, "replace": [{"pattern": "http://internal", "replacement": "https://public"}]})
    assert t.body_transform(b'{"a": 1}', None, None, ctx_for()) == b'{"a":1,"url":"https://public/x"}'


def test_replace_still_applies_when_json_operations_cannot(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    t = compiled_request(body={"set": {"a": 1}, "replace": [{"pattern": "cat", "replacement": "dog"}]})
    assert t.body_transform(b"a cat", None, None, ctx_for()) == b"a dog"
    assert transform_logs(caplog) == ["body left unchanged: body is not JSON: Expecting value at 1:1"]


def test_replace_leaves_a_binary_body_untouched_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    body = b"\x89PNG\r\n\x1a\n\x00\xffcat"
    req = request("/", body, [("Content-Type", "image/png")])
    compiled_request(body={"replace": [{"pattern": "cat", "replacement": "dog"}]}).apply_request(req, ctx_for(req))
    assert req.raw_content == body
    assert transform_logs(caplog) == ["request body: replace skipped: body is not UTF-8 text (invalid start byte at byte 0)"]


def test_replace_in_a_declared_charset() -> None:
    t = compiled_request(body={"replace": [{"pattern": "é", "replacement": "e"}]})
    assert t.body_transform("café".encode("latin-1"), None, "text/plain; charset=latin-1", ctx_for()) == b"cafe"


# -- compressed bodies and Content-Length ---------------------------------------------------


def _zstd_module():  # type: ignore[no-untyped-def]
    """mitmproxy 11 depends on `zstandard`, mitmproxy 12 on `backports.zstd` (Python 3.14's `compression.zstd`)."""
    try:
        import zstandard

        return zstandard
    except ImportError:
        try:
            from compression import zstd  # type: ignore[import-not-found]
        except ImportError:
            from backports import zstd  # type: ignore[no-redef]
        return zstd


def _zstd(data: bytes) -> bytes:
    module = _zstd_module()
    if module.__name__ == "zstandard":
        return module.ZstdCompressor().compress(data)
    return module.compress(data)


def _unzstd(data: bytes) -> bytes:
    module = _zstd_module()
    if module.__name__ == "zstandard":
        return module.ZstdDecompressor().stream_reader(data).read()
    return module.decompress(data)


CODECS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "gzip": (gzip.compress, gzip.decompress),
    "x-gzip": (gzip.compress, gzip.decompress),
    "deflate": (zlib.compress, zlib.decompress),
    "br": (brotli.compress, brotli.decompress),
    "zstd": (_zstd, _unzstd),
    "gzip, br": (lambda b: brotli.compress(gzip.compress(b)), lambda b: gzip.decompress(brotli.decompress(b))),
    "identity": (lambda b: b, lambda b: b),
}


@pytest.mark.parametrize("coding", list(CODECS))
def test_compressed_json_bodies_are_decoded_changed_and_encoded_again(coding: str) -> None:
    compress, decompress = CODECS[coding]
    body = compress(json.dumps({"user": {"password": "pw", "name": "Zoë"}, "items": [{}, {}]}).encode())
    req = request("/", body, [("Content-Type", "application/json"), ("Content-Encoding", coding)])
    compiled_request(body={"remove": ["user.password"], "set": {"items[*].ok": True}}).apply_request(req, ctx_for(req))
    assert req.headers["content-encoding"] == coding
    assert json.loads(decompress(req.raw_content or b"")) == {"user": {"name": "Zoë"}, "items": [{"ok": True}, {"ok": True}]}
    assert_length_right(req)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_compressed_response_bodies_round_trip_too(coding: str) -> None:
    compress, decompress = CODECS[coding]
    body = compress(b"see http://internal/docs")
    resp = response(200, body, [("Content-Encoding", coding), ("Content-Type", "text/html; charset=utf-8")])
    compiled_response(body={"replace": [{"pattern": "http://internal", "replacement": "https://docs.example.com"}]}).apply_response(resp, ctx_for())
    assert resp.headers["content-encoding"] == coding
    assert decompress(resp.raw_content or b"") == b"see https://docs.example.com/docs"
    assert_length_right(resp)


@pytest.mark.parametrize(
    "coding, body, why",
    [
        ("compress", b"\x1f\x9d...", "unsupported Content-Encoding 'compress'"),
        ("base64", b"eyJhIjoxfQ==", "unsupported Content-Encoding 'base64'"),
        ("gzip, snappy", gzip.compress(b"{}"), "unsupported Content-Encoding 'gzip, snappy'"),
        ("gzip", b'{"a": 1}', "it does not decode as gzip (ValueError)"),
        ("br", b"not brotli", "it does not decode as br (ValueError)"),
    ],
)
def test_unknown_or_broken_encodings_leave_the_body_untouched(
    coding: str, body: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    resp = response(200, body, [("Content-Encoding", coding)])
    compiled_response(body={"set": {"a": 2}}).apply_response(resp, ctx_for())
    assert resp.raw_content == body and resp.headers["content-encoding"] == coding
    assert_length_right(resp)
    assert transform_logs(caplog) == [f"response body left unchanged: {why}"]


@pytest.mark.parametrize("declared", ["999", "0", None])
def test_content_length_is_right_after_a_change_whatever_was_declared(declared: str | None) -> None:
    headers = [("Content-Length", declared)] if declared is not None else []
    req = request("/", b'{"a": 1}', headers, length=False)
    compiled_request(body={"set": {"longer": "x" * 100}}).apply_request(req, ctx_for(req))
    assert req.headers.get_all("content-length") == [str(len(req.raw_content or b""))]


def test_a_chunked_message_gets_no_content_length() -> None:
    req = request("/", b'{"a": 1}', [("Transfer-Encoding", "chunked"), ("Content-Length", "8")], length=False)
    compiled_request(body={"set": {"b": 2}}).apply_request(req, ctx_for(req))
    assert json.loads(req.content) == {"a": 1, "b": 2}
    assert "content-length" not in req.headers and req.headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize(
    "spec",
    [
        {"headers": {"Content-Length": "1"}},
        {"headers": {"transfer-encoding": "chunked"}},
        {"remove_headers": ["Content-Length"]},
        {"rename_headers": {"Content-Length": "X-Length"}},
        {"rename_headers": {"X-Length": "Content-Length"}},
    ],
)
def test_framing_headers_cannot_be_named(spec: dict) -> None:
    with pytest.raises(ValidationError, match="kept true to the body by Backworks"):
        RequestTransform.model_validate(spec)


def test_a_streamed_body_is_left_alone() -> None:
    resp = response(200, b"")
    resp.raw_content = None
    compiled_response(body={"set": {"a": 1}}).apply_response(resp, ctx_for())
    assert resp.raw_content is None


def test_body_transform_needs_no_mitmproxy_object() -> None:
    t = compiled_response(body={"set": {"meta.source": "gw"}})
    out = t.body_transform(gzip.compress(b'{"a":1}'), "gzip", "application/json", ctx_for())
    assert out is not None and gzip.decompress(out) == b'{"a":1,"meta":{"source":"gw"}}'
    assert t.body_transform(b"", None, None, ctx_for()) is None
    assert compiled_response(headers={"X": "1"}).body_transform(b"{}", None, None, ctx_for()) is None


# -- responses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status_map, status, reason, expected",
    [
        ({404: 200}, 404, "Not Found", (200, "OK")),
        ({404: 200}, 500, "Oops", (500, "Oops")),
        ({500: 503, 502: 503}, 502, "Bad Gateway", (503, "Service Unavailable")),
        ({200: 299}, 200, "OK", (299, "")),
    ],
)
def test_status_map(status_map: dict, status: int, reason: str, expected: tuple) -> None:
    resp = response(status)
    resp.reason = reason
    compiled_response(status_map=status_map).apply_response(resp, ctx_for())
    assert (resp.status_code, resp.reason) == expected


def test_a_response_transform_applies_headers_status_and_body() -> None:
    req = request("/p?q=1")
    resp = response(404, b'{"error": "gone", "trace": "x"}', [("Server", "internal"), ("X-Old", "1")])
    t = compiled_response(
        headers={"X-Request": "{{query.q}}"},
        remove_headers=["Server"],
        rename_headers={"X-Old": "X-New"},
        status_map={404: 200},
        body={"remove": ["trace"], "rename": {"error": "message"}, "set": {"ok": False}},
    )
    t.apply_response(resp, ctx_for(req))
    assert resp.status_code == 200
    assert resp.headers.fields == (
        (b"X-New", b"1"),
        (b"content-length", str(len(resp.raw_content or b"")).encode()),
        (b"X-Request", b"1"),
    )
    assert json.loads(resp.content) == {"message": "gone", "ok": False}


def test_a_response_header_value_carrying_crlf_is_refused_and_nothing_changes() -> None:
    req = request("/p?q=a%0d%0aSet-Cookie:%20x=1")
    resp = response(404, b'{"a": 1}')
    before = (resp.status_code, resp.headers.fields, resp.raw_content)
    t = compiled_response(headers={"X-Q": "{{query.q}}"}, status_map={404: 200}, body={"set": {"b": 1}})
    with pytest.raises(ValueError, match="header X-Q would carry CR, LF or NUL"):
        t.apply_response(resp, ctx_for(req))
    assert (resp.status_code, resp.headers.fields, resp.raw_content) == before


# -- load-time errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, spec, message",
    [
        (RequestTransform, {"path": {"rewrite": [{"pattern": "(", "replacement": ""}]}}, "invalid regular expression '(': missing ), unterminated subpattern at position 0"),
        (RequestTransform, {"path": {"rewrite": [{"pattern": "^/(a)$", "replacement": "/\\2"}]}}, "invalid replacement '/\\\\2' for '^/(a)$': invalid group reference 2"),
        (RequestTransform, {"path": {"rewrite": [{"pattern": "a", "replacement": "\\g<id>"}]}}, "unknown group name 'id'"),
        (RequestTransform, {"path": {"rewrite": [{"pattern": "a", "replacement": "/b?x=1"}]}}, "the query string is not part of the path: use query.set"),
        (RequestTransform, {"path": {"strip_prefix": "api"}}, "must start with '/', got 'api'"),
        (RequestTransform, {"path": {"add_prefix": "/a b"}}, "a path prefix cannot hold"),
        (RequestTransform, {"headers": {"X-A": "{{nope}}"}}, "invalid template '{{nope}}'"),
        (RequestTransform, {"headers": {"X-A": "a\r\nB: c"}}, "header 'X-A' carries CR or LF"),
        (RequestTransform, {"headers": {"Bad Name": "v"}}, "'Bad Name' is not a valid header name"),
        (RequestTransform, {"remove_headers": ["a:b"]}, "'a:b' is not a valid header name"),
        (RequestTransform, {"rename_headers": {"A": ""}}, "'' is not a valid header name"),
        (RequestTransform, {"query": {"set": {"a": "{{query.}}"}}}, "'query' needs a name"),
        (RequestTransform, {"query": {"set": {"a": "x\ny"}}}, "carries CR, LF or NUL"),
        (RequestTransform, {"query": {"remove": [""]}}, "'' is not a valid query parameter name"),
        (RequestTransform, {"query": {"rename": {"a": "b\r"}}}, "is not a valid query parameter name"),
        (RequestTransform, {"body": {"set": {"a..b": 1}}}, "invalid JSON path 'a..b': empty key at character 3"),
        (RequestTransform, {"body": {"set": {"a": "{{bad}}"}}}, "invalid template '{{bad}}'"),
        (RequestTransform, {"body": {"set": {"a": {"x": ["{{bad}}"]}}}}, "x[0]: invalid template '{{bad}}'"),
        (RequestTransform, {"body": {"set": {"a": datetime.date(2026, 1, 1)}}}, "unsupported value of type date"),
        (RequestTransform, {"body": {"remove": ["a["]}}, "invalid JSON path 'a[': unclosed '['"),
        (RequestTransform, {"body": {"rename": {"a": "$.b"}}}, "without '$'"),
        (RequestTransform, {"body": {"rename": {"a": "a.b"}}}, "rename a -> a.b: one path contains the other"),
        (RequestTransform, {"body": {"replace": [{"pattern": "[", "replacement": ""}]}}, "invalid regular expression '['"),
        (ResponseTransform, {"body": {"replace": [{"pattern": "x", "replacement": "\\1"}]}}, "invalid group reference 1"),
        (ResponseTransform, {"status_map": {404: 700}}, "less than or equal to 599"),
        (ResponseTransform, {"path": {"strip_prefix": "/api"}}, "Extra inputs are not permitted"),
        (ResponseTransform, {"query": {"remove": ["a"]}}, "Extra inputs are not permitted"),
        (RequestTransform, {"body": {"sett": {}}}, "Extra inputs are not permitted"),
    ],
)
def test_mistakes_are_refused_at_load(model: type, spec: dict, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        model(**spec)
    assert message in str(info.value)


def test_mistakes_in_a_blueprint_are_located(project: Any, load_errors: Callable[..., list[Diagnostic]]) -> None:
    path: Path = project.blueprint(
        r"""
        name: x
        plugins:
          proxy:
            config:
              targets: [{name: a, url: "http://127.0.0.1:3001"}]
              transform_request:
                path:
                  rewrite:
                    - {pattern: "^/users/(\\d+$", replacement: "/people/\\1"}
                body:
                  set: {"a..b": 1, ok: "{{query.x}"}
              transform_response:
                body: {remove: ["items[x]"]}
        endpoints:
          - path: /p
            handler: proxy
            config:
              proxy:
                transform_request: {query: {set: {q: "{{nope}}"}}}
        """
    )
    found = [(d.key_path, d.line, d.message) for d in load_errors(path)]
    assert [(key, line) for key, line, _ in found] == [
        ("plugins.proxy.config.transform_request.path.rewrite[0].pattern", 9),
        ("plugins.proxy.config.transform_request.body.set.a..b", 11),
        ("plugins.proxy.config.transform_request.body.set.ok", 11),
        ("plugins.proxy.config.transform_response.body.remove[0]", 13),
        ("endpoints[0].config.proxy.transform_request.query.set.q", 19),
    ]
    messages = [message for _, _, message in found]
    assert messages[0] == "invalid regular expression '^/users/(\\\\d+$': missing ), unterminated subpattern at position 8"
    assert messages[1] == "invalid key: invalid JSON path 'a..b': empty key at character 3"
    assert messages[2].startswith("unclosed '{{' at character 1 of '{{query.x}'")
    assert messages[3] == "invalid JSON path 'items[x]': expected an index, * or a quoted key inside [], got 'x' at character 6"
    assert messages[4].startswith("invalid template '{{nope}}' at character 1 of '{{nope}}': unknown name 'nope'")
