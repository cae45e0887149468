"""Dotted paths into parsed JSON, for the body transforms (`body.set/remove/rename`).

A pure module: no mitmproxy, no I/O. Paths are parsed once at blueprint load
(`parse_path`), and the operations walk plain `dict`/`list` trees as `json.loads` returns
them, changing them in place.

Syntax (decided here, documented in the blueprint format):

* ``a.b.c`` walks object members; a bare key is any run of characters other than
  ``.``, ``[``, ``]``, ``"`` and whitespace, so unicode keys (``名前.姓``) need no quoting.
* ``[N]`` indexes an array; ``[-1]`` is the last element (Python-style negative indexes).
  ``a.0`` is the object member named ``"0"``, never an index.
* ``[*]`` is every element of an array (arrays only: ``[*]`` on an object matches nothing).
* ``["a.b"]`` is a quoted key, written as a JSON string (``\\"`` and ``\\u00e9`` escapes),
  for keys holding dots, brackets, quotes, spaces, or an empty key.
* A path starts at the body's root without ``$``; it may start with a bracket
  (``[0].id``, ``[*].id``) when the body is an array.

Operation rules:

* `set_value` creates missing (or ``null``) intermediate *objects*, never arrays: an index
  needs an existing array, and an index out of range is reported, not appended. A value of
  another type in the way (a string where an object is needed) is reported and left alone.
* `remove` of a path that is missing, or runs through a value of the wrong type, does
  nothing. Removing ``[*]`` empties the array.
* `rename` moves an object member; both paths end with a key. With ``[*]`` both paths share
  the same steps up to the source's last ``[*]`` and the move happens inside each element.
  Renaming within one object keeps the member's position; an existing target is replaced.
  A missing source does nothing; a target that cannot be created leaves the source in place.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "EACH",
    "Each",
    "Index",
    "Key",
    "Outcome",
    "Path",
    "Step",
    "check_rename",
    "find",
    "format_path",
    "get",
    "parse_path",
    "remove",
    "rename",
    "set_value",
]


@dataclass(frozen=True, slots=True)
class Key:
    """An object member."""

    name: str


@dataclass(frozen=True, slots=True)
class Index:
    """An array element; negative counts from the end."""

    index: int


@dataclass(frozen=True, slots=True)
class Each:
    """Every element of an array (``[*]``)."""


EACH = Each()
Step = Union[Key, Index, Each]
Path = tuple[Step, ...]

_INDEX_RE = re.compile(r"-?[0-9]+")
_BARE_STOP = frozenset('.[]"')
_SIMPLE_KEY_RE = re.compile(r'[^.\[\]"\s]+')


# ----------------------------------------------------------------------------- parsing


def copy_json(value: Any) -> Any:
    """A fresh copy of a JSON-like tree (dicts, lists, scalars): the one deep copy the gateway
    uses per request, much cheaper than ``copy.deepcopy`` (no memo, no reduce protocol)."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    return value


def parse_path(text: str) -> Path:
    """Parse ``a.b[0].c`` / ``items[*].price`` / ``["a.b"]``; ValueError says what and where."""
    if not isinstance(text, str):
        raise ValueError(f"a JSON path must be a string, not {type(text).__name__}")

    def fail(reason: str, pos: int) -> ValueError:
        return ValueError(f"invalid JSON path {text!r}: {reason} at character {pos + 1}")

    if not text:
        raise ValueError("a JSON path cannot be empty")
    if text == "$" or text.startswith(("$.", "$[")):
        raise ValueError(
            f"invalid JSON path {text!r}: paths start at the body's root without '$' "
            f"(write {text[2:] or 'a.b'!r}; a key named '$' is written [\"$\"])"
        )
    steps: list[Step] = []
    i, n = 0, len(text)
    after_dot = False
    while i < n:
        c = text[i]
        if c == "[":
            if after_dot:
                raise fail("write a[0] or a[\"k\"], not a.[0] or a.[\"k\"]", i)
            step, i = _parse_bracket(text, i, fail)
            steps.append(step)
        elif c == ".":
            if i == 0 or after_dot:
                raise fail("empty key", i)
            after_dot = True
            i += 1
            if i == n:
                raise fail("empty key after '.'", i - 1)
            continue
        elif c in ']"':
            raise fail(f"unexpected {c!r} (quote keys holding it: [\"...\"])", i)
        else:
            if steps and not after_dot:
                raise fail("expected '.' or '[' between steps", i)
            match = _SIMPLE_KEY_RE.match(text, i)
            if match is None:  # whitespace
                raise fail("whitespace in a key (quote such keys: [\"first name\"])", i)
            name = match.group()
            if name == "*":
                raise fail("use [*] for every element of an array", i)
            steps.append(Key(name))
            i = match.end()
            if i < n and text[i] not in _BARE_STOP:
                raise fail("whitespace in a key (quote such keys: [\"first name\"])", i)
        after_dot = False
    return tuple(steps)


def _parse_bracket(text: str, start: int, fail: Any) -> tuple[Step, int]:
    """One ``[...]`` starting at `start`; returns the step and the index after ``]``."""
    i = start + 1
    if i < len(text) and text[i] == '"':
        try:
            name, i = json.decoder.scanstring(text, i + 1, True)  # type: ignore[attr-defined]  # undeclared in typeshed, public since 2.6
        except json.JSONDecodeError as err:
            raise fail(f"bad quoted key ({err.msg})", err.pos) from None
        step: Step = Key(name)
    else:
        end = text.find("]", i)
        if end < 0:
            raise fail("unclosed '['", start)
        inner = text[i:end]
        if inner == "*":
            step = EACH
        elif _INDEX_RE.fullmatch(inner):
            step = Index(int(inner))
        else:
            raise fail(f"expected an index, * or a quoted key inside [], got {inner!r}", start)
        i = end
    if i >= len(text) or text[i] != "]":
        raise fail("expected ']'", i)
    return step, i + 1


def format_path(steps: Path) -> str:
    """The text form of `steps`; `parse_path(format_path(p)) == p`."""
    out: list[str] = []
    for step in steps:
        if isinstance(step, Key):
            if _SIMPLE_KEY_RE.fullmatch(step.name) and step.name != "*" and not step.name.startswith("$"):
                out.append(f".{step.name}" if out else step.name)
            else:
                out.append(f"[{json.dumps(step.name, ensure_ascii=False)}]")
        elif isinstance(step, Index):
            out.append(f"[{step.index}]")
        else:
            out.append("[*]")
    return "".join(out)


def check_rename(source: Path, target: Path) -> None:
    """Load-time rules for a rename pair; ValueError explains the one broken."""
    src, tgt = format_path(source), format_path(target)
    if not isinstance(source[-1], Key) or not isinstance(target[-1], Key):
        raise ValueError(f"rename {src} -> {tgt}: both paths must end with an object key")
    shorter = min(len(source), len(target))
    if source[:shorter] == target[:shorter]:
        raise ValueError(f"rename {src} -> {tgt}: one path contains the other")
    last_each = max((i for i, s in enumerate(source) if isinstance(s, Each)), default=-1)
    if last_each >= 0 and target[: last_each + 1] != source[: last_each + 1]:
        raise ValueError(
            f"rename {src} -> {tgt}: with [*] both paths must be the same up to the last [*]"
        )
    if any(isinstance(s, Each) for s in target[last_each + 1 :]):
        raise ValueError(f"rename {src} -> {tgt}: the target has a [*] the source does not")


# ---------------------------------------------------------------------------- reading


def find(doc: Any, steps: Path) -> list[Any]:
    """Every value `steps` reaches (several with ``[*]``); empty when nothing matches."""
    nodes = [doc]
    for step in steps:
        following: list[Any] = []
        for node in nodes:
            if isinstance(step, Key):
                if isinstance(node, dict) and step.name in node:
                    following.append(node[step.name])
            elif isinstance(step, Index):
                if isinstance(node, list) and -len(node) <= step.index < len(node):
                    following.append(node[step.index])
            elif isinstance(node, list):
                following.extend(node)
        nodes = following
        if not nodes:
            break
    return nodes


def get(doc: Any, steps: Path, default: Any = None) -> Any:
    """The first value `steps` reaches, or `default`."""
    found = find(doc, steps)
    return found[0] if found else default


# ---------------------------------------------------------------------------- writing


@dataclass
class Outcome:
    """What a write did: how many places changed, and why the others could not."""

    changed: int = 0
    problems: list[str] = field(default_factory=list)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _where(at: Path) -> str:
    return format_path(at) if at else "the root"


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


class _Setter:
    """One `set_value` call: hands out the value, copied for every place after the first."""

    __slots__ = ("value", "used", "outcome")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.used = False
        self.outcome = Outcome()

    def take(self) -> Any:
        if self.used:
            return _copy(self.value)
        self.used = True
        return self.value

    def build(self, keys: Path) -> Any:
        """Objects for `keys` around the value: ``b.c`` -> ``{"b": {"c": value}}``."""
        value = self.take()
        for step in reversed(keys):
            value = {step.name: value}  # type: ignore[union-attr]
        return value


def set_value(doc: Any, steps: Path, value: Any) -> Outcome:
    """Put `value` at every place `steps` reaches (each gets its own copy)."""
    setter = _Setter(value)
    _set(doc, steps, 0, setter, ())
    return setter.outcome


def _only_keys(steps: Path) -> bool:
    return all(isinstance(s, Key) for s in steps)


def _set(node: Any, steps: Path, i: int, setter: _Setter, at: Path) -> None:
    step = steps[i]
    last = i == len(steps) - 1
    problems = setter.outcome.problems
    if isinstance(step, Key):
        if not isinstance(node, dict):
            problems.append(f"expected an object at {_where(at)}, found {_kind(node)}")
            return
        if last:
            node[step.name] = setter.take()
            setter.outcome.changed += 1
            return
        child = node.get(step.name)
        if child is None:  # missing or null: objects are created, arrays never
            rest = steps[i + 1 :]
            if not _only_keys(rest):
                state = "null" if step.name in node else "missing"
                problems.append(f"{_where(at + (step,))} is {state}; only objects are created, not arrays")
                return
            node[step.name] = setter.build(rest)
            setter.outcome.changed += 1
            return
        _set(child, steps, i + 1, setter, at + (step,))
        return
    if not isinstance(node, list):
        problems.append(f"expected an array at {_where(at)}, found {_kind(node)}")
        return
    if isinstance(step, Index):
        size = len(node)
        position = step.index + size if step.index < 0 else step.index
        if not 0 <= position < size:
            problems.append(
                f"index {step.index} is out of range at {_where(at)} (the array has {size} "
                f"element{'' if size == 1 else 's'})"
            )
            return
        positions: range | tuple[int, ...] = (position,)
    else:
        positions = range(len(node))
    for position in positions:
        here = at + (Index(position),)
        if last:
            node[position] = setter.take()
            setter.outcome.changed += 1
            continue
        child = node[position]
        if child is None and _only_keys(steps[i + 1 :]):
            node[position] = setter.build(steps[i + 1 :])
            setter.outcome.changed += 1
            continue
        _set(child, steps, i + 1, setter, here)


def remove(doc: Any, steps: Path) -> int:
    """Delete every place `steps` reaches; returns how many were deleted (0 when missing)."""
    return _remove(doc, steps, 0)


def _remove(node: Any, steps: Path, i: int) -> int:
    step = steps[i]
    last = i == len(steps) - 1
    if isinstance(step, Key):
        if not isinstance(node, dict) or step.name not in node:
            return 0
        if last:
            del node[step.name]
            return 1
        return _remove(node[step.name], steps, i + 1)
    if not isinstance(node, list):
        return 0
    if isinstance(step, Index):
        if not -len(node) <= step.index < len(node):
            return 0
        if last:
            del node[step.index]
            return 1
        return _remove(node[step.index], steps, i + 1)
    if last:
        count = len(node)
        node.clear()
        return count
    return sum(_remove(child, steps, i + 1) for child in node)


def rename(doc: Any, source: Path, target: Path) -> Outcome:
    """Move the member at `source` to `target` (pairs checked by `check_rename` at load)."""
    last_each = max((i for i, s in enumerate(source) if isinstance(s, Each)), default=-1)
    outcome = Outcome()
    if last_each < 0:
        containers = [doc]
    else:
        containers = find(doc, source[: last_each + 1])
    src, tgt = source[last_each + 1 :], target[last_each + 1 :]
    same_parent = src[:-1] == tgt[:-1]  # decided once: `[*]` may run this per array element
    for container in containers:
        _move(container, src, tgt, same_parent, outcome)
    return outcome


def _move(doc: Any, source: Path, target: Path, same_parent: bool, outcome: Outcome) -> None:
    if len(source) == 1:
        parent = doc
    else:
        parents = find(doc, source[:-1])
        if not parents:
            return
        parent = parents[0]
    key = source[-1].name  # type: ignore[union-attr]
    if not isinstance(parent, dict) or key not in parent:
        return
    new_key = target[-1].name  # type: ignore[union-attr]
    if same_parent:
        if key == new_key:
            return
        if next(reversed(parent)) == key:  # the last member: no rebuild needed to keep its place
            parent.pop(new_key, None)
            parent[new_key] = parent.pop(key)
        else:  # rebuild the object so the member keeps its position
            items = [(new_key if k == key else k, v) for k, v in parent.items() if k != new_key]
            parent.clear()
            parent.update(items)
        outcome.changed += 1
        return
    result = set_value(doc, target, parent[key])
    if result.problems:
        outcome.problems.extend(result.problems)
        return
    del parent[key]
    outcome.changed += 1
