"""``xsproto status``: what admins need to see, per domain: the device model's request,
the toolstack's recorded decision, and Xen's live limit beside it (they must agree)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

from xsproto import paths, state
from xsproto.errors import ProtocolError
from xsproto.exitcodes import Exit
from xsproto.hypervisor import Hypervisor
from xsproto.records import DecisionState
from xsproto.xenstore import Xenstore


@dataclass(frozen=True)
class DomainStatus:
    domid: int
    name: str | None
    dm_domid: int
    requested_pages: str | None
    request_id: str | None
    state: str | None
    origin: str | None
    base_pages: int | None
    granted_pages: int | None
    recorded_max_pages: int | None
    xen_max_pages: int | None
    xen_tot_pages: int | None
    consistent: bool
    problem: str | None


def domain_status(xs: Xenstore, hv: Hypervisor, domid: int) -> DomainStatus:
    dm = state.dm_domid_of(xs, domid)
    request, _ = state.read_request(xs, dm, domid)
    info = hv.domain(domid)
    name = xs.read(f"/local/domain/{domid}/name")
    problem = None
    try:
        record = state.read_decision(xs, domid)
    except ProtocolError as e:
        record, problem = None, str(e)
    consistent = problem is None and (
        record is None or record.state is DecisionState.REJECTED or
        (info.exists and info.max_pages == record.max_pages))
    if problem is None and not consistent:
        problem = "Xen's max_pages differs from the recorded max-pages"
    return DomainStatus(
        domid=domid, name=name.decode("ascii", "replace") if name else None, dm_domid=dm,
        requested_pages=_text(request.get(paths.PAGES)),
        request_id=_text(request.get(paths.REQUEST_ID)),
        state=record.state.value if record else None,
        origin=record.origin.value if record else None,
        base_pages=record.base_pages if record else None,
        granted_pages=record.granted_pages if record else None,
        recorded_max_pages=record.max_pages if record else None,
        xen_max_pages=info.max_pages if info.exists else None,
        xen_tot_pages=info.tot_pages if info.exists else None,
        consistent=consistent, problem=problem)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("ascii", "backslashreplace")


def run(args: argparse.Namespace) -> int:
    with Xenstore(args.xenstore) as xs:
        hv = Hypervisor()
        domids = [args.domid] if args.domid is not None else sorted(
            int(d) for d in xs.children(paths.DECISION_ROOT) if d.isdigit()
            and xs.children(paths.decision_dir(int(d))))
        rows = [domain_status(xs, hv, d) for d in domids]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(f"{'DOMID':>5} {'NAME':<16} {'STATE':<9} {'ASKED':>7} {'GRANTED':>8} "
              f"{'BASE':>8} {'MAX(rec)':>9} {'MAX(Xen)':>9}  PROBLEM")
        for r in rows:
            print(f"{r.domid:>5} {(r.name or '-')[:16]:<16} {r.state or '-':<9} "
                  f"{r.requested_pages or '-':>7} {_n(r.granted_pages):>8} "
                  f"{_n(r.base_pages):>8} {_n(r.recorded_max_pages):>9} "
                  f"{_n(r.xen_max_pages):>9}  {r.problem or ''}")
    if not all(r.consistent for r in rows):
        print("xsproto: recorded state and Xen disagree (see PROBLEM)", file=sys.stderr)
        return Exit.ERROR
    return Exit.OK


def _n(v: int | None) -> str:
    return "-" if v is None else str(v)


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="per domain: request, decision and Xen's limit",
                       description="Show each domain's request, the recorded decision and "
                                   "Xen's live limit. Exit 1 when they disagree.")
    p.add_argument("--domid", type=int, default=None, help="only this domain")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)
