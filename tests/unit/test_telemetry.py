"""backworks_core.telemetry (labels, RequestRecord) and the request ids of backworks_core.context."""

from __future__ import annotations

from backworks_core.flowstate import flow_state, peek_state

import re

import pytest
from mitmproxy.test import tflow, tutils

from backworks_core.context import (
    REQUEST_ID_HEADER,
    TRACEPARENT_HEADER,
    parse_traceparent,
    request_id_for,
    stamp_request,
    stamp_response,
    traceparent_for,
)
from backworks_core.telemetry import (
    PASSTHROUGH,
    UNMATCHED,
    Attempt,
    RequestRecord,
    ensure_record,
    method_label,
    outcome_of,
    record_for,
    status_class,
)

from .conftest import make_flow

HEX32 = re.compile(r"^[0-9a-f]{32}$")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID_TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
GENERATED = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-00$")


# -- labels ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, label",
    [
        ("GET", "GET"),
        ("post", "POST"),
        ("Delete", "DELETE"),
        ("OPTIONS", "OPTIONS"),
        ("CONNECT", "CONNECT"),
        ("PROPFIND", "OTHER"),
        ("BREW", "OTHER"),
        ("X" * 500, "OTHER"),
        ("", "OTHER"),
    ],
)
def test_method_label(method: str, label: str) -> None:
    assert method_label(method) == label


@pytest.mark.parametrize(
    "status, label",
    [(100, "1xx"), (200, "2xx"), (204, "2xx"), (301, "3xx"), (404, "4xx"), (499, "4xx"), (500, "5xx"), (599, "5xx"), (None, "none"), (0, "none"), (99, "none"), (600, "none"), (999, "none")],
)
def test_status_class(status: int | None, label: str) -> None:
    assert status_class(status) == label


def test_outcome_is_the_failure_kind_else_the_status_class() -> None:
    assert outcome_of(503, None) == "5xx"
    assert outcome_of(None, "connect_failure") == "connect_failure"
    assert outcome_of(None, None) == "none"


def attempt(target: str, outcome: str = "5xx", status: int | None = 502) -> Attempt:
    return Attempt("default", target, outcome, 0.01, status)


@pytest.mark.parametrize(
    "targets, retries, failovers",
    [
        ([], 0, 0),
        (["a"], 0, 0),
        (["a", "a"], 1, 0),
        (["a", "b"], 1, 1),
        (["a", "b", "b"], 2, 1),
        (["a", "b", "a"], 2, 2),
        (["a", "a", "a", "a"], 3, 0),
    ],
)
def test_retries_and_failovers_of_a_record(targets: list[str], retries: int, failovers: int) -> None:
    record = RequestRecord(request_id="r", method="GET", attempts=[attempt(t) for t in targets])
    assert record.retries == retries
    assert record.failovers == failovers


def test_a_new_record_is_unmatched_until_routed() -> None:
    record = RequestRecord(request_id="r", method="GET")
    assert (record.endpoint, record.endpoint_label, record.pool, record.error, record.internal) == (UNMATCHED, None, None, None, False)
    assert UNMATCHED != PASSTHROUGH


def test_ensure_record_creates_one_record_per_flow() -> None:
    flow = make_flow("brew", "/pot")
    assert record_for(flow) is None
    record = ensure_record(flow, "id-1")
    assert record_for(flow) is record
    assert (record.request_id, record.method) == ("id-1", "OTHER")
    assert ensure_record(flow, "id-2") is record  # the first one stays
    assert record.request_id == "id-1"


def test_record_for_ignores_foreign_metadata() -> None:
    flow = make_flow()
    flow_state(flow).record = {"request_id": "not a record"}  # type: ignore[assignment]
    assert record_for(flow) is None


# -- request ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offered",
    ["abc", "r-405", "req_1.2:3", "0af7651916cd43dd8448eb211c80319c", "A" * 128, "x"],
)
def test_a_sane_client_request_id_is_kept(offered: str) -> None:
    flow = make_flow(headers={REQUEST_ID_HEADER: offered})
    assert request_id_for(flow) == offered


@pytest.mark.parametrize(
    "offered",
    [
        "A" * 129,  # too long
        "has space",
        "tab\there",
        "crlf\r\nX-Injected: 1",
        "semi;colon",
        "quote\"d",
        "ünïcode",
        "",
    ],
)
def test_an_insane_client_request_id_is_replaced_by_32_hex(offered: str) -> None:
    flow = make_flow(headers=[(REQUEST_ID_HEADER, offered)])
    request_id = request_id_for(flow)
    assert request_id != offered
    assert HEX32.match(request_id), request_id


def test_a_client_request_id_with_a_trailing_newline_is_rejected() -> None:
    flow = make_flow()
    flow.request.headers[REQUEST_ID_HEADER] = "abc\n"  # HTTP/2 with validate_inbound_headers off, or another addon
    request_id = request_id_for(flow)
    assert "\n" not in request_id
    assert HEX32.match(request_id)


def test_without_a_client_id_the_trace_id_of_a_valid_traceparent_is_used() -> None:
    flow = make_flow(headers={TRACEPARENT_HEADER: VALID_TRACEPARENT})
    assert request_id_for(flow) == TRACE_ID


def test_an_insane_client_id_falls_back_to_the_traceparent() -> None:
    flow = make_flow(headers={REQUEST_ID_HEADER: "bad id", TRACEPARENT_HEADER: VALID_TRACEPARENT})
    assert request_id_for(flow) == TRACE_ID


def test_a_sane_client_id_wins_over_the_traceparent() -> None:
    flow = make_flow(headers={REQUEST_ID_HEADER: "mine", TRACEPARENT_HEADER: VALID_TRACEPARENT})
    assert request_id_for(flow) == "mine"


def test_an_invalid_traceparent_is_not_used_as_the_id() -> None:
    flow = make_flow(headers={TRACEPARENT_HEADER: f"01-{TRACE_ID}-{PARENT_ID}-01"})
    request_id = request_id_for(flow)
    assert HEX32.match(request_id) and request_id != TRACE_ID


def test_new_ids_are_32_hex_and_differ_between_flows() -> None:
    ids = {request_id_for(make_flow()) for _ in range(50)}
    assert len(ids) == 50
    assert all(HEX32.match(i) for i in ids)


def test_the_request_id_is_stable_per_flow() -> None:
    flow = make_flow()
    first = request_id_for(flow)
    flow.request.headers[REQUEST_ID_HEADER] = "changed-later"
    assert request_id_for(flow) == first
    offered = make_flow(headers={REQUEST_ID_HEADER: "client-1"})
    assert request_id_for(offered) == request_id_for(offered) == "client-1"


# -- traceparent ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, trace_id",
    [
        (VALID_TRACEPARENT, TRACE_ID),
        (f"00-{TRACE_ID}-{PARENT_ID}-00", TRACE_ID),
        (f"  {VALID_TRACEPARENT}  ", TRACE_ID),  # surrounding whitespace is tolerated
        (f"01-{TRACE_ID}-{PARENT_ID}-01", None),  # a version this parser does not know
        (f"ff-{TRACE_ID}-{PARENT_ID}-01", None),  # ff is forbidden
        (f"00-{'0' * 32}-{PARENT_ID}-01", None),  # all-zero trace id
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),  # all-zero parent id
        (f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", None),  # upper-case hex
        (f"00-{TRACE_ID}-{PARENT_ID.upper()}-01", None),
        (f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01", None),  # 31 hex
        (f"00-{TRACE_ID}0-{PARENT_ID}-01", None),  # 33 hex
        (f"00-{TRACE_ID}-{PARENT_ID[:-1]}-01", None),  # 15 hex
        (f"00-{TRACE_ID}-{PARENT_ID}0-01", None),  # 17 hex
        (f"00-{TRACE_ID}-{PARENT_ID}-1", None),  # one-digit flags
        (f"00-{TRACE_ID}-{PARENT_ID}-001", None),
        (f"00-{TRACE_ID}-{PARENT_ID}-01-extra", None),
        (f"00-{TRACE_ID}-{PARENT_ID}-0g", None),
        (f"0-{TRACE_ID}-{PARENT_ID}-01", None),
        (f"00_{TRACE_ID}_{PARENT_ID}_01", None),
        ("", None),
        ("garbage", None),
    ],
)
def test_parse_traceparent(value: str, trace_id: str | None) -> None:
    assert parse_traceparent(value) == trace_id


def test_a_valid_incoming_traceparent_goes_on_unchanged() -> None:
    flow = make_flow(headers={TRACEPARENT_HEADER: VALID_TRACEPARENT})
    assert traceparent_for(flow, "whatever-id") == VALID_TRACEPARENT


def test_without_a_traceparent_one_starts_with_the_request_id_as_trace_id() -> None:
    request_id = "0af7651916cd43dd8448eb211c80319c"
    match = GENERATED.match(traceparent_for(make_flow(), request_id))
    assert match is not None
    assert match.group(1) == request_id
    assert parse_traceparent(match.group(0)) == request_id  # what we send is itself valid


def test_an_upper_case_hex_request_id_becomes_a_lower_case_trace_id() -> None:
    request_id = "0AF7651916CD43DD8448EB211C80319C"
    match = GENERATED.match(traceparent_for(make_flow(), request_id))
    assert match is not None and match.group(1) == request_id.lower()


@pytest.mark.parametrize("request_id", ["client-1", "0" * 32, "abc", "0af7651916cd43dd8448eb211c80319"])
def test_a_request_id_that_is_no_trace_id_gets_a_random_trace_id(request_id: str) -> None:
    traceparent = traceparent_for(make_flow(), request_id)
    match = GENERATED.match(traceparent)
    assert match is not None, traceparent
    assert match.group(1) != request_id
    assert parse_traceparent(traceparent) == match.group(1)


@pytest.mark.parametrize("incoming", [f"01-{TRACE_ID}-{PARENT_ID}-01", f"00-{'0' * 32}-{PARENT_ID}-01", "nonsense"])
def test_an_invalid_incoming_traceparent_is_restarted(incoming: str) -> None:
    request_id = "0af7651916cd43dd8448eb211c80319c"
    flow = make_flow(headers={TRACEPARENT_HEADER: incoming})
    traceparent = traceparent_for(flow, request_id)
    assert traceparent != incoming
    assert GENERATED.match(traceparent).group(1) == request_id  # type: ignore[union-attr]


def test_the_traceparent_is_stable_per_flow() -> None:
    flow = make_flow()
    first = traceparent_for(flow, "client-1")
    assert traceparent_for(flow, "client-1") == first
    assert traceparent_for(flow, "0af7651916cd43dd8448eb211c80319c") == first
    other = make_flow()
    assert traceparent_for(other, "client-1") != first  # a new trace for another flow


# -- stamping -------------------------------------------------------------------------------


def test_stamp_request_sets_the_id_and_the_trace_context() -> None:
    flow = make_flow(headers=[(REQUEST_ID_HEADER, "bad id"), ("x-request-id", "second")])
    request_id = request_id_for(flow)
    stamp_request(flow, request_id)
    assert flow.request.headers.get_all(REQUEST_ID_HEADER) == [request_id]
    assert flow.request.headers[TRACEPARENT_HEADER] == traceparent_for(flow, request_id)
    assert GENERATED.match(flow.request.headers[TRACEPARENT_HEADER]).group(1) == request_id  # type: ignore[union-attr]


def test_stamp_request_keeps_a_valid_incoming_traceparent() -> None:
    flow = make_flow(headers={TRACEPARENT_HEADER: VALID_TRACEPARENT})
    stamp_request(flow, request_id_for(flow))
    assert flow.request.headers.get_all(TRACEPARENT_HEADER) == [VALID_TRACEPARENT]
    assert flow.request.headers[REQUEST_ID_HEADER] == TRACE_ID


def test_stamp_response_adds_the_request_id() -> None:
    flow = make_flow(headers={REQUEST_ID_HEADER: "client-1"})
    request_id_for(flow)
    flow.response = tutils.tresp()
    stamp_response(flow)
    assert flow.response.headers[REQUEST_ID_HEADER] == "client-1"


def test_stamp_response_keeps_an_id_the_answer_already_has() -> None:
    flow = make_flow(headers={REQUEST_ID_HEADER: "client-1"})
    request_id_for(flow)
    flow.response = tutils.tresp()
    flow.response.headers[REQUEST_ID_HEADER] = "upstream-7"
    stamp_response(flow)
    assert flow.response.headers.get_all(REQUEST_ID_HEADER) == ["upstream-7"]


def test_stamp_response_leaves_flows_backworks_never_saw_alone() -> None:
    flow = tflow.tflow(resp=True)
    stamp_response(flow)
    assert REQUEST_ID_HEADER not in flow.response.headers
    no_response = make_flow()
    request_id_for(no_response)
    stamp_response(no_response)  # no response yet: nothing to stamp, no error
    assert no_response.response is None


def test_new_ids_are_hex_of_their_length_and_differ() -> None:
    from backworks_core.context import new_span_id, new_trace_id

    traces = {new_trace_id() for _ in range(2000)}
    spans = {new_span_id() for _ in range(2000)}
    assert len(traces) == 2000 and len(spans) == 2000  # no repeats
    assert all(len(t) == 32 and int(t, 16) and t == t.lower() for t in traces)
    assert all(len(s) == 16 and int(s, 16) and s == s.lower() for s in spans)
