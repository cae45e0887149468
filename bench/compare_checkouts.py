#!/usr/bin/env python3
"""Benchmark: what a change costs per request, this checkout against another, in one run.

Run with ``.venv/bin/python bench/compare_checkouts.py --baseline DIR [--rounds 4] [--configs be]``
where DIR is another checkout of Backworks, e.g. the previous main exported with
``git archive <commit> | tar -x -C DIR``.

bench/throughput.py measures one checkout against bare mitmdump; this runs it alternately on the
baseline and on this checkout (baseline, current, baseline, current, ...), one round each, so
that drift of the machine affects both alike, and reports for each configuration the median over
rounds of

- the mitmdump process's CPU time per request (the cost itself: least disturbed by noise, since
  it does not depend on how busy the other core was), and
- req/s as a ratio to bare mitmdump measured in the same round (what a client sees),

with the change from the baseline in percent. Every measurement is bench/throughput.py's own
(wrk on 127.0.0.1, bounded durations, its pinning and noise checks); see its docstring.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_round(checkout: Path, configs: str, args: argparse.Namespace, out: Path) -> dict[str, dict[str, float]]:
    command = [
        sys.executable, str(ROOT / "bench" / "throughput.py"), "--backworks", str(checkout), "--configs", configs,
        "--rounds", "1", "--duration", str(args.duration), "--warmup", str(args.warmup), "--json", str(out),
    ]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL if not args.verbose else None)
    return json.loads(out.read_text())["medians"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the other checkout (e.g. the previous main, exported)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per checkout, interleaved (default 4)")
    parser.add_argument("--configs", default="be", help="throughput.py configurations besides a, as letters (default be)")
    parser.add_argument("--duration", type=float, default=8, help="seconds per measurement (default 8)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of discarded load first (default 2)")
    parser.add_argument("--verbose", action="store_true", help="show throughput.py's own tables")
    args = parser.parse_args(argv)
    keys = [k for k in args.configs.replace(",", "") if k != "a"]
    configs = "".join(["a", *keys])  # throughput.py takes letters: "abe"
    checkouts = {"baseline": args.baseline.resolve(), "current": ROOT}
    rounds: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory(prefix="backworks-compare-") as work:
        for index in range(args.rounds):
            for name, checkout in checkouts.items():
                rounds[name].append(run_round(checkout, configs, args, Path(work) / f"{name}-{index}.json"))

    print()
    print(f"{args.rounds} interleaved round(s) per checkout; baseline: {checkouts['baseline']}; current: {ROOT}")
    header = f"{'config':<6} | {'CPU ms/req base':>15} | {'CPU ms/req now':>14} | {'change':>7} | {'vs bare base':>12} | {'vs bare now':>11}"
    print(header)
    print("-" * len(header))
    for key in keys:
        cpu = {name: statistics.median(r[key]["proxy_cpu_ms"] for r in rs) for name, rs in rounds.items()}
        ratio = {name: statistics.median(r[key]["rps"] / r["a"]["rps"] for r in rs) for name, rs in rounds.items()}
        change = (cpu["current"] / cpu["baseline"] - 1) * 100
        print(
            f"{key:<6} | {cpu['baseline']:>15.3f} | {cpu['current']:>14.3f} | {change:>+6.1f}% | "
            f"{ratio['baseline']:>12.2f} | {ratio['current']:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
