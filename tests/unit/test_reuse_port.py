"""addons/reuse_port.py: the checks, and the wrap that makes mitmproxy's listeners share a port."""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest
from mitmproxy import exceptions
from mitmproxy.proxy import mode_servers
from mitmproxy.test import taddons

from addons import reuse_port
from addons.reuse_port import OPTION, ReusePort, mode_problems, platform_problem, unshared_listeners

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads connections on Linux only")


@pytest.fixture(autouse=True)
def _unwrapped():
    reuse_port.uninstall()
    yield
    reuse_port.uninstall()


def test_platform_problem_refuses_what_does_not_spread() -> None:
    assert platform_problem("linux", True) is None
    assert "only on Linux" in (platform_problem("darwin", True) or "")
    assert "no socket.SO_REUSEPORT" in (platform_problem("linux", False) or "")


def test_udp_modes_are_refused() -> None:
    assert mode_problems(["reverse:http://127.0.0.1:9", "regular", "socks5"]) == []
    problems = mode_problems(["reverse:http://127.0.0.1:9", "dns"])
    assert len(problems) == 1 and "'dns'" in problems[0]


def test_uninstall_restores_both_functions() -> None:
    listen, start_server = mode_servers.AsyncioServerInstance.listen, asyncio.start_server
    reuse_port.install()
    reuse_port.install()  # idempotent
    assert reuse_port.installed()
    assert asyncio.start_server is not start_server
    reuse_port.uninstall()
    assert mode_servers.AsyncioServerInstance.listen is listen and asyncio.start_server is start_server


class _Instance:
    """What AsyncioServerInstance.listen does: asyncio.start_server on host and port."""

    async def listen(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(lambda r, w: None, host, port)


@linux_only
async def test_only_proxy_listeners_get_so_reuseport(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mode_servers.AsyncioServerInstance, "listen", _Instance.listen)
    reuse_port.install()
    wrapped_listen = mode_servers.AsyncioServerInstance.listen
    first = await wrapped_listen(_Instance(), "127.0.0.1", 0)
    port = first.sockets[0].getsockname()[1]
    second = await wrapped_listen(_Instance(), "127.0.0.1", port)  # a second process would do the same
    other = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # not a proxy listener
    try:
        assert first.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert second.sockets[0].getsockname()[1] == port
        assert not other.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    finally:
        for server in (first, second, other):
            server.close()


@linux_only
async def test_unshared_listeners_lists_an_exclusive_bind() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)

    class Instance:
        _servers = [server]

    try:
        port = server.sockets[0].getsockname()[1]
        assert unshared_listeners([Instance()]) == [f"127.0.0.1:{port}"]
        assert unshared_listeners(None) == []
    finally:
        server.close()


@linux_only
def test_the_option_installs_the_wrap_and_refuses_udp_modes() -> None:
    addon = ReusePort()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **{OPTION: True})
        assert reuse_port.installed()
        with pytest.raises(exceptions.OptionsError, match="UDP"):
            tctx.configure(addon, mode=["dns"])


def test_the_option_is_refused_where_the_platform_cannot_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reuse_port, "platform_problem", lambda: "backworks_reuse_port: not here")
    addon = ReusePort()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="not here"):
            tctx.configure(addon, **{OPTION: True})
