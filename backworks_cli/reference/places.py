"""Where an object sits in a blueprint (`Place`: the levels from the top), the documents a walk
fills in (`SectionDoc`, `KeyDoc`), and which models a field's annotation holds."""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

LIST_ITEM = "[]"


def qualname(model: type[BaseModel]) -> str:
    return f"{model.__module__}.{model.__qualname__}"


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


def unwrap_annotated(tp: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while get_origin(tp) is Annotated:
        args = get_args(tp)
        tp, metadata = args[0], metadata + list(args[1:])
    return tp, metadata


def union_members(tp: Any) -> list[Any]:
    inner, _ = unwrap_annotated(tp)
    if get_origin(inner) in (Union, types.UnionType):
        return [m for arg in get_args(inner) for m in union_members(arg)]
    return [tp]


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def nested_models(annotation: Any) -> list[tuple[Literal["object", "list", "map"], type[BaseModel]]]:
    """The models a field holds: directly, as list items, or as map values."""
    found: list[tuple[Literal["object", "list", "map"], type[BaseModel]]] = []
    for member in union_members(annotation):
        inner, _ = unwrap_annotated(member)
        origin = get_origin(inner)
        if is_model(inner):
            found.append(("object", inner))
        elif origin is list:
            (item,) = get_args(inner)
            found += [("list", m) for kind, m in nested_models(item) if kind == "object"]
        elif origin is dict:
            _, value = get_args(inner)
            found += [("map", m) for kind, m in nested_models(value) if kind == "object"]
    return found
