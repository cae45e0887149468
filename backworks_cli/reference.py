"""The configuration reference: every key a blueprint can hold, generated from the pydantic models.

`docs/configuration.md` is this module's output (`backworks reference -o docs/configuration.md`),
so it cannot drift from the code: a unit test compares the committed file with a fresh render.

The walk starts at the blueprint's top-level model and follows every nested model; the places
where the top level keeps an open mapping (a plugin's `config`, a middleware's `config`, an
endpoint's `config.<section>` and `transform`) are filled in with the models the built-in plugins
and the core declare. A model found at several places (retries, health checks, transforms) gets
one section, at its shallowest place, that lists the others.

Each key's description and examples come from its `Field(description=..., examples=[...])`. An
example is shown as a YAML snippet with the key at its place and the sibling keys that must be
written with it; `Example.blueprint` completes the snippet into a whole blueprint (a name, an
endpoint, the plugin settings it relies on) that the unit tests load with the real loader.

Output is deterministic: walk order follows the models' field order and sorted plugin and
section names; values are rendered as JSON/YAML text, never as Python reprs. Only built-in
plugins are described (installed third-party plugins would make the output depend on the machine).
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from backworks_core.loader import CORE_SECTIONS
from backworks_core.model import BlueprintSettings
from backworks_core.plugins import Plugin, PluginRegistry, Section

REGENERATE = "./run.sh reference -o docs/configuration.md"
LIST_ITEM = "[]"

# Names used for a map's entries in examples (the reference writes `<name>` in paths).
MAP_NAMES: Mapping[str, str] = {"plugins": "proxy", "upstreams": "orders"}
# Where examples put an endpoint: its path has a parameter that proxy and mock examples name.
EXAMPLE_PATH = "/orders/{id}"
EXAMPLE_HANDLER_FILE = "handlers/orders.py:get_order"
# A plugin's endpoint handler for each endpoint section; the core's any-handler sections use static.
STATIC_BODY: dict[str, Any] = {"static": {"body": {"id": "{{path.id}}"}}}

# Keys written in a model's examples besides its required ones: the model needs them to load
# (the auth plugin needs a key; a mock needs an answer; a fault middleware needs a fault).
BASE_KEYS: Mapping[str, tuple[str, ...]] = {
    "addons.auth.AuthConfig": ("jwt_secret",),
    "backworks_core.handlers.mock.MockConfig": ("examples",),
    "addons.fault.FaultMiddlewareConfig": ("delay",),
    "addons.proxy.PoolConfig": ("targets",),
    "backworks_core.model.MiddlewareSettings": ("config",),
}
# Keys whose examples need other sibling keys than the model's usual ones: (model, key) -> siblings.
COMPANIONS: Mapping[tuple[str, str], dict[str, Any]] = {
    ("addons.auth.AuthConfig", "public_key"): {"algorithms": ["RS256"]},
    ("addons.auth.AuthConfig", "private_key"): {"algorithms": ["RS256"]},
    ("addons.auth.AuthConfig", "jwks_url"): {"algorithms": ["RS256"]},
    ("addons.fault.FaultMiddlewareConfig", "delay"): {},
    ("addons.fault.FaultMiddlewareConfig", "abort"): {},
    ("backworks_core.model.EndpointSettings", "config"): {"handler": "static"},
    ("addons.proxy.PoolConfig", "hash_on"): {"load_balancing": "consistent_hash"},
}
# Keys whose examples need a key of the object around theirs: (model, key) -> the container's keys.
CONTAINER_COMPANIONS: Mapping[tuple[str, str], dict[str, Any]] = {
    ("addons.proxy.TargetConfig", "weight"): {"load_balancing": "weighted_round_robin"},
}
# What examples under a place rely on without showing it: merged under the snippet to load it.
SUPPORT: Mapping[str, dict[str, Any]] = {
    "endpoints": {
        "plugins": {
            "proxy": {
                "config": {
                    "targets": [{"name": "api-1", "url": "http://127.0.0.1:3001"}],
                    "upstreams": {"orders": {"targets": [{"name": "orders-1", "url": "http://127.0.0.1:3002"}]}},
                }
            }
        },
        "middlewares": [
            {"name": "browser-cors", "plugin": "cors", "config": {"origins": ["https://app.example.com"], "path": "/orders/*"}}
        ],
    },
    "middlewares": {"plugins": {"auth": {"config": {"jwt_secret": "${JWT_SECRET}"}}}},
}
EXAMPLE_NAME = "reference-example"
FALLBACK_ENDPOINT: dict[str, Any] = {"path": "/__example", "handler": "static", "config": {"static": {"body": "ok"}}}


def qualname(model: type[BaseModel]) -> str:
    return f"{model.__module__}.{model.__qualname__}"


# ---------------------------------------------------------------------------------- places


@dataclass(frozen=True)
class Level:
    """One step from the blueprint's top to an object: the key holding it, in its container."""

    container: Mapping[str, Any]  # the container's other keys, as examples write them
    key: str
    kind: Literal["object", "list", "map"]

    def shown(self) -> str:
        if self.kind == "list":
            return self.key + LIST_ITEM
        if self.kind == "map":
            return f"{self.key}.<{'plugin' if self.key == 'plugins' else 'name'}>"
        return self.key


@dataclass(frozen=True)
class Place:
    """Where an object of `model` sits in a blueprint."""

    model: type[BaseModel]
    levels: tuple[Level, ...]
    note: str = ""  # e.g. "plugin: auth" for a middleware's config

    @property
    def path(self) -> str:
        return ".".join(level.shown() for level in self.levels)

    @property
    def title(self) -> str:
        return f"{self.path} ({self.note})" if self.note else self.path

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key


@dataclass
class KeyDoc:
    key: str
    path: str  # dotted path, e.g. plugins.proxy.config.targets[].weight
    type: str
    default: str
    allowed: str
    description: str
    examples: list[Any]
    field: FieldInfo


@dataclass
class SectionDoc:
    place: Place
    also: list[Place] = field(default_factory=list)
    keys: list[KeyDoc] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return anchor(self.place.title)


def key_anchor(section: SectionDoc, key: KeyDoc) -> str:
    return "key-" + anchor(f"{key.path} {section.place.note}")


def anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "top-level"


def field_key(name: str, info: FieldInfo) -> str:
    return info.alias or name


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while get_origin(tp) is Annotated:
        args = get_args(tp)
        tp, metadata = args[0], metadata + list(args[1:])
    return tp, metadata


def _members(tp: Any) -> list[Any]:
    inner, _ = _unwrap(tp)
    if get_origin(inner) in (Union, types.UnionType):
        return [m for arg in get_args(inner) for m in _members(arg)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def nested_models(annotation: Any) -> list[tuple[Literal["object", "list", "map"], type[BaseModel]]]:
    """The models a field holds: directly, as list items, or as map values."""
    found: list[tuple[Literal["object", "list", "map"], type[BaseModel]]] = []
    for member in _members(annotation):
        inner, _ = _unwrap(member)
        origin = get_origin(inner)
        if _is_model(inner):
            found.append(("object", inner))
        elif origin is list:
            (item,) = get_args(inner)
            found += [("list", m) for kind, m in nested_models(item) if kind == "object"]
        elif origin is dict:
            _, value = get_args(inner)
            found += [("map", m) for kind, m in nested_models(value) if kind == "object"]
    return found


def builtin_registry() -> PluginRegistry:
    from addons import builtin_plugins

    return PluginRegistry(builtin_plugins())


def _example(model: type[BaseModel], name: str) -> Any:
    info = model.model_fields[name]
    if not info.examples:
        raise LookupError(f"{qualname(model)}.{name} has no example")
    return info.examples[0]


def _inherited(table: Mapping[Any, Any], model: type[BaseModel], key: str | None = None) -> Any:
    """The entry of `model` (or of the class it extends) in BASE_KEYS or COMPANIONS."""
    for cls in model.__mro__:
        name = f"{cls.__module__}.{cls.__qualname__}"
        entry = table.get(name if key is None else (name, key))
        if entry is not None:
            return entry
    return None


def base_of(model: type[BaseModel], key: str | None = None) -> dict[str, Any]:
    """The keys an example of `model` writes besides the key shown: required ones, and what it needs.

    Top-level keys are shown alone: `name` and `endpoints` are added only to load the example.
    """
    if model is BlueprintSettings:
        return {}
    companions = _inherited(COMPANIONS, model, key or "")
    wanted = [n for n, f in model.model_fields.items() if f.is_required()]
    if companions is None:
        wanted += [n for n in _inherited(BASE_KEYS, model) or () if n not in wanted]
    base: dict[str, Any] = {}
    for name in wanted:
        info = model.model_fields[name]
        if field_key(name, info) == key:
            continue
        try:
            base[field_key(name, info)] = _example(model, name)
        except LookupError:
            continue  # reported by the completeness check, not here
    for sibling, value in (companions or {}).items():
        base[sibling] = value
    return base


def endpoint_levels(section: str, handler: str | None) -> tuple[Level, ...]:
    """An endpoint whose `config.<section>` holds the object; other sections it needs beside it."""
    handler_name = handler or "static"
    if handler == "python":
        handler_name = EXAMPLE_HANDLER_FILE
    config: dict[str, Any] = dict(STATIC_BODY) if handler_name == "static" and section != "static" else {}
    endpoint = {"path": EXAMPLE_PATH if handler_name != "metrics" else "/internal/metrics", "handler": handler_name}
    return (Level({}, "endpoints", "list"), Level(endpoint, "config", "object"), Level(config, section, "object"))


def roots(registry: PluginRegistry) -> dict[str, list[Place]]:
    """The places the top-level model keeps open, after the place they follow."""
    plugins = sorted(registry.plugins.values(), key=lambda p: p.name)
    plugin_configs = [
        Place(plugin.Config, (Level({}, "plugins", "object"), Level({}, plugin.name, "object"), Level({}, "config", "object")))
        for plugin in plugins
    ]
    middleware_configs = [
        Place(
            plugin.MiddlewareConfig,
            (Level({}, "middlewares", "list"), Level({"name": f"{plugin.name}-example", "plugin": plugin.name}, "config", "object")),
            note=f"plugin: {plugin.name}",
        )
        for plugin in plugins
        if plugin.MiddlewareConfig is not None
    ]
    sections: dict[str, Section] = dict(CORE_SECTIONS)
    sections.update({name: section for name, (_, section) in registry.sections.items()})
    endpoint_sections = [
        Place(section.model, endpoint_levels(name, section.handler)) for name, section in sorted(sections.items())
    ]
    from backworks_core.transforms import EndpointTransform

    endpoint_config = {"path": EXAMPLE_PATH, "handler": "static", "config": STATIC_BODY}
    transform = Place(EndpointTransform, (Level({}, "endpoints", "list"), Level(endpoint_config, "transform", "object")))
    return {
        "plugins[]": plugin_configs,
        "middlewares[]": middleware_configs,
        "endpoints[]": [*endpoint_sections, transform],
    }


def walk(registry: PluginRegistry) -> list[SectionDoc]:
    """Every object of a blueprint, one section per model, in walk order (depth first)."""
    extra = roots(registry)
    places: list[Place] = []

    def visit(place: Place) -> None:
        places.append(place)
        for name, info in place.model.model_fields.items():
            key = field_key(name, info)
            container = {k: v for k, v in base_of(place.model).items() if k != key}
            for kind, model in nested_models(info.annotation):
                level = Level(container, key, kind)
                visit(Place(model, place.levels + (level,), place.note))
        for child in extra.get(place.path, []):
            visit(child)

    visit(Place(BlueprintSettings, ()))
    by_model: dict[type[BaseModel], list[Place]] = {}
    for place in places:
        by_model.setdefault(place.model, []).append(place)
    sections: list[SectionDoc] = []
    for place in places:
        group = by_model[place.model]
        canonical = min(group, key=lambda p: (len(p.levels), group.index(p)))
        if place is canonical:
            section = SectionDoc(place, [p for p in group if p is not place])
            section.keys = [describe_key(place, name, info) for name, info in place.model.model_fields.items()]
            sections.append(section)
    return sections


# ------------------------------------------------------------------------------- describing


def inline(value: Any) -> str:
    """A value as YAML's flow style writes it (JSON text): the same on every Python version."""
    return json.dumps(value, ensure_ascii=False, sort_keys=False)


def _validator_names(metadata: list[Any]) -> set[str]:
    names: set[str] = set()
    for item in metadata:
        function = getattr(item, "func", None)
        if function is not None:
            names.add(getattr(function, "__name__", ""))
    return names


def type_text(annotation: Any, titles: Mapping[type[BaseModel], SectionDoc], outer: list[Any] | None = None) -> str:
    """A reader's name for a type: string, duration, list of string, object (link), ...

    `outer`: a field's own metadata (pydantic moves a field's top-level Annotated there).
    """
    inner, metadata = _unwrap(annotation)
    metadata = list(outer or []) + metadata
    validators = _validator_names(metadata)
    if "parse_positive_duration" in validators or "parse_duration" in validators:
        return "duration"
    if "parse_size" in validators:
        return "size"
    if "_resolve_blueprint_path" in validators:
        return "file path"
    if "_absolute_url_path" in validators:
        return "URL path"
    origin = get_origin(inner)
    if origin in (Union, types.UnionType):
        parts = [type_text(arg, titles) for arg in get_args(inner) if arg is not type(None)]
        text = " or ".join(dict.fromkeys(parts))
        return text + (" or null" if type(None) in get_args(inner) else "")
    if origin is Literal:
        kinds = {type(v).__name__ for v in get_args(inner)}
        return {"str": "string", "int": "integer"}.get(kinds.pop(), "value") if len(kinds) == 1 else "value"
    if origin is list:
        return "list of " + type_text(get_args(inner)[0], titles)
    if origin is dict:
        key, value = get_args(inner)
        return f"map of {type_text(key, titles)} to {type_text(value, titles)}"
    if _is_model(inner):
        section = titles.get(inner)
        return f"object ([`{section.place.title}`](#{section.anchor}))" if section else "object"
    if inner is Any:
        return "any"
    return {str: "string", int: "integer", float: "number", bool: "boolean", dict: "map", list: "list"}.get(inner, getattr(inner, "__name__", str(inner)))


def _bounds(metadata: list[Any], unit: str = "item") -> list[str]:
    lower = upper = None
    notes: list[str] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            notes += _bounds(list(item.metadata), unit)
        elif isinstance(item, annotated_types.Ge):
            lower = f">= {item.ge}"
        elif isinstance(item, annotated_types.Gt):
            lower = f"> {item.gt}"
        elif isinstance(item, annotated_types.Le):
            upper = f"<= {item.le}"
        elif isinstance(item, annotated_types.Lt):
            upper = f"< {item.lt}"
        elif isinstance(item, annotated_types.MinLen):
            notes.append(f"at least {item.min_length} {unit}{'' if item.min_length == 1 else 's'}")
        elif isinstance(item, annotated_types.MaxLen):
            notes.append(f"at most {item.max_length} {unit}{'' if item.max_length == 1 else 's'}")
    return [b for b in (lower, upper) if b] + notes


def allowed_text(info: FieldInfo) -> str:
    parts: list[str] = []
    for member in _members(info.annotation):
        inner, metadata = _unwrap(member)
        if get_origin(inner) is Literal:
            parts.append(", ".join(f"`{v}`" for v in get_args(inner)))
        elif get_origin(inner) is list:
            item, item_meta = _unwrap(get_args(inner)[0])
            literals = [a for m in _members(item) for a in get_args(_unwrap(m)[0]) if get_origin(_unwrap(m)[0]) is Literal]
            if literals:
                parts.append("items: " + ", ".join(f"`{v}`" for v in literals))
            bounds = _bounds(item_meta) + [b for m in _members(item) for b in _bounds(_unwrap(m)[1])]
            if bounds:
                parts.append("items " + ", ".join(dict.fromkeys(bounds)))
        parts += _bounds(metadata)
    unit = "character" if _unwrap(info.annotation)[0] is str else "item"
    parts += _bounds(list(info.metadata), unit)
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "minimum" in extra:
        parts.append(f">= {extra['minimum']}")
    if "maximum" in extra:
        parts.append(f"<= {extra['maximum']}")
    return "; ".join(dict.fromkeys(parts))


def _with_unit(value: float, units: tuple[tuple[float, str], ...]) -> str | None:
    for size, unit in units:
        count = value / size
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return None


DURATION_UNITS = ((3600.0, "h"), (60.0, "m"), (1.0, "s"), (0.001, "ms"))
SIZE_UNITS = ((1024.0**3, "g"), (1024.0**2, "m"), (1024.0, "k"))


def default_text(info: FieldInfo, kind: str = "") -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(the defaults of its keys)"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and kind in ("duration", "size"):
        text = _with_unit(float(value), DURATION_UNITS if kind == "duration" else SIZE_UNITS)
        if text is not None:
            return f"`{text}`"
    return f"`{inline(value)}`"


def describe_key(place: Place, name: str, info: FieldInfo) -> KeyDoc:
    key = field_key(name, info)
    return KeyDoc(
        key=key,
        path=place.key_path(key),
        type="",  # filled once every section's title is known
        default=default_text(info),
        allowed=allowed_text(info),
        description=(info.description or "").strip(),
        examples=list(info.examples or []),
        field=info,
    )


# --------------------------------------------------------------------------------- examples


class _Dumper(yaml.SafeDumper):
    """Block style, lists indented under their key, multi-line strings as `|` blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def to_yaml(value: Any) -> str:
    return yaml.dump(value, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


def _merge(base: Any, over: Any) -> Any:
    """`over` deep-merged onto `base` (mappings merge; anything else is replaced)."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return over


@dataclass(frozen=True)
class Example:
    """One example of one key, at its place: the snippet shown and the blueprint that loads it."""

    section: str
    key: str
    path: str
    value: Any
    snippet: dict[str, Any]

    @property
    def blueprint(self) -> dict[str, Any]:
        top = self.path.split(".", 1)[0].split("[", 1)[0]
        document = _merge(SUPPORT.get(top, {}), self.snippet)
        document = {"name": EXAMPLE_NAME, **{k: v for k, v in document.items() if k != "name"}}
        if "name" in self.snippet:
            document["name"] = self.snippet["name"]
        if "endpoints" not in document:
            endpoint = dict(FALLBACK_ENDPOINT)
            middlewares = document.get("middlewares")
            if isinstance(middlewares, list):
                endpoint["middleware"] = [m["name"] for m in middlewares if isinstance(m, dict) and "name" in m]
            document["endpoints"] = [endpoint]
        return document


def snippet(place: Place, key: str, value: Any) -> dict[str, Any]:
    """The example at its place: the object's other needed keys, then the key; wrapped upwards."""
    base = base_of(place.model, key)
    obj: Any = {**{k: v for k, v in base.items() if k != key}, key: value}
    around = _inherited(CONTAINER_COMPANIONS, place.model, key) or {}
    for depth, level in enumerate(reversed(place.levels)):
        container = {**level.container, **around} if depth == 0 else level.container
        wrapped: Any = obj
        if level.kind == "list":
            wrapped = [obj]
        elif level.kind == "map":
            wrapped = {MAP_NAMES.get(level.key, "example"): obj}
        obj = {**{k: v for k, v in container.items() if k != level.key}, level.key: wrapped}
    return obj


def examples(sections: list[SectionDoc] | None = None) -> Iterator[Example]:
    for section in sections if sections is not None else walk(builtin_registry()):
        for doc in section.keys:
            for value in doc.examples:
                yield Example(section.place.title, doc.key, doc.path, value, snippet(section.place, doc.key, value))


def missing(sections: list[SectionDoc] | None = None) -> list[str]:
    """Keys without a description or an example: `path: what is missing`."""
    problems: list[str] = []
    for section in sections if sections is not None else walk(builtin_registry()):
        for doc in section.keys:
            lacks = [what for what, has in (("description", doc.description), ("example", doc.examples)) if not has]
            if lacks:
                label = f"{doc.path} ({section.place.note})" if section.place.note else doc.path
                problems.append(f"{label}: no {' and no '.join(lacks)}")
    return problems


# -------------------------------------------------------------------------------- rendering


INTRO = """\
# Configuration reference

<!-- Generated by `backworks reference` from the pydantic models; do not edit by hand.
     Regenerate with: {regenerate} -->

Every key a blueprint can hold, object by object: its dotted path, type, default, allowed
values, what it does, and an example written as you would write it in the blueprint. Each
example shows the key at its place with the sibling keys it needs; the unit tests load every
one with the real loader, completed with a `name`, an endpoint where the snippet has none, and
what it refers to elsewhere (proxy targets and an `orders` pool for proxy endpoints, a
`jwt_secret` for auth middlewares, a `browser-cors` middleware for endpoints that list it, the
files it names). The guide to the blueprint format, with the reasoning behind these keys, is
`docs/blueprint-reference.md`.

Conventions:

- `a.b[].c`: `b` is a list, and `c` a key of each of its items; `<name>` stands for a name you choose.
- **duration**: seconds as a number, or a string with units: `250ms`, `30s`, `5m`, `1h`, `1m30s`.
- **size**: bytes as a number, or a string with a binary unit: `512k`, `10m`, `1g` (`10mb` too).
- **file path**: relative to the blueprint's folder.
- Unknown keys are errors everywhere; every value may use `${{VAR}}` / `${{VAR:-default}}`.
"""


def render(registry: PluginRegistry | None = None) -> str:
    """The whole reference as Markdown; the same bytes on every run and supported Python."""
    registry = registry or builtin_registry()
    sections = walk(registry)
    titles = {s.place.model: s for s in sections}
    for section in sections:
        for doc in section.keys:
            doc.type = type_text(doc.field.annotation, titles, list(doc.field.metadata))
            kind = doc.type.removesuffix(" or null")
            doc.default = default_text(doc.field, kind)
    total = sum(len(s.keys) for s in sections)
    out: list[str] = [INTRO.format(regenerate=REGENERATE)]
    out.append(f"{len(sections)} objects, {total} keys.\n")
    out.append("## Contents\n")
    for section in sections:
        out.append(f"- [`{section.place.title or 'top level'}`](#{section.anchor}) ({len(section.keys)})")
    out.append("")
    plugin_by_config = {p.Config: p for p in registry.plugins.values()}
    for section in sections:
        out += render_section(section, plugin_by_config.get(section.place.model))
    return "\n".join(out).rstrip("\n") + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_section(section: SectionDoc, plugin: type[Plugin] | None) -> list[str]:
    place = section.place
    out = [f'<a id="{section.anchor}"></a>', "", f"## `{place.title}`" if place.title else "## Top level", ""]
    doc = (place.model.__doc__ or "").strip()
    if doc and place.model.__doc__ != BaseModel.__doc__:
        out += [" ".join(doc.split()), ""]
    if plugin is not None and plugin.description and not section.also:
        out += [f"Plugin `{plugin.name}`: {plugin.description}.", ""]
    if section.also:
        out += ["Also at: " + ", ".join(f"`{p.title}`" for p in section.also) + ".", ""]
    if not section.keys:
        out += ["This object has no keys: write `{}` or leave it out.", ""]
        return out
    out += ["| Key | Type | Default | Allowed |", "| --- | --- | --- | --- |"]
    for key in section.keys:
        out.append(f"| [`{key.key}`](#{key_anchor(section, key)}) | {_cell(key.type)} | {_cell(key.default)} | {_cell(key.allowed) or ' '} |")
    out.append("")
    for key in section.keys:
        out += [f'<a id="{key_anchor(section, key)}"></a>', "", f"### `{key.path}`", ""]
        if place.note:
            out += [f"In a middleware with `{place.note}`.", ""]
        text = key.description.rstrip(".")
        out += [text[:1].upper() + text[1:] + "." if text else "(no description)", ""]
        out.append(f"- Type: {key.type}")
        out.append(f"- Default: {key.default}")
        if key.allowed:
            out.append(f"- Allowed: {key.allowed}")
        out.append("")
        for value in key.examples:
            out += ["```yaml", to_yaml(snippet(place, key.key, value)).rstrip("\n"), "```", ""]
    return out
