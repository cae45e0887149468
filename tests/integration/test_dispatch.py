"""addons/dispatch.py in a real mitmdump: another script's hooks, and their reload, reach every flow."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration.harness import request, write_atomically

pytestmark = pytest.mark.integration

BLUEPRINT = """
name: dispatch
endpoints:
  - path: /hello
    handler: static
    config: {static: {body: {hello: world}}}
"""


def user_script(version: str, hook: str) -> str:
    """A user's own `-s` script next to backworks.py, stamping each answer in one of its hooks."""
    return textwrap.dedent(
        f"""
        class Stamp:
            def {hook}(self, flow):
                if flow.response is not None:
                    flow.response.headers.add("x-user-script", "{version}")

        addons = [Stamp()]
        """
    )


def stamps(port: int) -> list[str]:
    reply = request("GET", "/hello", port=port)
    assert reply.status == 200 and reply.json == {"hello": "world"}
    return reply.headers.get_all("x-user-script") or []


@pytest.mark.parametrize("cached", ["true", "false"])
def test_a_reloaded_user_script_is_called_instead_of_its_old_version(tmp_path: Path, start_proxy, cached: str) -> None:  # type: ignore[no-untyped-def]
    """The event table is rebuilt when mitmproxy reloads a script: the new hooks run, the old never again."""
    blueprint = tmp_path / "blueprint.yaml"
    blueprint.write_text(BLUEPRINT)
    script = tmp_path / "stamp.py"
    script.write_text(user_script("v1", "response"))
    proxy = start_proxy(blueprint, "-s", str(script), "--set", f"backworks_cached_dispatch={cached}")
    assert stamps(proxy.port) == ["v1"]

    # A new version whose hook is another event: the table must drop `response` and add `responseheaders`.
    write_atomically(script, user_script("v2", "responseheaders"))
    later = time.time() + 5
    os.utime(script, (later, later))  # mitmproxy's watcher compares modification times
    deadline = time.monotonic() + 20
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen = stamps(proxy.port)
        if seen != ["v1"]:
            break
        time.sleep(0.2)
    assert seen == ["v2"]
    assert [stamps(proxy.port) for _ in range(5)] == [["v2"]] * 5
