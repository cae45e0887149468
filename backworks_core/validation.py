"""Turn pydantic validation errors into located, actionable blueprint diagnostics.

pydantic reports every error at once, which is what the blueprint contract wants, but its
messages speak Python ("Input should be a valid dictionary or instance of ProxyConfig") and
its `loc` mixes real keys with union member tags. This module maps each error back onto
the YAML the user wrote: the key path as written, the line and column from the
SourceDocument, and a message that says what was expected, what was found, and which
known key was probably meant.
"""

from __future__ import annotations

import ast
import difflib
import enum
import math
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel, BeforeValidator, RootModel, ValidationError

from backworks_core.credentials import redact
from backworks_core.diagnostics import Diagnostic
from backworks_core.source import Loc, SourceDocument

__all__ = [
    "Duration",
    "allowed_keys",
    "did_you_mean",
    "parse_duration",
    "validate_section",
]


# --------------------------------------------------------------------------------------
# Durations

_DURATION_HINT = "expected a duration: a number of seconds, or a string such as 250ms, 30s, 5m or 1h"
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|h|m|s)")
_UNIT_SECONDS = types.MappingProxyType({"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0})


def parse_duration(value: Any) -> float:
    """Seconds from `30`, `0.5`, "250ms", "30s", "5m", "1h", "1m30s" or "1.5s".

    A bare numeric string ("30") is seconds too, so `${TIMEOUT}` works. Raises ValueError
    with the message the user sees.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{_DURATION_HINT}; got {_got(value)}")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError(f"{_DURATION_HINT}; got {value!r}")
        if _NUMBER.fullmatch(text):
            return float(text)
        total, pos = 0.0, 0
        while pos < len(text):
            part = _DURATION_PART.match(text, pos)
            if part is None:
                raise ValueError(f"{_DURATION_HINT}; got {value!r}")
            total += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
            pos = part.end()
        return total
    if not math.isfinite(value):
        raise ValueError(f"{_DURATION_HINT}; got {_got(value)}")
    if value < 0:
        raise ValueError(f"a duration cannot be negative; got {value}")
    return float(value)


def parse_positive_duration(value: Any) -> float:
    """A duration that must be above zero (timeouts, intervals): 0 would mean "fail at once"."""
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above 0, such as 250ms or 30s; got {value!r}")
    return seconds


_DURATION_VALIDATOR = BeforeValidator(parse_duration)
Duration = Annotated[float, _DURATION_VALIDATOR]
"""Seconds as a float; accepts numbers >= 0 and strings like 250ms, 30s, 5m, 1h, 1m30s."""
PositiveDuration = Annotated[float, BeforeValidator(parse_positive_duration)]
"""A Duration above zero: timeouts and intervals."""


# --------------------------------------------------------------------------------------
# Suggestions and the keys a model accepts


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `word` (case-insensitive), if any is close enough."""
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(str(candidate).lower(), str(candidate))
    match = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


def allowed_keys(model: type[BaseModel], loc: Loc) -> list[str] | None:
    """The keys accepted by the mapping at `loc` (a key path inside `model`); None if unknown.

    Unions contribute the keys of all their model members.
    """
    return _keys_of(_walk(model, tuple(loc), tags=False))


def _keys_of(candidates: list[Any]) -> list[str] | None:
    keys: dict[str, None] = {}
    found = False
    for candidate in candidates:
        for member in _members(candidate):
            if _is_model(member):
                found = True
                for field_keys in _field_keys(member).values():
                    keys.update(dict.fromkeys(field_keys))
    return list(keys) if found else None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    """The non-None alternatives of a (possibly nested, possibly Annotated) union."""
    inner = _unwrap(tp)
    if get_origin(inner) in (Union, types.UnionType):
        return [m for arg in get_args(inner) for m in _members(arg)]
    return [] if inner is type(None) else [tp]


def _field_keys(model: type[BaseModel]) -> dict[str, list[str]]:
    """Field name -> the keys that set it in input (alias first, then name if allowed)."""
    config = model.model_config
    by_name = bool(config.get("populate_by_name") or config.get("validate_by_name"))
    result: dict[str, list[str]] = {}
    for name, info in model.model_fields.items():
        aliases: list[str] = []
        if isinstance(info.validation_alias, str):
            aliases.append(info.validation_alias)
        elif isinstance(info.validation_alias, AliasChoices):
            aliases += [c for c in info.validation_alias.choices if isinstance(c, str)]
        elif info.alias:
            aliases.append(info.alias)
        keys = aliases + ([name] if by_name or not aliases else [])
        result[name] = list(dict.fromkeys(keys))
    return result


def _field_annotation(model: type[BaseModel], key: str) -> Any | None:
    for name, keys in _field_keys(model).items():
        if key in keys:
            info = model.model_fields[name]
            return Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return None


def _select_member(members: list[Any], tag: Any) -> Any | None:
    """The union member a pydantic loc tag names: class name, type repr or discriminator value."""
    if not isinstance(tag, str):
        return None
    squashed = tag.replace(" ", "")
    for member in members:
        inner = _unwrap(member)
        name = inner.__name__ if isinstance(inner, type) else repr(inner)
        if name.replace(" ", "") == squashed:
            return member
    by_literal = [
        m
        for m in members
        if _is_model(_unwrap(m))
        and any(
            get_origin(_unwrap(f.annotation)) is Literal and tag in get_args(_unwrap(f.annotation))
            for f in _unwrap(m).model_fields.values()
        )
    ]
    return by_literal[0] if len(by_literal) == 1 else None


def _walk(tp: Any, loc: Loc, *, tags: bool) -> list[Any]:
    """The annotation(s) found at `loc` inside `tp`.

    With `tags`, `loc` is a raw pydantic loc whose union entries name the member taken.
    """
    if not loc:
        return [tp]
    members = _members(tp)
    if len(members) > 1:
        if tags:
            chosen = _select_member(members, loc[0])
            if chosen is not None:
                return _walk(chosen, loc[1:], tags=tags)
        return [found for member in members for found in _walk(member, loc, tags=tags)]
    if not members:
        return []
    inner = _unwrap(members[0])
    head, rest = loc[0], loc[1:]
    if _is_model(inner) and issubclass(inner, RootModel):
        return _walk(inner.model_fields["root"].annotation, loc, tags=tags)
    if _is_model(inner):
        annotation = _field_annotation(inner, head) if isinstance(head, str) else None
        return [] if annotation is None else _walk(annotation, rest, tags=tags)
    origin, args = get_origin(inner), get_args(inner)
    if origin in (list, set, frozenset, Sequence) and isinstance(head, int):
        return _walk(args[0] if args else Any, rest, tags=tags)
    if origin is tuple and isinstance(head, int) and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return _walk(args[0], rest, tags=tags)
        return _walk(args[head], rest, tags=tags) if head < len(args) else []
    if origin in (dict, Mapping) and len(args) == 2:
        return _walk(args[1], rest, tags=tags)
    return []


# --------------------------------------------------------------------------------------
# Friendly words for types and values

_TYPE_EXPECTED = types.MappingProxyType(
    {
        "string_type": "a string",
        "bytes_type": "a string",
        "int_type": "an integer",
        "int_parsing": "an integer",
        "int_from_float": "an integer",
        "float_type": "a number",
        "float_parsing": "a number",
        "decimal_type": "a number",
        "decimal_parsing": "a number",
        "bool_type": "a boolean (true or false)",
        "bool_parsing": "a boolean (true or false)",
        "dict_type": "a mapping",
        "mapping_type": "a mapping",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
        "dataclass_type": "a mapping",
        "list_type": "a list",
        "tuple_type": "a list",
        "set_type": "a list",
        "frozen_set_type": "a list",
        "iterable_type": "a list",
        "none_required": "null",
    }
)
_CHOICE_ERRORS = frozenset({"literal_error", "enum"})
_SHAPE_ERRORS = frozenset(_TYPE_EXPECTED) | _CHOICE_ERRORS
_MISSING_ERRORS = frozenset({"missing", "missing_argument", "missing_keyword_only_argument"})


def _short(value: str, limit: int = 40) -> str:
    value = redact(value)  # a URL's password is never echoed (backworks_core.credentials)
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")


def _got(value: Any) -> str:
    """How a YAML value reads in a message: `string 'abc'`, `integer 5`, `list`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {_short(value)}"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def _show(value: Any) -> str:
    """A choice or key as the user would type it."""
    if isinstance(value, enum.Enum):
        value = value.value
    return _short(value) if isinstance(value, str) else _got(value)


def _show_key(key: Any) -> str:
    """A mapping key as written in YAML: 'name', 404, true, null."""
    if isinstance(key, str):
        return _short(key)
    if isinstance(key, bool) or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    return str(key)


def _join_or(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " or " + phrases[-1]


def _plural(tp: Any) -> str:
    phrase = _describe(tp)
    plurals = {
        "a string": "strings",
        "an integer": "integers",
        "a number": "numbers",
        "a boolean": "booleans",
        "a mapping": "mappings",
        "a list": "lists",
        "a duration": "durations",
    }
    return plurals.get(phrase or "", "values")


def _describe(tp: Any) -> str | None:
    """`list[str]` -> "a list of strings"; None when there is no short phrase."""
    if get_origin(tp) is Annotated and any(m is _DURATION_VALIDATOR for m in get_args(tp)[1:]):
        return "a duration"
    inner = _unwrap(tp)
    origin, args = get_origin(inner), get_args(inner)
    simple = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", type(None): "null"}
    if inner in simple:
        return simple[inner]
    if _is_model(inner) or origin in (dict, Mapping) or inner is dict:
        return "a mapping"
    if origin in (list, set, frozenset, tuple, Sequence) or inner in (list, set, tuple):
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is Literal:
        shown = [_show(a) for a in args]
        return shown[0] if len(shown) == 1 else "one of " + ", ".join(shown)
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return "one of " + ", ".join(_show(m.value) for m in inner)
    return None


def _parse_choices(expected: str) -> list[Any]:
    """pydantic's "'a', 'b' or 'c'" back into values (for did-you-mean)."""
    tokens = re.findall(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^,\s]+", expected)
    choices: list[Any] = []
    for token in tokens:
        if token == "or":
            continue
        try:
            choices.append(ast.literal_eval(token))
        except (ValueError, SyntaxError):
            choices.append(token)
    return choices


# --------------------------------------------------------------------------------------
# Error translation


@dataclass(frozen=True)
class _Error:
    """One pydantic error plus which of its loc entries are real keys in the data."""

    type: str
    raw: tuple[Any, ...]
    kept: tuple[bool, ...]
    msg: str
    input: Any
    ctx: Mapping[str, Any]

    def cleaned(self, upto: int | None = None) -> Loc:
        n = len(self.raw) if upto is None else upto
        return tuple(part for part, keep in zip(self.raw[:n], self.kept[:n]) if keep)

    def first_dropped(self, start: int) -> int | None:
        return next((i for i in range(start, len(self.raw)) if not self.kept[i]), None)


@dataclass(frozen=True)
class _Finding:
    loc: Loc
    message: str
    prefer_key: bool = False


def _walk_data(data: Any, raw: tuple[Any, ...], missing: bool) -> tuple[bool, ...]:
    """Mark each loc entry that is a key or index present at that point of the data."""
    kept: list[bool] = []
    current = data
    for i, part in enumerate(raw):
        if isinstance(current, Mapping) and _has_key(current, part):
            kept.append(True)
            current = current[part]
        elif isinstance(current, list) and type(part) is int and 0 <= part < len(current):
            kept.append(True)
            current = current[part]
        else:
            kept.append(missing and i == len(raw) - 1)
    return tuple(kept)


def _has_key(mapping: Mapping[Any, Any], part: Any) -> bool:
    try:
        return part in mapping
    except TypeError:
        return False


def validate_section(
    model: type[BaseModel],
    data: Any,
    doc: SourceDocument,
    base_loc: Loc = (),
    *,
    context: dict[str, Any] | None = None,
) -> tuple[BaseModel | None, list[Diagnostic]]:
    """Validate `data` (found at `base_loc` in `doc`) against `model`, reporting every error.

    Errors at key paths already reported by the source document (an unset variable, an
    unsupported tag) are left out, so each mistake shows once: callers must report
    `doc.diagnostics` too. The result is (instance, []) or (None, diagnostics).
    """
    try:
        return model.model_validate(data, context=context), []
    except ValidationError as exc:
        raw_errors = exc.errors(include_url=False)
    errors = [
        _Error(
            type=e["type"],
            raw=tuple(e["loc"]),
            kept=_walk_data(data, tuple(e["loc"]), e["type"] in _MISSING_ERRORS),
            msg=e["msg"],
            input=e.get("input"),
            ctx=e.get("ctx") or {},
        )
        for e in raw_errors
    ]
    seen: set[tuple[Loc, str]] = set()
    diagnostics: list[Diagnostic] = []
    for finding in _resolve(model, data, errors, 0):
        loc = tuple(base_loc) + finding.loc
        if (loc, finding.message) in seen or any(loc[:n] in doc.error_locs for n in range(len(loc) + 1)):
            continue
        seen.add((loc, finding.message))
        diagnostics.append(doc.diagnostic(loc, finding.message, prefer_key=finding.prefer_key))
    return None, sorted(diagnostics)


def _resolve(model: type[BaseModel], data: Any, errors: list[_Error], start: int) -> list[_Finding]:
    """Translate errors, collapsing the alternatives pydantic reports for each failed union."""
    findings: list[_Finding] = []
    groups: dict[tuple[Any, ...], dict[Any, list[_Error]]] = {}
    for error in errors:
        dropped = error.first_dropped(start)
        if dropped is None:
            findings.append(_translate(model, data, error))
        else:
            groups.setdefault(error.raw[:dropped], {}).setdefault(error.raw[dropped], []).append(error)
    for point, alternatives in groups.items():
        union = _union_members(model, point)
        if len(alternatives) > 1 and union:
            findings += _choose(model, data, point, alternatives, union)
        else:
            for group in alternatives.values():
                findings += _resolve(model, data, group, len(point) + 1)
    return findings


def _union_members(model: type[BaseModel], point: tuple[Any, ...]) -> list[Any]:
    for candidate in _walk(model, point, tags=True):
        members = _members(candidate)
        if len(members) > 1:
            return members
    return []


def _choose(
    model: type[BaseModel],
    data: Any,
    point: tuple[Any, ...],
    alternatives: dict[Any, list[_Error]],
    union: list[Any],
) -> list[_Finding]:
    """Report the union member the value was evidently meant for, or one combined message.

    A member whose only errors say "this value is not my type" is a shape mismatch. If some
    members got further than that, the one that recognised the most keys (fewest unknown
    keys), then with fewest errors, is reported; if none did, the value fits no member and
    one "expected A or B, got C" message says so.
    """
    depth = len(point) + 1
    plausible = [
        group
        for group in alternatives.values()
        if not all(len(e.raw) == depth and e.type in _SHAPE_ERRORS for e in group)
    ]
    if plausible:
        best = min(plausible, key=lambda group: (sum(e.type == "extra_forbidden" for e in group), len(group)))
        return _resolve(model, data, best, depth)
    phrases: list[str] = []
    for tag, group in alternatives.items():
        member = _select_member(union, tag)
        phrase = (_describe(member) if member is not None else None) or _expected_phrase(group[0])
        if phrase not in phrases:
            phrases.append(phrase)
    first = next(iter(alternatives.values()))[0]
    return [_Finding(first.cleaned(len(point)), f"expected {_join_or(phrases)}, got {_got(first.input)}")]


def _expected_phrase(error: _Error) -> str:
    if error.type in _CHOICE_ERRORS:
        choices = _parse_choices(str(error.ctx.get("expected", "")))
        return "one of " + ", ".join(_show(c) for c in choices)
    return _TYPE_EXPECTED.get(error.type, "a valid value")


def _translate(model: type[BaseModel], data: Any, error: _Error) -> _Finding:
    """One pydantic error as a located, plain-words finding."""
    loc = error.cleaned()
    is_key = "[key]" in error.raw
    if error.type in _MISSING_ERRORS:
        return _Finding(loc, f"required key {_show_key(error.raw[-1])} is missing")
    if error.type == "extra_forbidden":
        return _Finding(loc, _unknown_key(model, error.raw[-1], error), prefer_key=True)
    if error.type == "invalid_key":  # a non-string key where a model expects field names
        keys = _keys_of(_walk(model, error.raw[:-1], tags=True))
        if keys is not None:
            return _Finding(loc, _unknown_key(model, error.input, error), prefer_key=True)
        return _Finding(loc, f"expected a string key, got {_got(error.input)}", prefer_key=True)
    if error.type in ("union_tag_invalid", "union_tag_not_found"):
        return _union_tag(data, error, loc)
    if error.type in _CHOICE_ERRORS:
        message = _choice_message(_parse_choices(str(error.ctx.get("expected", ""))), error.input)
    elif error.type in _TYPE_EXPECTED:
        message = f"expected {_TYPE_EXPECTED[error.type]}, got {_got(error.input)}"
    elif error.type in ("value_error", "assertion_error") and "error" in error.ctx:
        # first line only: a diagnostic is one line (and pytest appends its own to asserts)
        message = str(error.ctx["error"]).split("\n", 1)[0] or "invalid value"
    else:
        message = error.msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if len(message) > 1 and message[0].isupper() and message[1].islower():
            message = message[0].lower() + message[1:]
    if is_key:
        return _Finding(loc, f"invalid key: {message}", prefer_key=True)
    return _Finding(loc, message)


def _choice_message(choices: list[Any], value: Any) -> str:
    shown = [_show(c) for c in choices]
    expected = f"one of {', '.join(shown)}" if len(shown) > 1 else (shown[0] if shown else "a valid choice")
    got = _short(value) if isinstance(value, str) else _got(value)
    message = f"expected {expected}; got {got}"
    if isinstance(value, str):
        suggestion = did_you_mean(value, [str(c.value if isinstance(c, enum.Enum) else c) for c in choices])
        if suggestion is not None:
            message += f"; did you mean {suggestion!r}?"
    return message


def _unknown_key(model: type[BaseModel], key: Any, error: _Error) -> str:
    keys = _keys_of(_walk(model, error.raw[:-1], tags=True))
    if keys is None:
        keys = allowed_keys(model, error.cleaned()[:-1])
    message = f"unknown key {_show_key(key)}"
    if not keys:
        return message
    suggestion = did_you_mean(str(key), keys)
    if suggestion is not None:
        return f"{message}; did you mean {suggestion!r}?"
    return f"{message} (expected one of: {', '.join(keys)})"


def _union_tag(data: Any, error: _Error, loc: Loc) -> _Finding:
    """A discriminated union's tag key: missing, or not one of the known tags."""
    discriminator = error.ctx.get("discriminator", "")
    try:
        key = ast.literal_eval(str(discriminator))
    except (ValueError, SyntaxError):
        key = None
    value = data
    for part in loc:
        value = value[part]
    if not isinstance(value, Mapping):
        return _Finding(loc, f"expected a mapping, got {_got(value)}")
    if not isinstance(key, str):
        return _Finding(loc, error.msg)
    if error.type == "union_tag_not_found" or key not in value:
        return _Finding(loc + (key,), f"required key {key!r} is missing")
    choices = _parse_choices(str(error.ctx.get("expected_tags", "")))
    return _Finding(loc + (key,), _choice_message(choices, value[key]))
