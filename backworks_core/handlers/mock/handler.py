"""`MockHandler`: one request's way through `handler: mock` (validation and `Prefer`, the
collection state, the matching example, else the fallback, synthesis or passthrough)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ReverseMode

from backworks_core.context import Forward, RequestContext, stamp_request
from backworks_core.handlers.mock.answers import Answer
from backworks_core.handlers.mock.config import MockConfig
from backworks_core.handlers.mock.matching import NO_JSON, Conditions, parse_request_json
from backworks_core.handlers.mock_defaults import MockDefaults
from backworks_core.handlers.mock_features import MockFeatures, with_header

if TYPE_CHECKING:
    from backworks_core.handlers.mock_state.recognition import Role

_LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})


@dataclass
class ExampleSequence:
    """The examples recorded for one and the same request, played in order; the last repeats."""

    conditions: Conditions | None  # None: the fallback
    answers: list[Answer]
    position: int = 0

    def next(self) -> Answer:
        answer = self.answers[min(self.position, len(self.answers) - 1)]
        if self.position < len(self.answers):
            self.position += 1
        return answer


class MockHandler:
    """Compiled once per blueprint version; the sequences' positions live here."""

    def __init__(self, config: MockConfig, defaults: MockDefaults | None = None) -> None:
        self.passthrough = config.passthrough
        groups: dict[Any, ExampleSequence] = {}
        self.fallback: ExampleSequence | None = None
        answers: list[Answer] = []
        for index, example in enumerate(config.all_examples):
            answer = Answer.of(index, example)
            answers.append(answer)
            if example.is_fallback:
                if self.fallback is None:
                    self.fallback = ExampleSequence(None, [])
                self.fallback.answers.append(answer)
                continue
            assert example.when is not None
            conditions = Conditions.of(example.when)
            group = groups.setdefault(conditions.key, ExampleSequence(conditions, []))
            group.answers.append(answer)
        # Most specific first; a tie keeps file order (the first example of each sequence).
        self.sequences = sorted(groups.values(), key=lambda s: -s.conditions.specificity)  # type: ignore[union-attr]
        # Validation, Prefer, unrecorded path values, latency (backworks_core.handlers.mock_features).
        self.features = MockFeatures(config, answers, Conditions.of, parse_request_json, NO_JSON, defaults)
        # CRUD state (`state: collections`): the endpoint's role in its collection, set by
        # mock_state.link_collections once the blueprint's endpoints are built; None: as recorded.
        self.examples, self.answers = config.all_examples, answers
        self.state: Role | None = None

    def choose(self, ctx: RequestContext) -> tuple[ExampleSequence | None, str]:
        parsed: list[Any] = []

        def request_json() -> Any:
            if not parsed:
                parsed.append(parse_request_json(ctx))
            return parsed[0]

        for sequence in self.sequences:
            assert sequence.conditions is not None
            if sequence.conditions.matches(ctx, request_json):
                return sequence, "example"
        if self.fallback is not None:
            return self.fallback, "fallback"
        return None, "none"

    async def __call__(self, ctx: RequestContext) -> http.Response | Forward:
        features = self.features
        refused = features.check_request(ctx)
        if refused is not None:
            return refused
        preferred = features.preferred(ctx)
        if isinstance(preferred, http.Response):
            return preferred
        if preferred is not None:
            answer = with_header(preferred[0], "Preference-Applied", preferred[1])
        elif self.state is not None and (stateful := self.state.answer(ctx)) is not None:
            if isinstance(stateful, http.Response):
                return stateful  # 400, 409, 507 (refused writes) or Backworks' 404 for a deleted id
            answer = stateful
        else:
            sequence, kind = self.choose(ctx)
            if sequence is None:
                answer = None if self.passthrough else features.synthesise(ctx)
                if answer is None:
                    return self._unmatched(ctx)
            else:
                answer = sequence.next()  # taken before any await: concurrent requests each get their own step
                ctx.notes["mock"] = "fallback" if kind == "fallback" else f"example-{answer.index}"
        await features.wait(answer)
        return answer.response(ctx.request.method == "HEAD")

    def _unmatched(self, ctx: RequestContext) -> http.Response | Forward:
        request = ctx.request
        path = request.path.split("?", 1)[0]
        if not self.passthrough:
            ctx.notes["mock"] = "no-match"
            return ctx.error(404, f"no mock example matches {request.method} {path}")
        flow = ctx.flow
        if _addressed_to_gateway(flow):
            ctx.notes["mock"] = "no-match"
            return ctx.error(
                502,
                f"no mock example matches {request.method} {path}, and passthrough has no upstream for a request "
                "sent to the gateway's own address: run in reverse mode (backworks run, or mitmdump --mode "
                "reverse:URL), or send the request through the proxy",
            )
        ctx.notes["mock"] = "passthrough"
        stamp_request(flow, ctx.request_id)
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.fields]
        return Forward(request.url, headers)


def _addressed_to_gateway(flow: http.HTTPFlow) -> bool:
    """A request to the proxy's own address in a mode with no upstream: passing it on would loop."""
    if isinstance(flow.client_conn.proxy_mode, ReverseMode):
        return False
    sockname = flow.client_conn.sockname
    if not sockname or flow.request.port != sockname[1]:
        return False
    host = flow.request.host.lower().strip("[]")
    return host in _LOCAL_NAMES or host == str(sockname[0]) or host == socket.gethostname().lower()
