"""The console line and the saved flow name the target that answered (issue 21, item 6), through a
real mitmdump, with the client's Host unchanged on the way up, and a replay that goes through
Backworks as the original did."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
from mitmproxy import io

from tests.integration.harness import BIN, SCRIPT, Upstream, free_port

pytestmark = pytest.mark.integration

AS_BACKWORKS_RUN = ["--mode", "reverse:http://127.0.0.1:9", "--set", "connection_strategy=lazy", "--set", "keep_host_header=true", "--flow-detail", "1"]


def blueprint(folder: Path, down: int, api: Upstream, endpoint: str = "/api/{rest:path}", name: str = "bp.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(f"""
        name: shown
        plugins:
          proxy:
            config:
              targets:
                - {{name: down, url: "http://127.0.0.1:{down}"}}
                - {{name: api, url: "{api.url}"}}
              load_balancing: round_robin
              preserve_host: true
        endpoints:
          - {{path: "{endpoint}", handler: proxy}}
        """))
    return path


def saved_flows(path: Path) -> list:  # type: ignore[type-arg]
    with path.open("rb") as handle:
        return list(io.FlowReader(handle).stream())


def test_the_console_names_the_target_that_answered_and_the_host_stays_the_clients(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    api = Upstream("api").start()
    try:
        down = free_port()  # nothing listens: every try there fails over to api
        flows = tmp_path / "flows"
        proxy = start_proxy(blueprint(tmp_path, down, api), *AS_BACKWORKS_RUN, "-w", str(flows))
        for _ in range(2):  # round robin: one of the two tries `down` first
            assert proxy.get("/api/users", headers={"Host": "gw.example:8080"}).status == 200
        assert proxy.get("/elsewhere").status == 404  # answered by Backworks itself: nothing to name
        log = proxy.wait_for_log("GET http://127.0.0.1:9/elsewhere")
        proxy.stop()
    finally:
        api.stop()
    lines = [line.split(": ", 1)[1] for line in log.splitlines() if ": GET http" in line]
    # host and port in the URL, the pool's name for the target after it; nothing named for Backworks' own 404
    assert lines == [f"GET http://127.0.0.1:{api.port}/api/users → api"] * 2 + ["GET http://127.0.0.1:9/elsewhere"], log
    assert "try 1 on down failed" in log  # the failover happened: the last try's target is named
    assert [r.headers["Host"] for r in api.received] == ["gw.example:8080"] * 2  # sent as the client sent it
    saved = [f for f in saved_flows(flows) if f.request.path == "/api/users"]
    assert len(saved) == 2
    for flow in saved:
        assert (flow.request.host, flow.request.port) == ("127.0.0.1", api.port)
        assert flow.request.headers["Host"] == "gw.example:8080"  # the request as the client sent it
        assert flow.request.pretty_url == "http://gw.example:8080/api/users"
        assert "target=api" in flow.comment


def replay(flows: Path, blueprint_file: Path, tmp_path: Path) -> str:
    """`mitmdump -n -C FLOWS`: the flows sent again through a fresh Backworks, as mitmweb's Replay does."""
    command = [str(BIN / "mitmdump"), "-n", "-C", str(flows), "-s", str(SCRIPT), "--set", f"blueprint={blueprint_file}",
               "--set", f"backworks_admin=127.0.0.1:{free_port()}", "--flow-detail", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_a_replay_goes_through_backworks_as_the_original_did(tmp_path: Path, start_proxy) -> None:  # type: ignore[no-untyped-def]
    """Regular mode: a client talks to the gateway directly. The saved flow names the target;
    replayed, it is addressed to the gateway again, not to the pool target (which the exposure
    guard would refuse with 403 when no endpoint matches)."""
    api = Upstream("api").start()
    try:
        down = free_port()
        flows = tmp_path / "flows"
        proxy = start_proxy(blueprint(tmp_path, down, api), "-w", str(flows))
        assert proxy.get("/api/users").status == 200
        proxy.stop()
        saved = saved_flows(flows)
        assert [(f.request.host, f.request.port) for f in saved] == [("127.0.0.1", api.port)]

        log = replay(flows, blueprint(tmp_path, down, api), tmp_path)
        assert f"[replay]: GET http://127.0.0.1:{api.port}/api/users" in log, log
        assert len(api.received) == 2 and api.received[1].headers["Host"] == f"127.0.0.1:{proxy.port}"

        # The endpoint is gone in this blueprint: the replay is a direct request no endpoint
        # matches (Backworks' 404), not a request passed through to a pool target (403).
        log = replay(flows, blueprint(tmp_path, down, api, endpoint="/other", name="other.yaml"), tmp_path)
        assert f"[replay]: GET http://127.0.0.1:{proxy.port}/api/users" in log and "<< 404" in log, log
        assert "<< 403" not in log and len(api.received) == 2
    finally:
        api.stop()
