"""A WebSocket upgrade on a proxy endpoint reaches the chosen target, and frames flow both ways."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

pytestmark = pytest.mark.integration


def echo_as(name: str):  # type: ignore[no-untyped-def]
    """A WebSocket echo that says which server answered and on which path."""

    async def echo(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                await socket.send_str(f"{name}:{request.path}:{message.data}")
        return socket

    return echo


async def talk(port: int, path: str, messages: list[str]) -> list[str]:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientWSTimeout(ws_close=5)) as socket:
            replies = []
            for message in messages:
                await socket.send_str(message)
                reply = await asyncio.wait_for(socket.receive(), 5)
                replies.append(reply.data)
            return replies


@pytest.mark.parametrize("mode", ["regular", "reverse"])
def test_websocket_echo_through_the_gateway(mode: str, tmp_path: Path, make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    servers = [make_upstream(name, routes={"/echo/chat": echo_as(name)}) for name in ("ws-a", "ws-b")]
    blueprint = tmp_path / "blueprint.yaml"
    blueprint.write_text(
        textwrap.dedent(
            f"""
            name: ws
            plugins:
              proxy: {{config: {{targets: [{{name: a, url: "{servers[0].url}"}}, {{name: b, url: "{servers[1].url}"}}]}}}}
            endpoints:
              - path: /ws/{{room}}
                handler: proxy
                config: {{proxy: {{path: "/echo/{{room}}"}}}}
            """
        )
    )
    extra = ["--mode", f"reverse:{servers[0].url}"] if mode == "reverse" else []
    proxy = start_proxy(blueprint, *extra)
    first = asyncio.run(talk(proxy.port, "/ws/chat", ["hello", "again"]))
    second = asyncio.run(talk(proxy.port, "/ws/chat", ["hi"]))
    assert first == ["ws-a:/echo/chat:hello", "ws-a:/echo/chat:again"]
    assert second == ["ws-b:/echo/chat:hi"]  # the next connection goes to the next target
