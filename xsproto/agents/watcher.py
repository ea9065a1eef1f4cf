"""The toolstack watcher: a dom0 daemon that answers device models' requests.

It reads what it needs from xenstore and Xen, lets ``xsproto.negotiation`` decide, and
carries the decision out in the only safe order: record ``applying`` (a transaction that
fails if someone else moved the record on), set max_pages in Xen (an absolute value
computed from the record), record ``granted``. A crash anywhere leaves a state the next
start finishes; a second watcher racing converges on the newest record.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Literal, NamedTuple

from xsproto import logs, negotiation, paths, records
from xsproto.adapters import xenstore_records
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.errors import HypervisorError, ProtocolError, XenstoreError
from xsproto.exitcodes import Exit
from xsproto.negotiation import Apply, Decision, DomainInfo, HostInfo, Ignore, Reject
from xsproto.policy import Policy, RateLimiter
from xsproto.records import DecisionRecord

log = logging.getLogger("xsproto.watcher")

RELEASE_TOKEN = "xsproto-release"
INTRODUCE_TOKEN = "xsproto-introduce"
AREA_TOKEN = "xsproto-area"
#: Rounds of decide/apply for one event before giving up (each round makes progress
#: unless another watcher keeps moving the record on).
MAX_ROUNDS = 8
#: Fault injection for the crash-safety tests: SIGKILL ourselves at this checkpoint.
CRASH_AT_ENV = "XSPROTO_CRASH_AT"


def _checkpoint(name: str) -> None:
    if os.environ.get(CRASH_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Work(NamedTuple):
    """One thing a batch of watch events asks the watcher to do."""

    kind: Literal["release", "introduce", "request"]
    dm: int = 0
    domid: int = 0

    @property
    def path(self) -> str:
        """Where it happens, for the logs."""
        return paths.request_dir(self.dm, self.domid) if self.kind == "request" \
            else f"@{self.kind}Domain"


def works_in(batch: Iterable[tuple[str, str]]) -> list[Work]:
    """What a batch of (path, token) events asks for, each thing once, in order; events
    for the device models' other nodes ask for nothing."""
    works: dict[Work, None] = {}
    for path, token in batch:
        if token == RELEASE_TOKEN:
            works[Work("release")] = None
        elif token == INTRODUCE_TOKEN:
            works[Work("introduce")] = None
        elif token == AREA_TOKEN:
            try:
                where = records.parse_path(path)
            except ProtocolError:
                continue
            if isinstance(where, paths.RequestPath):
                works[Work("request", where.dm_domid, where.domid)] = None
    return list(works)


class Watcher:
    """One watcher over one xenstore connection and the hypervisor."""

    def __init__(self, xs: Xenstore, hv: Hypervisor, policy: Policy,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.xs, self.hv, self.policy, self.clock = xs, hv, policy, clock
        self.limiter = RateLimiter()
        self.granted: dict[int, int] = {}
        """Granted pages per domain, as recorded; the host budget sums it."""
        self.areas: set[int] = set()

    # Start-up.

    def start(self) -> None:
        """Watch, then reconcile what happened while no watcher ran."""
        self.xs.watch(paths.RELEASE_DOMAIN, RELEASE_TOKEN)
        self.xs.watch(paths.INTRODUCE_DOMAIN, INTRODUCE_TOKEN)
        self._watch_areas()
        logs.event(log, "watching", areas=",".join(map(str, sorted(self.areas))),
                   cap_pages=self.policy.domain_cap_pages,
                   host_budget_pages=self.policy.host_budget_pages)
        self.reconcile()

    def _watch_areas(self) -> None:
        """Watch dom0's device-model area and each stubdom device model's."""
        domids = xenstore_records.domids_under(self.xs, paths.DOMAINS_ROOT)
        wanted = {0} | {xenstore_records.dm_domid_of(self.xs, d) for d in domids}
        for dm in sorted(wanted - self.areas):
            self.xs.watch(paths.device_model_area(dm), AREA_TOKEN)
            self.areas.add(dm)

    def reconcile(self) -> None:
        """Finish interrupted decisions, answer unanswered requests, drop dead domains."""
        self.granted.clear()
        for domid in xenstore_records.domids_under(self.xs, paths.DECISION_ROOT):
            record = self._record_or_none(domid)
            if record is not None:
                self.granted[domid] = record.granted_pages
        for dm in sorted(self.areas):
            for domid in xenstore_records.domids_under(self.xs, paths.device_model_area(dm)):
                if self.xs.children(paths.request_dir(dm, domid)):
                    self._guarded(paths.request_dir(dm, domid), self.handle, dm, domid)
        for domid in sorted(self.granted):
            self._guarded(paths.decision_dir(domid), self.handle_pending, domid)
        self.collect_dead()

    def _guarded(self, path: str, fn: Callable[..., None], *args: object) -> None:
        """One domain's trouble is logged and never stops the others being served."""
        try:
            fn(*args)
        except (XenstoreError, ProtocolError, HypervisorError) as e:
            logs.event(log, "failed", level=logging.ERROR, path=path, error=e)

    def _record_or_none(self, domid: int) -> DecisionRecord | None:
        try:
            return xenstore_records.read_decision(self.xs, domid)
        except ProtocolError as e:
            logs.event(log, "bad-record", level=logging.WARNING, domid=domid,
                       path=paths.decision_dir(domid), error=e)
            return None

    # Events.

    def serve(self, work: Work) -> None:
        """Do one thing a batch of events asked for."""
        if work.kind == "release":
            self.collect_dead()
        elif work.kind == "introduce":
            self._watch_areas()
        else:
            self.handle(work.dm, work.domid)

    def run_forever(self) -> None:
        """Serve events; the events of one batch (a request's four keys, say) are served
        once per thing they ask for, in order of arrival."""
        for batch in self.xs.event_batches():
            for work in works_in(batch):
                self._guarded(work.path, self.serve, work)

    # Deciding.

    def domain(self, domid: int) -> DomainInfo:
        info = self.hv.domain(domid)
        if not info.exists:
            return info
        return replace(info, name=xenstore_records.domain_name(self.xs, domid))

    def handle(self, dm: int, domid: int) -> None:
        """Answer whatever stands in ``dm``'s request directory for ``domid``."""
        expected = xenstore_records.dm_domid_of(self.xs, domid)
        where = paths.request_dir(dm, domid)
        if dm != expected:
            # Only D's own device model speaks for D; a record here would let any domain
            # overwrite D's decision, so this is logged and otherwise ignored.
            logs.event(log, "ignored", level=logging.WARNING, domid=domid, dm=dm, path=where,
                       why=f"domain {domid}'s device model is domain {expected}")
            return
        for _ in range(MAX_ROUNDS):
            nodes, owner = xenstore_records.read_request(self.xs, dm, domid)
            current = self._record_or_none(domid)
            decision = negotiation.decide(
                nodes, owner=owner, dm_domid=dm, current=current,
                domain=self.domain(domid), host=self._host(domid), policy=self.policy,
                limiter=self.limiter, now=self.clock())
            if self.carry_out(domid, dm, current, decision, where, nodes):
                return
        logs.event(log, "gave-up", level=logging.ERROR, domid=domid, path=where,
                   why=f"record kept changing over {MAX_ROUNDS} rounds")

    def handle_pending(self, domid: int) -> None:
        """At start-up: finish a decision a crash left ``applying``."""
        current = self._record_or_none(domid)
        decision = negotiation.recover(current, self.domain(domid))
        if not isinstance(decision, Ignore):
            self.carry_out(domid, xenstore_records.dm_domid_of(self.xs, domid), current, decision,
                           paths.decision_dir(domid), {})

    def _host(self, domid: int) -> HostInfo:
        elsewhere = sum(g for d, g in self.granted.items() if d != domid)
        return HostInfo(free_pages=self.hv.free_pages(), granted_elsewhere=elsewhere)

    # Carrying out.

    def carry_out(self, domid: int, dm: int, current: DecisionRecord | None,
                  decision: Decision, where: str, nodes: dict[str, bytes]) -> bool:
        """Do what ``decision`` says; False when the record moved on and it must be redone."""
        fields: dict[str, Any] = {"domid": domid, "dm": dm, "path": where,
                                  "pages": nodes.get(records.PAGES, b"").decode("ascii", "replace")
                                  or None}
        if isinstance(decision, Ignore):
            logs.event(log, "ignored", level=logging.DEBUG, **fields, why=decision.why)
            return True
        if isinstance(decision, Reject):
            if decision.record is None:
                self.forget(domid)
            elif not self._swap(domid, dm, current, decision.record):
                return False
            logs.event(log, "decision", **fields, result="rejected", code=decision.code,
                       detail=decision.detail)
            return True
        return self._apply(domid, dm, current, decision, fields)

    def _apply(self, domid: int, dm: int, current: DecisionRecord | None, decision: Apply,
               fields: dict[str, Any]) -> bool:
        record = decision.record
        if record != current and not self._swap(domid, dm, current, record):
            return False
        _checkpoint("after-applying")
        self.hv.set_max_pages(domid, decision.target)
        _checkpoint("after-hypercall")
        done = negotiation.finish(record)
        if not self._swap(domid, dm, record, done):
            return False  # another watcher moved on: redo from its record, which sets Xen
        self.granted[domid] = done.granted_pages
        logs.event(log, "decision", **fields, result="granted", request_id=done.request_id,
                   base_pages=done.base_pages, granted_pages=done.granted_pages,
                   max_pages=done.max_pages)
        return True

    def _swap(self, domid: int, dm: int, expected: DecisionRecord | None,
              record: DecisionRecord) -> bool:
        """Write ``record`` if the recorded one is still ``expected`` (one transaction)."""
        where = paths.decision_dir(domid)

        def txn(xs: Xenstore) -> bool:
            nodes, now = xenstore_records.decision_in(xs, domid)
            if now != expected:
                return False
            if now is None:
                xs.write_dir(where, record.to_nodes(), perms=paths.decision_permissions(dm))
            else:  # only what changed: fewer round trips, and fewer events for the agent
                xs.write_dir(where, {k: v for k, v in record.to_nodes().items()
                                     if nodes.get(k) != v})
            return True

        return self.xs.transact(txn)

    # Domain death.

    def collect_dead(self) -> None:
        """Remove the nodes of domains Xen no longer has."""
        alive = set(self.hv.domids())
        for domid in set(self.granted) - alive:
            self.forget(domid)
        for dm in sorted(self.areas):
            for domid in xenstore_records.domids_under(self.xs, paths.device_model_area(dm)):
                if domid not in alive:
                    self._remove_request(dm, domid)
        for domid in xenstore_records.domids_under(self.xs, paths.DECISION_ROOT):
            if domid not in alive:
                self.xs.remove(paths.decision_dir(domid))

    def _remove_request(self, dm: int, domid: int) -> None:
        """Remove the request; and its parent too when the device model left nothing else
        there (no QEMU, as for PVH: the agent created it)."""
        self.xs.remove(paths.request_dir(dm, domid))
        parent = paths.device_model_guest_dir(dm, domid)
        if not self.xs.children(parent) and self.xs.read(parent) is not None:
            self.xs.remove(parent)

    def forget(self, domid: int) -> None:
        for dm in sorted(self.areas | {xenstore_records.dm_domid_of(self.xs, domid)}):
            self._remove_request(dm, domid)
        self.xs.remove(paths.decision_dir(domid))
        self.granted.pop(domid, None)
        self.limiter.forget(domid)
        logs.event(log, "forgotten", domid=domid, path=paths.decision_dir(domid))


def run(policy_file: str | None, *, xenstore: str | None) -> int:
    """``xsproto watcher``: serve until killed."""
    policy = Policy.load(policy_file) if policy_file else Policy()
    with Xenstore(xenstore) as xs:
        watcher = Watcher(xs, Hypervisor(), policy)
        logs.event(log, "starting", policy=policy_file or "defaults")
        watcher.start()
        watcher.run_forever()
    return Exit.OK
