"""``xsproto status``: what admins need to see, per domain: the device model's request
(and whether it still waits), the toolstack's recorded decision, Xen's live limit beside
it (they must agree), and whether a watcher is serving. ``--follow`` prints the
protocol's events as they happen, like ``xenstore-watch`` but decoded.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable

from xsproto import fields, negotiation, paths
from xsproto.adapters import xenstore_records
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.errors import ProtocolError
from xsproto.exitcodes import Exit
from xsproto.io import XenstoreIO
from xsproto.outputs import DomainStatus, FollowEvent, FollowKind, StatusOutput, WatcherSeen
from xsproto.records import DecisionRecord, DecisionState, Request
from xsproto.values import escaped

ALIVE_SECONDS = 15
"""A heartbeat older than this (three of the watcher's rescans) means nobody serves."""
FOLLOW_TOKEN = "xsproto-follow"


def watcher_seen(xs: Xenstore, now: float) -> WatcherSeen | None:
    """The watcher's last heartbeat (paths.HEARTBEAT), None if no watcher ever wrote one."""
    raw = xs.read(paths.HEARTBEAT)
    parts = raw.split() if raw else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    pid, seen = int(parts[0]), int(parts[1])
    return WatcherSeen(pid=pid, last_seen=seen, alive=now - seen < ALIVE_SECONDS)


def domain_status(xs: Xenstore, hv: Hypervisor, domid: int) -> DomainStatus:
    dm = xenstore_records.dm_domid_of(xs, domid)
    raw = xenstore_records.read_request(xs, dm, domid)
    info = hv.domain(domid)
    problems = []
    request = None
    if raw:
        try:
            request = Request.parse(raw, where=paths.request_node(dm, domid))
        except ProtocolError as e:
            problems.append(f"request: {e}")
    record: DecisionRecord | None = None
    try:
        record = xenstore_records.read_decision(xs, domid)
    except ProtocolError as e:
        problems.append(f"decision: {e}")
    drift = negotiation.drift(record, info) is not None
    if drift:
        problems.append("Xen's limit is not the recorded base + granted: xsproto reconcile")
    decided = record.request_id if record else 0
    return DomainStatus(
        domid=domid, name=xenstore_records.domain_name(xs, domid), dm_domid=dm,
        requested_pages=request.pages if request else None,
        request_id=request.request_id if request else None,
        pending=request is not None and request.request_id > decided,
        state=record.state if record else None, origin=record.origin if record else None,
        base_pages=record.base_pages if record else None,
        granted_pages=record.granted_pages if record else None,
        recorded_max_pages=record.max_pages if record else None,
        xen_max_pages=info.max_pages if info.exists else None,
        xen_tot_pages=info.tot_pages if info.exists else None,
        drift=drift, problem="; ".join(problems) or None)


def domids_in_protocol(xs: Xenstore) -> list[int]:
    """Every domain with a decision record or a request in its device model's area."""
    found = {d for d in xenstore_records.domids_under(xs, paths.DECISION_ROOT)
             if xs.read(paths.decision_node(d))}
    for domid in xenstore_records.domids_under(xs, paths.DOMAINS_ROOT):
        if xenstore_records.read_request(xs, xenstore_records.dm_domid_of(xs, domid), domid):
            found.add(domid)
    return sorted(found)


def run(domid: int | None, *, as_json: bool, xenstore: str | None) -> int:
    """``xsproto status``: exit 5 when a domain drifted, 1 when a record is unreadable."""
    with Xenstore(xenstore) as xs:
        hv = Hypervisor()
        domids = [domid] if domid is not None else domids_in_protocol(xs)
        output = StatusOutput(watcher=watcher_seen(xs, time.time()),
                              domains=tuple(domain_status(xs, hv, d) for d in domids))
    print(json.dumps(fields.dump(output), indent=2) if as_json else render(output))
    if any(r.drift for r in output.domains):
        print("xsproto: Xen's limit and the record disagree (see PROBLEM; xsproto reconcile)",
              file=sys.stderr)
        return Exit.DRIFT
    if any(r.problem for r in output.domains):
        return Exit.ERROR
    return Exit.OK


def render(output: StatusOutput) -> str:
    """The table for people; every text a guest or its device model could have written is
    escaped (a name or a value with terminal escapes in it is shown, not obeyed)."""
    w = output.watcher
    lines = ["watcher: " + ("none has run" if w is None else
                            f"pid {w.pid}, {'alive' if w.alive else 'NOT SEEN'} (last seen "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(w.last_seen))})"),
             f"{'DOMID':>5} {'NAME':<16} {'STATE':<9} {'ASKED':>7} {'GRANTED':>8} "
             f"{'BASE':>8} {'MAX(rec)':>9} {'MAX(Xen)':>9}  PROBLEM"]
    for r in output.domains:
        state = "pending" if r.pending else (r.state.value if r.state else "-")
        lines.append(f"{r.domid:>5} {escaped(r.name or '-')[:16]:<16} {state:<9} "
                     f"{_n(r.requested_pages):>7} {_n(r.granted_pages):>8} "
                     f"{_n(r.base_pages):>8} {_n(r.recorded_max_pages):>9} "
                     f"{_n(r.xen_max_pages):>9}  {escaped(r.problem or '')}")
    return "\n".join(lines)


def _n(v: int | None) -> str:
    return "-" if v is None else str(v)


# --follow

def follow(*, as_json: bool, xenstore: str | None) -> int:
    """Print decoded protocol events until interrupted."""
    with Xenstore(xenstore) as xs:
        xs.watch(paths.DECISION_ROOT, FOLLOW_TOKEN)
        watched: set[int] = set()
        while True:
            watch_new_areas(xs, watched)
            for event in events_of(xs, xs.next_batch(timeout=5.0)):
                print(json.dumps(fields.dump(event)) if as_json else describe(event),
                      flush=True)


def watch_new_areas(xs: XenstoreIO, watched: set[int]) -> None:
    """Watch the request area of each device model (dom0's, a stubdom's) not in
    ``watched`` yet, and add it: xenstored refuses a watch registered twice (EEXIST)."""
    dms = {0} | {xenstore_records.dm_domid_of(xs, d)
                 for d in xenstore_records.domids_under(xs, paths.DOMAINS_ROOT)}
    for dm in sorted(dms - watched):
        xs.watch(paths.device_model_area(dm), FOLLOW_TOKEN)
        watched.add(dm)


def events_of(xs: Xenstore, batch: Iterable[tuple[str, str]]) -> list[FollowEvent]:
    """The protocol events a batch of watch events amounts to: each request or record
    touched, read once per batch."""
    touched: dict[tuple[int, int | None], None] = {}  # (domid, dm_domid; None: decision)
    for path, _ in batch:
        try:
            where = paths.parse(path)
        except ProtocolError:
            continue
        dm = where.dm_domid if isinstance(where, paths.RequestPath) else None
        touched[(where.domid, dm)] = None
    now = time.time()
    return [_decision_event(xs, domid, now) if dm is None
            else _request_event(xs, dm, domid, now) for domid, dm in touched]


def _request_event(xs: Xenstore, dm: int, domid: int, now: float) -> FollowEvent:
    raw = xenstore_records.read_request(xs, dm, domid)
    if not raw:
        return FollowEvent(time=now, kind=FollowKind.REMOVED, domid=domid, dm_domid=dm)
    try:
        request = Request.parse(raw, where=paths.request_node(dm, domid))
    except ProtocolError as e:
        return FollowEvent(time=now, kind=FollowKind.REQUEST, domid=domid, dm_domid=dm,
                           problem=str(e))
    return FollowEvent(time=now, kind=FollowKind.REQUEST, domid=domid, dm_domid=dm,
                       request_id=request.request_id, pages=request.pages,
                       reason=request.reason)


def _decision_event(xs: Xenstore, domid: int, now: float) -> FollowEvent:
    try:
        record = xenstore_records.read_decision(xs, domid)
    except ProtocolError as e:
        return FollowEvent(time=now, kind=FollowKind.DECISION, domid=domid, problem=str(e))
    if record is None:
        return FollowEvent(time=now, kind=FollowKind.REMOVED, domid=domid)
    code, detail = record.rejection or (None, None)
    return FollowEvent(time=now, kind=FollowKind.DECISION, domid=domid,
                       request_id=record.request_id, state=record.state,
                       granted_pages=record.granted_pages, max_pages=record.max_pages,
                       code=code, detail=detail)


def describe(e: FollowEvent) -> str:
    """One line for people (peers' text escaped)."""
    when = time.strftime("%H:%M:%S", time.localtime(e.time))
    who = f"domain {e.domid}"
    if e.problem is not None:
        return f"{when} {who}: unreadable {e.kind.value}: {escaped(e.problem)}"
    if e.kind is FollowKind.REMOVED:
        return f"{when} {who}: {'request' if e.dm_domid is not None else 'decision'} removed"
    if e.kind is FollowKind.REQUEST:
        return (f"{when} {who}: device model {e.dm_domid} asks {e.pages} pages, request "
                f"{e.request_id} ({escaped(e.reason or '')!r})")
    if e.state is DecisionState.REJECTED:
        return (f"{when} {who}: request {e.request_id} rejected ({escaped(e.code or '')}): "
                f"{escaped(e.detail or '')}")
    return (f"{when} {who}: request {e.request_id} {e.state.value if e.state else '?'}: "
            f"{e.granted_pages} pages granted, limit {e.max_pages}")
