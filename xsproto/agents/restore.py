"""``xsproto restore FILE`` and ``xsproto migrate-receive``: feed stock xl, raise the limit in time.

libxl sets a new domain's limit from the config alone (target + 1 MiB, in
libxl__build_pre) and only then starts reading the libxl stream; xl itself reads just
the xl header first. So the feeder passes the xl header, holds the rest until the new
domain exists with libxl's limit set, has this host's policy judge the carried grant
(over policy, the restore fails there, before any page flows, unless the admin
overrides it), raises that limit by the negotiated pages and republishes the grant, and
only then lets the libxc stream (and its pages) through.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from xsproto import carrying, logs, paths
from xsproto.adapters import terminal, xenstore_records, xl
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.agents.image_grants import apply_grant, read_replacement, restore_refusals
from xsproto.errors import (
    GrantRefused,
    HypervisorError,
    ImageError,
    XsprotoError,
    image_errors_from,
)
from xsproto.exitcodes import Exit
from xsproto.grant import Grant
from xsproto.policy import Policy
from xsproto.progress import Progress, no_progress
from xsproto.stream.reader import Readable, write_all
from xsproto.stream.relay import relay_body
from xsproto.stream.walk import ConfigSummary, ImageHead, read_head
from xsproto.xl_config import DomainSettings

log = logging.getLogger("xsproto.restore")

HOLD_TIMEOUT = 60.0
"""Seconds to wait for libxl to create the new domain and set its limit."""
POLL_INTERVAL = 0.01
STDIN_PATH = "/proc/self/fd/0"
"""How xl restore opens the pipe we feed (dom0 may have no /dev/stdin)."""
MIGRATION_STREAM = "migration stream"
"""How errors name the image migrate-receive reads."""


def run_restore(file: Path, flags: list[str], *, config: str | None = None,
                xenstore: str | None, policy: str | None = None,
                over_policy: bool = False) -> int:
    """``xsproto restore [-p] [-e] [-d] [-V] [--policy FILE] [--over-policy] [CONFIG] FILE``.

    A replacement CONFIG is checked against the image's record before xl starts."""
    replacement = read_replacement(config) if config is not None else None
    admission = Admission.of(policy, over_policy=over_policy)
    try:
        src = open(file, "rb")  # noqa: SIM115 (closed below, after the feed)
    except OSError as e:
        raise XsprotoError(f"{file}: cannot open: {e.strerror or e}") from e
    try:
        with src, image_errors_from(file):
            head = read_head(src)  # a bad header fails here, before xl creates anything
            args = [*flags, STDIN_PATH]
            if replacement is not None:
                _check_replacement(head, replacement)
                args = [*flags, replacement.source, STDIN_PATH]
            size = terminal.file_size(src.fileno())
            with terminal.progress("restore", size, log=log) as progress:
                result = restore_with(src, Receiver("restore", args, incoming=False),
                                      admission, head=head, xenstore=xenstore,
                                      progress=progress,
                                      name=None if replacement is None else replacement.name)
    except GrantRefused as e:
        return _refused(file, e)
    logs.event(log, "restored", path=str(file), domid=result.domid,
               granted_pages=result.granted_pages, max_pages=result.max_pages)
    return Exit.OK


def _check_replacement(head: ImageHead, replacement: DomainSettings) -> None:
    """A replacement config for an image that carries a grant must fit its record."""
    if head.record is None or not head.record.granted_pages:
        return
    config = head.header.config_json()
    carrying.check_replacement(head.record, None if config is None
                               else ConfigSummary.from_config(config), replacement)


def run_receive(flags: list[str], *, xenstore: str | None, policy: str | None = None,
                over_policy: bool = False) -> int:
    """``xsproto migrate-receive [-e] [-p] [-d] [--policy FILE] [--over-policy]``: the
    stream is stdin."""
    admission = Admission.of(policy, over_policy=over_policy)
    # xl sends its banner first and the sender waits for it: start xl, then read.
    try:
        # stderr is the sender's terminal at best, shared with xl on both hosts: log only.
        with image_errors_from(MIGRATION_STREAM), \
                terminal.progress("migrate-receive", None, log=log, shown=False) as progress:
            result = restore_with(sys.stdin.buffer,
                                  Receiver("migrate-receive", flags, incoming=True),
                                  admission, head=None, xenstore=xenstore, progress=progress)
    except GrantRefused as e:
        return _refused(MIGRATION_STREAM, e)
    logs.event(log, "received", domid=result.domid, granted_pages=result.granted_pages,
               max_pages=result.max_pages)
    return Exit.OK


def _refused(image: object, e: GrantRefused) -> int:
    """Report a grant this host refused, naming the image; the status says rejected."""
    print(f"xsproto: {image}: {e}", file=sys.stderr)
    return Exit.REJECTED


@dataclass(frozen=True)
class Receiver:
    """Which xl command receives the image, and what it names the new domain meanwhile."""

    verb: str
    args: list[str]
    incoming: bool

    def domain_name(self, config_name: str) -> str:
        return config_name + xl.INCOMING_SUFFIX if self.incoming else config_name


@dataclass(frozen=True)
class Admission:
    """Whether this host takes the grant an image carries: its own policy decides, as for
    a request, unless the admin overrides it (``--over-policy``, logged)."""

    policy: Policy = field(default_factory=Policy)
    over_policy: bool = False

    @classmethod
    def of(cls, policy_file: str | None, *, over_policy: bool) -> Admission:
        """From the command line: the policy file named, else the host's (as the
        watcher's), else the built-in defaults."""
        return cls(Policy.load_host(policy_file), over_policy)


@dataclass(frozen=True)
class Restored:
    """The outcome: the new domain's id and limit when a grant was applied."""

    domid: int | None
    granted_pages: int
    max_pages: int | None


def restore_with(src: Readable, receiver: Receiver, admission: Admission, *,
                 head: ImageHead | None, xenstore: str | None,
                 progress: Progress = no_progress, name: str | None = None) -> Restored:
    """Feed an image to ``xl VERB``; on any failure destroy what xl may have left.

    ``name``: the new domain's, when a replacement config gives it instead of the image.
    """
    hv = Hypervisor()
    with Xenstore(xenstore) as xs:
        before = set(hv.domids())
        proc = xl.start(receiver.verb, receiver.args, feed=True)
        restoring = Restoring(proc, receiver, hv, xs, before, admission,
                              names=set() if name is None else {name})
        assert proc.stdin is not None  # feed=True
        try:
            try:
                restored = restoring.feed(src, read_head(src) if head is None else head,
                                          progress=progress)
                proc.stdin.close()
            except BrokenPipeError as e:  # xl gave up reading: its status says why
                raise xl.XlFailed(receiver.verb, proc.wait()) from e
            if status := proc.wait():
                raise xl.XlFailed(receiver.verb, status)
            return restored
        except BaseException:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            proc.wait()
            restoring.clean_up()
            raise


@dataclass
class Restoring:
    """One restore in progress: the xl process being fed, and what it may leave behind."""

    proc: xl.Process
    receiver: Receiver
    hv: Hypervisor
    xs: Xenstore
    before: set[int]
    """Domains that existed before xl started: never ours to destroy."""
    admission: Admission
    names: set[str] = field(default_factory=set)
    """Names the new domain may have: what a failed restore leaves is found by them."""

    def feed(self, src: Readable, head: ImageHead, *,
             progress: Progress = no_progress) -> Restored:
        """Pass the xl header, apply the carried grant once libxl set the new domain's
        limit, then let the libxl/libxc stream through."""
        assert self.proc.stdin is not None
        record = head.record
        config_name = head.name
        if config_name is not None:
            self.names |= {config_name, self.receiver.domain_name(config_name)}
        write_all(self.proc.stdin, head.raw)
        restored = Restored(None, 0, None)
        if record is not None and record.granted_pages:
            if config_name is None:
                raise ImageError("image carries negotiated pages but no domain config")
            domid, base = self.await_new_domain(self.receiver.domain_name(config_name))
            grant = carrying.rebased(record.grant, base)
            self.admit(domid, config_name, grant)
            applied = apply_grant(self.xs, self.hv, domid, grant)
            restored = Restored(domid, record.granted_pages, applied.max_pages)
        relay_body(src, self.proc.stdin, offset=len(head.raw), progress=progress)
        return restored

    def admit(self, domid: int, name: str, grant: Grant) -> None:
        """Refuse a carried grant this host's policy does not allow, unless the admin
        overrides it; then say what was overridden."""
        refusals = restore_refusals(self.xs, self.hv, self.admission.policy, domid, name, grant)
        if not refusals:
            return
        broken = "; ".join(map(str, refusals))
        if not self.admission.over_policy:
            raise GrantRefused(f"domain {name!r} (new domain {domid}): the "
                               f"{grant.granted_pages} granted pages it carries break this "
                               f"host's policy: {broken} (--over-policy restores it anyway)",
                               codes=[r.code for r in refusals])
        logs.event(log, "over-policy", level=logging.WARNING, domid=domid, domain=name,
                   path=paths.decision_node(domid), granted_pages=grant.granted_pages,
                   overridden=broken)

    def await_new_domain(self, name: str) -> tuple[int, int]:
        """(domid, libxl's limit in pages) of the domain xl is creating, once it is set."""
        deadline = time.monotonic() + HOLD_TIMEOUT
        while True:
            for domid in self.new_domains([name]):
                info = self.hv.domain(domid)
                if info.exists and info.max_pages:
                    logs.event(log, "new-domain", domid=domid, domain=name,
                               base_pages=info.max_pages)
                    return domid, info.max_pages
            if (status := self.proc.poll()) is not None:
                raise xl.XlFailed(self.receiver.verb, status)
            if time.monotonic() > deadline:
                raise HypervisorError(f"no new domain named {name!r} with its limit set "
                                      f"after {HOLD_TIMEOUT:g} s")
            time.sleep(POLL_INTERVAL)

    def new_domains(self, names: Iterable[str]) -> list[int]:
        """Domains created since xl started whose xenstore name is one of ``names``."""
        wanted = set(names)
        return [d for d in self.hv.domids() if d not in self.before
                and xenstore_records.domain_name(self.xs, d) in wanted]

    def clean_up(self) -> None:
        """Destroy domains xl created and left behind (libxl also removes their grant)."""
        for domid in self.new_domains(self.names):
            logs.event(log, "destroy-leftover", level=logging.WARNING, domid=domid)
            xl.destroy(domid)
