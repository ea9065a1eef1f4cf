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
from xsproto.adapters import terminal, xl
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.agents.image_grants import (
    check_outgoing_replacement,
    frozen_grant,
    read_replacement,
)
from xsproto.errors import image_errors_from
from xsproto.exitcodes import Exit
from xsproto.grant import Grant
from xsproto.progress import Progress, no_progress
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
    preserve_domid: bool = False
    policy: str | None = None
    """The receiving host's policy file, on that host."""
    over_policy: bool = False

    def xl_argv(self) -> list[str]:
        """xl migrate's own options, in its order (less -s: xsproto's transport)."""
        options = [f for f, on in (("-e", self.no_daemon),) if on]
        options += ["-C", self.config] if self.config else []
        return options + [f for f, on in (("--debug", self.debug), ("-p", self.paused),
                                           ("-D", self.preserve_domid)) if on]

    def receiver_command(self, ssh: str, host: str) -> str:
        """The receiving end as a shell command, built the way xl builds its own
        (xl_migrate.c: ``migrate-receive`` then -e, -d, -p)."""
        if not ssh:
            return host
        flags = [f for f, on in (("-e", self.no_daemon), ("-d", self.debug),
                                 ("-p", self.paused)) if on]
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
    """``xsproto migrate [-s SSHCMD] [-e] [-C CONFIG] [--debug] [-p] [-D] DOMAIN HOST``: a
    replacement CONFIG that does not fit the grant is refused before xl starts."""
    replacement = read_replacement(options.config) if options.config is not None else None
    domid = xl.domid_of(domain)
    receiver = options.receiver_command(ssh, host)
    with Xenstore(xenstore) as xs, frozen_grant(xs, Hypervisor(), domid, "migrate") as grant:
        check_outgoing_replacement(domid, grant, replacement)
        transport = transport_command(receiver, grant, domid)
        logs.event(log, "migrate", domid=domid, receiver=receiver,
                   granted_pages=grant.granted_pages if grant else 0)
        xl.run("migrate", ["-s", "", *options.xl_argv(), str(domid), transport])
    return Exit.OK


def run_send(source_domid: int, grant: Grant | None, receiver: str) -> int:
    """``xsproto migrate-send``: xl's transport; exits with the receiver's status."""
    # stderr is xl migrate's, where xl prints its own progress: log only.
    with image_errors_from(f"migration stream of domain {source_domid}"), \
            terminal.progress("migrate", None, log=log, shown=False) as progress:
        return relay_to_receiver(sys.stdin.buffer, receiver, grant, source_domid=source_domid,
                                 progress=progress)


def relay_to_receiver(src: Readable, receiver: str, grant: Grant | None, *,
                      source_domid: int, progress: Progress = no_progress) -> int:
    """Start ``receiver`` (its stdout is ours: back to xl) and relay ``src`` into it.

    Returns the receiver's exit status, which becomes this transport's.
    """
    proc = xl.start_shell(receiver)
    assert proc.stdin is not None  # start_shell feeds it
    try:
        add_grant(src, proc.stdin, grant, source_domid=source_domid, progress=progress)
        proc.stdin.close()
    except BrokenPipeError as e:  # the receiver stopped reading: its status says why
        raise xl.XlFailed("migrate-receive", proc.wait()) from e
    except BaseException:
        proc.stdin.close()
        proc.wait()
        raise
    return proc.wait()
