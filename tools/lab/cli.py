"""Command line of the lab: ``xenlab fetch``, ``xenlab run -- CMD``, ``xenlab guest ...``."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import fetch, guests, qemu


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xenlab", description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path(
        os.environ.get("XENLAB_CACHE", fetch.DEFAULT_CACHE)),
        help="where downloads and images live (default: %(default)s, or $XENLAB_CACHE)")
    sub = parser.add_subparsers(dest="verb", required=True)

    f = sub.add_parser("fetch", help="download and build what the lab boots")
    f.add_argument("--force", action="store_true", help="rebuild even when fresh")

    r = sub.add_parser("run", help="boot the lab, run CMD in dom0, power off")
    r.add_argument("--xenstored", choices=qemu.XENSTOREDS, default="c")
    r.add_argument("--memory", type=int, default=3072, metavar="MB",
                   help="the machine's memory (default: %(default)s)")
    r.add_argument("--dom0-memory", type=int, default=1024, metavar="MB",
                   help="dom0's share of it (default: %(default)s)")
    r.add_argument("--timeout", type=float, default=1800, metavar="S",
                   help="stop the lab after this long (default: %(default)s)")
    r.add_argument("--quiet", action="store_true", help="print only CMD's output")
    r.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")

    g = sub.add_parser("guest", help="(inside dom0) create and destroy test guests")
    gs = g.add_subparsers(dest="guest_verb", required=True)
    gc = gs.add_parser("create", help="boot a Debian kernel + busybox guest")
    gc.add_argument("name")
    gc.add_argument("--type", choices=guests.GUEST_TYPES, default="pvh")
    gc.add_argument("--memory", type=int, default=128, metavar="MB")
    ge = gs.add_parser("empty", help="create empty domains (no kernel) for scale tests")
    ge.add_argument("--count", type=int, default=1)
    ge.add_argument("--memory", type=int, default=4, metavar="MB")
    gd = gs.add_parser("destroy", help="destroy a domain by name or id")
    gd.add_argument("domain")
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_on_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP unwind normally, so the lab is powered off on the way
    out (even when started in the background, where SIGINT is inherited as ignored)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


def hidden_from_dom0(places: dict[str, Path]) -> str | None:
    """Why dom0 could not see one of ``places`` (None: it sees them all). Refused up front,
    before minutes of downloads or a boot end in "No such file or directory"."""
    for what, path in places.items():
        if mount := qemu.hidden_in_dom0(path):
            return (f"xenlab: {what} {path} is under {mount}, which dom0 mounts a file "
                    f"system of its own on: the lab could not find it there. Put the project "
                    f"elsewhere (e.g. under /root or /srv) and run it from there.")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    _stop_on_signals()
    args = build_parser().parse_args(argv)
    if args.verb == "fetch":
        if why := hidden_from_dom0({"the checkout": fetch.REPO, "the lab's cache": args.cache}):
            print(why, file=sys.stderr)
            return 2
        fetch.fetch(args.cache, force=args.force)
        return 0
    if args.verb == "run":
        return run(args)
    return guests.main(args, fetch.LabFiles.in_cache(args.cache))


def run(args: argparse.Namespace) -> int:
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        print("xenlab: run needs a command: xenlab run -- CMD [ARGS...]", file=sys.stderr)
        return 2
    if why := hidden_from_dom0({"the working directory": Path.cwd(), "the checkout": fetch.REPO,
                                "the lab's cache": args.cache}):
        print(why, file=sys.stderr)
        return 2
    if not fetch.is_fresh(args.cache) or fetch.missing_host_packages():
        fetch.fetch(args.cache)
    run_dir = qemu.make_run_dir()
    try:
        cfg = qemu.BootConfig(fetch.LabFiles.in_cache(args.cache), run_dir,
                              memory_mb=args.memory, dom0_memory_mb=args.dom0_memory,
                              xenstored=args.xenstored)
    except ValueError as e:
        print(f"xenlab: {e}", file=sys.stderr)
        return 2
    try:
        with fetch.cache_lock(args.cache, exclusive=False):
            return qemu.boot_and_run(cfg, command, timeout=args.timeout, quiet=args.quiet)
    except KeyboardInterrupt:
        print("xenlab: interrupted; the lab was stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
