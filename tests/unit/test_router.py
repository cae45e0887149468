"""Route matcher: template parsing, precedence, 404/405, host globs (conflict checks: test_route_conflicts.py)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from backworks_core.router import (
    Match,
    MethodNotAllowed,
    Route,
    Router,
    Segment,
    parse_template,
    template_shape,
)

UUID = "123e4567-e89b-12d3-a456-426614174000"


def route(template: str, *methods: str, host: str | None = None, payload: object = None) -> Route:
    """Terse Route builder; payload defaults to the template so tests can assert on it."""
    return Route(template, frozenset(methods or ("GET",)), host, template if payload is None else payload)


def resolve(routes: Sequence[Route], method: str, path: str, host: str = "") -> object:
    """Match and reduce the result to something easy to compare in a table."""
    result = Router(routes).match(method, path, host)
    if isinstance(result, Match):
        return (result.route.payload, result.params)
    return result


# --------------------------------------------------------------------------- parse_template

def L(value: str) -> Segment:
    return Segment("literal", value)


def P(name: str) -> Segment:
    return Segment("param", name)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/", ()),
        ("/hello", (L("hello"),)),
        ("/hello/", (L("hello"),)),
        ("/users/{id}", (L("users"), P("id"))),
        ("/users/:id", (L("users"), P("id"))),
        ("/users/{id:int}", (L("users"), Segment("int", "id"))),
        ("/users/{id:uuid}/", (L("users"), Segment("uuid", "id"))),
        ("/files/{rest:path}", (L("files"), Segment("path", "rest"))),
        ("/{_private_1}", (P("_private_1"),)),
        ("/a/{x}/b/{y:int}", (L("a"), P("x"), L("b"), Segment("int", "y"))),
        ("/caf%C3%A9", (L("café"),)),  # literals are decoded, like requests
        ("/café", (L("café"),)),
        ("/v1/things:batchGet", (L("v1"), L("things:batchGet"))),  # ':' inside a literal is fine
        ("/a%2Fb", (L("a/b"),)),
        ("/*", (L("*"),)),
    ],
)
def test_parse_template_valid(template: str, expected: tuple[Segment, ...]) -> None:
    assert parse_template(template) == expected


@pytest.mark.parametrize(
    ("template", "fragments"),
    [
        ("", ["must start with '/'"]),
        ("hello", ["'hello'", "must start with '/'"]),
        ("users/{id}", ["must start with '/'"]),
        ("//", ["empty segment"]),
        ("/a//b", ["'/a//b'", "empty segment"]),
        ("/a/b//", ["empty segment"]),
        ("/file.{ext}", ["'file.{ext}'", "must be a whole segment"]),
        ("/{a}{b}", ["must be a whole segment"]),
        ("/x{id}", ["must be a whole segment"]),
        ("/{id}x", ["must be a whole segment"]),
        ("/{id", ["unbalanced"]),
        ("/id}", ["unbalanced"]),
        ("/{x:foo}", ["unknown parameter type 'foo'", "int, uuid, path"]),
        ("/{x:}", ["unknown parameter type ''", "int, uuid, path"]),
        ("/{x:INT}", ["unknown parameter type 'INT'", "int, uuid, path"]),
        ("/{}", ["needs a name"]),
        ("/{:int}", ["needs a name"]),
        ("/:", ["needs a name"]),
        ("/{1id}", ["'1id'", "not valid"]),
        ("/{user-id}", ["'user-id'", "not valid"]),
        ("/{ id }", ["' id '", "not valid"]),
        ("/:1", ["'1'", "not valid"]),
        ("/:id:int", ["take no type", "'{id:int}'"]),
        ("/{rest:path}/more", ["'{rest:path}'", "must be the last segment"]),
        ("/{a}/{a}", ["parameter 'a' appears twice"]),
        ("/{a}/:a", ["parameter 'a' appears twice"]),
        ("/{a:int}/{a:path}", ["parameter 'a' appears twice"]),
        ("/search?q=1", ["'?'", "query string"]),
        ("/page#top", ["'#'"]),
    ],
)
def test_parse_template_errors(template: str, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        parse_template(template)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("template", "shape"),
    [
        ("/", "/"),
        ("/users/{id}/posts/{pid:int}", "/users/{}/posts/{int}"),
        ("/users/:id/posts/{n:int}/", "/users/{}/posts/{int}"),
        ("/x/{u:uuid}/{rest:path}", "/x/{uuid}/{path}"),
        ("/caf%C3%A9", "/café"),
        ("/a%2Fb", "/a%2Fb"),  # a slash inside a segment stays distinguishable from two segments
        ("/a%7B%7D", "/a%7B%7D"),  # and literal braces from a parameter
        ("/100%25", "/100%25"),
    ],
)
def test_template_shape(template: str, shape: str) -> None:
    assert template_shape(parse_template(template)) == shape


def test_shape_erases_names_only() -> None:
    assert template_shape(parse_template("/u/{a}")) == template_shape(parse_template("/u/:b"))
    assert template_shape(parse_template("/u/{a}")) != template_shape(parse_template("/u/{a:int}"))
    assert template_shape(parse_template("/a/b")) != template_shape(parse_template("/a%2Fb"))


# --------------------------------------------------------------------------- matching: paths

PATH_ROUTES = [
    route("/"),
    route("/hello"),
    route("/users/me"),
    route("/users/{id}"),
    route("/users/{id:int}/posts/{post}"),
    route("/items/{id:uuid}"),
    route("/items/{name}"),
    route("/n/{num:int}"),
    route("/n/{word}"),
    route("/a/{x}/c"),
    route("/a/b/{y}"),
    route("/deep/lit/x"),
    route("/deep/{p}/y"),
    route("/files/{rest:path}"),
    route("/files/readme"),
    route("/colon/:name/edit"),
    route("/caf%C3%A9/{dish}"),
    route("/spaced%20out"),
    route("/g/{a}/{b}"),
    route("/g/{a}/{rest:path}"),
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # root and trailing slashes
        ("/", ("/", {})),
        ("", ("/", {})),
        ("/hello", ("/hello", {})),
        ("/hello/", ("/hello", {})),
        ("/hello//", None),
        ("//", None),
        ("/hello/x", None),
        ("/hell", None),
        ("/HELLO", None),  # literals are case-sensitive
        # literal beats parameter
        ("/users/me", ("/users/me", {})),
        ("/users/me/", ("/users/me", {})),
        ("/users/7", ("/users/{id}", {"id": "7"})),
        ("/users/mee", ("/users/{id}", {"id": "mee"})),
        ("/users/7/posts/hi", ("/users/{id:int}/posts/{post}", {"id": "7", "post": "hi"})),
        ("/users/x7/posts/hi", None),
        ("/users/", None),  # "/users/" is "/users", which nothing defines
        ("/users//posts/x", None),  # empty segments are never parameters
        # constrained beats plain
        (f"/items/{UUID}", ("/items/{id:uuid}", {"id": UUID})),
        (f"/items/{UUID.upper()}", ("/items/{id:uuid}", {"id": UUID.upper()})),
        (f"/items/{UUID[:-1]}", ("/items/{name}", {"name": UUID[:-1]})),
        (f"/items/{UUID.replace('-', '')}", ("/items/{name}", {"name": UUID.replace("-", "")})),
        (f"/items/{UUID[:-1]}g", ("/items/{name}", {"name": UUID[:-1] + "g"})),
        ("/n/42", ("/n/{num:int}", {"num": "42"})),
        ("/n/007", ("/n/{num:int}", {"num": "007"})),
        ("/n/-1", ("/n/{word}", {"word": "-1"})),
        ("/n/4.2", ("/n/{word}", {"word": "4.2"})),
        ("/n/\u0661\u0662", ("/n/{word}", {"word": "\u0661\u0662"})),  # non-ASCII digits are not int
        ("/n/%C2%B2", ("/n/{word}", {"word": "\u00b2"})),
        # literal wins at the first differing segment; backtracking when it fails deeper
        ("/a/b/c", ("/a/b/{y}", {"y": "c"})),
        ("/a/b/z", ("/a/b/{y}", {"y": "z"})),
        ("/a/q/c", ("/a/{x}/c", {"x": "q"})),
        ("/a/q/z", None),
        ("/deep/lit/x", ("/deep/lit/x", {})),
        ("/deep/lit/y", ("/deep/{p}/y", {"p": "lit"})),  # literal branch fails at depth 3
        ("/deep/lit/z", None),
        # {rest:path}
        ("/files/a", ("/files/{rest:path}", {"rest": "a"})),
        ("/files/a/b/c.txt", ("/files/{rest:path}", {"rest": "a/b/c.txt"})),
        ("/files/a/b/", ("/files/{rest:path}", {"rest": "a/b"})),
        ("/files/readme", ("/files/readme", {})),
        ("/files/readme/more", ("/files/{rest:path}", {"rest": "readme/more"})),
        ("/files", None),  # {x:path} does not match zero segments
        ("/files/", None),
        ("/files/a%2Fb/c%20d", ("/files/{rest:path}", {"rest": "a/b/c d"})),
        ("/g/1/2", ("/g/{a}/{b}", {"a": "1", "b": "2"})),
        ("/g/1/2/3", ("/g/{a}/{rest:path}", {"a": "1", "rest": "2/3"})),
        ("/g/1", None),
        # :name syntax
        ("/colon/bob/edit", ("/colon/:name/edit", {"name": "bob"})),
        # percent-encoding
        ("/users/a%20b", ("/users/{id}", {"id": "a b"})),
        ("/users/a%2Fb", ("/users/{id}", {"id": "a/b"})),  # %2F stays inside the segment
        ("/users/%6De", ("/users/me", {})),  # decoded before comparing with literals
        ("/%68ello", ("/hello", {})),
        ("/users/caf%C3%A9", ("/users/{id}", {"id": "café"})),
        ("/café/soup", ("/caf%C3%A9/{dish}", {"dish": "soup"})),
        ("/caf%C3%A9/soup", ("/caf%C3%A9/{dish}", {"dish": "soup"})),
        ("/spaced out", ("/spaced%20out", {})),
        ("/spaced%20out", ("/spaced%20out", {})),
        ("/users/100%", ("/users/{id}", {"id": "100%"})),  # a stray '%' is kept as-is
        ("/users/%zz", ("/users/{id}", {"id": "%zz"})),
        # query strings and non-origin paths
        ("/hello?x=1", ("/hello", {})),
        ("/users/7?me=1", ("/users/{id}", {"id": "7"})),
        ("*", None),
        ("hello", None),
    ],
)
def test_match_paths(path: str, expected: object) -> None:
    assert resolve(PATH_ROUTES, "GET", path) == expected


def test_root_only_matches_root() -> None:
    assert resolve([route("/")], "GET", "/x") is None
    assert resolve([route("/x")], "GET", "/") is None


def test_precedence_does_not_depend_on_blueprint_order() -> None:
    forward = [route("/users/{id}"), route("/users/{id:int}"), route("/users/me"), route("/users/{r:path}")]
    for routes in (forward, forward[::-1]):
        assert resolve(routes, "GET", "/users/me") == ("/users/me", {})
        assert resolve(routes, "GET", "/users/7") == ("/users/{id:int}", {"id": "7"})
        assert resolve(routes, "GET", "/users/x") == ("/users/{id}", {"id": "x"})
        assert resolve(routes, "GET", "/users/x/y") == ("/users/{r:path}", {"r": "x/y"})


def test_same_shape_routes_keep_their_own_parameter_names() -> None:
    routes = [route("/u/{a}", "GET"), route("/u/{b}", "POST"), route("/u/:c", "PUT")]
    assert resolve(routes, "GET", "/u/1") == ("/u/{a}", {"a": "1"})
    assert resolve(routes, "POST", "/u/1") == ("/u/{b}", {"b": "1"})
    assert resolve(routes, "PUT", "/u/1") == ("/u/:c", {"c": "1"})


def test_backtracking_releases_captured_values() -> None:
    routes = [route("/x/{a}/{b}/lit"), route("/x/{c:path}")]
    assert resolve(routes, "GET", "/x/1/2/other") == ("/x/{c:path}", {"c": "1/2/other"})
    routes = [route("/x/{a:int}/nope"), route("/x/{b}/{c}")]
    assert resolve(routes, "GET", "/x/1/2") == ("/x/{b}/{c}", {"b": "1", "c": "2"})


def test_backtracking_across_int_uuid_and_plain() -> None:
    routes = [route("/r/{a:int}/int"), route("/r/{b:uuid}/uuid"), route("/r/{c}/plain"), route("/r/lit/lit")]
    assert resolve(routes, "GET", "/r/5/int") == ("/r/{a:int}/int", {"a": "5"})
    assert resolve(routes, "GET", "/r/5/plain") == ("/r/{c}/plain", {"c": "5"})
    assert resolve(routes, "GET", f"/r/{UUID}/plain") == ("/r/{c}/plain", {"c": UUID})
    assert resolve(routes, "GET", f"/r/{UUID}/uuid") == ("/r/{b:uuid}/uuid", {"b": UUID})
    assert resolve(routes, "GET", "/r/lit/plain") == ("/r/{c}/plain", {"c": "lit"})
    assert resolve(routes, "GET", "/r/lit/int") is None


# --------------------------------------------------------------------------- matching: methods

METHOD_ROUTES = [
    route("/m", "GET", "POST", payload="get-post"),
    route("/m", "DELETE", payload="delete"),
    route("/m", "ANY", payload="any"),
    route("/only-get", "GET", payload="only-get"),
    route("/head", "HEAD", payload="head"),
    route("/head", "GET", payload="get"),
    route("/any", "ANY", payload="any-only"),
    route("/first", "PUT", payload="first"),
    route("/first", "PUT", payload="second"),  # a duplicate: the blueprint-order winner is first
]


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/m", ("get-post", {})),
        ("get", "/m", ("get-post", {})),  # methods are compared upper-case
        ("POST", "/m", ("get-post", {})),
        ("DELETE", "/m", ("delete", {})),
        ("PATCH", "/m", ("any", {})),  # ANY catches what nothing lists
        ("HEAD", "/m", ("get-post", {})),  # GET serves HEAD before ANY does
        ("OPTIONS", "/m", ("any", {})),
        ("HEAD", "/only-get", ("only-get", {})),
        ("POST", "/only-get", MethodNotAllowed(("GET", "HEAD"))),
        ("HEAD", "/head", ("head", {})),  # an explicit HEAD route wins over the GET fallback
        ("GET", "/head", ("get", {})),
        ("BREW", "/any", ("any-only", {})),
        ("PUT", "/first", ("first", {})),
        ("GET", "/first", MethodNotAllowed(("PUT",))),
        ("HEAD", "/first", MethodNotAllowed(("PUT",))),
    ],
)
def test_match_methods(method: str, path: str, expected: object) -> None:
    assert resolve(METHOD_ROUTES, method, path) == expected


@pytest.mark.parametrize(
    ("routes", "method", "path", "allow"),
    [
        ([route("/x", "POST", "PUT")], "GET", "/x", ("POST", "PUT")),
        ([route("/x", "PUT"), route("/x", "DELETE"), route("/x", "GET")], "POST", "/x", ("DELETE", "GET", "HEAD", "PUT")),
        ([route("/x", "GET", "HEAD")], "POST", "/x", ("GET", "HEAD")),
        ([route("/x/{id}", "DELETE")], "GET", "/x/1", ("DELETE",)),
        ([route("/f/{p:path}", "PUT")], "GET", "/f/a/b", ("PUT",)),
        ([route("/", "POST")], "GET", "/", ("POST",)),
    ],
)
def test_method_not_allowed_allow_list(routes: list[Route], method: str, path: str, allow: tuple[str, ...]) -> None:
    assert Router(routes).match(method, path) == MethodNotAllowed(allow)


def test_405_keeps_backtracking_for_a_full_match() -> None:
    routes = [route("/a/b", "POST"), route("/a/{x}", "GET")]
    assert resolve(routes, "GET", "/a/b") == ("/a/{x}", {"x": "b"})
    # Allow names every method some route takes for this path
    assert resolve(routes, "DELETE", "/a/b") == MethodNotAllowed(("GET", "HEAD", "POST"))
    routes = [route("/a/{x:int}", "POST"), route("/a/{x}", "PUT"), route("/a/{r:path}", "GET")]
    assert resolve(routes, "GET", "/a/1") == ("/a/{r:path}", {"r": "1"})
    assert resolve(routes, "PUT", "/a/1") == ("/a/{x}", {"x": "1"})
    assert resolve(routes, "PATCH", "/a/1") == MethodNotAllowed(("GET", "HEAD", "POST", "PUT"))
    assert resolve(routes, "PATCH", "/a/z") == MethodNotAllowed(("GET", "HEAD", "PUT"))


def test_404_when_nothing_matches_even_if_a_prefix_does() -> None:
    routes = [route("/a/b", "POST")]
    assert resolve(routes, "GET", "/a") is None
    assert resolve(routes, "GET", "/a/b/c") is None


def test_methods_are_normalised_at_construction() -> None:
    assert resolve([Route("/x", frozenset({"get", "any"}), None, "p")], "DELETE", "/x") == ("p", {})
    assert resolve([Route("/x", frozenset({"post"}), None, "p")], "GET", "/x") == MethodNotAllowed(("POST",))


# --------------------------------------------------------------------------- matching: hosts

HOST_ROUTES = [
    route("/h", "GET", payload="default"),
    route("/h", "GET", host="api.example.com", payload="api"),
    route("/h", "GET", host="*.example.com", payload="wild"),
    route("/h", "POST", host="admin.*", payload="admin-post"),
    route("/only-host", "GET", host="*.internal", payload="internal"),
    route("/mixed", "ANY", host="*.example.com", payload="host-any"),
    route("/mixed", "GET", payload="plain-get"),
    route("/mixed", "DELETE", payload="plain-delete"),
    route("/q", "GET", host="v?.example.com", payload="q"),
    route("/set", "GET", host="[ab]*.example.com", payload="set"),
]


@pytest.mark.parametrize(
    ("method", "path", "host", "expected"),
    [
        ("GET", "/h", "", ("default", {})),
        ("GET", "/h", "other.org", ("default", {})),
        ("GET", "/h", "api.example.com", ("api", {})),  # first matching host route in blueprint order
        ("GET", "/h", "API.Example.COM", ("api", {})),  # case-insensitive
        ("GET", "/h", "api.example.com:8443", ("api", {})),  # port ignored
        ("GET", "/h", "api.example.com.", ("api", {})),  # trailing root dot ignored
        ("GET", "/h", "www.example.com", ("wild", {})),
        ("GET", "/h", "a.b.example.com", ("wild", {})),  # '*' crosses dots
        ("GET", "/h", "example.com", ("default", {})),
        ("POST", "/h", "admin.example.com", ("admin-post", {})),
        ("POST", "/h", "www.example.com", MethodNotAllowed(("GET", "HEAD"))),
        ("PUT", "/h", "admin.example.com", MethodNotAllowed(("GET", "HEAD", "POST"))),
        ("GET", "/only-host", "db.internal", ("internal", {})),
        ("GET", "/only-host", "db.internal:5432", ("internal", {})),
        ("GET", "/only-host", "db.external", None),  # host mismatch is not a path match
        ("POST", "/only-host", "db.internal", MethodNotAllowed(("GET", "HEAD"))),
        ("POST", "/only-host", "", None),
        # a matching host route wins over host-less ones, even with ANY...
        ("GET", "/mixed", "www.example.com", ("host-any", {})),
        # ...but host-less routes still serve other hosts
        ("GET", "/mixed", "other.org", ("plain-get", {})),
        ("POST", "/mixed", "other.org", MethodNotAllowed(("DELETE", "GET", "HEAD"))),
        ("GET", "/q", "v1.example.com", ("q", {})),
        ("GET", "/q", "v10.example.com", None),
        ("GET", "/set", "b2.example.com", ("set", {})),
        ("GET", "/set", "c2.example.com", None),
    ],
)
def test_match_hosts(method: str, path: str, host: str, expected: object) -> None:
    assert resolve(HOST_ROUTES, method, path, host) == expected


def test_host_route_without_method_falls_back_to_host_less_route() -> None:
    routes = [route("/x", "GET", host="api.*", payload="api-get"), route("/x", "POST", payload="plain-post")]
    assert resolve(routes, "POST", "/x", "api.example.com") == ("plain-post", {})
    assert resolve(routes, "PUT", "/x", "api.example.com") == MethodNotAllowed(("GET", "HEAD", "POST"))
    assert resolve(routes, "PUT", "/x", "www.example.com") == MethodNotAllowed(("POST",))


def test_host_route_uses_get_for_head_before_host_less_head() -> None:
    routes = [route("/x", "HEAD", payload="plain-head"), route("/x", "GET", host="*", payload="host-get")]
    assert resolve(routes, "HEAD", "/x", "a.b") == ("host-get", {})


def test_ipv6_host_with_port() -> None:
    # '[' opens a character class in a glob, so an IPv6 literal escapes it as '[[]'
    routes = [route("/x", "GET", host="[[]::1]", payload="v6")]
    assert resolve(routes, "GET", "/x", "[::1]:8080") == ("v6", {})
    assert resolve(routes, "GET", "/x", "[::1]") == ("v6", {})


def test_host_mismatch_at_preferred_leaf_backtracks_to_param() -> None:
    routes = [route("/u/me", "GET", host="api.*", payload="me"), route("/u/{id}", "GET", payload="id")]
    assert resolve(routes, "GET", "/u/me", "api.x") == ("me", {})
    assert resolve(routes, "GET", "/u/me", "www.x") == ("id", {"id": "me"})


# --------------------------------------------------------------------------- Router misc


def test_invalid_template_raises_at_construction() -> None:
    with pytest.raises(ValueError, match="whole segment"):
        Router([route("/ok"), route("/file.{ext}")])


def test_empty_router_matches_nothing() -> None:
    assert Router([]).match("GET", "/") is None


def test_payload_is_returned_untouched() -> None:
    payload = {"endpoint": object()}
    result = Router([Route("/x", frozenset({"GET"}), None, payload)]).match("GET", "/x")
    assert isinstance(result, Match) and result.route.payload is payload


def test_a_root_catch_all_also_answers_the_root() -> None:
    catch_all = Router([route("/{rest:path}", "ANY")])
    assert catch_all.match("GET", "/") == Match(catch_all.routes[0], {"rest": ""})
    assert catch_all.match("GET", "/a/b") == Match(catch_all.routes[0], {"rest": "a/b"})
    # the root's own endpoint still wins, and a deeper {x:path} still needs a segment
    both = Router([route("/{rest:path}"), route("/")])
    assert both.match("GET", "/") == Match(both.routes[1], {})
    deeper = Router([route("/files/{rest:path}")])
    assert deeper.match("GET", "/files") is None
    assert deeper.match("GET", "/files/") is None
    # the root answered by the catch-all for GET only: another method is a 405 with its Allow
    assert catch_all.match("DELETE", "/") == Match(catch_all.routes[0], {"rest": ""})
    get_only = Router([route("/{rest:path}", "GET")])
    assert isinstance(get_only.match("POST", "/"), MethodNotAllowed)
