"""A blueprint written by capture and mock-from carries the editor modeline, and the schema it
names is written beside it (backworks_core.schema.write_schema_beside) and accepts it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import jsonschema
import pytest
import yaml

from addons import installed_registry
from backworks_core.capture.build import write_output
from backworks_core.capture.model import Exchange
from backworks_core.schema import SCHEMA_FILE, SCHEMA_ID

DATA = Path(__file__).resolve().parents[1] / "data" / "capture"


def exchange(method: str, path: str, status: int = 200, body: object = None, headers: list[tuple[str, str]] | None = None, request_body: bytes = b"") -> Exchange:
    content = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    response_headers = [("Content-Type", "application/json" if not isinstance(body, bytes) else "text/plain")] if content else []
    return Exchange(method, "http", "api.test", 80, path, [], headers or [], request_body, status, response_headers, content, 0.0, 0.001)


def traffic() -> list[Exchange]:
    """Enough variety for every part of a mock blueprint: templates, a data file, `when`, bodies."""
    users = [exchange("GET", f"/users/{n}", body={"id": n, "name": f"user {n}"}) for n in range(1, 9)]
    return [
        *users,
        exchange("GET", "/users/99", 404, {"error": "not found"}),
        exchange("POST", "/users", 201, {"id": 10}, [("Content-Type", "application/json")], b'{"name": "ada"}'),
        exchange("GET", "/me", 200, {"user": "alice"}, [("Authorization", "Bearer a")]),
        exchange("GET", "/me", 200, {"user": "bob"}, [("Authorization", "Bearer b")]),
        exchange("GET", "/motd", 200, b"line one\nline two\n"),
    ]


def build(folder: Path, name: str = "captured.yaml", fmt: str = "blueprint", inputs: list[str] | None = None) -> tuple[Path, str]:
    if inputs is None:
        journal = folder / "journal.jsonl"
        journal.write_text("".join(e.to_json() + "\n" for e in traffic()))
        inputs = [str(journal)]
    output = folder / name
    return output, write_output(inputs, str(output), fmt, name="t", max_examples=2, registry=installed_registry())


def named_schema(blueprint: Path) -> Path:
    first = blueprint.read_text().splitlines()[0]
    prefix = "# yaml-language-server: $schema=./"
    assert first.startswith(prefix), first
    return blueprint.parent / first[len(prefix):]


def assert_valid(blueprint: Path) -> None:
    schema = json.loads(named_schema(blueprint).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(yaml.safe_load(blueprint.read_text())), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def test_a_recorded_blueprint_names_its_schema_and_validates_against_it(tmp_path: Path) -> None:
    output, summary = build(tmp_path)
    assert output.read_text().startswith(f"# yaml-language-server: $schema=./{SCHEMA_FILE}\n")
    assert (tmp_path / "captured.yaml.data").is_dir()  # the data file is in play: examples_file validates too
    assert "when" in output.read_text()
    assert_valid(output)
    schema = tmp_path / SCHEMA_FILE
    assert stat.S_IMODE(schema.stat().st_mode) == 0o600  # written as the other outputs
    assert summary.endswith(f"; editors check it with {SCHEMA_FILE} (its first line says so)")


def test_browsers_hars_mitmproxy_flows_and_several_hosts_validate(tmp_path: Path) -> None:
    inputs = [str(p) for p in sorted(DATA.iterdir()) if p.suffix in (".har", ".mitm")]
    assert len(inputs) >= 3
    output, _ = build(tmp_path, "mocks.yaml", inputs=inputs)
    assert "host:" in output.read_text()
    assert_valid(output)


def test_a_users_file_of_that_name_is_kept(tmp_path: Path) -> None:
    mine = tmp_path / SCHEMA_FILE
    mine.write_text('{"$id": "https://example.com/my-own.json", "type": "object"}\n')
    output, summary = build(tmp_path)
    assert mine.read_text() == '{"$id": "https://example.com/my-own.json", "type": "object"}\n'
    assert named_schema(output) == tmp_path / "captured.yaml.schema.json"
    assert "captured.yaml.schema.json" in summary
    assert_valid(output)


def test_a_symlink_at_the_name_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    (tmp_path / SCHEMA_FILE).symlink_to(elsewhere)
    output, _ = build(tmp_path)
    assert elsewhere.read_text() == "{}" and (tmp_path / SCHEMA_FILE).is_symlink()
    assert named_schema(output).name == "captured.yaml.schema.json"


def test_a_backworks_schema_is_refreshed_and_an_equal_one_left_alone(tmp_path: Path) -> None:
    old = tmp_path / SCHEMA_FILE
    old.write_text(json.dumps({"$id": SCHEMA_ID, "title": "Backworks blueprint", "properties": {}}))  # an older version's
    output, _ = build(tmp_path)
    assert named_schema(output) == old and "endpoints" in json.loads(old.read_text())["properties"]
    before = os.stat(old)
    build(tmp_path, "second.yaml")  # one schema serves the folder's blueprints
    after = os.stat(old)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert named_schema(tmp_path / "second.yaml") == old


@pytest.mark.parametrize("fmt, name", [("openapi", "api.yaml"), ("har", "out.har")])
def test_other_formats_get_no_schema(tmp_path: Path, fmt: str, name: str) -> None:
    output, _ = build(tmp_path, name, fmt)
    assert not (tmp_path / SCHEMA_FILE).exists() and "yaml-language-server" not in output.read_text()


def test_an_unwritable_folder_for_the_schema_still_writes_the_blueprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import backworks_core.capture.build as build_module

    def refuse(blueprint: object, registry: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(build_module, "write_schema_beside", refuse)
    output, summary = build(tmp_path)
    assert output.read_text().startswith("# Mock endpoints recorded by Backworks") and "editors" not in summary
