"""The script mitmproxy loads: `mitmdump -s backworks.py --set blueprint=FILE`.

It registers the core addon and one addon per plugin (built-in ones and those installed under
the `backworks.plugins` entry-point group). mitmproxy re-executes this file when it changes,
but not the modules it imports; every addon therefore keeps its state on its own instance.
"""

from __future__ import annotations

from addons import builtin_plugins
from addons.core import Backworks
from addons.dashboard import Dashboard
from backworks_core.plugins import PluginRegistry

registry = PluginRegistry.discover(builtin_plugins())
plugins = [plugin() for plugin in registry.plugins.values()]
core = Backworks(registry, plugins)
dashboard = Dashboard(core)
core.extensions.append(dashboard)

addons = [core, dashboard, *plugins]
