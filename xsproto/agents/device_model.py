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
from xsproto.adapters.xenstore import Xenstore
from xsproto.errors import NegotiationTimeout, RequestRejected
from xsproto.exitcodes import Exit
from xsproto.io import XenstoreIO
from xsproto.negotiation import DeviceModelSide, RejectCode
from xsproto.outputs import Outcome, RequestOutput
from xsproto.records import DecisionRecord
from xsproto.values import DEFAULT_TIMEOUT, parse_domid

DECISION_TOKEN = "xsproto-decision"


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
    request_node, decision_node = paths.request_node(dm, domid), paths.decision_node(domid)
    xs.watch(decision_node, DECISION_TOKEN)
    try:
        side, request = DeviceModelSide(domid, dm).ask(
            pages, reason, now=clock(), decided=_id_in(xs, decision_node),
            written=_id_in(xs, request_node), timeout=timeout)
        xs.write(request_node, request.encode())
        # The watch came before the write, so every decision written since fires an event
        # (and registering fired one): wait first, then read.
        while True:
            xs.next_batch(timeout=max(0.0, side.deadline - clock()))
            record = _answer(xs, domid, request.request_id)
            side = side.observe(record).tick(clock())
            if side.outcome() is not None:
                assert record is not None  # outcome() is set only from a record
                return record
    finally:
        xs.unwatch(decision_node, DECISION_TOKEN)


def _id_in(xs: XenstoreIO, where: str) -> int:
    """The request-id in a request or decision node; 0 when there is none or it is
    unreadable (the id floor only)."""
    return records.request_id_in(xs.read(where), where=where) or 0


def _answer(xs: XenstoreIO, domid: int, asked: int) -> DecisionRecord | None:
    """The decision record once it may answer request ``asked``, else None: one read,
    parsed strictly unless it answers an older id."""
    where = paths.decision_node(domid)
    raw = xs.read(where)
    if not raw:
        return None
    decided = records.request_id_in(raw, where=where)
    if decided is not None and decided < asked:
        return None
    return DecisionRecord.parse(raw, where=where)


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
