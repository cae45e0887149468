"""The OpenAPI 3.1 document: operations merged by method and path, servers, security schemes."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from backworks_core.capture.formats.common import DEFAULT_PORTS
from backworks_core.capture.formats.openapi_evidence import Credential, MAX_NAMES, OperationEvidence
from backworks_core.capture.formats.openapi_operation import OperationSpec, _operation
from backworks_core.router import parse_template


logger = logging.getLogger(__name__)


_LITERAL_SAFE = "-._~!$&'()*+,;=:@"


def openapi_path(template: str) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path for a router template and its path parameters (in order, all required)."""
    parts: list[str] = []
    params: list[dict[str, Any]] = []
    for segment in parse_template(template):
        if segment.kind == "literal":
            parts.append(quote(segment.value, safe=_LITERAL_SAFE))
            continue
        parts.append("{" + segment.value + "}")
        schema: dict[str, Any] = {"type": "string"}
        param: dict[str, Any] = {"name": segment.value, "in": "path", "required": True, "schema": schema}
        if segment.kind == "int":
            schema["type"] = "integer"
        elif segment.kind == "uuid":
            schema["format"] = "uuid"
        elif segment.kind == "path":
            param["description"] = "The rest of the path; may contain '/'."
        params.append(param)
    return "/" + "/".join(parts), params


def _server_url(scheme: str, host: str, port: int | None) -> str:
    host_part = f"[{host}]" if ":" in host and not host.startswith("[") else host
    suffix = "" if port is None or DEFAULT_PORTS.get(scheme) == port else f":{port}"
    return f"{scheme}://{host_part}{suffix}"


def _servers(spec: OperationSpec, evidence: OperationEvidence) -> list[str]:
    urls: list[str] = []
    for scheme, host, port in evidence.origins:
        if spec.host is None or host == spec.host:
            url = _server_url(scheme, host, port)
            if url not in urls:
                urls.append(url)
    if not urls and spec.host:
        urls.append(_server_url("https", spec.host, None))
    return urls


def security_schemes(
    operations: Iterable[tuple[OperationEvidence, Counter[frozenset[Credential]]]],
) -> tuple[dict[str, Any], dict[Credential, str]]:
    """`components.securitySchemes` for the credentials seen, and each credential's scheme name.

    `operations` are each operation's evidence with its resolved credential combinations
    (`OperationEvidence.requirements`). HTTP bearer (with `bearerFormat: JWT` when every visible
    token is a JWT), basic and the other registered HTTP schemes; API keys in a header, the query
    or a cookie, by the names the redactor treats as credentials; an Authorization header of
    another scheme, or redacted whole with no challenge naming its scheme, as an API key in
    `Authorization`.
    """
    seen: dict[Credential, str] = {}
    jwt = other = 0
    for evidence, requirements in operations:
        for combination in requirements:
            for credential in combination:
                seen.setdefault(credential, evidence.credential_names.get(credential, credential[1]))
        jwt += evidence.jwt_tokens
        other += evidence.other_tokens
    schemes: dict[str, Any] = {}
    names: dict[Credential, str] = {}
    for credential in sorted(seen):
        kind, value = credential
        scheme: dict[str, Any]
        if kind == "http":
            name = re.sub(r"[^A-Za-z0-9]+", "", value) + "Auth"
            scheme = {"type": "http", "scheme": value}
            if value == "bearer" and jwt and not other:
                scheme["bearerFormat"] = "JWT"
        elif kind == "authorization":
            name = "authorizationHeader" + (re.sub(r"[^A-Za-z0-9]+", "", value.title()) if value else "")
            scheme = {"type": "apiKey", "in": "header", "name": "Authorization"}
            scheme["description"] = (
                f"`Authorization: {value} …`" if value else "An Authorization header whose scheme is not known (the recorded values are redacted)."
            )
        else:
            name = kind + "." + re.sub(r"[^A-Za-z0-9._-]+", "_", seen[credential])
            scheme = {"type": "apiKey", "in": kind, "name": seen[credential]}
        base, n = name, 2
        while name in schemes:
            name, n = f"{base}_{n}", n + 1
        schemes[name] = scheme
        names[credential] = name
    return schemes, names


def openapi_document(
    groups: Iterable[OperationSpec], title: str, version: str = "1.0.0", description: str | None = None
) -> dict[str, Any]:
    """An OpenAPI 3.1 document for endpoint groups (valid for `openapi_spec_validator.validate`).

    Servers are every scheme/host/port recorded; when there is more than one, each operation also
    lists its own. Two groups with the same method and OpenAPI path (different hosts, or `{id}` and
    `{id:int}`) become one operation, with the statuses, parameters and credentials of both.
    """
    merged: dict[tuple[str, str], tuple[OperationSpec, OperationEvidence, list[str], list[dict[str, Any]]]] = {}
    servers: list[str] = []
    for spec in groups:
        path, path_params = openapi_path(spec.template)
        method = spec.method.lower()
        if method in ("any", "*"):
            method = "get"
        evidence = spec.evidence if spec.evidence is not None else OperationEvidence.of(spec.examples)
        own = _servers(spec, evidence)
        servers.extend(url for url in own if url not in servers)
        key = (path, method)
        if key not in merged:
            combined = OperationEvidence(evidence.rules)
            combined.merge(evidence)
            merged[key] = (replace(spec, examples=list(spec.examples), response_schemas=dict(spec.response_schemas)), combined, list(own), path_params)
            continue
        first, combined, urls, _ = merged[key]
        combined.merge(evidence)
        first.examples.extend(spec.examples)
        for status, schema in spec.response_schemas.items():
            first.response_schemas.setdefault(status, schema)
        if first.request_schema is None:
            first.request_schema = spec.request_schema
        urls.extend(url for url in own if url not in urls)
    challenges: set[str] = set().union(*(evidence.challenges for _, evidence, _, _ in merged.values()))
    requirements = {key: evidence.requirements(challenges) for key, (_, evidence, _, _) in merged.items()}
    schemes, scheme_names = security_schemes((merged[key][1], found) for key, found in requirements.items())
    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    dropped: set[str] = set()
    for (path, method), (spec, evidence, urls, path_params) in merged.items():
        operation = _operation(spec, evidence, path_params, requirements[(path, method)], scheme_names)
        dropped |= evidence.dropped
        base, n = operation["operationId"], 2
        while operation["operationId"] in used_ids:
            operation["operationId"] = f"{base}_{n}"
            n += 1
        used_ids.add(operation["operationId"])
        if len(servers) > 1 and urls:
            operation["servers"] = [{"url": url} for url in urls]
        paths.setdefault(path, {})[method] = operation
    if dropped:
        logger.info("OpenAPI: %d header, query or form field name(s) past %d per operation and kind were left out", len(dropped), MAX_NAMES)
    info: dict[str, Any] = {"title": title, "version": version}
    if description:
        info["description"] = description
    document: dict[str, Any] = {"openapi": "3.1.0", "info": info}
    if servers:
        document["servers"] = [{"url": url} for url in servers]
    document["paths"] = paths
    if schemes:
        document["components"] = {"securitySchemes": schemes}
    return document
