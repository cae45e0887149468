"""What the recording gives a collection: its recorded answers by role and method (`Template`),
the id field they agree on, and where each keeps its item or its array of items."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from backworks_core.handlers.mock.answers import Answer
from backworks_core.handlers.mock_state.documents import (
    COUNT_NAME,
    NOT_JSON,
    count_fields,
    example_json,
    find_item,
    id_fields,
    item_array,
)
from backworks_core.router import parse_template

if TYPE_CHECKING:
    from backworks_core.handlers.mock_state.recognition import Member

_ID_GUESSES = ("id", "_id", "uuid")
LIST_VERBS = frozenset({"GET", "POST"})
ITEM_VERBS = frozenset({"GET", "PUT", "PATCH", "DELETE"})


def served_verbs(methods: frozenset[str], allowed: frozenset[str]) -> frozenset[str]:
    """Which of `allowed` an endpoint serving `methods` answers (`ANY`: all of them)."""
    return allowed if "ANY" in methods else allowed & methods


def parse_shape(template: str) -> tuple[Any, ...] | None:
    """The template's segments; None for a template the loader reports itself."""
    try:
        return parse_template(template)
    except ValueError:
        return None


@dataclass(frozen=True)
class Template:
    """A recorded answer a state answer is built on."""

    answer: Answer
    body: Any  # JSON, or NOT_JSON
    layout: Any  # the example's json_layout
    path: dict[str, str]  # the example's when.path
    names: tuple[str, ...]  # its endpoint's parameter names
    at: tuple[str, ...] | None = None  # where the item (or the list's array) sits
    counts: tuple[tuple[str, ...], ...] = ()
    count_headers: frozenset[bytes] = frozenset()

    def scope(self, depth: int) -> tuple[str, ...] | None:
        values = [self.path.get(name) for name in self.names[:depth]]
        return None if any(v is None for v in values) else tuple(str(v) for v in values)


def recorded_templates(members: Sequence[Member], verb: str, wanted: Callable[[int], bool]) -> list[Template]:
    """The recorded answers of `verb` on these endpoints, fewest conditions besides the path first."""
    found: list[tuple[int, int, Template]] = []
    for member in members:
        if verb not in served_verbs(member.methods, LIST_VERBS | ITEM_VERBS):
            continue
        segments = parse_shape(member.template) or ()
        names = tuple(s.value for s in segments if s.kind != "literal")
        handler = member.handler
        for index, (example, answer) in enumerate(zip(handler.examples, handler.answers)):
            if not wanted(example.status):
                continue
            when = example.when
            extra = 0 if when is None else len(when.query) + len(when.headers) + int(when.has_body)
            path = {} if when is None else dict(when.path)
            found.append((extra, len(found), Template(answer, example_json(example), example.json_layout, path, names)))
    return [t for _, _, t in sorted(found, key=lambda f: (f[0], f[1]))]


def is_success(status: int) -> bool:
    return 200 <= status < 300


def guess_id_field(item_get: Sequence[Template], list_get: Sequence[Template], depth: int, id_param: str) -> str:
    """The key the recorded items keep their id in (Seeds, in backworks_core.handlers.mock_state)."""
    votes: dict[str, int] = {}
    for template in item_get:
        value = template.path.get(template.names[depth]) if len(template.names) > depth else None
        if value is None or template.body is NOT_JSON:
            continue
        keys = id_fields(template.body, str(value))
        if not keys and isinstance(template.body, dict):  # {"data": {...}}
            keys = next((id_fields(v, str(value)) for v in template.body.values() if id_fields(v, str(value))), [])
        for preferred in ("id", id_param):
            if preferred in keys:
                keys = [preferred]
                break
        if keys:
            votes[keys[0]] = votes.get(keys[0], 0) + 1
    if votes:
        return max(votes, key=lambda k: votes[k])  # ties: the first seen
    for template in list_get:
        found = item_array(template.body, None) if template.body is not NOT_JSON else None
        if found and found[1]:
            for guess in ("id", id_param, *_ID_GUESSES):
                if all(guess in i for i in found[1]):
                    return guess
    return "id"


def locate_array(template: Template, id_field: str) -> Template:
    """A list answer with where its items sit, and the counts (body fields, headers) that equal their number."""
    found = item_array(template.body, id_field) if template.body is not NOT_JSON else None
    if found is None:
        return template
    path, array = found
    counts = tuple(count_fields(template.body, path, len(array)))
    headers = frozenset(n.lower() for n, v in template.answer.fields if COUNT_NAME.search(n.decode("latin-1")) and v.strip() == str(len(array)).encode())
    return replace(template, at=path, counts=counts, count_headers=headers)


def locate_item(template: Template, id_field: str) -> Template:
    """An item answer with where it keeps the item (the body, or an object one level inside)."""
    return replace(template, at=find_item(template.body, id_field)) if template.body is not NOT_JSON else template
