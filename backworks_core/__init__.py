"""Backworks: a declarative API gateway and mock server built as mitmproxy addons."""

__version__ = "0.1.0"
