"""The flow names the upstream target that answered: mitmproxy's console line and mitmweb.

In reverse mode mitmproxy points every request at the mode's upstream (`backworks run`: the
placeholder http://127.0.0.1:9), and in regular mode at the host the client addressed. A proxy
endpoint sends the request to a pool target itself (backworks_core.upstream), so the flow would go
on naming the placeholder: `GET http://127.0.0.1:9/api/users` in mitmdump's lines and mitmweb's
URL column, though :3001 answered.

- The proxy handler names the target of its last try (`answered_by`, a per-flow note).
- `ShownTarget.response`, after every Backworks addon (the observers, the capture, the metrics
  have seen the request as it came): the request's scheme, host and port become the target's, and
  what they were is kept in `flow.metadata` (saved with the flow). Host and port are written to
  `request.data`, not through mitmproxy's setters, which would rewrite the Host header (HTTP/2:
  the authority) as well: the headers stay as the client sent them and the target got them, and
  the path stays the client's.
- `ReplayedRequest.requestheaders`, before the core: a replay (`flow.is_replay ==
  "request"`, mitmweb's *Replay*, `mitmdump -C`) gets its scheme, host and port back, so that it
  goes through routing, the regular-mode exposure guard and passthrough as the original did
  (addressed to a pool target it would be refused). A URL edited since is left as edited.
- `ShownTarget.running`, in mitmdump: the console line names the target too, after the URL
  (`GET http://127.0.0.1:3001/api/users → users/backend-2`). mitmdump's `Dumper` prints only the
  URL and has no hook for more, so its class is swapped for a subclass that adds the name (kept
  in the metadata) to the request line: the same lines, no extra one per request; where the
  Dumper is not mitmproxy's own (another version, a script's), it is left alone. mitmweb shows
  the name in the comment (`target=NAME`).
"""

from __future__ import annotations

import functools
import logging
import weakref
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import ctx, http
from mitmproxy.addons.dumper import Dumper
from mitmproxy.utils import strutils

logger = logging.getLogger(__name__)

SHOWN = "backworks.shown_target"  # flow.metadata: {"target": [scheme, host, port], "request": [...], "name": "pool/target"}

Address = tuple[str, str, int]

# The last try's target of a live flow, from the proxy handler to the `response` hook (weak keys:
# an entry goes with its flow; never in the metadata, which a replay would carry over).
_ANSWERED_BY: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[Address, str]] = weakref.WeakKeyDictionary()


def answered_by(flow: http.HTTPFlow, origin: str, name: str = "") -> None:
    """Called by the proxy handler: `origin` (`scheme://host:port`) answered, or failed last;
    `name` is the target as logs name it (`backend-2`, `pool/backend-2` in a named pool)."""
    address = parse_origin(origin)
    if address is not None:
        _ANSWERED_BY[flow] = (address, name)


@functools.lru_cache(maxsize=256)  # a pool's few origins, parsed once rather than per request
def parse_origin(origin: str) -> Address | None:
    try:
        parts = urlsplit(origin)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.scheme, parts.hostname, port


def request_address(request: http.Request) -> Address:
    return request.scheme, request.host, request.port


def show_target(request: http.Request, target: Address) -> dict[str, list[Any]] | None:
    """Point the request's URL at `target` without touching its headers; the metadata to keep
    (None when it already names the target)."""
    current = request_address(request)
    if current == target:
        return None
    _set_address(request, target)
    return {"target": list(target), "request": list(current)}


def restore(request: http.Request, shown: Any) -> bool:
    """The request's URL as it came, when it still names the target shown (not edited since)."""
    try:
        target = _address(shown["target"])
        original = _address(shown["request"])
    except (KeyError, TypeError, ValueError):
        return False  # not ours: leave the flow as it is
    if request_address(request) != target:
        return False
    _set_address(request, original)
    return True


def _address(value: Any) -> Address:
    scheme, host, port = value
    if not (isinstance(scheme, str) and isinstance(host, str) and isinstance(port, int)):
        raise ValueError(value)
    return scheme, host, port


def _set_address(request: http.Request, address: Address) -> None:
    scheme, host, port = address
    request.scheme = scheme  # the setter leaves the headers alone
    request.data.host = host  # `request.host = …` and `.port = …` rewrite Host/authority too
    request.data.port = port


class ShownTarget:
    """mitmproxy addon, after every other Backworks addon: the flow names the target that answered."""

    def running(self) -> None:
        dumper = ctx.master.addons.get("dumper")
        if type(dumper) is Dumper:  # mitmdump's own, exactly: a subclass may print its own way
            dumper.__class__ = NamingDumper  # same state and place in the chain; see the module doc

    def response(self, flow: http.HTTPFlow) -> None:
        answered = _ANSWERED_BY.pop(flow, None)  # once: a replay of this flow names its own target
        if answered is None:
            return
        target, name = answered
        shown = show_target(flow.request, target)
        if shown is not None:
            flow.metadata[SHOWN] = shown
        if name:
            flow.metadata.setdefault(SHOWN, {})["name"] = name


def shown_name(flow: http.HTTPFlow) -> str | None:
    """The name of the target that answered the flow, as `ShownTarget` kept it."""
    shown = flow.metadata.get(SHOWN)
    name = shown.get("name") if isinstance(shown, dict) else None
    return name if isinstance(name, str) and name else None


class NamingDumper(Dumper):
    """mitmproxy's Dumper whose request line ends with the name of the target that answered."""

    def _echo_request_line(self, flow: http.HTTPFlow) -> None:
        name = shown_name(flow)
        if name is None:
            return super()._echo_request_line(flow)
        self.__dict__["_line_suffix"] = " " + self.style("→ " + strutils.escape_control_characters(name, keep_spacing=False), dim=True)
        try:
            super()._echo_request_line(flow)
        finally:
            self.__dict__.pop("_line_suffix", None)

    def echo(self, text: str, ident: int | None = None, **style: Any) -> None:
        suffix = self.__dict__.pop("_line_suffix", None)  # the request line is the first echo
        super().echo(text if suffix is None else text + suffix, ident, **style)


class ReplayedRequest:
    """mitmproxy addon, before the core: a replay goes through Backworks as the original did."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """The first hook of every request, a replayed one included."""
        if flow.is_replay != "request":
            return
        _ANSWERED_BY.pop(flow, None)
        shown = flow.metadata.pop(SHOWN, None)
        if shown is not None and restore(flow.request, shown):
            logger.debug("replay: %s %s sent as it came, not to the target shown", flow.request.method, flow.request.pretty_url)
