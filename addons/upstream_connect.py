"""What a client is told when mitmproxy's own upstream connection fails, on the gateway's flows.

Flows Backworks does not answer itself go upstream through mitmproxy: reverse-mode passthrough
of unmatched requests, WebSocket upgrades (a proxy endpoint's `Forward`), mock passthrough. When
mitmproxy cannot connect, it answers 502 with the OS's text: `Connect call failed ('127.0.0.1',
23199)`, `[Errno -2] Name or service not known` — addresses and ports the client has no business
knowing. mitmproxy (11 and 12) reads that text into a local variable before any hook runs
(`proxy/server.py` `open_connection`: `err = str(e)`, then `server_connect_error`, then
`OpenConnectionCompleted(command, err)`), so neither `server_connect_error` nor the `error` hook
can change it, and no hook can write the client's answer.

The one supported lever is `server_connect`: "setting `data.server.error` kills the connection",
and the 502 then says `Connection killed: <that error>`. So, for the gateway's flows, this addon
opens the connection itself first (bounded by CONNECT_CHECK_TIMEOUT) and, when that fails, sets
the error to `upstream connect failed (target NAME)`: mitmproxy never tries, and its 502 page
carries only that. The detail (address, OS text) is logged under the request id by the `error`
hook. The check costs one extra TCP connect per upstream connection mitmproxy opens (keep-alive
connections are reused); a target that dies between the check and mitmproxy's own connect (a
window of a round trip) still gets mitmproxy's text.

Which flows: every upstream connection of a reverse-mode listener (the gateway's clients), and
in regular mode a connection to a pool target (only a blueprint `Forward` goes there). Regular
mode passing a request through to any other host is a debugging proxy: mitmproxy's own messages
stay, as they are what its user needs to see.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mitmproxy import http
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.mode_specs import ReverseMode

from backworks_core.context import request_id_for

if TYPE_CHECKING:
    from addons.core import Backworks

logger = logging.getLogger(__name__)

CONNECT_CHECK_TIMEOUT = 15.0
"""Seconds the check waits for a connection (mitmproxy itself waits for the OS, minutes)."""

PASSTHROUGH_NAME = "passthrough upstream"
"""How an answer names an upstream that is no pool target (reverse mode's own)."""

_KEPT_DETAILS = 256  # failures waiting for their flow's `error` hook, at most (oldest dropped)

Address = tuple[str, int]
Connector = Callable[[Address, Any, float], Awaitable[tuple[str, str] | None]]


def target_names(pools: Iterable[Any]) -> dict[Address, str]:
    """(host, port) of every live pool target → how an error answer names it."""
    names: dict[Address, str] = {}
    for pool in pools:
        for target in pool.targets:
            parts = urlsplit(target.origin)
            if parts.hostname is None:
                continue
            port = parts.port or (443 if parts.scheme == "https" else 80)
            names.setdefault((parts.hostname.lower(), port), pool.public_name(target.name))
    return names


def upstream_name(address: Address, reverse_mode: bool, targets: Mapping[Address, str], skipped: Iterable[Address] = ()) -> str | None:
    """How an error answer names the upstream at `address`, or None when its connection is not
    the gateway's to check (regular-mode passthrough to another host; the in-process relay)."""
    key = (str(address[0]).lower().strip("[]"), int(address[1]))
    if key in set(skipped):
        return None
    name = targets.get(key)
    if name is not None:
        return name
    return PASSTHROUGH_NAME if reverse_mode else None


async def try_connect(address: Address, local_addr: Any, timeout: float) -> tuple[str, str] | None:
    """None when a TCP connection to `address` opens within `timeout`; else (what the client may
    be told, the detail for the log)."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(address[0], address[1], local_addr=local_addr)
    except TimeoutError:
        return "connect timeout", f"no connection within {timeout:g}s"
    except OSError as exc:
        return "connect failed", str(exc) or type(exc).__name__
    writer.close()
    return None


class UpstreamConnectGuard:
    """mitmproxy addon: the `server_connect` check above, and the log line under the request id."""

    def __init__(self, core: Backworks, *, timeout: float = CONNECT_CHECK_TIMEOUT, connect: Connector = try_connect) -> None:
        self.core = core
        self.timeout = timeout
        self.connect = connect
        self._details: OrderedDict[str, tuple[str, Address, str]] = OrderedDict()

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        if server.error or server.via is not None or server.transport_protocol != "tcp" or not server.address:
            return  # killed already (mitmproxy's self-connect check), or an upstream proxy's business
        relay = self.core.relay
        relay_port: int | None = getattr(relay, "port", None)
        skipped = [(relay.host, relay_port)] if relay_port else []
        name = upstream_name(server.address, isinstance(data.client.proxy_mode, ReverseMode), target_names(self.core.live_pools()), skipped)
        if name is None:
            return
        failure = await self.connect(server.address, server.sockname, self.timeout)
        if failure is None:
            return
        said, detail = failure
        server.error = f"upstream {said} ({name})"  # mitmproxy answers 502 "Connection killed: <this>"
        self._details[data.client.id] = (name, server.address, detail)
        while len(self._details) > _KEPT_DETAILS:
            self._details.popitem(last=False)

    def error(self, flow: http.HTTPFlow) -> None:
        """The detail the client was not told, logged under the flow's request id."""
        kept = self._details.pop(flow.client_conn.id, None)
        if kept is not None:
            name, address, detail = kept
            logger.warning("[%s] upstream connect to %s (%s:%d) failed: %s", request_id_for(flow), name, address[0], address[1], detail)
