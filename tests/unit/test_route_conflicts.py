"""Route conflict checks: duplicate routes (errors) and overlapping host globs (warnings)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from backworks_core.route_conflicts import Conflict, check_routes
from backworks_core.router import Match, Route, Router
from tests.unit.test_router import resolve, route  # the same terse builders




def conflicts(routes: Sequence[Route]) -> list[tuple[str, int, int]]:
    return [(c.severity, c.first, c.second) for c in check_routes(routes)]


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        # exact duplicates
        ([route("/u/{id}", "GET"), route("/u/{id}", "GET")], [("error", 0, 1)]),
        ([route("/u/{id}", "GET"), route("/u/:other", "GET")], [("error", 0, 1)]),  # names do not matter
        ([route("/u/{id}", "GET", "POST"), route("/u/{x}", "POST", "PUT")], [("error", 0, 1)]),
        ([route("/h/", "GET"), route("/h", "GET")], [("error", 0, 1)]),
        ([route("/caf%C3%A9", "GET"), route("/café", "GET")], [("error", 0, 1)]),
        ([route("/x", "ANY"), route("/x", "ANY")], [("error", 0, 1)]),
        ([route("/x", "get"), route("/x", "GET")], [("error", 0, 1)]),
        ([route("/x", "GET", host="API.example.com"), route("/x", "GET", host="api.example.com")], [("error", 0, 1)]),
        # three copies: both later ones are reported against the first
        ([route("/x"), route("/x"), route("/x")], [("error", 0, 1), ("error", 0, 2)]),
        # not conflicts
        ([route("/u/{id}", "GET"), route("/u/{id}", "POST")], []),
        ([route("/x", "GET"), route("/x", "ANY")], []),  # explicit beats ANY
        ([route("/x", "GET"), route("/x", "HEAD")], []),
        ([route("/u/{id}", "GET"), route("/u/{id:int}", "GET")], []),  # constrained beats plain
        ([route("/u/{id:int}", "GET"), route("/u/{id:uuid}", "GET")], []),
        ([route("/u/me", "GET"), route("/u/{id}", "GET")], []),
        ([route("/a/{x}/c", "GET"), route("/a/b/{y}", "GET")], []),  # settled by precedence
        ([route("/f/{p:path}", "GET"), route("/f/{x}", "GET")], []),
        ([route("/x", "GET"), route("/x", "GET", host="api.*")], []),  # host route wins
        ([route("/a/b"), route("/a%2Fb")], []),
        # ambiguous hosts
        ([route("/x", host="*.example.com"), route("/x", host="api.*")], [("warning", 0, 1)]),
        ([route("/x", host="api.example.com"), route("/x", host="*.example.com")], [("warning", 0, 1)]),
        ([route("/x", host="*"), route("/x", host="**")], [("warning", 0, 1)]),
        # disjoint hosts are fine
        ([route("/x", host="a.example.com"), route("/x", host="b.example.com")], []),
        ([route("/x", host="*.example.com"), route("/x", host="*.example.org")], []),
        ([route("/x", host="a.example.org"), route("/x", host="*.example.com")], []),
        ([route("/x", host="[!a]*"), route("/x", host="a*")], []),
        ([route("/x", host="v?"), route("/x", host="v??")], []),
        ([route("/x", "GET", host="*"), route("/x", "POST", host="*.com")], []),  # methods do not overlap
        ([route("/x", "GET", host="*"), route("/x", "ANY", host="*.com")], []),
    ],
)
def test_check_routes_table(routes: list[Route], expected: list[tuple[str, int, int]]) -> None:
    assert conflicts(routes) == expected


def test_duplicate_message_names_method_template_and_endpoint() -> None:
    routes = [route("/a"), route("/b"), route("/users/{id}", "GET"), route("/users/{uid}", "GET", "POST")]
    [conflict] = check_routes(routes)
    assert conflict == Conflict(
        "error",
        2,
        3,
        "duplicate route: GET /users/{uid} is already defined by endpoint 2 (as /users/{id})",
    )


def test_duplicate_message_lists_every_shared_method_once() -> None:
    [conflict] = check_routes([route("/x", "GET", "PUT", host="api.x"), route("/x", "PUT", "GET", host="API.x")])
    assert conflict.message == "duplicate route: GET, PUT /x for host 'API.x' is already defined by endpoint 0"


def test_warning_message_gives_an_example_host_and_the_winner() -> None:
    [conflict] = check_routes([route("/x", "GET", host="*.example.com"), route("/x", "GET", host="api.*")])
    assert conflict.severity == "warning"
    assert "ambiguous route: GET /x for host 'api.*' overlaps endpoint 0" in conflict.message
    assert "'api.example.com'" in conflict.message
    assert conflict.message.endswith("goes to endpoint 0")


def test_warning_example_host_really_matches_both_and_router_agrees() -> None:
    import re

    routes = [route("/x", "GET", host="*-[0-9]?.svc.*"), route("/x", "GET", host="db-*.svc.local")]
    [conflict] = check_routes(routes)
    witness = re.search(r"e\.g\. '([^']*)'", conflict.message)
    assert witness is not None
    assert resolve(routes, "GET", "/x", witness.group(1)) == ("/x", {})
    assert Router(routes).match("GET", "/x", witness.group(1)).route is routes[0]  # type: ignore[union-attr]


def test_error_and_warning_in_one_check_sorted_by_later_route() -> None:
    routes = [
        route("/x", "GET", host="*.a"),
        route("/y", "GET"),
        route("/x", "GET", host="b.a"),
        route("/y", "GET"),
    ]
    assert conflicts(routes) == [("warning", 0, 2), ("error", 1, 3)]


def test_check_routes_rejects_invalid_templates() -> None:
    with pytest.raises(ValueError, match="must start with"):
        check_routes([route("nope")])


def test_check_routes_finds_the_one_conflict_among_ten_thousand_routes() -> None:
    routes = [route(f"/r{i}/{{id}}", "GET", "POST") for i in range(10_000)]
    routes += [route("/r5/{x}", "POST"), route("/shared", "GET", host=None)]
    routes += [route("/tenant", "GET", host=f"t{i}.example.com") for i in range(2_000)]
    # Speed is measured in bench/route_matching.py, never asserted here.
    assert conflicts(routes) == [("error", 5, 10_000)]
