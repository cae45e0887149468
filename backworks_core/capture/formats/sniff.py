"""Which reader a file needs, from its first bytes, and how many records it holds (for progress)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from backworks_core.capture.formats.common import FileKind, FormatError, PathLike, _ZLIB_MAGICS, _head, _open_binary
from backworks_core.capture.formats.flows import _count_tnetstrings, read_flows
from backworks_core.capture.formats.har import read_har
from backworks_core.capture.formats.jsonl import read_jsonl
from backworks_core.capture.model import Exchange


_TNETSTRING_START = re.compile(rb"^\d{1,12}:")
_HAR_START = re.compile(rb'^\{\s*"log"\s*:')
_JSONL_START = re.compile(rb'^\{\s*"method"\s*:')


def sniff_format(path: PathLike) -> FileKind:
    """Which of the three formats a file is, from its first bytes; FormatError naming it otherwise."""
    path = Path(path)
    try:
        head = _head(path)
    except OSError as e:
        raise FormatError(f"{path}: cannot read: {e.strerror or e}") from e
    stripped = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if _TNETSTRING_START.match(stripped):
        return "flows"
    if stripped.startswith(b"{"):
        if _HAR_START.match(stripped):
            return "har"
        first = stripped.split(b"\n", 1)[0]
        try:
            value = json.loads(first)
        except ValueError:
            value = None
        if isinstance(value, dict):
            if "log" in value:
                return "har"
            if "method" in value and "host" in value:
                return "jsonl"
        if value is None and _JSONL_START.match(stripped):
            return "jsonl"  # a record cut short by a crash; read_jsonl warns about it
        if value is None and b"\n" in stripped:
            return "har"  # a pretty-printed JSON object whose first key is not "log": read_har judges
    if not head:
        raise FormatError(f"{path}: the file is empty")
    shown = head[:16]
    raise FormatError(
        f"{path}: not a HAR file, JSON lines of captured exchanges or a mitmproxy flow file (it starts with {shown!r})"
    )


def read_any(path: PathLike) -> Iterator[Exchange]:
    """Exchanges from a HAR file, JSON lines or a mitmproxy flow file, whichever `path` is."""
    kind = sniff_format(path)  # raises before the first next() would, as a plain function
    return {"har": read_har, "jsonl": read_jsonl, "flows": read_flows}[kind](path)


_REQUEST_KEY = re.compile(rb'(?<!\\)"request"\s*:')


def count_hint(path: PathLike) -> int | None:
    """About how many records the file holds, for a progress bar; None when counting is not cheap.

    JSON lines: non-blank lines. Flow files: records (non-HTTP flows and flows without a response
    are counted too). HAR: `"request":` keys (bodies are escaped, so they do not count). An upper
    bound in every case: what is skipped on reading is counted.
    """
    path = Path(path)
    try:
        kind = sniff_format(path)
        if kind == "flows":
            return _count_tnetstrings(path)
        count = 0
        with _open_binary(path) as handle:
            if kind == "jsonl":
                for line in handle:
                    count += bool(line.strip())
                return count
            head = handle.read(2)
            if head.startswith(_ZLIB_MAGICS):
                return None
            buffer = head
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                buffer += chunk
                cut = len(buffer) - 32  # a match starting after this may continue in the next chunk
                count += sum(1 for m in _REQUEST_KEY.finditer(buffer) if m.start() < cut)
                buffer = buffer[max(cut, 0) :]
            return count + len(_REQUEST_KEY.findall(buffer))
    except (FormatError, OSError):
        return None
