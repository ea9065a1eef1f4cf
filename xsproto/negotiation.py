"""The protocol's decisions, free of I/O: the watcher's side and the device model's side.

The watcher reads xenstore and Xen, passes what it saw to ``decide`` (or ``recover`` at
start-up) and carries out the returned decision. The limit is always computed from the
recorded base and granted pages, never by adding to Xen's current limit, so replays,
spurious watch events, restarts and racing watchers cannot raise it twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from xsproto import paths
from xsproto.errors import NegotiationTimeout, ProtocolError, RequestRejected
from xsproto.policy import Policy, RateLimiter
from xsproto.records import (
    DecisionRecord,
    DecisionState,
    RejectCode,
    Request,
    UnsupportedVersion,
)
from xsproto.values import DECISION_REASON_MAX_BYTES, DEFAULT_TIMEOUT, PAGES_MAX, parse_request_id


@dataclass(frozen=True)
class DomainInfo:
    """What Xen says about the guest D right now."""

    domid: int
    exists: bool
    dying: bool = False
    max_pages: int = 0
    tot_pages: int = 0
    name: str | None = None


@dataclass(frozen=True)
class HostInfo:
    free_pages: int
    granted_elsewhere: int
    """Sum of granted-pages recorded for every domain other than D."""


@dataclass(frozen=True)
class Apply:
    """Write ``record`` (state applying), set D's max_pages to ``target``, then ``finish``."""

    record: DecisionRecord
    target: int


@dataclass(frozen=True)
class Reject:
    """Write ``record``; if it is None the domain is gone: remove both directories."""

    code: RejectCode
    detail: str
    record: DecisionRecord | None

    def error(self, domid: int) -> RequestRejected:
        return RequestRejected(self.code, self.detail, domid=domid)


@dataclass(frozen=True)
class Ignore:
    """Nothing to do (already decided, incomplete or spurious); ``why`` is for the log."""

    why: str


Decision = Apply | Reject | Ignore


def decide(
    nodes: Mapping[str, bytes],
    *,
    owner: int,
    dm_domid: int,
    current: DecisionRecord | None,
    domain: DomainInfo,
    host: HostInfo,
    policy: Policy,
    limiter: RateLimiter,
    now: float,
) -> Decision:
    """Answer the request in ``nodes`` (the request directory's children).

    ``owner`` is the owner domid in the request-id node's permissions. A pending
    ``applying`` record is finished first (``recover``); call again once it is done.
    """
    if current is not None and current.state is DecisionState.APPLYING:
        return recover(current, domain)
    where = paths.request_dir(dm_domid, domain.domid)
    last = current.request_id if current else 0
    raw_id = nodes.get(paths.REQUEST_ID)
    if raw_id is None:
        return Ignore("no request-id: nothing asked yet")
    try:
        answer_id = parse_request_id(raw_id, path=f"{where}/{paths.REQUEST_ID}")
    except ProtocolError:
        answer_id = last  # unreadable id: the rejection keeps the last decided one
    else:
        if answer_id <= last:
            return Ignore(f"request-id {answer_id} already decided (last {last})")

    def reject(code: RejectCode, detail: str) -> Decision:
        record = _rejection(code, detail, answer_id, current, domain)
        if record == current:  # an unreadable request-id seen again
            return Ignore(f"already rejected: {record.reason}")
        return Reject(code, detail, record)

    try:
        request = Request.from_nodes(nodes, where=where)
    except UnsupportedVersion as err:
        return reject(RejectCode.BAD_VERSION, str(err))
    except ProtocolError as err:
        return reject(RejectCode.BAD_VALUE, str(err))
    d = domain.domid
    if owner != dm_domid:
        return reject(
            RejectCode.WRONG_WRITER,
            f"{where}/{paths.REQUEST_ID}: owned by domain {owner}, expected {dm_domid}",
        )
    if dm_domid == d:
        return reject(RejectCode.WRONG_WRITER, f"{where}: domain {d} is its own device model")
    if not domain.exists:
        return Reject(RejectCode.NO_SUCH_DOMAIN, f"domain {d} does not exist", None)
    if domain.dying:
        return Reject(RejectCode.DYING, f"domain {d} is dying", None)
    if d == 0:
        return reject(RejectCode.PRIVILEGED, "domain 0 is never given extra pages")

    limits = policy.limits_for(d, domain.name)
    base = current.base_pages if current else domain.max_pages
    granted = current.granted_pages if current else 0
    pages_path = f"{where}/{paths.PAGES}"
    if request.pages > limits.cap_pages:
        return reject(
            RejectCode.OVER_DOMAIN_CAP,
            f"{pages_path}: {request.pages} > cap {limits.cap_pages} for domain {d}",
        )
    if base + request.pages > PAGES_MAX:
        return reject(
            RejectCode.OVER_DOMAIN_CAP,
            f"{pages_path}: base {base} + {request.pages} exceeds Xen's {PAGES_MAX}",
        )
    # Lowering stops at the pages D holds now; Xen cannot take populated pages back.
    target = max(base + request.pages, domain.tot_pages)
    new_granted = target - base
    increase = new_granted - granted
    if increase > 0:
        total = host.granted_elsewhere + new_granted
        if total > policy.host_budget_pages:
            return reject(
                RejectCode.OVER_HOST_BUDGET,
                f"{pages_path}: {request.pages}: host total {total}"
                f" > budget {policy.host_budget_pages}",
            )
        spare = host.free_pages - policy.free_reserve_pages
        if increase > spare:
            return reject(
                RejectCode.OVER_HOST_BUDGET,
                f"{pages_path}: {request.pages}: increase {increase} > free {host.free_pages}"
                f" - reserve {policy.free_reserve_pages}",
            )
        if not limiter.allow(d, now, limits.rate):
            return reject(
                RejectCode.RATE_LIMITED,
                f"{where}/{paths.REQUEST_ID}: {request.request_id}: more than"
                f" {limits.rate.burst} increases per {limits.rate.refill_seconds:g} s",
            )
    record = DecisionRecord(
        state=DecisionState.APPLYING,
        request_id=request.request_id,
        base_pages=base,
        granted_pages=new_granted,
        max_pages=target,
    )
    return Apply(record, target)


def _rejection(
    code: RejectCode,
    detail: str,
    request_id: int,
    current: DecisionRecord | None,
    domain: DomainInfo,
) -> DecisionRecord:
    room = DECISION_REASON_MAX_BYTES - len(code) - 2
    if len(detail) > room:
        detail = detail[: room - 3] + "..."
    return DecisionRecord(
        state=DecisionState.REJECTED,
        request_id=request_id,
        base_pages=current.base_pages if current else domain.max_pages,
        granted_pages=current.granted_pages if current else 0,
        max_pages=domain.max_pages,
        reason=f"{code}: {detail}",
    )


def finish(record: DecisionRecord) -> DecisionRecord:
    """The granted record to write once Xen's limit is set."""
    if record.state is not DecisionState.APPLYING:
        raise ValueError(f"cannot finish a {record.state} record")
    return replace(record, state=DecisionState.GRANTED)


def recover(current: DecisionRecord | None, domain: DomainInfo) -> Decision:
    """At watcher start-up: finish an interrupted ``applying`` record, idempotently."""
    if current is None or current.state is not DecisionState.APPLYING:
        return Ignore("nothing pending")
    if not domain.exists:
        return Reject(RejectCode.NO_SUCH_DOMAIN, f"domain {domain.domid} does not exist", None)
    if domain.dying:
        return Reject(RejectCode.DYING, f"domain {domain.domid} is dying", None)
    return Apply(current, current.max_pages)


class DmState(StrEnum):
    IDLE = "idle"
    REQUESTED = "requested"
    GRANTED = "granted"
    REJECTED = "rejected"
    TIMED_OUT = "timed-out"


@dataclass(frozen=True)
class DeviceModelSide:
    """The device model's view: idle -> requested(id) -> granted | rejected | timed-out.

    Immutable: every step returns the next state. Asking again is allowed from any state
    (requests are declarative, the newest id wins).
    """

    domid: int
    state: DmState = DmState.IDLE
    request_id: int = 0
    """Highest request-id written or seen decided."""
    deadline: float = 0.0
    granted_pages: int = 0
    """Extra pages in force according to the last decision seen."""
    rejection: tuple[RejectCode, str] | None = None

    def ask(
        self,
        pages: int,
        reason: str = "",
        *,
        now: float,
        decided: DecisionRecord | None,
        written: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> tuple[DeviceModelSide, Request]:
        """Build the next request; ``written`` is a request-id already in the request
        directory (a restarted device model must not reuse it)."""
        floor = max(self.request_id, written, decided.request_id if decided else 0)
        request = Request(pages=pages, reason=reason, request_id=floor + 1)
        state = replace(
            self,
            state=DmState.REQUESTED,
            request_id=request.request_id,
            deadline=now + timeout,
            rejection=None,
        )
        return state, request

    def observe(self, record: DecisionRecord | None) -> DeviceModelSide:
        """Take in the decision directory; decisions for older ids change nothing."""
        if record is None:
            return self
        if self.state is not DmState.REQUESTED:
            granted = record.granted_pages if record.state is DecisionState.GRANTED else None
            return replace(
                self,
                request_id=max(self.request_id, record.request_id),
                granted_pages=self.granted_pages if granted is None else granted,
            )
        if record.request_id > self.request_id:
            raise ProtocolError(
                f"decision for request-id {record.request_id}, newest asked {self.request_id}",
                path=paths.decision_dir(self.domid),
            )
        if record.request_id < self.request_id or record.state is DecisionState.APPLYING:
            return self
        if record.state is DecisionState.GRANTED:
            return replace(self, state=DmState.GRANTED, granted_pages=record.granted_pages)
        return replace(self, state=DmState.REJECTED, rejection=record.rejection)

    def tick(self, now: float) -> DeviceModelSide:
        """Give up waiting once the deadline has passed."""
        if self.state is DmState.REQUESTED and now >= self.deadline:
            return replace(self, state=DmState.TIMED_OUT)
        return self

    def outcome(self) -> int | None:
        """Granted extra pages once decided, None while idle or waiting; raises on failure."""
        if self.state is DmState.GRANTED:
            return self.granted_pages
        if self.state is DmState.REJECTED:
            assert self.rejection is not None  # a rejected record always carries one
            code, detail = self.rejection
            raise RequestRejected(code, detail, domid=self.domid)
        if self.state is DmState.TIMED_OUT:
            raise NegotiationTimeout(
                f"domain {self.domid}: no decision for request-id {self.request_id}"
            )
        return None
