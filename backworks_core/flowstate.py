"""Backworks' per-flow objects, kept beside the flow rather than in `flow.metadata`.

mitmproxy saves `flow.metadata` with the flow (`-w FILE`, mitmweb's Save, `save.har`), and only
plain values serialize; a record or a relay marker there would make every save of a flow
Backworks handled fail. Plain values (the request id, the trace context) stay in the metadata,
where a saved flow keeps them. Entries go with their flow (weak keys).
"""

from __future__ import annotations

import weakref
from typing import Any

from mitmproxy import http

_STATE: weakref.WeakKeyDictionary[http.HTTPFlow, dict[str, Any]] = weakref.WeakKeyDictionary()


def flow_state(flow: http.HTTPFlow) -> dict[str, Any]:
    state = _STATE.get(flow)
    if state is None:
        state = _STATE[flow] = {}
    return state


def peek_state(flow: http.HTTPFlow) -> dict[str, Any]:
    """The flow's state without creating one (an empty mapping when there is none)."""
    return _STATE.get(flow) or {}
