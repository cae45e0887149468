"""The script mitmproxy loads: `mitmdump -s backworks.py --set blueprint=FILE`.

It registers the core addon and one addon per plugin (built-in ones and those installed under
the `backworks.plugins` entry-point group). mitmproxy re-executes this file when it changes,
but not the modules it imports; every addon therefore keeps its state on its own instance.
"""

from __future__ import annotations

from addons import builtin_plugins
from addons.admin import AdminListener
from addons.core import Backworks
from addons.dispatch import CachedDispatch
from addons.dashboard import Dashboard
from addons.exposure import TargetGuard
from addons.header_timeout import HeaderTimeout
from addons.offline import OfflineTunnels
from addons.reuse_port import ReusePort
from addons.shown_target import ReplayedRequest, ShownTarget
from addons.upstream_connect import UpstreamConnectGuard
from backworks_core.plugins import PluginRegistry

registry = PluginRegistry.discover(builtin_plugins())
plugins = [plugin() for plugin in registry.plugins.values()]
core = Backworks(registry, plugins)
dashboard = Dashboard(core)
admin = AdminListener(core)  # serves the status page and metrics on 127.0.0.1:9901 (server.admin)
target_guard = TargetGuard(core)  # regular mode: no pass-through, tunnel or raw relay to a pool target
# regular mode: a CONNECT to a host the blueprint serves opens no upstream connection (before target_guard)
offline_tunnels = OfflineTunnels()
core.extensions += [dashboard, admin, offline_tunnels, target_guard]

# First: its requestheaders stops the header timer before any addon's own (async) work on the head.
header_timeout = HeaderTimeout()

# mitmproxy's own upstream connections (passthrough, WebSocket): failures named, not described.
upstream_connect = UpstreamConnectGuard(core)

# First: option backworks_reuse_port (backworks run --workers N) before mitmproxy binds its listeners.
reuse_port = ReusePort()

# The flow names the target that answered (console, mitmweb): a replay gets the URL it came with
# back before the core (replayed_request), and the URL is changed after every other addon's
# response hook (shown_target), so that they all see the request as it came.
replayed_request = ReplayedRequest()
shown_target = ShownTarget()

# mitmproxy's events dispatched from a table of the addons that handle each (backworks_cached_dispatch).
cached_dispatch = CachedDispatch()

addons = [cached_dispatch, reuse_port, header_timeout, replayed_request, core, dashboard, admin, offline_tunnels, target_guard, *plugins, upstream_connect, shown_target]
