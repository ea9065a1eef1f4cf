"""The device-model agent: ask the toolstack for extra pages through xenstore and wait.

This is what a device model (or its wrapper script) calls instead of raising
max_pages itself. The waiting is driven by ``negotiation.DeviceModelSide``; this module
only writes the request, watches the decision and reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from xsproto import paths, state
from xsproto.errors import NegotiationTimeout, ProtocolError, RequestRejected
from xsproto.exitcodes import Exit
from xsproto.negotiation import DEFAULT_TIMEOUT, DeviceModelSide
from xsproto.records import DecisionRecord, RejectCode
from xsproto.values import parse_domid, parse_request_id
from xsproto.xenstore import Xenstore

DECISION_TOKEN = "xsproto-decision"


def own_domid(xs: Xenstore) -> int:
    """The domain this agent runs in (dom0 or a stubdom): the device model's domain."""
    raw = xs.read("domid")
    return 0 if raw is None else parse_domid(raw, path="domid")


def request_pages(xs: Xenstore, domid: int, pages: int, reason: str = "", *,
                  timeout: float = DEFAULT_TIMEOUT, dm_domid: int | None = None,
                  clock: Callable[[], float] = time.monotonic) -> DecisionRecord:
    """Ask that ``domid`` have ``pages`` extra pages in total; return the granted record.

    Raises RequestRejected (with the toolstack's code and detail) or NegotiationTimeout.
    ``pages=0`` gives every extra page back.
    """
    dm = own_domid(xs) if dm_domid is None else dm_domid
    if not xs.children(f"/local/domain/{domid}"):
        raise RequestRejected(RejectCode.NO_SUCH_DOMAIN,
                              f"/local/domain/{domid} does not exist", domid=domid)
    request_dir, decision_dir = paths.request_dir(dm, domid), paths.decision_dir(domid)
    xs.watch(decision_dir, DECISION_TOKEN)
    try:
        raw_written = xs.read(f"{request_dir}/{paths.REQUEST_ID}")
        written = 0
        if raw_written is not None:
            try:
                written = parse_request_id(raw_written, path=f"{request_dir}/{paths.REQUEST_ID}")
            except ProtocolError:
                written = 0
        decided = state.read_decision(xs, domid)
        side, request = DeviceModelSide(domid).observe(decided).ask(
            pages, reason, now=clock(), decided=decided, written=written, timeout=timeout)
        xs.transact(lambda t: t.write_dir(request_dir, request.to_nodes()))
        while True:
            record = state.read_decision(xs, domid)
            side = side.observe(record).tick(clock())
            if side.outcome() is not None:
                assert record is not None  # outcome() is set only from a record
                return record
            xs.next_batch(timeout=max(0.0, side.deadline - clock()))
    finally:
        xs.unwatch(decision_dir, DECISION_TOKEN)


def _result(record: DecisionRecord, domid: int) -> dict[str, Any]:
    return {"domid": domid, "state": record.state.value, "request_id": record.request_id,
            "base_pages": record.base_pages, "granted_pages": record.granted_pages,
            "max_pages": record.max_pages}


def run_request(args: argparse.Namespace, pages: int, reason: str) -> int:
    try:
        with Xenstore(args.xenstore) as xs:
            record = request_pages(xs, args.domid, pages, reason, timeout=args.timeout,
                                   dm_domid=args.dm_domid)
    except RequestRejected as e:
        if args.json:
            print(json.dumps({"domid": args.domid, "state": "rejected", "code": e.code,
                              "detail": e.detail}))
        print(f"xsproto: {e}", file=sys.stderr)
        return Exit.REJECTED
    except NegotiationTimeout as e:
        print(f"xsproto: {e} within {args.timeout:g} s (is the watcher running?)",
              file=sys.stderr)
        return Exit.TIMEOUT
    if args.json:
        print(json.dumps(_result(record, args.domid)))
    else:
        print(f"domain {args.domid}: granted {record.granted_pages} extra pages, "
              f"max_pages {record.max_pages} (base {record.base_pages})")
    return Exit.OK


def _pages(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a page count: {text!r}")
    return int(text)


def register(sub: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--domid", type=int, required=True, help="the guest's domain id")
    common.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                        help="seconds to wait for the decision (default: %(default)s)")
    common.add_argument("--dm-domid", type=int, default=None, metavar="M",
                        help="the device model's domain (default: the one this runs in)")
    common.add_argument("--json", action="store_true", help="print the outcome as JSON")

    p = sub.add_parser("request", parents=[common],
                       help="ask, as the device model of a domain, for extra pages",
                       description="Publish 'domain D needs N extra pages in total' and "
                                   "wait for the toolstack's decision. Exit 0 granted (the "
                                   "new limit is printed), 3 rejected, 4 timeout.")
    p.add_argument("--pages", type=_pages, required=True, help="extra pages needed, in total")
    p.add_argument("--reason", default="", help="why (printable ASCII, up to 128 bytes)")
    p.set_defaults(run=lambda a: run_request(a, a.pages, a.reason))

    w = sub.add_parser("withdraw", parents=[common],
                       help="give a domain's extra pages back",
                       description="Ask for 0 extra pages: the limit drops as far as the "
                                   "domain's current pages allow.")
    w.set_defaults(run=lambda a: run_request(a, 0, "withdraw"))
