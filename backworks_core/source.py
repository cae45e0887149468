"""Read a YAML blueprint into plain Python data that remembers where every value came from.

Errors in a blueprint must name the file, line and column of the offending key or value,
so the loader works on PyYAML's node graph (which carries marks) instead of `yaml.safe_load`
(which throws them away). Environment references are substituted here, at the value they
came from, so an unset variable can be reported at its exact place.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backworks_core.diagnostics import Diagnostic, Severity, format_key_path

__all__ = ["Loc", "Position", "SourceDocument", "load_file", "parse_yaml", "substitute_env"]

Loc = tuple[str | int, ...]

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Aliases let a few lines stand for an exponentially large document (a "billion laughs" bomb).
# Without aliases a file cannot hold more values than characters; beyond that, aliases may add
# this many values and merge-key entries before building stops with an error.
_ALIAS_ALLOWANCE = 100_000
_MAX_DEPTH = 100  # mappings and lists inside each other; far beyond any real blueprint


@dataclass(frozen=True)
class Position:
    """A 1-based line and column in the source text."""

    line: int
    col: int


@dataclass
class SourceDocument:
    """Parsed blueprint data plus where each key and value sits in the file."""

    filename: str
    data: Any
    value_positions: dict[Loc, Position] = field(default_factory=dict)
    key_positions: dict[Loc, Position] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # Key paths whose value is already reported by a diagnostic above (unset variable,
    # bad tag, ...): the validator skips its own errors there so each mistake shows once.
    error_locs: set[Loc] = field(default_factory=set)

    def locate(self, loc: Loc, *, prefer_key: bool = False) -> Position:
        """Where `loc` is written; walks up to the nearest ancestor the file spells out."""
        loc = tuple(loc)
        if prefer_key and loc in self.key_positions:
            return self.key_positions[loc]
        for end in range(len(loc), -1, -1):
            prefix = loc[:end]
            if prefix in self.value_positions:
                return self.value_positions[prefix]
            if prefix in self.key_positions:
                return self.key_positions[prefix]
        return Position(1, 1)

    def diagnostic(
        self,
        loc: Loc,
        message: str,
        *,
        severity: Severity = "error",
        prefer_key: bool = False,
    ) -> Diagnostic:
        """A Diagnostic for `loc` in this file, located by `locate`."""
        pos = self.locate(loc, prefer_key=prefer_key)
        return Diagnostic(self.filename, pos.line, pos.col, format_key_path(tuple(loc)), message, severity)


def load_file(path: Path, env: Mapping[str, str] | None = None) -> SourceDocument:
    """Read and parse a blueprint file; an unreadable file becomes a diagnostic, not a crash."""
    filename = str(path)
    try:
        raw = Path(path).read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM is allowed
    except OSError as exc:
        return SourceDocument(
            filename, None, diagnostics=[Diagnostic(filename, 0, 0, "", f"cannot read blueprint: {exc.strerror or exc}")]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # located like any other error: the first bad byte
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        col = len(raw[line_start : exc.start].decode("utf-8", "replace")) + 1
        message = f"cannot read blueprint: byte 0x{raw[exc.start]:02x} is not UTF-8 ({exc.reason}); a blueprint is UTF-8 text"
        return SourceDocument(filename, None, diagnostics=[Diagnostic(filename, line, col, "", message)])
    return parse_yaml(text, filename, os.environ if env is None else env)


def parse_yaml(text: str, filename: str, env: Mapping[str, str]) -> SourceDocument:
    """Parse one YAML document into plain data with positions; problems become diagnostics."""
    try:
        loader = _Loader(text)  # the reader rejects unprintable characters right here
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        return SourceDocument(filename, None, diagnostics=[_syntax_diagnostic(filename, text, exc)])
    builder = _Builder(SourceDocument(filename, None), env, budget=len(text) + _ALIAS_ALLOWANCE)
    if root is not None:
        builder.doc.data = builder.build(root, ())
    return builder.doc


def substitute_env(text: str, env: Mapping[str, str]) -> tuple[str, list[str], list[str]]:
    """Expand `${VAR}` / `${VAR:-default}` / `$${`; returns (text, unset names, syntax problems).

    A default is used when the variable is unset or empty (POSIX `:-`); a default may itself
    contain references. When anything is unset or malformed the caller should keep the
    original text: the returned text then has those references replaced by "".
    """
    out, end, unset, problems = _expand(text, 0, env, nested=False)
    assert end == len(text)
    return out, list(dict.fromkeys(unset)), problems


# --------------------------------------------------------------------------------------
# YAML nodes -> plain data


class _Loader(yaml.SafeLoader):
    """SafeLoader that gives each alias use its own start mark (PyYAML reuses the anchor's),
    and refuses nesting deeper than _MAX_DEPTH (PyYAML's composer recurses: RecursionError)."""

    depth = 0  # collections open around the node being composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            if node is None:
                return None
            alias = copy.copy(node)  # shallow: shares `value`, so cycles stay detectable
            alias.start_mark = mark
            return alias
        if not self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent):
            return super().compose_node(parent, index)
        if self.depth >= _MAX_DEPTH:
            problem = f"values nested more than {_MAX_DEPTH} levels deep"
            raise yaml.composer.ComposerError(None, None, problem, self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _position(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _syntax_diagnostic(filename: str, text: str, exc: yaml.YAMLError) -> Diagnostic:
    """One located diagnostic for a YAML error, in the parser's own words."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        if exc.context:
            if problem.startswith("but "):
                problem = f"{exc.context}, {problem}"
            elif exc.context_mark is not None:
                where = f"line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
                problem = f"{problem} ({exc.context} started at {where})"
            else:
                problem = f"{problem} ({exc.context})"
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)
        return Diagnostic(filename, line, col, "", f"invalid YAML: {problem}")
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - text.rfind("\n", 0, exc.position)
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        return Diagnostic(filename, line, col, "", f"invalid YAML: {exc.reason} (character {char})")
    return Diagnostic(filename, 0, 0, "", f"invalid YAML: {exc}")


class _Builder:
    """Turns a node graph into plain values, recording positions and problems on `doc`."""

    def __init__(self, doc: SourceDocument, env: Mapping[str, str], budget: int = 10**9) -> None:
        self.doc = doc
        self.env = env
        self.budget = budget  # values and merge entries left to build (see _ALIAS_ALLOWANCE)
        self.constructor = yaml.SafeLoader("")
        self.active: set[int] = set()  # collections being built, to stop recursive aliases
        self.merging: set[int] = set()  # mappings whose merge keys are being expanded
        self.reported: set[tuple[int, int, str]] = set()  # an aliased node is built once per use

    def error(self, loc: Loc, pos: Position, message: str, *, poison: bool = True) -> None:
        """Report once per place in the file, but mark every key path that inherits the problem."""
        if (pos.line, pos.col, message) not in self.reported:
            self.reported.add((pos.line, pos.col, message))
            self.doc.diagnostics.append(
                Diagnostic(self.doc.filename, pos.line, pos.col, format_key_path(loc), message)
            )
        if poison:
            self.doc.error_locs.add(loc)

    def spend(self, node: yaml.Node, loc: Loc, cost: int = 1) -> bool:
        """False once aliases have expanded the document past its budget; reported once."""
        exhausted = self.budget < 0
        self.budget -= cost
        if self.budget >= 0:
            return True
        if not exhausted:
            message = "aliases expand this blueprint to too many values (an alias bomb?); write the values out instead"
            self.error(loc, _position(node), message)
        return False

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        if not self.spend(node, loc):
            return None
        if len(loc) > _MAX_DEPTH:  # aliases nest what the composer saw flat
            self.error(loc[:_MAX_DEPTH], _position(node), f"values nested more than {_MAX_DEPTH} levels deep (through aliases)")
            return None
        self.doc.value_positions[loc] = _position(node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, loc)
        if id(node.value) in self.active:
            self.error(loc, _position(node), "recursive alias: a value cannot contain itself")
            return None
        expected = _MAP_TAG if isinstance(node, yaml.MappingNode) else _SEQ_TAG
        if node.tag != expected:
            self.error(loc, _position(node), f"unsupported YAML tag {node.tag!r}", poison=False)
        self.active.add(id(node.value))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, loc)
            return [self.build(item, loc + (index,)) for index, item in enumerate(node.value)]
        finally:
            self.active.discard(id(node.value))

    def scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        value, problem = _construct(self.constructor, node)
        if problem is not None:
            self.error(loc, _position(node), problem)
            return node.value
        if isinstance(value, str):
            return self.expand(value, loc, _position(node))
        return value

    def expand(self, text: str, loc: Loc, pos: Position) -> str:
        if "$" not in text:
            return text
        result, unset, problems = substitute_env(text, self.env)
        for problem in problems:
            self.error(loc, pos, problem)
        for name in unset:
            self.error(
                loc,
                pos,
                f"environment variable {name} is not set (write ${{{name}:-default}} to give a default)",
            )
        return text if problems or unset else result

    def key(self, node: yaml.Node, loc: Loc) -> tuple[bool, Any]:
        """A mapping key as its YAML type; collections cannot be keys of a blueprint."""
        if not isinstance(node, yaml.ScalarNode):
            message = "a mapping key must be a plain value, not a list or mapping"
            self.error(loc, _position(node), message, poison=False)  # the key is skipped
            return False, None
        key, problem = _construct(self.constructor, node)
        if problem is not None:
            self.error(loc, _position(node), problem, poison=False)
            return False, None
        return True, key

    def entries(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, tuple[yaml.Node, yaml.Node]]:
        """The effective key -> (key node, value node) of a mapping, merge keys applied.

        Explicit keys win over merged ones; among merged mappings the earlier one wins,
        as in the YAML merge-key spec. Duplicate explicit keys are reported; the last wins.
        """
        self.merging.add(id(node.value))
        try:
            return self._entries(node, loc)
        finally:
            self.merging.discard(id(node.value))

    def _entries(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, tuple[yaml.Node, yaml.Node]]:
        merged: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        explicit: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        if not self.spend(node, loc, len(node.value)):
            return {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                for source in self.merge_sources(value_node, loc):
                    for key, pair in self.entries(source, loc).items():
                        merged.setdefault(key, pair)
                continue
            ok, key = self.key(key_node, loc)
            if not ok:
                continue
            first = explicit.get(key)
            if first is not None:
                self.error(
                    loc + (key,),
                    _position(key_node),
                    f"duplicate key {_show_key(key)} (first at line {first[0].start_mark.line + 1})",
                    poison=False,
                )
                del explicit[key]  # keep the last, in the order it was written
            explicit[key] = (key_node, value_node)
        return {**merged, **explicit}

    def merge_sources(self, node: yaml.Node, loc: Loc) -> list[yaml.MappingNode]:
        if isinstance(node, yaml.MappingNode):
            sources = [node]
        elif isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.MappingNode) for n in node.value):
            sources = list(node.value)
        else:
            message = "a merge key '<<' needs a mapping or a list of mappings"
            self.error(loc, _position(node), message, poison=False)
            return []
        usable = []
        for source in sources:
            if id(source.value) in self.active or id(source.value) in self.merging:
                message = "recursive alias: a mapping cannot merge itself"
                self.error(loc, _position(source), message, poison=False)
            else:
                usable.append(source)
        return usable

    def mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key, (key_node, value_node) in self.entries(node, loc).items():
            self.doc.key_positions[loc + (key,)] = _position(key_node)
            result[key] = self.build(value_node, loc + (key,))
        return result


def _construct(constructor: yaml.SafeLoader, node: yaml.ScalarNode) -> tuple[Any, str | None]:
    """A scalar as its YAML type, or why it cannot be one; the blueprint holds plain values only."""
    if node.tag == _TIMESTAMP_TAG:
        return node.value, None  # dates stay text
    try:
        value = constructor.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError:
        return None, f"unsupported YAML tag {node.tag!r}"
    except (ValueError, KeyError, TypeError):  # `!!int x`, `!!bool maybe`, a number of 5000 digits
        shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
        return None, f"cannot read {shown!r} as {node.tag.rsplit(':', 1)[-1]}"
    if not isinstance(value, str | int | float | bool | None):  # `!!binary` gives bytes
        return None, f"unsupported YAML tag {node.tag!r}"
    if isinstance(value, int) and len(node.value) > 1000:  # 0x…: Python could not even print it
        return None, f"a number of {len(node.value)} characters is too long (at most 1000)"
    return value, None


def _show_key(key: Any) -> str:
    return repr(key) if isinstance(key, str) else str(key)


# --------------------------------------------------------------------------------------
# ${VAR} substitution


def _expand(
    text: str, start: int, env: Mapping[str, str], *, nested: bool
) -> tuple[str, int, list[str], list[str]]:
    """Expand from `start`; inside a default (`nested`) stop at the closing brace."""
    out: list[str] = []
    unset: list[str] = []
    problems: list[str] = []
    i = start
    while i < len(text):
        if text.startswith("$${", i):
            out.append("${")
            i += 3
        elif text.startswith("${", i):
            value, i, ref_unset, ref_problems = _reference(text, i, env)
            out.append(value)
            unset += ref_unset
            problems += ref_problems
        elif nested and text[i] == "}":
            break
        else:
            out.append(text[i])
            i += 1
    return "".join(out), i, unset, problems


def _reference(text: str, start: int, env: Mapping[str, str]) -> tuple[str, int, list[str], list[str]]:
    """Expand the `${...}` at `start`; returns (value, index after it, unset, problems)."""
    name_match = _ENV_NAME.match(text, start + 2)
    after = name_match.end() if name_match else start + 2
    if name_match and text.startswith("}", after):
        name = name_match.group()
        value = env.get(name)
        return (value or "", after + 1, [] if value is not None else [name], [])
    if name_match and text.startswith(":-", after):
        name = name_match.group()
        default, end, default_unset, problems = _expand(text, after + 2, env, nested=True)
        if end >= len(text):
            return "", end, [], problems + [_unclosed(text, start)]
        value = env.get(name)
        if value:
            return value, end + 1, [], problems
        return default, end + 1, default_unset, problems
    close = text.find("}", start)
    if close == -1:
        return "", len(text), [], [_unclosed(text, start)]
    snippet = text[start : close + 1]
    return (
        "",
        close + 1,
        [],
        [
            f"invalid environment reference {snippet!r}: write ${{NAME}} or ${{NAME:-default}}, "
            "where NAME is letters, digits and _ (write $${ for a literal ${)"
        ],
    )


def _unclosed(text: str, start: int) -> str:
    snippet = text[start : start + 30]
    return f"unclosed environment reference {snippet!r}: expected '}}' (write $${{ for a literal ${{)"

