"""The blueprint writer: grouped endpoints as `handler: mock` endpoints whose examples replay every
distinct recorded exchange (`when` conditions, answers in recorded order, the bulk in data files),
with schemas inferred from the bodies, written as readable YAML (`dump_blueprint`).

It takes the endpoints `backworks_core.capture.endpoints.collect` groups, so it is not re-exported
by `backworks_core.capture.formats` (whose readers the grouping itself uses); import it from here
or from `backworks_core.capture.build`.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from backworks_core.bodies import json_depth
from backworks_core.capture.endpoints import BODYLESS_METHODS, DROPPED_HEADERS, MATCH_HEADERS, Endpoint
from backworks_core.capture.formats.common import is_json_media_type
from backworks_core.capture.infer import select_examples
from backworks_core.capture.json_schema import infer_schema, json_body
from backworks_core.capture.model import Exchange
from backworks_core.capture.placeholders import PLACEHOLDER, placeholder
from backworks_core.handlers.mock.answers import json_body_bytes
from backworks_core.handlers.mock.config import JsonLayout
from backworks_core.handlers.mock_features import is_media_type


YAML_DATA_DEPTH = 32  # a JSON body nested deeper is written as its text


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
    match_body = group.method not in BODYLESS_METHODS and len({e.request_body for e in group.exchanges}) > 1
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
    if not any(group.params):
        _add_fallback(inline, more)
    return inline, more


def _add_fallback(inline: list[dict[str, Any]], more: list[dict[str, Any]]) -> None:
    """When every example has a `when`, the first successful one also answers without one (inline,
    last): an endpoint without path parameters still answers a query it never saw."""
    everything = inline + more
    if not all("when" in e for e in everything):
        return
    success = next((e for e in everything if 200 <= e["status"] < 300), everything[0] if everything else None)
    if success is not None:
        fallback = {k: v for k, v in success.items() if k != "when"}
        inline.append(fallback if any(e is success for e in inline) else _literal_data(fallback))


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
