"""The cors plugin (middleware): CORS headers and preflights. Being written (issue 9)."""

from __future__ import annotations

from backworks_core.model import MiddlewareFilter
from backworks_core.plugins import Plugin


class CorsMiddlewareConfig(MiddlewareFilter):
    """Placeholder until the middleware lands."""


class CorsPlugin(Plugin):
    name = "cors"
    description = "CORS: allowed origins, preflights answered at the gateway"
    MiddlewareConfig = CorsMiddlewareConfig
