"""The OpenAPI writer claims only what the recording shows: the rules Schemathesis holds it to.

Each test is one rule of docs/capture.md ("What the document claims"): a response's `required`
(object keys, headers) needs every one of at least two samples, names the request sent are never required in the response (echoes), a `format` holds
for every value the mock serves (redaction placeholders included), security is required only
where the recording shows it enforced, and the mock's own answers are in the document.
"""

from __future__ import annotations

import json

import pytest

from backworks_core.capture.formats import OperationEvidence, OperationSpec, openapi_document
from backworks_core.capture.infer import infer_schema
from backworks_core.capture.model import Exchange
from backworks_core.capture.redact import placeholder

JSON = [("Content-Type", "application/json")]


def _ex(**kw) -> Exchange:
    base = dict(method="GET", scheme="http", host="api.example.com", port=80, path="/")
    base.update(kw)
    return Exchange(**base)


def _operation(*exchanges: Exchange, method: str = "GET", template: str = "/things", schemas: bool = True) -> dict:
    """The operation the writer makes of these exchanges (schemas inferred as the build does)."""
    samples: dict[int, list] = {}
    for ex in exchanges:
        if ex.response_body and schemas and ex.header("content-type") == "application/json":
            samples.setdefault(ex.status, []).append(json.loads(ex.response_body))
    requests = [json.loads(ex.request_body) for ex in exchanges if ex.request_body and ex.header("content-type", response=False) == "application/json"]
    spec = OperationSpec(
        method,
        template,
        "api.example.com",
        examples=list(exchanges),
        request_schema=infer_schema(requests) if requests else None,
        response_schemas={status: infer_schema(values) for status, values in samples.items()},
        evidence=OperationEvidence.of(exchanges),
    )
    document = openapi_document([spec], "T")
    _validate(document)
    path = next(iter(document["paths"]))
    return document["paths"][path][method.lower()] | {"_document": document}


def _validate(document: dict) -> None:
    import openapi_spec_validator as validator

    validator.validate(document, cls=validator.OpenAPIV31SpecValidator)


# -------------------------------------------------------------------------- required


def test_one_sample_proves_no_key_required_two_do():
    assert "required" not in infer_schema([{"id": 1, "name": "a"}])
    assert infer_schema([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])["required"] == ["id", "name"]
    assert infer_schema([{"id": 1, "name": "a"}, {"id": 2}])["required"] == ["id"]
    # counted per position: ten items of one answer are ten samples of the item
    one_answer = infer_schema([{"items": [{"id": i} for i in range(10)], "meta": {"page": 1}}])
    assert one_answer["properties"]["items"]["items"]["required"] == ["id"]
    assert "required" not in one_answer and "required" not in one_answer["properties"]["meta"]


def test_response_headers_required_only_when_every_one_of_two_answers_had_them():
    one = _operation(_ex(status=302, response_headers=[("Location", "/a"), ("Set-Cookie", "s=1; Path=/")]))
    assert not any(h.get("required") for h in one["responses"]["302"]["headers"].values())
    two = _operation(
        _ex(status=302, query=[("to", "a")], response_headers=[("Location", "/a"), ("Set-Cookie", "s=1; Path=/")]),
        _ex(status=302, query=[("to", "b")], response_headers=[("Location", "/b")]),
    )
    headers = two["responses"]["302"]["headers"]
    assert headers["Location"]["required"] is True
    assert "required" not in headers["Set-Cookie"]  # one of the two answers set no cookie


def test_request_side_required_is_what_every_recorded_request_sent():
    """Requests describe what recorded clients send (so generated requests look like them): one
    request is enough, unlike response keys and headers."""
    form = [("Content-Type", "application/x-www-form-urlencoded")]
    one = _operation(_ex(method="POST", query=[("expand", "all")], request_headers=form, request_body=b"a=1&b=2", status=204), method="POST")
    assert [p["required"] for p in one["parameters"]] == [True]
    assert one["requestBody"]["required"] is True
    two = _operation(
        _ex(method="POST", query=[("expand", "all")], request_headers=form, request_body=b"a=1&b=2", status=204),
        _ex(method="POST", request_headers=form, request_body=b"a=3", status=204),
        method="POST",
    )
    assert [p["required"] for p in two["parameters"]] == [False]
    assert two["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]["required"] == ["a"]


def test_names_the_request_sent_are_never_required_in_the_response():
    """An echo (`{"args": {"page": …}}`, `{"headers": {…}}`) is the request's shape, not the API's."""
    exchanges = [
        _ex(
            path="/anything",
            query=[("page", str(n)), ("api_key", "k")],
            request_headers=[("User-Agent", "curl"), ("Cookie", "lang=en"), ("X-Demo", "1")],
            status=200,
            response_headers=JSON,
            response_body=json.dumps({"args": {"page": str(n), "api_key": "k"}, "headers": {"User-Agent": "curl", "X-Demo": "1"}, "cookies": {"lang": "en"}, "url": "http://x/"}).encode(),
        )
        for n in range(3)
    ]
    schema = _operation(*exchanges, template="/anything")["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["args", "headers", "cookies", "url"]  # the API's own keys stay required
    for echo in ("args", "headers", "cookies"):
        assert "required" not in schema["properties"][echo], echo
    assert set(schema["properties"]["headers"]["properties"]) == {"User-Agent", "X-Demo"}  # still documented


# -------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "values",
    [
        ["http://api.example.com/get?api_key=" + placeholder("sk_live_abcdef123456"), "http://api.example.com/get"],
        [placeholder("2024-01-31T10:20:30Z"), "2024-01-31T10:20:30Z"],  # a redacted date-time
        ["http://api.example.com/caf\u00e9"],  # an IRI, not a URI
        ["http://api.example.com/a b"],
        ["http://api.example.com/?q=%zz"],
    ],
)
def test_no_format_unless_every_served_value_satisfies_it(values):
    assert "format" not in infer_schema(values)


def test_formats_a_validator_accepts_are_kept():
    assert infer_schema(["http://[::1]:8080/a?b=c#d", "https://x.io/%20", "urn:isbn:0451450523"])["format"] == "uri"
    assert infer_schema(["2024-01-31T10:20:30Z"])["format"] == "date-time"


# -------------------------------------------------------------------------- security


def _auth(token: str = "Bearer abc.def.ghi") -> list[tuple[str, str]]:
    return [("Authorization", token)]


def test_security_required_only_where_the_recording_shows_it_enforced():
    # refused without credentials, let through with them: required
    enforced = _operation(_ex(request_headers=_auth(), status=200), _ex(status=401, response_headers=[("WWW-Authenticate", "Bearer")]))
    assert enforced["security"] == [{"bearerAuth": []}]
    # also answered without credentials: optional, `{}` last
    open_ = _operation(_ex(request_headers=_auth(), status=200), _ex(status=200))
    assert open_["security"] == [{"bearerAuth": []}, {}]
    # every request had credentials and none was refused: the recording cannot tell, so optional
    unknown = _operation(_ex(request_headers=_auth(), status=200), _ex(request_headers=_auth(), status=200))
    assert unknown["security"] == [{"bearerAuth": []}, {}]
    # a bad credential refused (403) and no anonymous request: enforced
    refused = _operation(_ex(request_headers=_auth(), status=200), _ex(request_headers=_auth("Bearer wrong"), status=403))
    assert refused["security"] == [{"bearerAuth": []}]
    assert "security" not in _operation(_ex(status=200))


def test_security_evidence_survives_merging_operations():
    a = OperationSpec("GET", "/u/{id:int}", "a.example.com", examples=[_ex(host="a.example.com", path="/u/1", request_headers=_auth(), status=200)])
    b = OperationSpec("GET", "/u/{id}", "a.example.com", examples=[_ex(host="a.example.com", path="/u/x", status=401)])
    document = openapi_document([a, b], "T")
    assert document["paths"]["/u/{id}"]["get"]["security"] == [{"bearerAuth": []}]


# -------------------------------------------------------------------------- the mock's own answers


def test_the_mocks_own_404_is_declared_without_contradicting_the_live_api():
    """A request no recorded example matches gets the mock's 404 `{error, status, request_id}`."""
    from backworks_core.capture.formats import MOCK_ERROR_SCHEMA

    ok = _ex(path="/users/7", status=200, response_headers=JSON, response_body=b'{"id": 7}')
    unrecorded = _operation(ok, template="/users/{id:int}")["responses"]["404"]
    assert "content" not in unrecorded and "headers" not in unrecorded  # the live 404 was never seen
    assert "Backworks mock" in unrecorded["description"]
    refused = _operation(ok, template="/users/{id:int}")["responses"]["400"]  # the gateway's path check
    assert "content" not in refused and "gateway" in refused["description"]
    assert "400" not in _operation(_ex(path="/users", status=200), template="/users")["responses"]  # no parameter: no such path
    # a recorded 404 keeps its body and gains the mock's, and requires no header the mock lacks
    html = [("Content-Type", "text/html"), ("X-Trace", "t")]
    recorded = _operation(ok, _ex(path="/users/8", status=404, response_headers=html, response_body=b"<h1>no</h1>"), _ex(path="/users/9", status=404, response_headers=html, response_body=b"<h1>no</h1>"), template="/users/{id:int}")
    not_found = recorded["responses"]["404"]
    assert not_found["content"]["text/html"]["schema"] == {"type": "string"}
    # an empty answer's label is listed too: a checker compares every Content-Type
    empty = _operation(ok, _ex(path="/users/8", status=404, response_headers=html), template="/users/{id:int}")["responses"]["404"]["content"]
    assert empty == {"text/html": {}, "application/json": {"schema": MOCK_ERROR_SCHEMA}}
    assert not_found["content"]["application/json"]["schema"] == MOCK_ERROR_SCHEMA
    assert "required" not in not_found["headers"]["X-Trace"]
    as_json = _operation(ok, _ex(path="/users/8", status=404, response_headers=JSON, response_body=b'{"detail": "no"}'), template="/users/{id:int}")
    schema = as_json["responses"]["404"]["content"]["application/json"]["schema"]
    assert schema["anyOf"][1] == MOCK_ERROR_SCHEMA and schema["anyOf"][0]["properties"] == {"detail": {"type": "string"}}


def test_the_mocks_404_body_fits_the_declared_schema():
    """The mock's real error body (context.json_error), not a copy of its shape, fits the schema."""
    import jsonschema

    from backworks_core.capture.formats import MOCK_ERROR_SCHEMA
    from backworks_core.context import json_error

    answer = json_error(404, "no mock example matches GET /users/8", "req-1")
    jsonschema.validate(json.loads(answer.content), MOCK_ERROR_SCHEMA)
    assert answer.headers["content-type"].split(";")[0] == "application/json"
