"""The `backworks` command as a user runs it: init a project, then run it and call it."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import BIN, ROOT, Upstream, free_port, request, wait_for_port

pytestmark = pytest.mark.integration


def run_backworks(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "backworks"), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=15)
    return output.decode(errors="replace")


def test_init_then_run_serves_the_starter_project(tmp_path: Path) -> None:
    project = tmp_path / "my-api"
    created = subprocess.run([str(BIN / "backworks"), "init", str(project)], capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    validated = subprocess.run([str(BIN / "backworks"), "validate", str(project / "blueprint.yaml")], capture_output=True, text=True, timeout=60)
    assert validated.returncode == 0, validated.stderr
    assert "OK" in validated.stdout

    port = free_port()
    # run from another directory: handler paths are relative to the blueprint, not the cwd
    process = run_backworks("run", str(project / "blueprint.yaml"), "--port", str(port), cwd=tmp_path)
    try:
        wait_for_port(port, process=process)
        assert request("GET", "/hello", port=port).json["message"] == "Hello from my-api"
        greeting = request("GET", "/hello/ada", port=port)
        assert greeting.json == {"message": "Hello, ada!"}
        assert greeting.header("X-Greeting") == "yes"
        missing = request("GET", "/nope", port=port)  # reverse mode: unmatched is a 404
        assert missing.status == 404
    finally:
        output = stop(process)
    assert f"serving 'my-api' on http://127.0.0.1:{port}" in output


def test_init_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = subprocess.run([str(BIN / "backworks"), "init", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "not empty" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_run_refuses_an_invalid_blueprint(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nendpoints:\n  - {path: /x, handler: static, config: {static: {status: 99}}}\n")
    result = subprocess.run([str(BIN / "backworks"), "run", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"{path}:3:59: endpoints[0].config.static.status: input should be greater than or equal to 100" in result.stderr


def test_hello_world_example_as_documented(tmp_path: Path) -> None:
    port = free_port()
    process = run_backworks("run", str(ROOT / "blueprints" / "hello-world" / "blueprint.yaml"), "--port", str(port), cwd=tmp_path)
    try:
        wait_for_port(port, process=process)
        hello = request("GET", "/hello", port=port).json
        assert hello["message"] == "Hello from hello-world-api!"
        assert hello["timestamp"].startswith("20")
        echo = request("POST", "/echo", port=port, body=b'{"name":"Ada"}', headers={"Content-Type": "application/json"})
        assert echo.header("X-Handler-Type") == "external-python"
        assert echo.json["echo"] == {"name": "Ada"}
        assert echo.json["metadata"]["method"] == "POST"
        assert echo.json["metadata"]["path"] == "/echo"
        assert echo.json["metadata"]["handler_source"] == "external-file"
        wrong = request("GET", "/echo", port=port)
        assert wrong.status == 405 and wrong.header("Allow") == "POST"
    finally:
        stop(process)


def test_init_proxy_then_run_is_a_gateway_in_front_of_the_api(tmp_path: Path) -> None:
    api = Upstream("my-api").start()
    try:
        project = tmp_path / "gateway"
        created = subprocess.run([str(BIN / "backworks"), "init", str(project), "--proxy", api.url], capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        blueprint = (project / "blueprint.yaml").read_text()
        assert blueprint.startswith("# yaml-language-server: $schema=./blueprint.schema.json\n")
        assert (project / "blueprint.schema.json").is_file() and not (project / "handlers").exists()
        port = free_port()
        process = run_backworks("run", str(project / "blueprint.yaml"), "--port", str(port), cwd=tmp_path)
        try:
            wait_for_port(port, process=process)
            root = request("GET", "/", port=port)  # the catch-all answers the root too
            assert root.status == 200 and root.json["path"] == "/"
            posted = request("POST", "/orders/7?x=1", port=port, body=b'{"a": 1}', headers={"Content-Type": "application/json"})
            assert posted.status == 200 and posted.json["path"] == "/orders/7" and posted.json["query"] == "x=1"
        finally:
            stop(process)
        assert [(r.method, r.path) for r in api.received if r.path != "/"][-1:] == [("POST", "/orders/7")]
    finally:
        api.stop()
