"""``xsproto restore FILE`` and ``xsproto migrate-receive``: feed stock xl, raise the limit in time.

libxl sets a new domain's limit from the config alone (target + 1 MiB, in
libxl__build_pre) and only then starts reading the libxl stream; xl itself reads just
the xl header first. So the feeder passes the xl header, holds the rest until the new
domain exists with libxl's limit set, raises that limit by the negotiated pages and
republishes the grant, and only then lets the libxc stream (and its pages) through.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from agents import xl
from agents.grants import apply_grant
from agents.relay import ImageHead, naming, read_head, relay_body
from xsproto import logs
from xsproto.errors import HypervisorError, ImageError, XsprotoError
from xsproto.exitcodes import Exit
from xsproto.hypervisor import Hypervisor
from xsproto.stream.reader import Readable, write_all
from xsproto.xenstore import Xenstore

log = logging.getLogger("xsproto.restore")

HOLD_TIMEOUT = 60.0
"""Seconds to wait for libxl to create the new domain and set its limit."""
POLL_INTERVAL = 0.01
RECEIVE_FLAGS = {"-e": "do not wait in the background for the domain's death",
                 "-p": "leave the domain paused", "-d": "debug (verification pass)"}
STDIN_PATH = "/proc/self/fd/0"
"""How xl restore opens the pipe we feed (dom0 may have no /dev/stdin)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "restore", help="xl restore, applying the image's negotiated pages in time",
        description="Feed FILE to stock 'xl restore', raising the new domain's limit by the "
                    "negotiated pages before the memory stream starts.")
    p.add_argument("file", type=Path, help="image written by xl save or xsproto save")
    p.add_argument("xl_options", nargs=argparse.REMAINDER, metavar="XL_RESTORE_OPTIONS",
                   help="flags passed to xl restore (e.g. -p, -e, -d)")
    p.set_defaults(run=run_restore)
    r = sub.add_parser(
        "migrate-receive", help="receiving end of xsproto migrate (reads stdin)",
        description="Run stock 'xl migrate-receive', applying the stream's negotiated pages "
                    "in time; xl's replies go to stdout untouched.")
    for flag, what in RECEIVE_FLAGS.items():
        r.add_argument(flag, dest=f"xl{flag}", action="store_true", help=f"xl's {flag}: {what}")
    r.set_defaults(run=run_receive)


def run_restore(args: argparse.Namespace) -> int:
    try:
        flags, _ = xl.split_options(args.xl_options, verb="restore")
    except xl.UsageError as e:
        print(f"xsproto restore: {e}", file=sys.stderr)
        return Exit.USAGE
    try:
        src = open(args.file, "rb")  # noqa: SIM115 (closed below, after the feed)
    except OSError as e:
        raise XsprotoError(f"{args.file}: cannot open: {e.strerror or e}") from e
    with src, naming(args.file):
        head = read_head(src)  # a bad header fails here, before xl creates anything
        result = feed(src, Feed("restore", [*flags, STDIN_PATH], incoming=False),
                      head=head, xenstore=args.xenstore, total=_size(src.fileno()))
    logs.event(log, "restored", path=str(args.file), domid=result.domid,
               granted_pages=result.granted_pages, max_pages=result.max_pages)
    return Exit.OK


def run_receive(args: argparse.Namespace) -> int:
    flags = [flag for flag in RECEIVE_FLAGS if getattr(args, f"xl{flag}")]
    # xl sends its banner first and the sender waits for it: start xl, then read.
    with naming("migration stream"):
        result = feed(sys.stdin.buffer, Feed("migrate-receive", flags, incoming=True),
                      head=None, xenstore=args.xenstore)
    logs.event(log, "received", domid=result.domid, granted_pages=result.granted_pages,
               max_pages=result.max_pages)
    return Exit.OK


def _size(fd: int) -> int | None:
    """The image's size for progress lines, if it is a regular file."""
    st = os.fstat(fd)
    return st.st_size if stat.S_ISREG(st.st_mode) else None


@dataclass(frozen=True)
class Feed:
    """Which xl command to feed, and what it names the new domain while restoring."""

    verb: str
    args: list[str]
    incoming: bool

    def domain_name(self, config_name: str) -> str:
        return config_name + xl.INCOMING_SUFFIX if self.incoming else config_name


@dataclass(frozen=True)
class Fed:
    """The outcome: the new domain's id and limit when a grant was applied."""

    domid: int | None
    granted_pages: int
    max_pages: int | None


def feed(src: Readable, how: Feed, *, head: ImageHead | None, xenstore: str | None,
         total: int | None = None) -> Fed:
    """Feed an image to ``xl VERB``; on any failure destroy what xl may have left."""
    hv = Hypervisor()
    with Xenstore(xenstore) as xs:
        before = set(hv.domids())
        names: set[str] = set()
        proc = subprocess.Popen([xl.XL, how.verb, *how.args], stdin=subprocess.PIPE, bufsize=0,
                                restore_signals=False)
        assert proc.stdin is not None  # stdin=PIPE
        try:
            try:
                if head is None:
                    head = read_head(src)
                fed = _feed(src, proc, how, head, hv, xs, before, names, total)
                proc.stdin.close()
            except BrokenPipeError as e:  # xl gave up reading: its status says why
                raise xl.XlFailed(how.verb, proc.wait()) from e
            if status := proc.wait():
                raise xl.XlFailed(how.verb, status)
            return fed
        except BaseException:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            proc.wait()
            _clean_up(hv, xs, before, names)
            raise


def _feed(src: Readable, proc: subprocess.Popen[bytes], how: Feed, head: ImageHead,
          hv: Hypervisor, xs: Xenstore, before: set[int], names: set[str],
          total: int | None) -> Fed:
    assert proc.stdin is not None
    record = head.record
    config_name = head.name
    if config_name is not None:
        names.add(how.domain_name(config_name))
        names.add(config_name)
    write_all(proc.stdin, head.raw)
    fed = Fed(None, 0, None)
    if record is not None and record.granted_pages:
        if config_name is None:
            raise ImageError("image carries negotiated pages but no domain config")
        name = how.domain_name(config_name)
        domid, base = _await_new_domain(hv, xs, before, name, proc, how.verb)
        applied = apply_grant(xs, hv, domid, base_pages=base,
                              granted_pages=record.granted_pages)
        fed = Fed(domid, record.granted_pages, applied.max_pages)
    relay_body(src, proc.stdin, offset=len(head.raw), what=how.verb, total=total)
    return fed


def _await_new_domain(hv: Hypervisor, xs: Xenstore, before: set[int], name: str,
                      proc: subprocess.Popen[bytes], verb: str) -> tuple[int, int]:
    """(domid, libxl's limit in pages) of the domain xl is creating, once the limit is set."""
    deadline = time.monotonic() + HOLD_TIMEOUT
    while True:
        for domid in xl.domains_named(hv, xs, [name], exclude=before):
            info = hv.domain(domid)
            if info.exists and info.max_pages:
                logs.event(log, "new-domain", domid=domid, domain=name, base_pages=info.max_pages)
                return domid, info.max_pages
        if (status := proc.poll()) is not None:
            raise xl.XlFailed(verb, status)
        if time.monotonic() > deadline:
            raise HypervisorError(f"no new domain named {name!r} with its limit set after "
                                  f"{HOLD_TIMEOUT:g} s")
        time.sleep(POLL_INTERVAL)


def _clean_up(hv: Hypervisor, xs: Xenstore, before: set[int], names: set[str]) -> None:
    """Destroy domains xl created and left behind (libxl also removes their grant)."""
    for domid in xl.domains_named(hv, xs, names, exclude=before):
        logs.event(log, "destroy-leftover", level=logging.WARNING, domid=domid)
        xl.destroy(domid)
