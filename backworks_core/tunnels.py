"""Which CONNECT tunnels the blueprint answers itself, so that regular mode need not reach the host.

A client that uses Backworks as its proxy opens one tunnel (CONNECT host:port) per HTTPS site.
mitmproxy connects to that host as soon as the tunnel opens (`connection_strategy: eager`),
and answers 502 when it cannot: a recording served offline would answer nobody. The blueprint
answers the requests in such a tunnel itself when

- an endpoint's `host:` glob matches the host (the blueprint names it: a capture of several
  sites writes `host:` on every endpoint), or
- `server.unmatched` is `not_found` (what a generated blueprint sets): every request is then
  answered by an endpoint or by Backworks' 404, on any host.

For those tunnels mitmproxy connects only when a request inside needs the real host (a mock
example with `passthrough: true`, a request no endpoint of a named host matches under
`server.unmatched: passthrough`). Other hosts are tunnelled as before.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from backworks_core.exposure import normalize_host


@dataclass(frozen=True)
class TunnelScope:
    """The hosts whose tunnels open without an upstream connection: pure data, built per blueprint."""

    every_host: bool = False
    globs: tuple[str, ...] = ()  # endpoints' `host:` globs, lower-case, in blueprint order, unique

    @classmethod
    def build(cls, host_globs: Iterable[str | None], unmatched: str) -> TunnelScope:
        """From the endpoints' `host:` values (None: host-less) and the effective `server.unmatched`."""
        globs = tuple(dict.fromkeys(glob.lower() for glob in host_globs if glob))
        return cls(every_host=unmatched == "not_found", globs=globs)

    def __bool__(self) -> bool:
        return self.every_host or bool(self.globs)

    def serves(self, host: str) -> bool:
        """Does the blueprint answer the requests of a tunnel to `host` (a CONNECT's host, any port)?"""
        if self.every_host:
            return True
        name = normalize_host(host)
        return any(fnmatch.fnmatchcase(name, glob) for glob in self.globs)

    def describe(self) -> str:
        """For the startup line: which tunnels open without connecting to their host."""
        if self.every_host:
            return "every host (server.unmatched: not_found: the blueprint answers every request)"
        shown = ", ".join(self.globs[:5])
        more = f" and {len(self.globs) - 5} more" if len(self.globs) > 5 else ""
        return f"the hosts its endpoints name ({shown}{more})"
