"""For the whole suite: a private home folder, and markers by folder.

Every mitmdump a test starts would write its certificate authority into `~/.mitmproxy`, and
Chromium its state into `~/.config`: the suite gets a home folder of its own for the session
(removed at the end), so that it leaves nothing in the user's and reads nothing of theirs.

`-m integration` selects every test that starts real processes: a module's `pytestmark` does
not reach the tests of other modules, and one in a conftest.py marks nothing at all, so the marker
is given here, by where a test lives.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MARKERS = {"integration": pytest.mark.integration, "security": pytest.mark.integration, "reliability": pytest.mark.reliability}


_HOME: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    _HOME["previous"] = os.environ.get("HOME", "")
    _HOME["private"] = tempfile.mkdtemp(prefix="backworks-tests-home-")
    os.environ["HOME"] = _HOME["private"]


def pytest_unconfigure(config: pytest.Config) -> None:
    if "private" in _HOME:
        os.environ["HOME"] = _HOME.pop("previous")
        shutil.rmtree(_HOME.pop("private"), ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = Path(str(item.path)).resolve().relative_to(TESTS).parts[0]
        except (ValueError, IndexError):
            continue
        marker = MARKERS.get(folder)
        if marker is not None:
            item.add_marker(marker)
