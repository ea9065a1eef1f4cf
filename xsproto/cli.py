"""The ``xsproto`` command (layer 4): parses arguments and calls one program (layer 3).

Only the standard library is imported here; each subcommand imports its program when it
runs, so ``--help`` and ``inspect-image`` never pay for xenstore or the hypervisor.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from xsproto import __version__
from xsproto.errors import XsprotoError
from xsproto.exitcodes import Exit
from xsproto.values import DEFAULT_TIMEOUT

# xl's own flags, in xl's order, with what xl's help says they do (tools/xl/xl_cmdtable.c);
# each is passed through to xl.
SAVE_FLAGS = {"-c": "leave the domain running after creating the snapshot",
              "-p": "leave the domain paused after creating the snapshot",
              "-D": "store the domain id in the configuration"}
RESTORE_FLAGS = {"-p": "do not unpause the domain after restoring it",
                 "-e": "do not wait in the background for the death of the domain",
                 "-d": "enable debug messages",
                 "-V": "connect to the VNC display after the domain is created"}
RECEIVE_FLAGS = {"-e": "do not wait in the background for the domain's death",
                 "-p": "leave the domain paused", "-d": "debug (verification pass)"}

Run = Callable[[argparse.Namespace], int]


def _pages(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a page count: {text!r}")
    return int(text)


def _domid(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a domain id: {text!r}")
    return int(text)


# Each runner imports its program only when the subcommand runs.

def _watcher(a: argparse.Namespace) -> int:
    from xsproto.agents import watcher
    if a.check_config:
        return watcher.check_config(a.policy)
    return watcher.run(a.policy, xenstore=a.xenstore)


def _reconcile(a: argparse.Namespace) -> int:
    from xsproto.agents import reconcile
    return reconcile.run(a.domid, a.action, policy_file=a.policy, as_json=a.json,
                         xenstore=a.xenstore)


def _request(a: argparse.Namespace) -> int:
    from xsproto.agents import device_model
    return device_model.run_request(a.domid, a.pages, a.reason, timeout=a.timeout,
                                    dm_domid=a.dm_domid, as_json=a.json, xenstore=a.xenstore)


def _withdraw(a: argparse.Namespace) -> int:
    from xsproto.agents import device_model
    return device_model.run_request(a.domid, 0, "withdraw", timeout=a.timeout,
                                    dm_domid=a.dm_domid, as_json=a.json, xenstore=a.xenstore)


def _status(a: argparse.Namespace) -> int:
    from xsproto.agents import status
    if a.follow:
        return status.follow(as_json=a.json, xenstore=a.xenstore)
    return status.run(a.domid, as_json=a.json, xenstore=a.xenstore)


def _add_xl_flags(p: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    for flag, what in flags.items():
        p.add_argument(flag, dest=f"xl{flag}", action="store_true", help=f"xl's {flag}: {what}")


def _xl_flags(a: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """The xl flags given, in xl's order."""
    return [flag for flag in flags if getattr(a, f"xl{flag}")]


def _save(a: argparse.Namespace) -> int:
    from pathlib import Path

    from xsproto.agents import save
    return save.run(a.domain, Path(a.file), _xl_flags(a, SAVE_FLAGS), config=a.config,
                    xenstore=a.xenstore)


def _restore(a: argparse.Namespace) -> int:
    from pathlib import Path

    from xsproto.agents import restore
    return restore.run_restore(Path(a.file), _xl_flags(a, RESTORE_FLAGS), config=a.config,
                               xenstore=a.xenstore, policy=a.policy,
                               over_policy=a.over_policy)


def _receive(a: argparse.Namespace) -> int:
    from xsproto.agents import restore
    return restore.run_receive(_xl_flags(a, RECEIVE_FLAGS), xenstore=a.xenstore,
                               policy=a.policy, over_policy=a.over_policy)


def _migrate(a: argparse.Namespace) -> int:
    from xsproto.agents import migrate
    options = migrate.XlMigrateOptions(config=a.config, no_daemon=a.no_daemon,
                                       paused=a.paused, debug=a.debug,
                                       preserve_domid=a.preserve_domid, policy=a.policy,
                                       over_policy=a.over_policy)
    return migrate.run_migrate(a.domain, a.host, a.ssh, options, xenstore=a.xenstore)


def _send(a: argparse.Namespace) -> int:
    from xsproto.agents import migrate
    from xsproto.grant import Grant
    try:
        grant = Grant.parse(a.grant) if a.grant else None
    except ValueError as e:
        raise XsprotoError(f"migrate-send --grant: {e}") from e
    return migrate.run_send(a.source_domid, grant, a.receiver)


def _inspect(a: argparse.Namespace) -> int:
    from xsproto.agents import inspect_image
    return inspect_image.run(a.file, as_json=a.json,
                             quiet=a.log_level in ("WARNING", "ERROR"))


def _add_negotiation(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("watcher", help="the toolstack daemon: answer device models' requests",
                       description="Watch device models' requests for extra pages, decide "
                                   "by policy, raise max_pages in Xen and record the "
                                   "decision. Runs in the foreground; one log line a decision.")
    p.add_argument("--policy", metavar="FILE",
                   help="policy file (.toml or .json); default: /etc/xen/xsproto.toml, or "
                        "the built-in defaults when it is absent")
    p.add_argument("--check-config", action="store_true",
                   help="check the policy and exit (0 valid, 1 not)")
    p.set_defaults(run=_watcher)

    p = sub.add_parser("reconcile", help="bring Xen's limits and the records into agreement",
                       description="For each domain whose Xen limit is not the recorded "
                                   "base + granted (an admin's xl mem-max), reapply the "
                                   "record or adopt Xen's limit as the grant (default: the "
                                   "policy's on_drift). Exit 0 when all agree afterwards, 5 when "
                                   "a limit still differs (run it again).")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--adopt", dest="action", action="store_const", const="adopt",
                     help="record Xen's limit as the grant")
    how.add_argument("--reapply", dest="action", action="store_const", const="reapply",
                     help="set Xen's limit back to the record's")
    p.add_argument("--domid", type=_domid, default=None, help="only this domain")
    p.add_argument("--policy", metavar="FILE", help="as for the watcher")
    p.add_argument("--json", action="store_true", help="what was done, as JSON")
    p.set_defaults(run=_reconcile)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--domid", type=_domid, required=True, help="the guest's domain id")
    common.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help="seconds to wait for the decision (default: %(default)s)")
    common.add_argument("--dm-domid", type=_domid, default=None, metavar="M",
                        help="the device model's domain (default: the one this runs in)")
    common.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p = sub.add_parser("request", parents=[common],
                       help="ask, as the device model of a domain, for extra pages",
                       description="Publish 'domain D needs N extra pages in total' and "
                                   "wait for the toolstack's decision. Exit 0 granted (the "
                                   "new limit is printed), 3 rejected, 4 timeout.")
    p.add_argument("--pages", type=_pages, required=True, help="extra pages needed, in total")
    p.add_argument("--reason", default="", help="why (printable ASCII, up to 128 bytes)")
    p.set_defaults(run=_request)
    p = sub.add_parser("withdraw", parents=[common], help="give a domain's extra pages back",
                       description="Ask for 0 extra pages: the limit drops as far as the "
                                   "domain's current pages allow.")
    p.set_defaults(run=_withdraw)

    p = sub.add_parser("status", help="per domain: request, decision and Xen's limit",
                       description="Show whether a watcher serves, and each domain's "
                                   "request (pending or answered), the recorded decision "
                                   "and Xen's live limit. Exit 5 when a limit drifted from "
                                   "its record, 1 when a record is unreadable.")
    p.add_argument("--domid", type=_domid, default=None, help="only this domain")
    p.add_argument("--follow", action="store_true",
                   help="print protocol events as they happen, until interrupted")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output (with --follow: one object a line)")
    p.set_defaults(run=_status)


def _add_admission(p: argparse.ArgumentParser, note: str = "") -> None:
    """The receiving host's say on the grant an image carries."""
    p.add_argument("--policy", metavar="FILE",
                   help="policy file (JSON or TOML, as the watcher's) that the carried "
                        "grant must fit; default: /etc/xen/xsproto.toml, or the built-in "
                        f"defaults when it is absent{note}")
    p.add_argument("--over-policy", action="store_true",
                   help=f"apply a carried grant the policy refuses (logged as a warning){note}")


def _add_images(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "save", help="xl save, carrying the domain's negotiated pages in the image",
        description="Run stock 'xl save' through a pipe, add the domain's negotiated pages "
                    "to the image's xl header, and write FILE atomically. Options and "
                    "arguments are xl save's, in its order.")
    _add_xl_flags(p, SAVE_FLAGS)
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("file", metavar="FILE", help="image to write (replaced only on success)")
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="xl config to store instead of the running one (xl's ConfigFile); "
                        "with a grant, it must name the domain and give it no less memory")
    p.set_defaults(run=_save)

    p = sub.add_parser(
        "restore", help="xl restore, applying the image's negotiated pages in time",
        description="Feed FILE to stock 'xl restore', raising the new domain's limit by the "
                    "negotiated pages before the memory stream starts. Options and "
                    "arguments are xl restore's, in its order.")
    _add_xl_flags(p, RESTORE_FLAGS)
    _add_admission(p)
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="xl config to create the domain from instead of the image's (xl's "
                        "ConfigFile); with a grant, it must name the image's domain and give "
                        "it no less memory")
    p.add_argument("file", metavar="FILE", help="image written by xl save or xsproto save")
    p.set_defaults(run=_restore)

    p = sub.add_parser(
        "migrate", help="xl migrate, carrying the domain's negotiated pages",
        description="Live-migrate DOMAIN with stock 'xl migrate' through a transport that "
                    "adds the negotiated pages on this side and applies them on HOST "
                    "(which runs 'xsproto migrate-receive'). Options are xl migrate's.")
    p.add_argument("-s", "--ssh", default="ssh", metavar="SSHCMD",
                   help='remote shell (default: ssh); as with xl, -s "" makes HOST the '
                        "receiving command itself, e.g. 'xsproto migrate-receive'")
    p.add_argument("-e", dest="no_daemon", action="store_true",
                   help="do not wait in the background on HOST for the domain's death")
    p.add_argument("-C", dest="config", metavar="CONFIG",
                   help="send this domain config instead of the running one (xl's -C); "
                        "with a grant, it must name the domain and give it no less memory")
    p.add_argument("--debug", action="store_true", help="xl's verification pass")
    p.add_argument("-p", dest="paused", action="store_true",
                   help="leave the domain paused on HOST after migration")
    p.add_argument("-D", dest="preserve_domid", action="store_true",
                   help="keep the domain id on HOST (xl's -D)")
    _add_admission(p, ' (for HOST\'s receiving end; with -s "", put it in that command)')
    p.add_argument("domain", metavar="DOMAIN", help="domain name or id")
    p.add_argument("host", metavar="HOST",
                   help="destination host (or receiving command, with -s \"\")")
    p.set_defaults(run=_migrate)

    p = sub.add_parser("migrate-send", help="(run by xsproto migrate) the sending transport",
                       description="Relay xl migrate's stream (stdin) to RECEIVER, adding "
                                   "the grant to its xl header.")
    p.add_argument("--source-domid", type=_domid, required=True)
    p.add_argument("--grant", metavar="BASE+GRANTED", default=None,
                   help="the domain's grant in pages (none: the stream passes unchanged)")
    p.add_argument("receiver", help="shell command of the receiving end")
    p.set_defaults(run=_send)

    p = sub.add_parser(
        "migrate-receive", help="receiving end of xsproto migrate (reads stdin)",
        description="Run stock 'xl migrate-receive', applying the stream's negotiated pages "
                    "in time; xl's replies go to stdout untouched.")
    _add_xl_flags(p, RECEIVE_FLAGS)
    _add_admission(p)
    p.set_defaults(run=_receive)

    p = sub.add_parser("inspect-image", help="show an image's header, record and records",
                       description="Show the xl header, the domain config summary, the "
                                   "xsproto record and every libxl/libxc record with its "
                                   "size, without keeping page data in memory.")
    p.add_argument("file", help="image file, or - for standard input")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(run=_inspect, logs=False)  # it logs nothing: spare the import


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xsproto",
        description="Negotiate a device model's extra guest pages through xenstore.",
        epilog="Exit status: 0 ok, 1 error, 2 usage, 3 rejected, 4 timeout, 5 drift.")
    parser.add_argument("--version", action="version", version=f"xsproto {__version__}")
    parser.add_argument("--xenstore", metavar="PATH", default=None,
                        help="xenstored's socket, or /dev/xen/xenbus (default: pyxs's choice)")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("--log-level", default="INFO",
                          choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    loudness.add_argument("-v", "--verbose", dest="log_level", action="store_const",
                          const="DEBUG", help="log everything (--log-level DEBUG)")
    loudness.add_argument("-q", "--quiet", dest="log_level", action="store_const",
                          const="WARNING", help="log only trouble (--log-level WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_negotiation(sub)
    _add_images(sub)
    _add_host(sub)
    return parser


def _install_host(a: argparse.Namespace) -> int:
    from pathlib import Path

    from xsproto.agents import install_host
    return install_host.run(Path(a.root), uninstall=a.uninstall, as_json=a.json)


def _add_host(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "install-host", help="set this Xen host up: service, policy, xendomains, docs",
        description="Install the watcher's systemd unit (enabled), the default policy "
                    "/etc/xen/xsproto.toml (never over an existing one), the xendomains "
                    "integration that keeps grants across host reboots, bash completion "
                    "and man pages. Idempotent; prints one line per file.")
    p.add_argument("--root", metavar="DIR", default="/",
                   help="install under DIR, as on a host mounted there (default: /)")
    p.add_argument("--uninstall", action="store_true",
                   help="remove what install-host installed (an edited policy is kept)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(run=_install_host, logs=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "logs", True):  # after parsing: --help needs no logging
        from xsproto.adapters import systemd
        systemd.configure_logging(args.log_level)
    run: Run = args.run
    try:
        return run(args)
    except XsprotoError as e:
        print(f"xsproto: {e}", file=sys.stderr)
        return Exit.ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``... | head -1``): what it wanted it has. Python would
        # complain again flushing stdout at exit, so point stdout at nothing first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return Exit.OK
