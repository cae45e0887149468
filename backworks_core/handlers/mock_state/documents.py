"""The JSON work of the collection state, pure: where a recorded body keeps its items (or its
item), their ids and counts, RFC 7396 merge patch, and new ids shaped like the recorded ones."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from backworks_core.jsonpath import copy_json

ARRAY_DEPTH = 3
COUNT_NAME = re.compile(r"total|count", re.IGNORECASE)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_HEX32 = re.compile(r"[0-9a-f]{32}", re.IGNORECASE)
_PREFIXED = re.compile(r"(.*?)(\d+)")
NOT_JSON = object()


def example_json(example: Any) -> Any:
    """The recorded body as JSON data, or NOT_JSON (no body, or not JSON)."""
    body = example.body
    if isinstance(body, (dict, list)):
        return body
    if isinstance(body, str):
        try:
            return json.loads(body)
        except ValueError:
            return NOT_JSON
    return NOT_JSON  # none, a scalar, or body_base64 (bytes the capture could not decode)


def find_arrays(value: Any, depth: int = ARRAY_DEPTH) -> list[tuple[tuple[str, ...], list[Any]]]:
    """The arrays in a JSON document, shallowest first: the body itself, or under object keys."""
    found: list[tuple[tuple[str, ...], list[Any]]] = []
    level: list[tuple[tuple[str, ...], Any]] = [((), value)]
    for _ in range(depth + 1):
        following: list[tuple[tuple[str, ...], Any]] = []
        for path, node in level:
            if isinstance(node, list):
                found.append((path, node))
            elif isinstance(node, dict):
                following += [((*path, key), child) for key, child in node.items() if isinstance(child, (dict, list))]
        level = following
    return found


def item_array(body: Any, id_field: str | None) -> tuple[tuple[str, ...], list[Any]] | None:
    """Where a list body keeps its items: the shallowest array whose items all carry the id
    field, else the shallowest array of objects, else the shallowest empty array."""
    arrays = find_arrays(body)
    if id_field is not None:
        for path, array in arrays:
            if array and all(isinstance(i, dict) and id_field in i for i in array):
                return path, array
    for path, array in arrays:
        if array and all(isinstance(i, dict) for i in array):
            return path, array
    return next(((p, a) for p, a in arrays if not a), None)


def find_item(body: Any, id_field: str) -> tuple[str, ...] | None:
    """Where an item answer keeps the item: the body itself, or an object one level inside."""
    if not isinstance(body, dict):
        return None
    if id_field in body:
        return ()
    return next(((k,) for k, v in body.items() if isinstance(v, dict) and id_field in v), None)


def get_at(body: Any, path: Sequence[str]) -> Any:
    for key in path:
        body = body[key]
    return body


def put_at(body: Any, path: Sequence[str], value: Any) -> Any:
    """A copy of `body` with `value` at `path` (the rest shared, not copied)."""
    if not path:
        return value
    return {**body, path[0]: put_at(body[path[0]], path[1:], value)}


def id_key(value: Any) -> str | None:
    """An id as the path carries it; None for what cannot be an id (booleans, objects, null)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value)


def id_fields(item: Any, path_value: str) -> list[str]:
    """The keys of `item` whose value is the path's value."""
    if not isinstance(item, dict):
        return []
    return [k for k, v in item.items() if id_key(v) == path_value]


def count_fields(body: Any, array_path: tuple[str, ...], length: int) -> list[tuple[str, ...]]:
    """Integer fields named *total*/*count* equal to the recorded array's length (outside it)."""
    found: list[tuple[str, ...]] = []

    def walk(node: Any, path: tuple[str, ...], depth: int) -> None:
        if not isinstance(node, dict) or depth > ARRAY_DEPTH or path == array_path:
            return
        for key, value in node.items():
            here = (*path, key)
            if here == array_path:
                continue
            if isinstance(value, int) and not isinstance(value, bool) and value == length and COUNT_NAME.search(key):
                found.append(here)
            else:
                walk(value, here, depth + 1)

    walk(body, (), 0)
    return found


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge recursively, null removes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy_json(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class IdMaker:
    """New ids shaped like the recorded ones: the next integer (an int or a digit string, after
    the largest id ever known), `prefix` + the next number, or a UUID."""

    def __init__(self, known: Iterable[Any], uuid_factory: Callable[[], uuid.UUID] = uuid.uuid4) -> None:
        known = [k for k in known if id_key(k) is not None]
        self.uuid_factory = uuid_factory
        self.kind: str = "int"
        self.prefix = ""
        strings = [k for k in known if isinstance(k, str)]
        if strings and len(strings) == len(known):
            if all(s.isdigit() for s in strings):
                self.kind = "digits"
            elif all(_UUID.fullmatch(s) for s in strings):
                self.kind = "uuid"
            elif all(_HEX32.fullmatch(s) for s in strings):
                self.kind = "hex"
            else:
                prefixes = {m.group(1) for s in strings if (m := _PREFIXED.fullmatch(s))}
                if len(prefixes) == 1 and all(_PREFIXED.fullmatch(s) for s in strings):
                    self.kind, self.prefix = "prefixed", prefixes.pop()
                else:
                    self.kind = "uuid"
        self.last = 0
        for k in known:
            self.seen(k)

    def seen(self, value: Any) -> None:
        """Keep generated numbers above every id known (a POST may give its own)."""
        text = id_key(value)
        if text is None:
            return
        if self.prefix and text.startswith(self.prefix):
            text = text[len(self.prefix) :]
        if text.isdigit() and len(text) < 19:
            self.last = max(self.last, int(text))

    def new(self) -> Any:
        if self.kind == "uuid":
            return str(self.uuid_factory())
        if self.kind == "hex":
            return self.uuid_factory().hex
        self.last += 1
        if self.kind == "int":
            return self.last
        return f"{self.prefix}{self.last}"

