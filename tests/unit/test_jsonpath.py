"""Dotted JSON paths: the syntax, and get/set/remove/rename over nested objects and arrays."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from backworks_core.jsonpath import (
    EACH,
    Index,
    Key,
    check_rename,
    find,
    format_path,
    get,
    parse_path,
    remove,
    rename,
    set_value,
)

# -- syntax -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, steps",
    [
        ("a", (Key("a"),)),
        ("a.b.c", (Key("a"), Key("b"), Key("c"))),
        ("a.b[0].c", (Key("a"), Key("b"), Index(0), Key("c"))),
        ("items[*].price", (Key("items"), EACH, Key("price"))),
        ("matrix[*][*]", (Key("matrix"), EACH, EACH)),
        ("matrix[1][-1]", (Key("matrix"), Index(1), Index(-1))),
        ("[0].id", (Index(0), Key("id"))),
        ("[*]", (EACH,)),
        ('["a.b"].c', (Key("a.b"), Key("c"))),
        ('meta["first name"]', (Key("meta"), Key("first name"))),
        ('a["x\\"y"]', (Key("a"), Key('x"y'))),
        ('a["caf\\u00e9"]', (Key("a"), Key("café"))),
        ('a[""]', (Key("a"), Key(""))),
        ("名前.姓", (Key("名前"), Key("姓"))),
        ("a.0", (Key("a"), Key("0"))),
        ("a-b_c.$x", (Key("a-b_c"), Key("$x"))),
    ],
)
def test_parse_path(text: str, steps: tuple) -> None:
    assert parse_path(text) == steps
    assert parse_path(format_path(steps)) == steps


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "a JSON path cannot be empty"),
        ("a..b", "invalid JSON path 'a..b': empty key at character 3"),
        ("a.", "empty key after '.'"),
        (".a", "empty key at character 1"),
        ("a[", "unclosed '['"),
        ("a[x]", "expected an index, * or a quoted key inside [], got 'x'"),
        ("a[]", "expected an index, * or a quoted key inside [], got ''"),
        ("a[1.5]", "got '1.5'"),
        ("a.*", "use [*] for every element of an array"),
        ("*", "use [*] for every element of an array"),
        ("$.a", "paths start at the body's root without '$'"),
        ("$", "without '$'"),
        ("a b", "whitespace in a key"),
        ("a.[0]", "write a[0] or a[\"k\"], not a.[0]"),
        ('a["x]', "bad quoted key (Unterminated string"),
        ('a["x"', "expected ']'"),
        ("a]", "unexpected ']'"),
        ('a"b', "unexpected '\"'"),
        ("a[0]b", "expected '.' or '[' between steps"),
    ],
)
def test_parse_path_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_path(text)
    assert message in str(info.value)


@pytest.mark.parametrize("text", ["a.b", "a[0]", '["a.b"]', '["$"]', '["*"]', '["a b"]', "[*].x", "名前"])
def test_format_round_trips(text: str) -> None:
    assert format_path(parse_path(text)) == text


# -- reading ----------------------------------------------------------------------------------

DOC: dict[str, Any] = {
    "a": {"b": [{"c": 1}, {"c": 2}, {"d": 3}]},
    "matrix": [[1, 2], [3, 4]],
    "名前": {"姓": "山田"},
    "a.b": "dotted",
}


@pytest.mark.parametrize(
    "text, found",
    [
        ("a.b[0].c", [1]),
        ("a.b[-1].d", [3]),
        ("a.b[*].c", [1, 2]),
        ("a.b[9].c", []),
        ("a.x.y", []),
        ("matrix[*][*]", [1, 2, 3, 4]),
        ("matrix[*][1]", [2, 4]),
        ("名前.姓", ["山田"]),
        ('["a.b"]', ["dotted"]),
        ("a[*]", []),  # [*] matches arrays only
        ("a.b.c", []),  # a key on an array
    ],
)
def test_find(text: str, found: list) -> None:
    assert find(DOC, parse_path(text)) == found


def test_get_returns_the_first_value_or_a_default() -> None:
    assert get(DOC, parse_path("a.b[*].c")) == 1
    assert get(DOC, parse_path("nope"), "default") == "default"


# -- set --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc, text, value, expected, changed",
    [
        ({}, "a", 1, {"a": 1}, 1),
        ({"a": 1}, "a", {"x": [1]}, {"a": {"x": [1]}}, 1),
        ({}, "meta.source", "gw", {"meta": {"source": "gw"}}, 1),
        ({"meta": None}, "meta.source", "gw", {"meta": {"source": "gw"}}, 1),
        ({"meta": {"v": 1}}, "meta.source", "gw", {"meta": {"v": 1, "source": "gw"}}, 1),
        ({"l": [1, 2]}, "l[1]", 9, {"l": [1, 9]}, 1),
        ({"l": [1, 2]}, "l[-1]", 9, {"l": [1, 9]}, 1),
        ({"l": [1, 2]}, "l[*]", 0, {"l": [0, 0]}, 2),
        ({"l": []}, "l[*].x", 0, {"l": []}, 0),
        (
            {"items": [{"p": 1}, {"p": 2}]},
            "items[*].tag",
            "t",
            {"items": [{"p": 1, "tag": "t"}, {"p": 2, "tag": "t"}]},
            2,
        ),
        (
            {"orders": [{"lines": [{"q": 1}, {"q": 2}]}, {"lines": [{"q": 3}]}]},
            "orders[*].lines[*].q",
            0,
            {"orders": [{"lines": [{"q": 0}, {"q": 0}]}, {"lines": [{"q": 0}]}]},
            3,
        ),
        ({"m": [[1, 2], [3]]}, "m[*][0]", 0, {"m": [[0, 2], [0]]}, 2),
        ({"l": [None, {}]}, "l[*].x.y", 1, {"l": [{"x": {"y": 1}}, {"x": {"y": 1}}]}, 2),
        ([{"id": 1}, {"id": 2}], "[*].ok", True, [{"id": 1, "ok": True}, {"id": 2, "ok": True}], 2),
        ({}, "名前.姓", "山田", {"名前": {"姓": "山田"}}, 1),
        ({}, '["a.b"]', "x", {"a.b": "x"}, 1),
    ],
)
def test_set_value(doc: Any, text: str, value: Any, expected: Any, changed: int) -> None:
    outcome = set_value(doc, parse_path(text), value)
    assert (doc, outcome.changed, outcome.problems) == (expected, changed, [])


@pytest.mark.parametrize(
    "doc, text, problem",
    [
        ({"l": [1, 2]}, "l[2]", "index 2 is out of range at l (the array has 2 elements)"),
        ({"l": [1]}, "l[-2].x", "index -2 is out of range at l (the array has 1 element)"),
        ({"a": "text"}, "a.b", "expected an object at a, found a string"),
        ({"a": {"b": 1}}, "a[0]", "expected an array at a, found an object"),
        ({}, "l[0]", "l is missing; only objects are created, not arrays"),
        ({"l": None}, "l[0].x", "l is null; only objects are created, not arrays"),
        ("just a string", "a", "expected an object at the root, found a string"),
        ({"l": [{"x": 1}, 5]}, "l[*].x", "expected an object at l[1], found a number"),
    ],
)
def test_set_value_problems_leave_the_place_alone(doc: Any, text: str, problem: str) -> None:
    before = copy.deepcopy(doc)
    outcome = set_value(doc, parse_path(text), 7)
    assert outcome.problems == [problem]
    if not isinstance(doc, list) and text != "l[*].x":
        assert doc == before


def test_set_value_gives_every_place_its_own_copy() -> None:
    doc = {"l": [{}, {}]}
    set_value(doc, parse_path("l[*].meta"), {"tags": []})
    doc["l"][0]["meta"]["tags"].append("x")
    assert doc["l"][1]["meta"] == {"tags": []}


# -- remove -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc, text, expected, count",
    [
        ({"a": 1, "b": 2}, "a", {"b": 2}, 1),
        ({"a": 1}, "missing", {"a": 1}, 0),
        ({"a": {"b": 1}}, "a.b.c", {"a": {"b": 1}}, 0),
        ({"a": "s"}, "a[0]", {"a": "s"}, 0),
        ({"l": [1, 2, 3]}, "l[0]", {"l": [2, 3]}, 1),
        ({"l": [1, 2, 3]}, "l[-1]", {"l": [1, 2]}, 1),
        ({"l": [1, 2, 3]}, "l[5]", {"l": [1, 2, 3]}, 0),
        ({"l": [1, 2, 3]}, "l[*]", {"l": []}, 3),
        ({"u": [{"pw": 1, "n": "a"}, {"n": "b"}]}, "u[*].pw", {"u": [{"n": "a"}, {"n": "b"}]}, 1),
        (
            {"o": [{"l": [{"s": 1, "k": 1}]}, {"l": [{"s": 2}, {"k": 2}]}]},
            "o[*].l[*].s",
            {"o": [{"l": [{"k": 1}]}, {"l": [{}, {"k": 2}]}]},
            2,
        ),
        ({"名前": {"姓": "山田", "名": "太郎"}}, "名前.姓", {"名前": {"名": "太郎"}}, 1),
        ([{"a": 1}], "[0].a", [{}], 1),
    ],
)
def test_remove(doc: Any, text: str, expected: Any, count: int) -> None:
    assert remove(doc, parse_path(text)) == count
    assert doc == expected


# -- rename -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc, source, target, expected",
    [
        ({"a": 1, "b": 2, "c": 3}, "b", "z", {"a": 1, "z": 2, "c": 3}),
        ({"a": 1, "b": 2}, "a", "b", {"b": 1}),
        ({"a": 1}, "missing", "b", {"a": 1}),
        ({"user": {"pw": "x"}}, "user.pw", "secret.pw", {"user": {}, "secret": {"pw": "x"}}),
        (
            {"items": [{"price": 1, "n": "a"}, {"n": "b"}, {"price": 3}]},
            "items[*].price",
            "items[*].cost",
            {"items": [{"cost": 1, "n": "a"}, {"n": "b"}, {"cost": 3}]},
        ),
        (
            {"o": [{"l": [{"a": 1}, {"a": 2}]}]},
            "o[*].l[*].a",
            "o[*].l[*].meta.a",
            {"o": [{"l": [{"meta": {"a": 1}}, {"meta": {"a": 2}}]}]},
        ),
        ({"l": [{"a": 1}, {"a": 2}]}, "l[1].a", "l[1].b", {"l": [{"a": 1}, {"b": 2}]}),
        ({"名前": "山田"}, "名前", "name", {"name": "山田"}),
    ],
)
def test_rename(doc: Any, source: str, target: str, expected: Any) -> None:
    outcome = rename(doc, parse_path(source), parse_path(target))
    assert outcome.problems == []
    assert doc == expected
    assert list(doc) == list(expected)  # positions kept


def test_rename_that_cannot_create_the_target_keeps_the_source() -> None:
    doc = {"a": 1, "b": "text"}
    outcome = rename(doc, parse_path("a"), parse_path("b.c"))
    assert outcome.problems == ["expected an object at b, found a string"]
    assert doc == {"a": 1, "b": "text"}


@pytest.mark.parametrize(
    "source, target, message",
    [
        ("a[0]", "b", "both paths must end with an object key"),
        ("a", "b[*]", "both paths must end with an object key"),
        ("a", "a", "one path contains the other"),
        ("a", "a.b", "one path contains the other"),
        ("a.b", "a", "one path contains the other"),
        ("items[*].a", "other[*].a", "the same up to the last [*]"),
        ("items[*].a", "b", "the same up to the last [*]"),
        ("a", "items[*].b", "the target has a [*] the source does not"),
    ],
)
def test_check_rename(source: str, target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("*", r"\*").replace("]", r"\]")):
        check_rename(parse_path(source), parse_path(target))


@pytest.mark.parametrize(
    "source, target, doc",
    [
        ("a", "b", {"a": "v"}),
        ("items[*].a", "items[*].b", {"items": [{"a": "v"}]}),
        ("x[*].a", "x[*].m.a", {"x": [{"a": "v"}]}),
        ("a.b", "c.d", {"a": {"b": "v"}}),
    ],
)
def test_check_rename_accepts(source: str, target: str, doc: dict) -> None:
    check_rename(parse_path(source), parse_path(target))
    # ...and such a rename really moves the value: found at the target, gone from the source
    rename(doc, parse_path(source), parse_path(target))
    assert find(doc, parse_path(target)) == ["v"] and find(doc, parse_path(source)) == []
