"""`backworks demo-backend`: the upstream of the examples answers 400, never 500, to bodies it cannot read."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from backworks_core.demo_backend import make_app


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/users", b"[" * 100_000, {"Content-Type": "application/json"}),  # RecursionError in json.loads
        ("/users", b"not gzip", {"Content-Type": "application/json", "Content-Encoding": "gzip"}),
        ("/anything", b"not gzip", {"Content-Encoding": "gzip"}),  # the echo route
    ],
    ids=["json-nested-too-deep", "create-bad-gzip", "echo-bad-gzip"],
)
async def test_unreadable_bodies_are_400_not_500(path: str, body: bytes, headers: dict[str, str]) -> None:
    # Found by tests/reliability/test_request_fuzz.py: both were aiohttp's 500 page.
    async with TestClient(TestServer(make_app("backend-1"))) as client:
        response = await client.post(path, data=body, headers=headers)
        assert response.status == 400
        assert (await response.json())["backend"] == "backend-1"


async def test_a_json_body_is_created() -> None:
    async with TestClient(TestServer(make_app("backend-1"))) as client:
        response = await client.post("/users", json={"name": "Edsger"})
        assert response.status == 201
        assert (await response.json())["created"] == {"name": "Edsger"}
