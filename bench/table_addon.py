"""bench/throughput.py's configuration g: bare mitmdump with Backworks' event table and nothing else.

mitmproxy's own dispatch walks every addon for every event (addons/dispatch.py); Backworks
replaces the walk with a table (option backworks_cached_dispatch, on by default). That makes a
Backworks process faster than bare mitmdump for reasons that are not Backworks' own work, so
configuration g gives bare mitmdump the same table: b/g and e/g are Backworks' own cost on the
same footing. Not part of Backworks; never loaded outside the benchmark.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from addons.dispatch import CachedDispatch  # noqa: E402

addons = [CachedDispatch()]
