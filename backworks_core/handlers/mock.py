"""`handler: mock`: recorded examples, answered by request matching (written by capture, editable by hand).

```yaml
config:
  mock:
    examples:
      - when: {path: {id: "7"}, query: {page: "2"}, headers: {X-Tenant: acme}, body: {kind: a}}
        status: 200
        headers: {Content-Type: application/json}
        body: {id: 7, name: Ada}        # a JSON value, or a string (sent as is); or body_base64: "..."
        latency: 0.012                  # how long the recorded answer took (optional)
      - status: 404                     # no `when`: the fallback
        body: {error: not found}
    schema: {...}                       # optional JSON Schema of the bodies (informational)
    passthrough: false
    replay_latency: false
```

Decisions where the blueprint format is silent:

Matching
  Every condition an example's `when` gives must hold:
  - `path`: each named path parameter equals the given value, compared as strings (`id: 7` and
    `id: "7"` are the same). A name the endpoint's path template does not have is a build error.
  - `query`: each given key has exactly that value; a list gives the key's values in order
    (`tag: [a, b]` matches `?tag=a&tag=b`, not `?tag=b&tag=a`). A string is a list of one, so
    `tag: a` does not match `?tag=a&tag=b`. Keys the example does not name are not looked at.
  - `headers`: names case-insensitive, values exact (a header sent several times matches when one
    of its values, or all of them joined with ", ", is the given value); null: the header is absent.
  - Redacted values (`path`, `query`, `headers`): a `[REDACTED:<12 hex>]` placeholder, whole or
    inside the value, matches the text with that fingerprint (`value_matches`), so a recording
    redacted on the way answers the request it came from; a bare `[REDACTED]` matches any value.
  - `body`: the request body parsed as JSON (whatever its Content-Type) contains the given JSON:
    objects recursively (the request may have more keys), arrays and scalars equal (`true` is not
    `1`, `1` is `1.0`). A body that is not JSON matches no body condition.
  `examples_file` holds more examples, one JSON object per line, read as if they followed
  `examples` (capture writes the answers beyond `max_examples` there).
  The most specific matching example answers: specificity is the number of conditions, each
  path parameter, query key, header and body leaf counting one (an array or an empty object is
  one leaf). A tie goes to the example that comes first in the file.

Sequences
  Examples whose `when` are the same (after normalisation: header names lower-cased, numbers in
  `path`/`query` as strings, order of keys ignored) are one sequence: the requests they match get
  them in file order, one each, and once the last has answered it answers every further request,
  as mitmproxy's server replay does when it does not reuse flows (`server_replay_reuse` off) until
  it runs out. Fallbacks are a sequence in the same way. The position is kept by the handler
  instance: a blueprint reload starts every sequence again. A request takes its step before any
  await, so concurrent requests never get the same step, and a request cancelled while it waits
  out a replayed latency has still used its step.

No match
  The fallback answers (an example without `when`, or with an empty one); without one, the
  standard Backworks 404 `{error, status, request_id}`; with `passthrough: true` the request goes
  on, unchanged but for its X-Request-ID and `traceparent` (as every request Backworks passes to
  an upstream carries them), to its own URL: in reverse mode that is the real upstream, in
  regular mode the server a proxied client asked for. A request sent to the gateway's own
  address (regular mode, no upstream) cannot pass through: it is answered 502, never sent to
  the proxy itself. The flow comment says `mock=example-N` (N: the index in `examples`),
  `mock=fallback` or `mock=passthrough`.

Answers
  Bodies are literal data: never template-rendered, so a recorded `{{now}}` stays text. A JSON
  value body is sent as compact JSON (or as its `json_layout` says: indented, spaced, `\\u`
  escapes, a final newline) with Content-Type application/json, a string as its UTF-8
  bytes with text/plain; charset=utf-8, `body_base64` as the decoded bytes with
  application/octet-stream, each unless the example's headers set a Content-Type or it says
  `add_content_type: false` (an answer recorded without one). `body: null`
  or no body is an empty body. A string is sent byte for byte: the capture writes a recorded
  body as a string (its exact text) unless compact JSON gives back the same bytes. A header
  value may be a list (Set-Cookie sent twice). Headers are literal too. Content-Encoding is
  sent with `body_base64` (bytes still encoded: the capture stores bodies decoded and writes
  it only for bytes it could not decode) or without a body, and dropped with `body`, which is
  decoded text or JSON by definition. Content-Length is computed; the recorded Content-Length,
  Transfer-Encoding, the hop-by-hop headers and X-Request-ID (the answer carries this
  request's id) are dropped from the example's headers. 1xx, 204 and 304 cannot carry a body
  and get no Content-Length. HEAD gets the GET answer's headers, its Content-Length included,
  without the body; an example without a body (a recorded HEAD answer) that gives a
  Content-Length announces that one to HEAD.

Latency
  With `replay_latency: true` an example's `latency` × `latency_factor` is waited out before
  answering, at most `max_latency` (60 s at most); the wait ends at once when the client goes.

Beyond replay
  Request validation (`validate`, `request_body`), `Prefer: code=…/example=…`, answers
  synthesised for unrecorded path values (`unrecorded`), the latency keys, and their
  blueprint-wide defaults in `server.mock`: backworks_core.handlers.mock_features. Order: a
  refused request (415/400/422) first, then a preferred example, then the collection state
  (`state: collections`, backworks_core.handlers.mock_state), then matching as above.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import socket
import time
from dataclasses import dataclass
from typing import Annotated, Any

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode
from pydantic import BeforeValidator, Field, PrivateAttr, field_validator, model_validator

from backworks_core.bodies import loads_json
from backworks_core.capture.redact import PLACEHOLDER, fingerprint, matches_placeholder
from backworks_core.context import Forward, RequestContext, reason_phrase, stamp_request
from backworks_core.handlers.mock_defaults import MockDefaults
from backworks_core.handlers.mock_features import MockFeatures, MockFeaturesConfig, substitute, substitute_text, with_header
from backworks_core.handlers.mock_state import Role, StateTools
from backworks_core.limits import request_body
from backworks_core.model import BlueprintPath, StrictModel
from backworks_core.router import parse_template
from backworks_core.validation import Duration

MAX_LATENCY = 60.0
_NO_BODY_STATUSES = frozenset({204, 304})
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
_LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


# --------------------------------------------------------------------------- config


def _as_string(value: Any) -> Any:
    """`id: 7` in YAML is the integer 7; path and query values compare as strings."""
    if isinstance(value, bool):
        raise ValueError(f"expected a string or a number, got {str(value).lower()}; quote it (\"{str(value).lower()}\") to mean the text")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"expected a string or a number, got {value}")
        return repr(value)
    return value


Text = Annotated[str, BeforeValidator(_as_string)]


def _check_json(value: Any, where: str = "") -> None:
    """Bodies are JSON data: string keys, finite numbers, nothing YAML-only."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where or 'the value'} is {value}, which JSON cannot carry")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"key {key!r}{' in ' + where if where else ''} is not a string; JSON object keys are strings: quote it")
            _check_json(item, f"{where}.{key}" if where else key)
        return
    raise ValueError(f"{where or 'the value'} is a {type(value).__name__}, which is not JSON; quote it")


def _json_data(value: Any) -> Any:
    """The `body` validator of every model with one: YAML data given as a body must be JSON data."""
    _check_json(value)
    return value


def _check_header_name(name: str) -> None:
    if not name or not set(name) <= _TOKEN_CHARS:
        raise ValueError(f"{name!r} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)")


def _check_header_value(name: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"the value of header {name!r} carries CR, LF or NUL")


class MockWhen(StrictModel):
    """The conditions an example answers under; all given ones must hold."""

    path: dict[str, Text] = Field(default_factory=dict, description="path parameters, compared as strings", examples=[{"id": "42"}])
    query: dict[str, Text | list[Text]] = Field(
        default_factory=dict, description="query parameters: a value, or the key's values in order", examples=[{"status": "shipped"}]
    )
    headers: dict[str, str | None] = Field(
        default_factory=dict,
        description="request headers: names case-insensitive, values exact (a `[REDACTED:…]` placeholder matches the secret it stands for); null: the header must be absent",
        examples=[{"Accept": "application/json", "If-None-Match": None}],
    )
    body: Any = Field(None, description="JSON the request body must contain (objects recursively, arrays equal)", examples=[{"currency": "EUR"}])

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str | None]) -> dict[str, str | None]:
        seen: dict[str, str] = {}
        for name, value in headers.items():
            _check_header_name(name)
            if value is not None:
                _check_header_value(name, value)
            if name.lower() in seen:
                raise ValueError(f"header {name!r} is given twice (also as {seen[name.lower()]!r}); header names are case-insensitive")
            seen[name.lower()] = name
        return headers

    _json_body = field_validator("body")(_json_data)

    @property
    def has_body(self) -> bool:
        return "body" in self.model_fields_set


class JsonLayout(StrictModel):
    """How a JSON `body` given as YAML data is written out; the default is compact JSON.

    The capture writes it when the recorded bytes are one of these layouts (Python's
    `json.dumps` default, `JSON.stringify(v, null, 2)`, httpbin's), so that the body stays
    readable data and is still sent byte for byte."""

    indent: int | None = Field(None, ge=0, le=16, description="spaces per level, one member per line (`,` and `: ` between); none: one line", examples=[2])
    spaced: bool = Field(False, description="on one line, `, ` between members and `: ` after keys (Python's json.dumps default); none: `,` and `:`", examples=[True])
    ascii: bool = Field(False, description="characters beyond ASCII as `\\uXXXX` escapes; default: as UTF-8", examples=[True])
    newline: bool = Field(False, description="a newline after the JSON", examples=[True])


class MockExample(StrictModel):
    """One recorded answer."""

    when: MockWhen | None = Field(None, description="conditions; none (or empty): the fallback", examples=[{"path": {"id": "42"}}])
    status: int = Field(200, description="the HTTP status, 100 to 599", json_schema_extra={"minimum": 100, "maximum": 599}, examples=[404])
    headers: dict[str, str | list[str]] = Field(default_factory=dict, description="response headers; a list sends the header several times", examples=[{"X-Total-Count": "1"}])
    body: Any = Field(None, description="a JSON value (sent as JSON) or a string (sent as is); never template-rendered", examples=[{"id": 42, "status": "shipped"}])
    body_base64: str | None = Field(None, description="a binary body, base64-encoded (instead of body)", examples=["iVBORw0KGgo="])
    json_layout: JsonLayout | None = Field(None, description="how a JSON `body` (an object or array) is written out; default: compact", examples=[{"indent": 2, "newline": True}])
    latency: Duration | None = Field(None, description="how long the recorded answer took; waited out with replay_latency", examples=["120ms"])
    add_content_type: bool = Field(
        True, description="send a Content-Type by the body's kind when `headers` set none; the capture writes false for an answer recorded without one", examples=[False]
    )
    name: str | None = Field(None, min_length=1, description="what `Prefer: example=NAME` asks for; default: derived from the status and `when` (backworks_core.handlers.mock_features)", examples=["200-ada"])

    @field_validator("status")
    @classmethod
    def _status(cls, status: int) -> int:
        if not 100 <= status <= 599:
            raise ValueError(f"expected an HTTP status from 100 to 599, got {status}")
        return status

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for name, value in headers.items():
            _check_header_name(name)
            for item in value if isinstance(value, list) else [value]:
                _check_header_value(name, item)
        return headers

    _json_body = field_validator("body")(_json_data)

    @field_validator("body_base64")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode("".join(value.split()), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("is not valid base64 (A-Z, a-z, 0-9, +, / and = padding)") from None
        return value

    @model_validator(mode="after")
    def _one_body(self) -> MockExample:
        if self.body is not None and self.body_base64 is not None:
            raise ValueError("give either `body` or `body_base64`, not both")
        has_body = self.body is not None or bool(self.body_base64)
        if has_body and (self.status < 200 or self.status in _NO_BODY_STATUSES):
            raise ValueError(f"a {self.status} answer has no body; remove `body`/`body_base64`, or use another status")
        if self.json_layout is not None and has_body and not isinstance(self.body, (dict, list)):
            raise ValueError("`json_layout` lays out a JSON object or array given as `body`; remove it, or give the body as YAML data")
        return self

    @property
    def is_fallback(self) -> bool:
        return self.when is None or not (self.when.path or self.when.query or self.when.headers or self.when.has_body)


class MockConfig(MockFeaturesConfig):
    examples: list[MockExample] = Field(default_factory=list, description="recorded answers, matched against each request", examples=[[{"when": {"path": {"id": "42"}}, "body": {"id": 42, "status": "shipped"}}, {"status": 404, "body": {"error": "no such order"}}]])
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="JSON Schema of the bodies (informational)", examples=[{"type": "object", "properties": {"id": {"type": "integer"}}}])
    passthrough: bool = Field(False, description="no match and no fallback: pass the request on to the real upstream", examples=[True])
    examples_file: BlueprintPath | None = Field(
        None,
        description="more examples, one JSON object per line with the keys of `examples[]`, answered as if they followed `examples` (relative to the blueprint's folder; `backworks capture` writes the answers beyond `max_examples` there)",
        examples=["captured.yaml.data/001-get-users.jsonl"],
    )
    _file_examples: list[MockExample] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _something_answers(self) -> MockConfig:
        if self.examples_file is not None:
            self._file_examples = read_examples_file(self.examples_file)
        if not self.examples and not self._file_examples and not self.passthrough:
            raise ValueError("needs at least one example in `examples` (or `passthrough: true` to send every request upstream)")
        return self

    @property
    def all_examples(self) -> list[MockExample]:
        """`examples`, then the lines of `examples_file`: the order sequences and ties follow."""
        return [*self.examples, *self._file_examples]


def read_examples_file(path: str) -> list[MockExample]:
    """The examples of an `examples_file`; an unreadable file or a bad line is a load error naming file and line."""
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"examples_file {path}: cannot read it: {exc.strerror or exc}") from None
    examples: list[MockExample] = []
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                examples.append(MockExample.model_validate(json.loads(line)))
            except ValueError as exc:  # json.JSONDecodeError and pydantic's ValidationError
                raise ValueError(f"examples_file {path}:{number}: {_first_error(exc)}") from None
    return examples


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = str(first.get("msg", exc)).removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    return f"not a JSON object: {exc}"


def check_path_params(config: MockConfig, template: str) -> tuple[tuple[str | int, ...], str] | None:
    """The first `when.path` naming a parameter the endpoint's path does not have: (loc, message)."""
    try:
        names = [s.value for s in parse_template(template) if s.kind != "literal"]
    except ValueError:
        return None  # the loader reports the path itself
    for index, example in enumerate(config.all_examples):
        if example.when is None:
            continue
        for name in example.when.path:
            if name not in names:
                have = f"its parameters are {', '.join(names)}" if names else "it has no parameters"
                if index >= len(config.examples):  # a line of examples_file: name the file and line
                    return (
                        ("config", "mock", "examples_file"),
                        f"{config.examples_file}: example {index - len(config.examples) + 1}: the endpoint's path {template!r} has no parameter {name!r}; {have}",
                    )
                return (
                    ("config", "mock", "examples", index, "when", "path", name),
                    f"the endpoint's path {template!r} has no parameter {name!r}; {have}",
                )
    return None


# --------------------------------------------------------------------------- matching


def _same(a: Any, b: Any) -> bool:
    """JSON equality: `true` is not `1` (Python says it is), `1` is `1.0`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def json_contains(actual: Any, expected: Any) -> bool:
    """`expected` is a subset of `actual`: objects recursively, everything else equal."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and json_contains(actual[k], v) for k, v in expected.items())
    return _same(actual, expected)


def _leaves(value: Any) -> int:
    if isinstance(value, dict) and value:
        return sum(_leaves(v) for v in value.values())
    return 1


_NO_JSON = object()


@dataclass(frozen=True)
class _Conditions:
    path: tuple[tuple[str, str], ...]
    query: tuple[tuple[str, tuple[str, ...]], ...]
    headers: tuple[tuple[str, str | None], ...]  # lower-cased names; None: must be absent
    has_body: bool
    body: Any
    specificity: int

    @classmethod
    def of(cls, when: MockWhen) -> _Conditions:
        query = tuple(sorted((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in when.query.items()))
        headers = tuple(sorted((k.lower(), v) for k, v in when.headers.items()))
        specificity = len(when.path) + len(query) + len(headers) + (_leaves(when.body) if when.has_body else 0)
        return cls(tuple(sorted(when.path.items())), query, headers, when.has_body, when.body, specificity)

    @property
    def key(self) -> tuple[Any, ...]:
        """Equal for examples recorded from the same request: they form a sequence."""
        body = json.dumps(self.body, sort_keys=True, separators=(",", ":")) if self.has_body else None
        return (self.path, self.query, self.headers, self.has_body, body)

    def matches(self, ctx: RequestContext, request_json: Any) -> bool:
        params = ctx.params
        for name, value in self.path:
            sent_param = params.get(name)
            if sent_param is None or not value_matches(value, sent_param):
                return False
        if self.query:
            query = ctx.request.query
            for name, values in self.query:
                sent_values = query.get_all(name)
                if len(sent_values) != len(values) or not all(value_matches(v, s) for v, s in zip(values, sent_values)):
                    return False
        if self.headers:
            headers = ctx.request.headers
            for name, wanted in self.headers:
                sent = headers.get_all(name)
                if wanted is None:
                    if sent:
                        return False
                elif not sent or not (any(value_matches(wanted, s) for s in sent) or value_matches(wanted, ", ".join(sent))):
                    return False
        if self.has_body:
            body = request_json()
            if body is _NO_JSON or not json_contains(body, self.body):
                return False
        return True


# A redacted value as capture writes it: `[REDACTED:<12 hex>]` stands for one secret (its
# fingerprint, backworks_core.capture.redact), a bare `[REDACTED]` (older recordings) for any value.
_REDACTED_PART = re.compile(r"\[REDACTED(?::([0-9a-f]{12}))?\]")
_MAX_PLACEHOLDERS = 16  # per value: bounds the search below


def value_matches(recorded: str, sent: str) -> bool:
    """A recorded path, query or header value matches what the client sent now.

    Equal text matches. A placeholder, alone or inside the value (`Bearer [REDACTED:…]`,
    `sid=[REDACTED:…]; lang=en`), matches the non-empty text whose fingerprint it carries, so
    a recording redacted on the way still answers the request it was recorded from.
    """
    if recorded == sent:
        return True
    if "[REDACTED" not in recorded:
        return False
    whole = PLACEHOLDER.fullmatch(recorded)
    if whole is not None:
        return bool(sent) and matches_placeholder(recorded, sent)
    parts = _REDACTED_PART.split(recorded)
    literals, prints = parts[0::2], parts[1::2]
    if not prints or len(prints) > _MAX_PLACEHOLDERS or not sent.startswith(literals[0]):
        return False

    def holds(fp: str | None, text: str) -> bool:
        return bool(text) and (fp is None or fingerprint(text) == fp)

    def walk(index: int, position: int) -> bool:
        following = literals[index + 1]
        if index == len(prints) - 1:
            end = len(sent) - len(following)
            return end > position and sent.endswith(following) and holds(prints[index], sent[position:end])
        start = position + 1
        while (found := sent.find(following, start)) != -1:
            if holds(prints[index], sent[position:found]) and walk(index + 1, found + len(following)):
                return True
            start = found + 1
        return False

    return walk(0, len(literals[0]))


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class _Answer:
    index: int
    status: int
    reason: bytes
    fields: tuple[tuple[bytes, bytes], ...]  # everything but Content-Length
    content: bytes
    latency: float
    head_length: int | None = None  # a recorded HEAD answer's Content-Length (it has no body)

    @classmethod
    def of(cls, index: int, example: MockExample) -> _Answer:
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
        if self.status >= 200 and self.status not in _NO_BODY_STATUSES:
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


@dataclass
class _Sequence:
    """The examples recorded for one and the same request, played in order; the last repeats."""

    conditions: _Conditions | None  # None: the fallback
    answers: list[_Answer]
    position: int = 0

    def next(self) -> _Answer:
        answer = self.answers[min(self.position, len(self.answers) - 1)]
        if self.position < len(self.answers):
            self.position += 1
        return answer


# --------------------------------------------------------------------------- the handler


class MockHandler:
    """Compiled once per blueprint version; the sequences' positions live here."""

    def __init__(self, config: MockConfig, defaults: MockDefaults | None = None) -> None:
        self.passthrough = config.passthrough
        groups: dict[Any, _Sequence] = {}
        self.fallback: _Sequence | None = None
        answers: list[_Answer] = []
        for index, example in enumerate(config.all_examples):
            answer = _Answer.of(index, example)
            answers.append(answer)
            if example.is_fallback:
                if self.fallback is None:
                    self.fallback = _Sequence(None, [])
                self.fallback.answers.append(answer)
                continue
            assert example.when is not None
            conditions = _Conditions.of(example.when)
            group = groups.setdefault(conditions.key, _Sequence(conditions, []))
            group.answers.append(answer)
        # Most specific first; a tie keeps file order (the first example of each sequence).
        self.sequences = sorted(groups.values(), key=lambda s: -s.conditions.specificity)  # type: ignore[union-attr]
        # Validation, Prefer, unrecorded path values, latency (backworks_core.handlers.mock_features).
        self.features = MockFeatures(config, answers, _Conditions.of, _parse_json, _NO_JSON, defaults)
        # CRUD state (`state: collections`): the endpoint's role in its collection, set by
        # mock_state.link_collections once the blueprint's endpoints are built; None: as recorded.
        self.examples, self.answers = config.all_examples, answers
        self.state: Role | None = None
        self.state_tools = StateTools(json_body_bytes, _parse_json, _NO_JSON, _Answer, substitute, substitute_text)

    def choose(self, ctx: RequestContext) -> tuple[_Sequence | None, str]:
        parsed: list[Any] = []

        def request_json() -> Any:
            if not parsed:
                parsed.append(_parse_json(ctx))
            return parsed[0]

        for sequence in self.sequences:
            assert sequence.conditions is not None
            if sequence.conditions.matches(ctx, request_json):
                return sequence, "example"
        if self.fallback is not None:
            return self.fallback, "fallback"
        return None, "none"

    async def __call__(self, ctx: RequestContext) -> http.Response | Forward:
        features = self.features
        refused = features.check_request(ctx)
        if refused is not None:
            return refused
        preferred = features.preferred(ctx)
        if isinstance(preferred, http.Response):
            return preferred
        if preferred is not None:
            answer = with_header(preferred[0], "Preference-Applied", preferred[1])
        elif self.state is not None and (stateful := self.state.answer(ctx)) is not None:
            if isinstance(stateful, http.Response):
                return stateful  # 400, 409, 507 (refused writes) or Backworks' 404 for a deleted id
            answer = stateful
        else:
            sequence, kind = self.choose(ctx)
            if sequence is None:
                answer = None if self.passthrough else features.synthesise(ctx)
                if answer is None:
                    return self._unmatched(ctx)
            else:
                answer = sequence.next()  # taken before any await: concurrent requests each get their own step
                ctx.notes["mock"] = "fallback" if kind == "fallback" else f"example-{answer.index}"
        await features.wait(answer)
        return answer.response(ctx.request.method == "HEAD")

    def _unmatched(self, ctx: RequestContext) -> http.Response | Forward:
        request = ctx.request
        path = request.path.split("?", 1)[0]
        if not self.passthrough:
            ctx.notes["mock"] = "no-match"
            return ctx.error(404, f"no mock example matches {request.method} {path}")
        flow = ctx.flow
        if _addressed_to_gateway(flow):
            ctx.notes["mock"] = "no-match"
            return ctx.error(
                502,
                f"no mock example matches {request.method} {path}, and passthrough has no upstream for a request "
                "sent to the gateway's own address: run in reverse mode (backworks run, or mitmdump --mode "
                "reverse:URL), or send the request through the proxy",
            )
        ctx.notes["mock"] = "passthrough"
        stamp_request(flow, ctx.request_id)
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.fields]
        return Forward(request.url, headers)


def _parse_json(ctx: RequestContext) -> Any:
    """The request body as JSON for `when.body`, or _NO_JSON. Bounded (backworks_core.bodies):
    over the limit once decoded, an unknown or broken coding, or nested too deep raise BodyError,
    which the gateway answers 413/415/400: an example is never chosen on a body nobody read."""
    content = request_body(ctx)
    if not content:
        return _NO_JSON
    try:
        return loads_json(content)
    except ValueError:  # UnicodeDecodeError included
        return _NO_JSON


def _addressed_to_gateway(flow: http.HTTPFlow) -> bool:
    """A request to the proxy's own address in a mode with no upstream: passing it on would loop."""
    if isinstance(flow.client_conn.proxy_mode, ReverseMode):
        return False
    sockname = flow.client_conn.sockname
    if not sockname or flow.request.port != sockname[1]:
        return False
    host = flow.request.host.lower().strip("[]")
    return host in _LOCAL_NAMES or host == str(sockname[0]) or host == socket.gethostname().lower()
