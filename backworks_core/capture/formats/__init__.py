"""Reading and writing recorded traffic: mitmproxy flow files, HAR 1.2, JSON lines, OpenAPI 3.1.

One module per format: `flows` (mitmproxy flow files), `har` (read and write), `jsonl` (the
capture journal), `sniff` (which reader a file needs), and the OpenAPI writer in three
(`openapi_evidence`: what every exchange of an operation showed; `openapi_operation`: one
operation object; `openapi`: the document). `common` holds what they share. Every name the rest of
Backworks uses is re-exported here.

Every reader is a generator of `Exchange` records, so a file of 100,000 flows is converted one
flow at a time (a HAR file is one JSON document and is parsed whole, but its entries are turned
into exchanges and released one by one). What every reader does the same way:

- bodies are stored decoded: a body the file carries compressed (`Content-Encoding: gzip`, …) is
  decompressed, the `Content-Encoding` header is removed and a `Content-Length` header, if there
  is one, is set to the stored body's length; a body that fails to decompress is kept as it was,
  with its header;
- exchanges without a response (errors, aborted requests, HAR entries with status 0), WebSocket
  and CONNECT flows and non-HTTP flows are skipped;
- HTTP/2 pseudo-headers (`:authority`, `:path`, …) are not headers and are dropped;
- `started` is epoch seconds, `duration` seconds from the request's start to the response's end.

`read_any` picks the reader by looking at the file's first bytes; a gzip-compressed file of any
of the three kinds, and mitmproxy's zlib-compressed `.zhar`, are read as well.
"""

from __future__ import annotations

from backworks_core.capture.formats.common import (
    DEFAULT_PORTS,
    FileKind,
    FormatError,
    Headers,
    PathLike,
    content_type,
    header_value,
    is_json,
    is_json_media_type,
    is_text,
    try_json,
)
from backworks_core.capture.formats.flows import exchange_from_flow, read_flows
from backworks_core.capture.formats.har import exchange_from_har_entry, har_entry, read_har, write_har
from backworks_core.capture.formats.jsonl import read_jsonl, write_jsonl
from backworks_core.capture.formats.openapi import openapi_document, openapi_path, security_schemes
from backworks_core.capture.formats.openapi_evidence import (
    HTTP_AUTH_SCHEMES,
    INJECTED_REQUEST_HEADERS,
    MAX_MEDIA_TYPES,
    MAX_NAMES,
    MAX_PARTS,
    MAX_VALUE_LENGTH,
    MAX_VALUES,
    REFUSED_STATUSES,
    Credential,
    FormPart,
    OperationEvidence,
    multipart_parts,
)
from backworks_core.capture.formats.openapi_operation import EXCLUDED_RESPONSE_HEADERS, MOCK_ERROR_SCHEMA, OWN_ANSWERS, OperationSpec
from backworks_core.capture.formats.sniff import count_hint, read_any, sniff_format

__all__ = [
    "DEFAULT_PORTS",
    "EXCLUDED_RESPONSE_HEADERS",
    "HTTP_AUTH_SCHEMES",
    "INJECTED_REQUEST_HEADERS",
    "MAX_MEDIA_TYPES",
    "MAX_NAMES",
    "MAX_PARTS",
    "MAX_VALUES",
    "MAX_VALUE_LENGTH",
    "MOCK_ERROR_SCHEMA",
    "OWN_ANSWERS",
    "REFUSED_STATUSES",
    "Credential",
    "FileKind",
    "FormPart",
    "FormatError",
    "Headers",
    "OperationEvidence",
    "OperationSpec",
    "PathLike",
    "content_type",
    "count_hint",
    "exchange_from_flow",
    "exchange_from_har_entry",
    "har_entry",
    "header_value",
    "is_json",
    "is_json_media_type",
    "is_text",
    "multipart_parts",
    "openapi_document",
    "openapi_path",
    "read_any",
    "read_flows",
    "read_har",
    "read_jsonl",
    "security_schemes",
    "sniff_format",
    "try_json",
    "write_har",
    "write_jsonl",
]
