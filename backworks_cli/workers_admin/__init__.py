"""One admin listener for N workers: the status page, its JSON API and the metrics, merged.

With `backworks run FILE --workers N` every worker (a mitmdump process) keeps its own admin
listener on an ephemeral 127.0.0.1 port, and the supervisor serves the one listener the outside
sees (`server.admin`), here. A request to it is asked of every live worker at once (bounded by
`FETCH_TIMEOUT`), and what comes back decides what is answered:

- a status document (JSON with `totals` and `pools`): merged (`merge_status`): counts summed,
  each target with every worker's view of it, recent errors of all workers by time, and a
  `workers` section;
- Prometheus text: merged (`merge_metrics`): counters and histograms summed per label set,
  gauges kept per worker with a `worker` label, plus the supervisor's own worker gauges;
- anything else (the page's HTML, a 404): the answer of the lowest-numbered worker, as it is.

The paths are the workers' own (`dashboard.path`, `plugins.metrics.config.path`): the supervisor
reads no blueprint and follows reloads for free. The last page and the kind of each path are
remembered, so that the page and the merged documents still answer while no worker does.

Counts never go down: the counters of a worker that died, was replaced or restarted its
registry are kept at their last value read here (`Carry`); what a worker counted after that
last read and before it died is lost. See docs/scaling.md.

The package, by layer: `status_merge` and `metrics_merge` (pure: documents in, document out),
`carry` (what workers gone leave to the sums), `listener` (the aiohttp server that asks the
workers and answers).
"""

from backworks_cli.workers_admin.carry import MetricsCarry, StatusCarry
from backworks_cli.workers_admin.listener import FAVICON, FETCH_TIMEOUT, PASSED_HEADERS, AdminAggregator, Fetched, serve_admin
from backworks_cli.workers_admin.metrics_merge import (
    CUMULATIVE,
    WORKER_LABEL,
    Families,
    Family,
    SampleKey,
    cumulative,
    exposition,
    merge_metrics,
    parse_metrics,
    worker_families,
)
from backworks_cli.workers_admin.status_merge import (
    BREAKER_ORDER,
    HEALTH_ORDER,
    RECENT_ERRORS,
    STATES,
    Counts,
    Doc,
    WorkerView,
    add_counts,
    is_status_document,
    merge_status,
    status_counts,
    target_verdict,
)

__all__ = [
    "BREAKER_ORDER",
    "CUMULATIVE",
    "FAVICON",
    "FETCH_TIMEOUT",
    "HEALTH_ORDER",
    "PASSED_HEADERS",
    "RECENT_ERRORS",
    "STATES",
    "WORKER_LABEL",
    "AdminAggregator",
    "Counts",
    "Doc",
    "Families",
    "Family",
    "Fetched",
    "MetricsCarry",
    "SampleKey",
    "StatusCarry",
    "WorkerView",
    "add_counts",
    "cumulative",
    "exposition",
    "is_status_document",
    "merge_metrics",
    "merge_status",
    "parse_metrics",
    "serve_admin",
    "status_counts",
    "target_verdict",
    "worker_families",
]
