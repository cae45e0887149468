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
from tests.integration.harness import mitmweb_options, ROOT, Upstream, free_port, request, wait_for_port, write_atomically
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


# -- the status page: answers by class, a target refusing, a refused reload (issue 21) -----------


STATUS_BLUEPRINT = """
name: shop
plugins:
  proxy:
    config:
      targets:
        - {{name: backend-1, url: "{first}"}}
        - {{name: backend-2, url: "{second}", health_check: {{enabled: false}}}}
      health_check: {{path: /health, interval: 0.3, timeout: 0.5, unhealthy_threshold: 1, healthy_threshold: 1}}
      retries: {{attempts: 1}}
endpoints:
  - {{path: "/users/{{id}}", handler: proxy}}
  - {{path: /hello, handler: static, config: {{static: {{body: hi}}}}}}
  - {{path: /moved, handler: static, config: {{static: {{status: 302, headers: {{Location: /hello}}}}}}}}
"""

TARGET_STATES = "JSON.stringify(Object.fromEntries([...document.querySelectorAll('#pools tr[data-target]')].map(r => [r.dataset.target, r.dataset.state])))"
CLASS_COUNTS = "JSON.stringify(Object.fromEntries([...document.querySelectorAll('#classes [data-class]')].map(c => [c.dataset.class, c.querySelector('.v').textContent])))"


def test_the_status_page_in_chromium_normal_a_target_down_and_a_refused_reload(tmp_path: Path, make_upstream, start_proxy) -> None:
    """Screenshots: test-artifacts/status-normal.png, status-target-down.png, status-reload-refused.png."""
    browser_binary = require(chromium_path(), "chromium")
    first, second = make_upstream("backend-1"), make_upstream("backend-2")
    blueprint = tmp_path / "shop.yaml"
    good = STATUS_BLUEPRINT.format(first=first.url, second=second.url)
    blueprint.write_text(good)
    proxy = start_proxy(blueprint)
    for user in range(10):
        assert proxy.get(f"/users/{user}").status == 200
    assert proxy.get("/moved").status == 302
    assert proxy.get("/nothing").status == 404
    assert proxy.get("/favicon.ico").status == 404  # what a browser asks the API for by itself
    ARTIFACTS.mkdir(exist_ok=True)

    favicon = proxy.admin_get("/favicon.ico")
    assert favicon.status == 204 and favicon.body == b""  # the admin listener answers it quietly

    with Browser(browser_binary) as browser:
        page = browser.open(f"http://127.0.0.1:{proxy.admin_port}/__backworks")
        page.wait_for("document.documentElement.dataset.loaded === 'true'", timeout=10)
        page.wait_for("document.querySelector('#pools tr[data-target=\"backend-1\"] .last-check') !== null", timeout=10)

        # normal: both up; answers by class, in total and per endpoint; the minute's bar
        assert json.loads(page.evaluate(TARGET_STATES)) == {"backend-1": "up", "backend-2": "up"}
        assert json.loads(page.evaluate(CLASS_COUNTS)) == {"2xx": "10", "3xx": "1", "4xx": "2", "5xx": "0", "none": "0"}
        cells = page.evaluate("[...document.querySelector('#endpoints tr[data-endpoint=\"GET /users/{id}\"]').cells].map(c => c.textContent)")
        assert cells[2:7] == ["10", "10", "0", "0", "0"]  # requests, 2xx, 3xx, 4xx, 5xx/none
        assert page.evaluate("document.querySelectorAll('#chart .bar').length") == 15
        # the 13 answers are in the last two bars: the minute may turn between the requests and the page's load
        bars = page.evaluate("[...document.querySelectorAll('#chart .bar')].map(b => Number(b.dataset.requests))")
        assert sum(bars[-2:]) == 13 and sum(bars[:-2]) == 0, bars
        assert page.evaluate("document.querySelectorAll('#chart .bar.current').length") == 1
        check = page.evaluate("document.querySelector('#pools tr[data-target=\"backend-1\"] .last-check').textContent")
        assert re.fullmatch(r"checked \d\d:\d\d:\d\d: passed", check), check
        assert page.evaluate("document.querySelector('#pools tr[data-target=\"backend-2\"] .last-check').textContent") == "no health check"
        errors = page.evaluate("[...document.querySelectorAll('#errors tbody tr')].map(r => r.cells[3].textContent)")
        assert errors == ["/nothing"]  # the browser's own /favicon.ico is not listed
        assert page.evaluate("getComputedStyle(document.getElementById('banner-reload')).display") == "none"
        page.screenshot(ARTIFACTS / "status-normal.png")

        # a target down: it refuses connections and nothing checks it; its own failures say so
        second.stop()
        answers = [proxy.get(f"/users/{user}").status for user in range(10)]  # a connect failure is retried on backend-1
        page.wait_for("document.querySelector('#pools tr[data-target=\"backend-2\"]').dataset.state === 'down'", timeout=10)
        row = page.evaluate("document.querySelector('#pools tr[data-target=\"backend-2\"]').innerText")
        assert "no answer to the last" in row and "connect failed" in row and "unchecked" in row
        assert "degraded" not in row
        assert page.evaluate("document.getElementById('pools-count').textContent") == "1 pool · 1/2 targets up · 1 down"
        expected = {"2xx": str(10 + answers.count(200)), "5xx": str(answers.count(502) + answers.count(503))}
        page.wait_for(f"(c => c['2xx'] === {json.dumps(expected['2xx'])} && c['5xx'] === {json.dumps(expected['5xx'])})({CLASS_COUNTS.replace('JSON.stringify', '')})", timeout=5)
        page.screenshot(ARTIFACTS / "status-target-down.png")

        # a refused reload: the banner says when, which file, the errors with file:line:col
        write_atomically(blueprint, good.replace("handler: proxy}", "handler: proxi}"))
        page.wait_for("document.getElementById('banner-reload').dataset.state === 'refused'", timeout=15)
        banner = page.evaluate("document.getElementById('banner-reload').innerText")
        assert re.search(r"Reload refused at \d\d:\d\d:\d\d: " + re.escape(str(blueprint)) + r" has 1 error; the previous version keeps serving", banner), banner
        assert re.search(re.escape(str(blueprint)) + r":\d+:\d+: endpoints\[0\]\.handler", banner), banner
        assert page.evaluate("getComputedStyle(document.getElementById('banner-reload')).display") == "block"
        assert proxy.get("/users/1").status in (200, 502)  # the previous version still serves
        page.screenshot(ARTIFACTS / "status-reload-refused.png")
        status = proxy.admin_get("/__backworks/api/status").json
        assert status["blueprint"]["reload"]["state"] == "refused" and status["blueprint"]["reload"]["file"] == str(blueprint)

        # the next good load clears it
        write_atomically(blueprint, good + "  - {path: /new, handler: static, config: {static: {body: new}}}\n")
        page.wait_for("document.getElementById('banner-reload').dataset.state === 'ok'", timeout=15)
        assert page.evaluate("getComputedStyle(document.getElementById('banner-reload')).display") == "none"
        assert page.errors == []
    assert proxy.admin_get("/__backworks/api/status").json["blueprint"]["reload"]["state"] == "ok"
    assert proxy.get("/new").status == 200
