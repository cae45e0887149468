"""Value templates: syntax, lookups, single-pass safety, clock sharing and load-time errors."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs

import pytest

from backworks_core.templates import (
    CompiledValue,
    Template,
    TemplateContext,
    TemplateError,
    compile_template,
    compile_value,
    has_crlf,
)

FIXED = datetime(2026, 11, 22, 3, 4, 5, 123456, tzinfo=timezone.utc)
FIXED_TEXT = "2026-11-22T03:04:05.123Z"
VALID_FORMS = (
    "{{now}}",
    "{{uuid}}",
    "{{path.NAME}}",
    "{{query.NAME}}",
    "{{header.NAME}}",
    "{{auth.CLAIM}}",
    "{{env.NAME}}",
)
INJECTION = "{{env.SECRET}}"


class CountingClock:
    """A clock that counts reads, to prove `now` is read once per render and lazily."""

    def __init__(self, moments: list[datetime] | None = None) -> None:
        self.moments = moments or [FIXED]
        self.calls = 0

    def __call__(self) -> datetime:
        moment = self.moments[min(self.calls, len(self.moments) - 1)]
        self.calls += 1
        return moment


def sequential_uuids() -> Callable[[], str]:
    """Deterministic uuids: uuid-1, uuid-2, ... so per-occurrence freshness is visible."""
    counter = iter(range(1, 1_000_000))
    return lambda: f"uuid-{next(counter)}"


def make_ctx(**overrides: Any) -> TemplateContext:
    """A fully pinned context; the env never comes from the real process unless asked."""
    base: dict[str, Any] = {
        "path": {"id": "42", "slug": "hello-world"},
        "query": {"page": "2", "q": "café"},
        "headers": {"X-Request-Id": "req-1", "Accept": "application/json"},
        "auth": {
            "sub": "user-7",
            "email": "u@example.com",
            "org": {"id": "org-1", "plan": {"tier": "gold"}},
            "roles": ["admin", "dev"],
            "admin": True,
            "verified": False,
            "age": 42,
            "score": 1.5,
            "nothing": None,
            "https://example.com/tenant": "acme",
        },
        "env": {"STAGE": "test", "SECRET": "s3cr3t"},
        "now": lambda: FIXED,
        "new_uuid": sequential_uuids(),
    }
    base.update(overrides)
    return TemplateContext(**base)


def render(text: str, **overrides: Any) -> str:
    return compile_template(text).render(make_ctx(**overrides))


# ------------------------------------------------------------------------ rendering


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # constants and fast paths
        ("", ""),
        ("plain text", "plain text"),
        ("braces { } and }} alone", "braces { } and }} alone"),
        ("single {brace} ok", "single {brace} ok"),
        # each root
        ("{{now}}", FIXED_TEXT),
        ("{{uuid}}", "uuid-1"),
        ("{{path.id}}", "42"),
        ("{{query.page}}", "2"),
        ("{{query.q}}", "café"),
        ("{{header.X-Request-Id}}", "req-1"),
        ("{{env.STAGE}}", "test"),
        ("{{auth.sub}}", "user-7"),
        # optional whitespace inside the braces
        ("{{ path.id }}", "42"),
        ("{{path.id }}", "42"),
        ("{{\tpath.id\t}}", "42"),
        ("{{  now  }}", FIXED_TEXT),
        # surrounding literals and several expressions
        ("/items/{{path.id}}", "/items/42"),
        ("{{path.id}}-{{path.slug}}", "42-hello-world"),
        ("a{{path.id}}b{{query.page}}c", "a42b2c"),
        ("{{path.id}}{{path.id}}", "4242"),
        ("id={{path.id}}}", "id=42}"),
        # header lookup is case-insensitive, also for plain dicts
        ("{{header.x-request-id}}", "req-1"),
        ("{{header.ACCEPT}}", "application/json"),
        # missing values are empty strings
        ("[{{path.nope}}]", "[]"),
        ("[{{query.nope}}]", "[]"),
        ("[{{header.nope}}]", "[]"),
        ("[{{env.NOPE}}]", "[]"),
        ("[{{auth.nope}}]", "[]"),
        ("[{{auth.org.nope}}]", "[]"),
        ("[{{auth.sub.deeper}}]", "[]"),
        # escape: \{{ is a literal {{, and a lone }} needs none
        ("\\{{path.id}}", "{{path.id}}"),
        ("x \\{{ y }} {{path.id}}", "x {{ y }} 42"),
        ("\\{{now}} vs {{now}}", "{{now}} vs " + FIXED_TEXT),
        ("back\\slash", "back\\slash"),
        ("\\{{", "{{"),
        ("\\{{\\{{", "{{{{"),
    ],
)
def test_render(text: str, expected: str) -> None:
    assert render(text) == expected


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ("sub", "user-7"),
        ("org.id", "org-1"),
        ("org.plan.tier", "gold"),
        ("org.plan", '{"tier":"gold"}'),
        ("roles", '["admin","dev"]'),
        ("roles.0", "admin"),
        ("roles.1", "dev"),
        ("roles.2", ""),
        ("roles.x", ""),
        ("roles.²", ""),  # unicode digits are not list indexes
        ("admin", "true"),
        ("verified", "false"),
        ("age", "42"),
        ("score", "1.5"),
        ("nothing", ""),
        ("https://example.com/tenant", "acme"),
        ("missing", ""),
        ("org.plan.tier.more", ""),
    ],
)
def test_auth_claims(claim: str, expected: str) -> None:
    """Nested claims walk dicts and lists; non-strings render JSON-style."""
    assert render(f"{{{{auth.{claim}}}}}") == expected


def test_auth_prefers_longest_existing_key_then_falls_back() -> None:
    """A namespaced key with dots wins, and a dead-end long key does not hide a nested one."""
    claims = {"a.b": {"x": "flat"}, "a": {"b": {"c": "nested"}}}
    assert render("{{auth.a.b.x}}", auth=claims) == "flat"
    assert render("{{auth.a.b.c}}", auth=claims) == "nested"


def test_no_identity_renders_empty() -> None:
    assert render("<{{auth.sub}}>", auth=None) == "<>"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"tag": "a"}, "a"),
        ({"tag": ["a", "b"]}, "a"),  # parse_qs style: first value
        ({"tag": ("a", "b")}, "a"),
        ({"tag": []}, ""),
        (parse_qs("tag=x&tag=y"), "x"),
        ({"tag": 5}, "5"),
        ({}, ""),
    ],
)
def test_query_first_value(query: Mapping[str, Any], expected: str) -> None:
    assert render("{{query.tag}}", query=query) == expected


def test_query_is_case_sensitive() -> None:
    """Query keys are data chosen by clients; only headers are case-insensitive."""
    assert render("[{{query.Page}}]") == "[]"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Tag": "a"}, "a"),
        ({"x-tag": "a"}, "a"),
        ({"X-TAG": "a"}, "a"),
        ({"X-Tag": ["a", "b"]}, "a, b"),  # repeated fields folded like HTTP does
        ({"Other": "a"}, ""),
    ],
)
def test_header_plain_dict(headers: Mapping[str, Any], expected: str) -> None:
    assert render("{{header.X-Tag}}", headers=headers) == expected


def test_path_and_env_non_string_values() -> None:
    """Plain test dicts may hold numbers; they render like claims do."""
    assert render("{{path.n}}/{{env.FLAG}}", path={"n": 7}, env={"FLAG": True}) == "7/true"


def test_env_defaults_to_live_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    template = compile_template("{{env.BACKWORKS_TEST_VAR}}")
    ctx = TemplateContext()
    monkeypatch.setenv("BACKWORKS_TEST_VAR", "one")
    assert template.render(ctx) == "one"
    monkeypatch.setenv("BACKWORKS_TEST_VAR", "two")
    assert template.render(ctx) == "two"
    monkeypatch.delenv("BACKWORKS_TEST_VAR")
    assert template.render(ctx) == ""


def test_default_context_renders_real_now_and_uuid() -> None:
    text = compile_template("{{now}} {{uuid}}").render(TemplateContext())
    stamp, ident = text.split(" ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", ident)
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs(parsed - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_default_contexts_do_not_share_mappings() -> None:
    """Dataclass defaults are per instance, so one request cannot leak into another."""
    first, second = TemplateContext(), TemplateContext()
    assert first.path is not second.path
    assert first.query is not second.query
    assert first.headers is not second.headers


# -------------------------------------------------------------------------- {{now}}


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (FIXED, FIXED_TEXT),
        (datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "2026-01-02T03:04:05.000Z"),
        # truncated to milliseconds, never rounded up into the next second
        (datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=timezone.utc), "2026-01-02T03:04:05.999Z"),
        # other offsets are converted to UTC
        (
            datetime(2026, 1, 2, 1, 0, 0, 5000, tzinfo=timezone(timedelta(hours=-5))),
            "2026-01-02T06:00:00.005Z",
        ),
        (
            datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
            "2025-12-31T23:30:00.000Z",
        ),
        # a naive clock is taken as UTC
        (datetime(2026, 1, 2, 3, 4, 5, 7000), "2026-01-02T03:04:05.007Z"),
        (datetime(999, 1, 2, 3, 4, 5, tzinfo=timezone.utc), "0999-01-02T03:04:05.000Z"),
    ],
)
def test_now_format(moment: datetime, expected: str) -> None:
    assert render("{{now}}", now=lambda: moment) == expected


def test_now_read_once_per_value_render_and_lazily() -> None:
    clock = CountingClock([FIXED, FIXED + timedelta(seconds=1)])
    value = compile_value(
        {"a": "{{now}}", "b": ["{{now}}", {"c": "at {{now}}"}], "d": "{{now}}{{now}}"}
    )
    ctx = make_ctx(now=clock)
    first = value.render(ctx)
    assert clock.calls == 1
    assert first == {
        "a": FIXED_TEXT,
        "b": [FIXED_TEXT, {"c": "at " + FIXED_TEXT}],
        "d": FIXED_TEXT * 2,
    }
    second = value.render(ctx)
    assert clock.calls == 2
    assert second["a"] == "2026-11-22T03:04:06.123Z"


@pytest.mark.parametrize("source", ["plain", "{{path.id}}", {"a": ["{{uuid}}", 1]}])
def test_clock_not_read_without_now(source: Any) -> None:
    clock = CountingClock()
    compile_value(source).render(make_ctx(now=clock))
    assert clock.calls == 0


def test_uuid_fresh_per_occurrence() -> None:
    value = compile_value({"a": "{{uuid}}", "b": "{{uuid}}/{{uuid}}"})
    ctx = make_ctx()
    assert value.render(ctx) == {"a": "uuid-1", "b": "uuid-2/uuid-3"}
    assert value.render(ctx) == {"a": "uuid-4", "b": "uuid-5/uuid-6"}


# ----------------------------------------------------------------- single-pass safety


@pytest.mark.parametrize(
    ("text", "overrides"),
    [
        ("{{query.q}}", {"query": {"q": INJECTION}}),
        ("{{query.q}}", {"query": {"q": [INJECTION, "x"]}}),
        ("{{header.X-Evil}}", {"headers": {"X-Evil": INJECTION}}),
        ("{{header.x-evil}}", {"headers": {"X-Evil": INJECTION}}),
        ("{{path.id}}", {"path": {"id": INJECTION}}),
        ("{{auth.name}}", {"auth": {"name": INJECTION}}),
        ("{{env.EVIL}}", {"env": {"EVIL": INJECTION, "SECRET": "s3cr3t"}}),
    ],
)
def test_request_values_are_data_not_templates(text: str, overrides: dict[str, Any]) -> None:
    """A client-supplied '{{env.SECRET}}' must come out verbatim, not the secret."""
    out = render(f"<{text}>", **overrides)
    assert out == f"<{INJECTION}>"
    assert "s3cr3t" not in out


def test_injected_value_adjacent_to_later_expression_stays_literal() -> None:
    """A value ending in '{{' cannot pair with the next template's text."""
    out = render("{{query.a}}env.SECRET}}{{path.id}}", query={"a": "{{"})
    assert out == "{{env.SECRET}}42"


def test_injection_inside_compiled_value() -> None:
    value = compile_value({"echo": ["{{query.q}}", {"h": "{{header.x}}"}]})
    out = value.render(make_ctx(query={"q": INJECTION}, headers={"X": "\\" + INJECTION}))
    assert out == {"echo": [INJECTION, {"h": "\\" + INJECTION}]}


# ---------------------------------------------------------------------- load errors


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("{{}}", ["'{{}}'", "empty"]),
        ("{{   }}", ["empty"]),
        ("{{nope}}", ["'{{nope}}'", "unknown name 'nope'"]),
        ("{{NOW}}", ["unknown name 'NOW'", "did you mean {{now}}"]),
        ("{{headers.x}}", ["unknown name 'headers'", "did you mean {{header.x}}"]),
        ("{{paths.id}}", ["did you mean {{path.id}}"]),
        ("{{request.path}}", ["unknown name 'request'"]),
        ("{{path}}", ["'path' needs a name", "{{path.NAME}}"]),
        ("{{path.}}", ["'path' needs a name"]),
        ("{{query}}", ["'query' needs a name"]),
        ("{{header}}", ["'header' needs a name"]),
        ("{{auth}}", ["'auth' needs a name"]),
        ("{{env}}", ["'env' needs a name"]),
        ("{{now.x}}", ["'now' takes no name"]),
        ("{{uuid.v4}}", ["'uuid' takes no name"]),
        ("{{path.a b}}", ["whitespace or braces"]),
        ("{{path.{id}}}", ["whitespace or braces"]),
        ("{{auth.a..b}}", ["empty segment"]),
        ("{{auth..a}}", ["empty segment"]),
        ("{{auth.a.}}", ["empty segment"]),
        ("{{ a {{path.x}} }}", ["'{{' cannot appear inside"]),
        ("{{path.id", ["unclosed '{{' at character 1"]),
        ("hello {{", ["unclosed '{{' at character 7"]),
        ("ok {{path.id}} then {{now", ["unclosed '{{' at character 21"]),
        ("{path.id}}", []),  # not a template at all: no error expected, see below
    ],
)
def test_compile_errors(text: str, fragments: list[str]) -> None:
    if not fragments:
        assert compile_template(text).is_constant
        return
    with pytest.raises(TemplateError) as info:
        compile_template(text)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    for form in VALID_FORMS:  # every message teaches the valid forms
        assert form in message, message
    assert "\\{{" in message  # ... and the escape
    assert info.value.path == ()
    assert info.value.position is not None and info.value.position >= 1


def test_error_is_value_error_with_location() -> None:
    with pytest.raises(ValueError) as info:
        compile_template("abc {{bad}} def")
    err = info.value
    assert isinstance(err, TemplateError)
    assert err.expression == "{{bad}}"
    assert err.position == 5
    assert "at character 5" in err.message


def test_error_message_shortens_long_sources() -> None:
    with pytest.raises(TemplateError) as info:
        compile_template("x" * 5000 + "{{bad}}")
    assert len(str(info.value)) < 500


def test_compile_template_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        compile_template(42)  # type: ignore[arg-type]


# ------------------------------------------------------------------ Template object


@pytest.mark.parametrize(
    ("text", "constant", "references"),
    [
        ("", True, ()),
        ("no braces", True, ()),
        ("\\{{escaped}}", True, ()),
        ("{{now}}", False, (("now", ""),)),
        ("{{uuid}} {{uuid}}", False, (("uuid", ""),)),
        (
            "{{path.id}}/{{query.q}}/{{path.id}}/{{header.A}}/{{auth.a.b}}/{{env.E}}",
            False,
            (
                ("path", "id"),
                ("query", "q"),
                ("header", "A"),
                ("auth", "a.b"),
                ("env", "E"),
            ),
        ),
    ],
)
def test_template_metadata(
    text: str, constant: bool, references: tuple[tuple[str, str], ...]
) -> None:
    template = compile_template(text)
    assert isinstance(template, Template)
    assert template.is_constant is constant
    assert template.references == references
    assert template.source == text


def test_constant_template_does_not_touch_context() -> None:
    """The fast path must not read anything, so even a bogus context is fine."""
    assert compile_template("static").render(None) == "static"  # type: ignore[arg-type]


def test_template_is_reusable_across_contexts() -> None:
    template = compile_template("/users/{{path.id}}")
    assert template.render(make_ctx(path={"id": "1"})) == "/users/1"
    assert template.render(make_ctx(path={"id": "2"})) == "/users/2"


# ------------------------------------------------------------- compile_value / trees


def test_compile_value_renders_tree() -> None:
    value = compile_value(
        {
            "id": "{{path.id}}",
            "{{path.id}}": "keys stay literal",
            "count": 3,
            "ratio": 0.5,
            "ok": True,
            "none": None,
            "items": [{"name": "{{query.page}}", "static": "s"}, "x", 1],
            "empty": {},
            "list": [],
        }
    )
    assert not value.is_constant
    assert value.render(make_ctx()) == {
        "id": "42",
        "{{path.id}}": "keys stay literal",
        "count": 3,
        "ratio": 0.5,
        "ok": True,
        "none": None,
        "items": [{"name": "2", "static": "s"}, "x", 1],
        "empty": {},
        "list": [],
    }
    assert value.references == (("path", "id"), ("query", "page"))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, None),
        (True, True),
        (0, 0),
        (1.25, 1.25),
        ("s", "s"),
        ("\\{{x}}", "{{x}}"),
        ([], []),
        ({}, {}),
        ((1, "a"), [1, "a"]),  # tuples become lists
        ({"a": ("b", ("c",))}, {"a": ["b", ["c"]]}),
        ({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]}),
        ({1: "int key", "k": "v"}, {1: "int key", "k": "v"}),
    ],
)
def test_constant_values(source: Any, expected: Any) -> None:
    value = compile_value(source)
    assert isinstance(value, CompiledValue)
    assert value.is_constant
    assert value.references == ()
    assert value.render(make_ctx()) == expected


@pytest.mark.parametrize(
    "source",
    [
        {"a": {"b": [1, {"c": "x"}]}},
        {"a": {"b": [1, {"c": "{{path.id}}"}]}, "const": {"d": [1, 2]}},
        [[1, 2], {"x": ["y"]}, "{{uuid}}"],
    ],
)
def test_render_returns_fresh_trees(source: Any) -> None:
    """Callers may mutate a rendered body; the next render must be unaffected."""
    value = compile_value(source)
    ctx = make_ctx(new_uuid=lambda: "u")
    first = value.render(ctx)
    pristine = value.render(ctx)

    def scribble(node: Any) -> None:
        if isinstance(node, dict):
            for child in list(node.values()):
                scribble(child)
            node["mutated"] = True
        elif isinstance(node, list):
            for child in list(node):
                scribble(child)
            node.append("mutated")

    scribble(first)
    assert value.render(ctx) == pristine
    assert first != pristine


def test_render_does_not_alias_the_source() -> None:
    """Mutating the blueprint data after load must not change compiled output."""
    source: dict[str, Any] = {"a": [1, 2], "b": {"c": "d"}}
    value = compile_value(source)
    source["a"].append(3)
    source["b"]["c"] = "changed"
    assert value.render(make_ctx()) == {"a": [1, 2], "b": {"c": "d"}}


@pytest.mark.parametrize(
    ("source", "path"),
    [
        ("{{bad}}", ()),
        ({"data": [{"name": "{{bad}}"}]}, ("data", 0, "name")),
        ([0, 1, ["ok", "{{path}}"]], (2, 1)),
        ({"a": {"b": "{{now"}}, ("a", "b")),
        ({"ok": "{{path.id}}", "bad": ("{{x}}",)}, ("bad", 0)),
    ],
)
def test_compile_value_error_path(source: Any, path: tuple[str | int, ...]) -> None:
    with pytest.raises(TemplateError) as info:
        compile_value(source)
    assert info.value.path == path
    assert info.value.expression is not None


def test_compile_value_error_message_names_location() -> None:
    with pytest.raises(TemplateError) as info:
        compile_value({"data": [{"name": "{{bad}}"}]})
    assert str(info.value).startswith("data[0].name: ")
    assert not info.value.message.startswith("data")


@pytest.mark.parametrize(
    ("source", "path", "fragment"),
    [
        ({"when": datetime(2026, 1, 1)}, ("when",), "type datetime"),
        ([1, {2, 3}], (1,), "type set"),
        ({"a": object()}, ("a",), "type object"),
        ({"a": {(1, 2): "tuple key"}}, ("a",), "object key (1, 2)"),
        ({"a": b"bytes"}, ("a",), "type bytes"),
    ],
)
def test_compile_value_rejects_non_json(
    source: Any, path: tuple[str | int, ...], fragment: str
) -> None:
    with pytest.raises(TemplateError) as info:
        compile_value(source)
    assert info.value.path == path
    assert fragment in info.value.message


# --------------------------------------------------------------------------- has_crlf


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", False),
        ("", False),
        ("tab\tok", False),
        ("a\rb", True),
        ("a\nb", True),
        ("a\r\nSet-Cookie: x=1", True),
        ("\n", True),
    ],
)
def test_has_crlf(value: str, expected: bool) -> None:
    assert has_crlf(value) is expected


def test_rendered_header_value_can_carry_crlf_from_request() -> None:
    """Why callers must check rendered header values, not only template text."""
    template = compile_template("{{query.next}}")
    assert not has_crlf(template.source)
    assert has_crlf(template.render(make_ctx(query=parse_qs("next=a%0d%0aX-Evil:%201"))))


# --------------------------------------------------------------- mitmproxy request data


def test_mitmproxy_query_and_headers() -> None:
    """The real request objects: MultiDictView query and case-insensitive Headers."""
    from mitmproxy import http
    request = http.Request.make(
        "GET",
        "http://example.com/items?tag=a&tag=b&q=%7B%7Benv.SECRET%7D%7D",
        headers=http.Headers(
            [(b"X-Tag", b"one"), (b"x-tag", b"two"), (b"Accept", b"text/plain")]
        ),
    )
    value = compile_value(
        {
            "tag": "{{query.tag}}",
            "q": "{{query.q}}",
            "missing": "{{query.none}}",
            "accept": "{{header.accept}}",
            "tags": "{{header.X-TAG}}",
            "none": "{{header.x-none}}",
        }
    )
    ctx = TemplateContext(query=request.query, headers=request.headers, env={"SECRET": "s"})
    assert value.render(ctx) == {
        "tag": "a",
        "q": INJECTION,
        "missing": "",
        "accept": "text/plain",
        "tags": "one, two",
        "none": "",
    }
