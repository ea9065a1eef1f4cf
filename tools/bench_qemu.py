#!/usr/bin/env python3
"""Benchmark, in the lab: Debian's QEMU 7.2 under stock xl 4.17, with and without
``xsproto-qemu``.

All measured in one run, on paused HVM guests (``xl create -p``: QEMU sets up its
devices, no vCPU runs) with ``memory=128``, ``vga="stdvga"`` and N extra e1000 NICs,
each with its 256 KiB iPXE option ROM (tools/lab/guests.py):

1. the smallest device set stock xl cannot start: N = 0, 1, 2, ... until ``xl create -p``
   fails (QEMU: "xen: failed to populate ram");
2. the pages the shim asks the watcher for with that N, through the wrapper (the
   request as xenstore holds it);
3. start-up: ``xl create -p`` (most of it is QEMU's start-up) of the largest set that
   starts, stock and through the wrapper (the shim loaded, nothing to ask), and of the
   smallest failing set through the wrapper (one negotiation with the watcher): the
   median of ``--rounds`` runs each, interleaved, and the ratios to stock.

Run in the lab:  tools/xenlab run -- .venv/bin/python tools/bench_qemu.py
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
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.lab import guests
from xsproto import paths
from xsproto.adapters import xenstore_records
from xsproto.adapters.xenstore import Xenstore
from xsproto.records import Request

VENV_BIN = Path(sys.executable).parent
XSPROTO = str(VENV_BIN / "xsproto")
WRAPPER = str(VENV_BIN / "xsproto-qemu")
NAME = "bench-qemu"


def create(nics: int, *, wrapped: bool) -> tuple[bool, float]:
    """``xl create -p`` of the guest: whether it started, and how long xl took."""
    started = time.monotonic()
    done = guests.create_paused_hvm(NAME, nics=nics,
                                    device_model=WRAPPER if wrapped else None)
    return done.returncode == 0, time.monotonic() - started


def destroy() -> None:
    subprocess.run(["xl", "destroy", NAME], capture_output=True)


def requested_pages() -> int:
    """The pages of the request the guest's QEMU (in dom0) wrote."""
    domid = guests.domid_of(NAME)
    with Xenstore() as xs:
        raw = xenstore_records.read_request(xs, 0, domid)
    assert raw is not None, f"domain {domid}: no request"
    return Request.parse(raw, where=paths.request_node(0, domid)).pages


def wait_for_watcher(log: Path, watcher: subprocess.Popen[bytes]) -> None:
    while b"watching" not in log.read_bytes():
        if watcher.poll() is not None:
            raise SystemExit(f"the watcher exited:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)


def smallest_failing() -> int:
    for nics in range(guests.MAX_NICS + 1):
        ok, _ = create(nics, wrapped=False)
        destroy()
        if not ok:
            return nics
    raise SystemExit(f"stock xl started every set up to {guests.MAX_NICS} NICs")


@dataclass(frozen=True)
class Found:
    smallest_failing_nics: int
    shim_asked_pages: int
    nics: dict[str, int]
    """The NICs of each kind of start-up measured."""
    seconds: dict[str, list[float]]

    def median(self, kind: str) -> float:
        return statistics.median(self.seconds[kind])

    def ratio(self, kind: str) -> float:
        return self.median(kind) / self.median("stock")


def measure(rounds: int) -> Found:
    fails = smallest_failing()
    if fails == 0:
        raise SystemExit("stock xl cannot start the guest even without extra NICs")
    ok, _ = create(fails, wrapped=True)
    if not ok:
        raise SystemExit(f"the wrapper did not start {fails} NICs either")
    asked = requested_pages()
    destroy()
    kinds = {"stock": (fails - 1, False), "wrapper": (fails - 1, True),
             "wrapper+request": (fails, True)}
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind, (nics, wrapped) in kinds.items():
            ok, elapsed = create(nics, wrapped=wrapped)
            destroy()
            if not ok:
                raise SystemExit(f"{kind} with {nics} NICs did not start")
            seconds[kind].append(elapsed)
    return Found(fails, asked, {kind: nics for kind, (nics, _) in kinds.items()}, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "watcher.log"
        with open(log, "wb") as out:
            watcher = subprocess.Popen([XSPROTO, "watcher"], stdout=out,
                                       stderr=subprocess.STDOUT, env=os.environ)
        try:
            wait_for_watcher(log, watcher)
            found = measure(args.rounds)
        finally:
            watcher.kill()
            destroy()
    if args.json:
        print(json.dumps({**asdict(found),
                          "median_seconds": {k: found.median(k) for k in found.seconds},
                          "ratio_to_stock": {k: found.ratio(k) for k in found.seconds}}))
        return 0
    fails = found.smallest_failing_nics
    print(f"smallest device set stock xl 4.17 cannot start: {fails} e1000 NICs with their "
          f"ROMs (memory=128, stdvga)")
    print(f"pages the shim asked the watcher for, with {fails} NICs: "
          f"{found.shim_asked_pages}")
    print(f"xl create -p, median of {args.rounds} (each run in s), ratio to stock:")
    for kind, runs in found.seconds.items():
        each = " ".join(f"{t:.2f}" for t in runs)
        print(f"  {kind:16} {found.nics[kind]:2} NICs {found.median(kind):6.2f} s ({each})"
              f"   ratio {found.ratio(kind):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
