"""Header reads and writes on the per-request path, with mitmproxy's semantics at a quarter of the cost.

mitmproxy's `Headers` is a general multidict: each `get`, `in` or assignment converts the name,
then decodes and lowercases every field through several Python calls (about 5 µs with a handful
of headers). Backworks looks at some twenty headers per proxied request, so those calls were a
tenth of its own per-request CPU. These functions read and rewrite `Headers.fields` (mitmproxy's
public tuple of raw `(name, value)` byte pairs) in one pass each and give the same answers:

- names match case-insensitively (ASCII, as HTTP field names are);
- values are decoded as mitmproxy decodes them (UTF-8 with surrogate escapes);
- `get` joins repeated fields with ", ", as `headers[name]` does;
- `put` replaces a field in place and drops later copies, as `headers[name] = value` does.
"""

from __future__ import annotations

from collections.abc import Iterable

from mitmproxy import http

__all__ = ["from_fields", "get", "get_two", "has", "put", "put_all", "put_fields", "remove", "replace", "values"]


def from_fields(fields: Iterable[tuple[bytes, bytes]]) -> http.Headers:
    """`http.Headers(fields)` for fields already known to be `(bytes, bytes)` tuples (a head
    Backworks builds): without the constructor's per-field type check and copy of each pair."""
    headers = _HEADERS_NEW(http.Headers)
    headers.fields = tuple(fields)
    return headers


_HEADERS_NEW = http.Headers.__new__


_NAMES: dict[str, bytes] = {}


def _name(name: str) -> bytes:
    """The lower-case bytes of a field name; Backworks asks for a few names, over and over."""
    key = _NAMES.get(name)
    if key is None:
        key = name.lower().encode("utf-8", "surrogateescape")
        if len(_NAMES) < 1024:  # names may come from blueprints and plugins: a bounded cache
            _NAMES[name] = key
    return key


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def values(headers: http.Headers, name: str) -> list[str]:
    """Every value of `name`, in order (mitmproxy's `get_all`)."""
    key = _name(name)
    return [value.decode("utf-8", "surrogateescape") for field, value in headers.fields if field.lower() == key]


def get(headers: http.Headers, name: str, default: str | None = None) -> str | None:
    """The value of `name`, repeated fields joined with ", " (mitmproxy's `get`)."""
    key = _name(name)
    found = [value for field, value in headers.fields if field.lower() == key]
    if not found:
        return default
    return b", ".join(found).decode("utf-8", "surrogateescape")


def get_two(headers: http.Headers, first: str, second: str) -> tuple[str | None, str | None]:
    """`get` of two names in one pass over the fields (two headers read together on every request)."""
    key_first, key_second = _name(first), _name(second)
    found_first: list[bytes] = []
    found_second: list[bytes] = []
    for field, value in headers.fields:
        key = field.lower()
        if key == key_first:
            found_first.append(value)
        elif key == key_second:
            found_second.append(value)
    return (
        b", ".join(found_first).decode("utf-8", "surrogateescape") if found_first else None,
        b", ".join(found_second).decode("utf-8", "surrogateescape") if found_second else None,
    )


def has(headers: http.Headers, name: str) -> bool:
    key = _name(name)
    return any(field.lower() == key for field, _ in headers.fields)


def put(headers: http.Headers, name: str, value: str) -> None:
    """Set `name` to `value` (mitmproxy's `headers[name] = value`)."""
    put_all(headers, ((name, value),))


def put_all(headers: http.Headers, items: Iterable[tuple[str, str]]) -> None:
    """Set several headers in one pass: each replaces the first field of its name in place and
    drops the others; a name not present is appended, in the order given."""
    _put(headers, {_name(name): (_bytes(name), _bytes(value)) for name, value in items})


def put_fields(headers: http.Headers, fields: Iterable[tuple[bytes, bytes]]) -> None:
    """`put_all` for fields already encoded (a plugin's own header names, values it made)."""
    _put(headers, {name.lower(): (name, value) for name, value in fields})


def _put(headers: http.Headers, wanted: dict[bytes, tuple[bytes, bytes]]) -> None:
    if not wanted:
        return
    names = set(wanted)
    fields: list[tuple[bytes, bytes]] = []
    for field, value in headers.fields:
        key = field.lower()
        if key in names:
            replacement = wanted.pop(key, None)
            if replacement is not None:
                fields.append((field, replacement[1]))  # the field keeps its place and its spelling
            continue
        fields.append((field, value))
    fields.extend(wanted.values())
    headers.fields = tuple(fields)


def remove(headers: http.Headers, name: str) -> None:
    """Drop every field of `name`; nothing happens when there is none."""
    key = _name(name)
    if any(field.lower() == key for field, _ in headers.fields):
        headers.fields = tuple((field, value) for field, value in headers.fields if field.lower() != key)


def replace(headers: http.Headers, names: Iterable[str], items: Iterable[tuple[str, str]]) -> None:
    """Drop every field of `names`, then append `items` in order: one pass, where `remove` and
    `put` per name would rebuild the fields each time."""
    drop = {_name(name) for name in names}
    fields = [pair for pair in headers.fields if pair[0].lower() not in drop]
    fields.extend((_bytes(name), _bytes(value)) for name, value in items)
    headers.fields = tuple(fields)
