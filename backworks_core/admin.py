"""The admin listener's rules: where it listens, and what the blueprint is warned about.

The status page, its JSON API and the Prometheus metrics tell anyone who reads them the
blueprint's targets, pools, error messages and traffic. Like Envoy's admin interface and Kong's
Admin API they live on a listener of their own, on loopback by default (`server.admin`), never on
the listener that serves the API unless the blueprint says so. These functions decide; the
admin addon (addons/admin.py) and the gateway compiler apply the decisions.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from backworks_core.diagnostics import Diagnostic

if TYPE_CHECKING:
    from backworks_core.gateway import EndpointPlan, MiddlewarePlan
    from backworks_core.loader import LoadedBlueprint
    from backworks_core.pages import InternalEndpoint

OPTION = "backworks_admin"
OFF: Final = "off"
AUTH_PLUGIN = "auth"
METRICS_HANDLER = "metrics"


@dataclass(frozen=True)
class AdminAddress:
    host: str
    port: int  # 0: any free port

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_admin_option(value: str) -> AdminAddress | Literal["off"] | None:
    """`--set backworks_admin=…`: "" (the blueprint decides), "off", "HOST:PORT", "[V6]:PORT" or "PORT".

    Raises ValueError with what is expected.
    """
    text = value.strip()
    if not text:
        return None
    if text.lower() == OFF:
        return OFF
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{OPTION}: write an IPv6 address in brackets, e.g. [::1]:9901; got {value!r}")
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{OPTION}: expected HOST:PORT (e.g. 127.0.0.1:9901, port 0 for any free one), a port, or off; got {value!r}")
    return AdminAddress(host, int(port_text))


def _legacy_ports(blueprint: LoadedBlueprint) -> list[tuple[tuple[str | int, ...], str, int]]:
    """(where, host, port) of the deprecated per-page ports, in the order they give way."""
    found: list[tuple[tuple[str | int, ...], str, int]] = []
    dashboard = blueprint.settings.dashboard
    if dashboard.port is not None:
        found.append((("dashboard", "port"), dashboard.host, dashboard.port))
    metrics = blueprint.plugin_configs.get(METRICS_HANDLER)
    port = getattr(metrics, "port", None)
    if isinstance(port, int):
        found.append((blueprint.plugin_locs.get(METRICS_HANDLER, ("plugins", "metrics", "config")) + ("port",), str(getattr(metrics, "host", "127.0.0.1")), port))
    return found


def blueprint_admin_address(blueprint: LoadedBlueprint) -> AdminAddress | None:
    """Where the blueprint puts the admin listener, or None when `server.admin.enabled` is false.

    The deprecated `dashboard.port` / `plugins.metrics.config.port` (the first one written, with
    its `host`) stand in for `server.admin.port` / `host` when those are not written.
    """
    admin = blueprint.settings.server.admin
    if not admin.enabled:
        return None
    host, port = admin.host, admin.port
    legacy = _legacy_ports(blueprint)
    if legacy and "port" not in admin.model_fields_set:
        port = legacy[0][2]
        if "host" not in admin.model_fields_set:
            host = legacy[0][1]
    return AdminAddress(host, port)


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_covers(path: str, middlewares: Sequence[MiddlewarePlan]) -> bool:
    """An auth middleware's own path filter selects GET (and so HEAD) of this path."""
    literal = path.rstrip("/") or "/"  # the pages' paths are literal and canonical already
    return any(m.spec.plugin == AUTH_PLUGIN and m.has_filter and m.filter_matches("GET", literal) for m in middlewares)


def _auth_applies(endpoint: EndpointPlan, middlewares: Sequence[MiddlewarePlan]) -> bool:
    """An auth middleware runs for GET on a declared endpoint: listed by it, or by its own filter."""
    listed = any(m.spec.plugin == AUTH_PLUGIN and m.name in endpoint.referenced for m in middlewares)
    return listed or auth_covers(endpoint.template, middlewares)


def admin_diagnostics(
    blueprint: LoadedBlueprint,
    endpoints: Sequence[EndpointPlan],
    middlewares: Sequence[MiddlewarePlan],
    pages: Sequence[InternalEndpoint],
) -> list[Diagnostic]:
    """Located warnings: deprecated page ports, admin pages open to the API's clients, a public admin address."""
    warnings: list[Diagnostic] = []
    admin = blueprint.settings.server.admin
    address = blueprint_admin_address(blueprint)
    legacy = _legacy_ports(blueprint)
    for i, (loc, host, port) in enumerate(legacy):
        key = ".".join(str(part) for part in loc)
        if "port" in admin.model_fields_set or not admin.enabled:
            mapped = f"server.admin ({address or 'disabled'}) is used instead; remove {key}"
        elif i == 0:
            mapped = f"it is used as the admin listener's port: write `server: {{admin: {{port: {port}}}}}` instead"
        else:
            mapped = f"the admin listener is on {legacy[0][2]} ({'.'.join(str(p) for p in legacy[0][0])}); remove {key}"
        warnings.append(
            blueprint.diagnostic(
                loc,
                "deprecated (removed in the next release): the status page and metrics are served "
                f"together on the admin listener (server.admin); {mapped}",
                severity="warning",
            )
        )
    if admin.expose_on_api:
        open_paths = [page.path for page in pages if not auth_covers(page.path, middlewares)]
        if open_paths:
            warnings.append(
                blueprint.diagnostic(
                    ("server", "admin", "expose_on_api"),
                    f"{', '.join(open_paths)} {'is' if len(open_paths) == 1 else 'are'} served on the API's listener to any client (the status page shows "
                    "targets, errors and traffic): add an auth middleware whose path filter matches them "
                    f"({_suggested_globs(open_paths)}), or remove expose_on_api and read them "
                    "on the admin listener",
                    severity="warning",
                )
            )
    for endpoint in endpoints:
        if endpoint.spec.handler == METRICS_HANDLER and not _auth_applies(endpoint, middlewares):
            warnings.append(
                blueprint.diagnostic(
                    ("endpoints", endpoint.spec.index, "handler"),
                    f"{endpoint.template} serves the gateway's metrics (targets, pools, traffic) to any client of the "
                    "API's listener: list an auth middleware in its `middleware`, or drop the endpoint and scrape "
                    "the admin listener (server.admin)",
                    severity="warning",
                )
            )
    if address is not None and not is_loopback(address.host):
        warnings.append(
            blueprint.diagnostic(
                ("server", "admin", "host") if "host" in admin.model_fields_set or not legacy else legacy[0][0],
                f"the admin listener ({address}) has no authentication and is not on loopback: anyone who reaches "
                "it reads the status page and metrics; keep it on 127.0.0.1 or restrict it with a firewall",
                severity="warning",
            )
        )
    return warnings


def _suggested_globs(paths: Sequence[str]) -> str:
    """Auth filter globs for `paths`: a path with others below it as `path*`, the others as they are."""
    globs = []
    for path in paths:
        if any(path.startswith(other + "/") for other in paths):
            continue  # covered by the glob of the path above it
        below = any(other.startswith(path.rstrip("/") + "/") for other in paths)
        globs.append(f'`path: "{path}*"`' if below else f'`path: "{path}"`')
    return ", ".join(globs)
