"""``xsproto save DOMAIN FILE [xl save options]``: stock ``xl save`` plus the negotiated pages.

xl writes into a pipe, not a file, so the image exists on disk once: this filter adds
the record to the xl header on the way and writes a temporary file next to FILE, renamed
over FILE only after xl succeeded and the whole stream was seen to be well formed. A
plain ``xl save`` destroys the domain when it succeeds, so the target is checked before
xl starts, and once xl succeeded the temporary file is never deleted: it is the only copy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from xsproto import logs
from xsproto.adapters import xl
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.agents.image_grants import frozen_grant
from xsproto.errors import ImageKept, XsprotoError, image_errors_from
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
    with PendingImage(target) as image, Xenstore(xenstore) as xs, \
            frozen_grant(xs, Hypervisor(), domid, "save") as grant:
        save(domid, image, grant, flags=flags, config=config)
    return Exit.OK


class PendingImage:
    """The image being written: a temporary file next to the target that only its owner
    can read (guest memory: a save killed outright leaves it behind) until it is whole.

    Created before xl starts, so that a target the image could never reach is refused
    while the domain is untouched. Deleted on the way out unless ``keep`` is set.
    """

    def __init__(self, target: Path) -> None:
        if target.is_dir():
            raise XsprotoError(f"{target}: is a directory; name the image file to write")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{target.name}.tmp-", dir=target.parent)
        except OSError as e:
            raise XsprotoError(f"{target}: cannot write the image: {e.strerror or e}") from e
        self.target = target
        self.path = Path(tmp)
        self.file = open(fd, "wb", buffering=0)  # noqa: SIM115 (closed by __exit__)
        self.keep = False
        """Set once xl succeeded: the domain is gone and this file is its only copy."""

    def __enter__(self) -> PendingImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        if not self.keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def publish(self) -> None:
        """Make the whole image durable, rename it over the target and give it xl's mode
        (0644 less the umask); a failure leaves it where it is, named in the error."""
        try:
            os.fsync(self.file.fileno())
            os.replace(self.path, self.target)
        except OSError as e:
            raise ImageKept(f"{self.target}: cannot put the image in place: "
                            f"{e.strerror or e}", path=self.path) from e
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(self.file.fileno(), IMAGE_MODE & ~umask)
            dir_fd = os.open(self.target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise XsprotoError(f"{self.target}: image written, but not made readable and "
                               f"durable: {e.strerror or e}") from e


def save(domid: int, image: PendingImage, grant: Grant | None, *,
         flags: Sequence[str] = (), config: Sequence[str] = ()) -> int:
    """Run ``xl save FLAGS DOMID PIPE [CONFIG]`` and write its image, plus ``grant``, to
    ``image``, then put it in place.

    If this filter fails, xl sees EPIPE, reports that the save failed and resumes the
    domain (see ``xsproto.adapters.xl``). If xl succeeded anyway, the domain is gone
    and the image is kept, whatever else failed.
    """
    started = time.monotonic()
    failure: BaseException | None = None
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb") as src:
        try:
            proc = xl.start("save", [*flags, str(domid), f"/proc/self/fd/{write_fd}",
                                     *config], pass_fds=[write_fd])
        finally:
            os.close(write_fd)
        try:
            with image_errors_from(f"xl save stream of domain {domid}"):
                size = add_grant(src, image.file, grant, source_domid=domid)
        except BaseException as e:  # closing the pipe makes xl fail, unless it is done
            failure = e
    if status := proc.wait():
        if isinstance(failure, OSError):  # writing the image failed: that is the reason
            raise XsprotoError(f"{image.target}: cannot write the image: "
                               f"{failure.strerror or failure}") from failure
        raise xl.XlFailed("save", status) from failure  # else xl failed first
    image.keep = True
    if failure is not None:
        raise ImageKept(f"domain {domid} was saved by xl (it is gone), but its image "
                        f"failed: {failure or type(failure).__name__}",
                        path=image.path) from failure
    image.publish()
    logs.event(log, "saved", domid=domid, path=str(image.target), bytes=size,
               granted_pages=grant.granted_pages if grant else 0,
               seconds=f"{time.monotonic() - started:.2f}")
    return size
