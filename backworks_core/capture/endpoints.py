"""A recording grouped into endpoints: templates inferred per host from every path, each exchange
routed to its endpoint (method + template + host), which keeps every distinct exchange (an answer
repeated for the same request is kept once) and a bounded number of body samples for the schemas.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from backworks_core.capture.formats import OperationEvidence
from backworks_core.capture.infer import EndpointGroup, infer_templates
from backworks_core.capture.json_schema import json_body
from backworks_core.capture.model import Exchange
from backworks_core.capture.recording import Progress, Recording, read_once
from backworks_core.capture.redact import RedactionRules, Redactor
from backworks_core.router import Match, Route, Router


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
            _json_object_body(exchange) if self.group.method not in BODYLESS_METHODS else None,
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


# Methods whose request body never tells requests apart (`when.body` is for the others).
BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def _digest(*parts: Any) -> bytes:
    return hashlib.blake2b(json.dumps(parts, default=str).encode("ascii"), digest_size=16).digest()


def _json_object_body(exchange: Exchange) -> str | None:
    """The request body as `when.body` would hold it (a JSON object), canonical; None otherwise."""
    parsed = json_body(exchange.request_body, exchange.header("content-type", response=False))
    return json.dumps(parsed, sort_keys=True, ensure_ascii=False) if isinstance(parsed, dict) and parsed else None


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
