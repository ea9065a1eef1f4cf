"""``xsproto migrate DOMAIN HOST``: stock ``xl migrate`` with a transport that carries the grant.

xl runs its transport as a shell command (``-s ""`` makes the host argument that
command) and speaks a two-way protocol over it: the image and a final "go" one way,
a banner, "ready" and a report the other. ``xsproto migrate-send`` is that transport:
it starts the real one (``ssh HOST xsproto migrate-receive``), rewrites the xl header
of the sender->receiver bytes and relays the rest byte for byte; the receiver->sender
direction is the receiver's own stdout, inherited, so xl's replies are never touched.
"""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass

from xsproto import logs
from xsproto.adapters import xl
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.agents.image_grants import frozen_grant
from xsproto.errors import image_errors_from
from xsproto.exitcodes import Exit
from xsproto.grant import Grant
from xsproto.stream.reader import Readable
from xsproto.stream.relay import add_grant

log = logging.getLogger("xsproto.migrate")


@dataclass(frozen=True)
class XlMigrateOptions:
    """The ``xl migrate`` options xsproto passes on (the receiving end gets its share)."""

    config: str | None = None
    no_daemon: bool = False
    paused: bool = False
    debug: bool = False
    policy: str | None = None
    """The receiving host's policy file, on that host."""
    over_policy: bool = False

    def xl_argv(self) -> list[str]:
        options: list[str] = ["-C", self.config] if self.config else []
        return options + [f for f, on in (("-e", self.no_daemon), ("-p", self.paused),
                                           ("--debug", self.debug)) if on]

    def receiver_command(self, ssh: str, host: str) -> str:
        """The receiving end as a shell command, built the way xl builds its own."""
        if not ssh:
            return host
        flags = [f for f, on in (("-e", self.no_daemon), ("-p", self.paused),
                                 ("-d", self.debug)) if on]
        flags += ["--policy", self.policy] if self.policy else []
        flags += ["--over-policy"] if self.over_policy else []
        return (f"exec {ssh} {shlex.quote(host)} xsproto migrate-receive "
                f"{shlex.join(flags)}").rstrip()


def transport_command(receiver: str, grant: Grant | None, domid: int) -> str:
    """The shell command xl runs as its transport: ``xsproto migrate-send ... RECEIVER``."""
    argv = [sys.executable, "-m", "xsproto", "migrate-send", "--source-domid", str(domid)]
    if grant is not None:
        argv += ["--grant", str(grant)]
    return shlex.join([*argv, receiver])


def run_migrate(domain: str, host: str, ssh: str, options: XlMigrateOptions, *,
                xenstore: str | None) -> int:
    """``xsproto migrate [-s SSHCMD] [xl options] DOMAIN HOST``."""
    domid = xl.domid_of(domain)
    receiver = options.receiver_command(ssh, host)
    with Xenstore(xenstore) as xs, frozen_grant(xs, Hypervisor(), domid, "migrate") as grant:
        transport = transport_command(receiver, grant, domid)
        logs.event(log, "migrate", domid=domid, receiver=receiver,
                   granted_pages=grant.granted_pages if grant else 0)
        xl.run("migrate", ["-s", "", *options.xl_argv(), str(domid), transport])
    return Exit.OK


def run_send(source_domid: int, grant: Grant | None, receiver: str) -> int:
    """``xsproto migrate-send``: xl's transport; exits with the receiver's status."""
    with image_errors_from(f"migration stream of domain {source_domid}"):
        return relay_to_receiver(sys.stdin.buffer, receiver, grant, source_domid=source_domid)


def relay_to_receiver(src: Readable, receiver: str, grant: Grant | None, *,
                      source_domid: int) -> int:
    """Start ``receiver`` (its stdout is ours: back to xl) and relay ``src`` into it.

    Returns the receiver's exit status, which becomes this transport's.
    """
    proc = xl.start_shell(receiver)
    assert proc.stdin is not None  # start_shell feeds it
    try:
        add_grant(src, proc.stdin, grant, source_domid=source_domid)
        proc.stdin.close()
    except BrokenPipeError as e:  # the receiver stopped reading: its status says why
        raise xl.XlFailed("migrate-receive", proc.wait()) from e
    except BaseException:
        proc.stdin.close()
        proc.wait()
        raise
    return proc.wait()
