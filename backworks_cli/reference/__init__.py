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

The package, in the order the work happens: `places` (where an object sits in a blueprint, and
the models a field holds), `model_walk` (every object of a blueprint, one section per model),
`describe` (a key's type, default and allowed values in words), `snippets` (the examples at
their places, and the blueprints that load them) and `markdown` (the page).
"""

from backworks_cli.reference.describe import allowed_text, default_text, describe_key, inline, type_text
from backworks_cli.reference.markdown import INTRO, REGENERATE, render, render_section
from backworks_cli.reference.model_walk import builtin_registry, endpoint_levels, examples, missing, roots, walk
from backworks_cli.reference.places import KeyDoc, Level, Place, SectionDoc, anchor, field_key, key_anchor, nested_models, qualname
from backworks_cli.reference.snippets import Example, base_of, snippet, to_yaml

__all__ = [
    "INTRO",
    "REGENERATE",
    "Example",
    "KeyDoc",
    "Level",
    "Place",
    "SectionDoc",
    "allowed_text",
    "anchor",
    "base_of",
    "builtin_registry",
    "default_text",
    "describe_key",
    "endpoint_levels",
    "examples",
    "field_key",
    "inline",
    "key_anchor",
    "missing",
    "nested_models",
    "qualname",
    "render",
    "render_section",
    "roots",
    "snippet",
    "to_yaml",
    "type_text",
    "walk",
]
