"""CRUD state for a recorded collection, end to end: a real users API recorded by mitmdump (`-w`),
turned into mocks by `backworks mock-from`, served offline by a second mitmdump with
`server.mock.state: collections`; a reload starts from the recording again, and with the state
off the answers are the recorded ones."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.integration.harness import Proxy, Upstream, write_atomically
from tests.integration.test_capture import run_cli

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}


class UsersApi:
    """A small real CRUD API: the application recorded."""

    def __init__(self) -> None:
        self.users = {1: {"id": 1, "name": "Ada"}, 2: {"id": 2, "name": "Grace"}}
        self.next = 3

    def routes(self, ids: range) -> dict[str, Callable]:
        routes: dict[str, Callable] = {"/users": self.collection}
        for each in ids:
            routes[f"/users/{each}"] = self.item
        return routes

    async def collection(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            user = {"id": self.next, **await request.json()}
            self.users[self.next] = user
            self.next += 1
            return web.json_response(user, status=201, headers={"Location": f"/users/{user['id']}"})
        items = list(self.users.values())
        return web.json_response({"items": items, "total": len(items)}, headers={"X-Total-Count": str(len(items))})

    async def item(self, request: web.Request) -> web.Response:
        key = int(request.path.rsplit("/", 1)[1])
        user = self.users.get(key)
        if user is None:
            return web.json_response({"error": "no such user"}, status=404)
        if request.method == "PATCH":
            user.update(await request.json())
        elif request.method == "DELETE":
            del self.users[key]
            return web.Response(status=204)
        return web.json_response(user)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not after {timeout}s")


def test_a_recorded_collection_keeps_state_until_reload(tmp_path: Path) -> None:
    api = UsersApi()
    upstream = Upstream("users", routes=api.routes(range(1, 10))).start()
    recorder = Proxy(None, ["--mode", f"reverse:{upstream.url}", "-w", str(tmp_path / "flows")])
    try:
        recorder.start(tmp_path)
        recorded_list = recorder.get("/users")
        assert recorded_list.status == 200
        assert recorder.get("/users/1").status == 200 and recorder.get("/users/2").status == 200
        assert recorder.get("/users/9").status == 404
        assert recorder.send("POST", "/users", body=b'{"name": "Alan"}', headers=JSON).status == 201
        assert recorder.send("PATCH", "/users/3", body=b'{"name": "Alan T"}', headers=JSON).status == 200
        assert recorder.send("DELETE", "/users/3").status == 204
    finally:
        recorder.stop()
        upstream.stop()  # offline from here on
    made = run_cli("mock-from", str(tmp_path / "flows"), "-o", str(tmp_path / "mocks.yaml"))
    assert made.returncode == 0, made.stderr
    document = yaml.safe_load((tmp_path / "mocks.yaml").read_text())
    stateless = yaml.safe_dump(document, sort_keys=False)
    document.setdefault("server", {})["mock"] = {"state": "collections"}
    blueprint = tmp_path / "served.yaml"
    blueprint.write_text(yaml.safe_dump(document, sort_keys=False))

    proxy = Proxy(blueprint, ["--mode", f"reverse:{upstream.url}", "--set", "blueprint_watch_ms=200"])
    try:
        proxy.start(tmp_path)
        assert "mock state: /users + /users/{" in proxy.log()
        # untouched: the recorded bytes
        assert proxy.get("/users").body == recorded_list.body

        created = proxy.send("POST", "/users", body=b'{"name": "Barbara", "email": "b@example.com"}', headers=JSON)
        assert created.status == 201 and created.header("X-Backworks-Mock") == "state"
        new_id = created.json["id"]
        assert new_id not in (1, 2) and created.json["name"] == "Barbara"
        assert created.header("Location") == f"/users/{new_id}"
        seen = proxy.get(f"/users/{new_id}")
        assert seen.status == 200 and seen.json == {"id": new_id, "name": "Barbara", "email": "b@example.com"}
        listed = proxy.get("/users")
        assert [u["id"] for u in listed.json["items"]] == [1, 2, new_id]
        assert listed.json["total"] == 3 and listed.header("X-Total-Count") == "3"

        patched = proxy.send("PATCH", f"/users/{new_id}", body=b'{"email": null, "team": "core"}', headers=JSON)
        assert patched.status == 200 and patched.json == {"id": new_id, "name": "Barbara", "team": "core"}
        assert proxy.get(f"/users/{new_id}").json == patched.json

        assert proxy.send("DELETE", "/users/1").status == 204
        gone = proxy.get("/users/1")
        assert gone.status == 404 and gone.json == {"error": "no such user"}  # the recorded 404
        assert [u["id"] for u in proxy.get("/users").json["items"]] == [2, new_id]

        # a reload starts from the recording again
        before = len(proxy.log())
        write_atomically(blueprint, blueprint.read_text() + "# edited\n")
        proxy.wait_for_log("reloaded blueprint", after=before)
        assert proxy.get("/users").body == recorded_list.body
        assert proxy.get("/users/1").status == 200
        assert proxy.get(f"/users/{new_id}").status == 404

        # state off: today's answers (the recorded POST, a list that does not change)
        before = len(proxy.log())
        write_atomically(blueprint, stateless)
        proxy.wait_for_log("reloaded blueprint", after=before)
        posted = proxy.send("POST", "/users", body=b'{"name": "Alan"}', headers=JSON)
        assert posted.status == 201 and posted.json == {"id": 3, "name": "Alan"} and posted.header("X-Backworks-Mock") is None
        assert proxy.get("/users").body == recorded_list.body
        assert proxy.get("/users/5").status == 404
    finally:
        proxy.stop()
        upstream.stop()
    assert json.loads(recorded_list.body)["total"] == 2
