"""The fault plugin (middleware): injected latency and aborts for resilience testing. Being written (issue 9)."""

from __future__ import annotations

from backworks_core.model import MiddlewareFilter
from backworks_core.plugins import Plugin


class FaultMiddlewareConfig(MiddlewareFilter):
    """Placeholder until the middleware lands."""


class FaultPlugin(Plugin):
    name = "fault"
    description = "fault injection: added latency and aborts, at a percentage or on request"
    MiddlewareConfig = FaultMiddlewareConfig
