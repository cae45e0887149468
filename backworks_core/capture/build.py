"""From recorded exchanges to an output: a blueprint of mock endpoints, OpenAPI 3.1, or HAR 1.2.

`write_output` is the one entry point (`backworks mock-from`, the capture plugin at shutdown):
every input is read once (`recording.read_once`; a pipe would do), each exchange redacted as it
comes; the exchanges are grouped into endpoints (`endpoints.collect`: templates inferred per host
from every path, every distinct exchange kept, a bounded number of body samples for the schemas);
then one writer turns the endpoints into the output (`formats.blueprint`, whose bulk goes in a data
folder beside it; `formats.openapi`; `formats.har`). The names of those modules that callers
used from here before they moved are re-exported.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

from backworks_core.capture.endpoints import DROPPED_HEADERS, MATCH_HEADERS, SCHEMA_SAMPLES, BuildStats, Endpoint, collect
from backworks_core.capture.formats import OperationSpec, openapi_document, write_har
from backworks_core.capture.formats.blueprint import (
    YAML_DATA_DEPTH,
    BlueprintDumper,
    blueprint_document,
    body_fields,
    dump_blueprint,
    endpoint_examples,
    json_layout_of,
    literal,
    mock_examples,
    request_body_config,
)
from backworks_core.capture.infer import select_examples
from backworks_core.capture.json_schema import infer_schema
from backworks_core.capture.recording import BuildInputError, Progress, Recording, read_inputs, read_once
from backworks_core.capture.redact import RedactionRules, Redactor
from backworks_core.files import private_output, write_private
from backworks_core.plugins import PluginRegistry
from backworks_core.schema import modeline, write_schema_beside

__all__ = [
    "DROPPED_HEADERS",
    "MATCH_HEADERS",
    "SCHEMA_SAMPLES",
    "YAML_DATA_DEPTH",
    "BlueprintDumper",
    "BuildInputError",
    "BuildStats",
    "Endpoint",
    "Progress",
    "Recording",
    "blueprint_document",
    "body_fields",
    "collect",
    "dump_blueprint",
    "endpoint_examples",
    "json_layout_of",
    "literal",
    "mock_examples",
    "openapi_operations",
    "read_inputs",
    "read_once",
    "request_body_config",
    "write_output",
]

logger = logging.getLogger(__name__)


def openapi_operations(endpoints: Sequence[Endpoint], max_examples: int) -> list[OperationSpec]:
    operations = []
    for endpoint in endpoints:
        group = endpoint.group
        operations.append(
            OperationSpec(
                method=group.method,
                template=group.template,
                host=group.host,
                examples=select_examples(group, max_examples),
                request_schema=infer_schema(endpoint.request_samples) if endpoint.request_samples else None,
                response_schemas={status: infer_schema(samples) for status, samples in endpoint.response_samples.items() if samples},
                summary=f"{group.method} {group.template}",
                evidence=endpoint.evidence,
            )
        )
    return operations


def write_output(
    inputs: Sequence[str],
    output: str,
    fmt: str,
    *,
    name: str,
    max_examples: int = 5,
    rules: RedactionRules | Redactor | None = None,
    progress: IO[str] | None = None,
    match_headers: Iterable[str] = MATCH_HEADERS,
    registry: PluginRegistry | None = None,
) -> str:
    """Read `inputs`, write `output` in `fmt` (mode 0600, atomically: a temporary file, then a rename).

    A blueprint keeps every distinct exchange answerable: up to `max_examples` answers per
    endpoint inline, the rest in `OUTPUT.data/` (one JSON-lines file per endpoint, written
    before the blueprint that names them; files of an earlier build no longer named are
    removed). The summary says what was left out, with counts. With `registry` (the plugins a
    blueprint may configure), a blueprint gets its JSON Schema beside it and a modeline naming it.
    """
    rules = Redactor.of(rules)  # one per run: secrets seen in any flow are scrubbed from all
    target = Path(output)
    if fmt == "har":  # read whole first: a secret of the last flow goes from the first entry too
        written = write_har(read_once(inputs, rules, progress).exchanges(release=True), target)  # 0600, atomically
        return f"wrote {target}: HAR 1.2 with {written} entries"
    if fmt not in ("openapi", "blueprint"):
        raise BuildInputError(f"unknown output format {fmt!r} (expected blueprint, openapi or har)")
    stats = BuildStats()
    endpoints, flows = collect(inputs, rules, progress, evidence=fmt == "openapi", match_headers=match_headers, stats=stats)
    stats.distinct = sum(len(e.group.exchanges) for e in endpoints)
    data_files: dict[str, list[dict[str, Any]]] = {}
    editor_help: str | None = None  # a blueprint's schema file, for the modeline
    if fmt == "openapi":
        document = openapi_document(openapi_operations(endpoints, max_examples), name)
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True) if target.suffix in (".yaml", ".yml") else _json(document)
        kind = "OpenAPI 3.1"
        stats.shown = sum(len(select_examples(e.group, max_examples)) for e in endpoints)
    else:
        folder = target.name + ".data"
        document = blueprint_document(endpoints, name, max_examples, match_headers=match_headers, data_files=data_files, data_folder=folder)
        text = "# Mock endpoints recorded by Backworks. Serve them: backworks run THIS_FILE\n" + dump_blueprint(document)
        kind = "a blueprint"
        editor_help = _editor_schema(target, registry) if registry is not None else None
        if editor_help is not None:
            text = modeline(editor_help) + text
        if data_files:
            _write_data_files(target.parent / folder, target.parent, data_files)
            stats.data_files = len(data_files)
            stats.data_answers = sum(len(lines) for lines in data_files.values())
    write_private(target, text)  # 0600, atomically, never through a symlink at the name
    if fmt == "blueprint":
        _remove_stale_data(target.parent / (target.name + ".data"), {target.parent / relative for relative in data_files})
    summary = f"wrote {target}: {kind} with {len(endpoints)} endpoint(s) from {flows} flow(s)" + _left_out(stats, fmt, target.name + ".data")
    if editor_help is not None:
        summary += f"; editors check it with {editor_help} (its first line says so)"
    return summary


def _editor_schema(blueprint: Path, registry: PluginRegistry) -> str | None:
    """The schema an editor checks the blueprint with, written beside it (backworks_core.schema);
    None when it cannot be written: the blueprint is what was asked for, the schema a help."""
    try:
        return write_schema_beside(blueprint, registry)
    except OSError as exc:
        logger.warning("capture: no editor schema beside %s: %s", blueprint, exc.strerror or exc)
        return None


def _left_out(stats: BuildStats, fmt: str, folder: str) -> str:
    """The summary's tail: where the bulk went and what was not written, with counts."""
    parts = []
    if fmt == "blueprint":
        parts.append(f"every one of the {stats.distinct} distinct exchange(s) answerable")
        if stats.data_files:
            parts.append(f"{stats.data_answers} answer(s) beyond max_examples in {folder}/ ({stats.data_files} file(s))")
    else:
        parts.append(f"{stats.shown} of {stats.distinct} distinct exchange(s) shown as examples (max_examples)")
    if stats.repeated:
        parts.append(f"{stats.repeated} repeated answer(s) left out (the same request answered as the time before)")
    if stats.unroutable:
        parts.append(f"{stats.unroutable} flow(s) left out: a path no endpoint can serve (`*`, `//`)")
    return "; " + "; ".join(parts)


def _data_folder(folder: Path) -> None:
    """`folder` as a private folder of ours; never a symlink or someone else's folder planted at its name."""
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        folder.mkdir(mode=0o700)
        return
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise BuildInputError(f"{folder} is {'a symbolic link' if stat.S_ISLNK(info.st_mode) else 'not a folder'}; remove it or choose another output")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise BuildInputError(f"{folder} belongs to another user; remove it or choose another output")


def _write_data_files(folder: Path, base: Path, data_files: dict[str, list[dict[str, Any]]]) -> None:
    _data_folder(folder)
    for relative, examples in data_files.items():
        with private_output(base / relative) as handle:  # 0600, atomically
            for example in examples:
                handle.write(json.dumps(example, ensure_ascii=False, separators=(",", ":")) + "\n")


_DATA_FILE = re.compile(r"\d{3,}-[a-z0-9-]*\.jsonl")


def _remove_stale_data(folder: Path, written: set[Path]) -> None:
    """Data files of an earlier build that this blueprint no longer names; the folder when empty."""
    try:
        if not folder.is_dir() or folder.is_symlink():
            return
        for path in folder.iterdir():
            if _DATA_FILE.fullmatch(path.name) and path not in written and path.is_file() and not path.is_symlink():
                path.unlink()
        if not written and not any(folder.iterdir()):
            folder.rmdir()
    except OSError as exc:  # a leftover file is harmless: the blueprint names only its own
        logger.warning("capture: could not tidy %s: %s", folder, exc)


def _json(document: dict[str, Any]) -> str:
    import json

    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # pragma: no cover - a developer's shortcut
    print(write_output(sys.argv[1:-1], sys.argv[-1], "blueprint", name="captured"))
