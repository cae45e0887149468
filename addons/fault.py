"""The `fault` plugin: a middleware that injects latency and aborts, for resilience testing.

As Envoy's fault filter does, on the requests its filter (`path`, `methods`) or an endpoint's
`middleware:` list selects:

```yaml
middlewares:
  - name: chaos
    plugin: fault
    config:
      path: /api/*
      delay: {duration: 250ms, percent: 10}   # 10% of requests wait 250 ms more
      abort: {status: 503, percent: 5}        # 5% are answered 503 at once
      allow_header: false                     # the default; see below
```

- `delay`: `duration` (required), `percent` (0–100, default 100). The request waits, then goes
  on (to the next middleware, the handler, the upstream).
- `abort`: `status` (400–599, required), `percent` (default 100), `body` (the `error` text;
  default `fault injected by middleware 'NAME' (abort=STATUS)`). An abort is a JSON error with
  the request id, as every error Backworks answers itself: the handler and the upstream are
  never reached, mitmweb marks the flow and the status page lists it.
- Delay first, then abort (a delayed abort is possible); each percentage is rolled on its own.
- The request header (`header`, default `X-Backworks-Fault`) switches faults on for one request,
  **only when `allow_header: true`**. Off by default: any client that can reach the gateway
  could otherwise slow it down or fail its requests at will, which is not something to leave
  on in production. Values, comma-separated:
  - `on`: the configured `delay` and `abort`, at 100%;
  - `delay=250ms` (a duration, at most `max_header_delay`, 10 s by default), `abort=503`
    (400–599): these, whatever is configured;
  - `off`: no fault for this request.
  A value that does not parse is a `400`. The header is removed before the request goes on.
  Without `allow_header`, the header is ignored and passed on like any other.
- The flow comment gets `fault=delay=250ms`, `fault=abort=503` or `fault=delay=250ms+abort=503`
  (`+header` appended when the header asked for it).

The random source (`rng`, returning a float in [0, 1)) and `sleep` are attributes of the
middleware, replaced in tests.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mitmproxy import http
from pydantic import BaseModel, Field, model_validator

from backworks_core import headers as fast_headers
from backworks_core.context import RequestContext
from backworks_core.loader import MiddlewareSpec
from backworks_core.model import MiddlewareFilter, StrictModel
from backworks_core.plugins import Plugin
from backworks_core.validation import Duration, parse_duration


DEFAULT_HEADER = "X-Backworks-Fault"


class DelayFault(StrictModel):
    duration: Duration = Field(description="added latency, e.g. 250ms", examples=["500ms"])
    percent: float = Field(100, ge=0, le=100, description="share of requests delayed", examples=[10])


class AbortFault(StrictModel):
    status: int = Field(ge=400, le=599, description="the status answered instead of going on", examples=[503])
    percent: float = Field(100, ge=0, le=100, description="share of requests aborted", examples=[5])
    body: str | None = Field(None, description="the `error` text of the JSON answer", examples=["injected fault"])


class FaultMiddlewareConfig(MiddlewareFilter):
    delay: DelayFault | None = Field(None, description="add latency to matching requests", examples=[{"duration": "500ms", "percent": 10}])
    abort: AbortFault | None = Field(None, description="answer matching requests with an error status instead of handling them", examples=[{"status": 503, "percent": 5}])
    allow_header: bool = Field(False, description="let a request header switch faults on for one request (never in production)", examples=[True])
    header: str = Field(DEFAULT_HEADER, min_length=1, description="the request header read when allow_header is true", examples=["X-Chaos"])
    max_header_delay: Duration = Field(10.0, description="the longest delay the header may ask for", examples=["30s"])

    @model_validator(mode="after")
    def _something_to_do(self) -> FaultMiddlewareConfig:
        if self.delay is None and self.abort is None and not self.allow_header:
            raise ValueError("a fault middleware needs `delay`, `abort`, or `allow_header: true`")
        return self


@dataclass(frozen=True)
class Plan:
    """The faults of one request."""

    delay: float | None = None
    abort: int | None = None


class HeaderError(ValueError):
    pass


def parse_fault_header(value: str, max_delay: float) -> Plan | str:
    """`on`, `off`, or `delay=DURATION`/`abort=STATUS`, comma-separated. Raises HeaderError."""
    words = [w.strip() for w in value.split(",") if w.strip()]
    if [w.lower() for w in words] in (["on"], ["off"]):
        return words[0].lower()
    delay: float | None = None
    abort: int | None = None
    for word in words:
        key, sep, raw = word.partition("=")
        key, raw = key.strip().lower(), raw.strip()
        if not sep or key not in ("delay", "abort"):
            raise HeaderError(f"expected on, off, delay=DURATION or abort=STATUS, got {word!r}")
        if key == "delay":
            try:
                delay = parse_duration(raw)
            except ValueError as exc:
                raise HeaderError(f"delay: {exc}") from None
            if delay > max_delay:
                raise HeaderError(f"delay: at most {_ms(max_delay)} may be asked for, got {raw!r}")
        else:
            if not raw.isdigit() or not 400 <= int(raw) <= 599:
                raise HeaderError(f"abort: expected a status from 400 to 599, got {raw!r}")
            abort = int(raw)
    if delay is None and abort is None:
        raise HeaderError("expected on, off, delay=DURATION or abort=STATUS")
    return Plan(delay, abort)


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class FaultMiddleware:
    def __init__(self, name: str, config: FaultMiddlewareConfig) -> None:
        self.name = name
        self.delay = config.delay
        self.abort = config.abort
        self.allow_header = config.allow_header
        self.header = config.header
        self.max_header_delay = config.max_header_delay
        self.rng: Callable[[], float] = random.random
        self.sleep: Callable[[float], Awaitable[object]] = asyncio.sleep

    def _rolled(self, percent: float) -> bool:
        return percent >= 100 or (percent > 0 and self.rng() * 100 < percent)

    def plan(self, ctx: RequestContext) -> tuple[Plan, bool] | http.Response:
        """The faults for this request and whether the header chose them; or the 400 of a bad header."""
        request = ctx.flow.request
        if self.allow_header and fast_headers.has(request.headers, self.header):
            value = request.headers.get_all(self.header)
            del request.headers[self.header]  # the upstream never sees it
            try:
                asked = parse_fault_header(",".join(value), self.max_header_delay)
            except HeaderError as exc:
                return ctx.error(400, f"{self.header}: {exc}")
            if asked == "off":
                return Plan(), True
            if asked == "on":
                return Plan(self.delay.duration if self.delay else None, self.abort.status if self.abort else None), True
            assert isinstance(asked, Plan)
            return asked, True
        delay = self.delay.duration if self.delay is not None and self._rolled(self.delay.percent) else None
        abort = self.abort.status if self.abort is not None and self._rolled(self.abort.percent) else None
        return Plan(delay, abort), False

    async def on_request(self, ctx: RequestContext) -> http.Response | None:
        if self.delay is None and self.abort is None and not (self.allow_header and fast_headers.has(ctx.flow.request.headers, self.header)):
            return None  # faults only on request, and none asked for: nothing to plan
        planned = self.plan(ctx)
        if isinstance(planned, http.Response):
            return planned
        plan, by_header = planned
        notes = []
        if plan.delay:
            notes.append(f"delay={_ms(plan.delay)}")
        if plan.abort is not None:
            notes.append(f"abort={plan.abort}")
        if not notes:
            return None
        ctx.notes["fault"] = "+".join(notes) + ("+header" if by_header else "")
        if plan.delay:
            await self.sleep(plan.delay)
        if plan.abort is not None:
            configured = self.abort.body if self.abort is not None and plan.abort == self.abort.status else None
            return ctx.error(plan.abort, configured or f"fault injected by middleware {self.name!r} (abort={plan.abort})")
        return None

    async def on_response(self, ctx: RequestContext, response: http.Response) -> None:
        return None

    response_phase = False  # declared for the gateway's compiled pipeline: `on_response` does nothing


class FaultPlugin(Plugin):
    name = "fault"
    description = "fault injection: added latency and aborts, at a percentage or on request"
    MiddlewareConfig = FaultMiddlewareConfig

    @classmethod
    def lint_middleware(cls, config: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
        """A located warning (also in `backworks validate`), not only a log line at run time."""
        assert isinstance(config, FaultMiddlewareConfig)
        if not config.allow_header:
            return []
        return [(("allow_header",), f"any client can inject faults with the {config.header} header: for test environments only")]

    def build_middleware(self, middleware: MiddlewareSpec, config: BaseModel) -> FaultMiddleware:
        assert isinstance(middleware.config, FaultMiddlewareConfig)
        return FaultMiddleware(middleware.name, middleware.config)
