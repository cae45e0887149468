"""`handler: static`: a fixed response, with templates rendered per request."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mitmproxy import http
from pydantic import Field, field_validator

from backworks_core.context import RequestContext, json_bytes, reason_phrase, template_context, utf8
from backworks_core.model import StrictModel
from backworks_core.templates import (
    CompiledValue,
    Template,
    TemplateContext,
    check_header_templates,
    compile_template,
    compile_value,
    has_crlf,
)
from backworks_core.validation import Duration


class StaticConfig(StrictModel):
    status: int = Field(200, ge=100, le=599, description="the HTTP status", examples=[201])
    headers: dict[str, str] = Field(default_factory=dict, description="response headers (templates allowed)", examples=[{"Cache-Control": "max-age=60"}])
    body: Any = Field(None, description="a JSON value (sent as JSON) or a string (sent as text)", examples=[{"id": "{{path.id}}", "status": "shipped"}, "pong"])
    delay: Duration = Field(0, description="wait this long before answering", examples=["250ms"])

    _safe_headers = field_validator("headers")(check_header_templates)

    @field_validator("body")
    @classmethod
    def _compilable_body(cls, body: Any) -> Any:
        compile_value(body)
        return body


class StaticHandler:
    """Templates are compiled once here; a request only renders them."""

    def __init__(self, config: StaticConfig) -> None:
        self.status = config.status
        self.delay = config.delay
        self.headers: list[tuple[str, Template]] = [
            (name, compile_template(value)) for name, value in config.headers.items()
        ]
        self.body_is_text = isinstance(config.body, str)
        self.body: CompiledValue | None = None if config.body is None else compile_value(config.body)
        self.content_type = "text/plain; charset=utf-8" if self.body_is_text else "application/json"
        self._constant_body = self._encode(self.body.render(TemplateContext())) if self.body and self.body.is_constant else None
        self.needs_context = not (self.body is None or self.body.is_constant) or not all(t.is_constant for _, t in self.headers)

    def _encode(self, value: Any) -> bytes:
        if self.body_is_text:
            return utf8(str(value))
        return json_bytes(value)

    async def __call__(self, ctx: RequestContext) -> http.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        tctx = template_context(ctx) if self.needs_context else None
        if self.body is None:
            content = b""
        elif self._constant_body is not None:
            content = self._constant_body
        else:
            content = self._encode(self.body.render(tctx or _EMPTY_CONTEXT))
        fields: list[tuple[bytes, bytes]] = [(b"content-length", str(len(content)).encode())]
        if content:
            fields.append((b"Content-Type", self.content_type.encode()))
        headers = http.Headers(fields)
        for name, template in self.headers:
            value = template.render(tctx or _EMPTY_CONTEXT)
            if has_crlf(value):
                return ctx.error(400, f"the value for response header {name} would carry CR or LF")
            headers[name] = value
        now = time.time()
        # Built directly: Response.make re-validates and re-encodes what is already known here.
        return http.Response(b"HTTP/1.1", self.status, reason_phrase(self.status).encode(), headers, content, None, now, now)


_EMPTY_CONTEXT = TemplateContext()


