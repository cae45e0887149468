"""SO_REUSEPORT on the proxy's listen sockets: several mitmdump processes serve one HOST:PORT.

Processes that each bind a port with SO_REUSEPORT share it, and the Linux kernel spreads new
connections across them (a hash of the connection's addresses; a process that exits stops
receiving at once). That is how `backworks run FILE --workers N` serves one port with N processes.
Each process still accepts its own connections, so the client's address, TLS interception and
`ip`-keyed limits work as with one process (docs/scaling.md).

mitmproxy binds its proxy listeners with `asyncio.start_server(handler, host, port)` inside
`AsyncioServerInstance.listen` (mitmproxy 11 and 12) and takes neither a ready socket nor a
`reuse_port` option. `install()` wraps both: `listen` runs with a context variable set, and
`asyncio.start_server` adds `reuse_port=True` only to calls made inside it; the admin listener,
aiohttp servers or anything else that starts a server in the same process is unaffected, even
while a proxy listener is being set up concurrently.

The wrap must be in place before mitmproxy binds, and mitmproxy binds its listeners in a task
that races the loading of `-s` scripts (mitmproxy 12 usually binds first). So a worker is started
by this module's launcher, which installs the wrap and then runs mitmdump in the same process:

    python -m addons.reuse_port -s backworks.py --set blueprint=FILE --set backworks_reuse_port=true ...

(the same arguments as mitmdump; `backworks run --workers N` does this). The option
`backworks_reuse_port` (addon `ReusePort`, loaded first by backworks.py) says a shared port is
wanted: it refuses platforms and modes that cannot share one, installs the wrap for listeners
bound later, and reports a listener bound without SO_REUSEPORT (mitmdump started directly),
rather than serve from one process while the user believes there are N.

SO_REUSEPORT spreads connections only on Linux (macOS and the BSDs accept the option but send
every connection to one socket; Windows has none), and only for TCP: UDP modes (dns, quic,
wireguard, local, tun) are refused.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mitmproxy import addonmanager, ctx, exceptions
from mitmproxy.proxy import mode_servers, mode_specs

from backworks_core.worker_env import reuse_port_problem

logger = logging.getLogger(__name__)

OPTION = "backworks_reuse_port"

_in_proxy_listen: contextvars.ContextVar[bool] = contextvars.ContextVar("backworks_in_proxy_listen", default=False)


def platform_problem(platform: str = sys.platform, has_option: bool = hasattr(socket, "SO_REUSEPORT")) -> str | None:
    """Why this option cannot work here (not Linux, no SO_REUSEPORT); None when it can."""
    problem = reuse_port_problem(platform, has_option)
    return None if problem is None else f"{OPTION}: {problem}"


def mode_problems(specs: Sequence[str]) -> list[str]:
    """The proxy modes a shared port cannot serve: only TCP listeners are bound with SO_REUSEPORT."""
    problems = []
    for spec in specs:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy refuses it itself, with its own message
        if mode.transport_protocol != "tcp":
            problems.append(
                f"{OPTION}: mode {spec!r} listens on UDP, which is not shared across processes; "
                "serve it from one process (without this option)"
            )
    return problems


def _reuse_port_start_server(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def start_server(*args: Any, **kwargs: Any) -> Any:
        if _in_proxy_listen.get():
            kwargs.setdefault("reuse_port", True)
        return await original(*args, **kwargs)

    start_server.__backworks_original__ = original  # type: ignore[attr-defined]
    return start_server


def _marked_listen(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    async def listen(self: Any, host: str, port: int) -> Any:
        token = _in_proxy_listen.set(True)
        try:
            return await original(self, host, port)
        finally:
            _in_proxy_listen.reset(token)

    listen.__backworks_original__ = original  # type: ignore[attr-defined]
    return listen


def install() -> None:
    """Wrap mitmproxy's listen and asyncio.start_server (idempotent)."""
    server_class = mode_servers.AsyncioServerInstance
    if not hasattr(server_class.listen, "__backworks_original__"):
        server_class.listen = _marked_listen(server_class.listen)  # type: ignore[method-assign]
    if not hasattr(asyncio.start_server, "__backworks_original__"):
        asyncio.start_server = _reuse_port_start_server(asyncio.start_server)


def uninstall() -> None:
    server_class = mode_servers.AsyncioServerInstance
    original = getattr(server_class.listen, "__backworks_original__", None)
    if original is not None:
        server_class.listen = original  # type: ignore[method-assign]
    original = getattr(asyncio.start_server, "__backworks_original__", None)
    if original is not None:
        asyncio.start_server = original


def installed() -> bool:
    return hasattr(asyncio.start_server, "__backworks_original__") and hasattr(mode_servers.AsyncioServerInstance.listen, "__backworks_original__")


def unshared_listeners(servers: Any) -> list[str]:
    """The proxy listeners (of the proxyserver addon's `servers`) bound without SO_REUSEPORT."""
    found = []
    for instance in servers or []:
        for server in getattr(instance, "_servers", None) or []:
            for sock in getattr(server, "sockets", None) or []:
                try:
                    shared = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
                    name = sock.getsockname()
                except OSError:
                    continue
                if not shared:
                    found.append(f"{name[0]}:{name[1]}")
    return found


UNSHARED_HINT = (
    "the proxy listener {addresses} was bound without SO_REUSEPORT before the scripts loaded, so no "
    "other process can share its port; start each process with `python -m addons.reuse_port` "
    "(mitmdump's arguments) or use `backworks run FILE --workers N` (docs/scaling.md)"
)


def main(argv: list[str] | None = None) -> int:
    """mitmdump, with SO_REUSEPORT on its proxy listeners from the start."""
    problem = platform_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    install()
    from mitmproxy.tools.main import mitmdump

    sys.argv[0] = "mitmdump"
    return int(mitmdump(sys.argv[1:] if argv is None else argv) or 0)


class ReusePort:
    """mitmproxy addon: option `backworks_reuse_port`, the checks, and the wrap for later binds."""

    def load(self, loader: addonmanager.Loader) -> None:
        loader.add_option(
            OPTION,
            bool,
            False,
            "Bind the proxy's listen sockets with SO_REUSEPORT (Linux), so that several mitmdump "
            "processes started with it serve one HOST:PORT and the kernel spreads connections "
            "across them (what `backworks run --workers N` does).",
        )

    def configure(self, updated: set[str]) -> None:
        if OPTION not in updated and "mode" not in updated:
            return
        if not getattr(ctx.options, OPTION):
            return  # the launcher's wrap (if any) stays: the sockets it bound are shared already
        problem = platform_problem()
        if problem is not None:
            raise exceptions.OptionsError(problem)
        problems = mode_problems(ctx.options.mode)
        if problems:
            raise exceptions.OptionsError("; ".join(problems))
        if not installed():
            install()
        self.check_listeners()
        try:  # a bind under way while the scripts load is only listed once it completes: look again
            asyncio.get_running_loop().call_later(2.0, self.check_listeners, False)
        except RuntimeError:
            pass  # no loop: nothing is bound yet

    def check_listeners(self, refuse: bool = True) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        unshared = unshared_listeners(getattr(proxyserver, "servers", None))
        if not unshared:
            return
        message = f"{OPTION}: " + UNSHARED_HINT.format(addresses=", ".join(unshared))
        if refuse:
            raise exceptions.OptionsError(message)
        logger.error(message)

    def done(self) -> None:
        uninstall()


if __name__ == "__main__":
    raise SystemExit(main())
