"""The blueprint's JSON Schema for editors, assembled from the same pydantic models the loader uses.

The top-level model keeps plugin configs and endpoint sections as open mappings (each plugin
validates its own); here they are filled in with each plugin's schema so that an editor can
complete and check `plugins.proxy.config` and `endpoints[].config.static` as well.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from backworks_core.loader import CORE_SECTIONS
from backworks_core.model import BlueprintSettings
from backworks_core.plugins import PluginRegistry
from backworks_core.transforms import EndpointTransform
from backworks_core.validation import parse_duration, parse_positive_duration

SCHEMA_ID = "https://backworks.dev/schema/blueprint-v1.json"

_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)"
# What `parse_duration` accepts: seconds as a number, or a string such as 250ms, 30s, 5m, 1h, 1m30s.
DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": rf"^\s*(?:{_DECIMAL}|(?:{_DECIMAL}(?:ms|h|m|s))+)\s*$"},
    ]
}


# `${VAR}` / `${VAR:-default}` written as a whole value: the loader substitutes it in any string
# before it checks types, so `port: "${BACKWORKS_PORT:-8080}"` is an integer once loaded.
ENV_REFERENCE: dict[str, Any] = {
    "type": "string",
    "pattern": r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$",
    "description": "an environment variable, substituted when the blueprint loads: ${VAR} or ${VAR:-default}",
}
_TYPED = frozenset({"integer", "number", "boolean"})


def allow_env_references(node: Any) -> Any:
    """Every schema that takes a number, a boolean or one of an `enum` also takes `${VAR}`."""
    if isinstance(node, list):
        return [allow_env_references(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _env_child(key, value) for key, value in node.items()}
    kinds = node.get("type")
    # `const` stays as it is: it tells plugins and middlewares apart (`oneOf`, `if`), a place for no variable
    scalar = kinds in _TYPED or (isinstance(kinds, list) and _TYPED & set(kinds)) or "enum" in node
    if not scalar or "properties" in node:
        return node
    outer = {key: node.pop(key) for key in ("description", "title", "default", "examples") if key in node}
    return {**outer, "anyOf": [node, ENV_REFERENCE]}


_SCHEMA_MAPS = frozenset({"properties", "$defs", "patternProperties", "dependentSchemas"})
_VALUES = frozenset({"enum", "const", "examples", "default", "required"})


def _env_child(key: str, value: Any) -> Any:
    if key in _VALUES:
        return value
    if key in _SCHEMA_MAPS and isinstance(value, dict):  # name → schema, not a schema itself
        return {name: allow_env_references(child) for name, child in value.items()}
    return allow_env_references(value)


class _BlueprintJsonSchema(GenerateJsonSchema):
    """Durations are numbers or strings with a unit in the blueprint, not only numbers."""

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        function = schema["function"].get("function")
        if function is parse_duration:
            return {"anyOf": [dict(option) for option in DURATION_SCHEMA["anyOf"]]}
        if function is parse_positive_duration:
            number, text = (dict(option) for option in DURATION_SCHEMA["anyOf"])
            number.pop("minimum", None)
            return {"anyOf": [{**number, "exclusiveMinimum": 0}, text]}
        return super().function_before_schema(schema)


def _inline(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    """A model's schema whose $defs are hoisted into the shared `defs`."""
    schema = model.model_json_schema(
        ref_template="#/$defs/{model}", mode="validation", schema_generator=_BlueprintJsonSchema
    )
    defs.update(schema.pop("$defs", {}))
    return schema


def _with_enabled(config: dict[str, Any]) -> dict[str, Any]:
    """`enabled` may also be written inside a plugin's `config` (as the original auth-api example does)."""
    properties = {**config.get("properties", {}), "enabled": {"type": "boolean", "default": True}}
    return {**config, "properties": properties}


def blueprint_json_schema(registry: PluginRegistry) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    root = _inline(BlueprintSettings, defs)

    plugin_configs = {name: _with_enabled(_inline(plugin.Config, defs)) for name, plugin in registry.plugins.items()}
    map_form = {
        "type": "object",
        "properties": {
            name: {
                "type": "object",
                "additionalProperties": False,
                "properties": {"enabled": {"type": "boolean", "default": True}, "config": schema},
            }
            for name, schema in plugin_configs.items()
        },
        "additionalProperties": False,
    }
    list_form = {
        "type": "array",
        "items": {
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["type"],
                    "properties": {
                        "type": {"const": name},
                        "enabled": {"type": "boolean", "default": True},
                        "config": schema,
                    },
                }
                for name, schema in plugin_configs.items()
            ]
        },
    }
    root["properties"]["plugins"] = {"description": "plugin name → {enabled, config}", "anyOf": [map_form, list_form]}

    sections = dict(CORE_SECTIONS)
    sections.update({name: section for name, (_, section) in registry.sections.items()})
    endpoint_def = defs["EndpointSettings"]
    endpoint_def["properties"]["transform"] = {
        "description": "endpoint-level transforms: {request: …, response: …}",
        "anyOf": [_inline(EndpointTransform, defs), {"type": "null"}],
    }
    endpoint_def["properties"]["config"] = {
        "type": "object",
        "description": "the handler's settings, under the handler's name",
        "additionalProperties": False,
        "properties": {name: _inline(section.model, defs) for name, section in sections.items()},
    }

    middleware_schemas = [
        {
            "if": {"properties": {"plugin": {"const": name}}},
            "then": {"properties": {"config": _inline(plugin.MiddlewareConfig, defs)}},
        }
        for name, plugin in registry.plugins.items()
        if plugin.MiddlewareConfig is not None
    ]
    if middleware_schemas:
        defs["MiddlewareSettings"]["allOf"] = middleware_schemas

    root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    root["$id"] = SCHEMA_ID
    root["title"] = "Backworks blueprint"
    root["$defs"] = defs
    return allow_env_references(root)


SCHEMA_FILE = "blueprint.schema.json"  # beside the blueprint, as `backworks init` writes it
_READ_LIMIT = 16 << 20  # an existing schema file larger than this is not one of ours


def modeline(schema_file: str) -> str:
    """The first line that tells YAML language servers (VS Code's YAML extension, JetBrains IDEs,
    Neovim's yamlls) which schema completes and checks the file."""
    return f"# yaml-language-server: $schema=./{schema_file}\n"


def write_schema_beside(blueprint: str | os.PathLike[str], registry: PluginRegistry) -> str:
    """Write the blueprint schema next to `blueprint` for editors; returns the file's name.

    `blueprint.schema.json` (the name `init` uses, so one schema serves every blueprint of the
    folder) when there is none, or when the one there is a Backworks schema (its `$id`): that one
    is brought up to date. A file of that name that is not ours is never replaced: the schema
    goes to `BLUEPRINT.schema.json` instead (e.g. `captured.yaml.schema.json`). Written like the
    other outputs: mode 0600, atomically, never through a symlink at the name. OSError when the
    folder cannot be written.
    """
    import json
    from pathlib import Path

    from backworks_core.files import write_private

    target = Path(blueprint)
    text = json.dumps(blueprint_json_schema(registry), indent=2) + "\n"
    shared = target.parent / SCHEMA_FILE
    existing = _existing_schema(shared)
    if existing is False:  # a file of that name that Backworks did not write
        own = f"{target.name}.schema.json"
        write_private(target.parent / own, text)
        return own
    if existing != text:  # none yet, or an older Backworks schema
        write_private(shared, text)
    return SCHEMA_FILE


def _existing_schema(path: Any) -> str | None | Literal[False]:
    """What is at `path`: None (nothing), its text (a Backworks schema: a plain file whose `$id`
    is ours) or False (anything else: a user's file, a symlink, a folder)."""
    import json
    import stat

    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size > _READ_LIMIT:
        return False
    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text)
    except (OSError, ValueError):
        return False
    if not isinstance(document, dict) or document.get("$id") != SCHEMA_ID:
        return False
    return text
