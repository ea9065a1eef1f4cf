#!/usr/bin/env python3
"""Benchmark, in the lab: what each ``xsproto`` command costs before it does any work.

Every command is started as a fresh process, as xl and scripts start it, and timed from
spawn to exit (best of ``--runs``), against ``python3 -c pass`` with the same
interpreter in the same run: the ratio is what xsproto's own imports add to Python's
start-up. ``inspect-image`` reads a small synthetic image, so its own work is a few
milliseconds; ``status`` connects to xenstored and Xen (the heaviest imports); the save
program's import is what each image hook pays before its own work.

Run in the lab:  tools/xenlab run -- .venv/bin/python tools/bench_startup.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xsproto.stream import synthetic

XSPROTO = str(Path(sys.executable).with_name("xsproto"))


def best_of(runs: int, argv: list[str]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True)
        elapsed = time.monotonic() - started
        if done.returncode:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): "
                             f"{done.stderr.decode(errors='replace').strip()}")
        best = min(best, elapsed)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-xen", action="store_true",
                        help="leave out 'status' (for a run on a host without Xen)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parents[1] / ".cache") as d:
        image = Path(d) / "small.img"
        image.write_bytes(synthetic.build_image())
        commands = {
            "python3 -c pass": [sys.executable, "-c", "pass"],
            "xsproto --help": [XSPROTO, "--help"],
            "xsproto inspect-image": [XSPROTO, "inspect-image", str(image)],
            "xsproto request --help": [XSPROTO, "request", "--help"],
        }
        if not args.no_xen:
            commands["xsproto status"] = [XSPROTO, "status"]
            # What save, restore and migrate pay before any work: xenstore, Xen, the hooks.
            commands["import save program"] = [sys.executable, "-c",
                                               "import xsproto.agents.save"]
        seconds = {name: best_of(args.runs, argv) for name, argv in commands.items()}
    base = seconds["python3 -c pass"]
    ratios = {name: s / base for name, s in seconds.items()}
    if args.json:
        print(json.dumps({"runs": args.runs, "seconds": seconds, "ratio_to_python": ratios}))
        return 0
    print(f"best of {args.runs}, each a fresh process; ratio to python3 -c pass")
    for name, s in seconds.items():
        print(f"{name:24} {s:6.3f} s   ratio {ratios[name]:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
