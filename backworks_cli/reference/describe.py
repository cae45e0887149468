"""A key in words: its type, default and allowed values, as the reference's tables write them."""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from backworks_cli.reference.places import KeyDoc, Place, SectionDoc, field_key, is_model, union_members, unwrap_annotated

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
    inner, metadata = unwrap_annotated(annotation)
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
    if is_model(inner):
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
    for member in union_members(info.annotation):
        inner, metadata = unwrap_annotated(member)
        if get_origin(inner) is Literal:
            parts.append(", ".join(f"`{v}`" for v in get_args(inner)))
        elif get_origin(inner) is list:
            item, item_meta = unwrap_annotated(get_args(inner)[0])
            literals = [a for m in union_members(item) for a in get_args(unwrap_annotated(m)[0]) if get_origin(unwrap_annotated(m)[0]) is Literal]
            if literals:
                parts.append("items: " + ", ".join(f"`{v}`" for v in literals))
            bounds = _bounds(item_meta) + [b for m in union_members(item) for b in _bounds(unwrap_annotated(m)[1])]
            if bounds:
                parts.append("items " + ", ".join(dict.fromkeys(bounds)))
        parts += _bounds(metadata)
    unit = "character" if unwrap_annotated(info.annotation)[0] is str else "item"
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
