"""Capture files are private (issue 17, item 6), through the real `backworks capture` command.

A local attacker who can write to the shared temporary directory or to the output folder plants
symlinks where the capture writes: at the working blueprint's old predictable path
(`$TMPDIR/backworks-capture-<hash of OUTPUT>.yaml`, which the capturing gateway would have loaded
and hot-reloaded) and at the output's name. Nothing is written through them; every file written
is 0600; the private folder of the working blueprint is 0700 and gone after; and a query secret
the files redact never reaches the console either.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BIN, ROOT, free_port, request, stop_capture, stop_process_group, Upstream, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.name != "posix", reason="file modes and symlinks are POSIX")]

API_KEY = "abc123"
TOKEN = "tok9Q2mX7pL4vZ8kR3nB6"
PLANTED = "name: planted\nendpoints:\n  - {path: /pwned, handler: static, config: {static: {body: pwned}}}\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def old_predictable_path(output: Path) -> Path:
    """Where `backworks capture` wrote its working blueprint before: computable by anyone."""
    digest = hashlib.sha256(str(output.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"backworks-capture-{digest}.yaml"


@pytest.fixture
def planted(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """The attacker's files, and symlinks to them at the old blueprint path and at the output."""
    attacker = tmp_path / "attacker"
    attacker.mkdir()
    output = tmp_path / "out" / "captured.yaml"
    output.parent.mkdir()
    blueprint_target = attacker / "blueprint.yaml"
    blueprint_target.write_text(PLANTED)
    output_target = attacker / "output-target.txt"
    output_target.write_text("untouched\n")
    output.symlink_to(output_target)
    old = old_predictable_path(output)  # the old code resolved the output's symlink before hashing
    if old.exists() or old.is_symlink():
        old.unlink()  # left by an earlier run of the old code (ours: the name hashes this test's path)
    old.symlink_to(blueprint_target)
    yield {"output": output, "old": old, "blueprint_target": blueprint_target, "output_target": output_target}
    old.unlink(missing_ok=True)


def run_capture(output: Path, upstream: Upstream, *extra: str) -> tuple[int, str, Path | None, int | None]:
    """`backworks capture` in reverse mode: one request with query secrets, then SIGINT.

    Returns the exit status, the console output, the working blueprint's path (from the log)
    and the mode of its folder while the capture ran."""
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "backworks"), "capture", "--upstream", upstream.url, "-p", str(port), "-o", str(output), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
    )
    blueprint: Path | None = None
    folder_mode: int | None = None
    try:
        wait_for_port(port, process=process)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # mitmproxy 12 listens before its scripts have loaded
            if request("GET", "/__backworks/capture", port=port).status == 200:
                break
            time.sleep(0.1)
        running = [p for p in Path(tempfile.gettempdir()).glob("backworks-capture-*/capture.yaml") if f"blueprint={p}" in " ".join(_children_commands(process.pid))]
        if running:
            blueprint = running[0]
            folder_mode = mode(blueprint.parent)
        assert request("GET", f"/orders?api_key={API_KEY}&token={TOKEN}&page=2", port=port).status == 200
        assert request("GET", f"/users/1?access_token={TOKEN}", port=port).status == 200
        time.sleep(0.3)  # the flow lines are logged as the flows finish
        log = stop_capture(process)
    finally:
        stop_process_group(process)
    if blueprint is None:
        found = re.search(r"loaded blueprint '[^']*' \(([^)]+)\)", log)
        blueprint = Path(found.group(1)) if found else None
    return process.returncode, log, blueprint, folder_mode


def _children_commands(pid: int) -> list[str]:
    """The command lines of `pid`'s process group (the mitmdump child of `backworks capture`)."""
    commands = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            commands.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ProcessLookupError):
            continue
    return commands


def test_capture_follows_no_planted_symlink_writes_0600_and_prints_no_query_secret(planted: dict[str, Path], tmp_path: Path) -> None:
    upstream = Upstream("shop").start()
    try:
        status, log, blueprint, folder_mode = run_capture(planted["output"], upstream)
    finally:
        upstream.stop()
    assert status == 0, log
    # The planted files are unchanged: nothing was written through either symlink.
    assert planted["blueprint_target"].read_text() == PLANTED
    assert planted["output_target"].read_text() == "untouched\n"
    assert "planted" not in log and "/pwned" not in log  # the planted blueprint was never loaded
    # The working blueprint lived in a private folder (0700), now removed.
    assert blueprint is not None and blueprint != planted["old"], log
    assert blueprint.parent.name.startswith("backworks-capture-")
    if Path("/proc").is_dir():  # found from mitmdump's command line while it ran
        assert folder_mode == 0o700, folder_mode
    assert not blueprint.parent.exists()
    # Every file the capture wrote is the user's alone; the output replaced the symlink.
    output, journal = planted["output"], Path(f"{planted['output']}.jsonl")
    assert not output.is_symlink() and output.is_file()
    written = sorted(p for p in output.parent.iterdir())
    schema = output.parent / "blueprint.schema.json"  # the editor schema the output's modeline names (issue 21)
    assert written == sorted([output, journal, schema]), written  # no temporary file left either
    for path in written:
        assert mode(path) == 0o600, (path, oct(mode(path)))
    # The query secrets are redacted in the files and on the console alike.
    for path in written:
        text = path.read_text()
        assert API_KEY not in text and TOKEN not in text, path
    assert "[REDACTED:" in output.read_text()  # `[REDACTED:<fingerprint>]`
    assert API_KEY not in log and TOKEN not in log, log
    assert re.search(r"GET http://127\.0\.0\.1:\d+/orders\?api_key=\[REDACTED:[0-9a-f]{12}\]&token=\[REDACTED:[0-9a-f]{12}\]&page=2 << 200", log), log


def test_mock_from_outputs_are_0600_and_replace_a_planted_symlink(tmp_path: Path) -> None:
    upstream = Upstream("shop").start()
    output = tmp_path / "captured.yaml"
    try:
        status, log, _, _ = run_capture(output, upstream)
    finally:
        upstream.stop()
    assert status == 0, log
    target = tmp_path / "victim.txt"
    target.write_text("untouched\n")
    for fmt, name in (("blueprint", "again.yaml"), ("openapi", "api.json"), ("har", "traffic.har")):
        out = tmp_path / name
        out.symlink_to(target)
        made = subprocess.run([str(BIN / "backworks"), "mock-from", f"{output}.jsonl", "-o", str(out), "--format", fmt], capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        assert target.read_text() == "untouched\n"
        assert not out.is_symlink() and mode(out) == 0o600, (name, oct(mode(out)))
        assert API_KEY not in out.read_text() + made.stdout + made.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_journal_name_that_is_a_symlink_is_refused_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "victim.txt"
    target.write_text("untouched\n")
    output = tmp_path / "captured.yaml"
    Path(f"{output}.jsonl").symlink_to(target)
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "backworks"), "capture", "--upstream", "http://127.0.0.1:9", "-p", str(port), "-o", str(output)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        log = process.communicate(timeout=30)[0].decode(errors="replace")  # a refused start ends at once
    except subprocess.TimeoutExpired:  # it started, appending to the symlink's target
        os.killpg(process.pid, signal.SIGINT)
        log = process.communicate(timeout=60)[0].decode(errors="replace")
        pytest.fail(f"the capture started on a journal that is a symlink:\n{log[-2000:]}")
    assert process.returncode != 0
    assert "symbolic link" in log, log
    assert target.read_text() == "untouched\n"
    assert not output.exists()
