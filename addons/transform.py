"""The `transform` plugin: a middleware that reshapes requests and responses on any endpoint.

The operations are those of backworks_core.transforms (headers, path, query, JSON and text
bodies, status_map), compiled once when the blueprint loads. As a middleware it runs in
blueprint order with the others: its request transform before the endpoint's handler (and so
before the proxy's plugin- and endpoint-level transforms), its response transform after them.
It changes `flow.request` itself, so mitmweb shows the request as the handler saw it.
"""

from __future__ import annotations

import logging

from mitmproxy import http
from pydantic import BaseModel, Field

from backworks_core.context import RequestContext, template_context
from backworks_core.limits import decoded_limit
from backworks_core.loader import MiddlewareSpec
from backworks_core.model import MiddlewareFilter
from backworks_core.plugins import Plugin
from backworks_core.transforms import CompiledTransform, RequestTransform, ResponseTransform

logger = logging.getLogger(__name__)


class TransformMiddlewareConfig(MiddlewareFilter):
    request: RequestTransform | None = Field(None, description="applied to the request before the endpoint's handler (and before the proxy's own transforms)", examples=[{"headers": {"X-Gateway": "backworks"}}])
    response: ResponseTransform | None = Field(None, description="applied to the answer after the handler (and after the proxy's own transforms)", examples=[{"headers": {"X-Frame-Options": "DENY"}}])


class TransformMiddleware:
    def __init__(self, name: str, config: TransformMiddlewareConfig) -> None:
        self.name = name
        self.request = CompiledTransform(config.request)
        self.response = CompiledTransform(config.response)
        # The relay holds a streamed body whole for it (backworks_core.streaming.transforms_body), never bypasses it.
        self.transforms_request_body = self.request.touches_body
        self.response_phase = not self.response.is_empty  # the compiled pipeline skips an empty one

    async def on_request(self, ctx: RequestContext) -> http.Response | None:
        if self.request.is_empty:
            return None
        try:
            # A body over the endpoint's limit once decoded, undecodable or too deep raises
            # BodyError: the gateway answers 413/415/400 (backworks_core.bodies).
            self.request.apply_request(ctx.flow.request, template_context(ctx), body_limit=decoded_limit(ctx.endpoint.guard))
        except ValueError as exc:  # a value taken from the request would carry CR or LF
            return ctx.error(400, f"request transform {self.name!r} refused: {exc}")
        return None

    async def on_response(self, ctx: RequestContext, response: http.Response) -> None:
        if self.response.is_empty:
            return
        try:
            self.response.apply_response(response, template_context(ctx))
        except ValueError as exc:
            # on_response cannot swap the response: turn it into the error in place
            logger.warning("[%s] response transform %r refused: %s", ctx.request_id, self.name, exc)
            error = ctx.error(502, f"response transform {self.name!r} refused: {exc}")
            response.status_code, response.reason = error.status_code, error.reason
            response.headers = error.headers
            response.content = error.content


class TransformPlugin(Plugin):
    name = "transform"
    description = "request and response transforms as a middleware"
    MiddlewareConfig = TransformMiddlewareConfig

    def build_middleware(self, middleware: MiddlewareSpec, config: BaseModel) -> TransformMiddleware:
        assert isinstance(middleware.config, TransformMiddlewareConfig)
        return TransformMiddleware(middleware.name, middleware.config)
