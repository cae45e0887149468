"""Backworks' mitmproxy addons: the core addon and one module per feature plugin."""

from __future__ import annotations

from backworks_core.plugins import Plugin


def builtin_plugins() -> list[type[Plugin]]:
    """The plugins that ship with Backworks, in the order their addons are registered."""
    from addons.auth import AuthPlugin
    from addons.capture import CapturePlugin
    from addons.metrics import MetricsPlugin
    from addons.proxy import ProxyPlugin
    from addons.transform import TransformPlugin

    return [ProxyPlugin, TransformPlugin, AuthPlugin, MetricsPlugin, CapturePlugin]
