"""Request ids, the status page in a real Chromium, and mitmweb, through a real mitmdump/mitmweb.

The status page test keeps its screenshots in test-artifacts/ (dashboard-up.png, dashboard-down.png).
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from tests.integration.browser import Browser, chromium_path
from tests.integration.harness import mitmweb_options, ROOT, Upstream, free_port, request, wait_for_port
from tests.integration.prometheus import require

pytestmark = pytest.mark.integration

ARTIFACTS = ROOT / "test-artifacts"
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def pool_blueprint(folder: Path, targets: list[Upstream], extra: str = "", dashboard: str = "") -> Path:
    lines = "\n".join(f'        - {{name: {t.name}, url: "{t.url}"}}' for t in targets)
    text = textwrap.dedent(
        """
        name: shop
        {dashboard}
        plugins:
          proxy:
            config:
              targets:
        {lines}
              health_check: {{path: /health, interval: 0.3, timeout: 0.5, unhealthy_threshold: 1, healthy_threshold: 1}}
              retries: {{attempts: 1}}
              transform_request: {{headers: {{X-Via: backworks}}}}
          auth:
            config:
              jwt_secret: "0123456789abcdef0123456789abcdef"
        middlewares:
          - name: members
            plugin: auth
            config: {{path: "/members*"}}
        endpoints:
          - {{path: "/users/{{id}}", handler: proxy}}
          - {{path: /members, handler: proxy}}
          - {{path: /hello, handler: static, config: {{static: {{body: hi}}}}}}
        {extra}
        """
    ).format(lines=lines, dashboard=dashboard, extra=extra)
    path = folder / "blueprint.yaml"
    path.write_text(text)
    return path


def token(subject: str) -> str:
    import jwt

    return jwt.encode({"sub": subject, "exp": 4102444800}, "0123456789abcdef0123456789abcdef", algorithm="HS256")


# -- request ids ----------------------------------------------------------------------------


def last_seen(upstream: Upstream, path: str) -> dict[str, str]:
    """The headers of the last request for `path` (health probes reach the upstream too)."""
    return [r for r in upstream.received if r.path == path][-1].headers


def test_request_ids_and_trace_context_reach_the_upstream_and_come_back(tmp_path: Path, make_upstream, start_proxy) -> None:
    upstream = make_upstream("backend-1")
    proxy = start_proxy(pool_blueprint(tmp_path, [upstream]))

    # None offered: one is made, sent upstream with a trace that starts here, and returned.
    reply = proxy.get("/users/1")
    request_id = reply.header("X-Request-ID")
    assert request_id and HEX32.match(request_id)
    seen = last_seen(upstream, "/users/1")
    assert seen["X-Request-ID"] == request_id
    assert re.fullmatch(rf"00-{request_id}-[0-9a-f]{{16}}-00", seen["traceparent"])

    # The client's own id is kept end to end.
    reply = proxy.get("/users/2", headers={"X-Request-ID": "client-abc-123"})
    assert reply.header("X-Request-ID") == "client-abc-123"
    assert last_seen(upstream, "/users/2")["X-Request-ID"] == "client-abc-123"

    # A W3C traceparent goes on unchanged, with its tracestate; its trace id names the request.
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    reply = proxy.get("/users/3", headers={"traceparent": incoming, "tracestate": "vendor=x"})
    assert reply.header("X-Request-ID") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert last_seen(upstream, "/users/3")["traceparent"] == incoming
    assert last_seen(upstream, "/users/3")["tracestate"] == "vendor=x"

    # A malformed id is not echoed (it could carry anything): a new one is made.
    reply = proxy.get("/users/4", headers={"X-Request-ID": "bad id with spaces"})
    assert HEX32.match(reply.header("X-Request-ID") or "")


def test_the_request_id_is_in_every_error_body_and_log_line(tmp_path: Path, make_upstream, start_proxy) -> None:
    upstream = make_upstream("backend-1")
    proxy = start_proxy(pool_blueprint(tmp_path, [upstream]))
    for path, status in (("/nothing", 404), ("/members", 401)):
        reply = proxy.get(path, headers={"X-Request-ID": f"rid-{status}"})
        assert reply.status == status
        assert reply.json["request_id"] == reply.header("X-Request-ID") == f"rid-{status}"
    upstream.stop()
    reply = proxy.get("/users/9", headers={"X-Request-ID": "rid-upstream-down"})
    assert reply.status in (502, 503)
    assert reply.json["request_id"] == "rid-upstream-down"
    log = proxy.wait_for_log("[rid-upstream-down]")
    assert "[rid-401] auth denied 401" in log
    lines = [line for line in log.splitlines() if "rid-upstream-down" in line]
    assert lines and all("[rid-upstream-down]" in line for line in lines)


# -- the status page ------------------------------------------------------------------------


def test_the_status_page_in_chromium_follows_a_target_going_down(tmp_path: Path, make_upstream, start_proxy) -> None:
    browser_binary = require(chromium_path(), "chromium")
    first, second = make_upstream("backend-1"), make_upstream("backend-2")
    proxy = start_proxy(pool_blueprint(tmp_path, [first, second]))
    for user in range(20):
        assert proxy.get(f"/users/{user}").status == 200
    assert proxy.get("/members").status == 401
    ARTIFACTS.mkdir(exist_ok=True)

    with Browser(browser_binary) as browser:
        page = browser.open(f"http://127.0.0.1:{proxy.admin_port}/__backworks")
        page.wait_for("document.documentElement.dataset.loaded === 'true'", timeout=10)
        states = "JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-target]')].map(r => [r.dataset.target, r.dataset.state])))"
        assert json.loads(page.evaluate(states)) == {"backend-1": "up", "backend-2": "up"}
        text = page.evaluate("document.body.innerText")
        assert "shop" in text and "/users/{id}" in text and "GET /hello" in text
        assert "not authenticated" in page.evaluate("document.getElementById('errors').innerText")
        page.screenshot(ARTIFACTS / "dashboard-up.png")
        page.evaluate("window.__sameDocument = true")

        second.stop()
        page.wait_for("document.querySelector('[data-target=\"backend-2\"]').dataset.state === 'down'", timeout=15)
        assert page.evaluate("window.__sameDocument") is True  # updated live, not reloaded
        assert json.loads(page.evaluate(states)) == {"backend-1": "up", "backend-2": "down"}
        row = page.evaluate("document.querySelector('[data-target=\"backend-2\"]').innerText")
        assert "unhealthy" in row
        page.screenshot(ARTIFACTS / "dashboard-down.png")
    assert (ARTIFACTS / "dashboard-down.png").stat().st_size > 10_000

    status = proxy.admin_get("/__backworks/api/status").json
    assert [t["state"] for t in status["pools"][0]["targets"]] == ["up", "down"]
    assert status["totals"]["requests"] >= 21
    assert [e["label"] for e in status["endpoints"]] == ["GET /users/{id}", "GET /members", "GET /hello"]


def test_the_deprecated_dashboard_port_becomes_the_admin_port(tmp_path: Path, make_upstream, start_proxy) -> None:
    port = free_port()
    blueprint = pool_blueprint(tmp_path, [make_upstream("backend-1")], dashboard=f"dashboard: {{port: {port}}}")
    proxy = start_proxy(blueprint, "--set", "backworks_admin=")  # the blueprint decides
    log = proxy.wait_for_log(f"admin listener on http://127.0.0.1:{port}")
    assert "warning: dashboard.port: deprecated" in log
    page = request("GET", "/__backworks", port=port)
    assert page.status == 200 and b"/__backworks/api/status" in page.body
    assert request("GET", "/__backworks/api/status", port=port).json["blueprint"]["name"] == "shop"
    assert proxy.get("/__backworks").status == 404  # not on the proxy listener


# -- mitmweb --------------------------------------------------------------------------------


def test_mitmweb_shows_decisions_marks_errors_and_lists_the_commands(tmp_path: Path, make_upstream, start_proxy) -> None:
    first, second = make_upstream("backend-1"), make_upstream("backend-2")
    web_port = free_port()
    extra, headers = mitmweb_options(web_port)
    proxy = start_proxy(pool_blueprint(tmp_path, [first, second]), *extra, tool="mitmweb")
    assert proxy.get("/members", headers={"Authorization": f"Bearer {token('alice')}"}).status == 200
    assert proxy.get("/members").status == 401
    assert proxy.get("/nothing").status == 404
    wait_for_port(web_port)

    flows = json.loads(request("GET", "/flows", port=web_port, headers=headers).body)
    by_path = {f["request"]["path"]: f for f in flows if "request" in f}
    members = [f for f in flows if f["request"]["path"] == "/members"]
    allowed = next(f for f in members if f["response"]["status_code"] == 200)
    denied = next(f for f in members if f["response"]["status_code"] == 401)
    comment = allowed["comment"]
    for part in ('endpoint="GET /members"', "handler=proxy", "auth=alice", "target=backend-", "attempts=1", "transforms=request:1+response:0"):
        assert part in comment, comment
    assert not allowed["marked"]
    warning = (":warning:", "\u26a0")  # mitmweb's flow list sends the emoji itself
    assert denied["marked"] in warning and "auth=denied:missing" in denied["comment"]
    assert by_path["/nothing"]["marked"] in warning

    commands = json.loads(request("GET", "/commands", port=web_port, headers=headers).body)
    ours = {name: spec for name, spec in commands.items() if name.startswith("backworks.")}
    assert {"backworks.reload", "backworks.endpoints", "backworks.targets", "backworks.breaker.reset", "backworks.status", "backworks.help"} <= set(ours)
    assert all(spec["help"].strip() for spec in ours.values()), {n: s["help"] for n, s in ours.items()}
