"""The core addon: loads the blueprint, watches it, and answers requests from it.

A new blueprint is loaded and compiled completely before it replaces the old one in a single
assignment; requests already in flight finish on the Gateway they started with. A blueprint
that fails to load never replaces a working one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy.mode_specs import ReverseMode

from mitmproxy.net.http.http1 import expected_http_body_size
from mitmproxy.utils import human

from backworks_core.context import json_error, request_id_for, stamp_response
from backworks_core.diagnostics import BlueprintError, Diagnostic
from backworks_core.flowstate import FlowState, flow_state, peek_state
from backworks_core.gcfreeze import Freezer
from backworks_core.compiler import compile_blueprint
from backworks_core.gateway import Gateway
from backworks_core.plugins import Plugin, PluginRegistry
from backworks_core.loader import LoadedBlueprint
from backworks_core.pages import InternalEndpoint
from backworks_core.relay import StreamRelay, restore_relayed
from backworks_core.streaming import handle_streaming, may_refuse_head, refuse_head
from backworks_core.telemetry import ensure_record, record_for

logger = logging.getLogger(__name__)

class FlowObserver(Protocol):
    """A plugin or extension told of every flow once it is done (metrics, the status page).

    One that also has an `observing` attribute is asked once per blueprint (after its
    `apply_blueprint`) and, when that is false, not called at all until the next one.
    """

    def observe(self, flow: http.HTTPFlow) -> None: ...


class CoreExtension(Protocol):
    """An addon beside the core that serves pages and follows reloads (the status page)."""

    def internal_endpoints(self, blueprint: LoadedBlueprint) -> list[InternalEndpoint]: ...

    def apply_gateway(self, gateway: Gateway) -> None: ...


@dataclass(frozen=True)
class RefusedReload:
    """The last reload that failed while a previous version kept serving (for the status page).

    Set where the BlueprintError is caught; cleared by the next blueprint that goes live.
    """

    at: float  # wall time
    file: str  # the blueprint as given (`--set blueprint=FILE`)
    errors: tuple[Diagnostic, ...]  # every error, sorted by file and position


LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})


def files_signature(paths: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    """What a watched set of files looks like now; missing files count as a change too."""
    signature = []
    for path in sorted(paths):
        try:
            stat = path.stat()
            signature.append((str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            signature.append((str(path), -1, -1))
    return tuple(signature)


def body_too_large(request: http.Request, limit: int) -> bool:
    """A request body to stream rather than hold: larger than `limit`, or of unknown length."""
    try:
        size = expected_http_body_size(request)
    except ValueError:
        return False  # mitmproxy answers a malformed length itself
    return size is None or size < 0 or size > limit


_BODY_FIELDS = (b"content-length", b"transfer-encoding")


def announces_body(request: http.Request) -> bool:
    """A request head with Content-Length or Transfer-Encoding: one pass over the raw fields.

    Without either, a request has no body (RFC 9112 6.3): neither `body_too_large` nor
    `streaming.may_refuse_head` can be true, and most requests (GET) skip both."""
    for name, _ in request.headers.fields:
        if name.lower() in _BODY_FIELDS:
            return True
    return False


def is_direct_request(flow: http.HTTPFlow) -> bool:
    """A client talking to the proxy's own address (gateway use) rather than through it."""
    sockname = flow.client_conn.sockname
    if not sockname:
        return False
    if flow.request.port != sockname[1]:
        return False
    host = flow.request.host.lower().strip("[]")
    return host in LOCAL_NAMES or host == str(sockname[0]) or host == socket.gethostname().lower()


def internal_error(flow: http.HTTPFlow, request_id: str) -> http.Response:
    message = "internal gateway error; see the gateway log for this request id"
    ensure_record(flow, request_id).error = message
    return json_error(500, message, request_id)


def drop_head_body(flow: http.HTTPFlow) -> None:
    """A response to HEAD has the GET's headers and no body (RFC 9110 9.3.2).

    Handlers answer HEAD as GET, and mitmproxy sends whatever body an addon sets: on a
    keep-alive connection those bytes would be read as the start of the next response.
    """
    response = flow.response
    if response is None or flow.request.method.upper() != "HEAD" or response.stream or not response.raw_content:
        return
    if "content-length" not in response.headers and "transfer-encoding" not in response.headers:
        response.headers["content-length"] = str(len(response.raw_content))
    response.raw_content = b""


def mark_error(flow: http.HTTPFlow, state: FlowState | None = None) -> None:
    """Flows Backworks answered with an error of its own stand out in mitmweb's list.

    ⚠ for a refusal (4xx: no route, auth, limits), ❌ for a failure (5xx: upstream, handler).
    A mark the user set stays.
    """
    record = state.record if state is not None else record_for(flow)
    if record is None or record.error is None or flow.marked or flow.response is None:
        return
    flow.marked = ":x:" if flow.response.status_code >= 500 else ":warning:"


def buffer_limit(option: str, stream_large_bodies: str | None) -> int:
    """Bytes: `backworks_buffer_limit`, or mitmproxy's `stream_large_bodies` when that is lower."""
    try:
        limit = human.parse_size(option)
    except ValueError:
        raise exceptions.OptionsError(f"backworks_buffer_limit: expected a size such as 512k or 1m, got {option!r}") from None
    if limit is None or limit < 0:
        raise exceptions.OptionsError(f"backworks_buffer_limit: expected a size such as 512k or 1m, got {option!r}")
    mitmproxy_limit = human.parse_size(stream_large_bodies) if stream_large_bodies else None
    return min(limit, mitmproxy_limit) if mitmproxy_limit is not None else limit


class Backworks:
    """mitmproxy addon: option `blueprint`, command `backworks.reload`, and the request hook."""

    def __init__(self, registry: PluginRegistry, plugins: Iterable[Plugin], extensions: Sequence[CoreExtension] = ()) -> None:
        self.registry = registry
        self.plugins: dict[str, Plugin] = {p.name: p for p in plugins}
        for plugin in self.plugins.values():
            plugin.core = self
        self.extensions = list(extensions)
        self.observers: list[FlowObserver] = []  # found again on each blueprint (extensions come late)
        self.in_flight = 0  # requests between their head arriving and their end (for metrics, the status page)
        self.gateway: Gateway | None = None
        self._signature: tuple[tuple[str, int, int], ...] = ()
        self._watched: set[Path] = set()
        self._watcher: asyncio.Task[None] | None = None
        self.relay = StreamRelay()
        self.freezer = Freezer()
        self.refused: RefusedReload | None = None  # the last refused reload, until a good one
        self._served_option: str | None = None  # the `blueprint` value of the version being served
        self.wall: Callable[[], float] = time.time

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "blueprint",
            str | None,  # type: ignore[arg-type]  # Loader.add_option annotates `type`, and takes unions too
            None,
            "Path to the Backworks blueprint (YAML) to serve.",
        )
        loader.add_option(
            "blueprint_watch",
            bool,
            True,
            "Reload the blueprint when it or a handler file it names changes.",
        )
        loader.add_option(
            "blueprint_watch_ms",
            int,
            1000,
            "Milliseconds between checks of the blueprint's files for changes.",
        )
        loader.add_option(
            "backworks_buffer_limit",
            str,
            "1m",
            "The largest body Backworks holds in memory on its endpoints (e.g. 512k, 1m); larger "
            "request and response bodies stream through. mitmproxy's stream_large_bodies, when "
            "set lower, applies instead.",
        )
        loader.add_option(
            "backworks_gc_freeze",
            bool,
            True,
            "Once running, freeze the objects that live as long as the process (mitmproxy, "
            "Backworks, the blueprint) out of Python's garbage collection, so that full "
            "collections do not pause every request in flight for tens of milliseconds.",
        )

    def configure(self, updated: set[str]) -> None:
        if "mode" in updated and any(m.startswith("reverse:") for m in ctx.options.mode):
            # Reverse mode connects upstream eagerly; Backworks answers most requests itself.
            if ctx.options.connection_strategy == "eager":
                ctx.options.connection_strategy = "lazy"
        if "backworks_gc_freeze" in updated:
            if not ctx.options.backworks_gc_freeze:
                self.freezer.stop()
            elif self._watcher is not None and not self.freezer.active:  # turned on while running
                self.freezer.freeze()
        if {"backworks_buffer_limit", "stream_large_bodies"} & updated:
            self.relay.buffer_limit = buffer_limit(ctx.options.backworks_buffer_limit, ctx.options.stream_large_bodies)
        if "blueprint" in updated:
            path = ctx.options.blueprint
            if not path:
                self.gateway = None
                return
            if self.gateway is not None and self.refused is not None and path == self._served_option != self.refused.file:
                # mitmproxy puts the previous value back after our OptionsError (once per nested
                # rollback): that version is still live, and the refusal stays on show.
                return
            try:
                self._swap(compile_blueprint(path, self.registry, self.plugins, pages=[e.internal_endpoints for e in self.extensions]))
            except BlueprintError as exc:
                if self.gateway is not None:  # `set blueprint=...` while serving: the old one stays
                    self.refused = RefusedReload(self.wall(), path, tuple(exc.diagnostics))
                raise exceptions.OptionsError(f"{path}: {exc.render()}") from None
            self._served_option = path

    def running(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        if ctx.options.backworks_gc_freeze:
            self.freezer.freeze()  # after startup: what is alive now lives as long as the process

    async def done(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        self.freezer.stop()
        await self.relay.stop()

    def live_pools(self) -> list:  # list[addons.proxy.Pool]
        """The upstream pools being served (empty without the proxy plugin)."""
        proxy = self.plugins.get("proxy")
        return proxy.live_pools() if proxy is not None and hasattr(proxy, "live_pools") else []

    def _swap(self, gateway: Gateway) -> None:
        previous = self.gateway
        self.gateway = gateway
        self.refused = None
        self._watch_files(gateway.blueprint.files)
        for warning in gateway.warnings:
            logger.warning("%s", warning)
        settings = gateway.blueprint.settings
        for name, plugin in self.plugins.items():
            plugin.apply_blueprint(gateway.blueprint.plugin_configs.get(name), gateway.blueprint)
        for extension in self.extensions:
            extension.apply_gateway(gateway)
        # Capabilities are read here, once per blueprint, never per request.
        self.observers = [
            cast(FlowObserver, o)
            for o in (*self.plugins.values(), *self.extensions)
            if callable(getattr(o, "observe", None)) and getattr(o, "observing", True)
        ]
        verb = "reloaded" if previous is not None else "loaded"
        if previous is not None:
            self.freezer.reloaded()
        logger.info(
            "backworks: %s blueprint %r (%s) with %d endpoint(s)",
            verb,
            settings.name,
            gateway.blueprint.path,
            len(gateway.blueprint.endpoints),
        )

    def reload(self) -> bool:
        """Reload from disk; on failure log every error and keep serving the old version."""
        path = ctx.options.blueprint
        if not path:
            return False
        try:
            gateway = compile_blueprint(path, self.registry, self.plugins, pages=[e.internal_endpoints for e in self.extensions])
        except BlueprintError as exc:
            # Also watch the folders: the fix may be a file that does not exist yet.
            files = self.gateway.blueprint.files if self.gateway else {Path(path).resolve()}
            self._watch_files(files | {f.parent for f in files})
            self.refused = RefusedReload(self.wall(), path, tuple(exc.diagnostics))
            logger.error("backworks: blueprint %s refused, the previous version keeps serving:\n%s", path, exc.render())
            return False
        self._swap(gateway)
        return True

    def _watch_files(self, paths: set[Path]) -> None:
        self._watched = paths
        self._signature = files_signature(paths)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(max(50, ctx.options.blueprint_watch_ms) / 1000)
            if not ctx.options.blueprint_watch or self.gateway is None:
                continue
            if files_signature(self._watched) != self._signature:
                self.reload()

    @command.command("backworks.reload")
    def reload_command(self) -> None:
        """Reload the blueprint now; the old version keeps serving if the new one has errors."""
        if not ctx.options.blueprint:
            raise exceptions.CommandError("no blueprint is set (--set blueprint=FILE)")
        if not self.reload():
            raise exceptions.CommandError("the blueprint has errors (see the event log); the previous version keeps serving")

    @command.command("backworks.help")
    def help_command(self) -> Sequence[str]:
        """Every backworks.* command, with what it does."""
        commands = ctx.master.commands.commands
        return [f"{name} {' '.join(commands[name].signature_help().split()[1:])}".rstrip() + f": {(commands[name].help or '').strip()}" for name in sorted(commands) if name.startswith("backworks.")]

    @command.command("backworks.endpoints")
    def endpoints_command(self) -> Sequence[str]:
        """The endpoints of the blueprint being served, with their handlers."""
        if self.gateway is None:
            return []
        return [f"{e.label} -> {e.spec.handler}" for e in self.gateway.endpoints]

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A body too large to hold goes to the relay, streamed, before mitmproxy reads it.

        So does a body whose head breaks its endpoint's `max_body_size`/`max_header_size`: the
        relay drops it and answers 413/431, and no upstream ever sees it.
        """
        if flow.response or flow.error or not flow.live:
            return
        state = flow_state(flow)
        if not state.in_flight and not state.finished:
            state.in_flight = True
            self.in_flight += 1
        gateway = self.gateway
        if gateway is None or not announces_body(flow.request):
            return  # no body coming: nothing to stream, and nothing over a body limit to keep out
        # A head over its endpoint's limits (backworks_core.limits) is refused before the body is read.
        limited = may_refuse_head(gateway, flow.request)
        if not limited and not body_too_large(flow.request, self.relay.buffer_limit):
            return
        reverse = isinstance(flow.client_conn.proxy_mode, ReverseMode)
        direct = not reverse and is_direct_request(flow)
        try:
            if limited and await refuse_head(gateway, flow, reverse_mode=reverse, direct=direct, relay=self.relay):
                return
            if body_too_large(flow.request, self.relay.buffer_limit):
                await handle_streaming(gateway, flow, reverse_mode=reverse, direct=direct, relay=self.relay)
        except Exception:
            request_id = request_id_for(flow)
            logger.exception("[%s] backworks failed on %s %s", request_id, flow.request.method, flow.request.path.partition("?")[0])  # no query: it may hold keys
            relayed, state.relayed = state.relayed, None
            if relayed is not None:
                flow.request.url = relayed.url
                flow.request.headers = relayed.headers
            flow.request.stream = False
            flow.response = internal_error(flow, request_id)
            return

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = peek_state(flow)
        if state is None:
            return  # a flow Backworks never saw (it came before the blueprint, or was not live)
        if state.relayed is not None:
            restore_relayed(flow)
        stamp_response(flow, state)  # a streamed head goes out before the `response` hook

    def response(self, flow: http.HTTPFlow) -> None:
        state = peek_state(flow)
        if state is not None:
            stamp_response(flow, state)
        drop_head_body(flow)
        mark_error(flow, state)
        self._finished(flow, state)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow, peek_state(flow))

    def _finished(self, flow: http.HTTPFlow, state: FlowState | None) -> None:
        """Once per flow, whichever of `response` and `error` comes first: the observers see it.

        The observers (metrics, status page) are called from here rather than from hooks of
        their own: every hook is a dispatch over all of mitmproxy's addons, on every request.
        """
        if state is None:
            state = flow_state(flow)
        if state.finished:
            return
        state.finished = True
        if state.in_flight:
            state.in_flight = False
            self.in_flight -= 1
        for observer in self.observers:
            try:
                observer.observe(flow)
            except Exception:  # counting must never break the answer
                logger.exception("backworks: %s failed to observe a flow", type(observer).__name__)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        state = flow_state(flow)
        if state.relayed is not None:
            return
        gateway = self.gateway  # one version for the whole request, whatever reloads meanwhile
        if gateway is None:
            return
        reverse = isinstance(flow.client_conn.proxy_mode, ReverseMode)
        try:
            await gateway.handle(flow, reverse_mode=reverse, direct=not reverse and is_direct_request(flow), relay=self.relay)
        except Exception:
            # mitmproxy would log and forward the flow: a bug here must deny instead.
            request_id = request_id_for(flow)
            logger.exception("[%s] backworks failed on %s %s", request_id, flow.request.method, flow.request.path.partition("?")[0])  # no query: it may hold keys
            flow.response = internal_error(flow, request_id)
