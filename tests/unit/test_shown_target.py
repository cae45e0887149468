"""addons.shown_target: the flow names the target that answered; a replay gets its URL back."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import pytest
from mitmproxy import ctx, http
from mitmproxy.addons.dumper import Dumper
from mitmproxy.test import taddons, tflow, tutils

from addons.shown_target import SHOWN, NamingDumper, ReplayedRequest, ShownTarget, answered_by, parse_origin


def reverse_flow(host_header: str = "gateway.example:8080") -> http.HTTPFlow:
    """As mitmproxy's reverse mode hands it over: pointed at the placeholder, Host as the client sent it."""
    flow = tflow.tflow(req=tutils.treq(host="127.0.0.1", port=9, path=b"/api/users?page=2"))
    flow.request.headers["Host"] = host_header
    return flow


def answered(flow: http.HTTPFlow, origin: str, name: str = "") -> None:
    answered_by(flow, origin, name)
    flow.response = tutils.tresp()
    with taddons.context(ShownTarget()) as tctx:
        tctx.master.addons.get("showntarget").response(flow)


def test_the_url_names_the_target_and_the_headers_stay_as_sent() -> None:
    flow = reverse_flow()
    headers_before = flow.request.headers.copy()
    answered(flow, "https://backend.internal:3443")
    assert flow.request.url == "https://backend.internal:3443/api/users?page=2"
    assert flow.request.headers == headers_before  # Host: gateway.example:8080, as the client sent it
    assert flow.request.path == "/api/users?page=2"
    assert flow.metadata[SHOWN] == {"target": ["https", "backend.internal", 3443], "request": ["http", "127.0.0.1", 9]}


def test_http2_authority_stays_as_sent() -> None:
    flow = reverse_flow()
    flow.request.http_version = "HTTP/2.0"
    flow.request.authority = "gateway.example:8080"
    answered(flow, "http://127.0.0.1:3001")
    assert (flow.request.host, flow.request.port, flow.request.authority) == ("127.0.0.1", 3001, "gateway.example:8080")


def test_default_ports_and_ipv6_targets() -> None:
    assert parse_origin("http://[::1]:3001") == ("http", "::1", 3001)
    assert parse_origin("https://api.example") == ("https", "api.example", 443)
    assert parse_origin("http://api.example:notaport") is None
    flow = reverse_flow()
    answered(flow, "http://[::1]:3001")
    assert (flow.request.host, flow.request.port) == ("::1", 3001)  # as mitmproxy keeps an IPv6 host


def test_flows_no_target_answered_are_left_alone() -> None:
    flow = reverse_flow()
    flow.response = tutils.tresp()
    ShownTarget().response(flow)  # a static or mock endpoint, a 404: nothing was sent anywhere
    assert flow.request.url == "http://127.0.0.1:9/api/users?page=2" and SHOWN not in flow.metadata


def test_a_request_already_addressed_to_the_target_gets_no_metadata() -> None:
    flow = reverse_flow()
    answered(flow, "http://127.0.0.1:9")  # `--mode reverse:` the target itself
    assert SHOWN not in flow.metadata


def replay(flow: http.HTTPFlow) -> None:
    """What mitmweb's Replay (clientplayback) does to the flow before its hooks run."""
    flow.backup()
    flow.is_replay = "request"
    flow.response = None
    with taddons.context(ReplayedRequest()) as tctx:
        tctx.master.addons.get("replayedrequest").requestheaders(flow)


def test_a_replay_goes_out_as_the_original_came_in() -> None:
    flow = reverse_flow()
    headers_before = flow.request.headers.copy()
    answered(flow, "http://127.0.0.1:3001")
    replay(flow)
    assert (flow.request.scheme, flow.request.host, flow.request.port) == ("http", "127.0.0.1", 9)
    assert flow.request.headers == headers_before and SHOWN not in flow.metadata
    answered(flow, "http://127.0.0.1:3002")  # the replay's own answer: shown again, from its own try
    assert flow.request.url == "http://127.0.0.1:3002/api/users?page=2"
    assert flow.metadata[SHOWN]["request"] == ["http", "127.0.0.1", 9]


def test_a_replay_of_a_saved_flow() -> None:
    """A flow file saved by mitmweb keeps the metadata: loaded and replayed later, it is restored too."""
    flow = reverse_flow()
    answered(flow, "http://127.0.0.1:3001")
    loaded = http.HTTPFlow.from_state(flow.get_state())
    replay(loaded)
    assert loaded.request.url == "http://127.0.0.1:9/api/users?page=2"


def test_a_url_edited_before_the_replay_is_kept() -> None:
    flow = reverse_flow()
    answered(flow, "http://127.0.0.1:3001")
    flow.request.url = "http://127.0.0.1:4000/other"  # edited in mitmweb
    replay(flow)
    assert flow.request.url == "http://127.0.0.1:4000/other"


@pytest.mark.parametrize("shown", [None, "junk", {"target": ["http", "127.0.0.1"]}, {"target": ["http", "127.0.0.1", "3001"], "request": ["http", "x", 1]}])
def test_metadata_not_ours_is_ignored(shown: object) -> None:
    flow = reverse_flow()
    answered(flow, "http://127.0.0.1:3001")
    flow.metadata[SHOWN] = shown
    replay(flow)
    assert flow.request.url == "http://127.0.0.1:3001/api/users?page=2"


def test_a_live_flow_is_never_restored() -> None:
    flow = reverse_flow()
    flow.metadata[SHOWN] = {"target": ["http", "127.0.0.1", 9], "request": ["http", "10.0.0.1", 80]}  # from a script
    ReplayedRequest().requestheaders(flow)
    assert flow.request.url == "http://127.0.0.1:9/api/users?page=2"


def console_lines(flow: http.HTTPFlow, dumper_class: type[Dumper] = Dumper) -> list[str]:
    """What mitmdump prints for the flow (flow_detail 1), after ShownTarget's `running` hook."""
    out = io.StringIO()
    dumper = dumper_class(out)
    with running_beside(dumper):
        dumper.response(flow)
    return out.getvalue().splitlines()


@contextlib.contextmanager
def running_beside(dumper: Dumper) -> Iterator[None]:
    """A master with `dumper` and ShownTarget, as mitmdump runs them (flow_detail 1)."""
    shown = ShownTarget()
    with taddons.context(dumper, shown) as tctx:
        tctx.configure(dumper, flow_detail=1)
        shown.running()
        yield


def test_the_console_line_names_the_pool_target() -> None:
    flow = reverse_flow()
    answered(flow, "http://127.0.0.1:3001", "users/backend-2")
    lines = console_lines(flow)
    assert lines[0].endswith(": GET http://127.0.0.1:3001/api/users?page=2 → users/backend-2"), lines
    assert len(lines) == 2 and lines[1].strip().startswith("<< 200")  # no extra line per request
    assert flow.metadata[SHOWN]["name"] == "users/backend-2"


def test_the_name_is_shown_when_the_url_already_named_the_target() -> None:
    flow = reverse_flow()
    answered(flow, "http://127.0.0.1:9", "api")  # `--mode reverse:` the target itself
    assert flow.metadata[SHOWN] == {"name": "api"}
    assert console_lines(flow)[0].endswith("GET http://127.0.0.1:9/api/users?page=2 → api")
    replay(flow)  # metadata with a name only: nothing to restore, and no name left for the replay
    assert flow.request.url == "http://127.0.0.1:9/api/users?page=2" and SHOWN not in flow.metadata


def test_the_console_line_is_mitmproxys_for_flows_no_target_answered() -> None:
    flow = reverse_flow()
    flow.response = tutils.tresp()
    assert console_lines(flow)[0].endswith(": GET http://127.0.0.1:9/api/users?page=2")


def test_a_name_with_control_characters_is_escaped_on_the_console() -> None:
    flow = reverse_flow()
    answered(flow, "http://127.0.0.1:3001", "evil\x1b[2J\nname")
    line = console_lines(flow)[0]
    assert "\x1b" not in line and "\n" not in line and line.endswith("→ evil.[2J.name")  # as mitmproxy escapes a URL


def test_a_dumper_not_mitmproxys_own_is_left_alone() -> None:
    class ScriptsDumper(Dumper):
        pass

    flow = reverse_flow()
    answered(flow, "http://127.0.0.1:3001", "api")
    assert console_lines(flow, ScriptsDumper)[0].endswith("GET http://127.0.0.1:3001/api/users?page=2")


def test_the_swapped_dumper_is_mitmproxys_with_the_same_state() -> None:
    out = io.StringIO()
    dumper = Dumper(out)
    with running_beside(dumper):
        assert type(dumper) is NamingDumper and isinstance(dumper, Dumper) and dumper.outfp is out
        assert ctx.master.addons.get("dumper") is dumper
