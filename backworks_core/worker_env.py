"""What a worker of `backworks run --workers N` needs to know about being one, and the capture
merge its supervisor (backworks_cli/supervisor.py) runs: kept in the core layer because the
addons (capture, reuse_port, rate_limit) read it too.

A worker learns its place from the environment the supervisor sets: `BACKWORKS_WORKER` (0-based
index), `BACKWORKS_WORKERS` (how many) and `BACKWORKS_RUN_DIR` (a private folder of this run).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from backworks_core.plugins import PluginRegistry

logger = logging.getLogger(__name__)

WORKER_ENV = "BACKWORKS_WORKER"
WORKERS_ENV = "BACKWORKS_WORKERS"
RUN_DIR_ENV = "BACKWORKS_RUN_DIR"


def worker_identity(environ: dict[str, str] | os._Environ[str] | None = None) -> tuple[int, int, Path] | None:
    """(index, count, run folder) inside a worker of `backworks run --workers N`; None elsewhere."""
    env = os.environ if environ is None else environ
    try:
        index, count, run_dir = int(env[WORKER_ENV]), int(env[WORKERS_ENV]), Path(env[RUN_DIR_ENV])
    except (KeyError, ValueError):
        return None
    return (index, count, run_dir) if 0 <= index < count else None


# -- capture across workers ------------------------------------------------------------------

CAPTURE_MANIFEST = "capture-worker{index}.json"


def worker_journal(journal: str, index: int) -> str:
    """Worker `index`'s own journal beside the configured one: capture.jsonl → capture.worker0.jsonl."""
    path = Path(journal)
    suffix = path.suffix if path.suffix else ""
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return str(path.with_name(f"{stem}.worker{index}{suffix}"))


def write_capture_manifest(run_dir: Path, index: int, manifest: dict[str, object]) -> None:
    """What worker `index` captures to, for the supervisor to merge at the end."""
    from backworks_core.files import write_private

    write_private(run_dir / CAPTURE_MANIFEST.format(index=index), json.dumps(manifest))


def merge_captures(
    run_dir: Path,
    progress: Callable[[str], None] = logger.info,
    only_output: str | None = None,
    registry: PluginRegistry | None = None,
) -> list[str]:
    """Build each capture output (or only `only_output`) from the journals of every worker that
    wrote to it; returns the summaries. A worker's manifest names its journal and the output's
    settings (the last ones it applied: a reload that changed them is followed). With `registry`,
    each blueprint output gets its editor schema beside it (build.write_output)."""
    from backworks_core.capture.build import BuildInputError, write_output
    from backworks_core.capture.redact import RedactionRules

    groups: dict[str, tuple[dict[str, object], list[str]]] = {}
    for path in sorted(run_dir.glob(CAPTURE_MANIFEST.format(index="*"))):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        journal = str(manifest["journal"])
        if only_output is not None and str(manifest["output"]) != only_output:
            continue
        if not Path(journal).is_file() or Path(journal).stat().st_size == 0:
            continue
        settings, journals = groups.setdefault(str(manifest["output"]), (manifest, []))
        journals.append(journal)
    summaries = []
    for output, (settings, journals) in groups.items():
        redact = settings.get("redact") or {}
        assert isinstance(redact, dict)
        rules = RedactionRules.build(bool(redact.get("enabled", True)), redact.get("headers", ()), redact.get("fields", ()))
        try:
            summary = write_output(
                journals,
                output,
                str(settings["format"]),
                name=str(settings["api_name"]),
                max_examples=int(settings["max_examples"]),  # type: ignore[call-overload]
                rules=rules,
                match_headers=list(settings.get("match_headers") or ()),  # type: ignore[call-overload]
                registry=registry,
            )
        except (BuildInputError, OSError) as exc:
            progress(f"capture: writing {output} from {len(journals)} worker journal(s) failed: {exc}; the journals keep every flow: {', '.join(journals)}")
            continue
        summaries.append(summary)
        progress(f"capture: {summary} (from the journals of {len(journals)} worker(s): {', '.join(journals)})")
    return summaries


def reuse_port_problem(platform: str = sys.platform, has_option: bool = hasattr(socket, "SO_REUSEPORT")) -> str | None:
    """Why SO_REUSEPORT cannot share a port between processes here; None when it can (Linux)."""
    if not platform.startswith("linux"):
        return (
            f"SO_REUSEPORT spreads connections across processes only on Linux (this is {platform}); "
            "run one process per port here, or several on different ports behind a load balancer (docs/scaling.md)"
        )
    if not has_option:
        return "this Python has no socket.SO_REUSEPORT; the kernel (Linux 3.9 or later) or the build lacks it"
    return None
