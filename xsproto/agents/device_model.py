"""The device-model agent: ask the toolstack for extra pages through xenstore and wait.

This is what a device model (or its wrapper script) calls instead of raising
max_pages itself. The waiting is driven by ``negotiation.DeviceModelSide``; this module
only writes the request, watches the decision and reads it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

from xsproto import fields, paths, records
from xsproto.adapters import xenstore_records
from xsproto.adapters.xenstore import Xenstore
from xsproto.errors import NegotiationTimeout, ProtocolError, RequestRejected
from xsproto.exitcodes import Exit
from xsproto.io import XenstoreIO
from xsproto.negotiation import DeviceModelSide, RejectCode
from xsproto.outputs import Outcome, RequestOutput
from xsproto.records import DecisionRecord, DecisionState
from xsproto.values import DEFAULT_TIMEOUT, parse_domid, parse_request_id

DECISION_TOKEN = "xsproto-decision"
_APPLYING = DecisionState.APPLYING.value.encode("ascii")


def own_domid(xs: XenstoreIO) -> int:
    """The domain this agent runs in (dom0 or a stubdom): the device model's domain."""
    raw = xs.read(paths.OWN_DOMID)
    return 0 if raw is None else parse_domid(raw, path=paths.OWN_DOMID)


def request_pages(xs: XenstoreIO, domid: int, pages: int, reason: str = "", *,
                  timeout: float = DEFAULT_TIMEOUT, dm_domid: int | None = None,
                  clock: Callable[[], float] = time.monotonic) -> DecisionRecord:
    """Ask that ``domid`` have ``pages`` extra pages in total; return the granted record.

    Raises RequestRejected (with the toolstack's code and detail) or NegotiationTimeout.
    ``pages=0`` gives every extra page back.
    """
    dm = own_domid(xs) if dm_domid is None else dm_domid
    if not xs.children(paths.domain_dir(domid)):
        raise RequestRejected(RejectCode.NO_SUCH_DOMAIN,
                              f"{paths.domain_dir(domid)} does not exist", domid=domid)
    request_dir, decision_dir = paths.request_dir(dm, domid), paths.decision_dir(domid)
    xs.watch(decision_dir, DECISION_TOKEN)
    try:
        side, request = DeviceModelSide(domid, dm).ask(
            pages, reason, now=clock(), decided=_id_in(xs, decision_dir),
            written=_id_in(xs, request_dir), timeout=timeout)
        xs.transact(lambda t: t.write_dir(request_dir, request.to_nodes()))
        while True:
            record = _answer(xs, domid, request.request_id)
            side = side.observe(record).tick(clock())
            if side.outcome() is not None:
                assert record is not None  # outcome() is set only from a record
                return record
            xs.next_batch(timeout=max(0.0, side.deadline - clock()))
    finally:
        xs.unwatch(decision_dir, DECISION_TOKEN)


def _id_in(xs: XenstoreIO, where: str) -> int:
    """The request-id recorded in a request or decision directory; 0 when there is none
    or it is unreadable (the id floor only; a single node, read as it is)."""
    path = f"{where}/{records.REQUEST_ID}"
    raw = xs.read(path)
    try:
        return 0 if raw is None else parse_request_id(raw, path=path, allow_zero=True)
    except ProtocolError:
        return 0


def _answer(xs: XenstoreIO, domid: int, asked: int) -> DecisionRecord | None:
    """The decision record once it may answer request ``asked``, else None. Two single
    reads tell whether the whole record (read in a transaction, strictly) is worth
    reading: not while it answers an older id, nor while the watcher applies ours."""
    where = paths.decision_dir(domid)
    raw_id, state = xs.read(f"{where}/{records.REQUEST_ID}"), xs.read(f"{where}/{records.STATE}")
    if raw_id is None:
        return None
    try:
        decided = parse_request_id(raw_id, path=f"{where}/{records.REQUEST_ID}",
                                   allow_zero=True)
    except ProtocolError:
        decided = asked  # let the strict read say what is wrong with it
    if decided < asked or (decided == asked and state == _APPLYING):
        return None
    return xenstore_records.read_decision(xs, domid)


def run_request(domid: int, pages: int, reason: str, *, timeout: float,
                dm_domid: int | None, as_json: bool, xenstore: str | None) -> int:
    """``xsproto request`` / ``withdraw``: ask, wait, print the outcome (with ``as_json``
    one RequestOutput document, whatever the outcome); the exit status says granted (0),
    rejected (3) or timed out (4)."""
    try:
        with Xenstore(xenstore) as xs:
            record = request_pages(xs, domid, pages, reason, timeout=timeout,
                                   dm_domid=dm_domid)
    except RequestRejected as e:
        _print(as_json, RequestOutput(domid=domid, outcome=Outcome.REJECTED, code=e.code,
                                      detail=e.detail), f"xsproto: {e}", stderr=True)
        return Exit.REJECTED
    except NegotiationTimeout as e:
        _print(as_json, RequestOutput(domid=domid, outcome=Outcome.TIMED_OUT, detail=str(e)),
               f"xsproto: {e} within {timeout:g} s (is the watcher running?)", stderr=True)
        return Exit.TIMEOUT
    _print(as_json, RequestOutput(domid=domid, outcome=Outcome.GRANTED,
                                  request_id=record.request_id, base_pages=record.base_pages,
                                  granted_pages=record.granted_pages,
                                  max_pages=record.max_pages),
           f"domain {domid}: granted {record.granted_pages} extra pages, "
           f"max_pages {record.max_pages} (base {record.base_pages})")
    return Exit.OK


def _print(as_json: bool, document: RequestOutput, text: str, *, stderr: bool = False) -> None:
    if as_json:
        print(json.dumps(fields.dump(document)))
    if stderr or not as_json:
        print(text, file=sys.stderr if stderr else sys.stdout)
