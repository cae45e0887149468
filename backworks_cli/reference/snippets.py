"""The examples: each key's example written at its place with the sibling keys it needs
(`snippet`), and completed into a whole blueprint that the unit tests load (`Example.blueprint`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from backworks_cli.reference.places import Place, field_key, qualname
from backworks_core.model import BlueprintSettings

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


def _example(model: type[BaseModel], name: str) -> Any:
    info = model.model_fields[name]
    if not info.examples:
        raise LookupError(f"{qualname(model)}.{name} has no example")
    return info.examples[0]


def _inherited(table: Mapping[Any, Any], model: type[BaseModel], key: str | None = None) -> Any:
    """The entry of `model` (or of the class it extends) in BASE_KEYS or COMPANIONS.

    A class is found by the module it is defined in or any package above it, so that the tables
    may name it where it is imported from (`addons.auth.AuthConfig` for `addons.auth.settings`).
    """
    for cls in model.__mro__:
        module = cls.__module__.split(".")
        for depth in range(len(module), 0, -1):
            name = f"{'.'.join(module[:depth])}.{cls.__qualname__}"
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
