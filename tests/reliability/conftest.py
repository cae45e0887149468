"""The reliability suite: long, loaded runs kept out of the default test run (`./run.sh reliability`).

Each test reports its figures with the `report` fixture; they are printed at the end of the run
and written to test-artifacts/reliability-report.md, the source of docs/reliability.md.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import mitmproxy.version
import pytest

from tests.integration.conftest import make_upstream, pytest_runtest_makereport, start_proxy, upstream  # noqa: F401  (fixtures)
from tests.integration.harness import ROOT

REPORT_PATH = ROOT / "test-artifacts" / "reliability-report.md"
_sections: dict[str, list[str]] = {}


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[Callable[[str], None]]:
    """`report(line)` adds a line of figures under this test's name in the suite's report."""
    lines = _sections.setdefault(request.node.nodeid, [])
    started = time.monotonic()
    yield lines.append
    lines.append(f"(test took {time.monotonic() - started:.1f} s)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _sections:
        return
    header = (
        f"Reliability suite, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"mitmproxy {mitmproxy.version.VERSION}"
    )
    text = [f"# {header}", ""]
    for nodeid, lines in _sections.items():
        text += [f"## {nodeid}", "", "```text", *lines, "```", ""]
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text("\n".join(text))
    terminalreporter.section("reliability figures")
    for line in text:
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(written to {REPORT_PATH.relative_to(ROOT)})")
