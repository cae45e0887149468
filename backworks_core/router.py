"""Route matching for blueprint endpoints: a segment trie, no mitmproxy dependency.

Endpoint paths are templates (``/users/{id:int}/posts``).  They are parsed once,
inserted into a trie whose literal edges are dict lookups, and matched by a
depth-first walk that tries the more specific branch first and backtracks.  The
cost of a match therefore depends on the request's path length and on how many
templates share its prefix, not on how many endpoints the blueprint has.

Routes the precedence rules cannot tell apart are found at load by backworks_core.route_conflicts.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

__all__ = [
    "Match",
    "MethodNotAllowed",
    "Route",
    "Router",
    "Segment",
    "parse_template",
    "template_shape",
]

SegmentKind = Literal["literal", "param", "int", "uuid", "path"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONSTRAINTS: dict[str, SegmentKind] = {"int": "int", "uuid": "uuid", "path": "path"}
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_ANY = "ANY"


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Segment:
    """One parsed path segment; ``value`` is the literal text (decoded) or the parameter name."""

    kind: SegmentKind
    value: str


def parse_template(template: str) -> tuple[Segment, ...]:
    """Parse an endpoint path template, raising ValueError with a message a user can act on.

    Literal segments are percent-decoded so that ``/caf%C3%A9`` and ``/café`` are the
    same route: requests are decoded before comparison too.
    """
    if not template.startswith("/"):
        raise ValueError(f"path template {template!r} must start with '/'")
    for bad in "?#":
        if bad in template:
            raise ValueError(
                f"path template {template!r} contains {bad!r}; routes match the path only, "
                "so leave the query string and fragment out (use '%3F' / '%23' for a literal character)"
            )
    if template == "/":
        return ()  # the root: zero segments
    body = template[1:-1] if template.endswith("/") else template[1:]  # "/hello/" is "/hello"
    raw_segments = body.split("/")
    segments: list[Segment] = []
    seen: set[str] = set()
    for position, raw in enumerate(raw_segments):
        if not raw:
            raise ValueError(
                f"path template {template!r} has an empty segment ('//'); remove the extra '/'"
            )
        segment = _parse_segment(template, raw)
        if segment.kind != "literal":
            if segment.value in seen:
                raise ValueError(
                    f"parameter {segment.value!r} appears twice in path template {template!r}; "
                    "give each parameter its own name"
                )
            seen.add(segment.value)
        if segment.kind == "path" and position != len(raw_segments) - 1:
            raise ValueError(
                f"{raw!r} in path template {template!r} matches the rest of the path, "
                "so it must be the last segment"
            )
        segments.append(segment)
    return tuple(segments)


def _parse_segment(template: str, raw: str) -> Segment:
    """Parse one non-empty raw segment of ``template``."""
    if raw.startswith("{") and raw.endswith("}") and "{" not in raw[1:-1] and "}" not in raw[1:-1]:
        name, colon, constraint = raw[1:-1].partition(":")
        _check_name(template, raw, name)
        if not colon:
            return Segment("param", name)
        kind = _CONSTRAINTS.get(constraint)
        if kind is None:
            raise ValueError(
                f"unknown parameter type {constraint!r} in {raw!r} of path template {template!r}; "
                "use one of int, uuid, path (or no type to match any single segment)"
            )
        return Segment(kind, name)
    if "{" in raw or "}" in raw:
        if raw.count("{") != raw.count("}"):
            raise ValueError(
                f"unbalanced '{{' or '}}' in segment {raw!r} of path template {template!r}"
            )
        raise ValueError(
            f"segment {raw!r} of path template {template!r} mixes a parameter with other text; "
            "a parameter must be a whole segment (e.g. '/files/{name}', not '/file.{ext}')"
        )
    if raw.startswith(":"):
        name = raw[1:]
        if ":" in name:
            raise ValueError(
                f"segment {raw!r} of path template {template!r}: ':name' parameters take no type; "
                f"write '{{{name}}}' instead"
            )
        _check_name(template, raw, name)
        return Segment("param", name)
    return Segment("literal", unquote(raw) if "%" in raw else raw)


def _check_name(template: str, raw: str, name: str) -> None:
    """Parameter names become keys in handler contexts, so keep them identifier-like."""
    if not name:
        raise ValueError(
            f"parameter {raw!r} in path template {template!r} needs a name, e.g. '{{id}}'"
        )
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"parameter name {name!r} in path template {template!r} is not valid; "
            "use letters, digits and '_', not starting with a digit"
        )


def _shape_literal(text: str) -> str:
    """Escape the few characters that would make a shape ambiguous, keeping it readable."""
    if any(c in text for c in "%/{}"):
        return (
            text.replace("%", "%25").replace("/", "%2F").replace("{", "%7B").replace("}", "%7D")
        )
    return text


def template_shape(segments: Iterable[Segment]) -> str:
    """Canonical template with parameter names erased: equal shapes match the same requests."""
    parts = [
        _shape_literal(s.value)
        if s.kind == "literal"
        else "{}"
        if s.kind == "param"
        else "{" + s.kind + "}"
        for s in segments
    ]
    return "/" + "/".join(parts)


# --------------------------------------------------------------------------- public results


@dataclass(frozen=True)
class Route:
    """An endpoint as the router sees it; ``payload`` is whatever the caller wants back."""

    template: str
    methods: frozenset[str]  # upper-case; may contain "ANY"
    host: str | None
    payload: Any


@dataclass(frozen=True)
class Match:
    """A request resolved to one route, with decoded parameter values."""

    route: Route
    params: dict[str, str]


@dataclass(frozen=True)
class MethodNotAllowed:
    """The path exists but not for this method: answer 405 with ``Allow: <allow>``."""

    allow: tuple[str, ...]


# --------------------------------------------------------------------------- host helpers


def _normalize_host(host: str) -> str:
    """Host for glob matching: lower-case, without ':port' or a trailing dot."""
    if not host:
        return ""
    if host.startswith("["):  # IPv6 literal, "[::1]:8080"
        end = host.find("]")
        host = host[: end + 1] if end != -1 else host
    else:
        name, colon, port = host.rpartition(":")
        if colon and port.isdigit():
            host = name
    return host.rstrip(".").lower()


def normalize_glob(host: str | None) -> str | None:
    """Globs compare case-insensitively; an empty glob means no host restriction."""
    return host.lower() if host else None


def normalize_methods(methods: Iterable[str]) -> frozenset[str]:
    return frozenset(m.upper() for m in methods)


# --------------------------------------------------------------------------- the trie


@dataclass(slots=True, eq=False)
class _Entry:
    """A route placed at a leaf, with what matching needs precomputed."""

    index: int
    route: Route
    names: tuple[str, ...]  # parameter names in path order, zipped with captured values
    methods: frozenset[str]
    host_re: re.Pattern[str] | None


@dataclass(slots=True, eq=False)
class _Leaf:
    """Routes that end at one trie position, split into host-specific and host-less."""

    entries: list[_Entry] = field(default_factory=list)
    host_entries: tuple[tuple[re.Pattern[str], _Entry], ...] = ()
    exact: dict[str, _Entry] = field(default_factory=dict)  # host-less, by method (HEAD->GET filled)
    any: _Entry | None = None  # first host-less ANY route
    plain_methods: frozenset[str] = frozenset()  # methods of host-less routes, for Allow
    has_plain: bool = False

    def freeze(self) -> None:
        """Precompute per-method lookups so a leaf resolves with one or two dict reads."""
        self.entries.sort(key=lambda e: e.index)
        self.host_entries = tuple((e.host_re, e) for e in self.entries if e.host_re is not None)
        plain = [e for e in self.entries if e.host_re is None]
        self.has_plain = bool(plain)
        methods: set[str] = set()
        for entry in plain:
            for method in entry.methods:
                if method == _ANY:
                    if self.any is None:
                        self.any = entry
                else:
                    self.exact.setdefault(method, entry)
                    methods.add(method)
        if "HEAD" not in self.exact and "GET" in self.exact:
            self.exact["HEAD"] = self.exact["GET"]
        self.plain_methods = frozenset(methods)


@dataclass(slots=True, eq=False)
class _Node:
    """One trie position; children are tried literal > int > uuid > param > path."""

    literals: dict[str, _Node] = field(default_factory=dict)
    int_child: _Node | None = None
    uuid_child: _Node | None = None
    param_child: _Node | None = None
    leaf: _Leaf | None = None  # routes ending exactly here
    path_leaf: _Leaf | None = None  # routes whose next (last) segment is {x:path}


@dataclass(slots=True, eq=False)
class _Search:
    """Per-call state for one match: the request, and the methods of every leaf the path reached."""

    method: str
    host: str
    allowed: set[str] | None = None


def _method_rank(entry: _Entry, method: str) -> int:
    """0 exact method, 1 GET serving HEAD, 2 ANY, 3 no fit."""
    methods = entry.methods
    if method in methods:
        return 0
    if method == "HEAD" and "GET" in methods:
        return 1
    if _ANY in methods:
        return 2
    return 3


def _allow(methods: Iterable[str]) -> MethodNotAllowed:
    allowed = {m for m in methods if m != _ANY}
    if "GET" in allowed:
        allowed.add("HEAD")
    return MethodNotAllowed(tuple(sorted(allowed)))


def _resolve(leaf: _Leaf, values: list[str], search: _Search) -> Match | None:
    """Pick a route at a leaf: host-specific over host-less, then exact > GET-for-HEAD > ANY, then order."""
    method = search.method
    matched_hosts: list[_Entry] = []
    if leaf.host_entries:
        host = search.host
        matched_hosts = [e for pattern, e in leaf.host_entries if pattern.match(host)]
        best: _Entry | None = None
        best_rank = 3
        for entry in matched_hosts:
            rank = _method_rank(entry, method)
            if rank < best_rank:
                best, best_rank = entry, rank
                if rank == 0:
                    break
        if best is not None:
            return Match(best.route, dict(zip(best.names, values)))
    if leaf.has_plain:
        plain = leaf.exact.get(method) or leaf.any
        if plain is not None:
            return Match(plain.route, dict(zip(plain.names, values)))
    if matched_hosts or leaf.has_plain:
        # Allow lists every method some route would take for this path, not only the first leaf's.
        if search.allowed is None:
            search.allowed = set()
        search.allowed.update(leaf.plain_methods)
        for entry in matched_hosts:
            search.allowed.update(entry.methods)
    return None


def _walk(node: _Node, segments: list[str], i: int, values: list[str], search: _Search) -> Match | None:
    """Depth-first, most specific branch first; each trie node is visited at most once."""
    if i == len(segments):
        found = _resolve(node.leaf, values, search) if node.leaf is not None else None
        if found is None and i == 0 and node.path_leaf is not None:
            # `/{rest:path}` is a catch-all: it answers the root too, with an empty value (a
            # `{x:path}` deeper in a template still needs at least one segment).
            values.append("")
            found = _resolve(node.path_leaf, values, search)
            values.pop()
        return found
    segment = segments[i]
    child = node.literals.get(segment)
    if child is not None:
        found = _walk(child, segments, i + 1, values, search)
        if found is not None:
            return found
    if segment:  # parameters never capture an empty segment ("/a//b")
        if node.int_child is not None and segment.isascii() and segment.isdigit():
            values.append(segment)
            found = _walk(node.int_child, segments, i + 1, values, search)
            values.pop()
            if found is not None:
                return found
        if node.uuid_child is not None and len(segment) == 36 and _UUID.fullmatch(segment):
            values.append(segment)
            found = _walk(node.uuid_child, segments, i + 1, values, search)
            values.pop()
            if found is not None:
                return found
        if node.param_child is not None:
            values.append(segment)
            found = _walk(node.param_child, segments, i + 1, values, search)
            values.pop()
            if found is not None:
                return found
    if node.path_leaf is not None:
        rest = "/".join(segments[i:])
        if rest:
            values.append(rest)
            found = _resolve(node.path_leaf, values, search)
            values.pop()
            return found
    return None


def normalize_path(path: str) -> str | None:
    """The path as the router sees it: decoded segments, no trailing slash; None if no route can match.

    Anything else that selects requests by path (middleware filters) must use this form too, or
    `/api/%72esources/` would slip past a filter written for `/api/resources`.
    """
    segments = _split_path(path)
    return None if segments is None else "/" + "/".join(segments)


def _split_path(path: str) -> list[str] | None:
    """Raw request path -> decoded segments; None for paths no route can match ("*")."""
    if "?" in path or "#" in path:  # tolerate callers that forgot to strip the query
        path = path.partition("?")[0].partition("#")[0]
    if not path or path == "/":
        return []
    if path[0] != "/":
        return None
    end = len(path) - 1 if path[-1] == "/" else len(path)
    return [unquote(s) if "%" in s else s for s in path[1:end].split("/")]


class Router:
    """Resolves (method, path, host) to a route; build once per blueprint, match per request."""

    __slots__ = ("_root", "_routes")

    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes: tuple[Route, ...] = tuple(routes)
        self._root = _Node()
        leaves: list[_Leaf] = []
        for index, route in enumerate(self._routes):
            segments = parse_template(route.template)
            glob = normalize_glob(route.host)
            entry = _Entry(
                index=index,
                route=route,
                names=tuple(s.value for s in segments if s.kind != "literal"),
                methods=normalize_methods(route.methods),
                host_re=re.compile(fnmatch.translate(glob)) if glob is not None else None,
            )
            leaf = self._leaf_for(segments, leaves)
            leaf.entries.append(entry)
        for leaf in leaves:
            leaf.freeze()

    @property
    def routes(self) -> tuple[Route, ...]:
        return self._routes

    def _leaf_for(self, segments: tuple[Segment, ...], leaves: list[_Leaf]) -> _Leaf:
        """Walk/extend the trie along ``segments`` and return (creating) its leaf."""
        node = self._root
        for segment in segments:
            kind = segment.kind
            if kind == "path":
                if node.path_leaf is None:
                    node.path_leaf = _Leaf()
                    leaves.append(node.path_leaf)
                return node.path_leaf
            if kind == "literal":
                child = node.literals.get(segment.value)
                if child is None:
                    child = node.literals[segment.value] = _Node()
            elif kind == "int":
                child = node.int_child = node.int_child or _Node()
            elif kind == "uuid":
                child = node.uuid_child = node.uuid_child or _Node()
            else:
                child = node.param_child = node.param_child or _Node()
            node = child
        if node.leaf is None:
            node.leaf = _Leaf()
            leaves.append(node.leaf)
        return node.leaf

    def match(self, method: str, path: str, host: str = "") -> Match | MethodNotAllowed | None:
        """A Match, a MethodNotAllowed (405) if only the method is wrong, or None (404)."""
        segments = _split_path(path)
        if segments is None:
            return None
        search = _Search(method.upper(), _normalize_host(host))
        found = _walk(self._root, segments, 0, [], search)
        if found is not None:
            return found
        return _allow(search.allowed) if search.allowed is not None else None
