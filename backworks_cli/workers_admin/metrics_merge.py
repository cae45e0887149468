"""The workers' Prometheus metrics merged into one exposition: counters and histograms summed,
gauges kept per worker with a `worker` label, plus the supervisor's own worker series."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:  # the supervisor (backworks_cli.supervisor) imports this package: no cycle
    from backworks_cli.supervisor import WorkerInfo

CUMULATIVE = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
WORKER_LABEL = "worker"

SampleKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, labels in order)


@dataclass
class Family:
    """One metric family: its type, help and samples by (name, labels) in the order first seen."""

    name: str
    type: str
    documentation: str
    samples: dict[SampleKey, float] = field(default_factory=dict)


Families = dict[str, Family]


def parse_metrics(text: str) -> Families:
    """Prometheus text (0.0.4) into families; raises ValueError when it does not parse."""
    families: Families = {}
    for metric in text_string_to_metric_families(text):
        family = families.setdefault(metric.name, Family(metric.name, metric.type, metric.documentation))
        for sample in metric.samples:
            family.samples[(sample.name, tuple(sample.labels.items()))] = float(sample.value)
    return families


def cumulative(families: Families) -> Families:
    """Only what is counted since the start (counters, histograms): what a dead worker leaves."""
    return {name: f for name, f in families.items() if f.type in CUMULATIVE}


def addable_samples(family: Family) -> Iterable[tuple[SampleKey, float]]:
    """A cumulative family's samples that add up across processes (a summary's quantiles do not)."""
    return ((key, value) for key, value in family.samples.items() if not (family.type == "summary" and any(k == "quantile" for k, _ in key[1])))


def merge_metrics(views: Sequence[tuple[int, Families | None]], retired: Families | None = None) -> Families:
    """Families of all workers: counters and histograms summed per label set (plus `retired`,
    the counts of workers gone); gauges (and anything not cumulative) once per worker, with a
    `worker` label. A family whose type differs between workers keeps the first type seen.
    Pure: families in, families out."""
    merged: Families = {}

    def add(family: Family, worker: int | None) -> None:
        into = merged.setdefault(family.name, Family(family.name, family.type, family.documentation))
        if into.type != family.type:
            return
        if family.type in CUMULATIVE:
            for key, value in addable_samples(family):
                into.samples[key] = into.samples.get(key, 0.0) + value
        elif worker is not None:
            for (name, labels), value in family.samples.items():
                into.samples[(name, tuple((k, v) for k, v in labels if k != WORKER_LABEL) + ((WORKER_LABEL, str(worker)),))] = value

    for index, families in sorted(views, key=lambda item: item[0]):
        for family in (families or {}).values():
            add(family, index)
    for family in (retired or {}).values():
        add(family, None)
    return merged


def worker_families(workers: Sequence[WorkerInfo], answered: Iterable[int]) -> Families:
    """The supervisor's own series: how many workers, which answered this scrape, restarts."""
    answered = set(answered)
    count = Family("backworks_workers", "gauge", "Worker processes the supervisor runs.", {("backworks_workers", ()): float(len(workers))})
    up = Family("backworks_worker_up", "gauge", "1 if the worker is alive and its metrics were read for this scrape.")
    restarts = Family("backworks_worker_restarts", "counter", "Times the worker at this index was replaced after it died.")
    for info in sorted(workers, key=lambda w: w.index):
        labels = ((WORKER_LABEL, str(info.index)),)
        up.samples[("backworks_worker_up", labels)] = 1.0 if info.alive and info.index in answered else 0.0
        restarts.samples[("backworks_worker_restarts_total", labels)] = float(info.restarts)
    return {f.name: f for f in (count, up, restarts)}


def exposition(families: Iterable[Family], accept: str = "") -> tuple[bytes, str]:
    """The text format, or OpenMetrics when the scraper asks for it (as a worker answers)."""
    metrics = []
    for family in families:
        metric = Metric(family.name, family.documentation, family.type)
        for (name, labels), value in family.samples.items():
            metric.add_sample(name, dict(labels), value)
        metrics.append(metric)

    class _Collected:
        def collect(self) -> list[Metric]:
            return metrics

    encoder, content_type = choose_encoder(accept)
    return encoder(_Collected()), content_type
