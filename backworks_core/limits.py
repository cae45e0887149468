"""Request limits and JSON Schema validation of request bodies, applied before anything else.

Where they are written (as Envoy's `max_request_headers_kb` and Kong's request-size-limiting
and request-validator plugins are):

- `server.max_body_size` / `server.max_header_size`: defaults for every endpoint of the
  blueprint. Sizes are a number of bytes or a string with a binary unit (`512k`, `10m`, `1g`,
  as mitmproxy's own size options; `kb`/`mb`/`gb` mean the same). `max_body_size` has no
  default: bodies of any size stream through (see "Large bodies"), as Envoy's and Kong's
  proxies do by default. `max_header_size` is `64k` by default (Envoy: 60 KiB).
- `config.limits: {max_body_size, max_header_size}` on an endpoint: its own limits, any
  handler. A key left out keeps the server's value; an explicit `null` lifts it for this
  endpoint.
- `config.validate: {schema: <JSON Schema>}` on an endpoint, any handler: the request body must
  be JSON matching the schema. The schema's own draft comes from its `$schema` (2020-12 when
  absent); it is checked when the blueprint loads (a bad schema is a located blueprint error)
  and compiled once. `format` is asserted for the formats jsonschema can check. Only local
  references (`#/$defs/...`) are allowed: validation never goes to the network.

What is measured and answered (JSON errors with the request id, like every error Backworks
answers itself; the flow comment gets `refused=...`):

- body size: the bytes of the body as received (before any Content-Encoding is undone). A
  `Content-Length` above the limit is refused from the head alone, in mitmproxy's
  `requestheaders` hook: the body is never held nor sent upstream (it is read and discarded
  by the relay so the connection stays usable). A chunked body is counted as it arrives and
  refused once it passes the limit. → `413`, `refused=max_body_size`.
- header size: the bytes of the header fields as `name: value\\r\\n` lines (no request line).
  → `431`, `refused=max_header_size`.
- schema: applied to requests with a body, and to POST, PUT and PATCH without one (an empty
  body there is a `400`). A `Content-Type` that is present and not JSON (`application/json`,
  `*/*+json`) is `415`; a body that is not JSON (or cannot be decoded) is `400`
  (`refused=not_json`); JSON that does not match is `422` (`refused=schema`) with the most
  relevant error (jsonschema's `best_match`) and its JSON path:
  `{"error": "request body does not match the schema: 'price' is a required property",
  "status": 422, "request_id": "…", "path": "$.items[2]"}`. A body validated against a
  schema is held whole, so it is limited by `max_body_size`, or, when that is unset, by
  `backworks_buffer_limit` (larger: `413`).

Order: limits, then the schema, then the endpoint's middlewares (auth, rate limits, faults),
then the handler. So nothing of a refused request reaches an upstream or a middleware that
could call one; the price is that a request that is both unauthenticated and malformed gets
the 4xx of its shape (413/431/422), not 401.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match
from mitmproxy import http
from pydantic import Field, field_validator

from backworks_core import headers as fast_headers
# BodyTooLarge: also raised into a handler that streams a request body once it passes the limit.
from backworks_core.bodies import DEFAULT_LIMIT, BodyError, BodyTooLarge, JsonTooDeep, decoded_body, loads_json  # noqa: F401
from backworks_core.context import REQUEST_ID_HEADER, RequestContext, json_response
from backworks_core.model import ServerSettings, Size, StrictModel

BODYLESS_OK = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE", "CONNECT"})
MESSAGE_MAX = 300  # characters of jsonschema's message kept in the answer


class LimitsConfig(StrictModel):
    """`config.limits` on an endpoint; a key left out keeps `server.*`, `null` lifts it."""

    max_body_size: Size | None = Field(None, description="largest request body, in bytes or as 512k, 10m; null: no limit", examples=["1m"])
    max_header_size: Size | None = Field(None, description="largest total of request header fields, in bytes or as 64k; null: no limit", examples=["16k"])


class ValidateConfig(StrictModel):
    """`config.validate` on an endpoint: the request body must match `schema`."""

    schema_: dict[str, Any] | bool = Field(alias="schema", description="a JSON Schema (draft from its $schema; 2020-12 by default)", examples=[{"type": "object", "required": ["item", "quantity"], "properties": {"item": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}}}])

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | bool) -> dict[str, Any] | bool:
        validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            validator_class.check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = exc.json_path if exc.path else "$"
            raise ValueError(f"not a valid JSON Schema at {where}: {_short(exc.message)}") from None
        remote = _remote_ref(schema)
        if remote is not None:
            raise ValueError(f"$ref {remote!r}: only local references (#/...) are resolved; put the definition under $defs")
        return schema


def _remote_ref(node: Any) -> str | None:
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            return ref
        return next((r for v in node.values() if (r := _remote_ref(v)) is not None), None)
    if isinstance(node, list):
        return next((r for v in node if (r := _remote_ref(v)) is not None), None)
    return None


def _short(message: str) -> str:
    return message if len(message) <= MESSAGE_MAX else message[: MESSAGE_MAX - 1] + "…"


def header_size(request: http.Request) -> int:
    """Bytes of the header fields as HTTP/1 sends them: `name: value\\r\\n` each."""
    return sum(len(name) + len(value) + 4 for name, value in request.headers.fields)


def declared_length(request: http.Request) -> int | None:
    value = fast_headers.get(request.headers, "content-length")
    if value is None or fast_headers.has(request.headers, "transfer-encoding"):
        return None
    try:
        return int(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    note: str  # the `refused=` note
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Accept-Encoding on a 415

    def response(self, ctx: RequestContext) -> http.Response:
        """The JSON error, with the request id; recorded for mitmweb, metrics and the status page."""
        ctx.notes["refused"] = self.note
        if ctx.record is not None:
            ctx.record.error = self.message
        body = {"error": self.message, "status": self.status, "request_id": ctx.request_id, **self.extra}
        response = json_response(self.status, body, self.headers)
        response.headers[REQUEST_ID_HEADER] = ctx.request_id
        return response


def too_large(limit: int) -> Refusal:
    return Refusal(413, f"request body is larger than the limit of {limit} bytes", "max_body_size")


def body_refusal(error: BodyError, what: str = "request body") -> Refusal:
    """The answer to a body Backworks would not read (backworks_core.bodies): 413, 415 or 400."""
    return Refusal(error.status, f"{what}: {error.message}" if isinstance(error, JsonTooDeep) else f"{what} {error.message}", error.note, {}, error.headers)


def decoded_limit(guard: RequestGuard | None) -> int:
    """Bytes a decoded request body may have: the endpoint's max_body_size, else DEFAULT_LIMIT."""
    if guard is not None and guard.max_body is not None:
        return guard.max_body
    return DEFAULT_LIMIT


def request_body(ctx: RequestContext, limit: int | None = None) -> bytes:
    """The request body with its Content-Encoding undone, within the endpoint's limit (or
    `limit`, when lower); raises backworks_core.bodies.BodyError, which the gateway answers."""
    bound = decoded_limit(getattr(ctx.endpoint, "guard", None))  # no endpoint: a handler tested on its own
    return decoded_body(ctx.flow.request, bound if limit is None else min(bound, limit))


@dataclass(frozen=True)
class RequestGuard:
    """One endpoint's limits and compiled validator; built once per blueprint version."""

    max_body: int | None = None
    max_header: int | None = None
    validator: Any = None  # a jsonschema validator instance

    @classmethod
    def build(cls, server: ServerSettings, limits: LimitsConfig | None, validate: ValidateConfig | None) -> RequestGuard | None:
        max_body, max_header = server.max_body_size, server.max_header_size
        if limits is not None:
            if "max_body_size" in limits.model_fields_set:
                max_body = limits.max_body_size
            if "max_header_size" in limits.model_fields_set:
                max_header = limits.max_header_size
        validator = None
        if validate is not None:
            validator_class = jsonschema.validators.validator_for(validate.schema_, default=jsonschema.Draft202012Validator)
            validator = validator_class(validate.schema_, format_checker=validator_class.FORMAT_CHECKER)
        if max_body is None and max_header is None and validator is None:
            return None
        return cls(max_body, max_header, validator)

    def check_head(self, request: http.Request) -> Refusal | None:
        """What the head alone tells: header size, and a declared body length."""
        if self.max_header is not None:
            size = header_size(request)
            if size > self.max_header:
                return Refusal(431, f"request header fields are {size} bytes, more than the limit of {self.max_header}", "max_header_size")
        if self.max_body is not None:
            length = declared_length(request)
            if length is not None and length > self.max_body:
                return too_large(self.max_body)
        return None

    def check_held(self, request: http.Request) -> Refusal | None:
        """A request whose body mitmproxy (or the relay) holds whole: every check."""
        refusal = self.check_head(request)
        if refusal is None and self.max_body is not None and len(request.raw_content or b"") > self.max_body:
            refusal = too_large(self.max_body)
        if refusal is None and self.validator is not None:
            refusal = self.check_schema(request)
        return refusal

    def check_schema(self, request: http.Request) -> Refusal | None:
        raw = request.raw_content or b""
        if not raw and request.method in BODYLESS_OK:
            return None
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type and content_type != "application/json" and not content_type.endswith("+json"):
            return Refusal(415, f"this endpoint expects a JSON body (Content-Type: application/json), got {content_type}", "not_json")
        if not raw:
            return Refusal(400, "request body is empty; this endpoint expects a JSON body", "not_json")
        try:
            document = loads_json(decoded_body(request, self.max_body if self.max_body is not None else DEFAULT_LIMIT))
        except BodyError as exc:  # past the limit once decoded, an unknown or broken coding, too deep
            return body_refusal(exc)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            return Refusal(400, f"request body is not valid JSON: {_short(str(exc))}", "not_json")
        error = best_match(self.validator.iter_errors(document))
        if error is None:
            return None
        return Refusal(422, f"request body does not match the schema: {_short(error.message)}", "schema", {"path": error.json_path})

