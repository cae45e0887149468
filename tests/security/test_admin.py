"""The admin listener (docs/security.md, section 5), through a real mitmdump.

The status page, its JSON API and the metrics tell whoever reads them the targets, pools,
errors and traffic of the gateway. They answer on the admin listener (server.admin, 127.0.0.1)
and not on the API's listener, whatever spelling a client tries; the opt-in
(server.admin.expose_on_api) serves them on both, with a located warning unless an auth
middleware's filter covers them. A taken admin port is a warning: the API is served all the same.
A reload that changes server.admin.port moves the listener.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Proxy, Upstream, free_port, request, write_atomically

pytestmark = pytest.mark.integration

PAGES = ("/__backworks", "/__backworks/api/status", "/metrics")
# What a client might try on the API's listener to reach them anyway.
SPELLINGS = (
    *PAGES,
    "/__backworks/",
    "/__backworks/api/status/",
    "/metrics/",
    "/metrics?x=1",
    "//metrics",
    "/./metrics",
    "/%5F%5Fbackworks/api/status",
    "/__backworks%2Fapi%2Fstatus",
    "/METRICS",
)
SECRET = "kX9v2QmZ7rT4wLp8sN3bY6cH1jF5dG0aRq"


def blueprint(folder: Path, upstream: Upstream, server: dict[str, Any] | None = None, middlewares: list[dict[str, Any]] | None = None) -> Path:
    document: dict[str, Any] = {
        "name": "admin-test",
        "server": server or {},
        "plugins": {
            "metrics": {},
            "auth": {"config": {"jwt_secret": SECRET}},
            "proxy": {"config": {"targets": [{"name": "api-1", "url": upstream.url}]}},
        },
        "middlewares": middlewares or [],
        "endpoints": [
            {"path": "/hello", "handler": "static", "config": {"static": {"body": {"hello": "world"}}}},
            {"path": "/api/{rest:path}", "handler": "proxy"},
        ],
    }
    path = folder / "blueprint.yaml"
    path.write_text(json.dumps(document))  # JSON is YAML
    return path


def raw_get(port: int, path: str) -> int:
    """The status of GET `path` sent as written (http.client does not resolve dot segments)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def assert_admin_answers(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            status = request("GET", "/__backworks/api/status", port=port)
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, f"nothing listens on the admin port {port}"
            time.sleep(0.05)
    assert status.status == 200 and status.json["blueprint"]["name"] == "admin-test"
    page = request("GET", "/__backworks", port=port)
    assert page.status == 200 and b"/__backworks/api/status" in page.body
    metrics = request("GET", "/metrics", port=port)
    assert metrics.status == 200 and "backworks_blueprint_info" in metrics.body.decode()


@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_the_pages_are_not_on_the_api_listener_but_on_the_admin_one(tmp_path: Path, upstream: Upstream, start_proxy, mode: str) -> None:
    extra = ("--mode", f"reverse:{upstream.url}") if mode == "reverse" else ()
    proxy: Proxy = start_proxy(blueprint(tmp_path, upstream), *extra)
    assert proxy.get("/hello").status == 200
    assert_admin_answers(proxy.admin_port)
    for path in SPELLINGS:
        status = raw_get(proxy.port, path)
        assert status in (400, 404), (path, status)
    for path in PAGES:  # HEAD as well
        assert request("HEAD", path, port=proxy.port).status == 404, path
    assert not [p for p in upstream.received if "backworks" in p.path.lower() or "metrics" in p.path.lower()]
    log = proxy.log()
    assert f"admin listener on http://127.0.0.1:{proxy.admin_port}" in log
    assert "expose_on_api" not in log


def test_the_opt_in_serves_them_on_both_with_a_located_warning(tmp_path: Path, upstream: Upstream, start_proxy) -> None:
    path = blueprint(tmp_path, upstream, server={"admin": {"expose_on_api": True}})
    proxy: Proxy = start_proxy(path, "--mode", f"reverse:{upstream.url}")
    for page in PAGES:
        assert proxy.get(page).status == 200, page
    assert_admin_answers(proxy.admin_port)
    log = proxy.log()
    assert f"{path}:1:" in log and "warning: server.admin.expose_on_api: /metrics, /__backworks, /__backworks/api/status are served on the API's listener to any client" in log


def test_the_opt_in_under_an_auth_middleware_has_no_warning(tmp_path: Path, upstream: Upstream, start_proxy) -> None:
    middlewares = [
        {"name": "ops", "plugin": "auth", "config": {"path": "/__backworks*"}},
        {"name": "scrape", "plugin": "auth", "config": {"path": "/metrics"}},
    ]
    path = blueprint(tmp_path, upstream, server={"admin": {"expose_on_api": True}}, middlewares=middlewares)
    proxy: Proxy = start_proxy(path, "--mode", f"reverse:{upstream.url}")
    for page in PAGES:
        assert proxy.get(page).status == 401, page  # the API's clients need a token
    assert_admin_answers(proxy.admin_port)  # the admin listener is loopback-only and needs none
    assert "expose_on_api" not in proxy.log()


@pytest.mark.parametrize("how", ["option", "blueprint"])
def test_a_taken_admin_port_is_a_warning_and_the_api_is_served(tmp_path: Path, upstream: Upstream, start_proxy, how: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        if how == "option":
            proxy: Proxy = start_proxy(blueprint(tmp_path, upstream), "--mode", f"reverse:{upstream.url}", "--set", f"backworks_admin=127.0.0.1:{busy}")
        else:
            path = blueprint(tmp_path, upstream, server={"admin": {"port": busy}})
            proxy = start_proxy(path, "--mode", f"reverse:{upstream.url}", "--set", "backworks_admin=")
        log = proxy.wait_for_log("admin listener is not listening")
        assert proxy.get("/hello").json == {"hello": "world"}
        assert proxy.get("/api/x").status == 200
        line = next(line for line in log.splitlines() if "admin listener is not listening" in line)
        assert f"http://127.0.0.1:{busy}" in line and "server.admin.port" in line and "backworks_admin=" in line
        assert "[error]" not in log.lower() and "Traceback" not in log
        assert proxy.process is not None and proxy.process.poll() is None  # still running


def test_the_default_admin_port_comes_from_the_blueprint(tmp_path: Path, upstream: Upstream, start_proxy) -> None:
    port = free_port()
    proxy: Proxy = start_proxy(blueprint(tmp_path, upstream, server={"admin": {"port": port}}), "--set", "backworks_admin=")
    proxy.wait_for_log(f"admin listener on http://127.0.0.1:{port}")
    assert_admin_answers(port)


def test_port_zero_takes_any_free_port_and_logs_it(tmp_path: Path, upstream: Upstream, start_proxy) -> None:
    proxy: Proxy = start_proxy(blueprint(tmp_path, upstream), "--set", "backworks_admin=127.0.0.1:0")
    log = proxy.wait_for_log("admin listener on http://127.0.0.1:")
    port = int(log.split("admin listener on http://127.0.0.1:", 1)[1].split()[0])
    assert port != 0
    assert_admin_answers(port)


def test_the_option_off_turns_it_off(tmp_path: Path, upstream: Upstream, start_proxy) -> None:
    proxy: Proxy = start_proxy(blueprint(tmp_path, upstream), "--set", "backworks_admin=off")
    assert proxy.get("/hello").status == 200
    with pytest.raises(ConnectionRefusedError):
        request("GET", "/metrics", port=proxy.admin_port)
    assert "admin listener on" not in proxy.log()


def test_a_reload_that_changes_the_admin_port_moves_the_listener(tmp_path: Path, upstream: Upstream, start_proxy) -> None:
    first, second = free_port(), free_port()
    path = blueprint(tmp_path, upstream, server={"admin": {"port": first}})
    proxy: Proxy = start_proxy(path, "--set", "backworks_admin=", "--set", "blueprint_watch_ms=100")
    proxy.wait_for_log(f"admin listener on http://127.0.0.1:{first}")
    assert_admin_answers(first)
    mark = len(proxy.log())
    document = json.loads(path.read_text())
    document["server"] = {"admin": {"port": second}}
    write_atomically(path, json.dumps(document))
    proxy.wait_for_log(f"admin listener on http://127.0.0.1:{second}", timeout=20, after=mark)
    assert_admin_answers(second)
    with pytest.raises(ConnectionRefusedError):
        request("GET", "/metrics", port=first)
    assert proxy.get("/hello").status == 200
