"""What `handler: mock` does beyond replaying examples: the features Prism and Mockoon users expect.

```yaml
config:
  mock:
    examples: [...]
    request_body:                 # what the recorded requests sent (written by capture)
      schema: {type: object, required: [item], properties: {item: {type: string}}}
      content_types: [application/json]
      required: true
    validate: true                # check requests against request_body (415/400/422); default false
    unrecorded: synthesise        # an unseen path parameter value: not_found (default) or synthesise
    prefer: true                  # honour `Prefer: code=…` / `Prefer: example=…` (default true)
    replay_latency: true
    latency_factor: 0.5           # recorded latency × factor …
    max_latency: 2s               # … at most this (default and ceiling: 60 s)
```

A blueprint may set the defaults of every mock endpoint once, under `server.mock` (the same
keys but `request_body`); an endpoint's own key wins.

Request validation (`validate: true`), in Prism's order and with its statuses (an endpoint
without `request_body` has nothing to be checked against: its requests pass):
  - a request without a body: `422` when `request_body.required` (`$` as the path), else fine;
  - a body whose Content-Type's media type is neither JSON (`application/json`, `…+json`) nor
    listed in `request_body.content_types`: `415` naming what is accepted; no Content-Type is
    taken as JSON;
  - a JSON type whose body does not parse (or cannot be decoded within the endpoint's limit):
    `400`; a listed non-JSON type (curl's `-d` sends JSON as a form) is parsed as JSON when it
    can be, and left unchecked when it cannot;
  - JSON that does not match `request_body.schema`: `422` with jsonschema's most relevant error
    and its JSON path (`{"error": …, "status": 422, "request_id": …, "path": "$.items[0]"}`).
  Errors are Backworks' own JSON errors with `refused=…` in the flow comment, as
  `config.validate` answers them (backworks_core.limits); bodies are read bounded
  (backworks_core.bodies).

Preferences (RFC 7240 `Prefer`, Prism's names): `code=NNN` answers with an example of that
status (one whose `when` matches the request first, the most specific; else the first in the
file), `example=NAME` with the example of that name; both: both must hold. Other preferences
are ignored. No such example: `404` naming the examples there are. The answer carries
`Preference-Applied`. A preferred answer does not advance any sequence.

Example names: an example's `name`, else derived: its status, then its `when` in short
(path values, `query=value`, `header=value`, `body-<6 hex>`), characters other than
`A–Z a–z 0–9 . _ ~ = -` as `_`, at most 64; a name already taken gets `-2`, `-3`… in file order.

Unrecorded path parameters (`unrecorded: synthesise`): a request no example (and no fallback)
answers, on an endpoint whose examples name path parameters, gets the closest example's answer
with the request's values put in: the examples whose other conditions (query, headers, body)
hold are candidates; the one sharing the most path values wins, then the one with the most of
those other conditions, then a 2xx, then file order. In
a JSON body every string equal to the recorded value becomes the requested one, a path inside a
string (`"/users/1/posts"`) gets the segment replaced, and a number equal to the recorded
value becomes the requested number when both are integers; `Location` and `Content-Location`
are treated as such strings. The answer carries `X-Backworks-Mock: synthesised` and the flow
comment `mock=synthesised-from-example-N`. With `passthrough: true` the request goes upstream
instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import jsonschema
from jsonschema.exceptions import best_match
from mitmproxy import http
from pydantic import Field, ValidationError, field_validator

from backworks_core.bodies import BodyError, loads_json
from backworks_core.context import RequestContext
from backworks_core.handlers.mock_defaults import MockDefaults
from backworks_core.limits import Refusal, ValidateConfig, body_refusal, request_body
from backworks_core.model import StrictModel

if TYPE_CHECKING:
    from backworks_core.handlers.mock.config import MockConfig

logger = logging.getLogger(__name__)

SYNTHESISED_HEADER = "X-Backworks-Mock"
NAME_MAX = 64
LISTED_EXAMPLES = 50  # examples a failed `Prefer` names
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._~=-]+")
_LOCATION_HEADERS = frozenset({b"location", b"content-location"})
_MESSAGE_MAX = 300


# --------------------------------------------------------------------------- config


_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")


def is_media_type(text: str) -> bool:
    """`type/subtype` (RFC 6838 characters, no parameters)."""
    return bool(_MEDIA_TYPE.fullmatch(text))


class MockRequestBody(StrictModel):
    """`request_body`: what the recorded requests sent; checked with `validate: true`."""

    schema_: dict[str, Any] | bool | None = Field(
        None, alias="schema", description="JSON Schema of the request body (capture infers it from the recorded JSON bodies)", examples=[{"type": "object", "required": ["item"], "properties": {"item": {"type": "string"}}}]
    )
    content_types: list[str] = Field(
        default_factory=list,
        description="media types accepted besides JSON (application/json, …+json), e.g. a recorded form POST",
        examples=[["application/x-www-form-urlencoded"]],
    )
    required: bool = Field(False, description="a request without a body is refused (422)", examples=[True])

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema: Any) -> Any:
        if schema is not None:
            try:
                ValidateConfig.model_validate({"schema": schema})  # the checks `config.validate` makes: a valid schema, local $refs only
            except ValidationError as exc:
                raise ValueError(str(exc.errors()[0]["msg"]).removeprefix("Value error, ")) from None
        return schema

    @field_validator("content_types")
    @classmethod
    def _media_types(cls, types: list[str]) -> list[str]:
        for item in types:
            if not is_media_type(item.strip()):
                raise ValueError(f"{item!r} is not a media type (type/subtype, without parameters)")
        return [item.strip().lower() for item in types]


class MockFeaturesConfig(MockDefaults):
    """The keys of `config.mock` this module reads (MockConfig adds the examples)."""

    request_body: MockRequestBody | None = Field(
        None, description="the request body the recording saw: schema, accepted content types, required", examples=[{"schema": {"type": "object"}, "required": True}]
    )


def effective(config: MockFeaturesConfig, defaults: MockDefaults | None) -> MockDefaults:
    """The endpoint's keys, those it does not set taken from `server.mock`."""
    if defaults is None:
        return config
    values = {name: getattr(config if name in config.model_fields_set else defaults, name) for name in MockDefaults.model_fields}
    return MockDefaults.model_validate({MockDefaults.model_fields[k].alias or k: v for k, v in values.items()})


# --------------------------------------------------------------------------- names


def example_names(examples: Sequence[Any]) -> list[str]:
    """Each example's `name`, or one derived from its status and `when`; unique, in file order."""
    names: list[str] = []
    taken: set[str] = set()
    explicit = {getattr(e, "name", None) for e in examples} - {None}
    for example in examples:
        name = getattr(example, "name", None) or _derived_name(example)
        if getattr(example, "name", None) is None:
            base, n = name, 2
            while name in taken or name in explicit:
                name, n = f"{base}-{n}", n + 1
        taken.add(name)
        names.append(name)
    return names


def _derived_name(example: Any) -> str:
    parts = [str(example.status)]
    when = example.when
    if when is not None:
        parts += [str(v) for _, v in sorted(when.path.items())]
        for key, value in sorted(when.query.items()):
            parts.append(f"{key}={','.join(value) if isinstance(value, list) else value}")
        for key, value in sorted(when.headers.items()):
            parts.append(f"{key.lower()}={value}" if value is not None else f"no-{key.lower()}")
        if when.has_body:
            digest = hashlib.sha1(json.dumps(when.body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
            parts.append(f"body-{digest[:6]}")
    name = "-".join(slug for part in parts if (slug := _NAME_UNSAFE.sub("_", part).strip("_")))
    return name[:NAME_MAX]


# --------------------------------------------------------------------------- Prefer


def parse_prefer(values: Iterable[str]) -> dict[str, str]:
    """RFC 7240 preferences: `token[=value]` (value a token or a quoted string), `;` parameters
    dropped, several per field (`,`) and several fields; the first of a name wins."""
    prefs: dict[str, str] = {}
    for value in values:
        for item in _split(value, ","):
            head = _split(item, ";")[0].strip() if item.strip() else ""
            if not head:
                continue
            name, _, raw = head.partition("=")
            name, raw = name.strip().lower(), raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            prefs.setdefault(name, raw)
    return prefs


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


# --------------------------------------------------------------------------- synthesis


def substitute(value: Any, swaps: Sequence[tuple[str, str]]) -> Any:
    """`value` (JSON) with each recorded path value replaced by the requested one (see module doc)."""
    if isinstance(value, dict):
        return {k: substitute(v, swaps) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, swaps) for v in value]
    if isinstance(value, str):
        return substitute_text(value, swaps)
    if isinstance(value, int) and not isinstance(value, bool):
        for old, new in swaps:
            if old.isdigit() and new.isdigit() and value == int(old):
                return int(new)
    return value


def substitute_text(text: str, swaps: Sequence[tuple[str, str]]) -> str:
    for old, new in swaps:
        if text == old:
            return new
    if "/" not in text:
        return text
    cut = min((i for i in (text.find("?"), text.find("#")) if i >= 0), default=len(text))
    segments = text[:cut].split("/")
    lookup = dict(swaps)
    return "/".join(lookup.get(s, s) for s in segments) + text[cut:]


# --------------------------------------------------------------------------- the features


@dataclass(frozen=True)
class _Entry:
    """One example as the features see it: its answer, name, and conditions without `path`."""

    index: int
    name: str
    status: int
    path: dict[str, str]
    answer: Any  # backworks_core.handlers.mock.answers.Answer
    rest: Any  # compiled conditions without `path` (None: nothing else to hold), or the fallback marker
    conditions: Any  # compiled full conditions (None: a fallback)


class MockFeatures:
    """Compiled per handler: validation, Prefer, synthesis and latency of one mock endpoint.

    `compile_when(when)` and `parse_json(ctx)` are the handler's own matching (so the rules
    stay in one place): a compiled `when` has `matches(ctx, request_json)` and `specificity`.
    """

    def __init__(
        self,
        config: MockConfig,
        answers: Sequence[Any],
        compile_when: Callable[[Any], Any],
        parse_json: Callable[[RequestContext], Any],
        no_json: Any,
        defaults: MockDefaults | None = None,
    ) -> None:
        self.settings = effective(config, defaults)
        self.parse_json, self.no_json = parse_json, no_json
        self.request_body = config.request_body
        self.validator = None
        if self.settings.validate_ and self.request_body is not None and self.request_body.schema_ is not None:
            schema = self.request_body.schema_
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
            self.validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
        examples = config.all_examples
        names = example_names(examples)
        self.entries: list[_Entry] = []
        for index, (example, answer) in enumerate(zip(examples, answers)):
            when = example.when
            fallback = when is None or example.is_fallback
            rest = None
            if when is not None and not fallback:
                stripped = when.model_copy(update={"path": {}})
                if stripped.query or stripped.headers or stripped.has_body:
                    rest = compile_when(stripped)
            path = dict(when.path) if when is not None else {}
            conditions = None if fallback else compile_when(when)
            self.entries.append(_Entry(index, names[index], example.status, path, answer, rest, conditions))
        self.by_name = {e.name: e for e in self.entries}
        self.has_path_examples = any(e.path for e in self.entries)

    # -- validation ----------------------------------------------------------------------

    def check_request(self, ctx: RequestContext) -> http.Response | None:
        """Prism's answers to a request the recorded ones would not have been: 415, 400, 422."""
        if not self.settings.validate_ or self.request_body is None:
            return None
        refusal = self._refusal(ctx)
        return None if refusal is None else refusal.response(ctx)

    def _refusal(self, ctx: RequestContext) -> Refusal | None:
        spec = self.request_body
        assert spec is not None
        request = ctx.request
        if not request.raw_content:
            if spec.required:
                return Refusal(422, "request body is required; this endpoint's recorded requests all sent one", "schema", {"path": "$"})
            return None
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        json_type = not media or media in ("application/json", "text/json") or media.endswith("+json")
        if not json_type and media not in spec.content_types:
            accepted = ", ".join(["application/json", *spec.content_types])
            return Refusal(415, f"this endpoint expects a body of type {accepted}, got {media}", "content_type")
        try:
            document = loads_json(request_body(ctx))
        except BodyError as exc:
            return body_refusal(exc)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            if not json_type:
                return None  # a listed form or text type: nothing to check it against
            return Refusal(400, f"request body is not valid JSON: {_short(str(exc))}", "not_json")
        if self.validator is None:
            return None
        error = best_match(self.validator.iter_errors(document))
        if error is None:
            return None
        return Refusal(422, f"request body does not match the schema: {_short(error.message)}", "schema", {"path": error.json_path})

    # -- Prefer --------------------------------------------------------------------------

    def preferred(self, ctx: RequestContext) -> tuple[Any, str] | http.Response | None:
        """The answer `Prefer: code=…`/`example=…` asks for with its Preference-Applied value,
        a 404 naming the examples when none fits, or None (no such preference)."""
        if not self.settings.prefer:
            return None
        fields = ctx.request.headers.get_all("prefer")
        if not fields:
            return None
        prefs = parse_prefer(fields)
        code, name = prefs.get("code"), prefs.get("example")
        if code is None and name is None:
            return None
        candidates = self.entries
        wanted: list[str] = []
        if name is not None:
            wanted.append(f"example={name}")
            entry = self.by_name.get(name)
            candidates = [entry] if entry is not None else []
        if code is not None:
            wanted.append(f"code={code}")
            candidates = [e for e in candidates if str(e.status) == code]
        if not candidates:
            return self._no_preferred(ctx, " and ".join(wanted))
        request_json = self._json_reader(ctx)
        matching = [e for e in candidates if e.conditions is not None and e.conditions.matches(ctx, request_json)]
        if matching:
            best = max(matching, key=lambda e: (e.conditions.specificity, -e.index))
        else:
            best = next((e for e in candidates if e.conditions is None), candidates[0])
        ctx.notes["mock"] = f"preferred-example-{best.index}"
        return best.answer, ", ".join(reversed(wanted))

    def _no_preferred(self, ctx: RequestContext, wanted: str) -> http.Response:
        shown = self.entries[:LISTED_EXAMPLES]
        listing = ", ".join(f"{e.name} ({e.status})" for e in shown) or "none"
        if len(self.entries) > len(shown):
            listing += f" and {len(self.entries) - len(shown)} more"
        ctx.notes["mock"] = "no-preferred"
        message = f"no mock example fits Prefer {wanted} for {ctx.request.method} {ctx.request.path.split('?', 1)[0]}; examples: {listing}"
        response = ctx.error(404, message)
        body = json.loads(response.content or b"{}")
        body["examples"] = [{"name": e.name, "status": e.status} for e in shown]
        response.content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        return response

    # -- synthesis -----------------------------------------------------------------------

    def synthesise(self, ctx: RequestContext) -> Any | None:
        """An answer for path parameter values no example names (see module doc), or None."""
        if self.settings.unrecorded != "synthesise" or not self.has_path_examples or not ctx.params:
            return None
        request_json = self._json_reader(ctx)
        params = {k: str(v) for k, v in ctx.params.items()}
        best: tuple[tuple[int, int, int, int], _Entry] | None = None
        for entry in self.entries:
            if not entry.path or any(name not in params for name in entry.path):
                continue
            if entry.rest is not None and not entry.rest.matches(ctx, request_json):
                continue
            shared = sum(params[name] == value for name, value in entry.path.items())
            specificity = entry.rest.specificity if entry.rest is not None else 0
            score = (shared, specificity, int(200 <= entry.status < 300), -entry.index)
            if best is None or score > best[0]:
                best = (score, entry)
        if best is None:
            return None
        entry = best[1]
        swaps = [(value, params[name]) for name, value in entry.path.items() if params[name] != value]
        ctx.notes["mock"] = f"synthesised-from-example-{entry.index}"
        return synthesised_answer(entry.answer, swaps)

    # -- latency -------------------------------------------------------------------------

    def delay(self, answer: Any) -> float:
        if not self.settings.replay_latency:
            return 0.0
        return min(answer.latency * self.settings.latency_factor, self.settings.max_latency)

    async def wait(self, answer: Any) -> None:
        """Sleep out the replayed latency (asyncio: other requests go on meanwhile)."""
        seconds = self.delay(answer)
        if seconds > 0:
            await asyncio.sleep(seconds)

    def _json_reader(self, ctx: RequestContext) -> Callable[[], Any]:
        parsed: list[Any] = []

        def request_json() -> Any:
            if not parsed:
                parsed.append(self.parse_json(ctx))
            return parsed[0]

        return request_json


def synthesised_answer(answer: Any, swaps: Sequence[tuple[str, str]]) -> Any:
    """A copy of `answer` with the swaps made in its JSON body and Location headers, marked."""
    content = answer.content
    content_type = next((v for n, v in answer.fields if n.lower() == b"content-type"), b"").decode("latin-1").lower()
    media = content_type.split(";", 1)[0].strip()
    if swaps and content and (media == "application/json" or media.endswith("+json")):
        try:
            document = loads_json(content)
        except (ValueError, BodyError):
            pass
        else:
            content = json.dumps(substitute(document, swaps), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    fields = []
    for name, value in answer.fields:
        if swaps and name.lower() in _LOCATION_HEADERS:
            value = substitute_text(value.decode("latin-1"), swaps).encode("latin-1", "replace")
        fields.append((name, value))
    fields.append((SYNTHESISED_HEADER.encode(), b"synthesised"))
    return replace(answer, content=content, fields=tuple(fields))


def with_header(answer: Any, name: str, value: str) -> Any:
    return replace(answer, fields=(*answer.fields, (name.encode(), value.encode("latin-1", "replace"))))


def _short(message: str) -> str:
    return message if len(message) <= _MESSAGE_MAX else message[: _MESSAGE_MAX - 1] + "…"
