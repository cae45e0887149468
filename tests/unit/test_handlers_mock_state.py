"""CRUD state for recorded collections (backworks_core.handlers.mock_state): recognition of the
collections, the pure parts, and every verb through a compiled gateway."""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest
import yaml

from backworks_core.handlers import mock_defaults
from backworks_core.handlers.mock import MockHandler
from backworks_core.handlers.mock_state import documents
from backworks_core.handlers.mock_state.documents import IdMaker, count_fields, find_item, item_array, merge_patch

from .conftest import body_json

JSON = {"Content-Type": "application/json"}


def endpoint(path: str, method: str, examples: list[dict], **mock: object) -> dict:
    return {"path": path, "method": method, "handler": "mock", "config": {"mock": {"examples": examples, **mock}}}


def users_blueprint(state: object = "collections", *, extra: list[dict] | None = None, list_body: object = None) -> dict:
    """A recorded /users collection as capture writes it: one endpoint per method."""
    ada = {"id": 1, "name": "Ada", "email": "ada@example.com"}
    grace = {"id": 2, "name": "Grace", "email": "grace@example.com"}
    listed = list_body if list_body is not None else {"items": [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Grace"}], "total": 2, "page": 1}
    endpoints = [
        endpoint("/users", "GET", [{"status": 200, "headers": {"Content-Type": "application/json", "X-Total-Count": "2", "ETag": '"abc"'}, "body": listed, "json_layout": {"indent": 2}}]),
        endpoint("/users", "POST", [{"when": {"body": {"name": "Alan"}}, "status": 201, "headers": {"Location": "/users/3"}, "body": {"id": 3, "name": "Alan"}}]),
        endpoint(
            "/users/{id:int}",
            "GET",
            [
                {"when": {"path": {"id": "1"}}, "status": 200, "body": ada},
                {"when": {"path": {"id": "2"}}, "status": 200, "body": grace},
                {"when": {"path": {"id": "42"}}, "status": 404, "body": {"error": "no user 42"}},
            ],
        ),
        endpoint("/users/{id:int}", "PUT", [{"when": {"path": {"id": "1"}, "body": {"name": "Ada L"}}, "status": 200, "body": {"id": 1, "name": "Ada L"}}]),
        endpoint("/users/{id:int}", "PATCH", [{"when": {"path": {"id": "2"}}, "status": 200, "body": {"id": 2, "name": "G"}}]),
        endpoint("/users/{id:int}", "DELETE", [{"when": {"path": {"id": "2"}}, "status": 204}]),
        *(extra or []),
    ]
    document: dict = {"name": "users", "endpoints": endpoints}
    if state is not None:
        document["server"] = {"mock": {"state": state}}
    return document


@pytest.fixture
def build(project, compile_gateway):
    def _build(document: dict):
        return compile_gateway(project.blueprint(yaml.safe_dump(document, sort_keys=False)))

    return _build


async def call(send, gateway, method: str, path: str, body: object = None, **kwargs):
    if body is not None:
        kwargs.setdefault("headers", JSON)
        kwargs["body"] = json.dumps(body) if not isinstance(body, (bytes, str)) else body
    flow = await send(gateway, method, path, **kwargs)
    return flow


# -- pure parts -------------------------------------------------------------------------------


def test_the_item_array_is_found_in_its_envelope():
    assert item_array([{"id": 1}], "id") == ((), [{"id": 1}])
    body = {"meta": {"tags": ["a"]}, "data": {"users": [{"id": 1}, {"id": 2}]}, "total": 2}
    assert item_array(body, "id") == (("data", "users"), [{"id": 1}, {"id": 2}])
    assert item_array({"items": [], "total": 0}, "id") == (("items",), [])
    assert item_array({"name": "x"}, "id") is None
    # the count fields are those named total/count equal to the recorded length, outside the array
    assert count_fields(body, ("data", "users"), 2) == [("total",)]
    assert count_fields({"items": [1, 2], "page": 2, "totalCount": 2, "meta": {"count": 2, "per_page": 2}}, ("items",), 2) == [("totalCount",), ("meta", "count")]


def test_find_item_and_merge_patch():
    assert find_item({"id": 1}, "id") == ()
    assert find_item({"data": {"id": 1}, "ok": True}, "id") == ("data",)
    assert find_item({"ok": True}, "id") is None and find_item([{"id": 1}], "id") is None
    # RFC 7396: objects merge, null removes, arrays and scalars replace
    target = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}
    assert merge_patch(target, {"a": None, "b": {"c": None, "x": 1}, "e": [3]}) == {"b": {"d": 3, "x": 1}, "e": [3]}
    assert target == {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]}  # not changed in place
    assert merge_patch({"a": 1}, {"a": {"b": None}}) == {"a": {}}


def test_new_ids_have_the_recorded_shape():
    ints = IdMaker([1, 7, 3])
    assert [ints.new(), ints.new()] == [8, 9]
    ints.seen(20)  # a POST gave its own id
    assert ints.new() == 21
    assert IdMaker(["4", "10"]).new() == "11"
    assert IdMaker(["u7", "u12"]).new() == "u13"
    assert IdMaker([]).new() == 1
    fixed = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert IdMaker(["0b2f6c2e-5a55-4c1e-9a43-5e0c6bb0d0a1"], uuid_factory=lambda: fixed).new() == str(fixed)
    assert IdMaker(["0b2f6c2e5a554c1e9a435e0c6bb0d0a1"], uuid_factory=lambda: fixed).new() == fixed.hex
    assert IdMaker(["ada", "grace"], uuid_factory=lambda: fixed).new() == str(fixed)


def test_config_shorthand_and_bounds():
    assert mock_defaults.MockStateConfig.model_validate({"mode": "collections"}).max_items == mock_defaults.MAX_ITEMS
    from backworks_core.handlers.mock_defaults import MockDefaults

    assert MockDefaults.model_validate({"state": "collections"}).state.mode == "collections"
    assert MockDefaults.model_validate({"state": False}).state.mode == "none"  # YAML's `off`
    assert MockDefaults().state.mode == "none"
    with pytest.raises(ValueError):
        MockDefaults.model_validate({"state": "crud"})
    with pytest.raises(ValueError):
        MockDefaults.model_validate({"state": {"mode": "collections", "max_items": 0}})


# -- recognition ------------------------------------------------------------------------------


def roles(gateway) -> dict[str, tuple[str, frozenset[str]] | None]:
    found = {}
    for plan in gateway.endpoints:
        if isinstance(plan.handler, MockHandler):
            role = plan.handler.state
            found[f"{plan.spec.label}"] = None if role is None else (role.kind, role.verbs)
    return found


def test_collections_are_recognised_from_templates_and_methods(build):
    document = users_blueprint(
        extra=[
            endpoint("/users/{uid}/posts", "GET", [{"when": {"path": {"uid": "1"}}, "body": [{"id": 10, "title": "x"}]}]),
            endpoint("/users/{user_id}/posts/{post_id}", "GET", [{"when": {"path": {"user_id": "1", "post_id": "10"}}, "body": {"id": 10, "title": "x"}}]),
            endpoint("/health", "GET", [{"body": {"ok": True}}]),
            endpoint("/status/{code}", "GET", [{"when": {"path": {"code": "200"}}, "body": "ok"}]),
        ]
    )
    gateway = build(document)
    found = roles(gateway)
    assert found["GET /users"] == ("list", frozenset({"GET"}))
    assert found["POST /users"] == ("list", frozenset({"POST"}))
    assert found["DELETE /users/{id:int}"] == ("item", frozenset({"DELETE"}))
    assert found["GET /users/{uid}/posts"] == ("list", frozenset({"GET"}))
    assert found["GET /users/{user_id}/posts/{post_id}"] == ("item", frozenset({"GET"}))
    assert found["GET /health"] is None and found["GET /status/{code}"] is None  # no pair
    collection = gateway.endpoints[0].handler.state.collection
    assert collection.id_field == "id" and collection.count == 2


def test_state_is_off_by_default_and_per_endpoint(build):
    assert set(roles(build(users_blueprint(state=None))).values()) == {None}
    document = users_blueprint(state=None)
    for each in document["endpoints"][:2]:  # only the list endpoints: no pair, nothing stateful
        each["config"]["mock"]["state"] = "collections"
    assert set(roles(build(document)).values()) == {None}
    # an endpoint's own key wins over server.mock
    document = users_blueprint()
    document["endpoints"][5]["config"]["mock"]["state"] = "none"
    found = roles(build(document))
    assert found["DELETE /users/{id:int}"] is None and found["GET /users/{id:int}"] == ("item", frozenset({"GET"}))


def test_nothing_recognised_is_a_warning(build):
    gateway = build({"name": "x", "server": {"mock": {"state": "collections"}}, "endpoints": [endpoint("/health", "GET", [{"body": {"ok": True}}])]})
    assert any("no collection was recognised" in w.message for w in gateway.warnings)


def test_the_id_field_comes_from_the_item_answers(build):
    document = {
        "name": "x",
        "server": {"mock": {"state": "collections"}},
        "endpoints": [
            endpoint("/orders", "GET", [{"body": {"data": [{"order_no": "A7", "n": 1}]}}]),
            endpoint("/orders/{no}", "GET", [{"when": {"path": {"no": "A7"}}, "body": {"data": {"order_no": "A7", "n": 1}}}]),
            endpoint("/orders", "POST", [{"status": 201, "body": {"data": {"order_no": "A8"}}}]),
        ],
    }
    collection = build(document).endpoints[0].handler.state.collection
    assert collection.id_field == "order_no"
    assert collection.list_get[0].at == ("data",)


# -- the verbs --------------------------------------------------------------------------------


async def test_off_answers_as_recorded(build, send):
    gateway = build(users_blueprint(state=None))
    created = await call(send, gateway, "POST", "/users", {"name": "Alan"})
    assert created.response.status_code == 201 and body_json(created.response) == {"id": 3, "name": "Alan"}
    assert "X-Backworks-Mock" not in created.response.headers
    assert (await send(gateway, "GET", "/users/3")).response.status_code == 404
    assert body_json((await send(gateway, "GET", "/users")).response)["total"] == 2


async def test_untouched_collection_answers_byte_for_byte(build, send):
    on, off = build(users_blueprint()), build(users_blueprint(state=None))
    for path in ("/users", "/users/1", "/users/42"):
        a, b = (await send(on, "GET", path)).response, (await send(off, "GET", path)).response
        assert (a.status_code, a.raw_content) == (b.status_code, b.raw_content), path
        assert "X-Backworks-Mock" not in a.headers
    missing = (await send(on, "GET", "/users/7")).response
    assert missing.status_code == 404 and body_json(missing)["error"] == "no mock example matches GET /users/7"


async def test_post_is_seen_by_list_and_item_get(build, send):
    gateway = build(users_blueprint())
    created = await call(send, gateway, "POST", "/users", {"name": "Alan", "email": "alan@example.com"})
    assert created.response.status_code == 201
    assert body_json(created.response) == {"id": 3, "name": "Alan", "email": "alan@example.com"}
    assert created.response.headers["Location"] == "/users/3"
    assert created.response.headers["X-Backworks-Mock"] == "state" and "mock=state-create" in created.comment
    second = await call(send, gateway, "POST", "/users", {"name": "Edsger"})
    assert body_json(second.response)["id"] == 4 and second.response.headers["Location"] == "/users/4"

    item = (await send(gateway, "GET", "/users/4")).response
    assert item.status_code == 200 and body_json(item) == {"id": 4, "name": "Edsger"}
    listed = (await send(gateway, "GET", "/users")).response
    assert listed.status_code == 200
    body = body_json(listed)
    assert [u["id"] for u in body["items"]] == [1, 2, 3, 4]
    assert body["items"][0] == {"id": 1, "name": "Ada"}  # untouched items keep their list form
    assert body["total"] == 4 and body["page"] == 1  # the count follows, the page does not
    assert listed.headers["X-Total-Count"] == "4" and "ETag" not in listed.headers
    assert listed.raw_content.startswith(b'{\n  "items"')  # the recorded layout
    assert listed.headers["Content-Length"] == str(len(listed.raw_content))
    head = (await send(gateway, "HEAD", "/users")).response
    assert head.raw_content == b"" and head.headers["Content-Length"] == listed.headers["Content-Length"]


async def test_post_with_an_id_and_conflicts(build, send):
    gateway = build(users_blueprint())
    created = await call(send, gateway, "POST", "/users", {"id": 50, "name": "Barbara"})
    assert created.response.status_code == 201 and body_json(created.response)["id"] == 50
    assert body_json((await call(send, gateway, "POST", "/users", {"name": "Next"})).response)["id"] == 51
    conflict = (await call(send, gateway, "POST", "/users", {"id": 1, "name": "again"})).response
    assert conflict.status_code == 409 and "already exists" in body_json(conflict)["error"]
    refused = (await call(send, gateway, "POST", "/users", {"id": True})).response
    assert refused.status_code == 400
    for bad in ("[1, 2]", "not json"):
        flow = await call(send, gateway, "POST", "/users", bad)
        assert flow.response.status_code == 400 and "JSON object" in body_json(flow.response)["error"], bad
    assert (await send(gateway, "POST", "/users")).response.status_code == 400


async def test_put_replaces_and_patch_merges(build, send):
    gateway = build(users_blueprint())
    put = (await call(send, gateway, "PUT", "/users/1", {"name": "Ada Lovelace", "id": 99})).response
    assert put.status_code == 200 and body_json(put) == {"name": "Ada Lovelace", "id": 1}  # the path's id stays
    assert body_json((await send(gateway, "GET", "/users/1")).response) == {"name": "Ada Lovelace", "id": 1}
    patched = (await call(send, gateway, "PATCH", "/users/2", {"email": None, "role": {"admin": True}})).response
    assert patched.status_code == 200 and body_json(patched) == {"id": 2, "name": "Grace", "role": {"admin": True}}
    items = body_json((await send(gateway, "GET", "/users")).response)["items"]
    assert items == [{"name": "Ada Lovelace", "id": 1}, {"id": 2, "name": "Grace", "role": {"admin": True}}]
    bad = (await call(send, gateway, "PATCH", "/users/2", [{"op": "remove", "path": "/name"}])).response
    assert bad.status_code == 400 and "merge patch" in body_json(bad)["error"]


async def test_delete_then_404_and_create_again(build, send):
    gateway = build(users_blueprint())
    deleted = await send(gateway, "DELETE", "/users/1")
    assert deleted.response.status_code == 204 and deleted.response.raw_content == b""
    assert "mock=state-delete" in deleted.comment
    gone = await send(gateway, "GET", "/users/1")
    # the recorded 404 of the item endpoint (ids put in as synthesis does: whole strings and path segments)
    assert gone.response.status_code == 404 and body_json(gone.response) == {"error": "no user 42"}
    assert "mock=state-gone" in gone.comment
    assert (await send(gateway, "DELETE", "/users/1")).response.status_code == 404
    assert (await call(send, gateway, "PUT", "/users/1", {"name": "x"})).response.status_code == 404
    body = body_json((await send(gateway, "GET", "/users")).response)
    assert [u["id"] for u in body["items"]] == [2] and body["total"] == 1
    again = await call(send, gateway, "POST", "/users", {"id": 1, "name": "Ada"})
    assert again.response.status_code == 201
    assert body_json((await send(gateway, "GET", "/users/1")).response) == {"id": 1, "name": "Ada"}


async def test_unknown_ids_answer_as_recorded(build, send):
    gateway = build(users_blueprint())
    await call(send, gateway, "POST", "/users", {"name": "Alan"})
    assert body_json((await send(gateway, "GET", "/users/42")).response) == {"error": "no user 42"}
    missing = await send(gateway, "GET", "/users/7")
    assert missing.response.status_code == 404 and "no mock example matches" in body_json(missing.response)["error"]
    document = users_blueprint()
    document["server"]["mock"]["unrecorded"] = "synthesise"
    synthesised = (await send(build(document), "GET", "/users/7")).response
    assert synthesised.headers["X-Backworks-Mock"] == "synthesised"


async def test_a_deleted_id_without_a_recorded_404_gets_backworks_404(build, send):
    document = users_blueprint()
    document["endpoints"][2]["config"]["mock"]["examples"].pop()  # no recorded 404
    gateway = build(document)
    await send(gateway, "DELETE", "/users/2")
    gone = (await send(gateway, "GET", "/users/2")).response
    assert gone.status_code == 404 and "was deleted from /users + /users/{id:int}" in body_json(gone)["error"]


async def test_max_items_refuses_with_507(build, send):
    gateway = build(users_blueprint({"mode": "collections", "max_items": 3}))
    assert (await call(send, gateway, "POST", "/users", {"name": "a"})).response.status_code == 201
    full = (await call(send, gateway, "POST", "/users", {"name": "b"})).response
    assert full.status_code == 507 and "maximum of 3" in body_json(full)["error"]
    await send(gateway, "DELETE", "/users/1")
    assert (await call(send, gateway, "POST", "/users", {"name": "b"})).response.status_code == 201


async def test_a_top_level_array_and_uuid_ids(build, send):
    ids = ["0b2f6c2e-5a55-4c1e-9a43-5e0c6bb0d0a1", "6f9a1c2e-0000-4c1e-9a43-5e0c6bb0d0a2"]
    document = {
        "name": "x",
        "server": {"mock": {"state": "collections"}},
        "endpoints": [
            endpoint("/things", "GET", [{"body": [{"uuid": ids[0]}, {"uuid": ids[1]}]}]),
            endpoint("/things", "POST", [{"status": 200, "body": {"ok": True}}]),
            endpoint("/things/{key:uuid}", "DELETE", [{"when": {"path": {"key": ids[0]}}, "status": 200, "body": {"deleted": ids[0]}}]),
        ],
    }
    gateway = build(document)
    created = (await call(send, gateway, "POST", "/things", {"name": "n"})).response
    # the recorded POST body had no item in it: its body as recorded, its status
    assert created.status_code == 200 and body_json(created) == {"ok": True}
    listed = body_json((await send(gateway, "GET", "/things")).response)
    assert len(listed) == 3 and listed[2]["name"] == "n" and documents._UUID.fullmatch(listed[2]["uuid"])
    deleted = (await send(gateway, "DELETE", f"/things/{ids[1]}")).response
    assert deleted.status_code == 200 and body_json(deleted) == {"deleted": ids[1]}  # the recorded id swapped
    assert [t["uuid"] for t in body_json((await send(gateway, "GET", "/things")).response)] == [ids[0], listed[2]["uuid"]]


async def test_nested_collections_keep_a_scope_each(build, send):
    document = {
        "name": "x",
        "server": {"mock": {"state": "collections"}},
        "endpoints": [
            endpoint("/users/{uid}/posts", "GET", [{"when": {"path": {"uid": "1"}}, "body": {"posts": [{"id": 10, "user": "1"}], "count": 1}}]),
            endpoint("/users/{uid}/posts", "POST", [{"when": {"path": {"uid": "1"}}, "status": 201, "body": {"id": 11, "user": "1"}}]),
            endpoint("/users/{user_id}/posts/{post_id}", "GET", [{"when": {"path": {"user_id": "1", "post_id": "10"}}, "body": {"id": 10, "user": "1"}}]),
        ],
    }
    gateway = build(document)
    created = (await call(send, gateway, "POST", "/users/2/posts", {"title": "t"})).response
    assert created.status_code == 201 and body_json(created)["id"] == 11
    # scope 2's list is built on the recorded scope-1 list, the user's id put in
    assert body_json((await send(gateway, "GET", "/users/2/posts")).response) == {"posts": [{"id": 11, "title": "t"}], "count": 1}
    # scope 1 was not written: as recorded
    assert body_json((await send(gateway, "GET", "/users/1/posts")).response) == {"posts": [{"id": 10, "user": "1"}], "count": 1}
    assert body_json((await send(gateway, "GET", "/users/2/posts/11")).response) == {"id": 11, "title": "t"}
    assert (await send(gateway, "GET", "/users/1/posts/11")).response.status_code == 404


async def test_prefer_and_validation_come_first(build, send):
    gateway = build(users_blueprint())
    await send(gateway, "DELETE", "/users/1")
    preferred = (await send(gateway, "GET", "/users/1", headers={"Prefer": "code=200"})).response
    assert preferred.status_code == 200 and preferred.headers["Preference-Applied"] == "code=200"


async def test_each_compiled_blueprint_starts_from_the_seeds(build, send):
    document = users_blueprint()
    first = build(document)
    await call(send, first, "POST", "/users", {"name": "Alan"})
    assert (await send(first, "GET", "/users/3")).response.status_code == 200
    assert (await send(build(document), "GET", "/users/3")).response.status_code == 404
