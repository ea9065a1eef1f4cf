"""The protocol's decisions, free of I/O: the watcher's side and the device model's side.

The watcher reads xenstore and Xen, passes what it saw to ``decide`` (or ``recover`` at
start-up) and carries out the returned decision. The limit is always computed from the
recorded base and granted pages, never by adding to Xen's current limit, so replays,
spurious watch events, restarts and racing watchers cannot raise it twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Generic, TypeVar

from xsproto import paths, records
from xsproto.errors import NegotiationTimeout, ProtocolError, RequestRejected
from xsproto.policy import Limits, Policy, RateLimiter
from xsproto.records import (
    DecisionRecord,
    DecisionState,
    Request,
    UnsupportedVersion,
)
from xsproto.values import (
    DECISION_REASON_MAX_BYTES,
    DEFAULT_TIMEOUT,
    PAGES_MAX,
    REQUEST_ID_MAX,
)


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


class RejectCode(StrEnum):
    """Why the toolstack refused a request, in the order the checks run (``RULES``)."""

    BAD_VERSION = "bad-version"
    BAD_VALUE = "bad-value"
    WRONG_WRITER = "wrong-writer"
    NO_SUCH_DOMAIN = "no-such-domain"
    DYING = "dying"
    PRIVILEGED = "privileged"
    OVER_DOMAIN_CAP = "over-domain-cap"
    OVER_HOST_BUDGET = "over-host-budget"
    RATE_LIMITED = "rate-limited"


@dataclass(frozen=True)
class Apply:
    """Write ``record`` (state applying), set D's max_pages to ``target``, then ``finish``;
    once the granted record is committed, charge D's rate bucket with ``charge`` (the
    bucket's next arrival time; None when the limit does not go up)."""

    record: DecisionRecord
    target: int
    charge: float | None = None
    rule: str = "granted"
    """What decided it: every rule passed (``granted``), or a recovery (``recover``)."""


@dataclass(frozen=True)
class Reject:
    """Write ``record``; if it is None the domain is gone: remove both nodes."""

    code: RejectCode
    detail: str
    record: DecisionRecord | None
    rule: str = ""
    """The check that failed (its function's name in RULES, or the parse step)."""

    def error(self, domid: int) -> RequestRejected:
        return RequestRejected(self.code, self.detail, domid=domid)


@dataclass(frozen=True)
class Ignore:
    """Nothing to do (already decided, incomplete or spurious); ``why`` is for the log."""

    why: str


Decision = Apply | Reject | Ignore


@dataclass(frozen=True)
class Asked:
    """A well-formed request and everything the rules judge it by."""

    request: Request
    where: str
    """The request node."""
    owner: int
    dm_domid: int
    domain: DomainInfo
    current: DecisionRecord | None
    host: HostInfo
    policy: Policy
    limits: Limits
    limiter: RateLimiter
    now: float

    @property
    def base(self) -> int:
        """The limit the grant sits on: recorded once, from Xen's limit before any grant."""
        return self.current.base_pages if self.current else self.domain.max_pages

    @property
    def target(self) -> int:
        """Xen's limit to set. Lowering stops at the pages D holds: Xen cannot take
        populated pages back."""
        return max(self.base + self.request.pages, self.domain.tot_pages)

    @property
    def increase(self) -> int:
        """How far Xen's live limit goes up (after ``xl mem-max`` it is below the record)."""
        return self.target - self.domain.max_pages

    @property
    def charge(self) -> float | None:
        """D's bucket's next arrival time if one more increase is allowed now, else None."""
        return self.limiter.next_arrival(self.domain.domid, self.now, self.limits.rate)

    def path(self, key: str) -> str:
        """How a rejection names one of the request's keys."""
        return records.key_path(self.where, key)


def _written_by_the_device_model(a: Asked) -> str | None:
    if a.owner != a.dm_domid:
        return (f"{a.path(records.REQUEST_ID)}: owned by domain {a.owner}, "
                f"expected {a.dm_domid}")
    return None


def _not_its_own_device_model(a: Asked) -> str | None:
    d = a.domain.domid
    return f"{a.where}: domain {d} is its own device model" if a.dm_domid == d else None


def _unprivileged(a: Asked) -> str | None:
    return "domain 0 is never given extra pages" if a.domain.domid == 0 else None


def _within_cap(a: Asked) -> str | None:
    cap, d = a.limits.cap_pages, a.domain.domid
    if a.request.pages > cap:
        return f"{a.path(records.PAGES)}: {a.request.pages} > cap {cap} for domain {d}"
    if a.target - a.base > cap:
        return (f"{a.path(records.PAGES)}: {a.request.pages}: domain {d} has "
                f"{a.domain.tot_pages - a.base} pages in use above base {a.base}, "
                f"> cap {cap}")
    return None


def _within_xen(a: Asked) -> str | None:
    if a.base + a.request.pages > PAGES_MAX:
        return (f"{a.path(records.PAGES)}: base {a.base} + {a.request.pages} exceeds "
                f"Xen's {PAGES_MAX}")
    return None


def _within_budget(a: Asked) -> str | None:
    total = a.host.granted_elsewhere + a.target - a.base
    if a.increase > 0 and total > a.policy.host_budget_pages:
        return (f"{a.path(records.PAGES)}: {a.request.pages}: host total {total}"
                f" > budget {a.policy.host_budget_pages}")
    return None


def _within_free_memory(a: Asked) -> str | None:
    reserve = a.policy.free_reserve_pages
    if a.increase > 0 and a.increase > a.host.free_pages - reserve:
        return (f"{a.path(records.PAGES)}: {a.request.pages}: increase {a.increase} > "
                f"free {a.host.free_pages} - reserve {reserve}")
    return None


def _within_rate(a: Asked) -> str | None:
    rate = a.limits.rate
    if a.increase > 0 and a.charge is None:
        return (f"{a.path(records.REQUEST_ID)}: {a.request.request_id}: more than"
                f" {rate.burst} increases per {rate.refill_seconds:g} s")
    return None


def _exists(domain: DomainInfo) -> str | None:
    return None if domain.exists else f"domain {domain.domid} does not exist"


def _alive(domain: DomainInfo) -> str | None:
    return f"domain {domain.domid} is dying" if domain.dying else None


_Judged = TypeVar("_Judged")


@dataclass(frozen=True)
class Rule(Generic[_Judged]):
    """One check: ``check`` returns why the request fails it (None: it passes)."""

    code: RejectCode
    check: Callable[[_Judged], str | None]

    @property
    def name(self) -> str:
        """The check's name, for the audit line (``within_cap``, ``exists``, ...)."""
        return self.check.__name__.lstrip("_")


GONE: tuple[Rule[DomainInfo], ...] = (
    Rule(RejectCode.NO_SUCH_DOMAIN, _exists),
    Rule(RejectCode.DYING, _alive),
)
"""First of all: for a domain that is gone nothing is recorded, whatever its request holds
(its nodes are removed instead)."""

RULES: tuple[Rule[Asked], ...] = (
    Rule(RejectCode.WRONG_WRITER, _written_by_the_device_model),
    Rule(RejectCode.WRONG_WRITER, _not_its_own_device_model),
    Rule(RejectCode.PRIVILEGED, _unprivileged),
    Rule(RejectCode.OVER_DOMAIN_CAP, _within_cap),
    Rule(RejectCode.OVER_DOMAIN_CAP, _within_xen),
    Rule(RejectCode.OVER_HOST_BUDGET, _within_budget),
    Rule(RejectCode.OVER_HOST_BUDGET, _within_free_memory),
    Rule(RejectCode.RATE_LIMITED, _within_rate),
)
"""The checks of a well-formed request (after GONE, and after it parsed: bad-version,
bad-value), in the order the spec gives (docs/protocol.md); the first that fails decides.
A new rule is one function and one row here."""


def decide(
    raw: bytes | None,
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
    """Answer the request ``raw`` (the request node's value, None when absent). Pure:
    nothing is changed, the rate charge included (``Apply.charge``).

    ``owner`` is the owner domid in the request node's permissions. A pending
    ``applying`` record is finished first (``recover``); call again once it is done.
    """
    if current is not None and current.state is DecisionState.APPLYING:
        return recover(current, domain)
    where = paths.request_node(dm_domid, domain.domid)
    last = current.request_id if current else 0
    if not raw:
        return Ignore("no request: nothing asked yet")
    answer_id = records.request_id_in(raw, where=where) or 0
    if answer_id == 0:
        answer_id = last  # no readable id: the rejection keeps the last decided one
    elif answer_id <= last:
        return Ignore(f"request-id {answer_id} already decided (last {last})")

    def reject(code: RejectCode, detail: str, rule: str) -> Decision:
        record = _rejection(code, detail, answer_id, current, domain)
        if record == current:  # an unreadable request-id seen again
            return Ignore(f"already rejected: {record.reason}")
        return Reject(code, detail, record, rule)

    for gone in GONE:
        if (detail := gone.check(domain)) is not None:
            return Reject(gone.code, detail, None, gone.name)
    try:
        request = Request.parse(raw, where=where)
    except UnsupportedVersion as err:
        return reject(RejectCode.BAD_VERSION, str(err), "version")
    except ProtocolError as err:
        return reject(RejectCode.BAD_VALUE, str(err), "grammar")
    asked = Asked(request, where, owner, dm_domid, domain, current, host, policy,
                  policy.limits_for(domain.domid, domain.name), limiter, now)
    for rule in RULES:
        if (detail := rule.check(asked)) is not None:
            return reject(rule.code, detail, rule.name)
    record = DecisionRecord(
        state=DecisionState.APPLYING,
        request_id=request.request_id,
        base_pages=asked.base,
        granted_pages=asked.target - asked.base,
        max_pages=asked.target,
    )
    return Apply(record, asked.target, asked.charge if asked.increase > 0 else None)


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


def drift(record: DecisionRecord | None, domain: DomainInfo) -> int | None:
    """Xen's limit for D when it is not the one the record says is in force (an admin's
    ``xl mem-max``); None when they agree, or when there is nothing to compare (no
    record, a record being applied, a domain gone)."""
    if (record is None or record.state is DecisionState.APPLYING or not domain.exists
            or domain.dying or domain.max_pages == record.grant.max_pages):
        return None
    return domain.max_pages


def adopted(record: DecisionRecord, xen_max_pages: int) -> DecisionRecord:
    """The record that makes Xen's limit the grant in force: the pages above the base
    are granted; a limit below the base lowers the base (the domain was shrunk)."""
    base = min(record.base_pages, xen_max_pages)
    return replace(record, state=DecisionState.GRANTED, reason="", base_pages=base,
                   granted_pages=xen_max_pages - base, max_pages=xen_max_pages)


def finish(record: DecisionRecord) -> DecisionRecord:
    """The granted record to write once Xen's limit is set."""
    if record.state is not DecisionState.APPLYING:
        raise ValueError(f"cannot finish a {record.state} record")
    return replace(record, state=DecisionState.GRANTED)


def recover(current: DecisionRecord | None, domain: DomainInfo) -> Decision:
    """At watcher start-up: finish an interrupted ``applying`` record, idempotently."""
    if current is None or current.state is not DecisionState.APPLYING:
        return Ignore("nothing pending")
    for gone in GONE:
        if (detail := gone.check(domain)) is not None:
            return Reject(gone.code, detail, None, gone.name)
    return Apply(current, current.max_pages, rule="recover")


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
    dm_domid: int = 0
    """The device model's own domain (dom0, or a stubdom)."""
    state: DmState = DmState.IDLE
    request_id: int = 0
    """Highest request-id written or seen decided."""
    deadline: float = 0.0
    granted_pages: int = 0
    """Extra pages in force according to the last decision seen."""
    rejection: tuple[str, str] | None = None

    def ask(
        self,
        pages: int,
        reason: str = "",
        *,
        now: float,
        decided: int,
        written: int = 0,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> tuple[DeviceModelSide, Request]:
        """Build the next request above ``decided`` (the recorded decision's request-id,
        0 for none) and ``written`` (a request-id already in the request node): a
        restarted device model must not reuse an id."""
        floor = max(self.request_id, written, decided)
        if floor >= REQUEST_ID_MAX:
            raise ProtocolError(f"no request-id left above {floor}: remove the request and "
                                "decision nodes to start over",
                                path=paths.request_node(self.dm_domid, self.domid))
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
        """Take in the decision record; decisions for older ids change nothing."""
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
                path=paths.decision_node(self.domid),
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
