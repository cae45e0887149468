"""A state answer built on a recorded one: the recorded status and headers less the ones that
describe other bytes, the new JSON body in the recorded layout, the request's ids where the
recording had its own, and `X-Backworks-Mock: state`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from backworks_core.context import reason_phrase
from backworks_core.handlers.mock.answers import Answer, json_body_bytes
from backworks_core.handlers.mock_features import substitute, substitute_text
from backworks_core.handlers.mock_state.recording import Template

STATE_HEADER = "X-Backworks-Mock"
# Validators and codings of the recorded bytes: a state answer is other bytes.
_STALE_HEADERS = frozenset({b"content-length", b"content-encoding", b"etag", b"last-modified", b"digest", b"content-md5", b"content-range"})
_LOCATION_HEADERS = frozenset({b"location", b"content-location"})


def swaps_for(template: Template, params: dict[str, Any]) -> list[tuple[str, str]]:
    """Recorded path values → the request's, by position (names may differ between endpoints)."""
    sent = list(params.values())
    swaps = []
    for position, name in enumerate(template.names):
        recorded = template.path.get(name)
        if recorded is not None and position < len(sent) and str(sent[position]) != str(recorded):
            swaps.append((str(recorded), str(sent[position])))
    return swaps


def substituted(value: Any, swaps: Sequence[tuple[str, str]]) -> Any:
    """A recorded JSON body with the request's path values where it had the recorded ones."""
    return substitute(value, swaps) if swaps else value


def with_locations(answer: Answer, swaps: Sequence[tuple[str, str]]) -> Answer:
    """Location and Content-Location pointing at the request's ids (as synthesis does)."""
    if not swaps:
        return answer
    fields = tuple((n, substitute_text(v.decode("latin-1"), swaps).encode("latin-1", "replace") if n.lower() in _LOCATION_HEADERS else v) for n, v in answer.fields)
    return replace(answer, fields=fields)


def marked(answer: Answer) -> Answer:
    """The answer with `X-Backworks-Mock: state`: the state, not the recording, answered."""
    return replace(answer, fields=(*answer.fields, (STATE_HEADER.encode(), b"state")))


def build_answer(answer: Answer | None, status: int, body: Any, layout: Any, swaps: Sequence[tuple[str, str]]) -> Answer:
    """`body` as JSON on the recorded `answer`'s headers; without one, a bare JSON answer."""
    if answer is None:  # nothing recorded answered with a body: a bare JSON answer
        content = b"" if body is None or status in (204, 304) else json_body_bytes(body, None)
        bare = ((b"Content-Type", b"application/json"),) if content else ()
        return marked(Answer(-1, status, reason_phrase(status).encode(), bare, content, 0.0))
    content = b"" if body is None or status < 200 or status in (204, 304) else json_body_bytes(body, layout)
    fields: list[tuple[bytes, bytes]] = []
    for name, value in answer.fields:
        lowered = name.lower()
        if lowered in _STALE_HEADERS:
            continue
        if lowered == b"content-type" and content and b"json" not in value.lower():
            value = b"application/json"
        fields.append((name, value))
    if content and not any(n.lower() == b"content-type" for n, _ in fields):
        fields.append((b"Content-Type", b"application/json"))
    answer = replace(answer, status=status, reason=reason_phrase(status).encode(), fields=tuple(fields), content=content, head_length=None)
    return marked(with_locations(answer, swaps))
