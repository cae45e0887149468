"""The state of one recorded collection (`Collection`): its items by scope, seeded from the
recording, the ids deleted, and the per-method operations that read and change them (list,
create, read, replace, merge (RFC 7396), delete), each whole under the lock."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from mitmproxy import http

from backworks_core.handlers.mock.matching import NO_JSON, parse_request_json
from backworks_core.handlers.mock_state.documents import NOT_JSON, IdMaker, get_at, id_key, merge_patch, put_at
from backworks_core.handlers.mock_state.recording import (
    Template,
    guess_id_field,
    is_success,
    locate_array,
    locate_item,
    parse_shape,
    recorded_templates,
)
from backworks_core.handlers.mock_state.render import build_answer, marked, substituted, swaps_for, with_locations

if TYPE_CHECKING:
    from backworks_core.context import RequestContext
    from backworks_core.handlers.mock_state.recognition import Member, Role

_DEFAULT_STATUS = {"GET": 200, "POST": 201, "PUT": 200, "PATCH": 200, "DELETE": 204}


@dataclass
class _Item:
    """One item of a scope, with what tells a recorded answer from a state answer for it."""

    value: Any  # the current representation (an object)
    listed: Any = None  # the recorded list representation, shown until the item is written
    own: Template | None = None  # its recorded item GET: answers it until the item is written
    written: bool = False


@dataclass
class _Scope:
    """The items under one scope (the path values before the item's), by id as the path carries it."""

    items: dict[str, _Item] = field(default_factory=dict)
    written: bool = False


class Collection:
    """One recorded collection's state and the answers built from it."""

    def __init__(self, lists: Sequence[Member], items: Sequence[Member]) -> None:
        self.name = f"{lists[0].template} + {items[0].template}"
        self.max_items = min(m.settings.max_items for m in (*lists, *items))
        self.lock = threading.Lock()
        item_segments = parse_shape(items[0].template) or ()
        self.depth = sum(s.kind != "literal" for s in item_segments) - 1
        self.id_param = item_segments[-1].value
        # Recorded answers by role and verb.
        self.list_get = recorded_templates(lists, "GET", is_success)
        self.create = recorded_templates(lists, "POST", is_success)
        self.item_get = recorded_templates(items, "GET", is_success)
        self.writes = {verb: recorded_templates(items, verb, is_success) for verb in ("PUT", "PATCH", "DELETE")}
        self.missing = recorded_templates(items, "GET", lambda s: s == 404) or recorded_templates(items, "DELETE", lambda s: s == 404)
        self.id_field = guess_id_field(self.item_get, self.list_get, self.depth, self.id_param)
        self.list_get = [locate_array(t, self.id_field) for t in self.list_get]
        self.item_get = [locate_item(t, self.id_field) for t in self.item_get]
        self.create = [locate_item(t, self.id_field) for t in self.create]
        self.writes = {verb: [locate_item(t, self.id_field) for t in ts] for verb, ts in self.writes.items()}
        self.scopes: dict[tuple[str, ...], _Scope] = {}
        self.gone: OrderedDict[tuple[tuple[str, ...], str], None] = OrderedDict()
        self.count = 0
        self._seed()
        self.ids = IdMaker([item.value.get(self.id_field) for scope in self.scopes.values() for item in scope.items.values()])
        base = next((t for t in (*self.item_get, *self.list_get, *self.create) if t.body is not NOT_JSON), None)
        self.base = base.answer if base is not None else None

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
                self._remember_deleted(scope, key)
                ctx.notes["mock"] = "state-delete"
                return self._render(self.writes["DELETE"], "DELETE", item.value, scope, ctx)
            body = self._request_object(ctx, "PATCH" if verb == "PATCH" else verb)
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
        swaps = swaps_for(template, ctx.params)
        body = put_at(substituted(template.body, swaps), template.at or (), shown)
        for path in template.counts:
            body = put_at(body, path, len(shown))
        ctx.notes["mock"] = "state-list"
        fields = [(n, str(len(shown)).encode() if n.lower() in template.count_headers else v) for n, v in template.answer.fields]
        return build_answer(replace(template.answer, fields=tuple(fields)), template.answer.status, body, template.layout, swaps)

    def _create(self, scope: tuple[str, ...], ctx: RequestContext) -> Any | http.Response:
        body = self._request_object(ctx, "POST")
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

    def _request_object(self, ctx: RequestContext, verb: str) -> dict[str, Any] | http.Response:
        body = parse_request_json(ctx)
        if isinstance(body, dict):
            return body
        ctx.notes["mock"] = "state-refused"
        what = "no body" if body is NO_JSON and not ctx.request.raw_content else "not a JSON object" if body is not NO_JSON else "not JSON"
        kind = "a JSON merge patch (an object, RFC 7396)" if verb == "PATCH" else "a JSON object"
        return ctx.error(400, f"{verb} on {self.name} takes {kind} as its body; got {what}")

    def _remember_deleted(self, scope: tuple[str, ...], key: str) -> None:
        self.gone[(scope, key)] = None
        while len(self.gone) > self.max_items:
            self.gone.popitem(last=False)

    def _gone(self, ctx: RequestContext) -> Any | http.Response:
        ctx.notes["mock"] = "state-gone"
        if self.missing:
            template = self.missing[0]
            swaps = swaps_for(template, ctx.params)
            if template.body is NOT_JSON:
                return marked(with_locations(template.answer, swaps))
            return build_answer(template.answer, template.answer.status, substituted(template.body, swaps), template.layout, swaps)
        path = ctx.request.path.split("?", 1)[0]
        return ctx.error(404, f"{path} was deleted from {self.name} (mock state)")

    def _render(self, templates: Sequence[Template], verb: str, item: Any, scope: tuple[str, ...], ctx: RequestContext) -> Any:
        """`item` in the first recorded answer (the one of the request's scope first)."""
        template = next((t for t in templates if t.scope(self.depth) == scope), templates[0] if templates else None)
        if template is None:
            status = _DEFAULT_STATUS[verb]
            return build_answer(self.base, status, None if status == 204 else item, None, ())
        swaps = list(swaps_for(template, ctx.params))
        if template.at is not None:
            recorded = id_key(get_at(template.body, template.at).get(self.id_field))
            new = id_key(item.get(self.id_field))
            if recorded is not None and new is not None and recorded != new:
                swaps.append((recorded, new))
            body = put_at(substituted(template.body, swaps), template.at, item)
        elif template.body is not NOT_JSON:
            body = substituted(template.body, swaps)
        elif template.answer.content:  # recorded bytes that are not JSON: as recorded
            return marked(with_locations(template.answer, swaps))
        else:
            body = None
        return build_answer(template.answer, template.answer.status, body, template.layout, swaps)

