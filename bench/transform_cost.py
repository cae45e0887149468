"""Benchmark: CPU cost per request of a 10-operation transform on a 10 KB JSON body.

Run with ``.venv/bin/python bench/transform_cost.py``. The transform is compiled once, as at
blueprint load, and applied to a fresh copy of a response (and of a request) each time, the way
the proxy applies it per request. Reported: the best of the repeats, in microseconds per apply,
for an identity body and for a gzip-compressed one (decoded, changed, re-encoded), next to the
cost of copying the message alone (subtracted) and of a headers-only transform for scale.

The ten operations (response): set, remove and rename a header; status_map; body set of two
keys (one a template), remove of a key inside every array element (`items[*].internal`), rename
of a nested key, rename inside every element (`items[*].sku` -> `items[*].code`), and one regex
replace. The request side uses the same body operations with path and query operations in place
of status_map and the regex.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mitmproxy import http  # noqa: E402
from mitmproxy.test import tutils  # noqa: E402

from backworks_core.templates import TemplateContext  # noqa: E402
from backworks_core.transforms import CompiledTransform, RequestTransform, ResponseTransform  # noqa: E402

REPEATS = 7
RUNS = 2_000  # applies per repeat


def ten_kb_body() -> bytes:
    items = [
        {"sku": f"SKU-{n:05d}", "name": f"Item number {n}", "price": n * 1.25, "internal": {"cost": n, "warehouse": "north"}, "tags": ["a", "b"]}
        for n in range(76)
    ]
    body = json.dumps({"meta": {"page": 1, "source": "catalog"}, "items": items}).encode()
    assert 9_000 <= len(body) <= 11_500, len(body)
    return body


RESPONSE_TRANSFORM = ResponseTransform.model_validate(
    {
        "headers": {"X-Served-By": "backworks {{now}}"},  # 1
        "remove_headers": ["Server"],  # 2
        "rename_headers": {"X-Upstream": "X-Origin"},  # 3
        "status_map": {203: 200},  # 4
        "body": {
            "set": {"meta.gateway": "backworks", "meta.request": "{{header.x-request-id}}"},  # 5, 6
            "remove": ["items[*].internal"],  # 7
            "rename": {"meta.source": "meta.origin", "items[*].sku": "items[*].code"},  # 8, 9
            "replace": [{"pattern": "Item number", "replacement": "Item"}],  # 10
        },
    }
)

REQUEST_TRANSFORM = RequestTransform.model_validate(
    {
        "headers": {"X-Gateway": "backworks"},  # 1
        "remove_headers": ["Cookie"],  # 2
        "path": {"strip_prefix": "/api"},  # 3
        "query": {"set": {"v": "2"}, "remove": ["debug"]},  # 4, 5
        "body": {
            "set": {"meta.gateway": "backworks"},  # 6
            "remove": ["items[*].internal"],  # 7
            "rename": {"meta.source": "meta.origin", "items[*].sku": "items[*].code"},  # 8, 9
            "replace": [{"pattern": "Item number", "replacement": "Item"}],  # 10
        },
    }
)

HEADERS_ONLY = ResponseTransform.model_validate({"headers": {"X-Served-By": "backworks"}, "remove_headers": ["Server"]})


def per_apply_us(make: Callable[[], http.Message], apply: Callable[[http.Message], None]) -> float:
    """Best of the repeats, microseconds per (copy + apply): the least disturbed by other load."""
    results = []
    for _ in range(REPEATS):
        messages = [make() for _ in range(RUNS)]
        started = time.perf_counter()
        for message in messages:
            apply(message)
        results.append((time.perf_counter() - started) / RUNS * 1e6)
    return min(results)


def main() -> None:
    body = ten_kb_body()
    compressed = gzip.compress(body)
    tctx = TemplateContext(path={}, query={}, headers=http.Headers(x_request_id="bench-1"), auth=None)
    response_t = CompiledTransform(RESPONSE_TRANSFORM)
    request_t = CompiledTransform(REQUEST_TRANSFORM)
    headers_t = CompiledTransform(HEADERS_ONLY)

    def response(content: bytes, encoding: str | None) -> Callable[[], http.Message]:
        headers = {"Content-Type": "application/json", "Server": "upstream", "X-Upstream": "a"}
        if encoding:
            headers["Content-Encoding"] = encoding
        template = tutils.tresp(status_code=203, headers=http.Headers(**{k.replace("-", "_"): v for k, v in headers.items()}), content=b"")
        template.raw_content = content
        return template.copy

    def request(content: bytes, encoding: str | None) -> Callable[[], http.Message]:
        template = tutils.treq(method=b"POST", path=b"/api/orders?debug=1&x=y", headers=http.Headers(content_type="application/json", cookie="a=b"), content=b"")
        if encoding:
            template.headers["Content-Encoding"] = encoding
        template.raw_content = content
        return template.copy

    # sanity: the transform does what it says, once
    sample = response(body, None)()
    response_t.apply_response(sample, tctx)  # type: ignore[arg-type]
    changed = json.loads(sample.raw_content or b"")
    assert changed["meta"]["origin"] == "catalog" and "internal" not in changed["items"][0] and changed["items"][0]["code"] == "SKU-00000"
    assert sample.status_code == 200 and "Server" not in sample.headers and sample.headers["X-Origin"] == "a"
    sample = response(compressed, "gzip")()
    response_t.apply_response(sample, tctx)  # type: ignore[arg-type]
    assert json.loads(gzip.decompress(sample.raw_content or b""))["meta"]["gateway"] == "backworks"

    rows = []
    for label, content, encoding in (("identity", body, None), ("gzip", compressed, "gzip")):
        copy_only = per_apply_us(response(content, encoding), lambda m: None)
        full = per_apply_us(response(content, encoding), lambda m: response_t.apply_response(m, tctx))  # type: ignore[arg-type]
        rows.append((f"response, 10 ops, {label}", full - copy_only))
        copy_only = per_apply_us(request(content, encoding), lambda m: None)
        full = per_apply_us(request(content, encoding), lambda m: request_t.apply_request(m, tctx))  # type: ignore[arg-type]
        rows.append((f"request, 10 ops, {label}", full - copy_only))
    copy_only = per_apply_us(response(body, None), lambda m: None)
    full = per_apply_us(response(body, None), lambda m: headers_t.apply_response(m, tctx))  # type: ignore[arg-type]
    rows.append(("response, 2 header ops", full - copy_only))

    print(f"body: {len(body):,} bytes of JSON ({len(compressed):,} gzip); {RUNS:,} applies x {REPEATS} repeats, best of")
    print(f"{'transform':<32} {'µs/request':>11}")
    for label, cost in rows:
        print(f"{label:<32} {cost:>11.1f}")


if __name__ == "__main__":
    main()
