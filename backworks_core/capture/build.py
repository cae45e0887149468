"""From recorded exchanges to an output: a blueprint of mock endpoints, OpenAPI 3.1, or HAR 1.2.

Every input is read once (`read_once`; a pipe would do): each exchange is redacted as it comes
and kept compactly (`Recording`: the distinct bodies plus a few hundred bytes a flow); at the end
those that may hold a secret learned from a later flow are redacted again, templates are
inferred per host from every path, and each exchange is routed to its endpoint, which keeps
what the output needs: every distinct exchange (an answer repeated for the same request is kept
once; a blueprint puts the bulk in a data file beside it) and a bounded number of body samples
for the schemas.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import stat
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from backworks_core.capture.formats import FormatError, OperationEvidence, OperationSpec, count_hint, is_json_media_type, openapi_document, read_any, write_har
from backworks_core.capture.infer import EndpointGroup, infer_schema, infer_templates, json_body, select_examples
from backworks_core.capture.model import Exchange
from backworks_core.capture.redact import PLACEHOLDER, RedactionRules, Redactor, placeholder
from backworks_core.bodies import json_depth
from backworks_core.files import private_output, write_private
from backworks_core.handlers.mock import JsonLayout, json_body_bytes
from backworks_core.handlers.mock_features import is_media_type
from backworks_core.router import Match, Route, Router
from backworks_core.plugins import PluginRegistry
from backworks_core.schema import modeline, write_schema_beside

logger = logging.getLogger(__name__)

SCHEMA_SAMPLES = 200  # bodies per endpoint and status the schemas are inferred from
# Response headers a mock must not replay: they describe the original connection or moment.
# (Content-Length is kept for a HEAD answer, Content-Encoding for bytes still encoded: `_answer`.)
DROPPED_HEADERS = frozenset({"date", "content-length", "transfer-encoding", "connection", "keep-alive", "x-request-id", "age"})
# Request headers that can change an answer. One goes into `when` for the endpoints where it did
# (two requests alike but for it got different answers: `mock_examples`); the capture plugin's
# `match_headers` and `--match-header` change the list.
MATCH_HEADERS: tuple[str, ...] = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "if-none-match",
    "if-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
    "range",
    "accept",
    "accept-language",
    "accept-encoding",
    "content-type",
    "origin",
    "access-control-request-method",
    "access-control-request-headers",
)
YAML_DATA_DEPTH = 32  # a JSON body nested deeper is written as its text


class BuildInputError(Exception):
    """An input that cannot be read; the message names the file."""


class Progress:
    """`12,345/100,000 flows` on a terminal (redrawn), or a line every tenth on a log."""

    def __init__(self, stream: IO[str] | None, what: str, total: int | None) -> None:
        self.stream, self.what, self.total = stream, what, total
        self.done = 0
        self.tty = bool(stream is not None and stream.isatty())
        self._last = 0.0
        self._step = max(1_000, (total or 10_000) // 10)  # a log gets a line per tenth, not per flow
        self._next_line = self._step

    def step(self, count: int = 1) -> None:
        self.done += count
        if self.stream is None:
            return
        if self.tty:
            now = time.monotonic()
            if now - self._last >= 0.2:
                self._last = now
                self.stream.write(f"\r{self._text()}")
                self.stream.flush()
        elif self.done >= self._next_line:
            self._next_line += self._step
            self.stream.write(self._text() + "\n")

    def finish(self) -> None:
        if self.stream is not None:
            self.stream.write(("\r" if self.tty else "") + self._text() + "\n")
            self.stream.flush()

    def _text(self) -> str:
        of = f"/{self.total:,}" if self.total else ""
        return f"  {self.what}: {self.done:,}{of} flows"


def read_inputs(inputs: Sequence[str | os.PathLike[str]], rules: RedactionRules | Redactor) -> Iterator[Exchange]:
    """Every exchange, redacted as it comes; pass one `Redactor` for a run, so that a secret
    seen in one exchange is scrubbed from those after it (`read_once` also from those before)."""
    redactor = Redactor.of(rules)
    for path in inputs:
        if not Path(path).is_file():
            raise BuildInputError(f"{path}: no such file")
        try:
            for exchange in read_any(path):
                yield redactor.exchange(exchange)
        except FormatError as exc:
            raise BuildInputError(str(exc)) from None


@dataclass
class Endpoint:
    """One method + template + host: its count, candidate examples and body samples."""

    group: EndpointGroup
    count: int = 0
    request_samples: list[Any] = field(default_factory=list)
    response_samples: dict[int, list[Any]] = field(default_factory=dict)
    evidence: OperationEvidence | None = None  # every exchange's statuses, headers, fields (OpenAPI only)
    # The last answer (a digest) each distinct request got: an answer repeated is not kept twice.
    last_answer: dict[bytes, bytes] = field(default_factory=dict)

    def keep(self, exchange: Exchange, params: dict[str, str], match_headers: frozenset[str]) -> bool:
        """False when this request got the same answer the last time: it adds nothing to replay.

        The request is told apart by everything a `when` can hold (path parameters, query, the
        headers of `match_headers`, a JSON object body of a method with a body), so whatever
        `mock_examples` later decides to match on, nothing it could tell apart is dropped; the
        answer by its status, headers and bytes (latency and `Date` aside).
        """
        request = _digest(
            sorted(params.items()),
            exchange.query,
            sorted((n.lower(), v) for n, v in exchange.request_headers if n.lower() in match_headers),
            _json_object_body(exchange) if self.group.method not in _BODYLESS_METHODS else None,
        )
        answer = _digest(
            exchange.status,
            [(n.lower(), v) for n, v in exchange.response_headers if n.lower() not in DROPPED_HEADERS],
            hashlib.blake2b(exchange.response_body, digest_size=16).hexdigest(),
        )
        if self.last_answer.get(request) == answer:
            return False
        self.last_answer[request] = answer
        return True


@dataclass
class BuildStats:
    """What a build left out, for the summary line (`write_output`)."""

    repeated: int = 0  # the same request answered the same as the time before: collapsed
    unroutable: int = 0  # a path no template can match (`*`, `//`)
    data_answers: int = 0  # answers written to the data files, not inline
    data_files: int = 0
    shown: int = 0  # OpenAPI: exchanges shown as examples
    distinct: int = 0  # exchanges kept (distinct)


_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def _digest(*parts: Any) -> bytes:
    return hashlib.blake2b(json.dumps(parts, default=str).encode("ascii"), digest_size=16).digest()


def _json_object_body(exchange: Exchange) -> str | None:
    """The request body as `when.body` would hold it (a JSON object), canonical; None otherwise."""
    parsed = json_body(exchange.request_body, exchange.header("content-type", response=False))
    return json.dumps(parsed, sort_keys=True, ensure_ascii=False) if isinstance(parsed, dict) and parsed else None


class Recording:
    """Every exchange of one read, redacted as it came, held compactly until the output is built.

    A header, query pair, path or body seen before is stored as the same object, so a recording
    costs about its distinct bodies plus a few hundred bytes a flow. Each exchange remembers how
    many secrets the run's redactor knew when it was redacted: `settle` redacts again those that
    may hold one learned later (a token handed out in flow 90,000 and sent in flow 3), so the
    output is what a second read, knowing every secret of the run, would give.
    """

    def __init__(self) -> None:
        self._pool: dict[Any, Any] = {}
        self._items: list[tuple[Any, ...] | None] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, exchange: Exchange, learned: int) -> None:
        self._items.append(self._pack(exchange, learned))

    def _pack(self, e: Exchange, learned: int) -> tuple[Any, ...]:
        same = self._pool.setdefault
        return (
            same(e.method, e.method),
            same(e.scheme, e.scheme),
            same(e.host, e.host),
            e.port,
            same(e.path, e.path),
            tuple([same(pair, pair) for pair in e.query]),
            tuple([same(pair, pair) for pair in e.request_headers]),
            same(e.request_body, e.request_body),
            e.status,
            tuple([same(pair, pair) for pair in e.response_headers]),
            same(e.response_body, e.response_body),
            e.started,
            e.duration,
            learned,
        )

    @staticmethod
    def _unpack(item: tuple[Any, ...]) -> Exchange:
        method, scheme, host, port, path, query, request_headers, request_body, status, response_headers, response_body, started, duration, _ = item
        return Exchange(method, scheme, host, port, path, list(query), list(request_headers), request_body, status, list(response_headers), response_body, started, duration)

    def settle(self, redactor: Redactor) -> int:
        """Redact again every exchange that may hold a secret learned after it was redacted
        (`Redactor.outdated`); returns how many were. Redacting again can teach a secret
        itself (rarely): then the others are looked at again, a bounded number of times."""
        redone = 0
        for _ in range(4):
            learned = redactor.learned
            for index, item in enumerate(self._items):
                if item is None or item[-1] >= learned:
                    continue
                exchange = self._unpack(item)
                if redactor.outdated(exchange, item[-1]):
                    self._items[index] = self._pack(redactor.exchange(exchange), learned)
                    redone += 1
            if redactor.learned == learned:
                break
        return redone

    def paths(self) -> Iterator[tuple[str, str]]:
        """(host, path) of every exchange, in order."""
        for item in self._items:
            if item is not None:
                yield item[2], item[4]

    def exchanges(self, release: bool = False) -> Iterator[Exchange]:
        """Every exchange in the order read; with `release`, each is let go once handed out."""
        items = self._items
        for index, item in enumerate(items):
            if item is None:
                continue
            if release:
                items[index] = None
            yield self._unpack(item)
        if release:
            self._items = []
            self._pool.clear()


def read_once(inputs: Sequence[str | os.PathLike[str]], rules: RedactionRules | Redactor, progress: IO[str] | None = None) -> Recording:
    """Every input read once, each exchange redacted as it comes, then settled: those that may
    hold a secret learned from a later flow redacted again (`Recording.settle`)."""
    redactor = Redactor.of(rules)  # one for the run: a secret seen in any flow is scrubbed from all
    total = (sum(count_hint(path) or 0 for path in inputs) or None) if progress is not None else None
    meter = Progress(progress, "reading", total)
    recording = Recording()
    for exchange in read_inputs(inputs, redactor):
        recording.add(exchange, redactor.learned)
        meter.step()
    meter.finish()
    redone = recording.settle(redactor)
    if redone:
        logger.debug("capture: %d exchange(s) redacted again for secrets learned from later flows", redone)
    return recording


def collect(
    inputs: Sequence[str] | Recording,
    rules: RedactionRules | Redactor,
    progress: IO[str] | None = None,
    *,
    evidence: bool = False,
    match_headers: Iterable[str] = MATCH_HEADERS,
    stats: BuildStats | None = None,
) -> tuple[list[Endpoint], int]:
    """The endpoints, in order of first appearance, and the flow count, from one read of
    `inputs` (`read_once`; or a `Recording` already read). With `evidence`, each endpoint also
    sums up all its exchanges for the OpenAPI writer.

    Templates are inferred per host from every path, then each exchange is routed to its
    endpoint. Every distinct exchange is kept (`Endpoint.keep`); `stats` counts what is not:
    an answer repeated for the same request, a path no template can match."""
    matched = frozenset(name.lower() for name in match_headers)
    recording = inputs if isinstance(inputs, Recording) else read_once(inputs, rules, progress)
    rules = Redactor.of(rules).rules
    paths: dict[str, Counter[str]] = {}
    for host, path in recording.paths():
        paths.setdefault(_host(host), Counter())[path] += 1
    routers: dict[str, tuple[dict[str, str], Router]] = {}
    for host, counter in paths.items():
        templates = infer_templates(counter.elements())
        routers[host] = (templates, Router([Route(t, frozenset({"ANY"}), None, t) for t in dict.fromkeys(templates.values())]))
    endpoints: dict[tuple[str, str, str], Endpoint] = {}
    flows = 0
    meter = Progress(progress, "grouping", len(recording))  # in memory: the total is known
    for exchange in recording.exchanges(release=True):
        flows += 1
        meter.step()
        host = _host(exchange.host)
        templates, router = routers[host]
        template = templates.get(exchange.path)
        if template is None:
            if stats is not None:
                stats.unroutable += 1
            continue
        key = (host, exchange.method.upper(), template)
        endpoint = endpoints.get(key)
        if endpoint is None:
            endpoint = endpoints[key] = Endpoint(EndpointGroup(exchange.method.upper(), template, host))
            endpoint.evidence = OperationEvidence(rules) if evidence else None
        endpoint.count += 1
        if endpoint.evidence is not None:
            endpoint.evidence.add(exchange)
        match = router.match(exchange.method, exchange.path)
        params = dict(match.params) if isinstance(match, Match) else {}
        if endpoint.keep(exchange, params, matched):
            endpoint.group.exchanges.append(exchange)
            endpoint.group.params.append(params)
        elif stats is not None:
            stats.repeated += 1
        request = json_body(exchange.request_body, exchange.header("content-type", response=False))
        if request is not None and len(endpoint.request_samples) < SCHEMA_SAMPLES:
            endpoint.request_samples.append(request)
        response = json_body(exchange.response_body, exchange.header("content-type"))
        samples = endpoint.response_samples.setdefault(exchange.status, [])
        if response is not None and len(samples) < SCHEMA_SAMPLES:
            samples.append(response)
    meter.finish()
    return list(endpoints.values()), flows


def _host(host: str) -> str:
    return host.rstrip(".").lower()


# -- the blueprint -------------------------------------------------------------------------


def _body_fields(exchange: Exchange, response: bool) -> dict[str, Any]:
    body = exchange.response_body if response else exchange.request_body
    return body_fields(body, exchange.header("content-type", response=response))


def body_fields(body: bytes, content_type: str | None) -> dict[str, Any]:
    """`body` or `body_base64` that the mock serves as these very bytes.

    A JSON object or array is written as YAML data (readable, editable) when the mock's
    serialisation gives back exactly `body`: compact, or in the `json_layout` it is written in
    (`json_layout_of`). Any other UTF-8 text is written as its exact text (JSON with `\u00e9`
    escapes or `1.0E5`, HTML); anything else as base64. Strings are escaped for the loader's
    `${VAR}` substitution (`literal`).
    """
    if not body:
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(body).decode("ascii")}
    if text[:1] in ("{", "["):
        parsed = json_body(body, content_type)
        if isinstance(parsed, (dict, list)) and json_depth(parsed, YAML_DATA_DEPTH) <= YAML_DATA_DEPTH:
            layout = json_layout_of(parsed, body)
            if layout is not None:
                return {"body": _literal_data(parsed)} | ({"json_layout": layout} if layout else {})
    return {"body": literal(text)}


def json_layout_of(value: Any, body: bytes) -> dict[str, Any] | None:
    """The `json_layout` in which the mock writes `value` as exactly `body` (`{}`: compact, the
    default), or None. Tried: the indentation of the second line (one line: compact, then
    `spaced`), escapes only for an ASCII body, a final newline when there is one."""
    newline = body.endswith(b"\n")
    core = body[:-1] if newline else body
    if b"\n" in core:
        second = core.split(b"\n", 2)[1]
        shapes: list[tuple[int | None, bool]] = [(len(second) - len(second.lstrip(b" ")), False)]
    else:
        shapes = [(None, False), (None, True)]
    for indent, spaced in shapes:
        for ascii_ in (False, True) if core.isascii() else (False,):
            layout = JsonLayout(indent=indent, spaced=spaced, ascii=ascii_, newline=newline)
            written = layout.model_dump(exclude_defaults=True)
            try:
                if json_body_bytes(value, layout if written else None) == body:
                    if ascii_:
                        json_body_bytes(value)  # a lone surrogate (`\ud800`) is no text a blueprint can hold
                    return written
            except (UnicodeEncodeError, ValueError):
                return None
    return None


def literal(text: str) -> str:
    """`text` as written into a blueprint so that it loads back as `text`: the loader expands
    `${VAR}` in every string value and reads `$${` as a literal `${`."""
    return text.replace("${", "$${") if "${" in text else text


def _literal_data(value: Any) -> Any:
    """JSON data with every string value `literal` (keys are never expanded by the loader)."""
    if isinstance(value, str):
        return literal(value)
    if isinstance(value, list):
        return [_literal_data(item) for item in value]
    if isinstance(value, dict):
        return {key: _literal_data(item) for key, item in value.items()}
    return value


def _when(exchange: Exchange, params: dict[str, str], match_body: bool) -> dict[str, Any]:
    when: dict[str, Any] = {}
    if params:
        when["path"] = dict(params)
    if exchange.query:
        query: dict[str, Any] = {}
        for name, value in exchange.query:
            if name in query:
                query[name] = (query[name] if isinstance(query[name], list) else [query[name]]) + [value]
            else:
                query[name] = value
        when["query"] = query
    if match_body:
        parsed = json_body(exchange.request_body, exchange.header("content-type", response=False))
        if isinstance(parsed, dict) and parsed:
            when["body"] = parsed
    return when


def _answer(exchange: Exchange) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    body = exchange.response_body
    head = exchange.method.upper() == "HEAD" and not body  # its headers announce the GET's body
    for name, value in exchange.response_headers:
        lowered = name.lower()
        if name.startswith(":") or (lowered in DROPPED_HEADERS and not (head and lowered == "content-length")):
            continue
        if lowered == "content-encoding" and not (body or head):
            continue  # the body was left out (too large): nothing encoded is served
        value = literal(value)
        if name in headers:  # sent several times (Set-Cookie): a list, never joined
            headers[name] = (headers[name] if isinstance(headers[name], list) else [headers[name]]) + [value]
        else:
            headers[name] = value
    answer: dict[str, Any] = {"status": exchange.status}
    if headers:
        answer["headers"] = headers
    if body and exchange.header("content-encoding"):  # bytes still encoded
        answer["body_base64"] = base64.b64encode(body).decode("ascii")
    else:
        answer.update(_body_fields(exchange, response=True))
    if body and exchange.header("content-type") is None:
        answer["add_content_type"] = False  # served as recorded: without one (httpbin's 418)
    answer["latency"] = round(exchange.duration, 4)
    return answer


def mock_examples(endpoint: Endpoint, max_examples: int, match_headers: Iterable[str] = MATCH_HEADERS) -> list[dict[str, Any]]:
    """Every example of the endpoint, as a blueprint holds them inline (see `endpoint_examples`)."""
    inline, more = endpoint_examples(endpoint, max_examples, match_headers)
    return inline + [_literal_data(example) for example in more]


def endpoint_examples(
    endpoint: Endpoint, max_examples: int, match_headers: Iterable[str] = MATCH_HEADERS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every distinct recorded request as a `when`, each with every distinct answer it got, in order.

    Returns (inline, more): `inline` holds up to `max_examples` answers of the requests
    `select_examples` chooses (the blueprint shows them; strings escaped for the loader's
    `${VAR}` substitution), `more` every other answer (for the data file, read as is). A
    request's answers are a sequence whose first ones may be inline and the rest in `more`:
    inline first, then the file, is the recorded order.

    `when` holds the path parameters, the query, a JSON object body (methods with a body, when
    the recorded bodies differ) and the `match_headers` that changed answers on this endpoint:
    two requests alike but for that header got different answers (`Authorization` present or
    not, `If-None-Match`). Each request's `when` names the ones it sent, so its own `when` is
    the most specific one that matches it: any order of replay gets the recorded answers. A
    request that sent none of them has no header condition and also answers a value never
    recorded; where every recorded request sent one (`Accept` from several clients), the first
    answer is also written without the header condition, for the clients that send another.

    Without path parameters the first successful example also answers as the fallback, so a
    list endpoint still answers a query it never saw; an id it never saw stays a 404.
    """
    group = endpoint.group
    names = [name.lower() for name in dict.fromkeys(match_headers)]
    match_body = group.method not in _BODYLESS_METHODS and len({e.request_body for e in group.exchanges}) > 1
    rows = []
    for exchange, params in zip(group.exchanges, group.params):
        base = _when(exchange, params, match_body)
        answer = _raw_data(_answer(exchange))
        rows.append((base, _match_key(base), _sent_headers(exchange, names), answer, _canonical(_without_latency(answer))))
    changing = _answer_changing_headers([(row[1], {n: _as_fingerprint(v) for n, v in row[2].items()}, row[4]) for row in rows], names)
    # Requests in order of first appearance, each with its answers (consecutive repeats once).
    requests: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    request_of: list[str] = []
    defaults: dict[str, str] = {}  # base → the first request with that base, when all carry a header condition
    with_no_header: set[str] = set()
    for base, base_key, sent, answer, _ in rows:
        when = dict(base)
        conditions = {name: sent[name] for name in changing if name in sent}
        if conditions:
            when["headers"] = conditions
        else:
            with_no_header.add(base_key)
        key = _match_key(when)
        entry = requests.setdefault(key, (when, []))
        if not entry[1] or _without_latency(entry[1][-1]) != _without_latency(answer):
            entry[1].append(answer)
        request_of.append(key)
        defaults.setdefault(base_key, key)
    chosen = {id(e) for e in select_examples(group, max_examples)}
    chosen_keys = {request_of[i] for i, e in enumerate(group.exchanges) if id(e) in chosen}
    inline: list[dict[str, Any]] = []
    more: list[dict[str, Any]] = []
    budget = max_examples
    inline_keys: set[str] = set()
    for key, (when, answers) in requests.items():
        shown = min(len(answers), budget) if key in chosen_keys else 0
        budget -= shown
        if shown:
            inline_keys.add(key)
        inline.extend(_literal_data(({"when": when} if when else {}) | answer) for answer in answers[:shown])
        more.extend(({"when": when} if when else {}) | answer for answer in answers[shown:])
    for base_key, first in defaults.items():
        if base_key in with_no_header:
            continue
        when, answers = requests[first]
        base = {k: v for k, v in when.items() if k != "headers"}
        example = ({"when": base} if base else {}) | answers[0]
        if first in inline_keys:
            inline.append(_literal_data(example))
        else:
            more.append(example)
    has_params = any(group.params)
    everything = inline + more
    if not has_params and all("when" in e for e in everything):
        success = next((e for e in everything if 200 <= e["status"] < 300), everything[0] if everything else None)
        if success is not None:
            fallback = {k: v for k, v in success.items() if k != "when"}
            inline.append(fallback if any(e is success for e in inline) else _literal_data(fallback))
    return inline, more


def _sent_headers(exchange: Exchange, names: Sequence[str]) -> dict[str, str]:
    """The request's values of `names` (lower case), a header sent several times joined with `, `."""
    wanted = set(names)
    values: dict[str, list[str]] = {}
    for name, value in exchange.request_headers:
        lowered = name.lower()
        if lowered in wanted:
            values.setdefault(lowered, []).append(value)
    return {name: ", ".join(items) for name, items in values.items()}


def _answer_changing_headers(rows: Sequence[tuple[str, dict[str, str], str]], names: Sequence[str]) -> list[str]:
    """The `names` that changed answers: among requests alike but for headers (one `base`), some
    differ in it (a value, or sent or not) and the answers differ. With two values and two
    answers in one such set, some pair differs in both, so counting is enough."""
    by_base: dict[str, list[tuple[dict[str, str], str]]] = {}
    for base_key, sent, answer_key in rows:
        by_base.setdefault(base_key, []).append((sent, answer_key))
    changing: set[str] = set()
    for members in by_base.values():
        if len(members) < 2 or len({answer for _, answer in members}) < 2:
            continue
        for name in names:
            if name not in changing and len({sent.get(name) for sent, _ in members}) > 1:
                changing.add(name)
    return [name for name in names if name in changing]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _match_key(when: dict[str, Any]) -> str:
    """`when` as the mock compares it: a value and the placeholder of that value are the same
    request (`passwd` in a path recorded before redaction knew it a secret, `[REDACTED:…]` after)."""
    normal: dict[str, Any] = dict(when)
    for part in ("path", "query", "headers"):
        if part in normal:
            normal[part] = {
                name: [_as_fingerprint(v) for v in value] if isinstance(value, list) else _as_fingerprint(value) for name, value in normal[part].items()
            }
    return _canonical(normal)


def _as_fingerprint(value: str) -> str:
    return value if PLACEHOLDER.fullmatch(value) else placeholder(value)


def _raw_data(value: Any) -> Any:
    """The inverse of `_literal_data`: the data file is read as it is, without `${VAR}` expansion."""
    if isinstance(value, str):
        return value.replace("$${", "${") if "$${" in value else value
    if isinstance(value, list):
        return [_raw_data(item) for item in value]
    if isinstance(value, dict):
        return {key: _raw_data(item) for key, item in value.items()}
    return value


def _without_latency(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "latency"}


def blueprint_document(
    endpoints: Sequence[Endpoint],
    name: str,
    max_examples: int,
    *,
    match_headers: Iterable[str] = MATCH_HEADERS,
    data_files: dict[str, list[dict[str, Any]]] | None = None,
    data_folder: str = "",
) -> dict[str, Any]:
    """The blueprint; with `data_files`, the answers beyond `max_examples` of an endpoint go into
    `data_files[data_folder/NNN-method-path.jsonl]` (the caller writes them) and its mock names
    that file in `examples_file`; without, every example is inline."""
    hosts = {e.group.host for e in endpoints}
    entries = []
    for index, endpoint in enumerate(endpoints):
        group = endpoint.group
        entry: dict[str, Any] = {"path": group.template, "method": group.method}
        if len(hosts) > 1:
            entry["host"] = group.host
        entry["description"] = f"recorded: {endpoint.count} request(s)"
        entry["handler"] = "mock"
        inline, more = endpoint_examples(endpoint, max_examples, match_headers)
        mock: dict[str, Any] = {"examples": inline}
        if more and data_files is not None:
            file_name = f"{data_folder}/{index + 1:03d}-{group.method.lower()}-{_slug(group.template)}.jsonl"
            data_files[file_name] = more
            mock["examples_file"] = file_name
            entry["description"] += f"; {len(inline) + len(more)} answer(s), {len(more)} in examples_file"
        else:
            inline.extend(_literal_data(example) for example in more)
        success = [s for status, samples in sorted(endpoint.response_samples.items()) if 200 <= status < 300 for s in samples]
        if success:
            mock["schema"] = infer_schema(success)
        request = request_body_config(endpoint)
        if request is not None:
            mock["request_body"] = request
        entry["config"] = {"mock": mock}
        entries.append(entry)
    return {
        "name": name,
        "version": "1.0.0",
        "description": "generated by Backworks from recorded traffic; edit freely",
        "server": {"unmatched": "not_found"},
        "endpoints": entries,
    }


def _slug(template: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", template.lower()).strip("-")[:60].strip("-") or "root"


def request_body_config(endpoint: Endpoint) -> dict[str, Any] | None:
    """`request_body` of a mock endpoint that received bodies: what `validate: true` checks.

    `schema` from the recorded JSON bodies; `content_types`: the recorded media types that are
    not JSON (curl's `-d` labels JSON as a form), so no recorded request is refused a 415;
    `required` when every recorded request carried a body. None when no request had one.
    """
    exchanges = endpoint.group.exchanges
    with_body = [e for e in exchanges if e.request_body]
    if not with_body:
        return None
    config: dict[str, Any] = {}
    if endpoint.request_samples:
        config["schema"] = infer_schema(endpoint.request_samples)
    types: list[str] = []
    for exchange in with_body:
        media = (exchange.header("content-type", response=False) or "").split(";", 1)[0].strip().lower()
        if media and not is_json_media_type(media) and media not in types and is_media_type(media):
            types.append(media)
    if types:
        config["content_types"] = types
    config["required"] = len(with_body) == len(exchanges)
    return config


def openapi_operations(endpoints: Sequence[Endpoint], max_examples: int) -> list[OperationSpec]:
    operations = []
    for endpoint in endpoints:
        group = endpoint.group
        operations.append(
            OperationSpec(
                method=group.method,
                template=group.template,
                host=group.host,
                examples=select_examples(group, max_examples),
                request_schema=infer_schema(endpoint.request_samples) if endpoint.request_samples else None,
                response_schemas={status: infer_schema(samples) for status, samples in endpoint.response_samples.items() if samples},
                summary=f"{group.method} {group.template}",
                evidence=endpoint.evidence,
            )
        )
    return operations


def write_output(
    inputs: Sequence[str],
    output: str,
    fmt: str,
    *,
    name: str,
    max_examples: int = 5,
    rules: RedactionRules | Redactor | None = None,
    progress: IO[str] | None = None,
    match_headers: Iterable[str] = MATCH_HEADERS,
    registry: PluginRegistry | None = None,
) -> str:
    """Read `inputs`, write `output` in `fmt` (mode 0600, atomically: a temporary file, then a rename).

    A blueprint keeps every distinct exchange answerable: up to `max_examples` answers per
    endpoint inline, the rest in `OUTPUT.data/` (one JSON-lines file per endpoint, written
    before the blueprint that names them; files of an earlier build no longer named are
    removed). The summary says what was left out, with counts. With `registry` (the plugins a
    blueprint may configure), a blueprint gets its JSON Schema beside it and a modeline naming it.
    """
    rules = Redactor.of(rules)  # one per run: secrets seen in any flow are scrubbed from all
    target = Path(output)
    if fmt == "har":  # read whole first: a secret of the last flow goes from the first entry too
        written = write_har(read_once(inputs, rules, progress).exchanges(release=True), target)  # 0600, atomically
        return f"wrote {target}: HAR 1.2 with {written} entries"
    if fmt not in ("openapi", "blueprint"):
        raise BuildInputError(f"unknown output format {fmt!r} (expected blueprint, openapi or har)")
    stats = BuildStats()
    endpoints, flows = collect(inputs, rules, progress, evidence=fmt == "openapi", match_headers=match_headers, stats=stats)
    stats.distinct = sum(len(e.group.exchanges) for e in endpoints)
    data_files: dict[str, list[dict[str, Any]]] = {}
    editor_help: str | None = None  # a blueprint's schema file, for the modeline
    if fmt == "openapi":
        document = openapi_document(openapi_operations(endpoints, max_examples), name)
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True) if target.suffix in (".yaml", ".yml") else _json(document)
        kind = "OpenAPI 3.1"
        stats.shown = sum(len(select_examples(e.group, max_examples)) for e in endpoints)
    else:
        folder = target.name + ".data"
        document = blueprint_document(endpoints, name, max_examples, match_headers=match_headers, data_files=data_files, data_folder=folder)
        text = "# Mock endpoints recorded by Backworks. Serve them: backworks run THIS_FILE\n" + dump_blueprint(document)
        kind = "a blueprint"
        editor_help = _editor_schema(target, registry) if registry is not None else None
        if editor_help is not None:
            text = modeline(editor_help) + text
        if data_files:
            _write_data_files(target.parent / folder, target.parent, data_files)
            stats.data_files = len(data_files)
            stats.data_answers = sum(len(lines) for lines in data_files.values())
    write_private(target, text)  # 0600, atomically, never through a symlink at the name
    if fmt == "blueprint":
        _remove_stale_data(target.parent / (target.name + ".data"), {target.parent / relative for relative in data_files})
    summary = f"wrote {target}: {kind} with {len(endpoints)} endpoint(s) from {flows} flow(s)" + _left_out(stats, fmt, target.name + ".data")
    if editor_help is not None:
        summary += f"; editors check it with {editor_help} (its first line says so)"
    return summary


def _editor_schema(blueprint: Path, registry: PluginRegistry) -> str | None:
    """The schema an editor checks the blueprint with, written beside it (backworks_core.schema);
    None when it cannot be written: the blueprint is what was asked for, the schema a help."""
    try:
        return write_schema_beside(blueprint, registry)
    except OSError as exc:
        logger.warning("capture: no editor schema beside %s: %s", blueprint, exc.strerror or exc)
        return None


def _left_out(stats: BuildStats, fmt: str, folder: str) -> str:
    """The summary's tail: where the bulk went and what was not written, with counts."""
    parts = []
    if fmt == "blueprint":
        parts.append(f"every one of the {stats.distinct} distinct exchange(s) answerable")
        if stats.data_files:
            parts.append(f"{stats.data_answers} answer(s) beyond max_examples in {folder}/ ({stats.data_files} file(s))")
    else:
        parts.append(f"{stats.shown} of {stats.distinct} distinct exchange(s) shown as examples (max_examples)")
    if stats.repeated:
        parts.append(f"{stats.repeated} repeated answer(s) left out (the same request answered as the time before)")
    if stats.unroutable:
        parts.append(f"{stats.unroutable} flow(s) left out: a path no endpoint can serve (`*`, `//`)")
    return "; " + "; ".join(parts)


def _data_folder(folder: Path) -> None:
    """`folder` as a private folder of ours; never a symlink or someone else's folder planted at its name."""
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        folder.mkdir(mode=0o700)
        return
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise BuildInputError(f"{folder} is {'a symbolic link' if stat.S_ISLNK(info.st_mode) else 'not a folder'}; remove it or choose another output")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise BuildInputError(f"{folder} belongs to another user; remove it or choose another output")


def _write_data_files(folder: Path, base: Path, data_files: dict[str, list[dict[str, Any]]]) -> None:
    _data_folder(folder)
    for relative, examples in data_files.items():
        with private_output(base / relative) as handle:  # 0600, atomically
            for example in examples:
                handle.write(json.dumps(example, ensure_ascii=False, separators=(",", ":")) + "\n")


_DATA_FILE = re.compile(r"\d{3,}-[a-z0-9-]*\.jsonl")


def _remove_stale_data(folder: Path, written: set[Path]) -> None:
    """Data files of an earlier build that this blueprint no longer names; the folder when empty."""
    try:
        if not folder.is_dir() or folder.is_symlink():
            return
        for path in folder.iterdir():
            if _DATA_FILE.fullmatch(path.name) and path not in written and path.is_file() and not path.is_symlink():
                path.unlink()
        if not written and not any(folder.iterdir()):
            folder.rmdir()
    except OSError as exc:  # a leftover file is harmless: the blueprint names only its own
        logger.warning("capture: could not tidy %s: %s", folder, exc)


class BlueprintDumper(yaml.SafeDumper):
    """SafeDumper writing text of several lines as a YAML block scalar (`|`): a recorded body
    stays readable as it was, and loads back exactly. Text a block cannot hold exactly
    (trailing spaces on a line, tabs, control characters) falls back to a quoted string."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if _OTHER_BREAKS.intersection(value):
        style: str | None = '"'  # PyYAML writes NEL raw in plain and single-quoted text: escaped here
    else:
        style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


# Line breaks other than \n, which a YAML reader turns into \n or a space outside a double-quoted string.
_OTHER_BREAKS = frozenset("\r\x85\u2028\u2029")
BlueprintDumper.add_representer(str, _represent_str)


def dump_blueprint(document: dict[str, Any]) -> str:
    """The blueprint as YAML: keys in order, Unicode as is, multi-line text as block scalars."""
    return yaml.dump(document, Dumper=BlueprintDumper, sort_keys=False, allow_unicode=True, width=120)


def _json(document: dict[str, Any]) -> str:
    import json

    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # pragma: no cover - a developer's shortcut
    print(write_output(sys.argv[1:-1], sys.argv[-1], "blueprint", name="captured"))
