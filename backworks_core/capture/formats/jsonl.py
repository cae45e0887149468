"""The capture journal: one `Exchange.to_json()` per line, appended as flows complete."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from backworks_core.capture.formats.common import FormatError, PathLike, _open_binary
from backworks_core.capture.model import Exchange
from backworks_core.files import open_append_private, private_output


logger = logging.getLogger(__name__)


def read_jsonl(path: PathLike) -> Iterator[Exchange]:
    """Exchanges from JSON lines of `Exchange.to_json()` (what the live capture writes).

    A last line that does not parse (a write cut short by a crash) is skipped with a warning;
    a bad line anywhere else is an error naming the file and line.
    """
    path = Path(path)
    with _open_binary(path) as handle:
        pending: tuple[int, bytes] | None = None
        for number, line in enumerate(handle, start=1):
            if pending is not None:
                yield _jsonl_exchange(path, *pending)
                pending = None
            if line.strip():
                pending = (number, line)
        if pending is not None:
            number, line = pending
            try:
                exchange = _jsonl_exchange(path, number, line)
            except FormatError:
                logger.warning("%s:%d: skipped an incomplete last line (%d bytes), as a crash leaves it", path, number, len(line))
                return
            yield exchange


def _jsonl_exchange(path: Path, number: int, line: bytes) -> Exchange:
    try:
        return Exchange.from_json(line.decode("utf-8-sig" if number == 1 else "utf-8"))
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise FormatError(f"{path}:{number}: not an exchange record: {e}") from e


def write_jsonl(exchanges: Iterable[Exchange], path: PathLike, *, append: bool = False) -> int:
    """Write exchanges as JSON lines (the live capture's format); returns how many were written."""
    count = 0
    with open_append_private(path) if append else private_output(path) as out:  # 0600, never through a symlink
        for exchange in exchanges:
            out.write(exchange.to_json() + "\n")
            count += 1
    return count
