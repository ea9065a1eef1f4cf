"""``xsproto status``: what admins need to see, per domain: the device model's request,
the toolstack's recorded decision, and Xen's live limit beside it (they must agree)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

from xsproto import paths, records
from xsproto.adapters import xenstore_records
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.errors import ProtocolError
from xsproto.exitcodes import Exit
from xsproto.records import DecisionState
from xsproto.values import escaped


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
    dm = xenstore_records.dm_domid_of(xs, domid)
    request, _ = xenstore_records.read_request(xs, dm, domid)
    info = hv.domain(domid)
    name = xenstore_records.domain_name(xs, domid)
    problem = None
    try:
        record = xenstore_records.read_decision(xs, domid)
    except ProtocolError as e:
        record, problem = None, str(e)
    consistent = problem is None and (
        record is None or record.state is DecisionState.REJECTED or
        (info.exists and info.max_pages == record.max_pages))
    if problem is None and not consistent:
        problem = "Xen's max_pages differs from the recorded max-pages"
    return DomainStatus(
        domid=domid, name=name, dm_domid=dm,
        requested_pages=_text(request.get(records.PAGES)),
        request_id=_text(request.get(records.REQUEST_ID)),
        state=record.state.value if record else None,
        origin=record.origin.value if record else None,
        base_pages=record.base_pages if record else None,
        granted_pages=record.granted_pages if record else None,
        recorded_max_pages=record.max_pages if record else None,
        xen_max_pages=info.max_pages if info.exists else None,
        xen_tot_pages=info.tot_pages if info.exists else None,
        consistent=consistent, problem=problem)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else escaped(raw)


def run(domid: int | None, *, as_json: bool, xenstore: str | None) -> int:
    """``xsproto status``: exit 1 when a recorded decision and Xen disagree."""
    with Xenstore(xenstore) as xs:
        hv = Hypervisor()
        domids = [domid] if domid is not None else [
            d for d in xenstore_records.domids_under(xs, paths.DECISION_ROOT)
            if xs.children(paths.decision_dir(d))]
        rows = [domain_status(xs, hv, d) for d in domids]
    print(json.dumps([asdict(r) for r in rows], indent=2) if as_json else render(rows))
    if not all(r.consistent for r in rows):
        print("xsproto: recorded state and Xen disagree (see PROBLEM)", file=sys.stderr)
        return Exit.ERROR
    return Exit.OK


def render(rows: list[DomainStatus]) -> str:
    """The table for people; every text a guest or its device model could have written is
    escaped (a name or a value with terminal escapes in it is shown, not obeyed)."""
    lines = [f"{'DOMID':>5} {'NAME':<16} {'STATE':<9} {'ASKED':>7} {'GRANTED':>8} "
             f"{'BASE':>8} {'MAX(rec)':>9} {'MAX(Xen)':>9}  PROBLEM"]
    lines += [f"{r.domid:>5} {escaped(r.name or '-')[:16]:<16} {r.state or '-':<9} "
              f"{escaped(r.requested_pages or '-'):>7} {_n(r.granted_pages):>8} "
              f"{_n(r.base_pages):>8} {_n(r.recorded_max_pages):>9} "
              f"{_n(r.xen_max_pages):>9}  {escaped(r.problem or '')}" for r in rows]
    return "\n".join(lines)


def _n(v: int | None) -> str:
    return "-" if v is None else str(v)
