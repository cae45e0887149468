"""Header transforms for requests and responses (`transform_request` / `transform_response`).

This release applies the header operations (set, remove, rename) and `status_map`; every other
transform key is rejected by the strict model rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from backworks_core.model import StrictModel
from backworks_core.templates import (
    Template,
    TemplateContext,
    check_header_templates,
    compile_template,
    has_crlf,
)


class HeaderTransform(StrictModel):
    headers: dict[str, str] = Field(default_factory=dict, description="set these headers (templates allowed)")
    remove_headers: list[str] = Field(default_factory=list)
    rename_headers: dict[str, str] = Field(default_factory=dict)

    _safe_headers = field_validator("headers")(check_header_templates)

    @field_validator("rename_headers", "remove_headers")
    @classmethod
    def _safe_names(cls, value: dict[str, str] | list[str]) -> dict[str, str] | list[str]:
        names = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        for name in names:
            if has_crlf(name) or not name.strip():
                raise ValueError(f"{name!r} is not a valid header name")
        return value


class RequestTransform(HeaderTransform):
    pass


class ResponseTransform(HeaderTransform):
    status_map: dict[Annotated[int, Field(ge=100, le=599)], Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=dict, description="replace one status code with another"
    )


class CompiledHeaderTransform:
    """Compiled once at load: remove, then rename, then set (set wins)."""

    def __init__(self, spec: HeaderTransform | None) -> None:
        spec = spec or HeaderTransform()
        self.remove = [name for name in spec.remove_headers]
        self.rename = list(spec.rename_headers.items())
        self.set: list[tuple[str, Template]] = [(n, compile_template(v)) for n, v in spec.headers.items()]
        self.status_map = dict(getattr(spec, "status_map", {}) or {})
        self.is_empty = not (self.remove or self.rename or self.set or self.status_map)

    def apply_headers(self, headers: list[tuple[str, str]], tctx: TemplateContext) -> list[tuple[str, str]]:
        if self.is_empty:
            return headers
        removed = {name.lower() for name in self.remove}
        out = [(n, v) for n, v in headers if n.lower() not in removed]
        for old, new in self.rename:
            out = [(new if n.lower() == old.lower() else n, v) for n, v in out]
        for name, template in self.set:
            value = template.render(tctx)
            if has_crlf(value):
                raise ValueError(f"header {name} would carry CR or LF")
            out = [(n, v) for n, v in out if n.lower() != name.lower()]
            out.append((name, value))
        return out
