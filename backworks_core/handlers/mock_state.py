"""Opt-in CRUD state for recorded collections (`state: collections`): a POST is seen by a later GET.

```yaml
server:
  mock:
    state: collections            # or {mode: collections, max_items: 500}; default: none
```

What Mockoon's CRUD routes and json-server do, on top of a recording; off by default, and when
off every answer is the recorded one, byte for byte.

Collections
  A collection is a pair of path templates among the mock endpoints that have the state on
  (their own `config.mock.state` or `server.mock.state`), on the same host: a list template
  whose last segment is a literal (`/users`, `/users/{uid}/posts`) and an item template that is
  the list template plus one parameter (`/users/{id}`, `/users/{id:int}`). The list answers
  GET (the list) and POST (create); the item GET, PUT (replace), PATCH (JSON merge patch,
  RFC 7396) and DELETE, whichever of those methods the endpoints serve (HEAD is GET). The
  parameters before the item's are the collection's scope: `/users/1/posts` and
  `/users/2/posts` hold items of their own. Parameter names may differ between the templates;
  positions count.

Seeds
  From the recorded 2xx answers with a JSON body: every array item of the list GETs (all their
  examples, the ones with a query too: pages and filters add items) and each item GET's body,
  in that order, under the scope their `when.path` names. The id field is the key of an item GET
  body (or of the object one level inside it: `{"data": {...}}`) whose value is the request's
  path value (`id` first, then the parameter's name, then the first such key); without item
  GETs, `id`, the parameter's name, `_id` or `uuid` when every list item has it; else `id`.

Answers
  The recording answers whatever the state has not changed: a list GET of a scope nothing was
  written to, an item GET of a recorded item not written since, and every request for an id
  the state does not know (an example for that id, else the fallback, else the `unrecorded`
  policy: 404 or a synthesised answer). Everything else is built on a recorded answer of the
  same endpoint kind and method (its status, headers and JSON layout):
  - list GET: the recorded list body with its array (found as in Seeds: the array whose items
    carry the id field, up to three levels deep, e.g. `{"items": [...], "total": 3}`) holding
    the scope's items; an integer field named `*total*`/`*count*` (any case) that equalled the
    recorded array's length becomes the new length, as does a header so named (`X-Total-Count`);
  - POST: the item is the request's JSON object; its id the one it gives (taken already: 409),
    else the next integer after the largest id known (as a digit string if the recorded ids are
    strings; `prefix` + number for `u7`-like ids), or a new UUID when the recorded ids are
    UUIDs; answered with the recorded POST's status (201 without one) and the item where the
    recorded body had its item (or the item as the body), `Location` pointing at the new id;
  - PUT replaces, PATCH merges (JSON merge patch); the path's id is kept in the id field; a body
    that is not a JSON object is 400;
  - DELETE removes, with the recorded status (204 without one) and body;
  - an id deleted: 404 (the item endpoint's recorded 404 answer, else Backworks' own), for
    every method, until it is created again.
  ETag, Last-Modified, Content-Encoding, Digest and Content-MD5 of the recorded answer are
  dropped (they describe other bytes); answers carry `X-Backworks-Mock: state` and the flow
  comment `mock=state-<list|create|read|replace|merge|delete|gone|refused>`. Validation and
  `Prefer` come first, as for every mock answer.

Bounds
  At most `max_items` items per collection (all scopes, seeds included): a POST beyond is `507
  Insufficient Storage` naming the limit (nothing is evicted: a mock that forgets on its own is
  worse than one that says it is full). Deleted ids are remembered (for their 404) up to the
  same count, the oldest forgotten first.

Lifetime
  In memory, per process (each worker of `backworks run --workers N` has its own), built with the
  blueprint: a reload starts from the seeds again. Every change happens without an await in
  between, under a lock, so concurrent requests never see half a change.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any, Literal

from mitmproxy import http
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from backworks_core.context import reason_phrase
from backworks_core.jsonpath import copy_json
from backworks_core.router import parse_template, template_shape

if TYPE_CHECKING:
    from backworks_core.context import RequestContext

logger = logging.getLogger(__name__)

STATE_HEADER = "X-Backworks-Mock"
MAX_ITEMS = 1000
MAX_ITEMS_CEILING = 1_000_000
_ARRAY_DEPTH = 3
_ID_GUESSES = ("id", "_id", "uuid")
_DEFAULT_STATUS = {"GET": 200, "POST": 201, "PUT": 200, "PATCH": 200, "DELETE": 204}
_LIST_VERBS = frozenset({"GET", "POST"})
_ITEM_VERBS = frozenset({"GET", "PUT", "PATCH", "DELETE"})
# Validators and codings of the recorded bytes: a state answer is other bytes.
_STALE_HEADERS = frozenset({b"content-length", b"content-encoding", b"etag", b"last-modified", b"digest", b"content-md5", b"content-range"})
_LOCATION_HEADERS = frozenset({b"location", b"content-location"})
_COUNT_NAME = re.compile(r"total|count", re.IGNORECASE)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_HEX32 = re.compile(r"[0-9a-f]{32}", re.IGNORECASE)
_PREFIXED = re.compile(r"(.*?)(\d+)")
_NONE = object()


# --------------------------------------------------------------------------- config


def _shorthand(value: Any) -> Any:
    """`state: collections` / `state: none` (YAML's `off` and `false` are false: none)."""
    if value is False:
        return {"mode": "none"}
    if isinstance(value, str):
        return {"mode": value}
    return value


class MockStateConfig(BaseModel):
    """`state`: CRUD state for recorded collections (backworks_core.handlers.mock_state)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)  # as model.StrictModel

    mode: Literal["none", "collections"] = Field(
        "none",
        description="collections: a recorded `/users` + `/users/{id}` pair keeps state (POST adds, PUT/PATCH change, DELETE removes, GET sees it); none: every answer is the recorded one",
        examples=["collections"],
    )
    max_items: int = Field(
        MAX_ITEMS,
        ge=1,
        le=MAX_ITEMS_CEILING,
        description="the most items a collection holds (seeds included); a POST beyond is answered 507",
        examples=[500],
    )


MockState = Annotated[MockStateConfig, BeforeValidator(_shorthand)]


# --------------------------------------------------------------------------- pure parts


def example_json(example: Any) -> Any:
    """The recorded body as JSON data, or _NONE (no body, or not JSON)."""
    body = example.body
    if isinstance(body, (dict, list)):
        return body
    if isinstance(body, str):
        try:
            return json.loads(body)
        except ValueError:
            return _NONE
    return _NONE  # none, a scalar, or body_base64 (bytes the capture could not decode)


def find_arrays(value: Any, depth: int = _ARRAY_DEPTH) -> list[tuple[tuple[str, ...], list[Any]]]:
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
        if not isinstance(node, dict) or depth > _ARRAY_DEPTH or path == array_path:
            return
        for key, value in node.items():
            here = (*path, key)
            if here == array_path:
                continue
            if isinstance(value, int) and not isinstance(value, bool) and value == length and _COUNT_NAME.search(key):
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


@dataclass(frozen=True)
class StateTools:
    """What the state builds answers with, from backworks_core.handlers.mock and mock_features
    (handed over by the handler: this module cannot import them, mock_defaults imports it)."""

    encode: Callable[[Any, Any], bytes]  # json_body_bytes(value, json_layout)
    parse_json: Callable[[Any], Any]  # the request body as JSON, or no_json (bounded)
    no_json: Any
    answer: Callable[..., Any]  # mock._Answer(index, status, reason, fields, content, latency)
    substitute: Callable[[Any, Sequence[tuple[str, str]]], Any]
    substitute_text: Callable[[str, Sequence[tuple[str, str]]], str]


# --------------------------------------------------------------------------- recognition


@dataclass(frozen=True)
class Member:
    """A mock endpoint as recognition sees it."""

    index: int  # endpoints[index]
    template: str
    methods: frozenset[str]
    host: str | None
    handler: Any  # backworks_core.handlers.mock.MockHandler (examples, answers, features, state)

    @property
    def settings(self) -> MockStateConfig:
        return self.handler.features.settings.state


@dataclass(frozen=True)
class Role:
    """What one endpoint is in its collection: the list or the item, and its parameter names."""

    collection: Collection
    kind: Literal["list", "item"]
    names: tuple[str, ...]  # the template's parameter names, in order
    verbs: frozenset[str]

    def scope(self, params: dict[str, Any]) -> tuple[str, ...]:
        return tuple(str(params.get(name, "")) for name in self.names[: self.collection.depth])

    def answer(self, ctx: RequestContext) -> Any | http.Response | None:
        """The state's answer (an _Answer or an error response), or None: the recording answers."""
        method = ctx.request.method.upper()
        verb = "GET" if method == "HEAD" else method
        if verb not in self.verbs:
            return None
        return self.collection.answer(self, verb, ctx)


def _verbs(methods: frozenset[str], allowed: frozenset[str]) -> frozenset[str]:
    return allowed if "ANY" in methods else allowed & methods


def _shape(template: str) -> tuple[Any, ...] | None:
    try:
        return parse_template(template)
    except ValueError:
        return None


def recognise(members: Sequence[Member]) -> list[tuple[list[Member], list[Member]]]:
    """The collections among `members`: (list endpoints, item endpoints) of each pair of
    templates `/x` + `/x/{id}` on one host (module doc)."""
    lists: dict[tuple[str | None, str], list[Member]] = {}
    items: dict[tuple[str | None, str], list[Member]] = {}
    for member in members:
        segments = _shape(member.template)
        if not segments:
            continue
        last = segments[-1]
        if last.kind == "literal" and _verbs(member.methods, _LIST_VERBS):
            lists.setdefault((member.host, template_shape(segments)), []).append(member)
        elif last.kind in ("param", "int", "uuid") and _verbs(member.methods, _ITEM_VERBS):
            items.setdefault((member.host, template_shape(segments[:-1])), []).append(member)
    return [(listed, items[key]) for key, listed in lists.items() if key in items]


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    """A recorded answer a state answer is built on."""

    answer: Any  # backworks_core.handlers.mock._Answer
    body: Any  # JSON, or _NONE
    layout: Any  # the example's json_layout
    path: dict[str, str]  # the example's when.path
    names: tuple[str, ...]  # its endpoint's parameter names
    at: tuple[str, ...] | None = None  # where the item (or the list's array) sits
    counts: tuple[tuple[str, ...], ...] = ()
    count_headers: frozenset[bytes] = frozenset()

    def scope(self, depth: int) -> tuple[str, ...] | None:
        values = [self.path.get(name) for name in self.names[:depth]]
        return None if any(v is None for v in values) else tuple(str(v) for v in values)


def _templates(members: Sequence[Member], verb: str, wanted: Callable[[int], bool]) -> list[Template]:
    """The recorded answers of `verb` on these endpoints, fewest conditions besides the path first."""
    found: list[tuple[int, int, Template]] = []
    for member in members:
        if verb not in _verbs(member.methods, _LIST_VERBS | _ITEM_VERBS):
            continue
        segments = _shape(member.template) or ()
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


def _ok(status: int) -> bool:
    return 200 <= status < 300


# --------------------------------------------------------------------------- the store


@dataclass
class _Item:
    value: Any  # the current representation (an object)
    listed: Any = None  # the recorded list representation, shown until the item is written
    own: Template | None = None  # its recorded item GET: answers it until the item is written
    written: bool = False


@dataclass
class _Scope:
    items: dict[str, _Item] = field(default_factory=dict)
    written: bool = False


class Collection:
    """One recorded collection's state and the answers built from it."""

    def __init__(self, lists: Sequence[Member], items: Sequence[Member], tools: StateTools) -> None:
        self.tools = tools
        self.name = f"{lists[0].template} + {items[0].template}"
        self.max_items = min(m.settings.max_items for m in (*lists, *items))
        self.lock = threading.Lock()
        item_segments = _shape(items[0].template) or ()
        self.depth = sum(s.kind != "literal" for s in item_segments) - 1
        self.id_param = item_segments[-1].value
        # Recorded answers by role and verb.
        self.list_get = _templates(lists, "GET", _ok)
        self.create = _templates(lists, "POST", _ok)
        self.item_get = _templates(items, "GET", _ok)
        self.writes = {verb: _templates(items, verb, _ok) for verb in ("PUT", "PATCH", "DELETE")}
        self.missing = _templates(items, "GET", lambda s: s == 404) or _templates(items, "DELETE", lambda s: s == 404)
        self.id_field = self._id_field()
        self.list_get = [self._locate_array(t) for t in self.list_get]
        self.item_get = [self._locate_item(t) for t in self.item_get]
        self.create = [self._locate_item(t) for t in self.create]
        self.writes = {verb: [self._locate_item(t) for t in ts] for verb, ts in self.writes.items()}
        self.scopes: dict[tuple[str, ...], _Scope] = {}
        self.gone: OrderedDict[tuple[tuple[str, ...], str], None] = OrderedDict()
        self.count = 0
        self._seed()
        self.ids = IdMaker([item.value.get(self.id_field) for scope in self.scopes.values() for item in scope.items.values()])
        base = next((t for t in (*self.item_get, *self.list_get, *self.create) if t.body is not _NONE), None)
        self.base = base.answer if base is not None else None

    # -- building ------------------------------------------------------------------------

    def _id_field(self) -> str:
        votes: dict[str, int] = {}
        for template in self.item_get:
            value = template.path.get(template.names[self.depth]) if len(template.names) > self.depth else None
            if value is None or template.body is _NONE:
                continue
            keys = id_fields(template.body, str(value))
            if not keys and isinstance(template.body, dict):  # {"data": {...}}
                keys = next((id_fields(v, str(value)) for v in template.body.values() if id_fields(v, str(value))), [])
            for preferred in ("id", self.id_param):
                if preferred in keys:
                    keys = [preferred]
                    break
            if keys:
                votes[keys[0]] = votes.get(keys[0], 0) + 1
        if votes:
            return max(votes, key=lambda k: votes[k])  # ties: the first seen
        for template in self.list_get:
            found = item_array(template.body, None) if template.body is not _NONE else None
            if found and found[1]:
                for guess in ("id", self.id_param, *_ID_GUESSES):
                    if all(guess in i for i in found[1]):
                        return guess
        return "id"

    def _locate_array(self, template: Template) -> Template:
        found = item_array(template.body, self.id_field) if template.body is not _NONE else None
        if found is None:
            return template
        path, array = found
        counts = tuple(count_fields(template.body, path, len(array)))
        headers = frozenset(n.lower() for n, v in template.answer.fields if _COUNT_NAME.search(n.decode("latin-1")) and v.strip() == str(len(array)).encode())
        return replace(template, at=path, counts=counts, count_headers=headers)

    def _locate_item(self, template: Template) -> Template:
        return replace(template, at=find_item(template.body, self.id_field)) if template.body is not _NONE else template

    def _seed(self) -> None:
        for template in self.list_get:
            scope = template.scope(self.depth)
            if scope is None or template.at is None:
                continue
            for entry in get_at(template.body, template.at):
                key = id_key(entry.get(self.id_field)) if isinstance(entry, dict) else None
                if key is not None and key not in self.scopes.get(scope, _Scope()).items:
                    self.scopes.setdefault(scope, _Scope()).items[key] = _Item(entry, listed=entry)
        for template in self.item_get:
            scope = template.scope(self.depth)
            key = template.path.get(template.names[self.depth]) if len(template.names) > self.depth else None
            if scope is None or key is None or template.at is None:
                continue
            value = get_at(template.body, template.at)
            if id_key(value.get(self.id_field)) != str(key):
                continue
            items = self.scopes.setdefault(scope, _Scope()).items
            if str(key) in items:
                items[str(key)].value, items[str(key)].own = value, template
            else:
                items[str(key)] = _Item(value, own=template)
        self.count = sum(len(s.items) for s in self.scopes.values())

    def describe(self) -> str:
        return f"{self.name}: {self.count} item(s) in {len(self.scopes)} scope(s), id field {self.id_field!r}"

    # -- answering -----------------------------------------------------------------------

    def answer(self, role: Role, verb: str, ctx: RequestContext) -> Any | http.Response | None:
        scope = role.scope(ctx.params)
        with self.lock:  # no await below: one request's change is whole before the next looks
            if role.kind == "list":
                return self._list(scope, ctx) if verb == "GET" else self._create(scope, ctx)
            key = str(ctx.params.get(role.names[self.depth], "")) if len(role.names) > self.depth else ""
            if (scope, key) in self.gone:
                return self._gone(ctx)
            item = self.scopes.get(scope, _Scope()).items.get(key)
            if item is None:
                return None  # not an id the state knows: the recording answers
            if verb == "GET":
                if item.own is not None and not item.written:
                    return None  # as recorded
                ctx.notes["mock"] = "state-read"
                own = [item.own] if item.own is not None else []
                return self._render([*own, *self.item_get], "GET", item.value, scope, ctx)
            if verb == "DELETE":
                del self.scopes[scope].items[key]
                self.count -= 1
                self.scopes[scope].written = True
                self._bury(scope, key)
                ctx.notes["mock"] = "state-delete"
                return self._render(self.writes["DELETE"], "DELETE", item.value, scope, ctx)
            body = self._object(ctx, "PATCH" if verb == "PATCH" else verb)
            if isinstance(body, http.Response):
                return body
            value = merge_patch(item.value, body) if verb == "PATCH" else dict(body)
            value[self.id_field] = item.value.get(self.id_field, key)
            item.value, item.written, item.listed = value, True, None
            self.scopes[scope].written = True
            ctx.notes["mock"] = "state-merge" if verb == "PATCH" else "state-replace"
            return self._render(self.writes[verb], verb, value, scope, ctx)

    def _list(self, scope: tuple[str, ...], ctx: RequestContext) -> Any | None:
        state = self.scopes.get(scope)
        if state is None or not state.written:
            return None  # nothing written here: as recorded
        templates = [t for t in self.list_get if t.at is not None]
        template = next((t for t in templates if t.scope(self.depth) == scope), templates[0] if templates else None)
        if template is None:
            return None
        shown = [i.listed if i.listed is not None and not i.written else i.value for i in state.items.values()]
        swaps = _swaps(template, ctx.params)
        body = put_at(self._substitute(template.body, swaps), template.at or (), shown)
        for path in template.counts:
            body = put_at(body, path, len(shown))
        ctx.notes["mock"] = "state-list"
        fields = [(n, str(len(shown)).encode() if n.lower() in template.count_headers else v) for n, v in template.answer.fields]
        return self._build(replace(template.answer, fields=tuple(fields)), template.answer.status, body, template.layout, swaps)

    def _create(self, scope: tuple[str, ...], ctx: RequestContext) -> Any | http.Response:
        body = self._object(ctx, "POST")
        if isinstance(body, http.Response):
            return body
        given = body.get(self.id_field)
        if given is not None:
            key = id_key(given)
            if key is None:
                ctx.notes["mock"] = "state-refused"
                return ctx.error(400, f"{self.id_field!r} must be a string or an integer to be an id of {self.name}")
        else:
            given = self.ids.new()
            key = str(given)
            body = {self.id_field: given, **body}
        items = self.scopes.setdefault(scope, _Scope()).items
        if key in items:
            ctx.notes["mock"] = "state-refused"
            return ctx.error(409, f"{self.id_field} {key} already exists in {self.name}; PUT or PATCH it, or leave {self.id_field!r} out for a new one")
        if self.count >= self.max_items:
            ctx.notes["mock"] = "state-refused"
            return ctx.error(
                507,
                f"{self.name} holds its maximum of {self.max_items} item(s) (state.max_items); DELETE some, raise max_items, or reload the blueprint to start from the recording again",
            )
        self.ids.seen(given)
        items[key] = _Item(body, written=True)
        self.count += 1
        self.scopes[scope].written = True
        self.gone.pop((scope, key), None)
        ctx.notes["mock"] = "state-create"
        return self._render(self.create, "POST", body, scope, ctx)

    def _object(self, ctx: RequestContext, verb: str) -> dict[str, Any] | http.Response:
        body = self.tools.parse_json(ctx)
        if isinstance(body, dict):
            return body
        ctx.notes["mock"] = "state-refused"
        no_json = self.tools.no_json
        what = "no body" if body is no_json and not ctx.request.raw_content else "not a JSON object" if body is not no_json else "not JSON"
        kind = "a JSON merge patch (an object, RFC 7396)" if verb == "PATCH" else "a JSON object"
        return ctx.error(400, f"{verb} on {self.name} takes {kind} as its body; got {what}")

    def _bury(self, scope: tuple[str, ...], key: str) -> None:
        self.gone[(scope, key)] = None
        while len(self.gone) > self.max_items:
            self.gone.popitem(last=False)

    def _gone(self, ctx: RequestContext) -> Any | http.Response:
        ctx.notes["mock"] = "state-gone"
        if self.missing:
            template = self.missing[0]
            swaps = _swaps(template, ctx.params)
            if template.body is _NONE:
                return _mark(self._with_locations(template.answer, swaps))
            return self._build(template.answer, template.answer.status, self._substitute(template.body, swaps), template.layout, swaps)
        path = ctx.request.path.split("?", 1)[0]
        return ctx.error(404, f"{path} was deleted from {self.name} (mock state)")

    def _render(self, templates: Sequence[Template], verb: str, item: Any, scope: tuple[str, ...], ctx: RequestContext) -> Any:
        """`item` in the first recorded answer (the one of the request's scope first)."""
        template = next((t for t in templates if t.scope(self.depth) == scope), templates[0] if templates else None)
        if template is None:
            status = _DEFAULT_STATUS[verb]
            return self._build(self.base, status, None if status == 204 else item, None, ())
        swaps = list(_swaps(template, ctx.params))
        if template.at is not None:
            recorded = id_key(get_at(template.body, template.at).get(self.id_field))
            new = id_key(item.get(self.id_field))
            if recorded is not None and new is not None and recorded != new:
                swaps.append((recorded, new))
            body = put_at(self._substitute(template.body, swaps), template.at, item)
        elif template.body is not _NONE:
            body = self._substitute(template.body, swaps)
        elif template.answer.content:  # recorded bytes that are not JSON: as recorded
            return _mark(self._with_locations(template.answer, swaps))
        else:
            body = None
        return self._build(template.answer, template.answer.status, body, template.layout, swaps)

    def _substitute(self, value: Any, swaps: Sequence[tuple[str, str]]) -> Any:
        return self.tools.substitute(value, swaps) if swaps else value

    def _with_locations(self, answer: Any, swaps: Sequence[tuple[str, str]]) -> Any:
        """Location and Content-Location pointing at the request's ids (as synthesis does)."""
        if not swaps:
            return answer
        text = self.tools.substitute_text
        fields = tuple((n, text(v.decode("latin-1"), swaps).encode("latin-1", "replace") if n.lower() in _LOCATION_HEADERS else v) for n, v in answer.fields)
        return replace(answer, fields=fields)

    def _build(self, answer: Any, status: int, body: Any, layout: Any, swaps: Sequence[tuple[str, str]]) -> Any:
        if answer is None:  # nothing recorded answered with a body: a bare JSON answer
            content = b"" if body is None or status in (204, 304) else self.tools.encode(body, None)
            bare = ((b"Content-Type", b"application/json"),) if content else ()
            return _mark(self.tools.answer(-1, status, reason_phrase(status).encode(), bare, content, 0.0))
        content = b"" if body is None or status < 200 or status in (204, 304) else self.tools.encode(body, layout)
        fields: list[tuple[bytes, bytes]] = []
        for name, value in answer.fields:
            lowered = name.lower()
            if lowered in _STALE_HEADERS:
                continue
            if lowered == b"content-type" and content and b"json" not in value.lower():
                value = b"application/json"
            fields.append((name, value))
        if content and not any(n.lower() == b"content-type" for n, _ in fields):
            fields.append((b"Content-Type", b"application/json"))
        answer = replace(answer, status=status, reason=reason_phrase(status).encode(), fields=tuple(fields), content=content, head_length=None)
        return _mark(self._with_locations(answer, swaps))


def _swaps(template: Template, params: dict[str, Any]) -> list[tuple[str, str]]:
    """Recorded path values → the request's, by position (names may differ between endpoints)."""
    sent = list(params.values())
    swaps = []
    for position, name in enumerate(template.names):
        recorded = template.path.get(name)
        if recorded is not None and position < len(sent) and str(sent[position]) != str(recorded):
            swaps.append((str(recorded), str(sent[position])))
    return swaps


def _mark(answer: Any) -> Any:
    return replace(answer, fields=(*answer.fields, (STATE_HEADER.encode(), b"state")))


# --------------------------------------------------------------------------- wiring


def link_collections(members: Sequence[Member]) -> list[tuple[tuple[str | int, ...], str]]:
    """Give each mock endpoint with the state on its role in its collection (`handler.state`).

    Called once per compiled blueprint (a reload builds new handlers, so the state starts from
    the seeds again). Returns warnings, (blueprint location, message), for a state turned on
    that finds nothing to keep.
    """
    stateful = [m for m in members if m.settings.mode == "collections"]
    if not stateful:
        return []
    warnings: list[tuple[tuple[str | int, ...], str]] = []
    found = recognise(stateful)
    for lists, items in found:
        collection = Collection(lists, items, lists[0].handler.state_tools)
        if collection.base is None and not collection.list_get and not collection.item_get:
            logger.info("mock state: %s: no recorded JSON answer to build on; answers are bare JSON", collection.name)
        if collection.count > collection.max_items:
            warnings.append(
                (("endpoints", lists[0].index, "config", "mock"), f"state: {collection.name} is seeded with {collection.count} recorded items, more than max_items ({collection.max_items}): POSTs are refused (507) until some are deleted; raise max_items")
            )
        logger.info("mock state: %s", collection.describe())
        for kind, group, allowed in (("list", lists, _LIST_VERBS), ("item", items, _ITEM_VERBS)):
            for member in group:
                names = tuple(s.value for s in (_shape(member.template) or ()) if s.kind != "literal")
                member.handler.state = Role(collection, kind, names, _verbs(member.methods, allowed))  # type: ignore[arg-type]
    if not found:
        first = stateful[0]
        warnings.append(
            (
                ("endpoints", first.index, "config", "mock"),
                "state: collections is on, but no collection was recognised among the mock endpoints that have it: "
                "a collection needs a list path ending in a literal (/users) and its item path (/users/{id}) on the same host",
            )
        )
    return warnings
