"""The walk: every object a blueprint can hold, from the top-level model through every nested
one and the open places the plugins and the core fill in; one section per model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from backworks_cli.reference.describe import describe_key
from backworks_cli.reference.places import Level, Place, SectionDoc, field_key, nested_models
from backworks_cli.reference.snippets import EXAMPLE_HANDLER_FILE, EXAMPLE_PATH, STATIC_BODY, Example, base_of, snippet
from backworks_core.loader import CORE_SECTIONS
from backworks_core.model import BlueprintSettings
from backworks_core.plugins import PluginRegistry, Section

def builtin_registry() -> PluginRegistry:
    from addons import builtin_plugins

    return PluginRegistry(builtin_plugins())


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
