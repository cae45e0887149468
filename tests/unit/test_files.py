"""Private files (backworks_core/files.py) and every file capture and mock-from write: 0600,
created exclusively, never written through a symlink or a hard link planted at the name."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest
from mitmproxy import exceptions

from backworks_cli import cli
from backworks_core.capture.build import write_output
from backworks_core.capture.formats import write_har, write_jsonl
from backworks_core.capture.model import Exchange
from backworks_core.files import UnsafeFileError, open_append_private, write_private

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes and O_NOFOLLOW are POSIX")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def lax_umask():  # type: ignore[no-untyped-def]
    """A umask that would leave files world-readable: the modes must not depend on it."""
    previous = os.umask(0)
    yield
    os.umask(previous)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file another user wants overwritten (here: one of ours, outside the output folder)."""
    target = tmp_path / "elsewhere" / "victim.txt"
    target.parent.mkdir()
    target.write_text("untouched\n")
    return target


def test_write_private_creates_0600_and_replaces_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    write_private(out, "one\n")
    assert out.read_text() == "one\n" and mode(out) == 0o600
    out.chmod(0o644)
    write_private(out, b"two\n")
    assert out.read_bytes() == b"two\n" and mode(out) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.yaml"]  # no temporary file left


def test_write_private_replaces_a_symlink_and_never_writes_through_it(tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "out.yaml"
    out.symlink_to(victim)
    write_private(out, "mine\n")
    assert victim.read_text() == "untouched\n"
    assert not out.is_symlink() and out.read_text() == "mine\n" and mode(out) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "out.har"
    out.write_text("old\n")

    def exchanges():  # type: ignore[no-untyped-def]
        yield Exchange("GET", "http", "api.test", 80, "/a", status=200)
        raise RuntimeError("input broke")

    with pytest.raises(RuntimeError):
        write_har(exchanges(), out)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.har"]


def test_open_append_private_creates_0600_and_appends_to_its_own_file(tmp_path: Path) -> None:
    journal = tmp_path / "j.jsonl"
    with open_append_private(journal) as handle:
        handle.write("one\n")
    assert mode(journal) == 0o600
    journal.chmod(0o644)  # an older journal, written 0644: appended to, and made private
    with open_append_private(journal) as handle:
        handle.write("two\n")
    assert journal.read_text() == "one\ntwo\n" and mode(journal) == 0o600


def test_open_append_private_refuses_a_symlink(tmp_path: Path, victim: Path) -> None:
    journal = tmp_path / "j.jsonl"
    journal.symlink_to(victim)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        open_append_private(journal)
    dangling = tmp_path / "d.jsonl"
    dangling.symlink_to(tmp_path / "elsewhere" / "not-yet.txt")  # O_EXCL: a dangling link is not created through either
    with pytest.raises(OSError):
        open_append_private(dangling)
    assert victim.read_text() == "untouched\n" and not (tmp_path / "elsewhere" / "not-yet.txt").exists()


def test_open_append_private_refuses_a_hard_link_and_a_fifo(tmp_path: Path, victim: Path) -> None:
    linked = tmp_path / "j.jsonl"
    os.link(victim, linked)
    with pytest.raises(UnsafeFileError, match="hard links"):
        open_append_private(linked)
    assert victim.read_text() == "untouched\n"
    fifo = tmp_path / "f.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFileError, match="not a regular file"):
        open_append_private(fifo)  # and it did not block waiting for a reader


def journal_of(tmp_path: Path) -> Path:
    journal = tmp_path / "in.jsonl"
    exchanges = [
        Exchange("GET", "http", "api.test", 80, f"/items/{n}", query=[("api_key", "abc123")], status=200, response_headers=[("Content-Type", "application/json")], response_body=b'{"id": 1}')
        for n in range(3)
    ]
    write_jsonl(exchanges, journal)
    return journal


@pytest.mark.parametrize(("fmt", "name"), [("blueprint", "mocks.yaml"), ("openapi", "api.yaml"), ("openapi", "api.json"), ("har", "out.har")])
def test_every_mock_from_output_is_0600_and_replaces_a_symlink(tmp_path: Path, victim: Path, fmt: str, name: str) -> None:
    journal = journal_of(tmp_path)
    assert mode(journal) == 0o600
    out = tmp_path / name
    out.symlink_to(victim)
    write_output([str(journal)], str(out), fmt, name="x")
    assert victim.read_text() == "untouched\n"
    assert not out.is_symlink() and mode(out) == 0o600
    assert "abc123" not in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["elsewhere", "in.jsonl", name])


def test_write_jsonl_appends_privately(tmp_path: Path, victim: Path) -> None:
    journal = tmp_path / "j.jsonl"
    journal.symlink_to(victim)
    with pytest.raises(UnsafeFileError):
        write_jsonl([Exchange("GET", "http", "a", 80, "/")], journal, append=True)
    assert victim.read_text() == "untouched\n"


async def test_the_capture_plugin_refuses_a_journal_that_is_a_symlink(tmp_path: Path, victim: Path) -> None:
    from addons.capture import CaptureConfig, CapturePlugin

    journal = tmp_path / "out.yaml.jsonl"
    journal.symlink_to(victim)
    plugin = CapturePlugin()
    blueprint = argparse.Namespace(settings=argparse.Namespace(name="x"))
    with pytest.raises(exceptions.OptionsError, match="symbolic link"):
        plugin.apply_blueprint(CaptureConfig(output=str(tmp_path / "out.yaml")), blueprint)  # type: ignore[arg-type]
    assert victim.read_text() == "untouched\n"


def capture_args(output: Path, **extra: object) -> list[str]:
    return ["capture", "--upstream", "http://127.0.0.1:9", "-p", "1", "-o", str(output), *[str(v) for v in extra.values()]]


def test_the_capture_command_writes_its_blueprint_in_a_private_folder_and_removes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake_child(command: list[str]) -> int:
        blueprint = Path(next(arg.split("=", 1)[1] for arg in command if arg.startswith("blueprint=")))
        seen.update(command=command, blueprint=blueprint, folder_mode=mode(blueprint.parent), file_mode=mode(blueprint), text=blueprint.read_text())
        return 0

    monkeypatch.setattr(cli, "run_child", fake_child)
    assert cli.main(capture_args(tmp_path / "out.yaml")) == 0
    blueprint = seen["blueprint"]
    assert isinstance(blueprint, Path)
    assert seen["folder_mode"] == 0o700 and seen["file_mode"] == 0o600
    assert blueprint.parent.name.startswith("backworks-capture-") and blueprint.parent.name != "backworks-capture-"
    assert not blueprint.parent.exists()  # removed when mitmdump exits
    assert "flow_detail=0" in seen["command"]  # type: ignore[operator]
    assert "log_flows: true" in seen["text"]  # type: ignore[operator]


def test_two_captures_of_one_output_get_different_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folders: list[Path] = []
    monkeypatch.setattr(cli, "run_child", lambda command: folders.append(Path(next(a for a in command if a.startswith("blueprint="))[10:]).parent) or 0)
    for _ in range(2):
        assert cli.main(capture_args(tmp_path / "out.yaml")) == 0
    assert folders[0] != folders[1]  # nothing predictable to plant in advance


def test_the_folder_is_removed_when_mitmdump_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folders: list[Path] = []

    def failing(command: list[str]) -> int:
        folders.append(Path(next(a for a in command if a.startswith("blueprint="))[10:]).parent)
        raise OSError("mitmdump vanished")

    monkeypatch.setattr(cli, "run_child", failing)
    with pytest.raises(OSError):
        cli.main(capture_args(tmp_path / "out.yaml"))
    assert folders and not folders[0].exists()


def test_run_child_returns_the_exit_status() -> None:
    import sys

    assert cli.run_child([sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert cli.run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]) == 128 + 15
