"""Blueprint route conflicts: routes the router cannot tell apart, found at load.

Two endpoints with the same template shape and method are a duplicate (an error); two whose
host globs overlap are told apart by blueprint order only (a warning, with a host both match).
The router (backworks_core.router) only matches; this is the check the loader runs before it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from backworks_core.router import Route, normalize_glob, normalize_methods, parse_template, template_shape

__all__ = ["Conflict", "check_routes"]


@dataclass(frozen=True)
class Conflict:
    """Two routes the router cannot tell apart (error) or can only by blueprint order (warning)."""

    severity: Literal["error", "warning"]
    first: int
    second: int
    message: str


def _has_wildcards(glob: str) -> bool:
    return "*" in glob or "?" in glob or "[" in glob


_STAR = None  # token for '*' in a tokenized glob


def _glob_tokens(glob: str) -> list[re.Pattern[str] | str | None]:
    """Tokenize like fnmatch.translate: None for '*', a literal char, or a one-char pattern."""
    tokens: list[re.Pattern[str] | str | None] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            if not tokens or tokens[-1] is not _STAR:
                tokens.append(_STAR)
        elif c == "?":
            tokens.append(re.compile(r"(?s:.)\Z"))
        elif c == "[":
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                tokens.append("[")
            else:
                tokens.append(re.compile(fnmatch.translate(glob[i - 1 : j + 1])))
                i = j + 1
        else:
            tokens.append(c)
    return tokens


_PREFERRED = "abcdefghijklmnopqrstuvwxyz0123456789-."


def _glob_overlap(a: str, b: str) -> str | None:
    """A host both globs match (a witness for the message), or None if they are disjoint.

    Breadth-first search over the product of the two globs' automata.  Characters
    are drawn from printable ASCII, the globs' own characters and one stand-in for
    everything else, which is exact for any class fnmatch can express over hosts.
    """
    if not _has_wildcards(a) or not _has_wildcards(b):
        literal, glob = (a, b) if not _has_wildcards(a) else (b, a)
        return literal if fnmatch.fnmatchcase(literal, glob) else None
    ta, tb = _glob_tokens(a), _glob_tokens(b)
    alphabet = list(dict.fromkeys(_PREFERRED + "".join(chr(c) for c in range(0x21, 0x7F)).lower() + a + b + "\u0100"))

    def accepts(token: re.Pattern[str] | str | None) -> frozenset[str]:
        if token is _STAR:
            return frozenset(alphabet)
        if isinstance(token, str):
            return frozenset((token,))
        return frozenset(c for c in alphabet if token.match(c))

    sets_a = [accepts(t) for t in ta]
    sets_b = [accepts(t) for t in tb]
    goal = (len(ta), len(tb))
    parent: dict[tuple[int, int], tuple[tuple[int, int], str] | None] = {(0, 0): None}
    queue = [(0, 0)]
    for state in queue:  # the list grows while iterating: a FIFO without deque
        if state == goal:
            out: list[str] = []
            step = parent[state]
            while step is not None:
                prev, char = step
                out.append(char)
                step = parent[prev]
            return "".join(reversed(out))
        i, j = state
        moves: list[tuple[tuple[int, int], str]] = []
        if i < len(ta) and ta[i] is _STAR:
            moves.append(((i + 1, j), ""))
        if j < len(tb) and tb[j] is _STAR:
            moves.append(((i, j + 1), ""))
        if i < len(ta) and j < len(tb) and not (ta[i] is _STAR and tb[j] is _STAR):
            common = sets_a[i] & sets_b[j]
            if common:
                char = min(common, key=alphabet.index)
                nxt = (i if ta[i] is _STAR else i + 1, j if tb[j] is _STAR else j + 1)
                moves.append((nxt, char))
        for nxt, char in moves:
            if nxt not in parent:
                parent[nxt] = (state, char)
                queue.append(nxt)
    return None


def check_routes(routes: Sequence[Route], names: Sequence[str] | None = None) -> list[Conflict]:
    """Find routes the precedence rules cannot separate, in O(n) plus the size of each clash.

    Only routes with the same template shape can tie: any other difference is settled
    by per-segment precedence, a host glob over no host, or an explicit method over ANY.
    Conflicts are reported against the first route that claimed the method (and host),
    one per pair of routes, sorted by the later route.
    """
    groups: dict[str, list[int]] = {}
    for index, route in enumerate(routes):
        groups.setdefault(template_shape(parse_template(route.template)), []).append(index)

    clashes: dict[tuple[int, int, str], set[str]] = {}
    witnesses: dict[tuple[int, int], str] = {}
    overlap_cache: dict[tuple[str, str], str | None] = {}
    for indexes in groups.values():
        if len(indexes) < 2:
            continue
        owner: dict[tuple[str, str | None], int] = {}  # (method, host glob) -> first route
        globs_by_method: dict[str, dict[str, int]] = {}  # method -> host glob -> first route
        for index in indexes:
            glob = normalize_glob(routes[index].host)
            for method in sorted(normalize_methods(routes[index].methods)):
                first = owner.get((method, glob))
                if first is None:
                    owner[(method, glob)] = index
                    if glob is not None:
                        globs_by_method.setdefault(method, {})[glob] = index
                else:
                    clashes.setdefault((first, index, "error"), set()).add(method)
        for method, globs in globs_by_method.items():
            if len(globs) < 2:
                continue
            items = list(globs.items())
            wild = [(g, i) for g, i in items if _has_wildcards(g)]
            # Distinct literal hosts never overlap each other: only pairs with a wildcard can.
            for position, (glob_w, index_w) in enumerate(wild):
                others = [(g, i) for g, i in items if not _has_wildcards(g)] + wild[position + 1 :]
                for glob_o, index_o in others:
                    key = (glob_w, glob_o) if glob_w < glob_o else (glob_o, glob_w)
                    if key not in overlap_cache:
                        overlap_cache[key] = _glob_overlap(*key)
                    witness = overlap_cache[key]
                    if witness is not None:
                        pair = (min(index_w, index_o), max(index_w, index_o))
                        clashes.setdefault((*pair, "warning"), set()).add(method)
                        witnesses.setdefault(pair, witness)

    def name(index: int) -> str:
        return names[index] if names is not None else f"endpoint {index}"

    conflicts: list[Conflict] = []
    for (first, second, severity), methods in clashes.items():
        a, b = routes[first], routes[second]
        listed = ", ".join(sorted(methods))
        as_first = f" (as {a.template})" if a.template != b.template else ""
        if severity == "error":
            where = f" for host {b.host!r}" if b.host else ""
            message = (
                f"duplicate route: {listed} {b.template}{where} "
                f"is already defined by {name(first)}{as_first}"
            )
            conflicts.append(Conflict("error", first, second, message))
        else:
            witness = witnesses[(first, second)]
            message = (
                f"ambiguous route: {listed} {b.template} for host {b.host!r} overlaps {name(first)}"
                f"{as_first} for host {a.host!r}; a request for a host matching both "
                f"(e.g. {witness!r}) goes to {name(first)}"
            )
            conflicts.append(Conflict("warning", first, second, message))
    conflicts.sort(key=lambda c: (c.second, c.first, c.severity))
    return conflicts
