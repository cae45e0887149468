"""The answer an example gives, built once at load as bytes (`Answer`): status, headers as
recorded less the ones that describe other bytes, the body as JSON, text or base64 says;
decisions: the package doc (Answers)."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from backworks_core.context import reason_phrase
from backworks_core.handlers.mock.config import NO_BODY_STATUSES, JsonLayout, MockExample
from backworks_core.handlers.mock_defaults import MAX_LATENCY

# Dropped from recorded headers: the body's length is computed (a HEAD answer without a body
# keeps the recorded one), the hop-by-hop ones belong to the recorded connection, and the answer
# carries this request's id. Content-Encoding is sent only with `body_base64` (encoded bytes) or
# no body (a HEAD answer): a `body` is text or JSON, decoded by definition.
_DROPPED_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "x-request-id",
    }
)


@dataclass(frozen=True)
class Answer:
    index: int
    status: int
    reason: bytes
    fields: tuple[tuple[bytes, bytes], ...]  # everything but Content-Length
    content: bytes
    latency: float
    head_length: int | None = None  # a recorded HEAD answer's Content-Length (it has no body)

    @classmethod
    def of(cls, index: int, example: MockExample) -> Answer:
        if example.body_base64 is not None:
            content = base64.b64decode("".join(example.body_base64.split()))
            default_type = "application/octet-stream"
        elif isinstance(example.body, str):
            content, default_type = example.body.encode("utf-8"), "text/plain; charset=utf-8"
        elif example.body is not None:
            content, default_type = json_body_bytes(example.body, example.json_layout), "application/json"
        else:
            content, default_type = b"", ""
        fields: list[tuple[bytes, bytes]] = []
        for name, value in example.headers.items():
            if name.lower() in _DROPPED_HEADERS or (example.body is not None and name.lower() == "content-encoding"):
                continue
            for item in value if isinstance(value, list) else [value]:
                fields.append((_header_bytes(name), _header_bytes(item)))
        if content and example.add_content_type and not any(n.lower() == b"content-type" for n, _ in fields):
            fields.append((b"Content-Type", default_type.encode()))
        latency = min(example.latency or 0.0, MAX_LATENCY)
        head_length = None if content else _recorded_length(example.headers)
        return cls(index, example.status, reason_phrase(example.status).encode(), tuple(fields), content, latency, head_length)

    def response(self, is_head: bool) -> http.Response:
        fields = list(self.fields)
        if self.status >= 200 and self.status not in NO_BODY_STATUSES:
            length = self.head_length if is_head and self.head_length is not None else len(self.content)
            fields.insert(0, (b"content-length", str(length).encode()))
        now = time.time()
        content = b"" if is_head else self.content
        return http.Response(b"HTTP/1.1", self.status, self.reason, http.Headers(fields), content, None, now, now)


def json_body_bytes(value: Any, layout: JsonLayout | None = None) -> bytes:
    """How a JSON `body` is sent: key order kept; compact and non-ASCII as UTF-8 unless `layout`
    says otherwise. The capture writes a recorded JSON body as YAML data (with its layout) only
    when this gives back its very bytes."""
    if layout is None:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if layout.indent is not None:
        separators = (",", ": ")
    else:
        separators = (", ", ": ") if layout.spaced else (",", ":")
    text = json.dumps(value, ensure_ascii=layout.ascii, indent=layout.indent, separators=separators)
    return (text + "\n" if layout.newline else text).encode("utf-8")


def _recorded_length(headers: dict[str, str | list[str]]) -> int | None:
    """The example's Content-Length, when it gives one number: what a HEAD answer announces."""
    for name, value in headers.items():
        if name.lower() == "content-length" and isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
    return None


def _header_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")
