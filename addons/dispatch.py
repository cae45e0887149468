"""mitmproxy's event dispatch from a table: one lookup per event instead of a walk of every addon.

mitmproxy's `AddonManager.trigger_event` sends each event to every top-level addon: for each it
enters a `safecall` context, starts an `invoke_addon` coroutine and walks the addon's children
with a `getattr` per addon, whether or not any of them handles the event. A request is about nine
events (four lifecycle hooks, each followed by `update`, and the connection's), and mitmdump has
about 40 addons before a script adds its own, so that walk is about half of bare mitmdump's CPU
per proxied request on this project's machine (docs/performance.md, "Where the time goes").

`CachedDispatch` (option `backworks_cached_dispatch`, on by default) replaces the walk with a
table, built per event name on first use: for each top-level addon, in chain order, those of it
and its children (in mitmproxy's own traversal order) that have a hook for the event. Dispatch
then visits exactly those, and looks each hook up when it calls it, as mitmproxy does (a hook
rebound or a class swapped later is honoured). Everything else is mitmproxy's: the same
`safecall` per top-level addon (an exception is logged and ends that addon's hooks for the
event, as before; `AddonHalt` ends the event; `OptionsError` propagates), awaitables awaited,
module attributes named like a hook skipped, a non-callable one reported with mitmproxy's error.

The table is thrown away whenever the addon tree can have changed: `register` and `remove` (which
scripts, the script loader and addons that manage addons call), and any change of the chain list
(`add`, `remove`, `clear`). mitmproxy's `running` and `done` go through its own dispatch. An addon
that changes its `addons` attribute or gains a hook it did not have without calling `register`
is not seen until the next change; mitmproxy's addon API asks for `register` there.

The table is installed on the one AddonManager instance (its class is untouched) for the mitmproxy
versions this project supports (11 and 12, whose AddonManager is the same), and removed when the
option is turned off or the addon unloads (a script reload installs the new instance's).
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mitmproxy import addonmanager, ctx, exceptions, hooks
from mitmproxy.addonmanager import Loader, safecall, traverse
from mitmproxy.version import VERSION

logger = logging.getLogger(__name__)

OPTION = "backworks_cached_dispatch"
SUPPORTED_MAJORS = frozenset({11, 12})
UNCACHED_EVENTS = frozenset({"running", "done"})  # the master's own, once each: mitmproxy's dispatch


@dataclass(frozen=True, slots=True)
class Handlers:
    """The addons of one top-level addon (itself or its children) that have a hook for one event."""

    addon: Any
    members: tuple[Any, ...]


def has_hook(addon: Any, name: str) -> bool:
    """mitmproxy's `_iter_hooks` rule: a truthy attribute that is not a module (a non-callable one
    is kept, so that dispatch reports it as mitmproxy does)."""
    func = getattr(addon, name, None)
    return bool(func) and not isinstance(func, types.ModuleType)


def handlers_for(chain: Sequence[Any], name: str) -> tuple[Handlers, ...]:
    """The table row for event `name`: top-level addons with a hook, with their members in call order."""
    rows = []
    for top in chain:
        members = tuple(addon for addon in traverse([top]) if has_hook(addon, name))
        if members:
            rows.append(Handlers(top, members))
    return tuple(rows)


def version_supported(version: str = VERSION) -> bool:
    """Whether this mitmproxy's AddonManager is one the table was checked against."""
    try:
        return int(version.split(".", 1)[0]) in SUPPORTED_MAJORS
    except ValueError:
        return False


class EventTable:
    """Installed on one AddonManager as its `trigger_event`, `register` and `remove`."""

    def __init__(self, manager: addonmanager.AddonManager) -> None:
        self.manager = manager
        self.rows: dict[str, tuple[Handlers, ...]] = {}
        self.chain: list[Any] | None = None
        self.chain_length = -1

    def install(self) -> None:
        self.manager.trigger_event = self.trigger_event  # type: ignore[method-assign]
        self.manager.register = self.register  # type: ignore[method-assign]
        self.manager.remove = self.remove  # type: ignore[method-assign]

    def uninstall(self) -> None:
        """Back to mitmproxy's own methods, unless another table has replaced this one since."""
        if self.installed():
            for name in ("trigger_event", "register", "remove"):
                self.manager.__dict__.pop(name, None)

    def installed(self) -> bool:
        current = self.manager.__dict__.get("trigger_event")
        return getattr(current, "__self__", None) is self

    def forget(self) -> None:
        self.rows.clear()

    # No event is dispatched inside these (their hooks are mitmproxy's sync calls): forgetting
    # once, after, is enough, also when they fail half-way.
    def register(self, addon: Any) -> Any:
        try:
            return addonmanager.AddonManager.register(self.manager, addon)
        finally:
            self.forget()

    def remove(self, addon: Any) -> None:
        try:
            addonmanager.AddonManager.remove(self.manager, addon)
        finally:
            self.forget()

    def row(self, name: str) -> tuple[Handlers, ...]:
        chain = self.manager.chain
        if chain is not self.chain or len(chain) != self.chain_length:
            self.rows.clear()
            self.chain, self.chain_length = chain, len(chain)
        row = self.rows.get(name)
        if row is None:
            row = self.rows[name] = handlers_for(chain, name)
        return row

    async def trigger_event(self, event: hooks.Hook) -> None:
        """mitmproxy's trigger_event, calling only the addons that handle the event."""
        name = event.name
        if name in UNCACHED_EVENTS:
            await addonmanager.AddonManager.trigger_event(self.manager, event)
            self.forget()
            return
        row = self.row(name)
        if not row:
            return
        args = event.args()
        for handlers in row:
            try:
                with safecall():
                    for member in handlers.members:
                        # looked up per call, as mitmproxy does: a rebound hook or a changed class counts
                        func = getattr(member, name, None)
                        if not func or isinstance(func, types.ModuleType):
                            continue
                        if not callable(func):
                            raise exceptions.AddonManagerError(f"Addon handler {name} ({member}) not callable")
                        result = func(*args)
                        if result is not None and inspect.isawaitable(result):
                            await result
            except exceptions.AddonHalt:
                return


class CachedDispatch:
    """Option `backworks_cached_dispatch`: mitmproxy's events dispatched from an EventTable."""

    def __init__(self) -> None:
        self.table: EventTable | None = None

    def load(self, loader: Loader) -> None:
        loader.add_option(
            OPTION,
            bool,
            True,
            "Dispatch mitmproxy's events from a table of the addons that handle each (rebuilt "
            "whenever an addon is registered or removed) instead of walking every addon for every "
            "event: the same order, errors and halts, about half of mitmdump's CPU per request. "
            "Off: mitmproxy's own dispatch.",
        )

    def configure(self, updated: set[str]) -> None:
        if self.table is not None:
            self.table.forget()  # an options change may reorder scripts (the script loader's configure)
        if OPTION not in updated:
            return
        if ctx.options.backworks_cached_dispatch:
            self.enable(ctx.master.addons)
        else:
            self.disable()

    def enable(self, manager: addonmanager.AddonManager) -> None:
        if self.table is not None and self.table.installed():
            return
        if not version_supported():
            logger.info(f"{OPTION}: mitmproxy {VERSION} is not one this table was checked against (11, 12); mitmproxy's own dispatch stays")
            return
        self.table = EventTable(manager)
        self.table.install()

    def disable(self) -> None:
        if self.table is not None:
            self.table.uninstall()
            self.table = None

    def done(self) -> None:
        self.disable()
