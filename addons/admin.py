"""The admin listener: the status page, its JSON API and the metrics, on 127.0.0.1:9901.

An extension of the core addon, as the status page is: each blueprint that goes live brings the
pages to serve (Gateway.admin_pages) and the address (`server.admin`, or the deprecated
`dashboard.port` / `plugins.metrics.config.port`); the option `backworks_admin` overrides the
address ("HOST:PORT") or turns the listener off ("off") without editing the blueprint, so that
tests and several processes on one host can each choose a free port.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from backworks_core.admin import OFF, OPTION, AdminAddress, blueprint_admin_address, parse_admin_option
from backworks_core.gateway import Gateway
from backworks_core.loader import LoadedBlueprint
from backworks_core.pages import InternalEndpoint, Page, SidePort

if TYPE_CHECKING:
    from addons.core import Backworks

logger = logging.getLogger(__name__)

TAKEN_HINT = f"choose another port with server.admin.port in the blueprint or --set {OPTION}=127.0.0.1:PORT (0: any free port), or --set {OPTION}=off; the API is served all the same"


FAVICON = "/favicon.ico"


def no_icon(_headers: object) -> Page:
    """A browser asks every site for /favicon.ico: an empty answer, not a 404 in its console."""
    return Page(204, "image/x-icon", b"", {"Cache-Control": "max-age=86400"})


def admin_address(option: str, gateway: Gateway | None) -> AdminAddress | None:
    """Where to listen, or None: no blueprint, nothing to serve, turned off (blueprint or option)."""
    if gateway is None or not gateway.admin_pages:
        return None
    chosen = parse_admin_option(option)
    if chosen == OFF:
        return None
    if isinstance(chosen, AdminAddress):
        return chosen
    return blueprint_admin_address(gateway.blueprint)


class AdminListener:
    """mitmproxy addon beside the core: option `backworks_admin`, and the listener that follows reloads."""

    def __init__(self, core: Backworks) -> None:
        self.core = core
        self.side_port = SidePort("admin listener", TAKEN_HINT)

    def load(self, loader: Loader) -> None:
        loader.add_option(
            OPTION,
            str,
            "",
            "Where the admin listener (status page, status API, metrics) listens: empty: the "
            "blueprint's server.admin (default 127.0.0.1:9901); HOST:PORT (port 0: any free port) "
            "overrides it; off: no admin listener.",
        )

    def configure(self, updated: set[str]) -> None:
        if OPTION in updated:
            try:
                parse_admin_option(getattr(ctx.options, OPTION))
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from None
            if self.core.gateway is not None:
                self.apply_gateway(self.core.gateway)

    # -- the core's extension points ------------------------------------------------------

    def internal_endpoints(self, blueprint: LoadedBlueprint) -> list[InternalEndpoint]:
        return []  # it serves the other pages; it has none of its own

    def apply_gateway(self, gateway: Gateway) -> None:
        try:
            address = admin_address(getattr(ctx.options, OPTION, ""), gateway)
        except ValueError:
            return  # configure() refuses the option
        routes = {FAVICON: no_icon, **{page.path: page.page for page in gateway.admin_pages}}
        if address is None:
            self.side_port.apply("", None, routes)
        else:
            self.side_port.apply(address.host, address.port, routes)

    async def done(self) -> None:
        await self.side_port.done()
