"""What Backworks decided about one request, kept on the flow for the metrics and the dashboard.

Handlers and middlewares fill in a RequestRecord as they go (the proxy its tries, auth its
denials); observers read it once the flow is done, in mitmproxy's `response` or `error` hook.
Everything here that ends up as a metric label comes from the blueprint or from a fixed set of
codes, never from request input, so the number of series stays bounded whatever clients send.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mitmproxy import http

from backworks_core.flowstate import flow_state, peek_state

# Label values for flows without an endpoint of their own.
UNMATCHED = "(unmatched)"  # Backworks answered 404/405 itself
PASSTHROUGH = "(passthrough)"  # no endpoint; the flow went on untouched (regular proxy mode)

STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


@dataclass(frozen=True)
class Attempt:
    """One try of the upstream exchange: where it went, how it ended, how long it took."""

    pool: str
    target: str
    outcome: str  # a status class (`2xx` … `5xx`) or a failure kind (`connect_failure`, `reset`, `timeout`, …)
    seconds: float
    status: int | None = None


@dataclass
class RequestRecord:
    """The decisions of one request. `endpoint` is the matched template (a bounded label)."""

    request_id: str
    method: str
    endpoint: str = UNMATCHED
    endpoint_label: str | None = None  # `GET /users/{id}`, as the dashboard lists endpoints
    pool: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    auth_denied: str | None = None  # the denial's reason code (`missing`, `expired`, `forbidden`, …)
    auth_status: int | None = None
    rate_limited: bool = False
    error: str | None = None  # the message of an error Backworks answered with itself
    internal: bool = False  # Backworks' own endpoints (metrics, status page): kept out of the stats

    @property
    def retries(self) -> int:
        return max(0, len(self.attempts) - 1)

    @property
    def failovers(self) -> int:
        """Retries that went to another target than the try before."""
        return sum(1 for before, after in zip(self.attempts, self.attempts[1:]) if before.target != after.target)


def method_label(method: str) -> str:
    """A request method as a label: the standard ones, else `OTHER` (any token is a valid method)."""
    upper = method.upper()
    return upper if upper in STANDARD_METHODS else "OTHER"


def status_class(status: int | None) -> str:
    """`2xx` … `5xx`; `none` when the flow ended without a response (client gone, proxy error)."""
    if status is None or not 100 <= status <= 599:
        return "none"
    return _STATUS_CLASSES[status // 100 - 1]


_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def outcome_of(status: int | None, failure: str | None) -> str:
    return failure if failure is not None else status_class(status)


def record_for(flow: http.HTTPFlow) -> RequestRecord | None:
    """The flow's record (kept on its FlowState, never in flow.metadata: that must stay serializable)."""
    state = peek_state(flow)
    record = state.record if state is not None else None
    return record if isinstance(record, RequestRecord) else None


def ensure_record(flow: http.HTTPFlow, request_id: str) -> RequestRecord:
    state = flow_state(flow)
    record = state.record
    if not isinstance(record, RequestRecord):
        record = state.record = RequestRecord(request_id=request_id, method=method_label(flow.request.method))
    return record
