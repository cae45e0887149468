"""From recorded exchanges to an output: a blueprint of mock endpoints, OpenAPI 3.1, or HAR 1.2.

Inputs are read twice, streaming, so that 100,000 flows never sit in memory: the first pass
collects the paths (to infer templates per host), the second routes each exchange to its
endpoint and keeps only what the output needs (a bounded number of candidate examples and of
body samples for the schemas). Everything is redacted as it is read.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from backworks_core.capture.formats import FormatError, OperationSpec, count_hint, openapi_document, read_any, write_har
from backworks_core.capture.infer import EndpointGroup, infer_schema, infer_templates, json_body, select_examples
from backworks_core.capture.model import Exchange
from backworks_core.capture.redact import RedactionRules, redact_exchange
from backworks_core.files import write_private
from backworks_core.router import Match, Route, Router

CANDIDATES_PER_ENDPOINT = 200  # exchanges kept per endpoint to choose examples from
SCHEMA_SAMPLES = 200  # bodies per endpoint and status the schemas are inferred from
# Response headers a mock must not replay: they describe the original connection or moment.
DROPPED_HEADERS = frozenset({"date", "content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive", "x-request-id", "age"})


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


def read_inputs(inputs: Sequence[str | os.PathLike[str]], rules: RedactionRules) -> Iterator[Exchange]:
    for path in inputs:
        if not Path(path).is_file():
            raise BuildInputError(f"{path}: no such file")
        try:
            for exchange in read_any(path):
                yield redact_exchange(exchange, rules)
        except FormatError as exc:
            raise BuildInputError(str(exc)) from None


@dataclass
class Endpoint:
    """One method + template + host: its count, candidate examples and body samples."""

    group: EndpointGroup
    count: int = 0
    request_samples: list[Any] = field(default_factory=list)
    response_samples: dict[int, list[Any]] = field(default_factory=dict)


def collect(inputs: Sequence[str], rules: RedactionRules, progress: IO[str] | None = None) -> tuple[list[Endpoint], int]:
    """The two passes; returns the endpoints in order of first appearance and the flow count."""
    total = sum(count_hint(path) or 0 for path in inputs) or None
    paths: dict[str, Counter[str]] = {}
    meter = Progress(progress, "reading", total)
    for exchange in read_inputs(inputs, rules):
        paths.setdefault(_host(exchange.host), Counter())[exchange.path] += 1
        meter.step()
    meter.finish()
    routers: dict[str, tuple[dict[str, str], Router]] = {}
    for host, counter in paths.items():
        templates = infer_templates(counter.elements())
        routers[host] = (templates, Router([Route(t, frozenset({"ANY"}), None, t) for t in dict.fromkeys(templates.values())]))
    endpoints: dict[tuple[str, str, str], Endpoint] = {}
    flows = 0
    meter = Progress(progress, "grouping", meter.done)
    for exchange in read_inputs(inputs, rules):
        meter.step()
        flows += 1
        host = _host(exchange.host)
        templates, router = routers[host]
        template = templates.get(exchange.path)
        if template is None:
            continue
        key = (host, exchange.method.upper(), template)
        endpoint = endpoints.get(key)
        if endpoint is None:
            endpoint = endpoints[key] = Endpoint(EndpointGroup(exchange.method.upper(), template, host))
        endpoint.count += 1
        if len(endpoint.group.exchanges) < CANDIDATES_PER_ENDPOINT:
            match = router.match(exchange.method, exchange.path)
            endpoint.group.exchanges.append(exchange)
            endpoint.group.params.append(dict(match.params) if isinstance(match, Match) else {})
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
    if not body:
        return {}
    parsed = json_body(body, exchange.header("content-type", response=response))
    if isinstance(parsed, (dict, list)):  # a JSON scalar stays its exact text (a string would replay as text)
        return {"body": parsed}
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        import base64

        return {"body_base64": base64.b64encode(body).decode("ascii")}


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
    for name, value in exchange.response_headers:
        if name.lower() in DROPPED_HEADERS or name.startswith(":"):
            continue
        if name in headers:  # sent several times (Set-Cookie): a list, never joined
            headers[name] = (headers[name] if isinstance(headers[name], list) else [headers[name]]) + [value]
        else:
            headers[name] = value
    answer: dict[str, Any] = {"status": exchange.status}
    if headers:
        answer["headers"] = headers
    answer.update(_body_fields(exchange, response=True))
    answer["latency"] = round(exchange.duration, 4)
    return answer


def mock_examples(endpoint: Endpoint, max_examples: int) -> list[dict[str, Any]]:
    """The chosen requests as `when`s, each with every distinct answer it got, in order.

    Without path parameters the first successful example also answers as the fallback, so a
    list endpoint still answers a query it never saw; an id it never saw stays a 404.
    """
    group = endpoint.group
    chosen = select_examples(group, max_examples)
    params_of = {id(e): p for e, p in zip(group.exchanges, group.params)}
    match_body = group.method not in ("GET", "HEAD", "DELETE", "OPTIONS") and len({e.request_body for e in group.exchanges}) > 1
    examples: list[dict[str, Any]] = []
    seen_whens: list[dict[str, Any]] = []
    for exchange in chosen:
        when = _when(exchange, params_of.get(id(exchange), {}), match_body)
        if when in seen_whens:
            continue
        seen_whens.append(when)
        # Every recorded answer to this same request, in order: a mock plays them back in turn.
        answers: list[dict[str, Any]] = []
        for other in group.exchanges:
            if _when(other, params_of.get(id(other), {}), match_body) == when:
                answer = _answer(other)
                if not answers or _without_latency(answers[-1]) != _without_latency(answer):
                    answers.append(answer)
            if len(answers) >= max_examples:
                break
        for answer in answers:
            examples.append(({"when": when} if when else {}) | answer)
    has_params = any(group.params)
    if not has_params and all("when" in e for e in examples):
        success = next((e for e in examples if 200 <= e["status"] < 300), examples[0] if examples else None)
        if success is not None:
            examples.append({k: v for k, v in success.items() if k != "when"})
    return examples


def _without_latency(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "latency"}


def blueprint_document(endpoints: Sequence[Endpoint], name: str, max_examples: int) -> dict[str, Any]:
    hosts = {e.group.host for e in endpoints}
    entries = []
    for endpoint in endpoints:
        group = endpoint.group
        entry: dict[str, Any] = {"path": group.template, "method": group.method}
        if len(hosts) > 1:
            entry["host"] = group.host
        entry["description"] = f"recorded: {endpoint.count} request(s)"
        entry["handler"] = "mock"
        mock: dict[str, Any] = {"examples": mock_examples(endpoint, max_examples)}
        success = [s for status, samples in sorted(endpoint.response_samples.items()) if 200 <= status < 300 for s in samples]
        if success:
            mock["schema"] = infer_schema(success)
        entry["config"] = {"mock": mock}
        entries.append(entry)
    return {
        "name": name,
        "version": "1.0.0",
        "description": "generated by Backworks from recorded traffic; edit freely",
        "server": {"unmatched": "not_found"},
        "endpoints": entries,
    }


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
    rules: RedactionRules | None = None,
    progress: IO[str] | None = None,
) -> str:
    """Read `inputs`, write `output` in `fmt` (mode 0600, atomically: a temporary file, then a rename)."""
    rules = rules or RedactionRules()
    target = Path(output)
    if fmt == "har":
        meter = Progress(progress, "writing HAR", sum(count_hint(p) or 0 for p in inputs) or None)

        def counted() -> Iterator[Exchange]:
            for exchange in read_inputs(inputs, rules):
                meter.step()
                yield exchange

        written = write_har(counted(), target)  # 0600, atomically (backworks_core.files)
        meter.finish()
        return f"wrote {target}: HAR 1.2 with {written} entries"
    endpoints, flows = collect(inputs, rules, progress)
    if fmt == "openapi":
        document = openapi_document(openapi_operations(endpoints, max_examples), name)
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True) if target.suffix in (".yaml", ".yml") else _json(document)
        kind = "OpenAPI 3.1"
    elif fmt == "blueprint":
        text = "# Mock endpoints recorded by Backworks. Serve them: backworks run THIS_FILE\n" + yaml.safe_dump(
            blueprint_document(endpoints, name, max_examples), sort_keys=False, allow_unicode=True, width=120
        )
        kind = "a blueprint"
    else:
        raise BuildInputError(f"unknown output format {fmt!r} (expected blueprint, openapi or har)")
    write_private(target, text)  # 0600, atomically, never through a symlink at the name
    return f"wrote {target}: {kind} with {len(endpoints)} endpoint(s) from {flows} flow(s)"


def _json(document: dict[str, Any]) -> str:
    import json

    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # pragma: no cover - a developer's shortcut
    print(write_output(sys.argv[1:-1], sys.argv[-1], "blueprint", name="captured"))
