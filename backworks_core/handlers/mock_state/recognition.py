"""Which mock endpoints form a collection (a list template and its item template on one host),
and the wiring: `link_collections` gives each its `Role` once the blueprint's endpoints are built."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mitmproxy import http

from backworks_core.handlers.mock_defaults import MockStateConfig
from backworks_core.handlers.mock_state.recording import ITEM_VERBS, LIST_VERBS, parse_shape, served_verbs
from backworks_core.handlers.mock_state.store import Collection
from backworks_core.router import template_shape

if TYPE_CHECKING:
    from backworks_core.context import RequestContext

logger = logging.getLogger(__name__)


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
        """The state's answer (an Answer or an error response), or None: the recording answers."""
        method = ctx.request.method.upper()
        verb = "GET" if method == "HEAD" else method
        if verb not in self.verbs:
            return None
        return self.collection.answer(self, verb, ctx)


def recognise(members: Sequence[Member]) -> list[tuple[list[Member], list[Member]]]:
    """The collections among `members`: (list endpoints, item endpoints) of each pair of
    templates `/x` + `/x/{id}` on one host (package doc)."""
    lists: dict[tuple[str | None, str], list[Member]] = {}
    items: dict[tuple[str | None, str], list[Member]] = {}
    for member in members:
        segments = parse_shape(member.template)
        if not segments:
            continue
        last = segments[-1]
        if last.kind == "literal" and served_verbs(member.methods, LIST_VERBS):
            lists.setdefault((member.host, template_shape(segments)), []).append(member)
        elif last.kind in ("param", "int", "uuid") and served_verbs(member.methods, ITEM_VERBS):
            items.setdefault((member.host, template_shape(segments[:-1])), []).append(member)
    return [(listed, items[key]) for key, listed in lists.items() if key in items]


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
        collection = Collection(lists, items)
        if collection.base is None and not collection.list_get and not collection.item_get:
            logger.info("mock state: %s: no recorded JSON answer to build on; answers are bare JSON", collection.name)
        if collection.count > collection.max_items:
            warnings.append(
                (("endpoints", lists[0].index, "config", "mock"), f"state: {collection.name} is seeded with {collection.count} recorded items, more than max_items ({collection.max_items}): POSTs are refused (507) until some are deleted; raise max_items")
            )
        logger.info("mock state: %s", collection.describe())
        for kind, group, allowed in (("list", lists, LIST_VERBS), ("item", items, ITEM_VERBS)):
            for member in group:
                names = tuple(s.value for s in (parse_shape(member.template) or ()) if s.kind != "literal")
                member.handler.state = Role(collection, kind, names, served_verbs(member.methods, allowed))  # type: ignore[arg-type]
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
