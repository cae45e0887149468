"""The blueprint keys of `handler: mock`: an example (`when`, the answer, its JSON layout), the
endpoint's `config.mock`, the `examples_file` it may name; validated at load so that a bad
example is a load error naming its place, never a wrong answer (decisions: the package doc)."""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PrivateAttr, field_validator, model_validator

from backworks_core.handlers.mock_features import MockFeaturesConfig
from backworks_core.model import BlueprintPath, StrictModel
from backworks_core.router import parse_template
from backworks_core.validation import Duration

NO_BODY_STATUSES = frozenset({204, 304})
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


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
        if has_body and (self.status < 200 or self.status in NO_BODY_STATUSES):
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
