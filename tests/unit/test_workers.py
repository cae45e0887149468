"""The pure parts of `backworks run --workers N`: worker commands, restart policy, capture paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backworks_cli.supervisor import (
    RestartPolicy,
    WorkerInfo,
    admin_setting,
    aggregate_admin_address,
    backoff_delay,
    exit_description,
    listen_port,
    worker_command,
    worker_env,
)
from backworks_core.worker_env import merge_captures, worker_identity, worker_journal, write_capture_manifest

MITMDUMP = ["/venv/bin/mitmdump", "--mode", "reverse:http://127.0.0.1:9", "--listen-port", "8080", "-s", "backworks.py", "--set", "blueprint=b.yaml"]


def test_worker_command_runs_the_launcher_with_the_same_arguments_and_its_own_admin_port() -> None:
    command = worker_command(MITMDUMP, "/venv/bin/python", 40001)
    assert command[:3] == ["/venv/bin/python", "-m", "addons.reuse_port"]
    assert command[3 : 3 + len(MITMDUMP) - 1] == MITMDUMP[1:]
    assert command[-4:] == ["--set", "backworks_reuse_port=true", "--set", "backworks_admin=127.0.0.1:40001"]


def test_worker_command_replaces_the_users_admin_setting() -> None:
    user = [*MITMDUMP, "--set", "backworks_admin=127.0.0.1:9999", "--set=backworks_admin=0.0.0.0:1", "--flow-detail", "0"]
    command = worker_command(user, "py", None)
    assert [a for a in command if "backworks_admin" in a] == ["backworks_admin=off"]
    assert command[-6:-4] == ["--flow-detail", "0"]


def test_admin_setting_is_the_last_one() -> None:
    assert admin_setting(["--set", "backworks_admin=1", "--set=backworks_admin=off"]) == "off"
    assert admin_setting(["--set", "other=1"]) is None


class _Blueprint:
    """Enough of a LoadedBlueprint for blueprint_admin_address."""

    class settings:  # noqa: N801
        class server:  # noqa: N801
            class admin:  # noqa: N801
                enabled = True
                host = "127.0.0.1"
                port = 9901
                model_fields_set: set[str] = set()

        class dashboard:  # noqa: N801
            port = None
            host = "127.0.0.1"

    plugin_configs: dict[str, object] = {}


def test_the_aggregate_admin_address_follows_the_option_then_the_blueprint() -> None:
    assert aggregate_admin_address(_Blueprint(), []) == ("127.0.0.1", 9901)
    assert aggregate_admin_address(_Blueprint(), ["--set", "backworks_admin=127.0.0.1:7000"]) == ("127.0.0.1", 7000)
    assert aggregate_admin_address(_Blueprint(), ["--set", "backworks_admin=off"]) is None
    with pytest.raises(ValueError):
        aggregate_admin_address(_Blueprint(), ["--set", "backworks_admin=nonsense:port"])


def test_worker_env_and_identity_round_trip(tmp_path: Path) -> None:
    env = worker_env({"PATH": "/bin"}, 1, 3, tmp_path)
    assert env["PATH"] == "/bin"
    assert worker_identity(env) == (1, 3, tmp_path)
    assert worker_identity({}) is None
    assert worker_identity({**env, "BACKWORKS_WORKER": "3"}) is None  # out of range: not a worker


def test_backoff_doubles_up_to_a_ceiling() -> None:
    assert [backoff_delay(n, 0.5, 4) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1, 2, 4, 4, 4]


def test_restart_policy_gives_up_after_repeated_quick_deaths_only() -> None:
    policy = RestartPolicy(healthy_after=10, base_delay=1, max_delay=8, max_quick_deaths=3)
    assert policy.after_exit(0, uptime=1) == 1
    assert policy.after_exit(0, uptime=1) == 2
    assert policy.after_exit(1, uptime=1) == 1  # counted per worker
    assert policy.after_exit(0, uptime=60) == 0  # ran fine for a while: at once, and the count starts over
    assert policy.after_exit(0, uptime=1) == 1
    assert policy.after_exit(0, uptime=1) == 2
    assert policy.after_exit(0, uptime=1) is None


def test_exit_description_names_the_signal() -> None:
    assert exit_description(-9) == "killed by SIGKILL"
    assert exit_description(3) == "exited with status 3"


def test_worker_journal_is_beside_the_configured_one() -> None:
    assert worker_journal("/d/capture.jsonl", 0) == "/d/capture.worker0.jsonl"
    assert worker_journal("/d/out.har.jsonl", 2) == "/d/out.har.worker2.jsonl"
    assert worker_journal("/d/journal", 1) == "/d/journal.worker1"


def test_worker_info_is_a_frozen_snapshot() -> None:
    info = WorkerInfo(index=0, pid=1, admin_url="http://127.0.0.1:1", started_at=0.0, restarts=0, alive=True)
    with pytest.raises(AttributeError):
        info.alive = False  # type: ignore[misc]


def _exchange_line(path: str) -> str:
    from backworks_core.capture.model import Exchange

    exchange = Exchange(
        method="GET", scheme="http", host="api.test", port=80, path=path,
        request_headers=[], request_body=b"", status=200,
        response_headers=[("content-type", "application/json")], response_body=b'{"ok": true}',
    )
    return exchange.to_json() + "\n"


def test_merge_captures_builds_one_output_from_every_workers_journal(tmp_path: Path) -> None:
    output = tmp_path / "out.har"
    for index, paths in enumerate((["/a", "/b"], ["/c"])):
        journal = tmp_path / f"out.har.worker{index}.jsonl"
        journal.write_text("".join(_exchange_line(p) for p in paths))
        manifest = {"journal": str(journal), "output": str(output), "format": "har", "api_name": "t", "max_examples": 5, "match_headers": [], "redact": {"enabled": True, "headers": [], "fields": []}}
        write_capture_manifest(tmp_path, index, manifest)
    lines: list[str] = []
    summaries = merge_captures(tmp_path, progress=lines.append)
    assert len(summaries) == 1
    assert sorted(e["request"]["url"].rsplit("/", 1)[-1] for e in json.loads(output.read_text())["log"]["entries"]) == ["a", "b", "c"]
    assert "2 worker(s)" in lines[0]


def test_listen_port_is_the_last_one_given() -> None:
    assert listen_port(MITMDUMP) == 8080
    assert listen_port([*MITMDUMP, "-p", "0"]) == 0
    assert listen_port(["mitmdump"]) is None
