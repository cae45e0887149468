"""The example blueprints behave as their READMEs say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, Reply, request

pytestmark = pytest.mark.integration


def test_proxy_advanced_balances_one_two_one_and_fails_over(make_upstream, start_proxy) -> None:  # type: ignore[no-untyped-def]
    backends = [make_upstream(f"backend-{i}") for i in (1, 2, 3)]
    env = {f"BACKEND_{i}_URL": b.url for i, b in enumerate(backends, 1)}  # the admin port: the harness's backworks_admin
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
    metrics = proxy.get("/metrics").json["metrics"]
    served = {s["labels"]["target"]: s["value"] for s in metrics["backworks_upstream_requests"]["samples"] if s["labels"]["outcome"] == "2xx"}
    assert served["backend-2"] >= 3 and set(served) == {"backend-1", "backend-2", "backend-3"}
    assert {s["labels"]["target"] for s in metrics["backworks_target_healthy"]["samples"]} == {"backend-1", "backend-2", "backend-3"}
    status = proxy.admin_get("/__backworks/api/status").json
    assert [t["name"] for t in status["pools"][0]["targets"]] == ["backend-1", "backend-2", "backend-3"]
    assert status["blueprint"]["name"] == "Advanced Proxy API"


def test_auth_api_register_login_roles_and_validate(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    """The README's walk-through: a registered user reads but may not write; the seeded admin writes."""
    example = ROOT / "blueprints" / "auth-api"
    env = {"JWT_SECRET": "integration-test-secret-of-at-least-32-bytes", "AUTH_USERS_FILE": str(tmp_path / "users.json")}
    proxy = start_proxy(example / "blueprint.yaml", env=env)

    def call(method: str, path: str, token: str | None = None, body: object = None) -> Reply:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return proxy.send(method, path, body=None if body is None else json.dumps(body), headers=headers)

    alice = {"username": "alice", "password": "alice-password", "email": "alice@example.com"}
    registered = call("POST", "/api/auth/register", body=alice)
    assert registered.status == 201, registered.body
    assert registered.json["message"] == "User registered successfully"
    assert registered.json["user"]["roles"] == ["user"] and registered.json["token"].startswith("eyJ")
    assert "password_hash" not in registered.json["user"]

    login = call("POST", "/api/auth/login", body={"username": "alice", "password": "alice-password"})
    assert login.status == 200 and login.json["message"] == "Login successful"
    user_token = login.json["token"]

    listed = call("GET", "/api/resources", user_token)
    assert listed.status == 200
    assert listed.json["count"] == 2 and [r["id"] for r in listed.json["resources"]] == [1, 2]

    roadmap = {"name": "Roadmap", "description": "What comes next"}
    refused = call("POST", "/api/resources", user_token, roadmap)
    assert refused.status == 403
    assert refused.json["error"] == "insufficient permissions: requires one of the roles admin"
    assert (refused.header("WWW-Authenticate") or "").startswith('Bearer error="insufficient_scope"')

    seeded = subprocess.run(
        [sys.executable, str(example / "seed_admin.py")],
        env={**os.environ, **env, "ADMIN_PASSWORD": "admin-demo-password"},
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert seeded.returncode == 0, seeded.stderr
    admin_login = call("POST", "/api/auth/login", body={"username": "admin", "password": "admin-demo-password"})
    assert admin_login.status == 200 and admin_login.json["user"]["roles"] == ["user", "admin"]
    admin_token = admin_login.json["token"]

    created = call("POST", "/api/resources", admin_token, roadmap)
    assert created.status == 201, created.body
    assert created.json["resource"] | roadmap == created.json["resource"]
    assert (created.json["resource"]["id"], created.json["resource"]["created_by"]) == (3, "admin")
    assert call("GET", "/api/resources/3", user_token).json["resource"]["name"] == "Roadmap"

    valid = call("GET", "/api/auth/validate", user_token)
    assert valid.status == 200 and valid.json["message"] == "Token is valid"
    assert (valid.json["user"]["username"], valid.json["user"]["roles"]) == ("alice", ["user"])
    assert call("GET", "/api/auth/validate", admin_token).json["user"]["roles"] == ["user", "admin"]

    # the rest of the README: invalid or missing tokens are 401; writes on one resource are admin-only too
    assert call("GET", "/api/auth/validate", "not-a-token").status == 401
    assert call("GET", "/api/resources").status == 401
    assert call("DELETE", "/api/resources/3", user_token).status == 403
    updated = call("PUT", "/api/resources/3", admin_token, {"description": "Plans for the next quarter"})
    assert updated.status == 200 and updated.json["resource"]["description"] == "Plans for the next quarter"
    assert call("DELETE", "/api/resources/3", admin_token).status == 200
    assert call("GET", "/api/resources/3", user_token).status == 404
    # the users file holds hashes only, never the passwords
    stored = (tmp_path / "users.json").read_text()
    assert "alice-password" not in stored and "admin-demo-password" not in stored
