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

Modules
  `recognition` (which endpoints form a collection; `link_collections` gives each its `Role`),
  `recording` (the recorded answers a collection builds on: `Template`, the id field),
  `store` (`Collection`: the items by scope and the per-method operations), `render` (a state
  answer built on a recorded one), `documents` (pure JSON: where items sit, ids, merge patch).
  The `state` key itself is in backworks_core.handlers.mock_defaults (`server.mock` offers it).
"""

from __future__ import annotations

from backworks_core.handlers.mock_state.recognition import Member, link_collections

__all__ = ["Member", "link_collections"]
