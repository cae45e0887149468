"""Faithful bodies: a recorded answer goes through the journal, the written blueprint, the loader
and `handler: mock`, and comes back byte for byte, with the headers that matter as recorded."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import brotli
import pytest
import yaml
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from addons.capture import exchange_from_flow
from backworks_core.capture.build import body_fields, dump_blueprint, write_output
from backworks_core.capture.model import Exchange
from backworks_core.capture.redact import RedactionRules
from backworks_core.context import request_id_for, stamp_response
from backworks_core.source import parse_yaml

from .conftest import make_flow
from .test_handlers_mock import mock_errors  # noqa: F401 - a fixture

PRETTY = json.dumps({"zeta": 1, "alpha": {"b": [1, 2.50, None], "a": "x"}}, indent=2).encode() + b"\n"
ESCAPED = b'{"name":"Ren\\u00e9e","z":1,"a":"\\/path","n":1.0E5}'
COMPACT = json.dumps({"z": 1, "a": ["é", True, None]}, ensure_ascii=False, separators=(",", ":")).encode()
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\xff\xfe"
TEXTS = [
    b"line one\r\nline two\r\n",  # CRLF
    b"\tindented with a tab\nand trailing spaces   \n",
    b"  leading spaces\n\n\n",  # kept blank lines at the end
    b"no newline at the end\nsecond",
    "next line \u0085 and separators \u2028\u2029".encode(),
    b"template ${HOME} and $${literal} and ${X:-d}",  # the loader's ${VAR} substitution
    b"---\n... # not a comment\n- not a list\n",
    b'"quoted" \'single\' : colon {braces} [brackets] &anchor *alias !tag %percent @at `tick`',
]


def exchange(path: str, body: bytes, headers: list[tuple[str, str]] | None = None, *, method: str = "GET", status: int = 200) -> Exchange:
    return Exchange(
        method=method, scheme="http", host="api.test", port=80, path=path, status=status,
        response_headers=headers if headers is not None else [("Content-Type", "application/json")], response_body=body,
    )


def encoded_flow(path: str, raw: bytes, headers: list[tuple[str, str]], *, method: str = "GET") -> http.HTTPFlow:
    """A live flow whose answer came with `raw` bytes and `headers` (a Content-Encoding, say)."""
    flow = tflow.tflow(req=tutils.treq(method=method.encode(), host="api.test", port=80, path=path.encode(), headers=http.Headers()))
    flow.response = tutils.tresp(status_code=200, headers=http.Headers([(k.encode(), v.encode()) for k, v in headers]), content=b"")
    flow.response.raw_content = raw
    return flow


def build(tmp_path: Path, exchanges: list[Exchange], *, redact: bool = False) -> Path:
    journal = tmp_path / "in.jsonl"
    journal.write_text("".join(e.to_json() + "\n" for e in exchanges))
    output = tmp_path / "mocks.yaml"
    write_output([str(journal)], str(output), "blueprint", name="bodies", max_examples=50, rules=RedactionRules.build(redact))
    return output


async def served(compile_gateway, send, output: Path, method: str, path: str) -> http.Response:
    gateway = compile_gateway(output, env={"HOME": "/home/someone", "X": "set"})
    flow = await send(gateway, method, path)
    assert flow.response is not None, path
    return flow.response


# -- the representation ------------------------------------------------------------------------


def test_json_stays_yaml_data_in_its_layout_and_anything_else_is_its_exact_text():
    assert body_fields(COMPACT, "application/json") == {"body": {"z": 1, "a": ["é", True, None]}}
    assert body_fields(PRETTY, "application/json") == {  # httpbin's, JSON.stringify(v, null, 2) + newline
        "body": {"zeta": 1, "alpha": {"b": [1, 2.5, None], "a": "x"}},
        "json_layout": {"indent": 2, "newline": True},
    }
    assert body_fields(b'{"id": 1, "name": "Ren\\u00e9e"}', None) == {"body": {"id": 1, "name": "Renée"}, "json_layout": {"spaced": True, "ascii": True}}
    assert body_fields(ESCAPED, "application/json") == {"body": ESCAPED.decode()}  # `\\/` and `1.0E5`: no layout writes them
    assert body_fields(b'{"a":1,"a":2}', "application/json") == {"body": '{"a":1,"a":2}'}  # a duplicate key
    assert body_fields(b'{"a":"\\ud800"}', "application/json") == {"body": '{"a":"\\ud800"}'}  # a lone surrogate
    assert body_fields(b'{"a": 1 }', "application/json") == {"body": '{"a": 1 }'}
    assert body_fields(PNG, "image/png") == {"body_base64": "iVBORw0KGgoAAAANSUhEUgD//g=="}
    assert body_fields(b"", "text/plain") == {}
    assert body_fields(b'{"t":"${X}"}', None) == {"body": {"t": "$${X}"}}  # read back as ${X}


def test_json_layout_is_for_json_data_only(mock_errors):
    errors = mock_errors("examples:\n  - {body: text, json_layout: {indent: 2}}")
    assert [e.split(": ", 1)[1] for e in errors] == ["`json_layout` lays out a JSON object or array given as `body`; remove it, or give the body as YAML data"]


def test_multi_line_text_is_a_block_scalar_that_loads_back_exactly():
    text = dump_blueprint({"body": PRETTY.decode()})
    assert text.startswith("body: |\n  {\n    \"zeta\": 1,"), text  # readable, as it came
    for body in [b"[1,\n2]\n", *TEXTS]:  # text of several lines, JSON that no layout writes
        fields = body_fields(body, "text/plain")
        loaded = parse_yaml(dump_blueprint({"examples": [fields]}), "x.yaml", {"HOME": "/h", "X": "x"})
        assert not loaded.diagnostics, loaded.diagnostics
        assert loaded.data["examples"][0]["body"].encode() == body


# -- build → blueprint → mock, byte for byte -------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (PRETTY, "application/json"),
        (ESCAPED, "application/json; charset=utf-8"),
        (COMPACT, "application/json"),
        (PNG, "image/png"),
        *[(text, "text/plain; charset=utf-8") for text in TEXTS],
        ("<p>caf\u00e9 \u2603</p>\n".encode(), "text/html; charset=utf-8"),
        ("latin-1 caf\u00e9".encode("latin-1"), "text/plain; charset=iso-8859-1"),  # not UTF-8: base64
    ],
)
async def test_recorded_bodies_are_served_byte_for_byte(tmp_path, compile_gateway, send, body, content_type):
    output = build(tmp_path, [exchange("/thing", body, [("Content-Type", content_type)])])
    response = await served(compile_gateway, send, output, "GET", "/thing")
    assert response.get_content() == body
    assert response.headers.get_all("Content-Type") == [content_type]
    assert response.headers["Content-Length"] == str(len(body))


async def test_recorded_headers_that_matter_are_replayed(tmp_path, compile_gateway, send):
    recorded = [
        ("Content-Type", "application/json; charset=utf-8"),
        ("ETag", 'W/"abc-1"'),
        ("Location", "/things/2"),
        ("Set-Cookie", "lang=en; Path=/"),
        ("Cache-Control", "max-age=60, private"),
        ("Set-Cookie", "theme=dark; Path=/; HttpOnly"),
        ("Vary", "Accept-Encoding"),
        ("Link", '</things?page=2>; rel="next"'),
        ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),  # the moment of the recording
        ("Content-Length", "999"),
        ("Connection", "keep-alive"),
    ]
    output = build(tmp_path, [exchange("/things", PRETTY, recorded, method="POST", status=201)])
    response = await served(compile_gateway, send, output, "POST", "/things")
    assert response.status_code == 201 and response.get_content() == PRETTY
    sent = [(k, v) for k, v in response.headers.items(multi=True) if k != "content-length"]
    assert sent == [  # as recorded (a header sent twice together, at its first place), nothing of the moment
        ("Content-Type", "application/json; charset=utf-8"),
        ("ETag", 'W/"abc-1"'),
        ("Location", "/things/2"),
        ("Set-Cookie", "lang=en; Path=/"),
        ("Set-Cookie", "theme=dark; Path=/; HttpOnly"),
        ("Cache-Control", "max-age=60, private"),
        ("Vary", "Accept-Encoding"),
        ("Link", '</things?page=2>; rel="next"'),
    ]
    assert response.headers["content-length"] == str(len(PRETTY))


@pytest.mark.parametrize(
    ("coding", "compress"),
    [("gzip", gzip.compress), ("br", brotli.compress), ("gzip, br", lambda b: brotli.compress(gzip.compress(b)))],
)
async def test_an_encoded_answer_is_served_decoded_with_matching_headers(tmp_path, compile_gateway, send, coding, compress):
    flow = encoded_flow("/zipped", compress(PRETTY), [("Content-Type", "application/json"), ("Content-Encoding", coding), ("Content-Length", "7")])
    recorded = exchange_from_flow(flow, 1 << 20)
    assert recorded is not None and recorded.response_body == PRETTY
    output = build(tmp_path, [recorded])
    assert "Content-Encoding" not in output.read_text()
    response = await served(compile_gateway, send, output, "GET", "/zipped")
    assert response.raw_content == PRETTY  # no coding left to undo
    assert "content-encoding" not in response.headers
    assert response.headers["Content-Length"] == str(len(PRETTY))


async def test_bytes_that_do_not_decode_keep_their_encoding(tmp_path, compile_gateway, send):
    raw = b"\x1f\x8b not really gzip \xff"
    flow = encoded_flow("/odd", raw, [("Content-Type", "application/octet-stream"), ("Content-Encoding", "x-custom")])
    output = build(tmp_path, [exchange_from_flow(flow, 1 << 20)])
    example = yaml.safe_load(output.read_text())["endpoints"][0]["config"]["mock"]["examples"][0]
    assert "body_base64" in example and example["headers"]["Content-Encoding"] == "x-custom"
    response = await served(compile_gateway, send, output, "GET", "/odd")
    assert response.raw_content == raw and response.headers["Content-Encoding"] == "x-custom"
    assert response.headers["Content-Length"] == str(len(raw))


async def test_empty_bodies_and_head_answers(tmp_path, compile_gateway, send):
    output = build(
        tmp_path,
        [
            exchange("/empty", b"", [("Content-Type", "text/plain"), ("Content-Length", "0")]),
            exchange("/gone", b"", [("ETag", '"v1"')], status=304),
            # a recorded HEAD: the GET's length and coding are announced, nothing is sent
            exchange("/file", b"", [("Content-Type", "application/pdf"), ("Content-Length", "5120"), ("Content-Encoding", "gzip")], method="HEAD"),
        ],
    )
    response = await served(compile_gateway, send, output, "GET", "/empty")
    assert response.status_code == 200 and response.raw_content == b"" and response.headers["Content-Length"] == "0"
    response = await served(compile_gateway, send, output, "GET", "/gone")
    assert response.status_code == 304 and response.headers["ETag"] == '"v1"' and "content-length" not in response.headers
    response = await served(compile_gateway, send, output, "HEAD", "/file")
    assert response.raw_content == b""
    assert response.headers["Content-Length"] == "5120" and response.headers["Content-Encoding"] == "gzip"


async def test_head_on_a_recorded_get_announces_the_body_length(tmp_path, compile_gateway, send):
    output = build(tmp_path, [exchange("/doc", PRETTY)])
    response = await served(compile_gateway, send, output, "HEAD", "/doc")
    assert response.raw_content == b"" and response.headers["Content-Length"] == str(len(PRETTY))


async def test_redaction_defaults_leave_bodies_without_secrets_byte_for_byte(tmp_path, compile_gateway, send):
    output = build(tmp_path, [exchange("/plain", PRETTY), exchange("/escaped", ESCAPED)], redact=True)
    assert (await served(compile_gateway, send, output, "GET", "/plain")).get_content() == PRETTY
    assert (await served(compile_gateway, send, output, "GET", "/escaped")).get_content() == ESCAPED


# -- the recording holds what the upstream sent ------------------------------------------------------


def test_the_id_backworks_adds_to_an_answer_is_not_recorded():
    flow = make_flow("GET", "/x")
    flow.response = tutils.tresp(headers=http.Headers([(b"Content-Type", b"text/plain")]), content=b"ok")
    request_id_for(flow)
    stamp_response(flow)
    assert flow.response.headers["X-Request-ID"]  # the client gets it
    recorded = exchange_from_flow(flow, 1 << 20)
    assert "x-request-id" not in [name.lower() for name, _ in recorded.response_headers]


def test_an_upstreams_own_request_id_is_recorded():
    flow = make_flow("GET", "/x")
    flow.response = tutils.tresp(headers=http.Headers([(b"X-Request-Id", b"upstream-7")]), content=b"ok")
    request_id_for(flow)
    stamp_response(flow)  # present already: Backworks adds nothing
    recorded = exchange_from_flow(flow, 1 << 20)
    assert ("X-Request-Id", "upstream-7") in recorded.response_headers
