"""The YAML loader keeps positions, reports every source problem, and substitutes ${VAR}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backworks_core.diagnostics import BlueprintError, Diagnostic
from backworks_core.source import Position, SourceDocument, load_file, parse_yaml, substitute_env


def parse(text: str, env: dict[str, str] | None = None) -> SourceDocument:
    return parse_yaml(text, "bp.yaml", env or {})


def rendered(doc: SourceDocument) -> list[str]:
    return [str(d) for d in doc.diagnostics]


# --------------------------------------------------------------------------------------
# Plain values


def test_scalars_keep_their_yaml_types() -> None:
    doc = parse(
        "int: 30\n"
        "float: 0.5\n"
        "bool: true\n"
        "null_tilde: ~\n"
        "empty:\n"
        "quoted_int: '30'\n"
        "string: hello\n"
        "date: 2024-01-01\n"
        "status_map: {404: 200, '500': 503}\n"
        "list: [1, two, 3.0]\n"
    )
    assert doc.diagnostics == []
    assert doc.data == {
        "int": 30,
        "float": 0.5,
        "bool": True,
        "null_tilde": None,
        "empty": None,
        "quoted_int": "30",
        "string": "hello",
        "date": "2024-01-01",  # dates stay text: the blueprint holds plain values only
        "status_map": {404: 200, "500": 503},
        "list": [1, "two", 3.0],
    }
    assert type(doc.data["int"]) is int and type(doc.data["bool"]) is bool
    assert list(doc.data["status_map"]) == [404, "500"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_document_has_no_data_and_no_diagnostics(text: str) -> None:
    doc = parse(text)
    assert doc.data is None
    assert doc.diagnostics == []
    assert doc.locate(("name",)).line >= 1


# --------------------------------------------------------------------------------------
# Positions

POSITIONS_YAML = """\
name: demo
endpoints:
  - path: /a
    config:
      proxy:
        upstream: http://u
  - path: /b
    tags: [x, y]
empty:
"""


@pytest.mark.parametrize(
    ("loc", "value_at", "key_at"),
    [
        ((), (1, 1), None),
        (("name",), (1, 7), (1, 1)),
        (("endpoints",), (3, 3), (2, 1)),
        (("endpoints", 0), (3, 5), None),
        (("endpoints", 0, "path"), (3, 11), (3, 5)),
        (("endpoints", 0, "config"), (5, 7), (4, 5)),
        (("endpoints", 0, "config", "proxy", "upstream"), (6, 19), (6, 9)),
        (("endpoints", 1, "tags", 1), (8, 15), None),
        (("empty",), (9, 7), (9, 1)),
    ],
)
def test_every_key_and_value_has_a_position(
    loc: tuple[Any, ...], value_at: tuple[int, int], key_at: tuple[int, int] | None
) -> None:
    doc = parse(POSITIONS_YAML)
    assert doc.value_positions[loc] == Position(*value_at)
    assert doc.key_positions.get(loc) == (Position(*key_at) if key_at else None)


@pytest.mark.parametrize(
    ("loc", "prefer_key", "expected"),
    [
        (("endpoints", 0, "path"), False, (3, 11)),
        (("endpoints", 0, "path"), True, (3, 5)),
        # a missing key is located at the nearest mapping that exists
        (("endpoints", 0, "config", "proxy", "timeout"), False, (6, 9)),
        (("endpoints", 0, "config", "proxy", "timeout"), True, (6, 9)),
        (("endpoints", 7, "path"), False, (3, 3)),
        (("nowhere", "at", "all"), False, (1, 1)),
        # prefer_key on an item without a key falls back to the value
        (("endpoints", 1), True, (7, 5)),
    ],
)
def test_locate_walks_up_to_the_nearest_known_position(
    loc: tuple[Any, ...], prefer_key: bool, expected: tuple[int, int]
) -> None:
    assert parse(POSITIONS_YAML).locate(loc, prefer_key=prefer_key) == Position(*expected)


def test_locate_falls_back_to_the_start_of_the_file() -> None:
    assert SourceDocument("bp.yaml", None).locate(("a", 0)) == Position(1, 1)


def test_diagnostic_is_located_and_renders_file_line_col_path_message() -> None:
    doc = parse(POSITIONS_YAML)
    diag = doc.diagnostic(("endpoints", 0, "config", "proxy", "upstream"), "bad upstream")
    assert diag == Diagnostic("bp.yaml", 6, 19, "endpoints[0].config.proxy.upstream", "bad upstream")
    assert str(diag) == "bp.yaml:6:19: endpoints[0].config.proxy.upstream: bad upstream"
    warning = doc.diagnostic(("endpoints", 1, "colour"), "unused", severity="warning", prefer_key=True)
    assert str(warning) == "bp.yaml:7:5: warning: endpoints[1].colour: unused"


# --------------------------------------------------------------------------------------
# Duplicate keys and syntax errors


def test_duplicate_keys_are_errors_and_the_last_value_wins() -> None:
    doc = parse("name: a\nport: 1\nname: b\nnested:\n  x: 1\n  x: 2\n  x: 3\n")
    assert doc.data == {"port": 1, "name": "b", "nested": {"x": 3}}
    assert rendered(doc) == [
        "bp.yaml:3:1: name: duplicate key 'name' (first at line 1)",
        "bp.yaml:6:3: nested.x: duplicate key 'x' (first at line 5)",
        "bp.yaml:7:3: nested.x: duplicate key 'x' (first at line 6)",
    ]
    assert doc.value_positions[("name",)] == Position(3, 7)


def test_duplicate_int_keys_are_reported_with_their_key_path() -> None:
    doc = parse("status_map:\n  404: 200\n  404: 204\n")
    assert doc.data == {"status_map": {404: 204}}
    assert rendered(doc) == ["bp.yaml:3:3: status_map[404]: duplicate key 404 (first at line 2)"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: b: c\n", "bp.yaml:1:5: invalid YAML: mapping values are not allowed here"),
        (
            "name: x\nlist: [1, 2\nport: 3\n",
            "bp.yaml:3:5: invalid YAML: expected ',' or ']', but got ':' "
            "(while parsing a flow sequence started at line 2, column 7)",
        ),
        (
            "a:\n\tb: 1\n",
            "bp.yaml:2:1: invalid YAML: found character '\\t' that cannot start any token "
            "(while scanning for the next token)",
        ),
        (
            "a: 1\n---\nb: 2\n",
            "bp.yaml:2:1: invalid YAML: expected a single document in the stream, but found another document",
        ),
        ("a: *nope\n", "bp.yaml:1:4: invalid YAML: found undefined alias 'nope'"),
        (
            'a: "unterminated\n',
            "bp.yaml:2:1: invalid YAML: found unexpected end of stream "
            "(while scanning a quoted scalar started at line 1, column 4)",
        ),
        ("a: 1\nb: x\x07y\n", "bp.yaml:2:5: invalid YAML: special characters are not allowed (character U+0007)"),
    ],
)
def test_a_syntax_error_is_one_located_diagnostic_and_no_data(text: str, expected: str) -> None:
    doc = parse(text)
    assert doc.data is None
    assert rendered(doc) == [expected]


# --------------------------------------------------------------------------------------
# Anchors, aliases and merge keys

MERGE_YAML = """\
defaults: &defaults
  timeout: 5s
  retries: 2
  tls: {verify: true}
extra: &extra
  retries: 9
  colour: blue
a:
  <<: *defaults
  retries: 3
b:
  <<: [*extra, *defaults]
c: *defaults
"""


def test_merge_keys_follow_yaml_precedence() -> None:
    doc = parse(MERGE_YAML)
    assert doc.diagnostics == []
    assert doc.data["a"] == {"timeout": "5s", "retries": 3, "tls": {"verify": True}}
    # earlier mappings in a merge list win over later ones
    assert doc.data["b"] == {"retries": 9, "colour": "blue", "timeout": "5s", "tls": {"verify": True}}
    assert doc.data["c"] == doc.data["defaults"]
    assert "<<" not in doc.data["a"]


def test_merged_and_aliased_values_point_at_their_source() -> None:
    doc = parse(MERGE_YAML)
    # an explicit key sits where it is written; a merged one where the anchor defines it
    assert doc.value_positions[("a", "retries")] == Position(10, 12)
    assert doc.value_positions[("a", "timeout")] == Position(2, 12)
    assert doc.key_positions[("a", "tls", "verify")] == Position(4, 9)
    assert doc.value_positions[("b", "retries")] == Position(6, 12)
    # the alias itself is located where it is used, its contents at the anchor
    assert doc.value_positions[("c",)] == Position(13, 4)
    assert doc.value_positions[("c", "retries")] == Position(3, 12)


def test_merge_of_a_scalar_and_recursive_aliases_are_errors() -> None:
    doc = parse("a:\n  <<: 5\n  x: 1\nb: &b\n  self: *b\n")
    assert doc.data == {"a": {"x": 1}, "b": {"self": None}}
    assert rendered(doc) == [
        "bp.yaml:2:7: a: a merge key '<<' needs a mapping or a list of mappings",
        "bp.yaml:5:9: b.self: recursive alias: a value cannot contain itself",
    ]


def test_a_mapping_merging_itself_is_an_error() -> None:
    doc = parse("s: &s\n  <<: *s\n  x: 1\ny:\n  <<: *s\n")
    assert doc.data == {"s": {"x": 1}, "y": {"x": 1}}
    assert rendered(doc) == ["bp.yaml:2:7: s: recursive alias: a mapping cannot merge itself"]


def alias_bomb(levels: int, merge: bool = False) -> str:
    """A "billion laughs": each level uses the previous one nine times (9**levels values)."""
    lines = ["a0: &a0 {k: v}" if merge else "a0: &a0 [lol]"]
    for i in range(1, levels):
        uses = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} {{<<: [{uses}], k{i}: v}}" if merge else f"a{i}: &a{i} [{uses}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("merge", [False, True], ids=["aliases", "merge-keys"])
def test_an_alias_bomb_is_one_located_error_not_a_hang(merge: bool) -> None:
    # Found by tests/reliability/test_blueprint_fuzz.py: 7 levels took 21 s, 9 would take hours.
    doc = parse(alias_bomb(12, merge))
    errors = [d for d in doc.diagnostics if "alias bomb" in d.message]
    assert len(errors) == 1 and errors[0].line >= 1 and errors[0].key_path.startswith("a")
    assert len(doc.value_positions) < 200_000


def test_moderate_alias_reuse_stays_within_the_budget() -> None:
    doc = parse(alias_bomb(5) + alias_bomb(5, merge=True).replace("a", "m"))  # 9**4 = 6561 values
    assert doc.diagnostics == []
    assert len(doc.data["a4"]) == 9 and doc.data["m4"]["k"] == "v"


def test_a_collection_as_a_key_is_an_error_and_the_entry_is_skipped() -> None:
    doc = parse("name: x\n? [a, b]\n: 1\n")
    assert doc.data == {"name": "x"}
    assert rendered(doc) == ["bp.yaml:2:3: a mapping key must be a plain value, not a list or mapping"]
    assert doc.error_locs == set()


def test_unsupported_tags_are_errors() -> None:
    doc = parse("a: !include other.yaml\nb: !!set {x}\n")
    assert rendered(doc) == [
        "bp.yaml:1:4: a: unsupported YAML tag '!include'",
        "bp.yaml:2:4: b: unsupported YAML tag 'tag:yaml.org,2002:set'",
    ]
    assert ("a",) in doc.error_locs


# --------------------------------------------------------------------------------------
# Environment substitution


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${HOST}", {"HOST": "example.com"}, "example.com"),
        ("http://${HOST}:${PORT}/api", {"HOST": "h", "PORT": "80"}, "http://h:80/api"),
        ("${HOST:-localhost}", {}, "localhost"),
        ("${HOST:-localhost}", {"HOST": ""}, "localhost"),  # POSIX ':-' also covers empty
        ("${HOST:-localhost}", {"HOST": "h"}, "h"),
        ("${HOST}", {"HOST": ""}, ""),  # set but empty is not an error
        ("${EMPTY_DEFAULT:-}", {}, ""),
        ("${A:-${B:-deep}}", {}, "deep"),
        ("${A:-${B}}", {"B": "b"}, "b"),
        ("${A:-x:-y}", {}, "x:-y"),
        ("$${HOST}", {"HOST": "h"}, "${HOST}"),
        ("cost: $5 and $HOME and $", {}, "cost: $5 and $HOME and $"),
        ("a$${b}${C}", {"C": "c"}, "a${b}c"),
        ("${_x1}", {"_x1": "ok"}, "ok"),
    ],
)
def test_substitute_env(text: str, env: dict[str, str], expected: str) -> None:
    assert substitute_env(text, env) == (expected, [], [])


def test_an_unused_default_does_not_need_its_variables() -> None:
    assert substitute_env("${A:-${B}}", {"A": "a"}) == ("a", [], [])


@pytest.mark.parametrize(
    ("text", "unset", "problems"),
    [
        ("${A}/${B}/${A}", ["A", "B"], []),
        ("${A:-${B}}", ["B"], []),
        (
            "${1X}",
            [],
            [
                "invalid environment reference '${1X}': write ${NAME} or ${NAME:-default}, "
                "where NAME is letters, digits and _ (write $${ for a literal ${)"
            ],
        ),
        (
            "${A B}",
            [],
            [
                "invalid environment reference '${A B}': write ${NAME} or ${NAME:-default}, "
                "where NAME is letters, digits and _ (write $${ for a literal ${)"
            ],
        ),
        (
            "${A?x}",
            [],
            [
                "invalid environment reference '${A?x}': write ${NAME} or ${NAME:-default}, "
                "where NAME is letters, digits and _ (write $${ for a literal ${)"
            ],
        ),
        ("x${HOST", [], ["unclosed environment reference '${HOST': expected '}' (write $${ for a literal ${)"]),
        ("${H:-abc", [], ["unclosed environment reference '${H:-abc': expected '}' (write $${ for a literal ${)"]),
    ],
)
def test_substitute_env_problems(text: str, unset: list[str], problems: list[str]) -> None:
    _, got_unset, got_problems = substitute_env(text, {})
    assert (got_unset, got_problems) == (unset, problems)


ENV_YAML = """\
name: ${NAME}
port: ${PORT}
upstream: "http://${HOST:-localhost}:${UPSTREAM_PORT}/v1"
literal: 'price $${AMOUNT}'
${KEY}: keys are not substituted
servers:
  - [a, "${FIRST}"]
  - {url: "${SECOND}", weight: 3}
bad: ${oops
"""


def test_env_substitution_in_the_document() -> None:
    env = {"NAME": "demo", "PORT": "8080", "UPSTREAM_PORT": "9000", "FIRST": "one", "SECOND": "two"}
    doc = parse(ENV_YAML.replace("bad: ${oops\n", ""), env)
    assert doc.diagnostics == []
    assert doc.data == {
        "name": "demo",
        "port": "8080",  # a whole-value reference stays a string; the validator coerces it
        "upstream": "http://localhost:9000/v1",
        "literal": "price ${AMOUNT}",
        "${KEY}": "keys are not substituted",
        "servers": [["a", "one"], {"url": "two", "weight": 3}],
    }


def test_every_unset_variable_is_reported_at_its_value() -> None:
    doc = parse(ENV_YAML, {"NAME": "demo"})
    hint = "to give a default)"
    assert rendered(doc) == [
        f"bp.yaml:2:7: port: environment variable PORT is not set (write ${{PORT:-default}} {hint}",
        f"bp.yaml:3:11: upstream: environment variable UPSTREAM_PORT is not set "
        f"(write ${{UPSTREAM_PORT:-default}} {hint}",
        f"bp.yaml:7:9: servers[0][1]: environment variable FIRST is not set (write ${{FIRST:-default}} {hint}",
        f"bp.yaml:8:11: servers[1].url: environment variable SECOND is not set "
        f"(write ${{SECOND:-default}} {hint}",
        "bp.yaml:9:6: bad: unclosed environment reference '${oops': expected '}' (write $${ for a literal ${)",
    ]
    # values with problems keep their text, and are marked so the validator stays quiet there
    assert doc.data["port"] == "${PORT}"
    assert doc.data["servers"][1]["url"] == "${SECOND}"
    assert doc.error_locs == {("port",), ("upstream",), ("servers", 0, 1), ("servers", 1, "url"), ("bad",)}


def test_an_unset_variable_inside_an_anchor_is_reported_once() -> None:
    doc = parse("base: &b\n  url: ${URL}\nx:\n  <<: *b\ny: *b\n")
    assert rendered(doc) == [
        "bp.yaml:2:8: base.url: environment variable URL is not set (write ${URL:-default} to give a default)"
    ]
    assert doc.error_locs == {("base", "url"), ("x", "url"), ("y", "url")}


def test_env_is_substituted_in_merged_values() -> None:
    doc = parse("base: &b\n  url: ${URL}\nx:\n  <<: *b\n", {"URL": "http://u"})
    assert doc.data["x"] == {"url": "http://u"}


# --------------------------------------------------------------------------------------
# Files


def test_load_file_uses_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "blueprint.yaml"
    path.write_text("\ufeffname: ${BW_TEST_NAME}\n", encoding="utf-8")
    monkeypatch.setenv("BW_TEST_NAME", "from-env")
    doc = load_file(path)
    assert doc.filename == str(path)
    assert doc.data == {"name": "from-env"}
    assert load_file(path, {"BW_TEST_NAME": "explicit"}).data == {"name": "explicit"}


def test_load_file_reports_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    doc = load_file(path, {})
    assert doc.data is None
    assert rendered(doc) == [f"{path}: cannot read blueprint: No such file or directory"]


def test_all_source_problems_fit_in_one_blueprint_error() -> None:
    doc = parse("a: ${X}\nb: 1\nb: ${Y}\n")
    error = BlueprintError(doc.diagnostics)
    assert str(error) == (
        "3 errors in blueprint:\n"
        "  bp.yaml:1:4: a: environment variable X is not set (write ${X:-default} to give a default)\n"
        "  bp.yaml:3:1: b: duplicate key 'b' (first at line 2)\n"
        "  bp.yaml:3:4: b: environment variable Y is not set (write ${Y:-default} to give a default)"
    )


# --------------------------------------------------------------------------------------
# Hostile input (found by tests/reliability/test_blueprint_fuzz.py): located errors, never a crash


@pytest.mark.parametrize(
    "text",
    ["a: " + "[" * 5000 + "]" * 5000, "a: " + "{b: " * 600 + "1" + "}" * 600, "".join("  " * i + "k:\n" for i in range(600))],
    ids=["flow-lists", "flow-maps", "block-maps"],
)
def test_deep_nesting_is_a_located_error_not_a_recursion_error(text: str) -> None:
    doc = parse(text)
    assert doc.data is None
    [diagnostic] = doc.diagnostics
    assert diagnostic.line >= 1 and diagnostic.message == "invalid YAML: values nested more than 100 levels deep"


def test_deep_nesting_through_aliases_is_a_located_error() -> None:
    lines = ["a0: &a0 " + "[" * 90 + "]" * 90]
    lines += [f"a{i}: &a{i} " + "[" * 90 + f"*a{i - 1}" + "]" * 90 for i in range(1, 4)]
    doc = parse("\n".join(lines) + "\n")
    assert doc.diagnostics and all("nested more than 100 levels deep (through aliases)" in d.message for d in doc.diagnostics)
    # located at the value that goes past the limit: inside a0, reached from a1
    assert (doc.diagnostics[0].line, doc.diagnostics[0].key_path[:3]) == (1, "a1[")


def test_nesting_up_to_the_limit_is_fine() -> None:
    doc = parse("a: " + "[" * 99 + "]" * 99 + "\n")
    assert doc.diagnostics == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: !!int x\n", "bp.yaml:1:4: a: cannot read 'x' as int"),
        ("a: !!float abc\n", "bp.yaml:1:4: a: cannot read 'abc' as float"),
        ("a: !!bool maybe\n", "bp.yaml:1:4: a: cannot read 'maybe' as bool"),
        ("a: " + "1" * 5000 + "\n", "bp.yaml:1:4: a: cannot read '1111111111111111111111111111111111111...' as int"),
        ("a: 0x" + "f" * 5000 + "\n", "bp.yaml:1:4: a: a number of 5002 characters is too long (at most 1000)"),
        ("a: !!binary aGVsbG8=\n", "bp.yaml:1:4: a: unsupported YAML tag 'tag:yaml.org,2002:binary'"),
        ("? !!int x\n: 1\n", "bp.yaml:1:3: cannot read 'x' as int"),
    ],
)
def test_scalars_that_cannot_be_built_are_located_errors(text: str, expected: str) -> None:
    assert rendered(parse(text)) == [expected]


def test_a_file_that_is_not_utf8_is_located_at_its_first_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: ok\ndescription: caf\xe9 \xff\n".encode("latin-1"))
    doc = load_file(path, {})
    assert doc.data is None
    assert rendered(doc) == [f"{path}:2:17: cannot read blueprint: byte 0xe9 is not UTF-8 (invalid continuation byte); a blueprint is UTF-8 text"]
