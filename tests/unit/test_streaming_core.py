"""Large bodies in the core addon: which requests stream, the buffer limit option, and the
relayed flow's head put back in `responseheaders`."""

from __future__ import annotations

from backworks_core.flowstate import flow_state, peek_state

import aiohttp
import pytest
from mitmproxy import exceptions, http
from mitmproxy.addons import proxyserver
from mitmproxy.test import taddons, tutils

from addons import builtin_plugins
from addons.core import Backworks, body_too_large, buffer_limit
from backworks_core.context import StreamedResponse, json_response
from backworks_core.plugins import PluginRegistry
from backworks_core.relay import RelayAnswer, Relayed, StreamRelay, point_at_relay, relay_answer, restore_relayed

from .conftest import body_json, make_flow

BLUEPRINT = """
name: streaming-core
endpoints:
  - path: /items
    method: POST
    handler: static
    config: {static: {status: 201, body: {created: true}}}
"""


@pytest.fixture
def addon() -> Backworks:
    registry = PluginRegistry(builtin_plugins())
    return Backworks(registry, [plugin() for plugin in registry.plugins.values()])


def fields(items: list[tuple[str, str]]) -> http.Headers:
    return http.Headers([(k.encode(), v.encode()) for k, v in items])


def request_with(headers: list[tuple[str, str]], method: str = "POST") -> http.Request:
    return tutils.treq(method=method.encode(), headers=fields(headers), content=b"")


# -- body_too_large -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, expected",
    [
        ([("content-length", "1025")], True),
        ([("content-length", "1024")], False),  # exactly the limit is still held
        ([("content-length", "1023")], False),
        ([("content-length", "0")], False),
        ([], False),  # no body at all
        ([("transfer-encoding", "chunked")], True),  # unknown length
        ([("transfer-encoding", "gzip,chunked")], True),
        ([("transfer-encoding", "chunked"), ("content-length", "10")], True),  # chunked overrides the length
        ([("content-length", "lots")], False),  # mitmproxy answers a malformed length itself
        ([("content-length", "-5")], False),
        ([("content-length", "10"), ("content-length", "20")], False),
    ],
)
def test_body_too_large(headers: list[tuple[str, str]], expected: bool) -> None:
    assert body_too_large(request_with(headers), 1024) is expected


def test_body_too_large_for_a_get_without_a_body() -> None:
    assert body_too_large(request_with([], method="GET"), 0) is False
    assert body_too_large(request_with([("content-length", "1")], method="GET"), 0) is True


# -- buffer_limit ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, stream_large_bodies, expected",
    [
        ("1m", None, 1048576),
        ("512k", None, 524288),
        ("4096", None, 4096),
        ("1g", None, 1024**3),
        ("1m", "", 1048576),  # mitmproxy's default: not set
        ("1m", "512k", 524288),  # stream_large_bodies lower: it wins
        ("512k", "1m", 524288),  # higher: it does not
        ("64k", "64k", 65536),
    ],
)
def test_buffer_limit(option: str, stream_large_bodies: str | None, expected: int) -> None:
    assert buffer_limit(option, stream_large_bodies) == expected


@pytest.mark.parametrize("option", ["abc", "1.5m", "m", "12q"])
def test_buffer_limit_rejects_what_is_not_a_size(option: str) -> None:
    with pytest.raises(exceptions.OptionsError) as info:
        buffer_limit(option, None)
    assert "backworks_buffer_limit" in str(info.value)
    assert repr(option) in str(info.value)


async def test_the_option_sets_the_relay_limit(addon: Backworks) -> None:
    # Proxyserver declares stream_large_bodies, which the core addon reads too (mitmdump always has it).
    with taddons.context(proxyserver.Proxyserver(), addon) as tctx:
        assert tctx.options.backworks_buffer_limit == "1m"
        assert addon.relay.buffer_limit == 1048576
        tctx.configure(addon, backworks_buffer_limit="64k")
        assert addon.relay.buffer_limit == 65536
        tctx.configure(addon, stream_large_bodies="16k")
        assert addon.relay.buffer_limit == 16384
        tctx.configure(addon, stream_large_bodies="10m")
        assert addon.relay.buffer_limit == 65536


async def test_a_bad_buffer_limit_is_an_options_error(addon: Backworks) -> None:
    with taddons.context(proxyserver.Proxyserver(), addon) as tctx:
        tctx.configure(addon, backworks_buffer_limit="256k")
        with pytest.raises(exceptions.OptionsError) as info:
            tctx.configure(addon, backworks_buffer_limit="bad")
        assert "backworks_buffer_limit" in str(info.value)
        assert "'bad'" in str(info.value)
        assert tctx.options.backworks_buffer_limit == "256k"  # rolled back
        assert addon.relay.buffer_limit == 262144


# -- restore_relayed ------------------------------------------------------------------------


@pytest.fixture
async def relay():  # type: ignore[no-untyped-def]
    relay = StreamRelay()
    await relay.start()
    yield relay
    await relay.stop()


async def no_job(request) -> RelayAnswer:  # type: ignore[no-untyped-def]
    raise AssertionError("the relay is never called in these tests")


def relay_reply(*, chunked: bool) -> http.Response:
    """The head mitmproxy gets from the relay (aiohttp's own), before `responseheaders`."""
    framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", "5")
    return http.Response.make(200, b"", fields([("Server", "Python/3 aiohttp"), ("Date", "Thu, 01 Jan 2026 00:00:00 GMT"), framing]))


def relayed_flow(relay: StreamRelay, method: str = "GET", http_version: str = "HTTP/1.1"):  # type: ignore[no-untyped-def]
    flow = make_flow(method, "/files/big?x=1", headers={"Authorization": "Bearer t", "Accept": "*/*"})
    flow.request.http_version = http_version
    point_at_relay(flow, relay, no_job)
    assert flow.request.url.startswith(f"http://127.0.0.1:{relay.port}/")
    flow.request.headers["Host"] = f"127.0.0.1:{relay.port}"  # as mitmproxy would send it
    return flow


def streamed(head_headers: dict[str, str], status: int = 200) -> StreamedResponse:
    async def body():  # type: ignore[no-untyped-def]
        yield b"never read here"

    # as ProxyHandler.build_response makes it: a head without content
    head = http.Response(
        http_version=b"HTTP/1.1",
        status_code=status,
        reason=http.status_codes.RESPONSES[status].encode(),
        headers=fields(list(head_headers.items())),
        content=None,
        trailers=None,
        timestamp_start=0.0,
        timestamp_end=None,
    )
    return StreamedResponse(head, body(), lambda: None)


async def test_a_held_answer_gets_its_own_head_and_the_client_request_back(relay: StreamRelay) -> None:
    flow = relayed_flow(relay)
    answer = json_response(201, {"ok": True}, {"X-Answer": "mine"})
    relayed = relay_answer(flow, answer)
    assert relayed.status == 201 and relayed.body == answer.raw_content
    flow.response = relay_reply(chunked=False)
    restore_relayed(flow)
    assert flow.request.url == "http://api.test/files/big?x=1"
    assert flow.request.headers["Authorization"] == "Bearer t"
    assert "Host" not in flow.request.headers  # the client sent none; the relay's is gone
    assert flow.response.status_code == 201
    assert flow.response.reason == "Created"
    assert flow.response.headers["X-Answer"] == "mine"
    assert "Server" not in flow.response.headers  # aiohttp's own headers never show
    assert "Date" not in flow.response.headers
    assert flow.response.headers["content-length"] == str(len(answer.raw_content))
    assert flow.response.stream is False
    assert "transfer-encoding" not in flow.response.headers
    assert peek_state(flow).relayed is not None  # the marker stays for the request hook


async def test_a_streamed_answer_without_a_length_is_chunked_for_http1(relay: StreamRelay) -> None:
    flow = relayed_flow(relay)
    answer = streamed({"X-Size": "big"}, status=206)
    relay_answer(flow, answer)
    flow.response = relay_reply(chunked=True)
    restore_relayed(flow)
    assert flow.response.status_code == 206
    assert flow.response.stream is True
    assert flow.response.headers["transfer-encoding"] == "chunked"
    assert flow.response.headers["X-Size"] == "big"
    assert "Server" not in flow.response.headers
    assert flow.request.url == "http://api.test/files/big?x=1"
    assert "transfer-encoding" not in answer.head.headers  # the handler's head is copied, not changed


async def test_a_streamed_answer_with_a_length_keeps_it(relay: StreamRelay) -> None:
    flow = relayed_flow(relay)
    relay_answer(flow, streamed({"Content-Length": "209715200"}))
    flow.response = relay_reply(chunked=True)
    restore_relayed(flow)
    assert flow.response.stream is True
    assert flow.response.headers["content-length"] == "209715200"
    assert "transfer-encoding" not in flow.response.headers


async def test_a_streamed_answer_to_head_is_not_chunked(relay: StreamRelay) -> None:
    flow = relayed_flow(relay, method="HEAD")
    relay_answer(flow, streamed({"X-Size": "big"}))
    flow.response = relay_reply(chunked=True)
    restore_relayed(flow)
    assert flow.response.stream is True
    assert "transfer-encoding" not in flow.response.headers
    assert flow.request.method == "HEAD"


async def test_a_streamed_answer_to_http2_is_not_chunked(relay: StreamRelay) -> None:
    flow = relayed_flow(relay, http_version="HTTP/2.0")
    relay_answer(flow, streamed({"X-Size": "big"}))
    flow.response = relay_reply(chunked=True)
    restore_relayed(flow)
    assert flow.response.stream is True
    assert "transfer-encoding" not in flow.response.headers


async def test_restore_is_done_once(relay: StreamRelay) -> None:
    flow = relayed_flow(relay)
    relay_answer(flow, streamed({"X-Size": "big"}))
    flow.response = relay_reply(chunked=True)
    restore_relayed(flow)
    assert flow_state(flow).relayed.restored is True
    flow.response.status_code = 299
    flow.response.headers["X-Later"] = "kept"
    del flow.response.headers["transfer-encoding"]
    flow.request.url = "http://elsewhere.test/changed"
    restore_relayed(flow)
    assert flow.response.status_code == 299
    assert flow.response.headers["X-Later"] == "kept"
    assert "transfer-encoding" not in flow.response.headers
    assert flow.request.url == "http://elsewhere.test/changed"


async def test_an_expired_token_keeps_the_relay_404(relay: StreamRelay) -> None:
    flow = relayed_flow(relay)  # no relay_answer: the job never ran
    flow.response = http.Response.make(404, b"unknown or expired relay token\n", {"Content-Type": "text/plain"})
    restore_relayed(flow)
    assert flow.response.status_code == 404
    assert flow.response.content == b"unknown or expired relay token\n"
    assert flow.response.stream is False
    assert flow.request.url == "http://api.test/files/big?x=1"  # the client's request is still restored


async def test_restore_leaves_other_flows_alone() -> None:
    plain = make_flow("GET", "/x")
    plain.response = http.Response.make(200, b"hi", {"X-A": "b"})
    restore_relayed(plain)
    assert plain.response.headers["X-A"] == "b" and plain.response.content == b"hi"
    assert plain.request.url == "http://api.test/x"

    pending = make_flow("GET", "/x")
    flow_state(pending).relayed = Relayed("http://api.test/original", pending.request.headers.copy(), http.Response.make(201))
    restore_relayed(pending)  # no response yet: nothing to do, and it is not marked done
    assert pending.request.url == "http://api.test/x"
    assert flow_state(pending).relayed.restored is False


# -- the hooks, with the real relay ---------------------------------------------------------


async def test_a_large_request_goes_through_the_relay_and_back(addon: Backworks, project) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(BLUEPRINT)
    try:
        with taddons.context(proxyserver.Proxyserver(), addon) as tctx:
            tctx.configure(addon, blueprint=str(path), backworks_buffer_limit="1k")
            small = make_flow("POST", "/items", headers={"Content-Length": "1024"}, mode="reverse:http://127.0.0.1:9")
            await addon.requestheaders(small)
            assert small.request.url == "http://api.test/items"  # held: answered in the request hook
            assert small.request.stream is False
            assert getattr(peek_state(small), "relayed", None) is None

            flow = make_flow("POST", "/items", headers={"Transfer-Encoding": "chunked"}, mode="reverse:http://127.0.0.1:9")
            await addon.requestheaders(flow)
            assert flow.response is None
            assert flow.request.stream is True
            assert peek_state(flow).relayed is not None
            relay_url = flow.request.url
            assert relay_url.startswith(f"http://127.0.0.1:{addon.relay.port}/")

            await addon.request(flow)  # the request hook leaves a relayed flow alone
            assert flow.response is None and flow.request.url == relay_url

            # What mitmproxy does next: stream the body to the relay and read its answer.
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                async with session.post(relay_url, data=b"x" * 5000) as reply:
                    body = await reply.read()
                    flow.response = http.Response.make(reply.status, body, fields(list(reply.headers.items())))
            assert addon.relay.pending == 0
            addon.responseheaders(flow)
            assert flow.request.url == "http://api.test/items"
            assert flow.response.status_code == 201
            assert body_json(flow.response) == {"created": True}
            assert "Server" not in flow.response.headers
            assert "backworks:" in flow.comment and "handler=static" in flow.comment
    finally:
        await addon.relay.stop()


async def test_a_large_request_that_passes_through_is_not_relayed(addon: Backworks, project) -> None:  # type: ignore[no-untyped-def]
    path = project.blueprint(BLUEPRINT)
    try:
        with taddons.context(proxyserver.Proxyserver(), addon) as tctx:
            tctx.configure(addon, blueprint=str(path), backworks_buffer_limit="1k")
            flow = make_flow("POST", "/elsewhere", headers={"Transfer-Encoding": "chunked"}, mode="regular", host="example.org")
            await addon.requestheaders(flow)
            assert flow.request.url == "http://example.org/elsewhere"
            assert getattr(peek_state(flow), "relayed", None) is None
            assert flow.response is None
            assert addon.relay.pending == 0
    finally:
        await addon.relay.stop()


def test_a_negative_buffer_limit_is_refused() -> None:
    with pytest.raises(exceptions.OptionsError):
        buffer_limit("-1", None)
