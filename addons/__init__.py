"""Backworks' mitmproxy addons: the core addon and one module per feature plugin."""

from __future__ import annotations

from backworks_core.plugins import Plugin, PluginRegistry


def builtin_plugins() -> list[type[Plugin]]:
    """The plugins that ship with Backworks, in the order their addons are registered."""
    from addons.auth import AuthPlugin
    from addons.capture import CapturePlugin
    from addons.cors import CorsPlugin
    from addons.fault import FaultPlugin
    from addons.metrics import MetricsPlugin
    from addons.proxy import ProxyPlugin
    from addons.rate_limit import RateLimitPlugin
    from addons.transform import TransformPlugin

    return [
        ProxyPlugin,
        TransformPlugin,
        AuthPlugin,
        CorsPlugin,
        RateLimitPlugin,
        FaultPlugin,
        MetricsPlugin,
        CapturePlugin,
    ]


def installed_registry() -> PluginRegistry:
    """Every plugin a blueprint may configure here: the built-in ones and the installed ones
    (`backworks.plugins` entry points), as `backworks.py` registers them."""
    return PluginRegistry.discover(builtin_plugins())
