"""``xsproto save DOMAIN FILE [xl save options]``: stock ``xl save`` plus the negotiated pages.

xl writes into a pipe, not a file, so the image exists on disk once: this filter adds
the record to the xl header on the way and writes FILE.tmp-XXXX next to FILE, renamed
over FILE only after xl succeeded and the whole stream was seen to be well formed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from xsproto import logs
from xsproto.adapters import xl
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.agents.image_grants import frozen_grant
from xsproto.errors import XsprotoError, image_errors_from
from xsproto.exitcodes import Exit
from xsproto.grant import Grant
from xsproto.stream.relay import add_grant

log = logging.getLogger("xsproto.save")

IMAGE_MODE = 0o644
"""The mode ``xl save`` creates images with (before the umask)."""


def run(domain: str, target: Path, xl_options: list[str], *, xenstore: str | None) -> int:
    """``xsproto save DOMAIN FILE [xl save options]``."""
    try:
        flags, config = xl.split_options(xl_options, verb="save", positional=1)
    except xl.UsageError as e:
        print(f"xsproto save: {e}", file=sys.stderr)
        return Exit.USAGE
    domid = xl.domid_of(domain)
    with Xenstore(xenstore) as xs, frozen_grant(xs, Hypervisor(), domid, "save") as grant:
        save(domid, target, grant, flags=flags, config=config)
    return Exit.OK


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

    If this filter fails, xl sees EPIPE, reports that the save failed and resumes the
    domain (see ``xsproto.adapters.xl``).
    """
    started = time.monotonic()
    try:
        with atomic_output(target) as out:
            read_fd, write_fd = os.pipe()
            try:
                proc = xl.start("save", [*flags, str(domid), f"/proc/self/fd/{write_fd}",
                                         *config], pass_fds=[write_fd])
            finally:
                os.close(write_fd)
            with open(read_fd, "rb") as src:
                try:
                    with image_errors_from(f"xl save stream of domain {domid}"):
                        size = add_grant(src, out, grant, source_domid=domid)
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
