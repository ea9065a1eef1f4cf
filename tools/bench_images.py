#!/usr/bin/env python3
"""Benchmark, in the lab: xsproto save/restore/migrate against stock xl on the same guest.

A guest is granted extra pages through the real watcher (not populated, so that stock xl
can restore it too), then saved, restored and migrated to localhost with xsproto, then
the same with stock xl. Prints each wall time and the ratio xsproto / xl
measured in the same run: what the record, the hold and the checked relay cost.

Run in the lab:  tools/xenlab run --memory 3072 --dom0-memory 2048 -- \\
                     .venv/bin/python tools/bench_images.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.lab import fetch, guests

NAME = "bench-images"
XSPROTO = str(Path(sys.executable).with_name("xsproto"))


def timed(*argv: str) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        faulted = guests.triple_faulted()
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}"
                         + (f"\nthe emulator triple-faulted domain(s) {sorted(faulted)}: "
                            "run again" if faulted else ""))
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", choices=guests.GUEST_TYPES, default="pvh")
    parser.add_argument("--memory", type=int, default=128, metavar="MB")
    parser.add_argument("--pages", type=int, default=2048)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    domid = guests.create(NAME, kind=args.type, memory_mb=args.memory,
                          files=fetch.LabFiles.in_cache(fetch.DEFAULT_CACHE))
    watcher = subprocess.Popen([XSPROTO, "--log-level", "WARNING", "watcher"], env=os.environ)
    times: dict[str, float] = {}
    try:
        time.sleep(3)
        timed(XSPROTO, "request", "--domid", str(domid), "--pages", str(args.pages))
        size = 0
        with tempfile.TemporaryDirectory(dir="/var/lib") as tmp:
            image = str(Path(tmp) / "guest.img")
            # xsproto first, while the domain's grant is recorded (stock xl loses it).
            for tool in ("xsproto", "xl"):
                cmd = XSPROTO if tool == "xsproto" else "xl"
                times[f"{tool} save"] = timed(cmd, "save", NAME, image)
                size = Path(image).stat().st_size
                times[f"{tool} restore"] = timed(cmd, "restore", image)
                os.unlink(image)
                times[f"{tool} migrate"] = timed(cmd, "migrate", "-s", "", NAME,
                                                 f"{cmd} migrate-receive")
    finally:
        watcher.kill()
        subprocess.run(["xl", "destroy", NAME], capture_output=True)
    ratios = {op: times[f"xsproto {op}"] / times[f"xl {op}"]
              for op in ("save", "restore", "migrate")}
    if args.json:
        print(json.dumps({"guest": args.type, "memory_mb": args.memory, "image_bytes": size,
                          "seconds": times, "ratio_xsproto_to_xl": ratios}))
        return 0
    print(f"{args.type} guest, memory={args.memory} MB, image {size / 1e6:.0f} MB, "
          f"{args.pages} pages granted")
    for op in ("save", "restore", "migrate"):
        print(f"{op:8} xsproto {times[f'xsproto {op}']:6.2f} s   xl {times[f'xl {op}']:6.2f} s"
              f"   ratio {ratios[op]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
