"""``xsproto migrate DOMAIN HOST``: stock ``xl migrate`` with a transport that carries the grant.

xl runs its transport as a shell command (``-s ""`` makes the host argument that
command) and speaks a two-way protocol over it: the image and a final "go" one way,
a banner, "ready" and a report the other. ``xsproto migrate-send`` is that transport:
it starts the real one (``ssh HOST xsproto migrate-receive``), rewrites the xl header
of the sender->receiver bytes and relays the rest byte for byte; the receiver->sender
direction is the receiver's own stdout, inherited, so xl's replies are never touched.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from collections.abc import Sequence

from agents import xl
from agents.grants import Grant, read_grant
from agents.relay import naming
from agents.save import filter_save
from xsproto import logs
from xsproto.exitcodes import Exit
from xsproto.hypervisor import Hypervisor
from xsproto.stream.reader import Readable
from xsproto.xenstore import Xenstore

log = logging.getLogger("xsproto.migrate")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "migrate", help="xl migrate, carrying the domain's negotiated pages",
        description="Live-migrate DOMAIN with stock 'xl migrate' through a transport that "
                    "adds the negotiated pages on this side and applies them on HOST "
                    "(which runs 'xsproto migrate-receive').")
    p.add_argument("-s", "--ssh", default="ssh", metavar="SSHCMD",
                   help='remote shell (default: ssh); as with xl, -s "" makes HOST the '
                        "receiving command itself, e.g. 'xsproto migrate-receive'")
    p.add_argument("-C", dest="config", metavar="CONFIG",
                   help="send this domain config instead of the running one (xl's -C)")
    p.add_argument("-e", dest="no_daemon", action="store_true",
                   help="do not wait in the background on HOST for the domain's death")
    p.add_argument("-p", dest="paused", action="store_true",
                   help="leave the domain paused on HOST after migration")
    p.add_argument("--debug", action="store_true", help="xl's verification pass")
    p.add_argument("domain", help="domain name or id")
    p.add_argument("host", help="destination host (or receiving command, with -s \"\")")
    p.set_defaults(run=run_migrate)

    t = sub.add_parser("migrate-send", help="(run by xsproto migrate) the sending transport",
                       description="Relay xl migrate's stream (stdin) to RECEIVER, adding "
                                   "the grant to its xl header.")
    t.add_argument("--source-domid", type=int, required=True)
    t.add_argument("--base-pages", type=int, required=True)
    t.add_argument("--granted-pages", type=int, required=True)
    t.add_argument("receiver", help="shell command of the receiving end")
    t.set_defaults(run=run_send)


def receiver_command(ssh: str, host: str, *, no_daemon: bool = False, paused: bool = False,
                     debug: bool = False) -> str:
    """The receiving end as a shell command, built the way xl builds its own."""
    if not ssh:
        return host
    flags = [f for f, on in (("-e", no_daemon), ("-p", paused), ("-d", debug)) if on]
    return f"exec {ssh} {shlex.quote(host)} xsproto migrate-receive {shlex.join(flags)}".rstrip()


def transport_command(receiver: str, grant: Grant | None, domid: int) -> str:
    """The shell command xl runs as its transport: ``xsproto migrate-send ... RECEIVER``."""
    argv = [sys.executable, "-m", "xsproto.cli", "migrate-send", "--source-domid", str(domid),
            "--base-pages", str(grant.base_pages if grant else 0),
            "--granted-pages", str(grant.granted_pages if grant else 0), receiver]
    return shlex.join(argv)


def xl_migrate_argv(args: argparse.Namespace, domid: int, transport: str) -> list[str]:
    options: list[str] = ["-C", args.config] if args.config else []
    options += [f for f, on in (("-e", args.no_daemon), ("-p", args.paused),
                                ("--debug", args.debug)) if on]
    return [xl.XL, "migrate", "-s", "", *options, str(domid), transport]


def run_migrate(args: argparse.Namespace) -> int:
    domid = xl.domid_of(args.domain)
    with Xenstore(args.xenstore) as xs:
        grant = read_grant(xs, Hypervisor(), domid)
    receiver = receiver_command(args.ssh, args.host, no_daemon=args.no_daemon,
                                paused=args.paused, debug=args.debug)
    argv = xl_migrate_argv(args, domid, transport_command(receiver, grant, domid))
    logs.event(log, "migrate", domid=domid, receiver=receiver,
               granted_pages=grant.granted_pages if grant else 0)
    if status := subprocess.run(argv, restore_signals=False).returncode:
        raise xl.XlFailed("migrate", status)
    return Exit.OK


def run_send(args: argparse.Namespace) -> int:
    grant = (Grant(args.source_domid, args.base_pages, args.granted_pages)
             if args.granted_pages else None)
    with naming(f"migration stream of domain {args.source_domid}"):
        return relay_to_receiver(sys.stdin.buffer, ["sh", "-c", args.receiver], grant)


def relay_to_receiver(src: Readable, receiver: Sequence[str], grant: Grant | None) -> int:
    """Start ``receiver`` (its stdout is ours: back to xl) and relay ``src`` into it.

    Returns the receiver's exit status, which becomes this transport's.
    """
    proc = subprocess.Popen(receiver, stdin=subprocess.PIPE, bufsize=0, restore_signals=False)
    assert proc.stdin is not None  # stdin=PIPE
    try:
        filter_save(src, proc.stdin, grant)
        proc.stdin.close()
    except BrokenPipeError as e:  # the receiver stopped reading: its status says why
        raise xl.XlFailed("migrate-receive", proc.wait()) from e
    except BaseException:
        proc.stdin.close()
        proc.wait()
        raise
    return proc.wait()
