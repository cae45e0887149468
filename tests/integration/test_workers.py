"""`backworks run FILE --workers N` with real processes: N mitmdumps on one port, supervised.

Every request opens a new connection (harness.request), so the kernel's SO_REUSEPORT spreading
decides which worker answers; the blueprint's /pid endpoint says which one did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.harness import BIN, free_port, request, stop_process_group, wait_for_port, write_atomically

pytestmark = pytest.mark.integration


def blueprint_text(version: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        name: workers
        endpoints:
          - path: /pid
            method: GET
            handler: |
              import os
              def handler(request):
                  return {{"status": 200, "body": {{"pid": os.getpid(), "worker": os.environ.get("BACKWORKS_WORKER"), "version": "{version}"}}}}
        """
    ) + extra


@dataclass
class Run:
    """`backworks run BLUEPRINT --workers N` in a session of its own, its output in a file."""

    blueprint: Path
    workers: int
    log_path: Path
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    admin_option: bool = True  # False: the admin listener goes where the blueprint's server.admin says

    def start(self) -> Run:
        log = self.log_path.open("wb")
        admin = ["--set", f"backworks_admin=127.0.0.1:{self.admin_port}"] if self.admin_option else []
        self.process = subprocess.Popen(
            [str(BIN / "backworks"), "run", str(self.blueprint), "--port", str(self.port), "--workers", str(self.workers),
             "--", *admin, *self.extra],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.blueprint.parent,
        )
        wait_for_port(self.port, timeout=30, process=self.process)
        self.wait_for(lambda log: log.count("listening at") >= self.workers, "every worker listening")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, condition, what: str, timeout: float = 30.0) -> str:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if condition(log):
                return log
            time.sleep(0.1)
        raise TimeoutError(f"{what}: not after {timeout} s:\n{self.log()[-4000:]}")

    def pid_answers(self, want: int, attempts: int = 400) -> dict[int, dict]:
        """Ask /pid on new connections until `want` distinct workers answered (bounded)."""
        seen: dict[int, dict] = {}
        for _ in range(attempts):
            body = request("GET", "/pid", port=self.port, timeout=10).json
            seen[body["pid"]] = body
            if len(seen) >= want:
                break
        return seen

    def children(self) -> set[int]:
        assert self.process is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    def stop(self) -> None:
        stop_process_group(self.process)
        for pid in self.children():  # workers live in sessions of their own
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


@pytest.fixture
def run_workers(tmp_path: Path) -> Iterator:
    runs: list[Run] = []

    def start(workers: int = 2, text: str | None = None, extra: list[str] | None = None) -> Run:
        blueprint = tmp_path / "blueprint.yaml"
        blueprint.write_text(text or blueprint_text("one"))
        run = Run(blueprint, workers, tmp_path / f"run-{len(runs)}.log", extra=extra or [])
        runs.append(run)
        return run.start()

    yield start
    for run in runs:
        run.stop()


def test_requests_are_served_by_every_worker(run_workers) -> None:
    run = run_workers(2)
    answers = run.pid_answers(2)
    assert len(answers) == 2, f"one worker answered every request: {answers}"
    assert set(answers) == run.children()
    assert sorted(a["worker"] for a in answers.values()) == ["0", "1"]
    status = request("GET", "/__backworks/api/status", port=run.admin_port, timeout=10)
    assert status.status == 200  # the supervisor's admin listener (or the note that it is missing)


def test_a_killed_worker_is_replaced_while_the_others_serve(run_workers) -> None:
    run = run_workers(2)
    answers = run.pid_answers(2)
    victim = next(pid for pid, body in answers.items() if body["worker"] == "0")
    os.kill(victim, signal.SIGKILL)
    served = failed = 0
    replaced: int | None = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (replaced is None or served < 50):
        try:
            body = request("GET", "/pid", port=run.port, timeout=10).json
        except OSError:
            failed += 1
            continue
        served += 1
        if body["worker"] == "0" and body["pid"] != victim:
            replaced = body["pid"]
    assert replaced is not None, f"worker 0 was not replaced:\n{run.log()[-3000:]}"
    assert failed <= 1, f"{failed} requests failed while a worker was replaced (at most the one in flight may)"
    assert "worker 0 (pid" in run.log() and "killed by SIGKILL" in run.log()
    assert "restart 1 of this worker" in run.log()


def test_an_edit_reaches_every_worker_and_an_invalid_one_is_refused_by_all(run_workers) -> None:
    run = run_workers(2)
    blueprint = run.blueprint
    write_atomically(blueprint, blueprint_text("two"))
    run.wait_for(lambda log: log.count("reloaded blueprint") >= 2, "both workers reloaded")
    versions = {pid: body["version"] for pid, body in run.pid_answers(2).items()}
    assert len(versions) == 2 and set(versions.values()) == {"two"}, versions

    write_atomically(blueprint, blueprint_text("three") + "  - path: /broken\n    handler: nonsense-handler\n")
    run.wait_for(lambda log: log.count("refused, the previous version keeps serving") >= 2, "both workers refused the edit")
    versions = {pid: body["version"] for pid, body in run.pid_answers(2).items()}
    assert len(versions) == 2 and set(versions.values()) == {"two"}, versions


def admin_answers(port: int) -> bool:
    try:
        return request("GET", "/__backworks/api/status", port=port, timeout=5).status == 200
    except OSError:
        return False


def wait_until(condition, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(0.2)


def test_an_edit_of_server_admin_moves_the_aggregate_listener(tmp_path: Path) -> None:
    first, second, third = free_port(), free_port(), free_port()
    blueprint = tmp_path / "blueprint.yaml"
    blueprint.write_text(blueprint_text("one", f"server:\n  admin:\n    port: {first}\n"))
    run = Run(blueprint, 2, tmp_path / "run.log", admin_option=False)
    try:
        run.start()
        wait_until(lambda: admin_answers(first), "the aggregate admin listener on server.admin")
        assert len(request("GET", "/__backworks/api/status", port=first, timeout=10).json["workers"]) == 2

        write_atomically(blueprint, blueprint_text("two", f"server:\n  admin:\n    port: {second}\n"))
        wait_until(lambda: admin_answers(second), "the admin listener at the edited address")
        assert not admin_answers(first)  # moved, not doubled
        assert f"server.admin changed in the blueprint, 127.0.0.1:{first} → 127.0.0.1:{second}" in run.log()

        # An edit the workers refuse moves nothing: the old version keeps serving, and its admin address.
        write_atomically(blueprint, blueprint_text("three", f"  - path: /broken\n    handler: nonsense-handler\nserver:\n  admin:\n    port: {third}\n"))
        run.wait_for(lambda log: log.count("refused, the previous version keeps serving") >= 2, "both workers refused the edit")
        time.sleep(2)  # two of the supervisor's checks of the file
        assert admin_answers(second) and not admin_answers(third)

        write_atomically(blueprint, blueprint_text("four", "server:\n  admin:\n    enabled: false\n"))
        wait_until(lambda: not admin_answers(second), "the admin listener turned off")
        assert "127.0.0.1:" + str(second) + " → off" in run.log()
    finally:
        run.stop()


def test_ctrl_c_stops_every_worker(run_workers) -> None:
    run = run_workers(3)
    workers = run.children()
    assert len(workers) == 3
    assert run.process is not None
    run.process.send_signal(signal.SIGINT)
    assert run.process.wait(60) == 0, run.log()[-3000:]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)]
    assert "all 3 worker(s) stopped" in run.log()
    with pytest.raises(OSError):
        request("GET", "/pid", port=run.port, timeout=2)


def test_one_worker_is_mitmdump_in_place_of_backworks(run_workers) -> None:
    run = run_workers(1)
    assert run.process is not None
    body = request("GET", "/pid", port=run.port, timeout=10).json
    assert body["pid"] == run.process.pid  # exec'd: no supervisor, no child
    assert body["worker"] is None
    assert run.children() == set()


def test_capture_journals_of_every_worker_become_one_output(run_workers, tmp_path: Path) -> None:
    output = tmp_path / "captured.har"
    capture = f"plugins:\n  capture:\n    config: {{output: {output}, format: har}}\n"
    run = run_workers(2, text=blueprint_text("one", capture))
    answers = run.pid_answers(2)
    assert len(answers) == 2
    journals = sorted(tmp_path.glob("captured.har.worker*.jsonl"))
    assert [j.name for j in journals] == ["captured.har.worker0.jsonl", "captured.har.worker1.jsonl"]
    recorded = sum(len(j.read_text().splitlines()) for j in journals)
    assert all(j.read_text() for j in journals)
    assert not output.exists()
    assert run.process is not None
    run.process.send_signal(signal.SIGINT)
    assert run.process.wait(60) == 0, run.log()[-3000:]
    entries = json.loads(output.read_text())["log"]["entries"]
    assert len(entries) == recorded
    assert "from the journals of 2 worker(s)" in run.log()


def test_workers_that_keep_dying_at_start_make_the_run_give_up(tmp_path: Path) -> None:
    blueprint = tmp_path / "blueprint.yaml"
    blueprint.write_text(blueprint_text("one"))
    port = free_port()
    # a mode mitmproxy refuses: every worker exits at once, again and again
    process = subprocess.Popen(
        [str(BIN / "backworks"), "run", str(blueprint), "--port", str(port), "--workers", "2", "--", "--mode", "bogus:nothing",
         "--set", "backworks_admin=off"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=120)
    finally:
        stop_process_group(process)
    text = output.decode(errors="replace")
    assert process.returncode == 1, text[-3000:]
    assert "times in a row" in text and "giving up" in text
    assert "replacing it in 0.5 s" in text and "replacing it in 1 s" in text  # backoff before giving up


@pytest.mark.parametrize("arguments, message", [(["--web"], "--web serves one process"), (["--", "-p", "0"], "needs a fixed port")])
def test_what_workers_cannot_do_is_refused(tmp_path: Path, arguments: list[str], message: str) -> None:
    blueprint = tmp_path / "blueprint.yaml"
    blueprint.write_text(blueprint_text("one"))
    result = subprocess.run([str(BIN / "backworks"), "run", str(blueprint), "--workers", "2", "--port", str(free_port()), *arguments],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
