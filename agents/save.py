"""``xsproto save DOMAIN FILE [xl save options]``: stock ``xl save`` plus the negotiated pages.

xl writes into a pipe, not a file, so the image exists on disk once: this filter adds
the record to the xl header on the way and writes FILE.tmp-XXXX next to FILE, renamed
over FILE only after xl succeeded and the whole stream was seen to be well formed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from agents import xl
from agents.grants import Grant, read_grant
from agents.relay import naming, read_head, relay_body
from xsproto import logs
from xsproto.errors import ImageError, XsprotoError
from xsproto.exitcodes import Exit
from xsproto.hypervisor import Hypervisor
from xsproto.stream import rewrite_header_with_record
from xsproto.stream.reader import Readable, Writable, write_all
from xsproto.stream.xl_header import FIXED_SIZE
from xsproto.xenstore import Xenstore

log = logging.getLogger("xsproto.save")

IMAGE_MODE = 0o644
"""The mode ``xl save`` creates images with (before the umask)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "save", help="xl save, carrying the domain's negotiated pages in the image",
        description="Run stock 'xl save' through a pipe, add the domain's negotiated pages "
                    "to the image's xl header, and write FILE atomically.")
    p.add_argument("domain", help="domain name or id")
    p.add_argument("file", type=Path, help="image to write (replaced only on success)")
    p.add_argument("xl_options", nargs=argparse.REMAINDER, metavar="XL_SAVE_OPTIONS",
                   help="passed to xl save (e.g. -c, -p, -D, or a config file)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        flags, config = xl.split_options(args.xl_options, verb="save", positional=1)
    except xl.UsageError as e:
        print(f"xsproto save: {e}", file=sys.stderr)
        return Exit.USAGE
    domid = xl.domid_of(args.domain)
    with Xenstore(args.xenstore) as xs:
        grant = read_grant(xs, Hypervisor(), domid)
    save(domid, args.file, grant, flags=flags, config=config)
    return Exit.OK


def filter_save(src: Readable, dst: Writable, grant: Grant | None) -> int:
    """Copy an image from ``src`` to ``dst``, adding ``grant`` to the xl header.

    Returns the number of bytes written. Without a grant the image passes unchanged.
    """
    head = read_head(src)
    out = head.raw
    if grant is not None:
        config = head.header.config_json()
        if config is None:
            raise ImageError("no domain config in the xl header to tie the record to",
                             offset=FIXED_SIZE)
        out = rewrite_header_with_record(head.header, grant.image_record(config))
    write_all(dst, out)
    body = relay_body(src, dst, offset=len(head.raw), what="save")
    return len(out) + body.stream_bytes + body.trailing_bytes


@contextlib.contextmanager
def atomic_output(target: Path) -> Iterator[BinaryIO]:
    """A temporary file next to ``target``, renamed over it if the block succeeds."""
    directory = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f"{target.name}.tmp-", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, IMAGE_MODE & ~umask)
        with open(fd, "wb", buffering=0) as out:
            yield out
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(domid: int, target: Path, grant: Grant | None, *, flags: Sequence[str] = (),
         config: Sequence[str] = ()) -> int:
    """Run ``xl save FLAGS DOMID PIPE [CONFIG]`` and write its image, plus ``grant``, to
    ``target``.

    SIGPIPE stays ignored in xl: if this filter fails, xl sees EPIPE, reports that the
    save failed and resumes the domain, instead of dying with the guest suspended.
    """
    started = time.monotonic()
    try:
        with atomic_output(target) as out:
            read_fd, write_fd = os.pipe()
            argv = [xl.XL, "save", *flags, str(domid), f"/proc/self/fd/{write_fd}", *config]
            try:
                proc = subprocess.Popen(argv, pass_fds=(write_fd,), restore_signals=False)
            finally:
                os.close(write_fd)
            with open(read_fd, "rb") as src:
                try:
                    with naming(f"xl save stream of domain {domid}"):
                        size = filter_save(src, out, grant)
                except XsprotoError as e:
                    src.close()
                    if status := proc.wait():  # xl failed first: its reason is the one
                        raise xl.XlFailed("save", status) from e
                    raise
            if status := proc.wait():
                raise xl.XlFailed("save", status)
    except OSError as e:
        raise XsprotoError(f"{target}: cannot write the image: {e.strerror or e}") from e
    logs.event(log, "saved", domid=domid, path=str(target), bytes=size,
               granted_pages=grant.granted_pages if grant else 0,
               seconds=f"{time.monotonic() - started:.2f}")
    return size
