#!/usr/bin/env python3
"""Benchmark the save and restore filters against ``cat`` on the same image.

Builds a synthetic ~1 GB image (valid for verify-stream-v2: 4 MiB PAGE_DATA batches, as
libxc writes them) unless --image is given, then times ``cat IMG > /dev/null``, the save
filter (adds the record) and the restore filter (walks and forwards every byte) over it,
each in its own process, best of --runs. Prints throughput ratios against cat and each
filter's peak RSS (from wait4). Filter times are measured inside the child around the
filter call, so interpreter start-up (slow under the lab's emulated CPU) is left out;
wall times including it are printed too.

Run in the lab:  tools/xenlab run --memory 4096 --dom0-memory 3072 -- \\
                     .venv/bin/python tools/bench_stream.py
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xsproto.grant import Grant
from xsproto.stream import relay, summarize, synthetic
from xsproto.stream.reader import write_all
from xsproto.stream.walk import read_head

BATCH = 1024
"""Pages per PAGE_DATA record: libxc's MAX_BATCH_SIZE."""
GRANT = Grant(base_pages=262400, granted_pages=2048)


def build_image(path: Path, size_mb: int) -> None:
    """Write a valid image of about ``size_mb`` MiB without holding it in memory."""
    template = synthetic.build_image(page_batches=(BATCH,))
    summary = summarize(io.BytesIO(template))
    page_data = next(r for r in summary.records if r.name == "PAGE_DATA")
    end = page_data.offset + page_data.size
    batches = max(1, size_mb * (1 << 20) // (BATCH * synthetic.PAGE_SIZE))
    with path.open("wb") as out:
        out.write(template[:end])
        for i in range(1, batches):
            out.write(synthetic.page_data(range(i * BATCH, (i + 1) * BATCH)))
        out.write(template[end:])


def child(kind: str, image: str) -> None:
    """Run one filter from ``image`` to /dev/null; print its own time as JSON."""
    with open(image, "rb") as src, open(os.devnull, "wb", buffering=0) as dst:
        started = time.monotonic()
        if kind == "save":
            relay.add_grant(src, dst, GRANT, source_domid=3)
        else:
            head = read_head(src)
            write_all(dst, head.raw)
            relay.relay_body(src, dst, offset=len(head.raw))
        print(json.dumps({"seconds": time.monotonic() - started}))


def timed(argv: list[str], *, reports: bool) -> tuple[float, float | None, int]:
    """(wall seconds, seconds the child reported or None, peak RSS in KiB)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE if reports else subprocess.DEVNULL)
    out = proc.stdout.read() if proc.stdout is not None else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{argv[0]} failed with status {proc.returncode}")
    inner = float(json.loads(out)["seconds"]) if reports else None
    return wall, inner, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, help="an existing image (default: build one)")
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", choices=["save", "restore"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, str(args.image))
        return 0
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        image = args.image or Path(tmp) / "bench.img"
        if args.image is None:
            build_image(image, args.size_mb)
        size = image.stat().st_size
        print(f"image {image}: {size / (1 << 20):.0f} MiB", file=sys.stderr)
        subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)  # warm
        me = [sys.executable, __file__, "--image", str(image), "--child"]
        results: dict[str, list[tuple[float, float | None, int]]] = {
            "cat": [], "save": [], "restore": []}
        for _ in range(args.runs):
            results["cat"].append(timed(["cat", str(image)], reports=False))
            results["save"].append(timed([*me, "save"], reports=True))
            results["restore"].append(timed([*me, "restore"], reports=True))
    cat = min(wall for wall, _, _ in results["cat"])
    print(f"cat: {cat:.3f} s, {size / cat / 1e6:.0f} MB/s")
    for kind in ("save", "restore"):
        inner = min(i for _, i, _ in results[kind] if i is not None)
        wall = min(w for w, _, _ in results[kind])
        rss = max(r for _, _, r in results[kind])
        print(f"{kind} filter: {inner:.3f} s ({size / inner / 1e6:.0f} MB/s), ratio to cat "
              f"{cat / inner:.2f}; with interpreter start-up {wall:.3f} s, ratio "
              f"{cat / wall:.2f}; peak RSS {rss / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
