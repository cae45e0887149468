"""The capture file formats: flow files, HAR (browsers' and mitmproxy's), JSON lines, OpenAPI 3.1.

Test data in tests/data/capture/: `chrome.har` and `firefox.har` are written in the shapes those
browsers export; `mitmproxy-savehar.har` and `mitmproxy11-flows.mitm` are what a real mitmdump 11
(`--mode reverse:… --set hardump=… -w …`) wrote in front of a small aiohttp server.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
from pathlib import Path

import pytest
from mitmproxy import io as mio
from mitmproxy import tcp
from mitmproxy.test import tflow, tutils

from backworks_core.capture.formats import (
    FormatError,
    OperationSpec,
    content_type,
    count_hint,
    exchange_from_flow,
    har_entry,
    is_json,
    openapi_document,
    openapi_path,
    read_any,
    read_flows,
    read_har,
    read_jsonl,
    sniff_format,
    write_har,
    write_jsonl,
)
from backworks_core.capture.model import Exchange

DATA = Path(__file__).resolve().parent.parent / "data" / "capture"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ex(**kw) -> Exchange:
    base = dict(method="GET", scheme="https", host="api.example.com", port=443, path="/")
    base.update(kw)
    return Exchange(**base)


# ------------------------------------------------------------------------------ helpers


def test_content_type_and_is_json():
    assert content_type([("Content-Type", "Application/JSON; charset=utf-8")]) == "application/json"
    assert content_type({"content-type": "text/plain"}) == "text/plain"
    assert content_type([("Accept", "application/json")]) is None
    assert content_type([("Content-Type", " ; x=1")]) is None
    assert is_json([("content-type", "application/problem+json")])
    assert is_json("application/vnd.api+json; charset=utf-8")
    assert is_json([("Content-Type", "application/json")], b"")  # the header decides
    assert not is_json([("Content-Type", "text/html")], b"{}")
    assert is_json([], b' {"a": 1}')  # no header: the body decides
    assert not is_json([], b'"just a string"')
    assert not is_json([], b"not json")
    assert not is_json(None)


# --------------------------------------------------------------------------------- HAR


def test_chrome_har():
    exchanges = list(read_har(DATA / "chrome.har"))
    # the blocked ping (status 0) is skipped
    assert [(e.method, e.host, e.path, e.status) for e in exchanges] == [
        ("GET", "api.example.com", "/v1/products", 200),
        ("GET", "cdn.example.com", "/img/pixel.png", 200),
        ("POST", "api.example.com", "/v1/orders", 201),
        ("DELETE", "api.example.com", "/v1/orders/5001", 204),
    ]
    products, pixel, order, delete = exchanges
    assert products.scheme == "https" and products.port == 443
    assert products.query == [("q", "hello world"), ("tag", "a"), ("tag", "b")]
    assert not any(k.startswith(":") for k, _ in products.request_headers)
    assert ("accept", "application/json") in products.request_headers
    body = json.loads(products.response_body)
    assert body["items"][1]["name"] == "Café"
    # the HAR text is decoded: no content-encoding, content-length is the stored body's
    assert products.header("content-encoding") is None
    assert products.header("content-length") == str(len(products.response_body))
    assert products.started == pytest.approx(1715679067.123)
    assert products.duration == pytest.approx(0.084512)
    assert pixel.response_body.startswith(PNG_MAGIC) and len(pixel.response_body) == 70
    assert json.loads(order.request_body) == {"product_id": 101, "quantity": 2, "gift": False}
    assert order.header("content-type", response=False) == "application/json"
    assert json.loads(order.response_body) == {"id": 5001, "status": "pending"}
    # no content.text and time -1: empty body, duration from the timings
    assert delete.response_body == b""
    assert delete.duration == pytest.approx(0.033)


def test_firefox_har():
    users, conflict, logo = list(read_har(DATA / "firefox.har"))
    assert (users.scheme, users.host, users.port, users.path) == ("http", "localhost", 3000, "/api/users/42")
    assert users.query == [("expand", "roles")]
    assert users.started == pytest.approx(1715679601.25)  # 11:40:01.250+02:00
    assert users.duration == pytest.approx(0.025)
    assert json.loads(users.response_body)["roles"] == ["admin", "user"]
    assert users.header("content-encoding") is None
    assert users.header("content-length") == str(len(users.response_body))
    assert conflict.method == "PUT" and conflict.request_body == b"name=Ada+L&role=admin"
    assert conflict.status == 409 and conflict.response_body == b"version conflict"
    assert logo.response_body == b""  # saved without content


def test_mitmproxy_savehar_output():
    exchanges = list(read_any(DATA / "mitmproxy-savehar.har"))
    assert [(e.method, e.path, e.status) for e in exchanges] == [
        ("GET", "/api/users", 200),
        ("GET", "/api/users/1", 200),
        ("GET", "/api/users/7", 404),
        ("POST", "/api/users", 201),
        ("GET", "/logo.png", 200),
    ]
    listing = exchanges[0]
    assert listing.host == "127.0.0.1" and listing.port == 18931
    assert listing.query == [("page", "2"), ("limit", "10")]
    assert json.loads(listing.response_body) == [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Grace"}]
    # save.har keeps "Content-Encoding: gzip" next to decoded text; we do not
    assert listing.header("content-encoding") is None
    assert listing.header("content-length") == str(len(listing.response_body))
    assert json.loads(exchanges[3].request_body) == {"name": "Hedy"}
    assert exchanges[4].response_body.startswith(PNG_MAGIC)
    assert all(e.started > 1.7e9 and 0 < e.duration < 5 for e in exchanges)


def test_mitmproxy_savehar_functions_from_tflows(tmp_path):
    """The same through mitmproxy's savehar functions on whatever mitmproxy version runs the tests."""
    from mitmproxy.addons.savehar import SaveHar

    flows = [_gzip_flow(), tflow.tflow(resp=False), tflow.twebsocketflow()]
    har = SaveHar().make_har(flows)
    path = tmp_path / "t.har"
    path.write_text(json.dumps(har))
    (exchange,) = list(read_har(path))
    assert json.loads(exchange.response_body) == {"hello": "world" * 20}
    assert exchange.header("content-encoding") is None


# --------------------------------------------------------------------------- flow files


def _gzip_flow():
    body = json.dumps({"hello": "world" * 20}).encode()
    flow = tflow.tflow(
        req=tutils.treq(method=b"GET", host="api.example.com", port=443, scheme=b"https", path=b"/v1/things?a=1&a=2&b=", content=b""),
        resp=tutils.tresp(headers=[(b"content-type", b"application/json"), (b"content-encoding", b"gzip")], content=b""),
    )
    flow.response.raw_content = gzip.compress(body)
    flow.response.headers["content-length"] = str(len(flow.response.raw_content))
    flow.request.timestamp_start = 1700000000.0
    flow.response.timestamp_end = 1700000000.25
    return flow


def test_flow_file_with_gzip_and_skipped_flows(tmp_path):
    path = tmp_path / "flows.mitm"
    bad = _gzip_flow()
    bad.response.raw_content = b"not gzip at all"
    with open(path, "wb") as fo:
        writer = mio.FlowWriter(fo)
        writer.add(_gzip_flow())
        writer.add(tflow.tflow(resp=False))  # no response
        writer.add(tflow.ttcpflow())  # not HTTP
        writer.add(tflow.twebsocketflow())  # a WebSocket
        writer.add(bad)
    assert sniff_format(path) == "flows"
    assert count_hint(path) == 5
    good, undecodable = list(read_flows(path))
    assert (good.method, good.scheme, good.host, good.port, good.path) == ("GET", "https", "api.example.com", 443, "/v1/things")
    assert good.query == [("a", "1"), ("a", "2"), ("b", "")]
    assert json.loads(good.response_body) == {"hello": "world" * 20}
    assert good.header("content-encoding") is None
    assert good.header("content-length") == str(len(good.response_body))
    assert good.started == 1700000000.0 and good.duration == pytest.approx(0.25)
    # a body that does not decode stays as it was, with its header
    assert undecodable.response_body == b"not gzip at all"
    assert undecodable.header("content-encoding") == "gzip"
    assert [e.to_json() for e in read_any(path)] == [good.to_json(), undecodable.to_json()]


def test_flow_file_written_by_mitmdump_11():
    """A real `mitmdump -w` file (mitmproxy 11); mitmproxy 12 migrates and reads it too."""
    exchanges = list(read_any(DATA / "mitmproxy11-flows.mitm"))
    assert [(e.method, e.path, e.status) for e in exchanges] == [
        ("GET", "/api/users", 200),
        ("GET", "/api/users/1", 200),
        ("GET", "/api/users/7", 404),
        ("POST", "/api/users", 201),
        ("GET", "/logo.png", 200),
    ]
    listing = exchanges[0]
    assert json.loads(listing.response_body)[1]["name"] == "Grace"
    assert listing.header("content-encoding") is None
    # the HAR mitmproxy wrote from the same run carries the same exchanges
    from_har = list(read_har(DATA / "mitmproxy-savehar.har"))
    for a, b in zip(exchanges, from_har, strict=True):
        assert (a.method, a.host, a.port, a.path, a.query, a.status) == (b.method, b.host, b.port, b.path, b.query, b.status)
        assert (a.request_body, a.response_body) == (b.request_body, b.response_body)
        assert a.response_headers == b.response_headers
        assert a.started == pytest.approx(b.started, abs=1e-3)
    assert count_hint(DATA / "mitmproxy11-flows.mitm") == 5


def test_flow_file_cut_short(tmp_path, caplog):
    """`mitmdump -w` killed mid-write: the complete flows are read, the cut one is skipped with a warning."""
    path = tmp_path / "crash.mitm"
    with open(path, "wb") as fo:
        writer = mio.FlowWriter(fo)
        writer.add(_gzip_flow())
        writer.add(_gzip_flow())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with caplog.at_level(logging.WARNING):
        assert len(list(read_any(path))) == 1
    assert "incomplete last flow" in caplog.text
    garbage = tmp_path / "garbage.mitm"
    garbage.write_bytes(b"12:not a flow!}")
    with pytest.raises(FormatError, match="garbage.mitm"):
        list(read_any(garbage))


def test_flow_with_bad_utf8_and_an_ip_host(tmp_path):
    flow = _gzip_flow()
    flow.request.path = "/caf%C3%A9/x?name=%FF&ok=1"
    flow.request.host = "93.184.216.34"
    flow.request.headers["Host"] = "api.example.com"
    flow.request.headers["X-Raw"] = "caf\xe9"
    exchange = exchange_from_flow(flow)
    assert exchange.host == "api.example.com"
    assert exchange.path == "/caf%C3%A9/x"
    assert exchange.query == [("name", "\ufffd"), ("ok", "1")]
    path = tmp_path / "out.jsonl"
    write_jsonl([exchange], path)
    write_har([exchange], tmp_path / "out.har")
    assert list(read_any(path))[0].query == exchange.query


def test_exchange_from_flow_ignores_non_http():
    assert exchange_from_flow(tcp.TCPFlow(tflow.tclient_conn(), tflow.tserver_conn())) is None
    assert exchange_from_flow(tflow.tflow(resp=False)) is None


def test_gzipped_flow_file(tmp_path):
    path = tmp_path / "flows.mitm.gz"
    with gzip.open(path, "wb") as fo:
        mio.FlowWriter(fo).add(_gzip_flow())
    assert sniff_format(path) == "flows"
    assert count_hint(path) == 1
    assert len(list(read_any(path))) == 1


# ------------------------------------------------------------------------------ JSON lines


def test_jsonl_with_truncated_last_line(tmp_path, caplog):
    exchanges = [_ex(path=f"/items/{i}", status=200, response_body=b'{"i": %d}' % i) for i in range(3)]
    path = tmp_path / "capture.jsonl"
    write_jsonl(exchanges, path)
    whole = exchanges[0].to_json()
    with open(path, "a", encoding="utf-8") as out:
        out.write(whole[: len(whole) // 2])  # a crash mid-write
    assert sniff_format(path) == "jsonl"
    assert count_hint(path) == 4
    with caplog.at_level(logging.WARNING):
        read = list(read_any(path))
    assert [e.to_json() for e in read] == [e.to_json() for e in exchanges]
    assert "capture.jsonl:4" in caplog.text and "incomplete last line" in caplog.text


def test_jsonl_bad_middle_line_is_an_error(tmp_path):
    path = tmp_path / "capture.jsonl"
    path.write_text(_ex().to_json() + "\n{broken\n" + _ex().to_json() + "\n")
    with pytest.raises(FormatError, match=r"capture\.jsonl:2"):
        list(read_jsonl(path))


def test_jsonl_only_a_truncated_line(tmp_path):
    path = tmp_path / "capture.jsonl"
    path.write_text(_ex().to_json()[:30])
    assert list(read_any(path)) == []


# ----------------------------------------------------------------------------- read_any


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world\n", b'{"not": "a har"}\n', b"[1, 2, 3]", b"\x00\x01\x02binary"],
)
def test_read_any_rejects_other_files_naming_them(tmp_path, content):
    path = tmp_path / "mystery.bin"
    path.write_bytes(content)
    with pytest.raises(FormatError, match="mystery.bin"):
        list(read_any(path))
    assert count_hint(path) is None


def test_read_any_rejects_a_missing_file(tmp_path):
    with pytest.raises(FormatError, match="nope.har"):
        read_any(tmp_path / "nope.har")


def test_har_sniffing_pretty_and_minified_and_other_key_order(tmp_path):
    har = json.loads((DATA / "firefox.har").read_text())
    minified = tmp_path / "min.har"
    minified.write_text(json.dumps(har, separators=(",", ":")))
    reordered = tmp_path / "reordered.har"
    reordered.write_text(json.dumps({"comment": "x", **har}, indent=2))
    zipped = tmp_path / "x.zhar"  # what mitmproxy's save.har writes for .zhar
    import zlib

    zipped.write_bytes(zlib.compress(json.dumps(har).encode(), 9))
    for path in (minified, reordered, zipped):
        assert sniff_format(path) == "har"
        assert len(list(read_any(path))) == 3
    assert count_hint(minified) == 3
    assert count_hint(DATA / "chrome.har") == 5  # an upper bound: the blocked ping is counted


def test_har_not_a_har(tmp_path):
    path = tmp_path / "x.har"
    path.write_text('{\n "log": {"entries": "nope"}\n}')
    with pytest.raises(FormatError, match="x.har"):
        list(read_any(path))


# ------------------------------------------------------------------------------- HAR write


def _sample_exchanges() -> list[Exchange]:
    png = (DATA / "chrome.har").read_text()
    pixel = base64.b64decode(json.loads(png)["log"]["entries"][1]["response"]["content"]["text"])
    return [
        _ex(
            query=[("q", "hello world"), ("tag", "a"), ("tag", "b&c"), ("empty", "")],
            request_headers=[("Accept", "application/json"), ("Cookie", "sid=1; theme=dark")],
            status=200,
            response_headers=[("Content-Type", "application/json"), ("Set-Cookie", "sid=2; Path=/; HttpOnly")],
            response_body='{"name": "Café"}'.encode(),
            started=1715679067.123,
            duration=0.0845,
        ),
        _ex(
            method="POST",
            scheme="http",
            host="localhost",
            port=8080,
            path="/upload/a%20b",
            request_headers=[("Content-Type", "application/octet-stream")],
            request_body=bytes(range(256)),
            status=201,
            response_headers=[("Content-Type", "image/png")],
            response_body=pixel,
            started=1715679068.5,
            duration=1.25,
        ),
        _ex(method="DELETE", host="::1", port=9000, scheme="http", path="/x", status=204, started=1715679069.0),
    ]


def test_har_round_trip(tmp_path):
    exchanges = _sample_exchanges()
    path = tmp_path / "out.har"
    assert write_har(exchanges, path) == 3
    har = json.loads(path.read_text())
    log = har["log"]
    assert log["version"] == "1.2" and log["creator"]["name"] == "Backworks"
    first, second, third = log["entries"]
    for entry in log["entries"]:
        assert set(entry) >= {"startedDateTime", "time", "request", "response", "cache", "timings"}
        assert set(entry["timings"]) >= {"send", "wait", "receive"}
        assert set(entry["response"]["content"]) >= {"size", "mimeType"}
    assert first["startedDateTime"] == "2024-05-14T09:31:07.123Z"
    assert first["request"]["url"] == "https://api.example.com/?q=hello%20world&tag=a&tag=b%26c&empty="
    assert first["request"]["cookies"] == [{"name": "sid", "value": "1"}, {"name": "theme", "value": "dark"}]
    assert first["response"]["cookies"] == [{"name": "sid", "value": "2"}]
    assert second["response"]["content"]["encoding"] == "base64"
    assert second["request"]["postData"]["encoding"] == "base64"
    assert second["request"]["url"] == "http://localhost:8080/upload/a%20b"
    assert third["request"]["url"] == "http://[::1]:9000/x" and third["response"]["statusText"] == "No Content"

    back = list(read_any(path))
    carried = ("method", "scheme", "host", "port", "path", "query", "request_headers", "request_body", "status", "response_headers", "response_body")
    for a, b in zip(exchanges, back, strict=True):
        for name in carried:
            assert getattr(a, name) == getattr(b, name), name
        assert b.started == pytest.approx(a.started, abs=1e-3)
        assert b.duration == pytest.approx(a.duration, abs=1e-3)


def test_har_round_trip_through_mitmproxy_reader(tmp_path):
    """mitmproxy itself reads what we write (its FlowReader imports HAR)."""
    path = tmp_path / "out.har"
    write_har(_sample_exchanges()[:2], path)
    with open(path, "rb") as fo:
        flows = list(mio.FlowReader(fo).stream())
    assert [f.request.method for f in flows] == ["GET", "POST"]
    assert flows[1].response.content.startswith(PNG_MAGIC)


def test_har_entry_of_browser_entries_round_trips():
    for exchange in read_har(DATA / "chrome.har"):
        entry = har_entry(exchange)
        assert entry["request"]["headersSize"] == -1
        json.dumps(entry)


# --------------------------------------------------------------------------------- OpenAPI


def _validate(document):
    import openapi_spec_validator as validator
    validator.validate(document)  # picks the 3.1 validator from "openapi": "3.1.0"
    validator.validate(document, cls=validator.OpenAPIV31SpecValidator)
    json.loads(json.dumps(document))  # plain JSON, as written to disk


def test_openapi_path_conversion():
    assert openapi_path("/users/{user_id:int}") == ("/users/{user_id}", [{"name": "user_id", "in": "path", "required": True, "schema": {"type": "integer"}}])
    path, params = openapi_path("/orgs/:org/items/{item:uuid}/files/{rest:path}")
    assert path == "/orgs/{org}/items/{item}/files/{rest}"
    assert [p["schema"] for p in params] == [{"type": "string"}, {"type": "string", "format": "uuid"}, {"type": "string"}]
    assert openapi_path("/") == ("/", [])


def test_openapi_document_validates_with_tricky_cases():
    user_schema = {"type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}, "required": ["id"]}
    groups = [
        OperationSpec(
            "GET",
            "/users/{user_id:int}",
            "api.example.com",
            examples=[
                _ex(path="/users/7", query=[("expand", "roles")], status=200, response_headers=[("Content-Type", "application/json")], response_body=b'{"id": 7, "name": "Ada"}'),
                _ex(path="/users/999", status=404, response_headers=[("Content-Type", "application/problem+json")], response_body=b'{"title": "not found"}'),
                _ex(path="/users/8", status=500, response_headers=[("Content-Type", "text/html")], response_body=b"<h1>oops</h1>"),
            ],
            response_schemas={200: user_schema, 404: {"type": "object"}},
        ),
        OperationSpec(  # two path params, one a uuid; a binary response
            "GET",
            "/orgs/{org}/files/{file_id:uuid}",
            "files.example.com",
            examples=[
                _ex(host="files.example.com", path="/orgs/acme/files/0d4f1a6e-7d4b-4d0a-9a53-3b3c2d1e0f00", query=[("v", "1"), ("v", "2")], status=200, response_headers=[("Content-Type", "image/png")], response_body=PNG_MAGIC + b"\x00\xff")
            ],
        ),
        OperationSpec(  # JSON request body, 201
            "POST",
            "/users",
            "api.example.com",
            examples=[
                _ex(method="POST", path="/users", request_headers=[("Content-Type", "application/json")], request_body=b'{"name": "Ada"}', status=201, response_headers=[("Content-Type", "application/json")], response_body=b'{"id": 9}')
            ],
            request_schema={"type": "object", "properties": {"name": {"type": "string"}}},
            response_schemas={201: {"type": "object"}},
        ),
        OperationSpec(  # non-JSON request body (a form), no response body
            "PUT",
            "/users/{user_id:int}",
            "api.example.com",
            examples=[_ex(method="PUT", path="/users/7", request_headers=[("Content-Type", "application/x-www-form-urlencoded")], request_body=b"name=Ada", status=204)],
        ),
        OperationSpec("DELETE", "/users/{user_id:int}", "api.example.com", examples=[_ex(method="DELETE", path="/users/7", status=204)]),
        OperationSpec("GET", "/health", None, examples=[]),  # no examples at all
        OperationSpec(  # same method and path as the first from another host: merged
            "GET",
            "/users/{user_id}",
            "api.example.com",
            examples=[_ex(path="/users/1", status=401, response_body=b"denied")],
        ),
        OperationSpec(  # a JSON content type with a body that is not JSON
            "GET", "/broken", "api.example.com", examples=[_ex(path="/broken", status=200, response_headers=[("Content-Type", "application/json")], response_body=b"{oops")]
        ),
    ]
    doc = openapi_document(groups, "Shop API", "2.0.0", description="Recorded")
    _validate(doc)
    assert doc["openapi"] == "3.1.0" and doc["info"] == {"title": "Shop API", "version": "2.0.0", "description": "Recorded"}
    assert doc["servers"] == [{"url": "https://api.example.com"}, {"url": "https://files.example.com"}]
    get_user = doc["paths"]["/users/{user_id}"]["get"]
    assert set(get_user["responses"]) == {"200", "400", "401", "404", "500"}  # 400: the gateway's path check
    assert get_user["responses"]["200"]["content"]["application/json"] == {"schema": user_schema, "example": {"id": 7, "name": "Ada"}}
    assert get_user["responses"]["500"]["content"]["text/html"]["schema"] == {"type": "string"}
    params = {p["name"]: p for p in get_user["parameters"]}
    assert params["user_id"]["schema"] == {"type": "integer"} and params["user_id"]["example"] == 7
    assert params["expand"]["in"] == "query" and params["expand"]["required"] is False
    assert get_user["servers"] == [{"url": "https://api.example.com"}]
    files = doc["paths"]["/orgs/{org}/files/{file_id}"]["get"]
    file_params = {p["name"]: p for p in files["parameters"]}
    assert file_params["file_id"]["schema"]["format"] == "uuid"
    assert file_params["org"]["example"] == "acme"
    assert file_params["v"]["schema"] == {"type": "array", "items": {"type": "integer"}}
    assert "example" not in files["responses"]["200"]["content"]["image/png"]
    post = doc["paths"]["/users"]["post"]
    assert post["requestBody"]["content"]["application/json"]["example"] == {"name": "Ada"}
    assert post["requestBody"]["required"] is True
    put = doc["paths"]["/users/{user_id}"]["put"]
    assert put["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"] == {
        "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]
    }
    assert "content" not in put["responses"]["204"]
    assert doc["paths"]["/health"]["get"]["responses"] == {"default": {"description": "No response was recorded"}}
    assert "example" not in doc["paths"]["/broken"]["get"]["responses"]["200"]["content"]["application/json"]
    operation_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids)) == 7  # the two GET /users/{user_id} merged
    assert get_user["responses"]["401"]["content"] == {"text/plain": {"schema": {"type": "string"}, "example": "denied"}}


def test_openapi_from_recorded_files():
    """The whole path: a real capture, grouped by hand, to a valid document."""
    exchanges = list(read_any(DATA / "mitmproxy-savehar.har"))
    groups = [
        OperationSpec("GET", "/api/users", examples=[exchanges[0]]),
        OperationSpec("GET", "/api/users/{id:int}", examples=exchanges[1:3]),
        OperationSpec("POST", "/api/users", examples=[exchanges[3]], request_schema={"type": "object"}),
        OperationSpec("GET", "/logo.png", examples=[exchanges[4]]),
    ]
    doc = openapi_document(groups, "Recorded", "1.0.0")
    _validate(doc)
    assert doc["servers"] == [{"url": "http://127.0.0.1:18931"}]
    assert set(doc["paths"]["/api/users/{id}"]["get"]["responses"]) == {"200", "400", "404"}


# ------------------------------------------------- OpenAPI for spec-driven tools (issue 18)

JWT_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
BOUNDARY = "----form7MA4YWxkTrZu0gW"
SESSION = "Zk9xV2pQa1lUbW9MZ3JzWQ"
STATUSES = (200, 201, 204, 301, 404, 418, 500)
# What the gateway or a proxy adds, and what every client sends: never parameters.
INJECTED = [("X-Request-ID", "a1b2c3"), ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), ("tracestate", "k=v"), ("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-Proto", "https"), ("Via", "1.1 proxy")]
CLIENT = [("User-Agent", "curl/8.5"), ("Accept-Encoding", "gzip"), ("Host", "api.example.com"), ("Connection", "keep-alive"), ("Accept", "*/*")]
TRANSPORT = [("Date", "Tue, 14 May 2024 09:31:07 GMT"), ("Server", "gunicorn"), ("X-Request-ID", "a1b2c3"), ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5")]
JSON_TYPE = [("Content-Type", "application/json")]
PNG_BYTES = PNG_MAGIC + b"\x00\x00\x00\rIHDR\xff"


def _flow(method, path, status, *, query=(), headers=(), body=b"", response_headers=(), response_body=b""):
    request_headers = [*headers, *INJECTED, *CLIENT] + ([("Content-Length", str(len(body)))] if body else [])
    return _ex(
        method=method, path=path, query=list(query), request_headers=request_headers, request_body=body, status=status,
        response_headers=[*response_headers, *TRANSPORT, ("Content-Length", str(len(response_body)))], response_body=response_body,
    )


def _multipart(parts, boundary=BOUNDARY, newline=b"\r\n"):
    out = b""
    for name, filename, media, value in parts:
        disposition = f'Content-Disposition: form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}".encode() + newline + disposition.encode() + newline
        if media:
            out += f"Content-Type: {media}".encode() + newline
        out += newline + value + newline
    return out + f"--{boundary}--".encode() + newline


def _recording():
    """A form login, a multipart upload, bearer/basic/API-key auth, ETag/Location/Set-Cookie/Link
    headers and seven statuses for one path, each request with what a gateway adds."""
    basic = base64.b64encode(b"user:passwd").decode()
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    upload = _multipart([("title", None, None, b"Holiday"), ("count", None, None, b"3"), ("file", "cat.png", "image/png", PNG_BYTES)])
    flows = [
        _flow("POST", "/login", 302, headers=form, body=b"username=ada&password=s3cret-Passw0rd&remember=true",
              response_headers=[("Location", "/dashboard"), ("Set-Cookie", f"sessionid={SESSION}; Path=/; HttpOnly"), ("Set-Cookie", "lang=en; Path=/")]),
        _flow("POST", "/login", 200, headers=form, body=b"username=grace&password=hunter22",
              response_headers=[("Content-Type", "text/html")], response_body=b"<p>wrong password</p>"),
        _flow("POST", "/uploads", 201, headers=[("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")], body=upload,
              response_headers=[*JSON_TYPE, ("Location", "/uploads/17"), ("ETag", '"u17"')], response_body=b'{"id": 17}'),
        _flow("GET", "/items", 200, query=[("page", "2")], headers=[("Authorization", f"Bearer {JWT_TOKEN}"), ("If-None-Match", '"v1"')],
              response_headers=[*JSON_TYPE, ("ETag", '"v2"'), ("Link", '<https://api.example.com/items?page=3>; rel="next"'), ("X-Total-Count", "42"), ("Vary", "Accept-Language")],
              response_body=b'[{"id": 1}]'),
        _flow("GET", "/items", 401, headers=[("Accept-Language", "fr")], response_headers=[*JSON_TYPE, ("WWW-Authenticate", 'Bearer realm="api"')], response_body=b'{"error": "unauthorized"}'),
        _flow("GET", "/items", 304, query=[("page", "2")], headers=[("Authorization", f"Bearer {JWT_TOKEN}"), ("If-None-Match", '"v2"')], response_headers=[("ETag", '"v2"')]),
        _flow("GET", "/basic-auth/user", 200, headers=[("Authorization", f"Basic {basic}")], response_headers=JSON_TYPE, response_body=b'{"user": "user"}'),
        _flow("GET", "/basic-auth/user", 401, response_headers=[("WWW-Authenticate", 'Basic realm="Fake Realm"')]),
        _flow("GET", "/reports", 200, query=[("api_key", "k9Xq2LmP4tRz8WvB"), ("year", "2024")], response_headers=JSON_TYPE, response_body=b'{"ok": true}'),
        _flow("GET", "/reports", 200, query=[("year", "2023")], headers=[("X-API-Key", "Zk9xV2pQa1lUbW9MZ3JzWQab"), ("X-Tenant", "acme")], response_headers=JSON_TYPE, response_body=b'{"ok": true}'),
        _flow("GET", "/me", 200, headers=[("Cookie", f"sessionid={SESSION}; lang=en")], response_headers=JSON_TYPE, response_body=b'{"name": "Ada"}'),
    ]
    bodies = {200: b'{"ok": true}', 201: b'{"id": 1}', 404: b"not found", 418: b"I'm a teapot", 500: b"<h1>boom</h1>"}
    for code in STATUSES:
        media = {200: "application/json", 201: "application/json", 404: "text/plain", 418: "text/plain", 500: "text/html"}.get(code)
        response_headers = [("Content-Type", media)] if media else []
        if code == 301:
            response_headers.append(("Location", "/status/200"))
        flows.append(_flow("GET", f"/status/{code}", code, response_headers=response_headers, response_body=bodies.get(code, b"")))
    return flows


def _recorded_openapi(tmp_path, max_examples=3, redact=True):
    from backworks_core.capture.build import write_output
    from backworks_core.capture.redact import RedactionRules

    journal = tmp_path / "recorded.jsonl"
    write_jsonl(_recording(), journal)
    output = tmp_path / "openapi.json"
    write_output([str(journal)], str(output), "openapi", name="Recorded", max_examples=max_examples, rules=RedactionRules(enabled=redact))
    text = output.read_text()
    document = json.loads(text)
    _validate(document)
    return document, text


def test_openapi_form_and_multipart_bodies_are_objects(tmp_path):
    doc, _ = _recorded_openapi(tmp_path)
    login = doc["paths"]["/login"]["post"]["requestBody"]
    assert login["required"] is True
    form = login["content"]["application/x-www-form-urlencoded"]
    assert form["schema"]["type"] == "object"
    assert form["schema"]["properties"] == {"username": {"type": "string"}, "password": {"type": "string"}, "remember": {"type": "boolean"}}
    assert form["schema"]["required"] == ["username", "password"]  # `remember` was sent once of twice
    assert form["example"]["username"] == "ada" and "s3cret" not in json.dumps(form)
    upload = doc["paths"]["/uploads"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"] == {
        "type": "object",
        "properties": {"title": {"type": "string"}, "count": {"type": "integer"}, "file": {"type": "string", "format": "binary"}},
        "required": ["title", "count", "file"],
    }
    assert upload["encoding"] == {"file": {"contentType": "image/png"}}
    assert upload["example"] == {"title": "Holiday", "count": 3}


def test_openapi_response_headers(tmp_path):
    doc, text = _recorded_openapi(tmp_path)
    redirect = doc["paths"]["/login"]["post"]["responses"]["302"]["headers"]
    assert set(redirect) == {"Location", "Set-Cookie"}
    # one 302 recorded: its headers are documented, not required (test_capture_openapi_contract.py)
    assert redirect["Location"] == {"schema": {"type": "string"}, "example": "/dashboard"}
    assert "redacted" in redirect["Set-Cookie"]["description"] and SESSION not in text
    assert "required" not in redirect["Set-Cookie"]
    created = doc["paths"]["/uploads"]["post"]["responses"]["201"]["headers"]
    assert created["Location"]["example"] == "/uploads/17" and created["ETag"]["example"] == '"u17"'
    page = doc["paths"]["/items"]["get"]["responses"]["200"]["headers"]
    assert page["X-Total-Count"] == {"schema": {"type": "integer"}, "example": 42}
    assert page["Link"]["example"].endswith('rel="next"') and page["ETag"]["example"] == '"v2"'
    assert doc["paths"]["/items"]["get"]["responses"]["304"]["headers"]["ETag"]["example"] == '"v2"'
    assert doc["paths"]["/status/{status_id}"]["get"]["responses"]["301"]["headers"]["Location"]["example"] == "/status/200"
    # the connection's, the moment's and the gateway's own headers are not the API's
    for item in doc["paths"].values():
        for operation in item.values():
            for response in operation["responses"].values():
                names = {name.lower() for name in response.get("headers", {})}
                assert not names & {"date", "server", "x-request-id", "connection", "keep-alive", "content-length", "content-type"}


def test_openapi_keeps_every_status_whatever_max_examples(tmp_path):
    doc, _ = _recorded_openapi(tmp_path, max_examples=2)
    responses = doc["paths"]["/status/{status_id}"]["get"]["responses"]
    assert sorted(responses) == sorted({str(code) for code in STATUSES} | {"400"})  # 400: the gateway's own
    assert responses["418"]["content"]["text/plain"]["example"] == "I'm a teapot"  # shown though past max_examples
    assert responses["500"]["content"]["text/html"]["schema"] == {"type": "string"}
    assert "content" not in responses["204"]
    assert sorted(doc["paths"]["/items"]["get"]["responses"]) == ["200", "304", "401", "404"]  # 404: the mock's own


def test_openapi_leaves_out_injected_and_client_headers(tmp_path):
    doc, text = _recorded_openapi(tmp_path)
    header_parameters = {
        path: sorted(p["name"] for p in operation.get("parameters", []) if p["in"] == "header")
        for path, item in doc["paths"].items()
        for operation in item.values()
    }
    # conditional headers matter; Accept-Language because a response varies on it; X-Tenant is the API's
    assert header_parameters["/items"] == ["Accept-Language", "If-None-Match"]
    assert header_parameters["/reports"] == ["X-Tenant"]
    assert all(not names for path, names in header_parameters.items() if path not in ("/items", "/reports"))
    for name in ("traceparent", "Traceparent", "tracestate", "X-Forwarded-For", "X-Forwarded-Proto", "User-Agent", "Accept-Encoding"):
        assert f'"{name}"' not in text, name
    items = {p["name"]: p for p in doc["paths"]["/items"]["get"]["parameters"]}
    assert items["If-None-Match"] == {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}, "example": '"v1"'}
    assert items["page"]["required"] is False  # the 401 came without it


def test_openapi_security_schemes_from_a_redacted_recording(tmp_path):
    doc, text = _recorded_openapi(tmp_path)
    schemes = doc["components"]["securitySchemes"]
    by_kind = {(s["type"], s.get("scheme") or s["in"], s.get("name")): name for name, s in schemes.items()}
    bearer, basic = by_kind[("http", "bearer", None)], by_kind[("http", "basic", None)]
    header_key, query_key = by_kind[("apiKey", "header", "X-API-Key")], by_kind[("apiKey", "query", "api_key")]
    cookie_key = by_kind[("apiKey", "cookie", "sessionid")]  # the session cookie, not `lang`
    assert len(schemes) == 5
    paths = doc["paths"]
    # required where the recording shows it enforced: without credentials the answer was 401
    assert paths["/items"]["get"]["security"] == [{bearer: []}]
    assert paths["/basic-auth/user"]["get"]["security"] == [{basic: []}]
    # optional where nothing was refused: every request had credentials, none was turned away
    assert paths["/reports"]["get"]["security"][-1] == {}
    assert sorted(map(list, paths["/reports"]["get"]["security"][:-1])) == sorted([[header_key], [query_key]])
    assert paths["/me"]["get"]["security"] == [{cookie_key: []}, {}]
    assert "security" not in paths["/status/{status_id}"]["get"]
    report_parameters = [p["name"] for p in paths["/reports"]["get"]["parameters"]]
    assert "api_key" not in report_parameters and "X-API-Key" not in report_parameters  # security, not parameters
    assert "k9Xq2LmP4tRz8WvB" not in text and JWT_TOKEN not in text


def test_openapi_security_schemes_from_visible_credentials():
    """Without redaction the values tell more: JWTs, other schemes, cookies, custom key names."""
    from backworks_core.capture.redact import RedactionRules

    def spec(path, *headers, query=(), status=200, response_headers=()):
        return OperationSpec("GET", path, "api.example.com", examples=[_ex(path=path, query=list(query), request_headers=list(headers), status=status, response_headers=list(response_headers))])

    doc = openapi_document(
        [
            spec("/jwt", ("Authorization", f"Bearer {JWT_TOKEN}")),
            spec("/token", ("Authorization", "Token 9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b")),
            spec("/digest", ("Authorization", 'Digest username="u", realm="r"')),
            spec("/me", ("Cookie", f"sessionid={SESSION}; lang=en"), ("X-CSRF-Token", "abc")),
            spec("/hidden", ("Authorization", "[REDACTED]")),  # redacted whole, no challenge: scheme unknown
            spec("/sig", query=[("signature", "abc"), ("q", "x")]),
        ],
        "Auth",
    )
    _validate(doc)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["digestAuth"] == {"type": "http", "scheme": "digest"}
    assert schemes["authorizationHeaderToken"]["in"] == "header" and schemes["authorizationHeaderToken"]["name"] == "Authorization"
    assert schemes["authorizationHeader"]["type"] == "apiKey"
    assert schemes["cookie.sessionid"] == {"type": "apiKey", "in": "cookie", "name": "sessionid"}  # `lang` is no credential
    assert schemes["header.X-CSRF-Token"] == {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"}
    # both at once; optional (`{}`): no request was refused, so nothing shows they are needed
    assert doc["paths"]["/me"]["get"]["security"] == [{"cookie.sessionid": [], "header.X-CSRF-Token": []}, {}]
    assert doc["paths"]["/sig"]["get"]["security"] == [{"query.signature": []}, {}]
    assert [p["name"] for p in doc["paths"]["/sig"]["get"]["parameters"]] == ["q"]
    # a bearer token that is not a JWT: no bearerFormat
    plain = openapi_document([spec("/a", ("Authorization", "Bearer abcdef0123456789"))], "Plain")
    assert plain["components"]["securitySchemes"] == {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    # names configured for redaction are credentials too
    from backworks_core.capture.formats import OperationEvidence

    custom = OperationSpec("GET", "/c", examples=[], evidence=OperationEvidence.of([_ex(path="/c", request_headers=[("X-Partner", "p1")])], RedactionRules.build(headers=["X-Partner"])))
    assert openapi_document([custom], "Custom")["components"]["securitySchemes"] == {"header.X-Partner": {"type": "apiKey", "in": "header", "name": "X-Partner"}}


def test_openapi_merged_operations_keep_statuses_headers_and_security():
    first = OperationSpec("GET", "/users/{id:int}", "a.example.com", examples=[_ex(host="a.example.com", path="/users/1", request_headers=[("Authorization", "Basic dTpw")], status=200, response_headers=[("ETag", '"1"')])])
    second = OperationSpec("GET", "/users/{id}", "b.example.com", examples=[_ex(host="b.example.com", path="/users/x", status=404)])
    doc = openapi_document([first, second], "Merged")
    _validate(doc)
    operation = doc["paths"]["/users/{id}"]["get"]
    assert sorted(operation["responses"]) == ["200", "400", "404"]
    assert operation["responses"]["200"]["headers"]["ETag"]["example"] == '"1"'
    assert operation["security"] == [{"basicAuth": []}, {}]
    assert [s["url"] for s in operation["servers"]] == ["https://a.example.com", "https://b.example.com"]


def test_multipart_parts():
    from backworks_core.capture.formats import multipart_parts

    body = _multipart([("a", None, None, b"1"), ("doc", "r\u00e9sum\u00e9.pdf", "application/pdf", b"%PDF\r\n\r\nx"), ("note", None, "text/plain; charset=utf-8", b"")])
    parts = multipart_parts(f'multipart/form-data; boundary="{BOUNDARY}"', body)
    assert [(p.name, p.filename, p.content_type, p.value) for p in parts] == [
        ("a", None, None, b"1"),
        ("doc", "r\u00e9sum\u00e9.pdf", "application/pdf", b"%PDF\r\n\r\nx"),
        ("note", None, "text/plain", b""),
    ]
    lf_only = _multipart([("a", None, None, b"1")], newline=b"\n")
    assert [(p.name, p.value) for p in multipart_parts(f"multipart/form-data; boundary={BOUNDARY}", lf_only)] == [("a", b"1")]
    assert multipart_parts("multipart/form-data", body) is None  # no boundary
    assert multipart_parts(f"multipart/form-data; boundary={BOUNDARY}", b"garbage") == []


def test_openapi_multipart_repeated_files_and_types():
    files = _multipart([("photos", "a.png", "image/png", PNG_BYTES), ("photos", "b.jpg", "image/jpeg", b"\xff\xd8\xff"), ("meta", None, "application/json", b'{"x": 1}')])
    exchange = _ex(method="POST", path="/albums", request_headers=[("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")], request_body=files, status=201)
    doc = openapi_document([OperationSpec("POST", "/albums", examples=[exchange])], "Albums")
    _validate(doc)
    content = doc["paths"]["/albums"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert content["schema"]["properties"]["photos"] == {"type": "array", "items": {"type": "string", "format": "binary"}}
    assert content["encoding"] == {"photos": {"contentType": "image/png, image/jpeg"}, "meta": {"contentType": "application/json"}}


def test_openapi_evidence_is_bounded(caplog):
    from backworks_core.capture import formats

    exchanges = [_ex(path="/wide", query=[(f"q{i}", str(i))], status=200) for i in range(formats.MAX_NAMES + 7)]
    with caplog.at_level(logging.INFO, logger="backworks_core.capture.formats"):
        doc = openapi_document([OperationSpec("GET", "/wide", examples=exchanges)], "Wide")
    assert len(doc["paths"]["/wide"]["get"]["parameters"]) == formats.MAX_NAMES
    assert "7 header, query or form field name(s)" in caplog.text
