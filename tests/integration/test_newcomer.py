"""What a newcomer does first: a fresh clone, `./run.sh`, the README's first curls, then Ctrl-C.

Ctrl-C in a terminal (and a terminal multiplexer, an IDE or a CI runner stopping a job) sends
SIGINT to the whole process group; a service manager sends SIGTERM to the script. Either way
nothing may be left running (the demo backend least of all: it would hold its port and the next
`./run.sh` would serve against it), no shell error may be printed, and the exit is 0 or 130/143.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, free_port, request, wait_for_port


def clone(tmp_path: Path) -> Path:
    target = tmp_path / "backworks"
    result = subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"git clone failed: {result.stderr}")
    return target


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("how", ["SIGINT to the process group", "SIGTERM to run.sh"])
def test_fresh_clone_run_curl_and_stop(tmp_path: Path, how: str) -> None:
    checkout = clone(tmp_path)
    # The clone's pyproject.toml is the suite's own, freshly written: dated back so that run.sh
    # finds the suite's venv current and installs nothing (an install would point the shared
    # venv's editable install at this temporary clone).
    os.utime(checkout / "pyproject.toml", (0, 0))
    backend, gateway, admin = free_port(), free_port(), free_port()
    # The venv the suite runs in stands in for the one ./run.sh would create (same pyproject.toml:
    # its install marker is current, so run.sh installs nothing).
    env = {
        **os.environ,
        "BACKWORKS_VENV": str(Path(os.sys.executable).parents[1]),
        "DEMO_BACKEND_PORT": str(backend),
        "BACKWORKS_PORT": str(gateway),
        "BACKWORKS_ADMIN_PORT": str(admin),
    }
    log = (tmp_path / "run.log").open("wb")
    process = subprocess.Popen(["./run.sh"], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    pgid = process.pid
    try:
        wait_for_port(gateway, timeout=120, process=process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # mitmproxy may listen before the blueprint has loaded
            hello = request("GET", "/hello", port=gateway)
            if hello.status == 200:
                break
            time.sleep(0.2)
        assert hello.json["message"] == "Hello from Backworks"
        users = request("GET", "/api/users", port=gateway)
        assert users.status == 200 and users.header("X-Backend") == "demo-backend"
        assert request("GET", "/__backworks/api/status", port=admin).status == 200
        if how.startswith("SIGINT"):
            os.killpg(pgid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    finally:
        if group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
        log.close()
    output = (tmp_path / "run.log").read_text(errors="replace")
    assert code in (0, 130, 143), output[-3000:]
    assert "unbound variable" not in output and "run.sh: line" not in output, output[-3000:]
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(pgid), "a process of ./run.sh is still running after it stopped"
    for port in (backend, gateway):  # nothing holds the ports: the next ./run.sh can start
        with pytest.raises(OSError):
            import socket

            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
