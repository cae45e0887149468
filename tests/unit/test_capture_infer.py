"""Inference from recorded traffic: path templates, grouping, example choice, JSON Schema, JSON bodies.

Every template test also checks the contract with the router: each path is matched by its own
template, and the inferred templates never clash (`check_routes` finds nothing).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import pytest

from backworks_core.capture.infer import (
    MAX_ARRAY_ITEMS,
    MAX_PROPERTIES,
    MAX_SCHEMA_DEPTH,
    EndpointGroup,
    group_exchanges,
    infer_schema,
    infer_templates,
    json_body,
    param_name,
    select_examples,
)
from backworks_core.capture.model import Exchange
from backworks_core.route_conflicts import check_routes
from backworks_core.router import Match, Route, Router, parse_template

U1 = "123e4567-e89b-12d3-a456-426614174000"
U2 = "9b2f6c1e-4d3a-4c8b-9e7f-0a1b2c3d4e5f"
U3 = "00000000-0000-4000-8000-000000000003"


def infer(paths: Sequence[str]) -> dict[str, str]:
    """infer_templates, plus the router contract every result must keep."""
    result = infer_templates(paths)
    templates = list(dict.fromkeys(result.values()))
    for template in templates:
        parse_template(template)  # valid syntax and names
    routes = [Route(t, frozenset({"GET"}), None, t) for t in templates]
    assert check_routes(routes) == []
    router = Router(routes)
    for path, template in result.items():
        found = router.match("GET", path)
        assert isinstance(found, Match), path
        assert found.route.template == template, (path, template, found.route.template)
    return result


def templates_of(paths: Sequence[str]) -> set[str]:
    return set(infer(paths).values())


def exchange(method: str, path: str, status: int = 200, query: list[tuple[str, str]] | None = None, host: str = "api.example.com", body: bytes = b"") -> Exchange:
    return Exchange(method=method, scheme="https", host=host, port=443, path=path, query=query or [], status=status, request_body=body)


# --------------------------------------------------------------------------- templates by value


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["/users/7"], {"/users/7": "/users/{user_id:int}"}),
        ([f"/orders/{U1}"], {f"/orders/{U1}": "/orders/{order_id:uuid}"}),
        (["/commits/3f9a2b1c0d"], {"/commits/3f9a2b1c0d": "/commits/{commit_id}"}),
        (["/sessions/aZ3kP9qL0xW7mN2b"], {"/sessions/aZ3kP9qL0xW7mN2b": "/sessions/{session_id}"}),
        (["/charges/ch_3MmlLrLkdIwHu7ix0snN0B15"], {"/charges/ch_3MmlLrLkdIwHu7ix0snN0B15": "/charges/{charge_id}"}),
        (["/reports/2024-01-31"], {"/reports/2024-01-31": "/reports/{report_id}"}),
        (["/people/ada@example.com"], {"/people/ada@example.com": "/people/{person_id}"}),
        (["/7"], {"/7": "/{id:int}"}),
        (["/categories/12"], {"/categories/12": "/categories/{category_id:int}"}),
        (["/boxes/12"], {"/boxes/12": "/boxes/{box_id:int}"}),
        (["/news/12"], {"/news/12": "/news/{news_id:int}"}),
    ],
)
def test_identifiers_by_value(paths: list[str], expected: dict[str, str]) -> None:
    assert infer(paths) == expected


@pytest.mark.parametrize(
    "path",
    [
        "/users/me/profile",
        "/api/v1/search",
        "/oauth2-authorize-callback",  # long, letters and digits, but readable words
        "/deadbeefcafe",  # hex without a digit is a word
        "/a1b2c3d",  # hex, but shorter than 8
        "/2024-13-45",  # not a real date
        "/static/app.min.js",
        "/",
    ],
)
def test_words_stay_literal(path: str) -> None:
    assert infer([path]) == {path: path}


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (  # two positions
            ["/users/7/posts/12", "/users/8/posts/13"],
            {"/users/{user_id:int}/posts/{post_id:int}"},
        ),
        (  # three positions, mixed int and uuid
            [f"/stores/3/orders/{U1}/lines/1", f"/stores/4/orders/{U2}/lines/2"],
            {"/stores/{store_id:int}/orders/{order_id:uuid}/lines/{line_id:int}"},
        ),
        (  # consecutive parameters: the name follows the nearest literal, kept unique
            ["/files/2024-01-31/7", "/files/2024-02-01/8"],
            {"/files/{file_id}/{file_id_2:int}"},
        ),
        (  # ints and uuids at one position merge to one plain parameter
            ["/items/7", f"/items/{U1}", "/items/8/reviews", f"/items/{U2}/reviews"],
            {"/items/{item_id}", "/items/{item_id}/reviews"},
        ),
        (  # a literal next to ids wins by precedence and keeps its own template
            ["/users/me", "/users/7", "/users/8", "/users/search"],
            {"/users/me", "/users/{user_id:int}", "/users/search"},
        ),
    ],
)
def test_identifiers_in_several_positions(paths: list[str], expected: set[str]) -> None:
    assert templates_of(paths) == expected


# --------------------------------------------------------------------------- templates by siblings


NAMES = ["alice", "bob", "carol", "dave", "erin"]


def test_siblings_become_a_parameter() -> None:
    paths = [f"/users/{name}" for name in NAMES[:4]]
    assert infer(paths) == dict.fromkeys(paths, "/users/{user_id}")


def test_three_siblings_are_not_enough() -> None:
    paths = [f"/users/{name}" for name in NAMES[:3]]
    assert templates_of(paths) == set(paths)


def test_frequent_sibling_stays_literal() -> None:
    paths = ["/users/me"] * 50 + [f"/users/{name}" for name in NAMES[:4]]
    result = infer(paths)
    assert result["/users/me"] == "/users/me"
    assert {result[f"/users/{name}"] for name in NAMES[:4]} == {"/users/{user_id}"}


def test_sibling_with_its_own_structure_stays_literal() -> None:
    paths = ["/users/me/settings"] + [f"/users/{name}/posts" for name in NAMES] + [f"/users/{name}" for name in NAMES]
    assert templates_of(paths) == {"/users/me/settings", "/users/{user_id}/posts", "/users/{user_id}"}


def test_siblings_with_unrelated_children_stay_literal() -> None:
    paths = ["/admin-area/users/list", "/admin-area/orders/export", "/admin-area/reports/daily", "/admin-area/jobs/run"]
    assert templates_of(paths) == set(paths)


@pytest.mark.parametrize(
    "paths",
    [
        # sections of an API, not ids: under a version, an API root, or at the top
        ["/api/v1/users", "/api/v1/orders", "/api/v1/products", "/api/v1/carts", "/api/v1/wishlists"],
        ["/api/users", "/api/orders", "/api/products", "/api/carts"],
        ["/users", "/orders", "/products", "/carts", "/health"],
        # sub-resources after an id
        ["/users/7/posts", "/users/8/followers", "/users/9/likes", "/users/10/settings"],
        # collections: their own children are ids
        ["/things/users/1", "/things/orders/2", "/things/products/3", "/things/carts/4"],
        # fewer than 8 under a parent that does not look like a collection
        ["/shop/alpha", "/shop/bravo", "/shop/charlie", "/shop/delta"],
    ],
)
def test_structural_words_are_not_siblings(paths: list[str]) -> None:
    kinds = {s.kind for t in infer(paths).values() for s in parse_template(t)}
    assert "param" not in kinds


def test_many_siblings_under_a_singular_parent() -> None:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    assert templates_of([f"/profile/{w}" for w in words]) == {"/profile/{profile_id}"}


def test_siblings_then_ids_below() -> None:
    paths = [f"/users/{name}/repos/{n}" for n, name in enumerate(NAMES)] + [f"/users/{name}" for name in NAMES]
    assert templates_of(paths) == {"/users/{user_id}/repos/{repo_id:int}", "/users/{user_id}"}


# --------------------------------------------------------------------------- a realistic capture

SHOP = [
    "/api/v1/products",
    "/api/v1/products",
    "/api/v1/products/101",
    "/api/v1/products/102",
    "/api/v1/products/103",
    "/api/v1/products/2048",
    "/api/v1/products/101/reviews",
    "/api/v1/products/102/reviews",
    "/api/v1/products/101/reviews/5",
    "/api/v1/products/search",
    "/api/v1/products/featured",
    "/api/v1/categories",
    "/api/v1/categories/electronics",
    "/api/v1/categories/books",
    "/api/v1/categories/toys",
    "/api/v1/categories/garden",
    "/api/v1/categories/electronics/products",
    "/api/v1/categories/books/products",
    "/api/v1/cart",
    "/api/v1/cart/items",
    f"/api/v1/cart/items/{U1}",
    f"/api/v1/cart/items/{U2}",
    "/api/v1/orders",
    f"/api/v1/orders/{U1}",
    f"/api/v1/orders/{U3}",
    f"/api/v1/orders/{U1}/items",
    f"/api/v1/orders/{U3}/shipment",
    *["/api/v1/users/me"] * 12,
    "/api/v1/users/me/addresses",
    "/api/v1/users/me/addresses/3",
    "/api/v1/users/1001/wishlist",
    "/api/v1/users/1002/wishlist",
    "/api/v1/checkout/sessions/cs_a1B2c3D4e5F6g7H8",
    "/api/v1/payments/pi_3MtwBwLkdIwHu7ix28a3tqPa",
    "/api/v1/shipments/2024-01-31",
    "/static/js/app.min.js",
    "/health",
    "/",
]

SHOP_TEMPLATES = {
    "/api/v1/products": "/api/v1/products",
    "/api/v1/products/101": "/api/v1/products/{product_id:int}",
    "/api/v1/products/2048": "/api/v1/products/{product_id:int}",
    "/api/v1/products/101/reviews": "/api/v1/products/{product_id:int}/reviews",
    "/api/v1/products/101/reviews/5": "/api/v1/products/{product_id:int}/reviews/{review_id:int}",
    "/api/v1/products/search": "/api/v1/products/search",
    "/api/v1/products/featured": "/api/v1/products/featured",
    "/api/v1/categories": "/api/v1/categories",
    "/api/v1/categories/toys": "/api/v1/categories/{category_id}",
    "/api/v1/categories/books/products": "/api/v1/categories/{category_id}/products",
    "/api/v1/cart": "/api/v1/cart",
    "/api/v1/cart/items": "/api/v1/cart/items",
    f"/api/v1/cart/items/{U2}": "/api/v1/cart/items/{item_id:uuid}",
    "/api/v1/orders": "/api/v1/orders",
    f"/api/v1/orders/{U3}": "/api/v1/orders/{order_id:uuid}",
    f"/api/v1/orders/{U1}/items": "/api/v1/orders/{order_id:uuid}/items",
    f"/api/v1/orders/{U3}/shipment": "/api/v1/orders/{order_id:uuid}/shipment",
    "/api/v1/users/me": "/api/v1/users/me",
    "/api/v1/users/me/addresses": "/api/v1/users/me/addresses",
    "/api/v1/users/me/addresses/3": "/api/v1/users/me/addresses/{address_id:int}",
    "/api/v1/users/1002/wishlist": "/api/v1/users/{user_id:int}/wishlist",
    "/api/v1/checkout/sessions/cs_a1B2c3D4e5F6g7H8": "/api/v1/checkout/sessions/{session_id}",
    "/api/v1/payments/pi_3MtwBwLkdIwHu7ix28a3tqPa": "/api/v1/payments/{payment_id}",
    "/api/v1/shipments/2024-01-31": "/api/v1/shipments/{shipment_id}",
    "/static/js/app.min.js": "/static/js/app.min.js",
    "/health": "/health",
    "/": "/",
}


def test_ecommerce_capture() -> None:
    result = infer(SHOP)
    assert set(result) == set(SHOP)
    for path, template in SHOP_TEMPLATES.items():
        assert result[path] == template, path
    assert set(result.values()) == set(SHOP_TEMPLATES.values())  # 26 endpoints from 49 requests


def test_same_input_same_output_and_order_does_not_matter() -> None:
    first = infer(SHOP)
    assert infer(SHOP) == first
    assert list(first) == list(dict.fromkeys(SHOP))  # the result follows the input order
    for seed in range(5):
        shuffled = list(SHOP)
        random.Random(seed).shuffle(shuffled)
        assert infer(shuffled) == first


# --------------------------------------------------------------------------- odd paths


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/", "/"),
        ("/users/", "/users"),
        ("/caf%C3%A9", "/café"),  # decoded, as the router compares literals
        ("/a%2Fb", "/a%2Fb"),  # a slash inside one segment stays one segment
        ("/:x", "/%3Ax"),  # not a `:name` parameter
        ("/%7Bid%7D", "/%7Bid%7D"),  # not a `{name}` parameter
        ("/100%25", "/100%25"),
        ("/a//b", "/a/{rest:path}"),  # parameters never capture an empty segment
        ("/a/b//", "/a/{rest:path}"),
        ("/a//", "/{rest:path}"),
        ("/x/" + "/".join(["s"] * 40), "/x/" + "/".join(["s"] * 31) + "/{rest:path}"),
    ],
)
def test_odd_paths_still_match_their_template(path: str, template: str) -> None:
    assert infer([path]) == {path: template}


@pytest.mark.parametrize("path", ["*", "//", "users"])
def test_unroutable_paths_are_left_out(path: str) -> None:
    assert infer_templates([path, "/ok"]) == {"/ok": "/ok"}


def test_hostile_mix_keeps_the_router_contract() -> None:
    rng = random.Random(7)
    pieces = ["users", "me", "7", U1, "a%2Fb", "", ":x", "{y}", "caf%C3%A9", "2024-01-31", "deadbeef01", "x" * 20 + "1"]
    paths = ["/" + "/".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) for _ in range(400)]
    infer(paths)  # the helper asserts every path matches its own template, and no clashes


@pytest.mark.parametrize(
    ("previous", "name"),
    [
        (None, "id"),
        ("users", "user_id"),
        ("categories", "category_id"),
        ("boxes", "box_id"),
        ("news", "news_id"),
        ("addresses", "address_id"),
        ("statuses", "status_id"),
        ("databases", "database_id"),
        ("people", "person_id"),
        ("orderItems", "order_item_id"),
        ("line-items", "line_item_id"),
        ("user", "user_id"),
        ("by-id", "by_id"),
        ("cafés", "cafe_id"),
        ("3d", "_3d_id"),
        ("%%%", "id"),
    ],
)
def test_param_names(previous: str | None, name: str) -> None:
    assert param_name(previous) == name
    parse_template("/{" + name + "}")


# --------------------------------------------------------------------------- grouping


def test_group_by_host_method_and_template_in_order_of_appearance() -> None:
    exchanges = [
        exchange("GET", "/users/7"),
        exchange("DELETE", "/users/8"),
        exchange("get", "/users/9"),
        exchange("GET", "/users/7", host="other.example.com"),
        exchange("GET", "/users"),
        exchange("GET", "*"),
    ]
    groups = group_exchanges(exchanges)
    assert [(g.host, g.method, g.template) for g in groups] == [
        ("api.example.com", "GET", "/users/{user_id:int}"),
        ("api.example.com", "DELETE", "/users/{user_id:int}"),
        ("other.example.com", "GET", "/users/{user_id:int}"),
        ("api.example.com", "GET", "/users"),
    ]
    assert groups[0].exchanges == [exchanges[0], exchanges[2]]
    assert groups[0].params == [{"user_id": "7"}, {"user_id": "9"}]
    assert groups[3].params == [{}]


def test_methods_share_templates_within_a_host() -> None:
    names = NAMES[:4]
    exchanges = [exchange("GET", f"/users/{names[0]}")] + [exchange("PUT", f"/users/{n}") for n in names[1:]]
    groups = group_exchanges(exchanges)
    assert {g.template for g in groups} == {"/users/{user_id}"}
    assert groups[0].params == [{"user_id": "alice"}]


def test_group_params_are_decoded_like_the_router() -> None:
    groups = group_exchanges([exchange("GET", "/files/2024-01-31/a%20b%2Fc"), exchange("GET", "/files/2024-02-01/x")])
    assert [g.params for g in groups] == [[{"file_id": "2024-01-31"}], [{"file_id": "2024-02-01"}]]


# --------------------------------------------------------------------------- examples


def group_of(*exchanges: Exchange) -> EndpointGroup:
    (group,) = group_exchanges(exchanges)
    return group


def test_examples_cover_statuses_then_query_shapes_then_params() -> None:
    group = group_of(
        exchange("GET", "/items/1"),
        exchange("GET", "/items/1"),
        exchange("GET", "/items/2", query=[("page", "2")]),
        exchange("GET", "/items/3"),
        exchange("GET", "/items/404", status=404),
        exchange("GET", "/items/4", query=[("page", "3")]),
        exchange("GET", "/items/5", status=500),
    )
    by_index = {id(e): i for i, e in enumerate(group.exchanges)}

    def chosen(n: int) -> list[int]:
        return [by_index[id(e)] for e in select_examples(group, n)]

    assert chosen(0) == []
    assert chosen(2) == [0, 4]  # statuses first, in arrival order
    assert chosen(3) == [0, 4, 6]
    assert chosen(4) == [0, 2, 4, 6]  # then a new query shape
    assert chosen(5) == [0, 2, 3, 4, 6]  # then new path parameter values
    assert chosen(6) == [0, 2, 3, 4, 5, 6]  # then a request not yet shown
    assert chosen(100) == [0, 2, 3, 4, 5, 6]  # never the same request twice
    assert chosen(4) == chosen(4)


# --------------------------------------------------------------------------- JSON Schema


def test_schema_of_nothing_and_of_scalars() -> None:
    assert infer_schema([]) == {}
    assert infer_schema([1, 2]) == {"type": "integer"}
    assert infer_schema([1, 2.5]) == {"type": "number"}
    assert infer_schema([True]) == {"type": "boolean"}
    assert infer_schema(["a", 1, None]) == {"type": ["string", "integer", "null"]}


def test_schema_objects_required_and_nullable() -> None:
    samples = [
        {"id": 1, "name": "Ada", "email": "ada@example.com", "nick": None},
        {"id": 2, "name": "Grace", "email": None, "tags": ["x", "y"]},
        {"id": 3, "name": "Linus", "email": "linus@example.org", "nick": "torvalds", "tags": []},
    ]
    assert infer_schema(samples) == {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "email": {"type": ["string", "null"], "format": "email"},
            "nick": {"type": ["string", "null"]},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["id", "name", "email"],
    }


def test_schema_arrays_merge_items() -> None:
    samples = [[{"a": 1}, {"a": 2.5, "b": "x"}], [], [{"a": None}]]
    assert infer_schema(samples) == {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"a": {"type": ["number", "null"]}, "b": {"type": "string"}},
            "required": ["a"],
        },
    }
    assert infer_schema([[]]) == {"type": "array"}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["paid", "paid", "open", "open", "paid"], {"type": "string", "enum": ["open", "paid"]}),
        (["paid", "paid", "open", "open", None, "paid"], {"type": ["string", "null"], "enum": ["open", "paid", None]}),
        (["paid", "paid", "open", "open"], {"type": "string"}),  # too few samples
        (["paid", "paid", "open", "shipped", "paid"], {"type": "string"}),  # one seen once
        (["a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "f", "f"], {"type": "string"}),  # too many
        (["7", "7", "8", "8", "7"], {"type": "string"}),  # ids
        (["2024-01-31"] * 3 + ["2024-02-01"] * 3, {"type": "string", "format": "date"}),
        (["a@x.io"] * 5, {"type": "string", "format": "email"}),
        (["paid", "paid", 1, 1, "paid"], {"type": ["string", "integer"]}),
    ],
)
def test_schema_enums(values: list[object], expected: dict[str, object]) -> None:
    assert infer_schema(values) == expected


def test_no_enum_for_id_named_fields() -> None:
    samples = [{"kind": k, "currency_id": k, "typeId": k} for k in ["a", "b", "a", "b", "a"]]
    properties = infer_schema(samples)["properties"]
    assert properties["kind"] == {"type": "string", "enum": ["a", "b"]}
    assert properties["currency_id"] == {"type": "string"}
    assert properties["typeId"] == {"type": "string"}


@pytest.mark.parametrize(
    ("values", "fmt"),
    [
        (["2024-01-31T10:20:30Z", "2024-01-31T10:20:30.123+02:00"], "date-time"),
        (["2024-01-31", "1999-12-31"], "date"),
        ([U1, U2], "uuid"),
        (["ada@example.com", "g.hopper@navy.mil"], "email"),
        (["https://example.com/a?b=c", "mailto:ada@example.com"], "uri"),
        (["2024-01-31T10:20:30Z", "2024-01-31"], None),  # mixed formats: none
        (["2024-02-30", "2024-01-31"], None),  # not a date
        (["2024-01-31T25:00:00Z"], None),
        (["2024-01-31 10:20:30Z"], None),  # RFC 3339 wants the T
        ([U1, "not a uuid"], None),
    ],
)
def test_schema_formats(values: list[str], fmt: str | None) -> None:
    schema = infer_schema(values)
    assert schema.get("format") == fmt
    assert "enum" not in schema


def test_schema_is_bounded() -> None:
    deep: object = "leaf"
    for _ in range(200):
        deep = {"next": deep}
    schema = infer_schema([deep])
    depth = 0
    while "properties" in schema:
        schema = schema["properties"]["next"]
        depth += 1
    assert depth == MAX_SCHEMA_DEPTH
    assert schema == {"type": "object"}

    wide = {f"k{i}": i for i in range(MAX_PROPERTIES + 50)}
    assert len(infer_schema([wide])["properties"]) == MAX_PROPERTIES

    long = list(range(MAX_ARRAY_ITEMS)) + ["late"]
    assert infer_schema([long]) == {"type": "array", "items": {"type": "integer"}}


def test_schema_is_deterministic() -> None:
    samples = [{"b": 1, "a": [1, "x", None]}, {"c": {"d": "2024-01-31"}, "b": 2}]
    assert json.dumps(infer_schema(samples)) == json.dumps(infer_schema(samples))
    assert list(infer_schema(samples)["properties"]) == ["b", "a", "c"]  # first appearance


# --------------------------------------------------------------------------- JSON bodies


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"a": 1}', "application/json", {"a": 1}),
        (b'{"a": 1}', "application/json; charset=utf-8", {"a": 1}),
        (b'{"a": 1}', "application/problem+json", {"a": 1}),
        (b'{"a": 1}', "application/vnd.api+json", {"a": 1}),
        (b'"text"', "application/json", "text"),
        (b"42", "Application/JSON", 42),
        (b"\xef\xbb\xbf[1]", "application/json", [1]),
        (b' [1, 2]', "text/plain", [1, 2]),  # a JSON array whatever the label
        (b'{"a": 1}', None, {"a": 1}),
        (b"42", "text/plain", None),  # scalars only with a JSON content type
        (b"", "application/json", None),
        (b"{not json", "application/json", None),
        (b"[NaN]", "application/json", None),
        (b"\xff\xfe", "application/json", None),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", None),
        (b"<html></html>", "text/html", None),
        (b'cb({"a": 1})', "application/javascript", None),
    ],
)
def test_json_body(body: bytes, content_type: str | None, expected: object) -> None:
    assert json_body(body, content_type) == expected


def test_a_redacted_segment_is_a_parameter_with_the_value_it_stands_for():
    """A secret in a path (`/unsubscribe/sk_live_…`) redacted to its placeholder: a literal
    route would never match the real value; the same value recorded before it was known a
    secret joins the same parameter."""
    from backworks_core.capture.redact import placeholder

    templates = infer_templates(["/basic-auth/user/passwd", f"/basic-auth/user/{placeholder('passwd')}", "/basic-auth/user/me", f"/unsubscribe/{placeholder('sk_live_x')}"])
    assert templates["/basic-auth/user/passwd"] == templates[f"/basic-auth/user/{placeholder('passwd')}"] == "/basic-auth/user/{user_id}"
    assert templates["/basic-auth/user/me"] == "/basic-auth/user/me"  # another value stays a literal
    assert templates[f"/unsubscribe/{placeholder('sk_live_x')}"] == "/unsubscribe/{unsubscribe_id}"
