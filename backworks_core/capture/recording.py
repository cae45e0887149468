"""Every input read once: each exchange redacted as it comes and kept compactly (`Recording`: the
distinct bodies plus a few hundred bytes a flow); at the end those that may hold a secret learned
from a later flow are redacted again (`Recording.settle`). A pipe would do as an input.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from backworks_core.capture.formats import FormatError, count_hint, read_any
from backworks_core.capture.model import Exchange
from backworks_core.capture.redact import RedactionRules, Redactor


logger = logging.getLogger(__name__)


class BuildInputError(Exception):
    """An input that cannot be read; the message names the file."""


class Progress:
    """`12,345/100,000 flows` on a terminal (redrawn), or a line every tenth on a log."""

    def __init__(self, stream: IO[str] | None, what: str, total: int | None) -> None:
        self.stream, self.what, self.total = stream, what, total
        self.done = 0
        self.tty = bool(stream is not None and stream.isatty())
        self._last = 0.0
        self._step = max(1_000, (total or 10_000) // 10)  # a log gets a line per tenth, not per flow
        self._next_line = self._step

    def step(self, count: int = 1) -> None:
        self.done += count
        if self.stream is None:
            return
        if self.tty:
            now = time.monotonic()
            if now - self._last >= 0.2:
                self._last = now
                self.stream.write(f"\r{self._text()}")
                self.stream.flush()
        elif self.done >= self._next_line:
            self._next_line += self._step
            self.stream.write(self._text() + "\n")

    def finish(self) -> None:
        if self.stream is not None:
            self.stream.write(("\r" if self.tty else "") + self._text() + "\n")
            self.stream.flush()

    def _text(self) -> str:
        of = f"/{self.total:,}" if self.total else ""
        return f"  {self.what}: {self.done:,}{of} flows"


def read_inputs(inputs: Sequence[str | os.PathLike[str]], rules: RedactionRules | Redactor) -> Iterator[Exchange]:
    """Every exchange, redacted as it comes; pass one `Redactor` for a run, so that a secret
    seen in one exchange is scrubbed from those after it (`read_once` also from those before)."""
    redactor = Redactor.of(rules)
    for path in inputs:
        if not Path(path).is_file():
            raise BuildInputError(f"{path}: no such file")
        try:
            for exchange in read_any(path):
                yield redactor.exchange(exchange)
        except FormatError as exc:
            raise BuildInputError(str(exc)) from None


class Recording:
    """Every exchange of one read, redacted as it came, held compactly until the output is built.

    A header, query pair, path or body seen before is stored as the same object, so a recording
    costs about its distinct bodies plus a few hundred bytes a flow. Each exchange remembers how
    many secrets the run's redactor knew when it was redacted: `settle` redacts again those that
    may hold one learned later (a token handed out in flow 90,000 and sent in flow 3), so the
    output is what a second read, knowing every secret of the run, would give.
    """

    def __init__(self) -> None:
        self._pool: dict[Any, Any] = {}
        self._items: list[tuple[Any, ...] | None] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, exchange: Exchange, learned: int) -> None:
        self._items.append(self._pack(exchange, learned))

    def _pack(self, e: Exchange, learned: int) -> tuple[Any, ...]:
        same = self._pool.setdefault
        return (
            same(e.method, e.method),
            same(e.scheme, e.scheme),
            same(e.host, e.host),
            e.port,
            same(e.path, e.path),
            tuple([same(pair, pair) for pair in e.query]),
            tuple([same(pair, pair) for pair in e.request_headers]),
            same(e.request_body, e.request_body),
            e.status,
            tuple([same(pair, pair) for pair in e.response_headers]),
            same(e.response_body, e.response_body),
            e.started,
            e.duration,
            learned,
        )

    @staticmethod
    def _unpack(item: tuple[Any, ...]) -> Exchange:
        method, scheme, host, port, path, query, request_headers, request_body, status, response_headers, response_body, started, duration, _ = item
        return Exchange(method, scheme, host, port, path, list(query), list(request_headers), request_body, status, list(response_headers), response_body, started, duration)

    def settle(self, redactor: Redactor) -> int:
        """Redact again every exchange that may hold a secret learned after it was redacted
        (`Redactor.outdated`); returns how many were. Redacting again can teach a secret
        itself (rarely): then the others are looked at again, a bounded number of times."""
        redone = 0
        for _ in range(4):
            learned = redactor.learned
            for index, item in enumerate(self._items):
                if item is None or item[-1] >= learned:
                    continue
                exchange = self._unpack(item)
                if redactor.outdated(exchange, item[-1]):
                    self._items[index] = self._pack(redactor.exchange(exchange), learned)
                    redone += 1
            if redactor.learned == learned:
                break
        return redone

    def paths(self) -> Iterator[tuple[str, str]]:
        """(host, path) of every exchange, in order."""
        for item in self._items:
            if item is not None:
                yield item[2], item[4]

    def exchanges(self, release: bool = False) -> Iterator[Exchange]:
        """Every exchange in the order read; with `release`, each is let go once handed out."""
        items = self._items
        for index, item in enumerate(items):
            if item is None:
                continue
            if release:
                items[index] = None
            yield self._unpack(item)
        if release:
            self._items = []
            self._pool.clear()


def read_once(inputs: Sequence[str | os.PathLike[str]], rules: RedactionRules | Redactor, progress: IO[str] | None = None) -> Recording:
    """Every input read once, each exchange redacted as it comes, then settled: those that may
    hold a secret learned from a later flow redacted again (`Recording.settle`)."""
    redactor = Redactor.of(rules)  # one for the run: a secret seen in any flow is scrubbed from all
    total = (sum(count_hint(path) or 0 for path in inputs) or None) if progress is not None else None
    meter = Progress(progress, "reading", total)
    recording = Recording()
    for exchange in read_inputs(inputs, redactor):
        recording.add(exchange, redactor.learned)
        meter.step()
    meter.finish()
    redone = recording.settle(redactor)
    if redone:
        logger.debug("capture: %d exchange(s) redacted again for secrets learned from later flows", redone)
    return recording
