"""The in-memory resources behind the auth-api example's handlers.

Each endpoint that names `resources.py` loads its own copy of that file, so the shared list
lives here, in a module `resources.py` imports: Python imports it once per process, and every
endpoint sees the same resources. It is not re-imported when the blueprint reloads (the data
survives an edit of the blueprint or of `resources.py`); restart the gateway to start afresh.
Sync handlers run in worker threads, hence the lock.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

SEED = (
    {"name": "Getting started", "description": "How to call this API"},
    {"name": "Style guide", "description": "House rules for writing resources"},
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class ResourceStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, dict[str, Any]] = {}
        self._next_id = 1
        for fields in SEED:
            self.create(fields, "system")

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(item) for item in self._items.values()]

    def get(self, resource_id: int) -> dict[str, Any] | None:
        with self._lock:
            item = self._items.get(resource_id)
            return dict(item) if item is not None else None

    def create(self, fields: dict[str, Any], username: str) -> dict[str, Any]:
        with self._lock:
            now = _now()
            item = {"id": self._next_id, **fields, "created_by": username, "created_at": now, "updated_at": now}
            self._items[self._next_id] = item
            self._next_id += 1
            return dict(item)

    def update(self, resource_id: int, fields: dict[str, Any], username: str) -> dict[str, Any] | None:
        with self._lock:
            item = self._items.get(resource_id)
            if item is None:
                return None
            item.update(fields, updated_by=username, updated_at=_now())
            return dict(item)

    def delete(self, resource_id: int) -> dict[str, Any] | None:
        with self._lock:
            return self._items.pop(resource_id, None)


STORE = ResourceStore()
