"""Hot reload under load: a valid blueprint replaces the old one with no failed request;
an invalid one is refused, its errors logged, and the old one keeps serving."""

from __future__ import annotations

import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.harness import Proxy, Upstream, request, write_atomically

pytestmark = pytest.mark.integration


def blueprint_text(version: str, upstream: Upstream) -> str:
    return textwrap.dedent(
        f"""
        name: reloading
        plugins:
          proxy: {{config: {{targets: [{{name: up, url: "{upstream.url}"}}]}}}}
        endpoints:
          - path: /version
            handler: static
            config: {{static: {{body: {{version: "{version}"}}}}}}
          - path: /slow
            handler: static
            config: {{static: {{body: {{version: "{version}"}}, delay: 0.3}}}}
          - path: /proxied
            handler: proxy
        """
    )


class Load:
    """Keeps requests in flight from several threads and records every outcome (bounded)."""

    def __init__(self, proxy: Proxy, paths: list[str], threads: int = 4, max_seconds: float = 30.0) -> None:
        self.proxy = proxy
        self.paths = paths
        self.outcomes: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        self._lock = threading.Lock()

    def _run(self, index: int) -> None:
        count = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            path = self.paths[(index + count) % len(self.paths)]
            count += 1
            try:
                reply = request("GET", path, port=self.proxy.port, timeout=10)
                outcome = f"{path} {reply.status} {reply.json.get('version', reply.json.get('upstream'))}"
                ok = reply.status == 200
            except Exception as exc:  # any client-side failure counts
                outcome, ok = f"{path} exception {type(exc).__name__}: {exc}", False
            with self._lock:
                self.outcomes[outcome] += 1
                if not ok:
                    self.failures.append(outcome)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def total(self) -> int:
        with self._lock:
            return sum(self.outcomes.values())


def wait_until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not met in time")


def test_hot_reload_valid_then_invalid_under_load(tmp_path: Path, upstream: Upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "blueprint.yaml"
    path.write_text(blueprint_text("one", upstream))
    proxy = start_proxy(path, "--set", "blueprint_watch_ms=200")

    with Load(proxy, ["/version", "/slow", "/proxied"]) as load:
        wait_until(lambda: load.total() > 20)
        write_atomically(path, blueprint_text("two", upstream))
        wait_until(lambda: proxy.get("/version").json == {"version": "two"})
        seen_at_swap = load.total()
        wait_until(lambda: load.total() > seen_at_swap + 20)

        log_before = len(proxy.log())
        write_atomically(path, blueprint_text("three", upstream).replace("handler: static", "handler: statc", 1))
        proxy.wait_for_log("refused, the previous version keeps serving", after=log_before)
        count = load.total()
        wait_until(lambda: load.total() > count + 20)

    assert load.failures == []
    versions = {outcome.split()[-1] for outcome in load.outcomes}
    assert {"one", "two", "up-1"} <= versions and "three" not in versions
    # in-flight slow requests that started on version one finished on version one
    assert any(o.startswith("/slow 200 one") for o in load.outcomes)
    log = proxy.log()[log_before:]
    assert "endpoints[0].handler: unknown handler 'statc'; did you mean 'static'?" in log
    assert proxy.get("/version").json == {"version": "two"}

    # fixing the file brings the new version in
    write_atomically(path, blueprint_text("four", upstream))
    wait_until(lambda: proxy.get("/version").json == {"version": "four"})


def test_handler_file_edit_is_picked_up(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "h.py").write_text("def handler(request):\n    return {'n': 1}\n")
    path = tmp_path / "blueprint.yaml"
    path.write_text("name: h\nendpoints:\n  - {path: /n, handler: h.py}\n")
    proxy = start_proxy(path, "--set", "blueprint_watch_ms=200")
    assert proxy.get("/n").json == {"n": 1}
    write_atomically(tmp_path / "h.py", "def handler(request):\n    return {'n': 2}\n")
    wait_until(lambda: proxy.get("/n").json == {"n": 2})


def test_a_missing_handler_file_created_later_is_picked_up(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "blueprint.yaml"
    path.write_text("name: h\nendpoints:\n  - {path: /a, handler: static, config: {static: {body: a}}}\n")
    proxy = start_proxy(path, "--set", "blueprint_watch_ms=200")
    log_before = len(proxy.log())
    write_atomically(path, "name: h\nendpoints:\n  - {path: /a, handler: later.py}\n")
    proxy.wait_for_log("handler file later.py not found", after=log_before)
    assert proxy.get("/a").body == b"a"  # the old version keeps serving
    (tmp_path / "later.py").write_text("def handler(request):\n    return {'later': True}\n")
    wait_until(lambda: proxy.get("/a").body == b'{"later":true}')
