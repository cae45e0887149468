"""The type checker is part of the test command: mypy over the shipped code, configured in
pyproject.toml ([tool.mypy]: the pydantic plugin, unused ignores reported), must find nothing,
on whichever mitmproxy this Python installs (11 on 3.11, 12 on 3.12)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_finds_no_errors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(ROOT / ".mypy_cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_would_see_an_error(tmp_path: Path) -> None:
    """The check above can fail: the same configuration reports a wrong type."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f() -> int:\n    return 'not an int'\n")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--no-error-summary", "--cache-dir", str(tmp_path / "cache"), str(bad)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 1 and "Incompatible return value type" in result.stdout, result.stdout + result.stderr
