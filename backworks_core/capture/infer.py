"""Inference from recorded traffic: path templates, endpoint groups, examples and JSON Schemas.

Pure functions, no I/O: the capture outputs (blueprint, OpenAPI) are built from what these return.

Path templates
    `infer_templates` turns concrete paths into router templates. It works on one set of paths at
    a time; `group_exchanges` calls it once per host, across all methods, so that `GET /users/7`
    and `DELETE /users/7` land on the same template. Paths are split and percent-decoded exactly
    as the router does, and the segments form a trie. At each trie node:

    * by value: integers become `{x:int}`, UUIDs `{x:uuid}`, and long hex strings, random-looking
      tokens, dates and e-mail addresses plain `{x}`; short words (`me`, `v1`, `search`) stay.
    * by comparing siblings: under a literal parent, at least `SIBLING_MIN_DISTINCT` distinct
      word values whose sub-trees look alike become one parameter (`SIBLING_MIN_DISTINCT_SINGULAR`
      when the parent does not look like a plural collection name). Not at the first segment,
      not directly after a parameter (that position names sub-resources: `/users/7/posts`), not
      under version-like or API-root words (`v1`, `api`), and not where value-based ids already
      sit (an API using numeric ids there uses words for actions: `/users/7`, `/users/search`).
      A word stays literal when it is far more frequent than its siblings (`/users/me`), when it
      looks like a collection (its own children are mostly ids), or when it has sub-structure
      none of the others share while the others share some (`/users/me/settings`).
    * all parameter values at one position share one parameter child, so the result has at most
      one parameter per trie position: every path is matched by its own template, and no two
      templates are duplicates or ambiguous. Mixed kinds (int and uuid ids) merge to plain `{x}`.

    Paths the router cannot match with any template (`*`, `//`) are left out of the result.
    Paths with an empty segment (`/a//b`) or deeper than `MAX_PATH_SEGMENTS` end in `{rest:path}`.

JSON Schema
    `infer_schema` (`backworks_core.capture.json_schema`, re-exported here) merges samples into a
    JSON Schema 2020-12; what a value looks like (an id, a date, a token) is
    `backworks_core.capture.values`, which both inferences ask.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from backworks_core.capture.json_schema import (
    ENUM_MAX_LENGTH,
    ENUM_MAX_VALUES,
    ENUM_MIN_COUNT,
    ENUM_MIN_SAMPLES,
    MAX_ARRAY_ITEMS,
    MAX_PROPERTIES,
    MAX_SCHEMA_DEPTH,
    MIN_REQUIRED_SAMPLES,
    infer_schema,
    json_body,
)
from backworks_core.capture.model import Exchange
from backworks_core.capture.placeholders import PLACEHOLDER, fingerprint
from backworks_core.capture.values import MIN_HEX_LENGTH, MIN_TOKEN_LENGTH, encode_literal, value_kind
from backworks_core.router import Match, Route, Router
from backworks_core.router import _split_path  # the router's own split: templates must match it


__all__ = [
    "ENUM_MAX_LENGTH",
    "ENUM_MAX_VALUES",
    "ENUM_MIN_COUNT",
    "ENUM_MIN_SAMPLES",
    "LITERAL_DOMINANCE",
    "LITERAL_MIN_HITS",
    "MAX_ARRAY_ITEMS",
    "MAX_PATH_SEGMENTS",
    "MAX_PROPERTIES",
    "MAX_SCHEMA_DEPTH",
    "MIN_HEX_LENGTH",
    "MIN_REQUIRED_SAMPLES",
    "MIN_TOKEN_LENGTH",
    "SIBLING_MIN_DISTINCT",
    "SIBLING_MIN_DISTINCT_SINGULAR",
    "EndpointGroup",
    "group_exchanges",
    "infer_schema",
    "infer_templates",
    "json_body",
    "param_name",
    "select_examples",
]


# Distinct word values at one position (under a plural-looking parent such as `users`) that make it
# a parameter; four is where "a few hand-picked names" stops being the likelier explanation.
SIBLING_MIN_DISTINCT = 4
# The same under a parent that does not look like a collection (`/shop/...`): resource names are
# common there, so ask for more evidence.
SIBLING_MIN_DISTINCT_SINGULAR = 8
# A sibling stays literal when seen at least this often and this many times more than the median
# of the other siblings (`/users/me` polled next to a handful of user ids).
LITERAL_MIN_HITS = 5
LITERAL_DOMINANCE = 4
# Deeper paths end in `{rest:path}` here, which bounds the trie on hostile input.
MAX_PATH_SEGMENTS = 32

# Parents under which a position holds API sections, never ids.
_STRUCTURAL_WORDS = frozenset(
    {"api", "apis", "rest", "rpc", "graphql", "public", "private", "internal", "admin", "latest", "stable", "beta", "alpha", "v", "version", "versions"}
)
_VERSION = re.compile(r"v\d+(?:[._]\d+)*(?:[a-z]+\d*)?|\d+(?:\.\d+)+", re.IGNORECASE)


_IRREGULAR = {
    "people": "person",
    "children": "child",
    "men": "man",
    "women": "woman",
    "statuses": "status",
    "indices": "index",
    "matrices": "matrix",
    "analyses": "analysis",
    "aliases": "alias",
    "buses": "bus",
    "caches": "cache",
    "movies": "movie",
    "cookies": "cookie",
}
_UNCOUNTABLE = frozenset(
    {"news", "series", "species", "data", "media", "metadata", "info", "information", "feedback", "analytics", "status", "address"}
)


def _singular(word: str) -> str:
    """Simple English singular, good enough to name `{user_id}` after `users`."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _UNCOUNTABLE or len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "zzes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def param_name(previous: str | None) -> str:
    """The parameter name for a segment after the literal `previous` (`users` → `user_id`).

    Always a valid router name: ASCII letters, digits and `_`, not starting with a digit.
    """
    if not previous:
        return "id"
    text = unicodedata.normalize("NFKD", previous).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)  # orderItems → order_Items
    text = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    if not text:
        return "id"
    head, _, last = text.rpartition("_")
    last = _singular(last)
    text = f"{head}_{last}" if head else last
    if text[0].isdigit():
        text = "_" + text
    if text == "id" or text.endswith("_id"):
        return text
    return text + "_id"


def _unique(name: str, used: set[str]) -> str:
    if name not in used:
        return name
    n = 2
    while f"{name}_{n}" in used:
        n += 1
    return f"{name}_{n}"


@dataclass(slots=True, eq=False)
class _Raw:
    """Concrete segments as recorded, with how many paths end or pass here."""

    hits: int = 0  # paths ending here
    rest_hits: int = 0  # paths whose remainder from here is taken by {rest:path}
    total: int = 0  # all paths through here
    children: dict[str, _Raw] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Gen:
    """The generalized trie: literal children, at most one parameter child, and the templates."""

    ends: bool
    rest: bool
    literals: dict[str, _Gen] = field(default_factory=dict)
    param: _Gen | None = None
    kind: str = ""  # the parameter child's constraint: "int", "uuid" or "" (plain)
    template: str = ""
    rest_template: str = ""


def _prepare(path: str) -> tuple[list[str], int | None] | None:
    """Decoded segments and where `{rest:path}` takes over (None: nowhere); None if unroutable.

    The router never captures an empty segment in a parameter and refuses an empty `{rest:path}`,
    so a path with `//` continues as `{rest:path}` from the segment before the empty one when
    the empty one is last (`/a/b//` → `/a/{rest:path}`).
    """
    segments = _split_path(path)
    if segments is None:
        return None
    rest: int | None = None
    for index, segment in enumerate(segments):
        if not segment:
            rest = index - 1 if index == len(segments) - 1 else index
            if rest < 0:
                return None
            break
    if len(segments) > MAX_PATH_SEGMENTS and (rest is None or rest > MAX_PATH_SEGMENTS):
        rest = MAX_PATH_SEGMENTS
    return segments, rest


def _build_trie(counts: Mapping[tuple[tuple[str, ...], int | None], int]) -> _Raw:
    root = _Raw()
    for (segments, rest), count in counts.items():
        node = root
        node.total += count
        for segment in segments[: rest if rest is not None else len(segments)]:
            child = node.children.get(segment)
            if child is None:
                child = node.children[segment] = _Raw()
            node = child
            node.total += count
        if rest is None:
            node.hits += count
        else:
            node.rest_hits += count
    return root


def _child_keys(nodes: list[_Raw]) -> set[str]:
    """What follows a value, with identifiers reduced to their kind, for comparing siblings."""
    keys: set[str] = set()
    for node in nodes:
        for value in node.children:
            kind = value_kind(value)
            keys.add(f"{{{kind}}}" if kind else value)
    return keys


def _looks_plural(word: str) -> bool:
    lowered = word.lower()
    if lowered in _IRREGULAR or lowered in _UNCOUNTABLE:
        return True
    return lowered.endswith("s") and not lowered.endswith(("ss", "us", "is"))


def _sibling_rule_applies(parent: str) -> bool:
    """Only under a literal that could be a collection: not after `/api` or `/v1`."""
    return parent.lower() not in _STRUCTURAL_WORDS and not _VERSION.fullmatch(parent)


def _median_of_others(ordered: list[int], value: int) -> float:
    """Median of `ordered` (sorted) without one occurrence of `value`, in O(log n)."""
    skip = bisect_left(ordered, value)
    count = len(ordered) - 1

    def at(k: int) -> int:
        return ordered[k] if k < skip else ordered[k + 1]

    middle = count // 2
    return float(at(middle)) if count % 2 else (at(middle - 1) + at(middle)) / 2


def _sibling_params(children: dict[str, list[_Raw]], words: list[str], parent: str) -> set[str]:
    """The word values at one position that are really identifiers, by comparing them."""
    needed = SIBLING_MIN_DISTINCT if _looks_plural(parent) else SIBLING_MIN_DISTINCT_SINGULAR
    if len(words) < needed:
        return set()
    candidates: list[str] = []
    for word in words:
        grandchildren = [value for node in children[word] for value in node.children]
        ids = sum(1 for value in grandchildren if value_kind(value))
        if ids and ids * 2 >= len(grandchildren):
            continue  # a collection: `/shop/orders/17`
        candidates.append(word)
    if len(candidates) < needed:
        return set()
    hits = {word: sum(node.total for node in children[word]) for word in candidates}
    ordered = sorted(hits.values())
    keep: set[str] = set()
    for word in candidates:
        if hits[word] >= LITERAL_MIN_HITS and hits[word] >= LITERAL_DOMINANCE * _median_of_others(ordered, hits[word]):
            keep.add(word)  # far more frequent than the ids next to it: `/users/me`
    keys = {word: _child_keys(children[word]) for word in candidates}
    structured = [word for word in candidates if keys[word]]
    if len(structured) >= 2:
        shared = Counter(key for word in structured for key in keys[word])
        if not any(count >= 2 for count in shared.values()):
            return set()  # no two share what follows them: names of different things
        for word in structured:
            if all(shared[key] == 1 for key in keys[word]):
                keep.add(word)  # its own sub-structure: `/users/me/settings` next to `/users/7/posts`
    chosen = {word for word in candidates if word not in keep}
    return chosen if len(chosen) >= needed else set()


def _generalize(nodes: list[_Raw], parent: str | None) -> _Gen:
    """Decide literal vs parameter for the children of `nodes` (one trie position), recursively.

    `parent` is the literal that leads here, None at the root and after a parameter.
    """
    gen = _Gen(ends=any(n.hits for n in nodes), rest=any(n.rest_hits for n in nodes))
    children: dict[str, list[_Raw]] = {}
    for node in nodes:
        for value, child in node.children.items():
            children.setdefault(value, []).append(child)
    kinds = {value: value_kind(value) for value in children}
    params = {value for value, kind in kinds.items() if kind}
    words = sorted(value for value, kind in kinds.items() if not kind)
    if not params and parent is not None and _sibling_rule_applies(parent):
        params = _sibling_params(children, words, parent)
    redacted = {found.group(1) for value in params if (found := PLACEHOLDER.fullmatch(value))}
    if redacted:  # `passwd` recorded before it was known a secret, `[REDACTED:…]` after: one position
        params = params | {value for value in words if fingerprint(value) in redacted}
    for value in words:
        if value not in params:
            gen.literals[value] = _generalize(children[value], value)
    if params:
        ordered = sorted(params)
        param_kinds = {kinds[value] for value in ordered}
        only = next(iter(param_kinds)) if len(param_kinds) == 1 else None
        gen.kind = only if only in ("int", "uuid") else ""  # mixed kinds: one plain parameter
        gen.param = _generalize([child for value in ordered for child in children[value]], None)
    return gen


def _assign_templates(gen: _Gen, parts: list[str], used: set[str], last_literal: str | None) -> None:
    """Write each node's template; parameter names follow the nearest literal before them."""
    gen.template = "/" + "/".join(parts)
    if gen.rest:
        gen.rest_template = "/" + "/".join([*parts, "{" + _unique("rest", used) + ":path}"])
    for value, child in gen.literals.items():
        encoded = encode_literal(value)
        assert encoded is not None  # value_kind made unencodable values parameters
        _assign_templates(child, [*parts, encoded], used, value)
    if gen.param is not None:
        name = _unique(param_name(last_literal), used)
        part = "{" + name + (":" + gen.kind if gen.kind else "") + "}"
        _assign_templates(gen.param, [*parts, part], used | {name}, last_literal)


def _lookup(root: _Gen, segments: list[str], rest: int | None) -> str:
    node = root
    for segment in segments[: rest if rest is not None else len(segments)]:
        child = node.literals.get(segment)
        node = child if child is not None else node.param  # type: ignore[assignment]
    return node.rest_template if rest is not None else node.template


def infer_templates(paths: Iterable[str]) -> dict[str, str]:
    """Map each raw path to a router template inferred from all of `paths` together.

    Repeated paths count: how often a value is seen helps decide literal vs parameter. The
    result follows the input order and leaves out paths no template can match (`*`, `//`).
    Call it once per host (as `group_exchanges` does): paths of one API inform each other.
    """
    prepared: dict[str, tuple[list[str], int | None]] = {}
    counts: Counter[tuple[tuple[str, ...], int | None]] = Counter()
    for path in paths:
        if path not in prepared:
            found = _prepare(path)
            if found is None:
                continue
            prepared[path] = found
        segments, rest = prepared[path]
        counts[(tuple(segments), rest)] += 1
    root = _generalize([_build_trie(counts)], None)
    _assign_templates(root, [], set(), None)
    return {path: _lookup(root, segments, rest) for path, (segments, rest) in prepared.items()}


@dataclass
class EndpointGroup:
    """The exchanges of one endpoint: same host, method and inferred template, in arrival order.

    `params[i]` holds the path parameters of `exchanges[i]`, decoded as the router decodes them.
    """

    method: str
    template: str
    host: str
    exchanges: list[Exchange] = field(default_factory=list)
    params: list[dict[str, str]] = field(default_factory=list)


def _host_key(host: str) -> str:
    return host.rstrip(".").lower()


def group_exchanges(exchanges: Sequence[Exchange]) -> list[EndpointGroup]:
    """Group by host, method (upper-case) and template, in order of first appearance.

    Templates are inferred per host across methods. Exchanges whose path no template can match
    (`*`, `//`) are left out. Path parameters come from the router itself, so they are what a
    mock endpoint built from the group will see.
    """
    by_host: dict[str, list[str]] = {}
    for exchange in exchanges:
        by_host.setdefault(_host_key(exchange.host), []).append(exchange.path)
    templates: dict[str, dict[str, str]] = {}
    routers: dict[str, Router] = {}
    for host, paths in by_host.items():
        templates[host] = infer_templates(paths)
        unique = list(dict.fromkeys(templates[host].values()))
        routers[host] = Router([Route(t, frozenset({"ANY"}), None, t) for t in unique])

    groups: dict[tuple[str, str, str], EndpointGroup] = {}
    for exchange in exchanges:
        host = _host_key(exchange.host)
        template = templates[host].get(exchange.path)
        if template is None:
            continue
        match = routers[host].match(exchange.method, exchange.path)
        params = match.params if isinstance(match, Match) else {}
        method = exchange.method.upper()
        group = groups.get((host, method, template))
        if group is None:
            group = groups[(host, method, template)] = EndpointGroup(method, template, host)
        group.exchanges.append(exchange)
        group.params.append(dict(params))
    return list(groups.values())


def select_examples(group: EndpointGroup, max_examples: int) -> list[Exchange]:
    """Up to `max_examples` exchanges that show the endpoint's variety, in arrival order.

    Greedy passes in arrival order, each adding exchanges that bring something not yet shown:
    a new status, then a new query shape (set of query keys), then new path parameter values,
    then a request not yet chosen (query values and body), so a mock can tell examples apart.
    Identical requests are never chosen twice.
    """
    if max_examples <= 0:
        return []
    items = list(zip(group.exchanges, group.params or [{}] * len(group.exchanges)))
    features = [
        lambda e, p: e.status,
        lambda e, p: frozenset(key for key, _ in e.query),
        lambda e, p: tuple(sorted(p.items())),
        lambda e, p: (tuple(sorted(p.items())), tuple(e.query), e.request_body),
    ]
    chosen: list[int] = []
    for feature in features:
        covered = {feature(*items[i]) for i in chosen}
        for index, item in enumerate(items):
            if len(chosen) >= max_examples:
                break
            if index in chosen:
                continue
            value = feature(*item)
            if value not in covered:
                covered.add(value)
                chosen.append(index)
    return [items[i][0] for i in sorted(chosen)]
