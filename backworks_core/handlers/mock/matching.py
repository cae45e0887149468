"""Which example answers a request: the conditions of a `when`, compiled once (`Conditions`),
and the comparisons they make (redacted values, JSON containment); decisions: the package doc."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from backworks_core.bodies import loads_json
from backworks_core.capture.redact import PLACEHOLDER, fingerprint, matches_placeholder
from backworks_core.context import RequestContext
from backworks_core.handlers.mock.config import MockWhen
from backworks_core.limits import request_body


def _same(a: Any, b: Any) -> bool:
    """JSON equality: `true` is not `1` (Python says it is), `1` is `1.0`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def json_contains(actual: Any, expected: Any) -> bool:
    """`expected` is a subset of `actual`: objects recursively, everything else equal."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and json_contains(actual[k], v) for k, v in expected.items())
    return _same(actual, expected)


def _leaves(value: Any) -> int:
    if isinstance(value, dict) and value:
        return sum(_leaves(v) for v in value.values())
    return 1


NO_JSON = object()


@dataclass(frozen=True)
class Conditions:
    path: tuple[tuple[str, str], ...]
    query: tuple[tuple[str, tuple[str, ...]], ...]
    headers: tuple[tuple[str, str | None], ...]  # lower-cased names; None: must be absent
    has_body: bool
    body: Any
    specificity: int

    @classmethod
    def of(cls, when: MockWhen) -> Conditions:
        query = tuple(sorted((k, tuple(v) if isinstance(v, list) else (v,)) for k, v in when.query.items()))
        headers = tuple(sorted((k.lower(), v) for k, v in when.headers.items()))
        specificity = len(when.path) + len(query) + len(headers) + (_leaves(when.body) if when.has_body else 0)
        return cls(tuple(sorted(when.path.items())), query, headers, when.has_body, when.body, specificity)

    @property
    def key(self) -> tuple[Any, ...]:
        """Equal for examples recorded from the same request: they form a sequence."""
        body = json.dumps(self.body, sort_keys=True, separators=(",", ":")) if self.has_body else None
        return (self.path, self.query, self.headers, self.has_body, body)

    def matches(self, ctx: RequestContext, request_json: Any) -> bool:
        params = ctx.params
        for name, value in self.path:
            sent_param = params.get(name)
            if sent_param is None or not value_matches(value, sent_param):
                return False
        if self.query:
            query = ctx.request.query
            for name, values in self.query:
                sent_values = query.get_all(name)
                if len(sent_values) != len(values) or not all(value_matches(v, s) for v, s in zip(values, sent_values)):
                    return False
        if self.headers:
            headers = ctx.request.headers
            for name, wanted in self.headers:
                sent = headers.get_all(name)
                if wanted is None:
                    if sent:
                        return False
                elif not sent or not (any(value_matches(wanted, s) for s in sent) or value_matches(wanted, ", ".join(sent))):
                    return False
        if self.has_body:
            body = request_json()
            if body is NO_JSON or not json_contains(body, self.body):
                return False
        return True


# A redacted value as capture writes it: `[REDACTED:<12 hex>]` stands for one secret (its
# fingerprint, backworks_core.capture.redact), a bare `[REDACTED]` (older recordings) for any value.
_REDACTED_PART = re.compile(r"\[REDACTED(?::([0-9a-f]{12}))?\]")
_MAX_PLACEHOLDERS = 16  # per value: bounds the search below


def value_matches(recorded: str, sent: str) -> bool:
    """A recorded path, query or header value matches what the client sent now.

    Equal text matches. A placeholder, alone or inside the value (`Bearer [REDACTED:…]`,
    `sid=[REDACTED:…]; lang=en`), matches the non-empty text whose fingerprint it carries, so
    a recording redacted on the way still answers the request it was recorded from.
    """
    if recorded == sent:
        return True
    if "[REDACTED" not in recorded:
        return False
    whole = PLACEHOLDER.fullmatch(recorded)
    if whole is not None:
        return bool(sent) and matches_placeholder(recorded, sent)
    parts = _REDACTED_PART.split(recorded)
    literals, prints = parts[0::2], parts[1::2]
    if not prints or len(prints) > _MAX_PLACEHOLDERS or not sent.startswith(literals[0]):
        return False

    def holds(fp: str | None, text: str) -> bool:
        return bool(text) and (fp is None or fingerprint(text) == fp)

    def walk(index: int, position: int) -> bool:
        following = literals[index + 1]
        if index == len(prints) - 1:
            end = len(sent) - len(following)
            return end > position and sent.endswith(following) and holds(prints[index], sent[position:end])
        start = position + 1
        while (found := sent.find(following, start)) != -1:
            if holds(prints[index], sent[position:found]) and walk(index + 1, found + len(following)):
                return True
            start = found + 1
        return False

    return walk(0, len(literals[0]))


def parse_request_json(ctx: RequestContext) -> Any:
    """The request body as JSON for `when.body`, or NO_JSON. Bounded (backworks_core.bodies):
    over the limit once decoded, an unknown or broken coding, or nested too deep raise BodyError,
    which the gateway answers 413/415/400: an example is never chosen on a body nobody read."""
    content = request_body(ctx)
    if not content:
        return NO_JSON
    try:
        return loads_json(content)
    except ValueError:  # UnicodeDecodeError included
        return NO_JSON
