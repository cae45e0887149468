"""Request and response transforms (`transform_request` / `transform_response`).

The models validate a blueprint's transform blocks; `CompiledTransform` is built from one
when the blueprint loads (every regex, JSON path and template compiled there, so each
mistake is a located blueprint error) and applied per message. The `body` block compiles to
`backworks_core.transform_body.CompiledBody`.

Decisions, in one place (the blueprint format documents them):

* Templates (`{{path.id}}`, `{{query.x}}`, `{{header.X}}`, `{{auth.sub}}`, `{{now}}`,
  `{{uuid}}`, `{{env.X}}`) are allowed in header values, query `set` values and string
  values of `body.set`; nowhere else (names, paths, regex replacements are literal).
  Rendering is single-pass, so request data is never evaluated again. Templates read the
  request as the handler received it (the client's, after middlewares), whatever an earlier
  transform in a chain changed. Every template of one `apply_request`/`apply_response` renders
  before anything is changed, so a refused value leaves the message untouched.
* `Content-Length` and `Transfer-Encoding` cannot be named in header operations: Backworks
  keeps them true to the body it sends.
* A rendered header or query value holding CR, LF or NUL raises ValueError (the caller
  answers 400 for a request, 502 for a response). Header names must be HTTP tokens.
* Headers: remove, then rename (one after another, in the order written), then set (set
  replaces every field of that name and appends it last). Names match case-insensitively.
* Path (the part before `?`; a target such as `*` is left alone): strip_prefix, then
  add_prefix, then each rewrite in order, each on the previous result. Prefixes work on
  segment boundaries: `/api` strips `/api/x` and `/api`, never `/apix`. Rewrites are
  Python `re.sub` over the raw (percent-encoded) path, replacing *every* match (as Envoy's
  regex_rewrite does), groups as `\\1` or `\\g<name>`. A result that is empty becomes `/`,
  one without a leading `/` gets one. A replacement cannot hold `?`, `#`, whitespace or
  control characters.
* Query: remove, then rename (in order), then set. Names match after percent-decoding (`+` is
  a space), case-sensitively. Set replaces every value of the key with one value placed where
  the key first appeared, or appends it. Repeated keys and the order and exact bytes of
  every untouched parameter are kept; new names and values are percent-encoded.
* Body: remove, then rename, then set (the JSON operations, each in the order written), then
  replace (regexes over the text, in order, every match, `\\1` groups). JSON operations apply
  when the body parses as JSON, whatever its Content-Type; a body that does not parse is
  left as it is and one INFO line says why (never the body). `replace` applies to bodies
  that decode as text (the Content-Type charset, else UTF-8); others are left alone (INFO).
  An empty body is left alone (DEBUG). A body JSON operations changed is re-serialized
  compactly as UTF-8 (or the declared charset); a body nothing changed keeps its exact bytes.
* `body.set` values may be any YAML value; a template renders once per message and every
  place `[*]` reaches gets its own copy. JSON path rules are in `backworks_core.jsonpath`: missing
  or null intermediate objects are created, arrays never; an index out of range, or a value
  of the wrong type in the way, skips that place with an INFO line.
* Content-Encoding gzip (x-gzip), deflate, br and zstd, and lists of them, are decoded,
  changed and encoded again with the same encodings; any other encoding, or a body that does
  not decode, is left alone (INFO). After a body changes, Content-Length is set to the bytes
  sent (unless Transfer-Encoding is present, where Content-Length must not be).
* Order inside one `apply_*`: body (read with the Content-Encoding it arrived with), then
  status_map (responses) or path and query (requests), then headers, then Content-Length.
  A changed status gets the standard reason phrase.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Annotated, Any
from urllib.parse import quote, unquote_plus

from mitmproxy import http
from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from backworks_core import bodies, jsonpath
from backworks_core.context import reason_phrase
from backworks_core.model import StrictModel, UrlPath
from backworks_core.templates import (
    Template,
    TemplateContext,
    check_header_templates,
    compile_template,
    compile_value,
    has_crlf,
)
from backworks_core.transform_body import CompiledBody

__all__ = [
    "BodyTransform",
    "CompiledHeaderTransform",
    "CompiledTransform",
    "HeaderTransform",
    "PathRewrite",
    "PathTransform",
    "QueryTransform",
    "RegexReplace",
    "RequestTransform",
    "ResponseTransform",
    "add_prefix",
    "strip_prefix",
]

logger = logging.getLogger(__name__)

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_IN_PATH = re.compile(r"[\s?#\x00-\x1f\x7f]")


# ------------------------------------------------------------------------ validators


FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


def _header_name(name: str) -> str:
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid header name")
    if name.lower() in FRAMING_HEADERS:
        raise ValueError(f"{name} is kept true to the body by Backworks and cannot be set, removed or renamed")
    return name


def _compiled_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as err:
        where = f" at position {err.pos}" if err.pos is not None else ""
        raise ValueError(f"invalid regular expression {pattern!r}: {err.msg}{where}") from None


def _check_replacement(replacement: str, pattern: str) -> None:
    """Group references are checked now: re parses the replacement even without a match."""
    try:
        re.compile(pattern).sub(replacement, "")
    except (re.error, IndexError) as err:
        message = err.msg if isinstance(err, re.error) else str(err)
        raise ValueError(f"invalid replacement {replacement!r} for {pattern!r}: {message}") from None


def _check_json_path(text: str) -> str:
    jsonpath.parse_path(text)
    return text


def _check_value_template(text: str) -> str:
    if "\x00" in text or has_crlf(text):
        raise ValueError(f"{text!r} carries CR, LF or NUL")
    compile_template(text)
    return text


def _check_body_value(value: Any) -> Any:
    compile_value(value)
    return value


def _check_url_prefix(value: str) -> str:
    if _UNSAFE_IN_PATH.search(value):
        raise ValueError(f"a path prefix cannot hold '?', '#', whitespace or control characters, got {value!r}")
    return value


JsonPathText = Annotated[str, AfterValidator(_check_json_path)]
ValueTemplate = Annotated[str, AfterValidator(_check_value_template)]
BodyValue = Annotated[Any, AfterValidator(_check_body_value)]
PathPrefix = Annotated[UrlPath, AfterValidator(_check_url_prefix)]


# ---------------------------------------------------------------------------- models


class RegexReplace(StrictModel):
    """`re.sub(pattern, replacement, text)` over every match; `\\1` and `\\g<name>` groups."""

    pattern: str = Field(description="a Python regular expression", examples=["/v1/"])
    replacement: str = Field("", description="what each match becomes (\\1 and \\g<name> insert groups); default: the match is removed", examples=["/v2/"])

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, value: str) -> str:
        _compiled_regex(value)
        return value

    @field_validator("replacement")
    @classmethod
    def _valid_replacement(cls, value: str, info: ValidationInfo) -> str:
        pattern = info.data.get("pattern")
        if pattern is not None:  # a bad pattern is reported on its own key
            _check_replacement(value, pattern)
        return value


class PathRewrite(RegexReplace):
    """A rewrite of the path alone: its replacement cannot reach into the query string."""

    @field_validator("replacement")
    @classmethod
    def _stays_a_path(cls, value: str) -> str:
        if _UNSAFE_IN_PATH.search(value):
            raise ValueError(
                f"a path replacement cannot hold '?', '#', whitespace or control characters, got "
                f"{value!r} (the query string is not part of the path: use query.set)"
            )
        return value


class PathTransform(StrictModel):
    """strip_prefix, then add_prefix, then each rewrite; the query string is not touched."""

    strip_prefix: PathPrefix | None = Field(None, description="removed on a segment boundary", examples=["/api"])
    add_prefix: PathPrefix | None = Field(None, description="added in front of the path, after strip_prefix", examples=["/v2"])
    rewrite: list[PathRewrite] = Field(default_factory=list, description="after the prefixes, in order", examples=[[{"pattern": "^/users/(\\d+)$", "replacement": "/accounts/\\1"}]])


class QueryTransform(StrictModel):
    """remove, rename, then set; repeated keys and the order of the rest are kept."""

    set: dict[str, ValueTemplate] = Field(default_factory=dict, description="one value per key (templates allowed)", examples=[{"api_key": "{{env.API_KEY}}"}])
    remove: list[str] = Field(default_factory=list, description="query parameters removed (every value)", examples=[["debug"]])
    rename: dict[str, str] = Field(default_factory=dict, description="query parameters renamed: old name to new name", examples=[{"q": "search"}])

    @field_validator("set", "rename", "remove")
    @classmethod
    def _names(cls, value: dict[str, str] | list[str], info: ValidationInfo) -> dict[str, str] | list[str]:
        # `set` maps names to templates (checked as templates); `rename` maps names to names.
        names = [*value.keys(), *value.values()] if isinstance(value, dict) and info.field_name == "rename" else list(value)
        for name in names:
            if not name or "\x00" in name or has_crlf(name):
                raise ValueError(f"{name!r} is not a valid query parameter name")
        return value


class BodyTransform(StrictModel):
    """JSON operations by dotted path (remove, rename, set), then regex replace on text."""

    set: dict[JsonPathText, BodyValue] = Field(default_factory=dict, description="JSON path -> value (templates allowed)", examples=[{"meta.source": "backworks"}])
    remove: list[JsonPathText] = Field(default_factory=list, description="JSON paths removed", examples=[["internal_id"]])
    rename: dict[JsonPathText, JsonPathText] = Field(default_factory=dict, description="JSON members moved: old path to new path", examples=[{"user_name": "username"}])
    replace: list[RegexReplace] = Field(default_factory=list, description="regexes over text bodies", examples=[[{"pattern": "http://internal\\.example\\.com", "replacement": "https://api.example.com"}]])

    @field_validator("rename")
    @classmethod
    def _movable(cls, value: dict[str, str]) -> dict[str, str]:
        for source, target in value.items():
            jsonpath.check_rename(jsonpath.parse_path(source), jsonpath.parse_path(target))
        return value


class HeaderTransform(StrictModel):
    """The header operations both directions share: remove, rename, then set."""

    headers: dict[str, str] = Field(default_factory=dict, description="set these headers (templates allowed)", examples=[{"X-Gateway": "backworks"}])
    remove_headers: list[str] = Field(default_factory=list, description="headers removed", examples=[["X-Debug"]])
    rename_headers: dict[str, str] = Field(default_factory=dict, description="headers renamed: old name to new name", examples=[{"X-Request-Source": "X-Source"}])

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, value: dict[str, str]) -> dict[str, str]:
        check_header_templates(value)
        for name, text in value.items():
            _header_name(name)
            if "\x00" in text:
                raise ValueError(f"header {name!r} carries NUL")
        return value

    @field_validator("rename_headers", "remove_headers")
    @classmethod
    def _safe_names(cls, value: dict[str, str] | list[str]) -> dict[str, str] | list[str]:
        names = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        for name in names:
            _header_name(name)
        return value


class RequestTransform(HeaderTransform):
    """`transform_request`: headers, path, query and body."""

    path: PathTransform | None = Field(None, description="path operations: strip_prefix, add_prefix, rewrite", examples=[{"strip_prefix": "/api"}])
    query: QueryTransform | None = Field(None, description="query string operations: remove, rename, set", examples=[{"remove": ["debug"]}])
    body: BodyTransform | None = Field(None, description="JSON body operations and text replacements", examples=[{"remove": ["internal_id"]}])


class ResponseTransform(HeaderTransform):
    """`transform_response`: headers, status_map and body."""

    status_map: dict[Annotated[int, Field(ge=100, le=599)], Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=dict, description="replace one status code with another", examples=[{502: 503}]
    )
    body: BodyTransform | None = Field(None, description="JSON body operations and text replacements", examples=[{"set": {"served_by": "backworks"}}])


# ------------------------------------------------------------------------- path pieces


def strip_prefix(path: str, prefix: str) -> str:
    """Strip on a segment boundary: /api strips /api/x and /api, never /apix."""
    prefix = prefix.rstrip("/")
    if not prefix:
        return path
    if path == prefix:
        return "/"
    if path.startswith(prefix + "/"):
        return path[len(prefix) :]
    return path


def add_prefix(path: str, prefix: str) -> str:
    prefix = prefix.rstrip("/")
    return prefix + path if path != "/" else (prefix or "/")


def _refuse_unsafe(kind: str, name: str, value: str) -> None:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"{kind} {name} would carry CR, LF or NUL")


class _CompiledQuery:
    """Query operations over the raw query string, so untouched parameters keep their bytes."""

    __slots__ = ("remove", "rename", "set")

    def __init__(self, spec: QueryTransform) -> None:
        self.remove = frozenset(spec.remove)
        self.rename = [(old, new, quote(new, safe="")) for old, new in spec.rename.items()]
        self.set = [(name, quote(name, safe=""), compile_template(text)) for name, text in spec.set.items()]

    def render(self, tctx: TemplateContext) -> list[str]:
        values = []
        for name, _, template in self.set:
            value = template.render(tctx)
            _refuse_unsafe("query parameter", name, value)
            values.append(quote(value, safe=""))
        return values

    def apply(self, query: str, values: list[str]) -> str:
        parts: list[tuple[str, str, str | None]] = []  # (decoded name, raw name, raw value or None)
        for part in query.split("&") if query else ():
            raw_name, eq, raw_value = part.partition("=")
            parts.append((unquote_plus(raw_name), raw_name, raw_value if eq else None))
        if self.remove:
            parts = [p for p in parts if p[0] not in self.remove]
        for old, new, new_raw in self.rename:
            parts = [(new, new_raw, v) if name == old else (name, raw, v) for name, raw, v in parts]
        for (name, raw_name, _), value in zip(self.set, values):
            first = next((i for i, p in enumerate(parts) if p[0] == name), None)
            entry = (name, raw_name, value)
            if first is None:
                parts.append(entry)
            else:
                parts = [p for i, p in enumerate(parts) if p[0] != name or i == first]
                parts[first] = entry
        return "&".join(raw if value is None else f"{raw}={value}" for _, raw, value in parts)


# ------------------------------------------------------------------------ compiled form


def _set_length(message: http.Message, size: int) -> None:
    """The body sent is `size` bytes; a chunked message carries no Content-Length at all."""
    if "transfer-encoding" in message.headers:
        message.headers.pop("content-length", None)
    else:
        message.headers["content-length"] = str(size)


class CompiledTransform:
    """One transform block, compiled once at load; cheap to apply when it holds little."""

    __slots__ = (
        "remove",
        "rename",
        "set",
        "_remove_b",
        "_rename_b",
        "_set_b",
        "status_map",
        "path",
        "query",
        "body",
        "is_empty",
        "touches_headers",
        "touches_path",
        "touches_body",
    )

    def __init__(self, spec: HeaderTransform | None) -> None:
        spec = spec or HeaderTransform()
        self.remove = frozenset(name.lower() for name in spec.remove_headers)
        self.rename = [(old.lower(), new) for old, new in spec.rename_headers.items()]
        self.set: list[tuple[str, Template]] = [(n, compile_template(v)) for n, v in spec.headers.items()]
        self._remove_b = frozenset(name.encode() for name in self.remove)
        self._rename_b = [(old.encode(), new.encode()) for old, new in self.rename]
        self._set_b = [(name.encode(), name.lower().encode()) for name, _ in self.set]
        self.status_map: dict[int, int] = dict(getattr(spec, "status_map", None) or {})
        path_spec: PathTransform | None = getattr(spec, "path", None)
        self.path = None
        if path_spec is not None and (path_spec.strip_prefix or path_spec.add_prefix or path_spec.rewrite):
            self.path = (
                path_spec.strip_prefix,
                path_spec.add_prefix,
                [(re.compile(r.pattern), r.replacement) for r in path_spec.rewrite],
            )
        query_spec: QueryTransform | None = getattr(spec, "query", None)
        self.query = (
            _CompiledQuery(query_spec)
            if query_spec is not None and (query_spec.set or query_spec.remove or query_spec.rename)
            else None
        )
        body_spec: BodyTransform | None = getattr(spec, "body", None)
        self.body = CompiledBody(body_spec) if body_spec is not None else None
        if self.body is not None and not (self.body.has_json or self.body.replace):
            self.body = None
        self.touches_headers = bool(self.remove or self.rename or self.set)
        self.touches_path = self.path is not None or self.query is not None
        self.touches_body = self.body is not None
        self.is_empty = not (self.touches_headers or self.touches_path or self.touches_body or self.status_map)

    # -- headers

    def _render_headers(self, tctx: TemplateContext) -> list[str]:
        values = []
        for name, template in self.set:
            value = template.render(tctx)
            _refuse_unsafe("header", name, value)
            values.append(value)
        return values

    def _headers(self, headers: Iterable[tuple[str, str]], values: list[str]) -> list[tuple[str, str]]:
        out = [(n, v) for n, v in headers if n.lower() not in self.remove] if self.remove else list(headers)
        for old, new in self.rename:
            out = [(new if n.lower() == old else n, v) for n, v in out]
        for (name, _), value in zip(self.set, values):
            lowered = name.lower()
            out = [(n, v) for n, v in out if n.lower() != lowered]
            out.append((name, value))
        return out

    def apply_headers(self, headers: list[tuple[str, str]], tctx: TemplateContext) -> list[tuple[str, str]]:
        """Remove, rename, set; ValueError when a rendered value would carry CR, LF or NUL."""
        if not self.touches_headers:
            return headers
        return self._headers(headers, self._render_headers(tctx) if self.set else [])

    def apply_header_fields(
        self, fields: list[tuple[bytes, bytes]], tctx: TemplateContext, encode: Callable[[str], bytes] | None = None
    ) -> list[tuple[bytes, bytes]]:
        """`apply_headers` on a head kept as bytes (the proxy's answer): nothing decoded; a set
        value is encoded by `encode` (default UTF-8)."""
        if not self.touches_headers:
            return fields
        return self._fields_bytes(fields, self._render_headers(tctx) if self.set else [], encode)

    def _apply_to_fields(self, message: http.Message, values: list[str]) -> None:
        message.headers.fields = tuple(self._fields_bytes(message.headers.fields, values))

    def _fields_bytes(
        self, fields: Iterable[tuple[bytes, bytes]], values: list[str], encode: Callable[[str], bytes] | None = None
    ) -> list[tuple[bytes, bytes]]:
        """The same operations on mitmproxy's byte fields; names are ASCII tokens, values UTF-8."""
        if self.remove:
            removed = self._remove_b
            fields = [f for f in fields if f[0].lower() not in removed]
        for old, new in self._rename_b:
            fields = [(new if k.lower() == old else k, v) for k, v in fields]
        for (name, lowered), value in zip(self._set_b, values):
            fields = [f for f in fields if f[0].lower() != lowered]
            fields.append((name, encode(value) if encode is not None else value.encode("utf-8", "surrogateescape")))
        return fields if isinstance(fields, list) else list(fields)

    # -- status, path, query

    def apply_status(self, status: int) -> int:
        return self.status_map.get(status, status)

    def apply_path(self, path: str) -> str:
        """The path without its query: strip_prefix, add_prefix, then the rewrites."""
        if self.path is None or not path.startswith("/"):
            return path
        strip, add, rewrites = self.path
        if strip:
            path = strip_prefix(path, strip)
        if add:
            path = add_prefix(path, add)
        for pattern, replacement in rewrites:
            path = pattern.sub(replacement, path)
        if not path.startswith("/"):
            path = "/" + path
        return path

    def apply_target(self, target: str, tctx: TemplateContext) -> str:
        """A request target (`/path?query`) with the path and query operations applied."""
        values = self.query.render(tctx) if self.query is not None else []
        return self._target(target, values)

    def _target(self, target: str, query_values: list[str]) -> str:
        if not target.startswith("/"):  # `*`, or an authority: nothing to rewrite
            return target
        path, mark, query = target.partition("?")
        path = self.apply_path(path)
        if self.query is not None:
            query = self.query.apply(query, query_values)
            mark = "?" if query else ""
        return f"{path}{mark}{query}"

    # -- bodies

    def body_transform(
        self,
        raw: bytes,
        content_encoding: str | None,
        content_type: str | None,
        tctx: TemplateContext,
        *,
        label: str = "body",
    ) -> bytes | None:
        """The new wire bytes for `raw` (encoded as it was), or None when it stays as it is."""
        if self.body is None:
            return None
        return self.body.apply(raw, content_encoding, content_type, tctx, None, label)

    def _body(self, message: http.Message, tctx: TemplateContext, values: list[Any] | None, label: str, limit: int, strict: bool) -> bool:
        raw = message.raw_content
        if self.body is None or raw is None:  # no body op, or a streamed body
            return False
        headers = message.headers
        new = self.body.apply(raw, headers.get("content-encoding"), headers.get("content-type"), tctx, values, label, limit, strict)
        if new is None:
            return False
        message.raw_content = new
        return True

    # -- whole messages

    def apply_request(self, request: http.Request, tctx: TemplateContext, *, body_limit: int = bodies.DEFAULT_LIMIT) -> None:
        """Body, path and query, headers, in place; ValueError (nothing changed) on CR/LF.

        A body that cannot be read within `body_limit` (backworks_core.bodies) raises BodyError,
        nothing changed: the gateway answers 413/415/400, the request never goes on untransformed.
        """
        if self.is_empty:
            return
        header_values = self._render_headers(tctx) if self.set else []
        query_values = self.query.render(tctx) if self.query is not None else []
        body_values = self.body.render(tctx) if self.body is not None and self.body.set else None
        body_changed = self._body(request, tctx, body_values, "request body", body_limit, True)
        if self.touches_path:
            request.path = self._target(request.path, query_values)
        if self.touches_headers:
            self._apply_to_fields(request, header_values)
        if body_changed:
            _set_length(request, len(request.raw_content or b""))

    def apply_response(self, response: http.Response, tctx: TemplateContext, *, body_limit: int = bodies.DEFAULT_LIMIT) -> None:
        """Body, status_map, headers, in place; ValueError (nothing changed) on CR/LF, and on a
        body that decodes past `body_limit` or is JSON nested too deep (the caller's 502)."""
        if self.is_empty:
            return
        header_values = self._render_headers(tctx) if self.set else []
        body_values = self.body.render(tctx) if self.body is not None and self.body.set else None
        try:
            body_changed = self._body(response, tctx, body_values, "response body", body_limit, False)
        except bodies.BodyError as exc:
            raise ValueError(f"the response body: {exc.message}" if isinstance(exc, bodies.JsonTooDeep) else f"the response body {exc.message}") from None
        if self.status_map:
            status = self.status_map.get(response.status_code)
            if status is not None and status != response.status_code:
                response.status_code = status
                response.reason = reason_phrase(status)
        if self.touches_headers:
            self._apply_to_fields(response, header_values)
        if body_changed:
            _set_length(response, len(response.raw_content or b""))


CompiledHeaderTransform = CompiledTransform
"""The name addons.proxy imports; the same class."""


class EndpointTransform(StrictModel):
    """An endpoint's own `transform:`, applied around its handler (innermost for a proxy)."""

    request: RequestTransform | None = Field(None, description="applied to the request before the handler (for a proxy, after the pool's and config.proxy's transforms)", examples=[{"headers": {"X-Source": "gateway"}}])
    response: ResponseTransform | None = Field(None, description="applied to the answer after the handler (for a proxy, before the pool's transforms)", examples=[{"remove_headers": ["Server"]}])
