"""The auth-api example on its public fallback secret says so at load (issue 17, item 8).

A real mitmdump loads blueprints/auth-api without JWT_SECRET: its log carries a WARNING that
anyone who reads the repository can forge tokens, and how to set a real secret; with a random
JWT_SECRET the warning is gone.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.integration.harness import ROOT

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "blueprints" / "auth-api" / "blueprint.yaml"


def test_the_example_warns_at_load_on_its_demo_secret(tmp_path: Path, start_proxy, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("JWT_SECRET", raising=False)  # the harness passes the environment on
    proxy = start_proxy(EXAMPLE, env={"AUTH_USERS_FILE": str(tmp_path / "users.json")})
    warnings = [line for line in proxy.log().splitlines() if "jwt_secret is a well-known example value" in line]
    assert len(warnings) == 1, proxy.log()[-3000:]
    line = warnings[0]
    assert "can forge tokens for any user and role" in line and "JWT_SECRET" in line and "secrets.token_urlsafe(48)" in line
    assert "blueprint.yaml:16:" in line  # located, like every blueprint warning


def test_the_example_is_quiet_with_a_real_secret(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    proxy = start_proxy(EXAMPLE, env={"JWT_SECRET": secrets.token_urlsafe(48), "AUTH_USERS_FILE": str(tmp_path / "users.json")})
    assert "can forge tokens" not in proxy.log()
