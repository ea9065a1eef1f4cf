"""The ``xsproto`` command: one subcommand per agent, errors as exit statuses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agents import dm_agent, images, status, watcher
from xsproto import logs
from xsproto.errors import XsprotoError
from xsproto.exitcodes import Exit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xsproto",
        description="Negotiate a device model's extra guest pages through xenstore.",
        epilog="Exit status: 0 ok, 1 error, 2 usage, 3 rejected, 4 timeout.")
    parser.add_argument("--xenstore", metavar="PATH", default=None,
                        help="xenstored's socket, or /dev/xen/xenbus (default: pyxs's choice)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for agent in (watcher, dm_agent, images, status):
        agent.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        status: int = args.run(args)
    except XsprotoError as e:
        print(f"xsproto: {e}", file=sys.stderr)
        return Exit.ERROR
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
