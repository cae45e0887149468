"""The `proxy` endpoint handler: shapes the request for upstream, runs the tries (target choice,
retries, failover, under the pool's bulkhead and retry budget) and builds the client's answer.

One request goes through `ProxyHandler.__call__` in steps: `shape_request` (path, headers,
transforms, what cannot be sent), then tries on targets the pool chooses (`Pool.choose`) until
one answers or `retry_pause` says to stop, then `build_response`, or `upstream_failed` (502/504),
`unavailable` (503) or `at_capacity` (503). WebSocket upgrades go back to mitmproxy
(`forward_websocket`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Coroutine, Sequence
from typing import Any
from urllib.parse import quote

from mitmproxy import http

from addons.balancing import Backend
from addons.breaker import Permit
from addons.proxy.pool import Pool, Target
from addons.proxy.settings import EndpointProxyConfig, retry_policy
from addons.retry import RetryPolicy
from addons.shown_target import answered_by
from backworks_core import headers as fast_headers
from backworks_core.bodies import DEFAULT_LIMIT
from backworks_core.context import (
    REQUEST_ID_HEADER,
    TRACEPARENT_HEADER,
    Answer,
    Forward,
    RequestContext,
    StreamedResponse,
    head_response,
    mark_id_added,
    reason_phrase,
    template_context,
    traceparent_for,
    with_request_id,
)
from backworks_core.credentials import with_authorization
from backworks_core.forwarding import client_of, forwarded_for
from backworks_core.gateway import BuildError
from backworks_core.limits import decoded_limit
from backworks_core.loader import EndpointSpec
from backworks_core.paths import PathRefused, upstream_path_problem
from backworks_core.router import parse_template
from backworks_core.telemetry import Attempt, outcome_of
from backworks_core.templates import TemplateContext
from backworks_core.transforms import CompiledTransform, add_prefix, strip_prefix
from backworks_core.upstream import BodyStream, UpstreamClient, UpstreamError, UpstreamReply, end_to_end_bytes, end_to_end_fields, hop_by_hop_and
from backworks_core.validation import did_you_mean

logger = logging.getLogger(__package__)  # one logger for the plugin, "addons.proxy": the name users filter on


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # what aiohttp refuses in a header ("header injection")


def unsendable_header(headers: Sequence[tuple[str, str]]) -> str | None:
    """Why a request header cannot go upstream, if one cannot: mitmproxy accepts control
    characters and bytes that are not UTF-8 (as lone surrogates); the upstream client does not."""
    # Nearly every request has none: one search and one encode over all of it says so.
    whole = "\t".join([text for field in headers for text in field])
    if not _CONTROL.search(whole):
        try:
            whole.encode()
            return None
        except UnicodeEncodeError:
            pass
    for name, value in headers:  # the first field at fault, for the message
        if _CONTROL.search(name) or _CONTROL.search(value):
            return f"request header {name!r} holds a control character"
        try:
            name.encode()
            value.encode()
        except UnicodeEncodeError:
            return f"request header {name!r} is not UTF-8"
    return None


class UpstreamPath:
    """The path sent upstream: a template over the endpoint's parameters, or the request's own."""

    def __init__(self, endpoint: EndpointSpec, config: EndpointProxyConfig) -> None:
        self.parts: list[tuple[str, str]] | None = None
        if config.path is not None:
            try:
                segments = parse_template(config.path)
            except ValueError as exc:
                raise BuildError(str(exc), ("config", "proxy", "path")) from exc
            available = {s.value: s.kind for s in parse_template(endpoint.settings.path) if s.kind != "literal"}
            self.parts = []
            for segment in segments:
                if segment.kind == "literal":
                    self.parts.append(("literal", quote(segment.value, safe="")))
                    continue
                if segment.value not in available:
                    hint = did_you_mean(segment.value, available)
                    raise BuildError(
                        f"path parameter {{{segment.value}}} is not in the endpoint's path {endpoint.settings.path!r}"
                        + (f"; did you mean {{{hint}}}?" if hint else ""),
                        ("config", "proxy", "path"),
                    )
                self.parts.append(("path" if available[segment.value] == "path" else "param", segment.value))
        self.strip = config.strip_prefix
        self.add = config.add_prefix
        # The template's literal start ("/public/" for /public/{p}): no value may climb out of it.
        self.prefix = ""
        if self.parts is not None:
            literals: list[str] = []
            for kind, value in self.parts:
                if kind != "literal":
                    self.prefix = "/" + "".join(f"{v}/" for v in literals)
                    break
                literals.append(value)

    def render(self, ctx: RequestContext, request_path: str) -> str:
        """The upstream path; PathRefused (a 400) when it would leave its template's literal
        prefix or hold a dot or empty segment (a parameter of `..`, `{x:path}` of `a/../..`)."""
        if self.parts is not None:
            rendered = []
            for kind, value in self.parts:
                if kind == "literal":
                    rendered.append(value)
                else:
                    # surrogateescape: a parameter of invalid UTF-8 goes on as the bytes the client sent
                    rendered.append(quote(ctx.params[value], safe="/" if kind == "path" else "", errors="surrogateescape"))
            path = "/" + "/".join(rendered)
            problem = upstream_path_problem(path, self.prefix)
            if problem is not None:
                raise PathRefused(problem)
        else:
            path = request_path
        if self.strip:
            path = strip_prefix(path, self.strip)
        if self.add:
            path = add_prefix(path, self.add)
        return path


class ProxyHandler:
    """The `proxy` handler of one endpoint, built at load with everything a request only reads.

    The try loop stays in `__call__` and its steps are plain methods (`Pool.choose`, `send`,
    `end_try`, `retry_pause`): a try costs no coroutine or closure of its own."""

    accepts_body_stream = True  # a request body too large to hold is sent upstream as it arrives
    # The endpoint's `transform:` goes innermost in this handler's chain (after the plugin-level,
    # pool and config.proxy ones for requests; first for responses), not around the handler.
    applies_endpoint_transform = True

    def __init__(self, client: UpstreamClient, pool: Pool, endpoint: EndpointSpec, config: EndpointProxyConfig) -> None:
        """`client`: the plugin's pooled upstream client, shared by every proxy endpoint."""
        self.client = client
        self.pool = pool
        self.path = UpstreamPath(endpoint, config)
        self.method = config.method
        self.timeout = config.timeout if config.timeout is not None else pool.config.timeout
        own = endpoint.transform
        request_chain = [*pool.request_transforms, CompiledTransform(config.transform_request), CompiledTransform(own.request if own else None)]
        response_chain = [CompiledTransform(own.response if own else None), CompiledTransform(config.transform_response), *pool.response_transforms]
        self.request_transforms = [t for t in request_chain if not t.is_empty]
        self.response_transforms = [t for t in response_chain if not t.is_empty]
        # Headers-only chains work on the header list; path, query or body need a whole message.
        self.reshapes_request = any(t.touches_path or t.touches_body for t in self.request_transforms)
        self.reshapes_response = any(t.touches_body for t in self.response_transforms)
        self.transforms_note = f"request:{len(self.request_transforms)}+response:{len(self.response_transforms)}"
        self.forwarded = pool.config.forwarded_headers
        self.preserve_host = pool.config.preserve_host
        # What of the client's header fields never goes upstream as it came (besides hop-by-hop
        # fields): Backworks sets these itself, or (Host, Content-Length) the upstream client does.
        self.replaced_fields = hop_by_hop_and(
            "content-length",
            REQUEST_ID_HEADER,
            TRACEPARENT_HEADER,
            *(() if self.preserve_host else ("host",)),
            *(("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host") if self.forwarded else ()),
        )
        # Endpoint retries win; otherwise decided per request (the first target's retry_attempts).
        self.retries = retry_policy(config.retries, None, None, len(pool.backends)) if config.retries else None
        self.rng = random.Random()
        self.sleep = asyncio.sleep
        self._target_policies: dict[str, RetryPolicy] = {}

    def _policy_for(self, target: Target) -> RetryPolicy:
        """The pool's retry rules as the first target chosen sets them, built once per target."""
        policy = self._target_policies.get(target.name)
        if policy is None:
            pool = self.pool
            policy = self._target_policies[target.name] = retry_policy(None, pool.config.retries, target.retry_attempts, len(pool.backends))
        return policy

    def reshape_request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes, tctx: TemplateContext, body_limit: int = DEFAULT_LIMIT
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """Run path, query and body transforms on the request as it will be sent upstream."""
        upstream = http.Request(
            host="upstream",
            port=80,
            method=method.encode(),
            scheme=b"http",
            authority=b"",
            path=path.encode(),
            http_version=b"HTTP/1.1",
            headers=http.Headers([(_header_bytes(n), _header_bytes(v)) for n, v in headers]),
            content=body,
            trailers=None,
            timestamp_start=0.0,
            timestamp_end=0.0,
        )
        for transform in self.request_transforms:
            transform.apply_request(upstream, tctx, body_limit=body_limit)  # BodyError: the gateway's 413/415/400
        fields = [(n, v) for n, v in upstream.headers.items(multi=True) if n.lower() != "content-length"]
        return upstream.path, fields, upstream.raw_content or b""

    def upstream_headers(self, ctx: RequestContext) -> list[tuple[str, str]]:
        request = ctx.flow.request
        # The client's Connection tokens were applied to the client's fields when the gateway
        # admitted the request; here they would also remove the fields the gateway added.
        headers = end_to_end_fields(request.headers.fields, self.replaced_fields, "utf-8", connection_tokens=False)
        if self.forwarded:
            # Written by the gateway; a trusted proxy's values kept (server.trusted_proxies).
            state = ctx.flow_state
            client = state.client if state is not None and state.client is not None else client_of(ctx.flow)
            proto = fast_headers.get(request.headers, "X-Forwarded-Proto") if client.trusted_peer else None
            host = fast_headers.get(request.headers, "X-Forwarded-Host") if client.trusted_peer else None
            headers.append(("X-Forwarded-For", forwarded_for(request, client)))
            headers.append(("X-Forwarded-Proto", proto or ("https" if ctx.flow.client_conn.tls_established else "http")))
            headers.append(("X-Forwarded-Host", host or _host_header(request) or request.pretty_host))
        # The id Backworks logs and answers with, so upstream logs line up with ours.
        headers.append((REQUEST_ID_HEADER, ctx.request_id))
        headers.append((TRACEPARENT_HEADER, traceparent_for(ctx.flow, ctx.request_id, ctx.flow_state)))
        return headers

    async def __call__(self, ctx: RequestContext) -> Answer:
        """Shape the request, try targets until one answers or no retry is due, then answer."""
        shaped = self.shape_request(ctx)
        if isinstance(shaped, http.Response):
            return shaped
        method, path, headers, body, tctx = shaped
        pool = self.pool
        if ctx.record is not None:
            ctx.record.pool = pool.name
        if self.request_transforms or self.response_transforms:
            ctx.notes["transforms"] = self.transforms_note
        key = pool.key_for(ctx)
        request = ctx.flow.request
        if is_websocket_upgrade(request):
            return self.forward_websocket(ctx, path, headers, key)
        if not pool.bulkhead.try_enter():
            return self.at_capacity(ctx)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        tried: list[str] = []
        policy: RetryPolicy | None = None
        started = time.time()
        reply: UpstreamReply | None = None
        failure: UpstreamError | None = None
        holds_retry = False  # a retry counts against the budget from its backoff to its answer
        pool.budget.active_requests += 1
        try:
            while True:
                chosen = pool.choose(tried, key)
                if chosen is None:
                    if not tried:  # nothing could take it: say so at once, never wait
                        return self.unavailable(ctx)
                    break  # the last try's answer stands
                backend, permit = chosen
                target = pool.target_by_name[backend.name]
                if reply is not None:
                    reply.close()  # retried instead of passed on
                if policy is None:  # the first target chosen decides `retry_attempts`
                    policy = self.retries or self._policy_for(target)
                tried.append(target.name)
                per_try = min(t for t in (deadline - loop.time(), policy.per_try_timeout, target.timeout) if t is not None)
                queued = target.max_connections is not None and backend.in_flight >= target.max_connections
                if queued:  # every connection busy: the try waits for one (within per_try)
                    ctx.notes["queued"] = target.name
                backend.in_flight += 1
                try_started = loop.time()
                try:
                    reply = await self.send(ctx, target, method, path, headers, body, per_try)
                    failure = None
                    pool.record(target.name, reply.status, permit)
                    outcome: str | int | None = reply.status if reply.status in policy.statuses else None
                except UpstreamError as exc:
                    reply, outcome, failure = None, exc.kind, exc
                    pool.record(target.name, exc.kind, permit)
                finally:
                    self.end_try(ctx, backend, permit, reply, failure, loop.time() - try_started)
                    if holds_retry:
                        pool.budget.release()
                        holds_retry = False
                if outcome is None:
                    break
                pause = self.retry_pause(ctx, policy, outcome, failure, method, body, tried, deadline - loop.time())
                if pause is None:
                    break
                holds_retry = outcome != "connect_failure"  # retry_pause took a budget slot for it
                if pause:
                    await self.sleep(pause)
        finally:
            if holds_retry:
                pool.budget.release()
            pool.budget.active_requests -= 1
            pool.bulkhead.leave()
        self.note_tries(ctx, tried, target)
        if reply is None:
            return self.upstream_failed(ctx, failure, tried, target, queued)
        if isinstance(body, BodyStream):
            ctx.notes["request_bytes"] = str(body.sent)
        return self.build_response(ctx, reply, started, method == "HEAD" if self.method is None else request.method == "HEAD", tctx)

    def shape_request(
        self, ctx: RequestContext
    ) -> tuple[str, str, list[tuple[str, str]], bytes | BodyStream, TemplateContext | None] | http.Response:
        """(method, path, headers, body, template context) as they go upstream, or the 400 that
        refuses the request: a path that leaves its template or is not canonical, a transform
        that would inject CR/LF, a header the upstream client cannot send."""
        request = ctx.flow.request
        raw_path, _, query = request.path.partition("?")
        try:
            path = self.path.render(ctx, raw_path) + (f"?{query}" if query else "")
        except PathRefused as exc:
            return ctx.error(400, f"request path refused: {exc}")
        # The template context only for the transforms that read it (none: nothing to build).
        tctx = template_context(ctx) if self.request_transforms or self.response_transforms else None
        headers = self.upstream_headers(ctx)
        method = self.method or ctx.method or request.method
        body: bytes | BodyStream = request.raw_content or b""
        try:
            if self.reshapes_request and ctx.body_stream is None:
                assert tctx is not None and isinstance(body, bytes)  # a streamed body is never reshaped
                path, headers, body = self.reshape_request(method, path, headers, body, tctx, decoded_limit(ctx.endpoint.guard))
            else:
                for transform in self.request_transforms:
                    assert tctx is not None
                    headers = transform.apply_headers(headers, tctx)
                    if transform.touches_path:
                        path = transform.apply_target(path, tctx)
        except ValueError as exc:  # a value from the request would carry CR or LF
            return ctx.error(400, f"request transform refused: {exc}")
        # What goes upstream (HTTP or WebSocket) after prefixes and transforms: canonical too.
        if (refused := upstream_path_problem(path.partition("?")[0])) is not None:
            return ctx.error(400, f"request path refused: {refused}")
        if (refused := unsendable_header(headers)) is not None:
            return ctx.error(400, refused)
        if ctx.body_stream is not None:
            if self.reshapes_request:
                logger.info("[%s] body transforms skipped: the request body streams (larger than the buffer limit)", ctx.request_id)
            body = BodyStream(ctx.body_stream)
            if "content-length" in request.headers:  # the upstream gets the length it would have had
                headers.append(("Content-Length", request.headers["content-length"]))
        return method, path, headers, body, tctx

    def send(
        self, ctx: RequestContext, target: Target, method: str, path: str, headers: list[tuple[str, str]], body: bytes | BodyStream, timeout: float
    ) -> Coroutine[Any, Any, UpstreamReply]:
        """One try's exchange with `target` (its URL credentials replace the client's Authorization).
        The client's coroutine itself, awaited by the caller: no frame of its own per try."""
        return self.client.send(
            method,
            target.origin + target.base_path + path,
            headers if target.authorization is None else with_authorization(headers, target.authorization),
            body,
            timeout=max(timeout, 0.001),
            ssl_context=target.ssl_context,
            buffer_limit=ctx.buffer_limit,
            max_connections=target.max_connections,
        )

    def end_try(
        self, ctx: RequestContext, backend: Backend, permit: Permit | None, reply: UpstreamReply | None, failure: UpstreamError | None, elapsed: float
    ) -> None:
        """A try is over (answered, failed or cancelled): it goes in the request's record (metrics,
        the status page, the access log), and the target's connection and breaker slot come back."""
        if ctx.record is not None:
            status = reply.status if reply is not None else None
            ctx.record.attempts.append(Attempt(self.pool.name, backend.name, outcome_of(status, failure.kind if failure else None), elapsed, status))
        backend.in_flight -= 1
        if permit is not None:
            permit.release()  # no-op once recorded; frees a trial slot if cancelled

    def retry_pause(
        self,
        ctx: RequestContext,
        policy: RetryPolicy,
        outcome: str | int,
        failure: UpstreamError | None,
        method: str,
        body: bytes | BodyStream,
        tried: list[str],
        remaining: float,
    ) -> float | None:
        """After a failed try: the backoff before the next one, or None when none is due (tries
        spent, not retryable for this method, a body already streamed, no time or budget left).

        A retry other than a failover from a refused connection takes a slot of the pool's retry
        budget: the caller holds it until that retry's answer."""
        logger.info("[%s] %s: try %d on %s failed: %s", ctx.request_id, ctx.endpoint.label, len(tried), tried[-1], failure or outcome)
        retries_done = len(tried) - 1
        if (
            retries_done >= policy.attempts
            or not policy.retryable(outcome, method)
            or (isinstance(body, BodyStream) and body.started)  # what was sent cannot be sent again
            or remaining <= 0
        ):
            return None
        # The budget keeps retries from multiplying the load on struggling upstreams. A
        # refused connection put no load anywhere, so failing over from it is not counted.
        if outcome != "connect_failure" and not self.pool.budget.try_acquire():
            logger.info("[%s] %s: no retry after try %d: the pool's retry budget is spent", ctx.request_id, ctx.endpoint.label, len(tried))
            return None
        return min(policy.delay(retries_done + 1, self.rng), max(0.0, remaining))

    def note_tries(self, ctx: RequestContext, tried: list[str], target: Target) -> None:
        """The flow's notes on its tries: the last target (the console and mitmweb name it too),
        how many, the failover path, that target's breaker state."""
        ctx.notes["target"] = tried[-1]
        answered_by(ctx.flow, target.origin, self.pool.label(tried[-1]))  # the console and mitmweb name it (addons.shown_target)
        ctx.notes["attempts"] = str(len(tried))
        if len(tried) > 1:
            ctx.notes["failover"] = ">".join(tried)
        breaker = self.pool.breakers.get(tried[-1])
        if breaker is not None:
            ctx.notes["cb"] = breaker.state

    def upstream_failed(self, ctx: RequestContext, failure: UpstreamError | None, tried: list[str], target: Target, queued: bool) -> http.Response:
        """The last try failed (no answer to pass on): 504 after a timeout, else 502."""
        assert failure is not None
        logger.warning("[%s] %s → %s failed after %d tries: %s", ctx.request_id, ctx.endpoint.label, tried[-1], len(tried), failure)
        ctx.notes["upstream_error"] = failure.kind
        # The client learns the kind and the target's name; the address and the OS's text stay
        # in the log line above, under the request id.
        named = self.pool.public_name(tried[-1])
        if failure.kind == "timeout":
            busy = f"; it waited for one of the target's {target.max_connections} connections (max_connections)" if queued else ""
            return ctx.error(504, f"upstream timeout ({named}): no answer in time (tries: {len(tried)}{busy})")
        return ctx.error(502, f"upstream {failure.phrase} ({named}) (tries: {len(tried)})")

    def at_capacity(self, ctx: RequestContext) -> http.Response:
        """The pool's bulkhead is full (max_concurrent_requests): 503 at once, with Retry-After."""
        pool = self.pool
        ctx.notes["refused"] = "max_concurrent_requests"
        return ctx.error(503, f"upstream pool {pool.name!r} is at max_concurrent_requests ({pool.bulkhead.limit})", {"Retry-After": "1"})

    def unavailable(self, ctx: RequestContext) -> http.Response:
        """No target can take traffic (unhealthy, ejected or breaker open): 503 with Retry-After."""
        pool = self.pool
        retry_after = pool.retry_after()
        ctx.notes["upstream_error"] = "unavailable"
        states = ", ".join(
            f"{row['target']}: " + ("unhealthy" if row["health"] == "unhealthy" else "ejected" if row["ejected"] else f"breaker {row['breaker']}")
            for row in pool.describe()
        )
        logger.warning("[%s] %s: no target of pool %r can take traffic (%s)", ctx.request_id, ctx.endpoint.label, pool.name, states)
        return ctx.error(503, f"no upstream target of pool {pool.name!r} can take traffic ({states})", {"Retry-After": str(retry_after)})

    def forward_websocket(self, ctx: RequestContext, path: str, headers: list[tuple[str, str]], key: str | None) -> Forward | http.Response:
        """mitmproxy relays WebSocket frames itself: point the flow at the chosen target."""
        candidates = self.pool.candidates(set())
        if not candidates:
            return self.unavailable(ctx)
        backend = self.pool.balancer.choose(candidates, key)
        target = self.pool.target_by_name[backend.name]
        # The upgrade needs its hop-by-hop headers back (they were dropped for the HTTP exchange).
        request = ctx.flow.request
        # Connection says Upgrade only: any other token would name a field the gateway set.
        upgrade = [("Connection", "Upgrade")] + [(n, v) for n, v in request.headers.items(multi=True) if n.lower() == "upgrade"]
        if not self.preserve_host:
            headers = [(n, v) for n, v in headers if n.lower() != "host"]
            headers.insert(0, ("Host", target.origin.split("://", 1)[1]))
        if target.authorization is not None:  # the same rule as the HTTP exchange's
            headers = with_authorization(headers, target.authorization)
        ctx.notes["target"] = target.name
        ctx.notes["websocket"] = "yes"
        logger.debug("[%s] websocket upgrade to %s", ctx.request_id, target.name)
        return Forward(target.origin + target.base_path + path, headers + upgrade)

    def build_response(
        self, ctx: RequestContext, reply: UpstreamReply, started: float, is_head: bool, tctx: TemplateContext | None
    ) -> http.Response | StreamedResponse:
        """The client's answer; one larger than the buffer limit streams on (its length as sent).

        Without header transforms the head stays bytes from the upstream's fields to the
        client's, and the request id goes in with it (not added to the finished head after)."""
        sized = not is_head and reply.status not in (204, 304) and not reply.streamed
        status = reply.status
        reason = reply.reason
        head = end_to_end_bytes(reply.headers, _RESIZED_ANSWER_DROPS if sized else _ANSWER_DROPS)
        if sized:
            head.append((b"content-length", str(len(reply.body)).encode()))
        if self.response_transforms and not self.reshapes_response:  # headers and status only: on the bytes
            assert tctx is not None
            try:
                for transform in self.response_transforms:
                    head = transform.apply_header_fields(head, tctx, _header_bytes)
                    status = transform.apply_status(status)
            except ValueError as exc:
                reply.close()
                return ctx.error(502, f"response transform refused: {exc}")
            if status != reply.status:
                reason = reason_phrase(status)
        state = ctx.flow_state if ctx.request_id and not self.reshapes_response else None  # a body transform may reshape the head
        if state is not None:
            with_request_id(head, ctx.request_id, state)
        response = head_response(
            status, reason.encode("latin-1", "replace"), fast_headers.from_fields(head), None if reply.streamed else reply.body, started, time.time()
        )
        if self.reshapes_response:
            assert tctx is not None
            if reply.streamed:
                logger.info("[%s] body transforms skipped: the response body streams (larger than the buffer limit)", ctx.request_id)
            try:
                for transform in self.response_transforms:
                    transform.apply_response(response, tctx)
            except ValueError as exc:
                reply.close()
                return ctx.error(502, f"response transform refused: {exc}")
        if state is not None:
            mark_id_added(state, response)
        if reply.streamed:
            return StreamedResponse(response, reply.chunks(), reply.close)
        return response


_RESIZED_ANSWER_DROPS = hop_by_hop_and("content-length")  # Backworks sets the length of what it holds
_ANSWER_DROPS = hop_by_hop_and()


def is_websocket_upgrade(request: http.Request) -> bool:
    upgrade = fast_headers.get(request.headers, "upgrade")
    return upgrade is not None and upgrade.lower() == "websocket" and "upgrade" in (fast_headers.get(request.headers, "connection") or "").lower()


def _host_header(request: http.Request) -> str | None:
    """`request.host_header` (HTTP/2 and 3: the authority, else Host) by one pass over the fields."""
    if request.is_http2 or request.is_http3:
        return request.authority or fast_headers.get(request.headers, "host")
    return fast_headers.get(request.headers, "host")


def _header_bytes(value: str) -> bytes:
    """Upstream fields round-trip through latin-1; a rendered value beyond it goes as UTF-8."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")

