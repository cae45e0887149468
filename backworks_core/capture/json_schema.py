"""JSON Schema inference from recorded bodies, and which bodies are JSON.

`infer_schema` merges samples into a JSON Schema 2020-12 (the OpenAPI 3.1 dialect), bounded in
depth, properties and array items so that hostile bodies cannot make it slow or deep. Strings get
a `format` (uuid, date-time, date, email, uri) when every sample has it, and a few distinct short
values seen often an `enum`; `required` needs a key in every object seen, and at least
`MIN_REQUIRED_SAMPLES` of them. The value tests are `backworks_core.capture.values`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backworks_core.capture.values import EMAIL, URI, UUID, is_date, is_date_time, value_kind


# Schema: `enum` for at most this many distinct strings, each seen this often, over this many.
ENUM_MAX_VALUES = 5
ENUM_MIN_COUNT = 2
ENUM_MIN_SAMPLES = 5
ENUM_MAX_LENGTH = 64  # longer strings are prose or data, not members of a closed set
# `required` needs a key in every object seen at that position, and at least this many objects:
# one answer cannot tell a key the API always sends from one this request happened to get.
MIN_REQUIRED_SAMPLES = 2
# Schema bounds: nesting, properties tracked per object position, items read per array.
MAX_SCHEMA_DEPTH = 20
MAX_PROPERTIES = 200
MAX_ARRAY_ITEMS = 100


_JSON_TYPE = re.compile(r"application/(?:[^;\s]*\+)?json", re.IGNORECASE)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_body(body: bytes, content_type: str | None) -> Any | None:
    """Parsed JSON for a JSON content type, or for any body that is a JSON object or array.

    None when the body is not JSON (or is JSON `null`): the schema and examples then treat it
    as text. NaN/Infinity and nesting too deep to parse count as not JSON.
    """
    if not body:
        return None
    media = (content_type or "").split(";", 1)[0].strip()
    declared = bool(_JSON_TYPE.fullmatch(media))
    if not declared and body.lstrip()[:1] not in (b"{", b"["):
        return None
    try:
        value = json.loads(body.decode("utf-8-sig"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if declared or isinstance(value, (dict, list)):
        return value
    return None


_TYPE_ORDER = ("object", "array", "string", "number", "integer", "boolean", "null")
_FORMAT_ORDER = ("uuid", "date-time", "date", "email", "uri")
_ID_NAME_CAMEL = re.compile(r".*[a-z0-9](?:Id|Ids|ID|IDs|Uuid|UUID)")


def _string_formats(text: str) -> set[str]:
    formats: set[str] = set()
    if len(text) == 36 and UUID.fullmatch(text):
        formats.add("uuid")
    elif is_date_time(text):
        formats.add("date-time")
    elif is_date(text):
        formats.add("date")
    elif EMAIL.fullmatch(text):
        formats.add("email")
    elif URI.fullmatch(text):
        formats.add("uri")
    return formats


def _is_id_name(name: str | None) -> bool:
    """Fields named like identifiers never get an `enum`, whatever their few values are."""
    if not name:
        return False
    lowered = name.lower()
    if lowered in ("id", "ids", "uuid", "uuids", "guid", "key"):
        return True
    if lowered.endswith(("_id", "_ids", "-id", "-ids", "_uuid", "_key")):
        return True
    return bool(_ID_NAME_CAMEL.fullmatch(name))


@dataclass(slots=True, eq=False)
class _Summary:
    """Everything seen at one position of the samples, merged."""

    seen: int = 0
    types: set[str] = field(default_factory=set)
    strings: int = 0
    formats: set[str] | None = None  # formats every string so far matched; None before any
    values: Counter[str] | None = field(default_factory=Counter)  # None: not an enum
    objects: int = 0
    properties: dict[str, _Summary] = field(default_factory=dict)
    present: Counter[str] = field(default_factory=Counter)
    items: _Summary | None = None


def _observe(summary: _Summary, value: Any, depth: int) -> None:
    summary.seen += 1
    if value is None:
        summary.types.add("null")
    elif isinstance(value, bool):
        summary.types.add("boolean")
    elif isinstance(value, int):
        summary.types.add("integer")
    elif isinstance(value, float):
        summary.types.add("number")
    elif isinstance(value, str):
        summary.types.add("string")
        summary.strings += 1
        formats = _string_formats(value)
        summary.formats = formats if summary.formats is None else summary.formats & formats
        if summary.values is not None:
            if formats or len(value) > ENUM_MAX_LENGTH or (value and value_kind(value)):
                summary.values = None  # ids, dates, e-mails, prose: open sets
            else:
                summary.values[value] += 1
                if len(summary.values) > ENUM_MAX_VALUES:
                    summary.values = None
    elif isinstance(value, Mapping):
        summary.types.add("object")
        summary.objects += 1
        if depth >= MAX_SCHEMA_DEPTH:
            return
        for key, item in value.items():
            key = str(key)
            child = summary.properties.get(key)
            if child is None:
                if len(summary.properties) >= MAX_PROPERTIES:
                    continue
                child = summary.properties[key] = _Summary()
            summary.present[key] += 1
            _observe(child, item, depth + 1)
    elif isinstance(value, (list, tuple)):
        summary.types.add("array")
        if depth >= MAX_SCHEMA_DEPTH:
            return
        if summary.items is None:
            summary.items = _Summary()
        for item in value[:MAX_ARRAY_ITEMS]:
            _observe(summary.items, item, depth + 1)
    # anything else (bytes, objects) is not JSON: seen, but it adds no type


def _render(summary: _Summary, name: str | None) -> dict[str, Any]:
    types = set(summary.types)
    if "integer" in types and "number" in types:
        types.discard("integer")  # every integer is a number
    ordered = [t for t in _TYPE_ORDER if t in types]
    if not ordered:
        return {}
    schema: dict[str, Any] = {"type": ordered[0] if len(ordered) == 1 else ordered}
    if "string" in types and summary.formats:
        schema["format"] = next(f for f in _FORMAT_ORDER if f in summary.formats)
    values = summary.values
    if (
        types <= {"string", "null"}
        and "string" in types
        and values
        and summary.strings >= ENUM_MIN_SAMPLES
        and all(count >= ENUM_MIN_COUNT for count in values.values())
        and not _is_id_name(name)
        and "format" not in schema
    ):
        schema["enum"] = sorted(values) + ([None] if "null" in types else [])
    if "object" in types and summary.properties:
        schema["properties"] = {key: _render(child, key) for key, child in summary.properties.items()}
        required = [key for key in summary.properties if summary.present[key] == summary.objects]
        if required and summary.objects >= MIN_REQUIRED_SAMPLES:
            schema["required"] = required
    if "array" in types and summary.items is not None and summary.items.seen:
        schema["items"] = _render(summary.items, name)
    return schema


def infer_schema(samples: Sequence[Any]) -> dict[str, Any]:
    """One JSON Schema (2020-12, as OpenAPI 3.1 uses) that every sample validates against.

    `type` lists every type seen (`"null"` when a value was null); `required` lists the keys
    present in every object, once MIN_REQUIRED_SAMPLES objects were seen at that position (one
    sample proves nothing about what is optional); `format` is set only when every string matched
    it (a redaction placeholder matches none, so a redacted position has no format); `enum` only for
    small closed sets of repeated words. Bounded by MAX_SCHEMA_DEPTH, MAX_PROPERTIES and
    MAX_ARRAY_ITEMS: beyond them the schema says less, never something wrong for what it read.
    """
    summary = _Summary()
    for sample in samples:
        _observe(summary, sample, 0)
    return _render(summary, None)
