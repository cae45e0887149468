"""Backworks' per-flow object: one slotted FlowState beside each flow, not in `flow.metadata`.

Everything Backworks decides about one request lives in one object, found once per hook: the
request id and trace context, the record the metrics and the status page read, whether the flow
is counted in flight, the relay marker, the client as the trust boundary decided it, and a slot
per plugin. It replaces the string keys that six modules used to write into a shared table.

It is kept beside the flow (a table with weak keys: the entry goes with its flow) rather than
in `flow.metadata`: mitmproxy deep-copies the metadata on every `flow.backup()`/`copy()` and
writes it with the flow (`-w FILE`, mitmweb's Save, `save.har`), where only plain values
serialize; a record or a relay marker there would make every save of a flow Backworks handled
fail. The plain values a saved flow should keep (the request id) are copied into the metadata
once, when they are decided.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from mitmproxy import http
from mitmproxy.flow import Flow

if TYPE_CHECKING:
    from backworks_core.forwarding import Client
    from backworks_core.telemetry import RequestRecord


class FlowState:
    """What Backworks knows of one flow. Slots: a fixed shape, cheap to make and to read."""

    __slots__ = (
        "in_flight",
        "finished",
        "request_id",
        "traceparent",
        "incoming_traceparent",
        "record",
        "client",
        "relayed",
        "stamped",
        "id_added",
        "slots",
    )

    def __init__(self) -> None:
        self.in_flight = False  # counted in Backworks.in_flight until the flow ends
        self.finished = False  # the observers have seen it
        self.request_id: str | None = None  # decided once (context.request_id_for)
        self.traceparent: str | None = None  # decided once (context.traceparent_for)
        self.incoming_traceparent: str | None = None  # the client's valid one, "" for none (read with the request id)
        self.record: RequestRecord | None = None  # what the metrics and the status page read
        self.client: Client | None = None  # the client as the trust boundary decided it
        self.relayed: Any = None  # relay.Relayed: the client's request while the relay answers
        self.stamped: http.Response | None = None  # the answer that carries the request id
        self.id_added: http.Response | None = None  # the answer whose X-Request-ID Backworks added
        self.slots: dict[str, Any] | None = None  # per-plugin marks (`slot`), made when first used

    def slot(self, name: str) -> Any:
        """A plugin's own value on this flow (None when it set none)."""
        return self.slots.get(name) if self.slots is not None else None

    def set_slot(self, name: str, value: Any) -> None:
        if self.slots is None:
            self.slots = {}
        self.slots[name] = value


_STATE: weakref.WeakKeyDictionary[Flow, FlowState] = weakref.WeakKeyDictionary()
_peek = _STATE.get


def flow_state(flow: Flow) -> FlowState:
    """The flow's state, made on first use."""
    state = _peek(flow)
    if state is None:
        state = _STATE[flow] = FlowState()
    return state


def peek_state(flow: Flow) -> FlowState | None:
    """The flow's state without making one (None for a flow Backworks never saw)."""
    return _peek(flow)
