"""One recorded HTTP exchange, as every input (live capture, mitmproxy flow files, HAR) gives it.

The capture plugin writes these as JSON lines (one per completed flow) so that what was written
stays readable after Ctrl-C or a crash; `backworks mock-from` reads flow files and HAR files into
the same records. Bodies are kept as text when they decode as UTF-8 and as base64 otherwise.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Exchange:
    """A request and its response, already redacted when it comes from the capture plugin."""

    method: str
    scheme: str
    host: str
    port: int
    path: str  # without the query
    query: list[tuple[str, str]] = field(default_factory=list)
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    request_body: bytes = b""
    status: int = 0
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: bytes = b""
    started: float = 0.0  # epoch seconds
    duration: float = 0.0  # seconds from the request's start to the response's end

    def header(self, name: str, response: bool = True) -> str | None:
        lowered = name.lower()
        for key, value in self.response_headers if response else self.request_headers:
            if key.lower() == lowered:
                return value
        return None

    def to_json(self) -> str:
        data = asdict(self)
        for key in ("request_body", "response_body"):
            data[key] = _encode_body(getattr(self, key))
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Exchange:
        data: dict[str, Any] = json.loads(line)
        for key in ("request_body", "response_body"):
            data[key] = _decode_body(data.get(key))
        for key in ("query", "request_headers", "response_headers"):
            data[key] = [tuple(pair) for pair in data.get(key) or []]
        return cls(**data)


def _encode_body(body: bytes) -> dict[str, str]:
    try:
        return {"text": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(body).decode("ascii")}


def _decode_body(value: dict[str, str] | None) -> bytes:
    if not value:
        return b""
    if "text" in value:
        return value["text"].encode("utf-8")
    return base64.b64decode(value["base64"])


def decoded_headers(headers: list[tuple[str, str]], length: int) -> list[tuple[str, str]]:
    """Headers for a body now kept decoded: Content-Encoding dropped, Content-Length made true."""
    out: list[tuple[str, str]] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "content-encoding":
            continue
        out.append((name, str(length)) if lowered == "content-length" else (name, value))
    return out
