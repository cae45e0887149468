"""One OpenAPI operation object from an endpoint's examples and evidence: parameters, request body,
responses (with Backworks' own answers declared) and security requirements."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from backworks_core.capture.formats.common import is_json_media_type, is_text, try_json
from backworks_core.capture.formats.openapi_evidence import Credential, OperationEvidence, _RequestBodies, _Seen, _cookie_pairs, _guess_media, _injected
from backworks_core.capture.json_schema import MIN_REQUIRED_SAMPLES
from backworks_core.capture.model import Exchange
from backworks_core.router import parse_template


# Request headers about the connection or the message, not the call: never parameters. OpenAPI
# ignores header parameters named Accept, Content-Type and Authorization; credentials are
# security schemes; the body's headers are the requestBody's.
_TRANSPORT_REQUEST_HEADERS = frozenset(
    {
        "host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "content-length", "content-type", "content-encoding", "expect", "http2-settings", "priority",
        "accept", "authorization", "proxy-authorization", "cookie",
    }
)
# Headers every client sends its own way: parameters only when a recorded response's `Vary`
# names them (then they change the answer).
_CLIENT_REQUEST_HEADERS = frozenset(
    {
        "user-agent", "accept-encoding", "accept-language", "accept-charset", "cache-control", "pragma", "origin",
        "referer", "dnt", "upgrade-insecure-requests", "x-requested-with", "purpose", "save-data", "sec-gpc",
    }
)
_CLIENT_PREFIXES = ("sec-",)
# Response headers of the connection or the moment, or Backworks' own (its request id): left out.
# OpenAPI ignores a response header named Content-Type; bodies are stored decoded.
EXCLUDED_RESPONSE_HEADERS = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
        "content-length", "content-encoding", "content-type", "date", "server", "via", "age", "alt-svc",
        "proxy-authenticate", "x-request-id", "traceparent", "tracestate",
    }
)
# The body of every answer Backworks gives itself (context.json_error); 422 adds `path`.
MOCK_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}, "request_id": {"type": "string"}},
    "required": ["error", "status", "request_id"],
}
# The answers Backworks gives itself on a documented operation, declared in every document so that
# the mock and the document it serves agree (a spec-driven checker calls an unlisted status a
# failure): 404 when no recorded example matches (an id never recorded on a templated path), 400
# when the gateway refuses an ambiguous path (an escaped '/', ';', a control character: paths.py)
# that only a path parameter can carry.
OWN_ANSWERS = {
    400: "the Backworks gateway refuses an ambiguous request path (an escaped '/' or control character, a ';')"
    " with 400 `{error, status, request_id}` (application/json).",
    404: "the Backworks mock answers a request that no recorded example matches with 404"
    " `{error, status, request_id}` (application/json).",
}


@dataclass
class OperationSpec:
    """One endpoint group, as the OpenAPI writer takes it.

    `template` is a router template (`/users/{user_id}`, `/users/{user_id:int}`, `/files/{rest:path}`,
    `/users/:id`). `request_schema` is the JSON Schema of JSON request bodies; `response_schemas`
    maps a status to the JSON Schema of its JSON bodies. `examples` are the examples shown (the
    first of each status and media type). `evidence` is what every recorded exchange of the
    endpoint showed (statuses, parameters, headers, form fields, credentials); without it, it is
    gathered from `examples`.
    """

    method: str
    template: str
    host: str | None = None
    examples: list[Exchange] = field(default_factory=list)
    request_schema: dict[str, Any] | None = None
    response_schemas: dict[int, dict[str, Any]] = field(default_factory=dict)
    summary: str | None = None
    description: str | None = None
    evidence: OperationEvidence | None = None


def _example_value(body: bytes, media: str | None) -> tuple[str, Any] | None:
    """(media type, example) for a body, or None when it has none to show."""
    if not body:
        return None
    if is_json_media_type(media) or media is None:
        ok, value = try_json(body)
        if ok:
            return (media or "application/json"), value
        if media is not None:
            return None  # says JSON, is not: no example that contradicts the schema
    if is_text(body):
        return (media or "text/plain"), body.decode("utf-8")
    return None  # binary: no inline example


def _body_schema(media: str, schema: dict[str, Any] | None, body: bytes) -> dict[str, Any]:
    if is_json_media_type(media):
        return schema if schema is not None else {}
    if media.startswith("text/") or (body and is_text(body)):
        return {"type": "string"}
    return {"type": "string", "contentMediaType": media}


def _always(count: int, total: int) -> bool:
    """A response header is `required` when every one of at least MIN_REQUIRED_SAMPLES answers
    had it: one answer cannot tell what the API always sends from what this exchange happened to
    get. (Request parameters and bodies stay required when every recorded request sent them:
    they describe what recorded clients send, so that generated requests look like them.)"""
    return total >= MIN_REQUIRED_SAMPLES and count == total


def _query_schema(values: list[str]) -> dict[str, Any]:
    if values and all(re.fullmatch(r"-?\d{1,18}", v) for v in values):
        return {"type": "integer"}
    if values and all(re.fullmatch(r"-?\d+(\.\d+)?", v) for v in values):
        return {"type": "number"}
    if values and all(v.lower() in ("true", "false") for v in values):
        return {"type": "boolean"}
    return {"type": "string"}


def _field_schema(seen: _Seen) -> dict[str, Any]:
    """A query parameter's or a form field's schema: typed by its values, an array when repeated."""
    schema = _query_schema(seen.values)
    return {"type": "array", "items": schema} if seen.repeated else schema


def _field_example(seen: _Seen, schema: dict[str, Any]) -> Any:
    if schema.get("type") == "array":
        return [_query_example(v, schema["items"]) for v in seen.values]
    return _query_example(seen.values[0], schema) if seen.values else ""


def _form_schema(media: str, bodies: _RequestBodies) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(schema, example, encoding) of form or multipart bodies: an object of the fields recorded."""
    properties: dict[str, Any] = {}
    example: dict[str, Any] = {}
    encoding: dict[str, Any] = {}
    for name, seen in bodies.fields.items():
        if seen.file:
            item: dict[str, Any] = {"type": "string", "format": "binary"}
            properties[name] = {"type": "array", "items": item} if seen.repeated else item
        else:
            properties[name] = _field_schema(seen)
            example[name] = _field_example(seen, properties[name])
        if media == "multipart/form-data" and seen.media:
            encoding[name] = {"contentType": ", ".join(seen.media)}
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    required = [name for name, seen in bodies.fields.items() if seen.count == bodies.count]
    if required:
        schema["required"] = required
    return schema, example, encoding


def _header_parameter(lowered: str, evidence: OperationEvidence, credential_headers: set[str]) -> bool:
    """Whether a recorded request header is documented as a parameter: one the call depends on."""
    if lowered in _TRANSPORT_REQUEST_HEADERS or _injected(lowered) or lowered in credential_headers:
        return False
    if lowered in _CLIENT_REQUEST_HEADERS or lowered.startswith(_CLIENT_PREFIXES):
        return lowered in evidence.vary
    return True


def _response_headers(status: int, evidence: OperationEvidence) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    total = evidence.statuses[status]
    for lowered, seen in evidence.response_headers.get(status, {}).items():
        if lowered in EXCLUDED_RESPONSE_HEADERS:
            continue
        schema = _query_schema(seen.values)
        header: dict[str, Any] = {"schema": schema}
        if _always(seen.count, total):
            header["required"] = True
        if lowered == "set-cookie":
            names = list(dict.fromkeys(v.split("=", 1)[0].strip() for v in seen.values if "=" in v))
            redacted = any("[REDACTED" in v for v in seen.values)
            header["description"] = "One header per cookie" + (f" ({', '.join(names)})" if names else "") + ("; recorded values are redacted." if redacted else ".")
        elif seen.repeated:
            header["description"] = "Sent more than once in a response."
        if seen.values:
            header["example"] = _query_example(seen.values[0], schema)
        headers[seen.name] = header
    return headers


def _operation(
    spec: OperationSpec,
    evidence: OperationEvidence,
    path_params: list[dict[str, Any]],
    credentials: Counter[frozenset[Credential]],
    scheme_names: dict[Credential, str],
) -> dict[str, Any]:
    operation: dict[str, Any] = {}
    if spec.summary:
        operation["summary"] = spec.summary
    if spec.description:
        operation["description"] = spec.description
    operation["operationId"] = _operation_id(spec.method.upper(), spec.template)
    parameters = _parameters(spec, evidence, path_params)
    if parameters:
        operation["parameters"] = parameters
    if evidence.bodies or spec.request_schema is not None:
        operation["requestBody"] = _request_body(spec, evidence)
    operation["responses"] = _responses(spec, evidence, has_path_params=bool(path_params))
    security = _security(credentials, scheme_names, evidence)
    if security is not None:
        operation["security"] = security
    return operation


def _parameters(spec: OperationSpec, evidence: OperationEvidence, path_params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Path parameters (with the first example's values), query parameters and the request headers
    the call depends on; credentials are left to the security schemes."""
    used = {c for combination in evidence.credentials for c in combination}
    credential_headers = {name for kind, name in used if kind == "header"}
    credential_query = {name for kind, name in used if kind == "query"}

    parameters = [dict(p) for p in path_params]
    first = spec.examples[0] if spec.examples else evidence.first
    if first is not None:
        values = _path_values(spec.template, first.path)
        for param in parameters:
            if param["name"] in values:
                value = values[param["name"]]
                param["example"] = int(value) if param["schema"].get("type") == "integer" and value.isdigit() else value
    # query parameters: required when every request sent them, an array when one repeated them
    for name, seen in evidence.query.items():
        if name in credential_query:
            continue  # an API key: a security scheme
        schema = _field_schema(seen)
        parameters.append({"name": name, "in": "query", "required": seen.count == evidence.total, "schema": schema, "example": _field_example(seen, schema)})
    # header parameters: those the call depends on (never required: that every recorded client
    # sent one does not say the API needs it)
    for lowered, seen in evidence.request_headers.items():
        if not _header_parameter(lowered, evidence, credential_headers):
            continue
        schema = _query_schema(seen.values)
        parameter = {"name": seen.name, "in": "header", "required": False, "schema": schema}
        if seen.values:
            parameter["example"] = _query_example(seen.values[0], schema)
        parameters.append(parameter)
    return parameters


def _request_body(spec: OperationSpec, evidence: OperationEvidence) -> dict[str, Any]:
    """One entry per media type recorded; forms and multipart as objects of their fields."""
    content: dict[str, Any] = {}
    for media, bodies in evidence.bodies.items():
        shown = next((ex for ex in spec.examples if ex.request_body and _guess_media(ex.request_headers, ex.request_body) == media), bodies.first)
        body = shown.request_body if shown is not None else b""
        entry: dict[str, Any]
        if media in ("application/x-www-form-urlencoded", "multipart/form-data"):
            schema, example, encoding = _form_schema(media, bodies)
            entry = {"schema": schema}
            if encoding:
                entry["encoding"] = encoding
            if example:
                entry["example"] = example
        else:
            entry = {"schema": _body_schema(media, spec.request_schema, body)}
            example_value = _example_value(body, media)
            if example_value is not None:
                entry["example"] = example_value[1]
        content[media] = entry
    if not content:
        content["application/json"] = {"schema": spec.request_schema or {}}
    return {"required": bool(evidence.total) and evidence.with_body == evidence.total, "content": content}


def _responses(spec: OperationSpec, evidence: OperationEvidence, *, has_path_params: bool) -> dict[str, Any]:
    """Every status recorded, with its headers and the first example of each media type, and
    Backworks' own answers (OWN_ANSWERS) declared."""
    echoes = _echo_names(spec, evidence)
    response_schemas = {status: _without_echoed_required(schema, echoes) for status, schema in spec.response_schemas.items()}
    responses: dict[str, Any] = {}
    for status in sorted(set(evidence.statuses) | set(response_schemas)):
        key = str(status) if 100 <= status <= 599 else "default"
        responses.setdefault(key, _response(status, spec.examples, evidence, response_schemas))
    if not responses:
        responses["default"] = {"description": "No response was recorded"}
    for status, description in OWN_ANSWERS.items():
        if status == 400 and not has_path_params:
            continue  # only a path parameter can carry what the gateway refuses in a path
        _declare_own_answer(responses, status, description, _recorded_media(status, evidence))
    return responses


def _response(status: int, examples: list[Exchange], evidence: OperationEvidence, schemas: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The response object of one status (`schemas`: the JSON Schema of each status' JSON bodies)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = f"Status {status}"
    response: dict[str, Any] = {"description": reason}
    headers = _response_headers(status, evidence)
    if headers:
        response["headers"] = headers
    content: dict[str, Any] = {}
    candidates = [ex for ex in examples if ex.status == status] + list(evidence.responses.get(status, {}).values())
    for ex in candidates:
        if not ex.response_body:
            continue
        media = _guess_media(ex.response_headers, ex.response_body)
        if media in content:
            continue
        entry = {"schema": _body_schema(media, schemas.get(status), ex.response_body)}
        example_value = _example_value(ex.response_body, media)
        if example_value is not None:
            entry["example"] = example_value[1]
        content[media] = entry
    if not content and status in schemas:
        content["application/json"] = {"schema": schemas[status]}
    if content:
        _add_labels(content, _recorded_media(status, evidence))
        response["content"] = content
    return response


def _security(
    credentials: Counter[frozenset[Credential]], scheme_names: dict[Credential, str], evidence: OperationEvidence
) -> list[dict[str, list[str]]] | None:
    """One requirement per combination of credentials seen; required only when the recording
    shows it enforced (a 401/403 and no request without credentials let through), else optional,
    with the anonymous alternative `{}` (last). None when no credential was seen."""
    requirements: list[dict[str, list[str]]] = []
    for combination, _ in credentials.most_common():
        requirement: dict[str, list[str]] = {scheme_names[c]: [] for c in sorted(combination)}
        if requirement not in requirements:
            requirements.append(requirement)
    if not any(requirements):
        return None
    requirements = [r for r in requirements if r]
    if evidence.enforced() is not True:
        requirements.append({})
    return requirements


def _recorded_media(status: int, evidence: OperationEvidence) -> list[str]:
    """Every media type a recorded answer of `status` was labelled with, empty bodies included."""
    seen = evidence.response_headers.get(status, {}).get("content-type")
    media = (value.split(";", 1)[0].strip().lower() for value in (seen.values if seen else []))
    return list(dict.fromkeys(m for m in media if "/" in m))


def _add_labels(content: dict[str, Any], media_types: list[str]) -> None:
    """List the recorded labels no body showed (an empty body sent as text/html): a checker
    compares the Content-Type of every answer with the document, empty or not."""
    for media in media_types:
        content.setdefault(media, {})


def _declare_own_answer(responses: dict[str, Any], status: int, description: str, labels: list[str]) -> None:
    """Backworks' own answer `status` (OWN_ANSWERS), in the document it serves. Not recorded: declared
    with no body (the live API's own body for that status, HTML or JSON, was never seen and must
    not be contradicted). Recorded: Backworks' `{error, status, request_id}` is added beside the
    recorded bodies, and no header of it is required (Backworks' answer has none of the app's)."""
    recorded = responses.get(str(status))
    if recorded is None:
        if "default" not in responses:  # a `default` allows every status already
            responses[str(status)] = {"description": f"{HTTPStatus(status).phrase}. Not recorded: {description}"}
        return
    content = recorded.setdefault("content", {})
    _add_labels(content, labels)
    entry = content.get("application/json")
    if entry is None:
        content["application/json"] = {"schema": MOCK_ERROR_SCHEMA}
    elif entry.get("schema") not in ({}, None):
        entry["schema"] = {"anyOf": [entry["schema"], MOCK_ERROR_SCHEMA]}
    for header in recorded.get("headers", {}).values():
        header.pop("required", None)
    recorded["description"] += f" Also: {description}"


def _echo_names(spec: OperationSpec, evidence: OperationEvidence) -> frozenset[str]:
    """The names the requests sent (query, headers, cookies, form fields, JSON body keys), lower
    case: a response key spelled like one may be the request echoed back, so it is never
    `required` (the next request may not send it)."""
    names = set(evidence.query) | set(evidence.request_headers)
    for value in evidence.request_headers.get("cookie", _Seen("cookie")).values:
        names.update(name for name, _ in _cookie_pairs(value))
    for bodies in evidence.bodies.values():
        names.update(bodies.fields)
    if spec.request_schema:
        names.update(spec.request_schema.get("properties", {}))
    return frozenset(name.lower() for name in names)


def _without_echoed_required(schema: Any, echoes: frozenset[str], depth: int = 0) -> Any:
    """`schema` with the echoed names taken out of every `required` (a copy where it changes)."""
    if not isinstance(schema, dict) or not echoes or depth > 64:
        return schema
    out = dict(schema)
    if isinstance(out.get("required"), list):
        required = [key for key in out["required"] if not (isinstance(key, str) and key.lower() in echoes)]
        if required:
            out["required"] = required
        else:
            del out["required"]
    if isinstance(out.get("properties"), dict):
        out["properties"] = {key: _without_echoed_required(value, echoes, depth + 1) for key, value in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = _without_echoed_required(out["items"], echoes, depth + 1)
    return out


def _path_values(template: str, path: str) -> dict[str, str]:
    """The parameter values a recorded path gives a template ({} when they do not line up)."""
    from urllib.parse import unquote

    segments = parse_template(template)
    parts = path.strip("/").split("/") if path.strip("/") else []
    values: dict[str, str] = {}
    for i, segment in enumerate(segments):
        if segment.kind == "path":
            values[segment.value] = unquote("/".join(parts[i:]))
            return values
        if i >= len(parts):
            return {}
        if segment.kind != "literal":
            values[segment.value] = unquote(parts[i])
    return values if len(parts) == len(segments) else {}


def _query_example(value: str, schema: dict[str, Any]) -> Any:
    try:
        if schema.get("type") == "integer":
            return int(value)
        if schema.get("type") == "number":
            return float(value)
        if schema.get("type") == "boolean":
            return value.lower() == "true"
    except ValueError:
        pass
    return value


def _operation_id(method: str, template: str) -> str:
    words = [method.lower()]
    for segment in parse_template(template):
        word = re.sub(r"[^A-Za-z0-9]+", "_", segment.value).strip("_")
        if word:
            words.append(("by_" if segment.kind != "literal" else "") + word)
    return "_".join(words)
