from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Proxy, Upstream

pytestmark = pytest.mark.integration


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream("up-1").start()
    yield server
    server.stop()


@pytest.fixture
def make_upstream() -> Iterator[Callable[..., Upstream]]:
    started: list[Upstream] = []

    def make(name: str = "up", **kwargs: object) -> Upstream:
        server = Upstream(name, **kwargs).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    """Start mitmdump/mitmweb with backworks.py; always stopped at teardown, log shown on failure."""
    running: list[Proxy] = []

    def start(blueprint: Path | None, *extra: str, tool: str = "mitmdump", env: dict[str, str] | None = None, expect_failure: bool = False) -> Proxy:
        proxy = Proxy(blueprint, list(extra), tool=tool, env=env or {}, expect_failure=expect_failure)
        running.append(proxy)
        return proxy.start(tmp_path)

    yield start
    for proxy in running:
        proxy.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        tmp = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
        if tmp is not None:
            for log in sorted(Path(tmp).glob("*.log")):
                report.sections.append((f"log {log.name}", log.read_text(errors="replace")[-6000:]))
