"""The example blueprints behave as their READMEs say."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.integration.harness import ROOT

pytestmark = pytest.mark.integration


def test_proxy_advanced_balances_one_two_one_and_fails_over(make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    backends = [make_upstream(f"backend-{i}") for i in (1, 2, 3)]
    env = {f"BACKEND_{i}_URL": b.url for i, b in enumerate(backends, 1)}
    proxy = start_proxy(ROOT / "blueprints" / "proxy-advanced" / "blueprint.yaml", env=env)
    names = [proxy.get("/api/users").json["upstream"] for _ in range(8)]
    assert names == ["backend-2", "backend-1", "backend-3", "backend-2"] * 2
    seen = backends[1].received[-1]
    assert seen.path == "/users"
    assert (seen.headers["X-Request-Source"], seen.headers["X-Load-Balancer"]) == ("user-service", "backworks")
    assert proxy.get("/api/orders/100").header("X-Proxied-By") == "backworks-proxy-plugin"
    backends[1].stop()  # backend-2 goes away: its turns fail over to the others
    after = Counter(proxy.get("/api/products").json["upstream"] for _ in range(8))
    assert set(after) == {"backend-1", "backend-3"} and sum(after.values()) == 8
    assert proxy.get("/health").json["status"] == "healthy"
