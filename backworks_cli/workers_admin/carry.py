"""What dead workers leave: their last counts, kept so that the merged sums never go down."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backworks_cli.workers_admin.metrics_merge import Families, Family, addable_samples, cumulative
from backworks_cli.workers_admin.status_merge import Counts, WorkerView, add_counts, is_status_document, status_counts

if TYPE_CHECKING:  # the supervisor (backworks_cli.supervisor) imports this package: no cycle
    from backworks_cli.supervisor import WorkerInfo


@dataclass
class _Last:
    pid: int
    value: Any


class StatusCarry:
    """The status counts of workers gone: a worker's last counts, kept when its pid changes or it dies."""

    def __init__(self) -> None:
        self.retired: Counts = {}
        self._last: dict[int, _Last] = {}

    def update(self, views: Sequence[WorkerView]) -> Counts:
        listed = {v.info.index for v in views}
        for index in [i for i in self._last if i not in listed]:
            add_counts(self.retired, self._last.pop(index).value)
        for view in views:
            last = self._last.get(view.info.index)
            if last is not None and (last.pid != view.info.pid or not view.info.alive):
                add_counts(self.retired, self._last.pop(view.info.index).value)
            if view.info.alive and is_status_document(view.doc):
                self._last[view.info.index] = _Last(view.info.pid, status_counts(view.doc))
        return self.retired


def _went_down(old: Family, new: Family | None) -> bool:
    """A counter that shrank, or vanished: the worker's registry started afresh."""
    if new is None or new.type != old.type:
        return True
    return any(new.samples.get(key, -1.0) < value for key, value in addable_samples(old))


class MetricsCarry:
    """The counters of workers gone, so that the sums Prometheus scrapes never go down.

    Per worker, the last families read; when its pid changes or it dies they join `retired`, and
    so does one family whose counts went down while the pid stayed (a reload that changed the
    histogram buckets starts a fresh registry). A live worker that does not answer a scrape
    counts with its last families read.
    """

    def __init__(self) -> None:
        self.retired: Families = {}
        self._last: dict[int, _Last] = {}

    def _retire(self, families: Iterable[Family]) -> None:
        for family in families:
            into = self.retired.setdefault(family.name, Family(family.name, family.type, family.documentation))
            if into.type == family.type:
                for key, value in addable_samples(family):
                    into.samples[key] = into.samples.get(key, 0.0) + value

    def update(self, views: Sequence[tuple[WorkerInfo, Families | None]]) -> list[tuple[int, Families | None]]:
        """The families to merge for each worker this time."""
        listed = {info.index for info, _ in views}
        for index in [i for i in self._last if i not in listed]:
            self._retire(self._last.pop(index).value.values())
        chosen: list[tuple[int, Families | None]] = []
        for info, families in views:
            last = self._last.get(info.index)
            if last is not None and (last.pid != info.pid or not info.alive):
                self._retire(self._last.pop(info.index).value.values())
                last = None
            if not info.alive:
                continue
            if families is None:
                chosen.append((info.index, last.value if last is not None else None))
                continue
            counted = cumulative(families)
            if last is not None:
                self._retire(old for name, old in last.value.items() if _went_down(old, counted.get(name)))
            self._last[info.index] = _Last(info.pid, counted)
            chosen.append((info.index, families))
        return chosen
