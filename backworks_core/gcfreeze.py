"""Keep the garbage collector's full collections short (`backworks_gc_freeze`).

A full collection walks every container object in the process. Once mitmproxy, Backworks and
a blueprint are loaded, that is hundreds of thousands of objects that live as long as the
process, and every full collection stopped all requests in flight for tens of milliseconds:
p99 latency of a proxied request was ~110 ms against ~40 ms with those objects frozen, at the
same p50 (docs/performance.md). `gc.freeze()` moves the objects alive at that moment into a
permanent generation that collections skip; objects made later are collected as usual.

A blueprint reload leaves the previous version behind, and frozen objects are never freed: the
freezer unfreezes at once, so the old version can be collected once the requests still using
it finish, and freezes again `settle` seconds later, when those requests are surely done.
"""

from __future__ import annotations

import asyncio
import gc
import logging

logger = logging.getLogger(__name__)

SETTLE_SECONDS = 60.0  # longer than a request takes (the proxy's default timeout is 30 s)


class Freezer:
    def __init__(self, settle: float = SETTLE_SECONDS) -> None:
        self.settle = settle
        self.active = False
        self._refreeze: asyncio.TimerHandle | None = None

    def freeze(self) -> None:
        """Collect what is garbage now, then freeze everything still alive."""
        self._cancel()
        gc.collect()
        gc.freeze()
        self.active = True
        logger.debug("backworks: %d long-lived objects frozen out of garbage collection", gc.get_freeze_count())

    def reloaded(self) -> None:
        """A new blueprint went live: let the old one be collected, freeze again once it is gone."""
        if not self.active:
            return
        gc.unfreeze()
        self._cancel()
        self._refreeze = asyncio.get_running_loop().call_later(self.settle, self.freeze)

    def stop(self) -> None:
        """Back to Python's defaults: nothing frozen, nothing scheduled."""
        self._cancel()
        if self.active:
            gc.unfreeze()
            self.active = False

    def _cancel(self) -> None:
        if self._refreeze is not None:
            self._refreeze.cancel()
            self._refreeze = None
