#!/usr/bin/env python3
"""Benchmark, in the lab: request-to-decision latency against a bare xenstore round trip.

Run inside dom0:  tools/xenlab run -- .venv/bin/python tools/bench_negotiation.py
Both figures come from the same run on the same xenstored; compare the ratio, not the
absolute times (the lab's CPU is emulated).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.lab import fetch, guests
from xsproto.adapters.xenstore import Xenstore
from xsproto.agents.device_model import request_pages


def percentiles(samples: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples, n=100)
    return {"p50_ms": qs[49] * 1e3, "p99_ms": qs[98] * 1e3, "n": len(samples)}


def bare_round_trip(count: int) -> list[float]:
    """Write on one connection, until a watch on another connection sees it."""
    path = "/local/domain/0/data/bench-round-trip"
    samples = []
    with Xenstore() as writer, Xenstore() as watcher:
        watcher.watch(path, "bench")
        watcher.next_event(timeout=10)  # the initial event every new watch fires
        for i in range(count):
            start = time.perf_counter()
            writer.write(path, str(i).encode())
            while (event := watcher.next_event(timeout=10)) is not None and event[0] != path:
                pass
            samples.append(time.perf_counter() - start)
        writer.remove(path)
    return samples


def negotiation(domid: int, count: int) -> list[float]:
    samples = []
    with Xenstore() as xs:
        for i in range(count):
            start = time.perf_counter()
            request_pages(xs, domid, 16 + i % 2, "bench", timeout=60)
            samples.append(time.perf_counter() - start)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    domid = guests.create("bench", kind="pv", memory_mb=128,
                          files=fetch.LabFiles.in_cache(fetch.DEFAULT_CACHE))
    policy = Path(tempfile.mkdtemp()) / "policy.json"
    policy.write_text(json.dumps({"rate": {"burst": 1_000_000, "refill_seconds": 1}}))
    xsproto = str(Path(sys.executable).with_name("xsproto"))
    watcher = subprocess.Popen([xsproto, "--log-level", "WARNING", "watcher", "--policy",
                                str(policy)], env=os.environ)
    try:
        time.sleep(3)
        negotiation(domid, 5)  # warm up both sides
        bare = percentiles(bare_round_trip(args.count))
        proto = percentiles(negotiation(domid, args.count))
    finally:
        watcher.kill()
        guests.destroy("bench")
    kind = Path("/run/xenlab/xenstored").read_text().strip() if Path(
        "/run/xenlab/xenstored").exists() else "?"
    result = {"xenstored": kind, "bare_write_to_watch": bare, "request_to_decision": proto,
              "ratio_p50": proto["p50_ms"] / bare["p50_ms"],
              "ratio_p99": proto["p99_ms"] / bare["p99_ms"]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"xenstored {kind}: bare write->watch p50 {bare['p50_ms']:.2f} ms "
              f"p99 {bare['p99_ms']:.2f} ms (n={bare['n']})")
        print(f"xenstored {kind}: request->decision p50 {proto['p50_ms']:.2f} ms "
              f"p99 {proto['p99_ms']:.2f} ms (n={proto['n']})")
        print(f"ratio request->decision / bare round trip: p50 {result['ratio_p50']:.1f}x, "
              f"p99 {result['ratio_p99']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
