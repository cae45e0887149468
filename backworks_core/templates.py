"""Value templates for static bodies, headers and transforms.

A string value may contain ``{{ expr }}`` placeholders (spaces inside the braces are
optional). The valid expressions are::

    {{now}}           current time, RFC 3339 UTC with milliseconds: 2026-11-22T03:04:05.123Z
    {{uuid}}          a new random UUID4 for *each occurrence*
    {{path.NAME}}     a path parameter of the matched route
    {{query.NAME}}    the first value of a query parameter
    {{header.NAME}}   a request header, looked up case-insensitively
    {{auth.CLAIM}}    a claim of the authenticated identity; ``auth.a.b`` walks nested
                      claims, ``auth.roles.0`` indexes a list, and a claim whose key itself
                      contains dots (``auth.https://example.com/roles``) is found too
    {{env.NAME}}      an environment variable of the gateway process

Decisions, in one place:

* Templates are parsed once, at blueprint load (`compile_template`, `compile_value`);
  every syntax error is a `TemplateError` raised there, never at request time.
* Rendering is single-pass: values taken from the request (or the environment, or
  claims) are inserted as data and never scanned for ``{{`` again, so a query value of
  ``{{env.SECRET}}`` comes out literally.
* Anything missing (no such path parameter, query parameter, header, env variable or
  claim, or no authenticated identity at all) renders as the empty string. A claim whose
  value is JSON ``null`` renders as the empty string too.
* Non-string values render JSON-style: ``true``/``false``, numbers as JSON numbers,
  lists and objects as compact JSON text (``["a","b"]``).
* ``{{now}}`` reads the clock at most once per `render` call, lazily: every occurrence in
  one rendered value (a whole body tree) shows the same instant. ``{{uuid}}`` is fresh
  per occurrence, so two ``{{uuid}}`` in one body differ.
* Escape: ``\\{{`` renders as a literal ``{{`` (and what follows is plain text up to the
  next unescaped ``{{``). There is no other escape: a lone ``}}`` is already literal,
  and a backslash anywhere else is literal. A consequence is that a literal backslash
  immediately followed by a template cannot be written.
* Rendered header values can carry CR/LF taken from the request (a decoded query value
  may contain ``%0d%0a``); callers must check rendered header values with `has_crlf`
  and refuse them, not only the template text.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Union

from .diagnostics import format_key_path
from .jsonpath import copy_json

__all__ = [
    "CompiledValue",
    "Template",
    "TemplateContext",
    "TemplateError",
    "compile_template",
    "compile_value",
    "has_crlf",
]

_OPEN = "{{"
_CLOSE = "}}"
_ESCAPED_OPEN = "\\{{"
_VALID_FORMS = (
    "{{now}}, {{uuid}}, {{path.NAME}}, {{query.NAME}}, {{header.NAME}}, "
    "{{auth.CLAIM}}, {{env.NAME}}"
)
_BARE_ROOTS = ("now", "uuid")
_NAMED_ROOTS = ("path", "query", "header", "auth", "env")
# A name is anything up to the closing braces except whitespace and braces: header names,
# query keys and namespaced claim keys ("https://example.com/roles") all fit.
_NAME_RE = re.compile(r"[^\s{}]+")

KeyPath = tuple[Union[str, int], ...]


class TemplateError(ValueError):
    """A template that cannot be compiled; raised at load time with a fixable message.

    ``message`` is the bare explanation, ``path`` the location inside a compiled value
    (``("data", 0, "name")``, empty for a lone string), ``expression`` the offending
    ``{{...}}`` text when there is one, ``position`` its 1-based character offset.
    ``str()`` prefixes the message with the path so it reads well on its own; a loader
    building a located diagnostic can use ``path`` and ``message`` separately.
    """

    def __init__(
        self,
        message: str,
        *,
        path: KeyPath = (),
        expression: str | None = None,
        position: int | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.expression = expression
        self.position = position
        super().__init__(message)

    def __str__(self) -> str:
        if self.path:
            return f"{format_key_path(self.path)}: {self.message}"
        return self.message

    def at(self, path: KeyPath) -> TemplateError:
        """The same error, located at `path` inside a value."""
        return TemplateError(
            self.message, path=path, expression=self.expression, position=self.position
        )


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _new_uuid() -> str:
    return str(uuid.uuid4())


def _environ() -> Mapping[str, str]:
    # The live mapping, not a snapshot: tests and reloads see current values.
    return os.environ


@dataclass(slots=True)
class TemplateContext:
    """What one request offers to templates; built per request, so keep it cheap.

    ``query`` may be mitmproxy's ``request.query`` (a MultiDictView: the first value is
    used), a plain ``dict[str, str]``, or a ``dict[str, list[str]]`` as from
    ``urllib.parse.parse_qs`` (again the first value). ``headers`` may be mitmproxy
    ``Headers`` (case-insensitive; repeated fields come folded with ``", "``) or a plain
    dict, which is searched case-insensitively when the exact key is absent.
    ``now`` and ``new_uuid`` are injectable so tests can pin them.
    """

    path: Mapping[str, Any] = field(default_factory=dict)
    query: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, Any] = field(default_factory=dict)
    auth: Mapping[str, Any] | None = None
    env: Mapping[str, str] = field(default_factory=_environ)
    now: Callable[[], datetime] = _utc_now
    new_uuid: Callable[[], str] = _new_uuid


def has_crlf(value: str) -> bool:
    """True when `value` holds CR or LF, which would split or inject a header line."""
    return "\r" in value or "\n" in value


def check_header_templates(headers: dict[str, str]) -> dict[str, str]:
    """A pydantic validator for `{name: template}` header maps: no CR/LF, templates that compile."""
    for name, value in headers.items():
        if has_crlf(name) or has_crlf(value):
            raise ValueError(f"header {name!r} carries CR or LF")
        compile_template(value)
    return headers


# --------------------------------------------------------------------------- rendering


class _Render:
    """Per-render-call state: lets every ``{{now}}`` in one value share one clock read."""

    __slots__ = ("ctx", "_now")

    def __init__(self, ctx: TemplateContext) -> None:
        self.ctx = ctx
        self._now: str | None = None

    def now(self) -> str:
        if self._now is None:
            self._now = _format_rfc3339(self.ctx.now())
        return self._now


def _format_rfc3339(moment: datetime) -> str:
    """UTC with millisecond precision and a ``Z`` suffix; a naive clock is taken as UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
        f".{moment.microsecond // 1000:03d}Z"
    )


def _text(value: Any) -> str:
    """A looked-up value as text: strings as-is, missing/null empty, the rest JSON-style."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # circular structures and the like
        return str(value)


def _first(value: Any) -> Any:
    """The first item of a multi-valued entry (a list from ``parse_qs``), else the value."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def _lookup_path(ctx: TemplateContext, name: str) -> Any:
    return ctx.path.get(name)


def _lookup_query(ctx: TemplateContext, name: str) -> Any:
    query = ctx.query
    get_all = getattr(query, "get_all", None)
    if get_all is not None:  # mitmproxy MultiDictView / MultiDict
        values = get_all(name)
        return values[0] if values else None
    return _first(query.get(name))


def _lookup_header(ctx: TemplateContext, name: str) -> Any:
    headers = ctx.headers
    value = headers.get(name)
    if value is None and not hasattr(headers, "get_all"):
        # A plain dict is case-sensitive; mitmproxy Headers (which has get_all) is not.
        wanted = name.lower()
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == wanted:
                value = candidate
                break
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value)
    return value


def _lookup_env(ctx: TemplateContext, name: str) -> Any:
    return ctx.env.get(name)


_MISSING = object()


def _walk_claims(node: Any, parts: tuple[str, ...], start: int) -> Any:
    """Follow dotted `parts`, preferring the longest key that exists at each level.

    Trying ``"a.b"`` before ``"a"`` finds namespaced claims such as
    ``"https://example.com/roles"`` while ``a.b`` still reaches ``{"a": {"b": ...}}``.
    """
    if start == len(parts):
        return node
    if isinstance(node, Mapping):
        for end in range(len(parts), start, -1):
            key = ".".join(parts[start:end])
            if key in node:
                found = _walk_claims(node[key], parts, end)
                if found is not _MISSING:
                    return found
        return _MISSING
    if isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        part = parts[start]
        if part.isascii() and part.isdigit() and int(part) < len(node):
            return _walk_claims(node[int(part)], parts, start + 1)
    return _MISSING


def _lookup_auth(ctx: TemplateContext, parts: tuple[str, ...]) -> Any:
    claims = ctx.auth
    if claims is None:
        return None
    found = _walk_claims(claims, parts, 0)
    return None if found is _MISSING else found


_Part = Union[str, Callable[[_Render], str]]


def _named_part(root: str, name: str) -> Callable[[_Render], str]:
    """A render function for ``root.name``; the result is data, never re-parsed."""
    if root == "auth":
        parts = tuple(name.split("."))
        return lambda r: _text(_lookup_auth(r.ctx, parts))
    lookup = {
        "path": _lookup_path,
        "query": _lookup_query,
        "header": _lookup_header,
        "env": _lookup_env,
    }[root]
    return lambda r: _text(lookup(r.ctx, name))


def _render_now(r: _Render) -> str:
    return r.now()


def _render_uuid(r: _Render) -> str:
    return r.ctx.new_uuid()


# ----------------------------------------------------------------------------- parsing


def _shorten(text: str, limit: int = 80) -> str:
    """The source as shown in a message; long body strings are cut, not dumped whole."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _compile_expression(source: str, expression: str, position: int) -> tuple[str, str, _Part]:
    """Parse one ``{{...}}`` body into (root, name, render function) or explain why not."""
    shown = f"{_OPEN}{expression}{_CLOSE}"

    def fail(reason: str) -> TemplateError:
        return TemplateError(
            f"invalid template {shown!r} at character {position} of {_shorten(source)!r}: "
            f"{reason}; "
            f"valid forms are {_VALID_FORMS} (write '\\{{{{' for a literal '{{{{')",
            expression=shown,
            position=position,
        )

    expr = expression.strip()
    if not expr:
        raise fail("the expression is empty")
    if _OPEN in expr:
        raise fail("'{{' cannot appear inside a template expression")
    root, dot, name = expr.partition(".")
    if root in _BARE_ROOTS:
        if dot:
            raise fail(f"{root!r} takes no name, write {{{{{root}}}}}")
        return root, "", _render_now if root == "now" else _render_uuid
    if root in _NAMED_ROOTS:
        if not name:
            raise fail(f"{root!r} needs a name, e.g. {{{{{root}.NAME}}}}")
        if not _NAME_RE.fullmatch(name):
            raise fail(f"the name {name!r} contains whitespace or braces")
        if root == "auth" and "" in name.split("."):
            raise fail(f"the claim path {name!r} has an empty segment")
        return root, name, _named_part(root, name)
    known = _BARE_ROOTS + _NAMED_ROOTS
    guess = difflib.get_close_matches(root.lower(), known, n=1, cutoff=0.6)
    if guess:
        suggestion = guess[0] if guess[0] in _BARE_ROOTS else f"{guess[0]}.{name or 'NAME'}"
        hint = f" (did you mean {{{{{suggestion}}}}}?)"
    else:
        hint = ""
    raise fail(f"unknown name {root!r}{hint}")


def _split(text: str) -> tuple[tuple[_Part, ...], tuple[tuple[str, str], ...]]:
    """Split `text` into literal strings and render functions, merging adjacent literals."""
    parts: list[_Part] = []
    refs: list[tuple[str, str]] = []
    literal: list[str] = []
    i = 0
    while True:
        start = text.find(_OPEN, i)
        if start < 0:
            literal.append(text[i:])
            break
        if start > 0 and text[start - 1] == "\\":
            # "\{{" is a literal "{{": drop the backslash, keep scanning after the braces.
            literal.append(text[i : start - 1])
            literal.append(_OPEN)
            i = start + len(_OPEN)
            continue
        literal.append(text[i:start])
        end = text.find(_CLOSE, start + len(_OPEN))
        if end < 0:
            raise TemplateError(
                f"unclosed '{{{{' at character {start + 1} of {_shorten(text)!r}: "
                f"close it with '}}}}' or write '\\{{{{' for a literal '{{{{'; "
                f"valid forms are {_VALID_FORMS}",
                expression=_shorten(text[start:]),
                position=start + 1,
            )
        root, name, render = _compile_expression(text, text[start + len(_OPEN) : end], start + 1)
        joined = "".join(literal)
        if joined:
            parts.append(joined)
        literal = []
        parts.append(render)
        if (root, name) not in refs:
            refs.append((root, name))
        i = end + len(_CLOSE)
    joined = "".join(literal)
    if joined or not parts:
        parts.append(joined)
    return tuple(parts), tuple(refs)


class Template:
    """One compiled string: literal pieces and lookups, split once at load time.

    ``references`` lists each distinct ``(root, name)`` used, in order of appearance
    (``("now", "")`` for bare roots), so a loader can check that ``path.NAME`` matches a
    parameter of its route. Instances are immutable and safe to share across requests.
    """

    __slots__ = ("source", "is_constant", "references", "_parts", "_constant")

    source: str
    is_constant: bool
    references: tuple[tuple[str, str], ...]

    def __init__(self, source: str) -> None:
        self.source = source
        if _OPEN not in source:  # fast path: nothing to parse
            parts: tuple[_Part, ...] = (source,)
            refs: tuple[tuple[str, str], ...] = ()
        else:
            parts, refs = _split(source)
        self._parts = parts
        self.references = refs
        self.is_constant = len(parts) == 1 and isinstance(parts[0], str)
        first = parts[0]
        self._constant: str | None = first if isinstance(first, str) and len(parts) == 1 else None

    def render(self, ctx: TemplateContext) -> str:
        """The string for this request; request data is inserted, never re-evaluated."""
        if self._constant is not None:
            return self._constant
        return self._render(_Render(ctx))

    def _render(self, r: _Render) -> str:
        if self._constant is not None:
            return self._constant
        parts = self._parts
        if len(parts) == 1:
            return parts[0](r)  # type: ignore[operator]
        return "".join(p if isinstance(p, str) else p(r) for p in parts)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def compile_template(text: str) -> Template:
    """Compile one string at load time; raises `TemplateError` for bad syntax."""
    if not isinstance(text, str):
        raise TypeError(f"a template must be a string, not {type(text).__name__}")
    return Template(text)


# ---------------------------------------------------------------------- compiled values


class _Node:
    __slots__ = ()
    is_constant: bool = False

    def render(self, r: _Render) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class _Const(_Node):
    __slots__ = ("value", "scalar")
    is_constant = True

    def __init__(self, value: Any) -> None:
        self.value = value
        self.scalar = not isinstance(value, (dict, list))

    def render(self, r: _Render) -> Any:
        return self.value if self.scalar else copy_json(self.value)


class _Str(_Node):
    __slots__ = ("template",)

    def __init__(self, template: Template) -> None:
        self.template = template

    def render(self, r: _Render) -> Any:
        return self.template._render(r)


class _Dict(_Node):
    __slots__ = ("items",)

    def __init__(self, items: tuple[tuple[Any, _Node], ...]) -> None:
        self.items = items

    def render(self, r: _Render) -> Any:
        return {k: n.render(r) for k, n in self.items}


class _List(_Node):
    __slots__ = ("nodes",)

    def __init__(self, nodes: tuple[_Node, ...]) -> None:
        self.nodes = nodes

    def render(self, r: _Render) -> Any:
        return [n.render(r) for n in self.nodes]


_SCALARS = (bool, int, float, type(None))
_KEY_TYPES = (str, int, float, bool, type(None))


def _compile_node(value: Any, path: KeyPath, refs: list[tuple[str, str]]) -> _Node:
    if isinstance(value, str):
        try:
            template = Template(value)
        except TemplateError as err:
            raise err.at(path) from None
        for ref in template.references:
            if ref not in refs:
                refs.append(ref)
        if template.is_constant:
            return _Const(template._constant)  # "\{{" already unescaped
        return _Str(template)
    if isinstance(value, _SCALARS):
        return _Const(value)
    if isinstance(value, Mapping):
        items: list[tuple[Any, _Node]] = []
        for key, child in value.items():
            if not isinstance(key, _KEY_TYPES):
                raise TemplateError(
                    f"object key {key!r} of type {type(key).__name__} is not valid JSON; "
                    "use a string key",
                    path=path,
                )
            step: str | int = key if isinstance(key, (str, int)) else json.dumps(key)  # as the key will be written
            items.append((key, _compile_node(child, path + (step,), refs)))
        if all(n.is_constant for _, n in items):
            return _Const({k: n.value for k, n in items})  # type: ignore[attr-defined]
        return _Dict(tuple(items))
    if isinstance(value, (list, tuple)):
        nodes = tuple(_compile_node(child, path + (i,), refs) for i, child in enumerate(value))
        if all(n.is_constant for n in nodes):
            return _Const([n.value for n in nodes])  # type: ignore[attr-defined]
        return _List(nodes)
    raise TemplateError(
        f"unsupported value of type {type(value).__name__} ({value!r}); only strings, "
        "numbers, booleans, null, lists and objects are allowed (in YAML, quote dates "
        "and timestamps to keep them as strings)",
        path=path,
    )


class CompiledValue:
    """A JSON-like value with every string inside compiled; dict keys stay literal.

    `render` always returns a fresh tree the caller may mutate: constant parts are
    pre-built at load time and copied per call, never handed out shared. When
    ``is_constant`` is true the result does not depend on the context, so a caller can
    render (and serialize) it once at load time.
    """

    __slots__ = ("is_constant", "references", "_root")

    is_constant: bool
    references: tuple[tuple[str, str], ...]

    def __init__(self, root: _Node, references: tuple[tuple[str, str], ...]) -> None:
        self._root = root
        self.is_constant = root.is_constant
        self.references = references

    def render(self, ctx: TemplateContext) -> Any:
        """A fresh copy for this request; ``{{now}}`` is read once for the whole tree."""
        return self._root.render(_Render(ctx))


def compile_value(value: Any) -> CompiledValue:
    """Compile a JSON-like value at load time.

    Raises `TemplateError` whose ``path`` locates the failing string, e.g.
    ``("data", 0, "name")``. Tuples are accepted and render as lists.
    """
    refs: list[tuple[str, str]] = []
    root = _compile_node(value, (), refs)
    return CompiledValue(root, tuple(refs))
