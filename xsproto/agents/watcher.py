"""The toolstack watcher: a dom0 daemon that answers device models' requests.

Each round reads the request, the recorded decision and the grants recorded for every
other domain, lets ``xsproto.negotiation`` decide, and records the outcome, all in one
xenstore transaction: a concurrent writer (a second watcher, a restore) makes it
conflict and run again, so nothing is counted twice. An increase then goes in the only
safe order: record ``applying``, set max_pages in Xen (an absolute value computed from
the record), record ``granted``. A crash anywhere leaves a state the next start
finishes; a watcher that loses a race puts Xen back to the record that won.

The I/O is the ``xsproto.io`` Protocols, so the test suite's simulator drives this very
code; the state that outlives a round (rate buckets, watched areas) is ``WatcherState``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

from xsproto import logs, negotiation, paths, records
from xsproto.adapters import systemd, xenstore_records
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.errors import ProtocolError, TransactionConflict, XenstoreError
from xsproto.exitcodes import Exit
from xsproto.io import HypervisorIO, XenstoreIO
from xsproto.negotiation import Apply, Decision, DomainInfo, HostInfo, Ignore, Reject
from xsproto.policy import DEFAULT_PATH, OnDrift, Policy, PolicyError, RateLimiter
from xsproto.records import DecisionRecord, DecisionState

log = logging.getLogger("xsproto.watcher")

RELEASE_TOKEN = "xsproto-release"
INTRODUCE_TOKEN = "xsproto-introduce"
AREA_TOKEN = "xsproto-area"
THAW_TOKEN = "xsproto-thaw:"
"""Prefix; the domain id follows: a watch on a frozen domain's freeze node."""
#: Rounds of decide/apply for one event before giving up (each round makes progress
#: unless another watcher keeps moving the record on).
MAX_ROUNDS = 8
#: Transaction attempts of one round: a device model rewriting its own nodes without
#: pause conflicts with every read of them, and must not hold up the others' answers.
ROUND_ATTEMPTS = 4
#: Seconds to wait for events before serving deferred requests again.
DEFERRED_SECONDS = 0.05
#: Seconds without events after which the device-model areas are rescanned (a stubdom's
#: domid may be written after it was introduced) and stale freezes are lifted.
RESCAN_SECONDS = 5.0
#: Fault injection for the crash-safety tests: SIGKILL ourselves at this checkpoint.
CRASH_AT_ENV = "XSPROTO_CRASH_AT"


def _checkpoint(name: str) -> None:
    if os.environ.get(CRASH_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Work(NamedTuple):
    """One thing a batch of watch events asks the watcher to do."""

    kind: Literal["release", "introduce", "request", "thaw"]
    dm: int = 0
    domid: int = 0

    @property
    def path(self) -> str:
        """Where it happens, for the logs."""
        if self.kind == "request":
            return paths.request_node(self.dm, self.domid)
        if self.kind == "thaw":
            return paths.freeze_path(self.domid)
        return f"@{self.kind}Domain"


def works_in(batch: Iterable[tuple[str, str]]) -> list[Work]:
    """What a batch of (path, token) events asks for, each thing once, in order: an event
    for a request node asks for its (M, D); events for the device models' other nodes
    (nodes below a request node included) ask for nothing."""
    works: dict[Work, None] = {}
    for path, token in batch:
        if token == RELEASE_TOKEN:
            works[Work("release")] = None
        elif token == INTRODUCE_TOKEN:
            works[Work("introduce")] = None
        elif token.startswith(THAW_TOKEN) and token[len(THAW_TOKEN):].isdigit():
            works[Work("thaw", domid=int(token[len(THAW_TOKEN):]))] = None
        elif token == AREA_TOKEN:
            try:
                where = paths.parse(path)
            except ProtocolError:
                continue
            if isinstance(where, paths.RequestPath):
                works[Work("request", where.dm_domid, where.domid)] = None
    return list(works)


def _raw(value: bytes | None) -> str | None:
    """A value a peer wrote, for a log line (logfmt quotes and escapes what needs it)."""
    return None if value is None else value.decode("latin-1")


def holder_alive(holder: str) -> bool:
    """Whether the process named by a freeze node (``pid N ...``) still runs here."""
    match holder.split():
        case ["pid", pid, *_] if pid.isdigit():
            return os.path.exists(f"/proc/{pid}")
    return False


@dataclass
class WatcherState:
    """What a watcher keeps between rounds; everything else is read afresh."""

    limiter: RateLimiter = field(default_factory=RateLimiter)
    areas: set[int] = field(default_factory=set)
    """Device models' domains whose area is watched."""
    frozen: set[int] = field(default_factory=set)
    """Domains whose freeze node is watched, to answer them once it goes."""
    reload_asked: bool = False
    """Set by SIGHUP: reload the policy between batches."""
    deferred: dict[Work, None] = field(default_factory=dict)
    """Requests whose round kept conflicting (their device model keeps writing): served
    again after everyone else's, so one busy device model delays nobody but itself."""


@dataclass(frozen=True)
class Round:
    """What one round read and decided."""

    decision: Decision
    current: DecisionRecord | None
    request: bytes | None
    """The request node's value."""


class Watcher:
    """One watcher over one xenstore connection and the hypervisor."""

    def __init__(self, xs: XenstoreIO, hv: HypervisorIO, policy: Policy,
                 clock: Callable[[], float] = time.monotonic,
                 state: WatcherState | None = None) -> None:
        self.xs, self.hv, self.policy, self.clock = xs, hv, policy, clock
        self.state = state or WatcherState()
        self.throttle = logs.Throttle(clock=clock)

    # Start-up.

    def start(self) -> None:
        """Watch, then reconcile what happened while no watcher ran."""
        self.xs.watch(paths.RELEASE_DOMAIN, RELEASE_TOKEN)
        self.xs.watch(paths.INTRODUCE_DOMAIN, INTRODUCE_TOKEN)
        self.watch_areas()
        logs.event(log, "watching", areas=",".join(map(str, sorted(self.state.areas))),
                   cap_pages=self.policy.domain_cap_pages,
                   host_budget_pages=self.policy.host_budget_pages)
        self.reconcile()
        self.heartbeat()

    def watch_areas(self) -> None:
        """Watch dom0's device-model area and each stubdom device model's."""
        domids = xenstore_records.domids_under(self.xs, paths.DOMAINS_ROOT)
        models = {d: xenstore_records.dm_domid_of(self.xs, d) for d in domids}
        for dm in sorted(({0} | set(models.values())) - self.state.areas):
            self.xs.watch(paths.device_model_area(dm), AREA_TOKEN)
            self.state.areas.add(dm)
        stubdom_guests = {d: dm for d, dm in models.items() if dm != 0}
        if stubdom_guests:
            alive = set(self.hv.domids())  # xenstore may hold a dead domain's nodes
            for domid, dm in stubdom_guests.items():
                if domid in alive:
                    self._guarded(paths.decision_node(domid), self.open_decision_node, domid,
                                  dm)

    def open_decision_node(self, domid: int, dm: int) -> None:
        """Give a stubdom device model an empty decision node it may read: C
        xenstored answers EACCES, not ENOENT, under /libxl/D (which only dom0 may read),
        so before any decision the stubdom could not even learn there is none."""
        where = paths.decision_node(domid)
        if self.xs.perms(where) is None:
            self.xs.write(where, b"")
            self.xs.set_perms(where, paths.decision_permissions(dm))

    def reconcile(self) -> None:
        """Finish interrupted decisions, answer unanswered requests, drop dead domains."""
        for domid in xenstore_records.domids_under(self.xs, paths.DECISION_ROOT):
            self._guarded(paths.decision_node(domid), self.handle_pending, domid)
        for dm in sorted(self.state.areas):
            self._guarded(paths.device_model_area(dm), self._reconcile_area, dm)
        self.collect_dead()
        # A watcher that died between a hypercall and its re-read may have left a limit no
        # record names: the records are the truth at start-up.
        self.settle_all_drift()

    def _reconcile_area(self, dm: int) -> None:
        for domid in xenstore_records.domids_under(self.xs, paths.device_model_area(dm)):
            self._guarded(paths.request_node(dm, domid), self._reconcile_request, dm, domid)

    def _reconcile_request(self, dm: int, domid: int) -> None:
        if xenstore_records.read_request(self.xs, dm, domid):
            self.handle(dm, domid)

    def _guarded(self, path: str, fn: Callable[..., object], *args: object) -> None:
        """One domain's trouble is logged and never stops the others being served."""
        try:
            fn(*args)
        except Exception as e:
            self.throttle.event(log, "failed", key=("failed", path), level=logging.ERROR,
                                path=path, error=f"{type(e).__name__}: {e}")

    # Events.

    def serve(self, work: Work) -> None:
        """Do one thing a batch of events asked for."""
        if work.kind == "release":
            self.collect_dead()
        elif work.kind == "introduce":
            self.watch_areas()
        elif work.kind == "thaw":
            self.handle(xenstore_records.dm_domid_of(self.xs, work.domid), work.domid)
        else:
            self.handle(work.dm, work.domid)

    def run_forever(self, *, reload: Callable[[], None] | None = None) -> None:
        """Serve events; the events of one batch (a commit's write and permissions, say) are
        served once per thing they ask for, in order of arrival. Every RESCAN_SECONDS, busy or
        not, rescan. ``reload`` runs between batches when a reload was asked for."""
        last_rescan = self.clock()
        while True:
            batch = self.xs.next_batch(timeout=DEFERRED_SECONDS if self.state.deferred
                                       else RESCAN_SECONDS)
            deferred = list(self.state.deferred)  # taken only once they are served
            self.state.deferred.clear()
            if reload is not None and self.state.reload_asked:
                self.state.reload_asked = False
                reload()
            for work in [*works_in(batch), *deferred]:
                self._guarded(work.path, self.serve, work)
            if self.clock() - last_rescan >= RESCAN_SECONDS:
                last_rescan = self.clock()
                self._guarded(paths.DOMAINS_ROOT, self.rescan)

    def rescan(self) -> None:
        """Watch new device models' areas; retry frozen domains (a freeze whose holder
        died is lifted there); bring back drifted limits; say we are alive."""
        self.watch_areas()
        for domid in sorted(self.state.frozen):
            self.handle(xenstore_records.dm_domid_of(self.xs, domid), domid)
        deferred = list(self.state.deferred)
        self.state.deferred.clear()
        for work in deferred:
            self._guarded(work.path, self.serve, work)
        self.settle_all_drift()
        self.heartbeat()

    def settle_all_drift(self) -> None:
        for domid in xenstore_records.domids_under(self.xs, paths.DECISION_ROOT):
            self._guarded(paths.decision_node(domid), self.settle_drift, domid)

    def heartbeat(self) -> None:
        """``<pid> <unix seconds>`` at paths.HEARTBEAT: ``xsproto status`` tells from it
        whether a watcher is serving."""
        self.xs.write(paths.HEARTBEAT, f"{os.getpid()} {int(time.time())}".encode())

    # Drift: Xen's limit changed behind the record's back (an admin's xl mem-max).

    def settle_drift(self, domid: int, action: OnDrift | None = None) -> str | None:
        """Reapply or adopt (``action``, default the policy's ``on_drift``) if Xen's limit
        is not the record's; what was done, None when nothing drifted. Logged once per
        drift: the limit agrees with the record afterwards."""
        domain = self.hv.domain(domid)
        current = xenstore_records.read_decision(self.xs, domid)
        xen = negotiation.drift(current, domain)
        if current is None or xen is None:
            return None
        action = action or self.policy.on_drift
        logs.event(log, "drift", level=logging.WARNING, domid=domid,
                   path=paths.decision_node(domid), xen_max_pages=xen,
                   recorded_max_pages=current.grant.max_pages, action=action.value)
        if action is OnDrift.ADOPT:
            record = negotiation.adopted(current, xen)
            if not self._swap(domid, xenstore_records.dm_domid_of(self.xs, domid), current,
                              record):
                return None  # the record moved on meanwhile: the next rescan looks again
            self._audit(domid, "adopted", current, record, rule="drift-adopt")
        else:
            self.follow_record(domid)
        return action.value

    def drifted(self, domid: int) -> bool:
        """Whether Xen's limit for ``domid`` is not the one its record says is in force."""
        return negotiation.drift(xenstore_records.read_decision(self.xs, domid),
                                 self.hv.domain(domid)) is not None

    # Deciding.

    def domain(self, domid: int) -> DomainInfo:
        info = self.hv.domain(domid)
        if not info.exists:
            return info
        return replace(info, name=xenstore_records.domain_name(self.xs, domid))

    def handle(self, dm: int, domid: int) -> None:
        """Answer whatever stands in ``dm``'s request node for ``domid``."""
        expected = xenstore_records.dm_domid_of(self.xs, domid)
        where = paths.request_node(dm, domid)
        if dm != expected:
            # Only D's own device model speaks for D; a record here would let any domain
            # overwrite D's decision, so this is logged and otherwise ignored.
            self.throttle.event(log, "ignored", key=("wrong-area", dm, domid),
                                level=logging.WARNING, domid=domid, dm=dm, path=where,
                                why=f"domain {domid}'s device model is domain {expected}")
            return
        if self._frozen(domid):
            return
        for _ in range(MAX_ROUNDS):
            try:
                done = self.decide_and_record(dm, domid)
            except TransactionConflict:
                self.state.deferred[Work("request", dm, domid)] = None
                self.throttle.event(log, "deferred", key=("deferred", dm, domid),
                                    level=logging.WARNING, domid=domid, dm=dm, path=where,
                                    why=f"still conflicting after {ROUND_ATTEMPTS} attempts")
                return
            if self.carry_out(domid, dm, done, where):
                return
        logs.event(log, "gave-up", level=logging.ERROR, domid=domid, path=where,
                   why=f"record kept changing over {MAX_ROUNDS} rounds")

    def handle_pending(self, domid: int) -> None:
        """At start-up: finish a decision a crash left ``applying`` (``decide`` recovers
        it first, whatever the request node holds)."""
        current = xenstore_records.read_decision(self.xs, domid)
        if current is not None and current.state is DecisionState.APPLYING:
            self.handle(xenstore_records.dm_domid_of(self.xs, domid), domid)

    def _frozen(self, domid: int) -> bool:
        """Whether an image hook is saving ``domid`` (then nothing is decided for it: a
        raised grant would miss the image). A freeze whose holder is gone is lifted."""
        holder = xenstore_records.frozen_by(self.xs, domid)
        if holder is not None and not holder_alive(holder):
            xenstore_records.thaw(self.xs, domid)
            logs.event(log, "thawed", level=logging.WARNING, domid=domid,
                       path=paths.freeze_path(domid), holder=holder, why="holder is gone")
            holder = None
        watched = domid in self.state.frozen
        if holder is not None and not watched:
            self.xs.watch(paths.freeze_path(domid), f"{THAW_TOKEN}{domid}")
            self.state.frozen.add(domid)
            logs.event(log, "frozen", domid=domid, path=paths.freeze_path(domid),
                       holder=holder)
        elif holder is None and watched:
            self.xs.unwatch(paths.freeze_path(domid), f"{THAW_TOKEN}{domid}")
            self.state.frozen.discard(domid)
        return holder is not None

    def decide_and_record(self, dm: int, domid: int) -> Round:
        """One transaction: read the request, the record and the other grants, decide,
        and write the record the decision calls for (applying, or rejected)."""
        domain = self.domain(domid)
        free = self.hv.free_pages()
        limits = self.policy.limits_for(domid, domain.name)

        def step(t: XenstoreIO) -> Round:
            raw, owner = xenstore_records.request_in(t, dm, domid)
            current = xenstore_records.read_decision(t, domid)
            host = HostInfo(free_pages=free, granted_elsewhere=xenstore_records.granted_elsewhere(
                t, domid, unreadable=limits.cap_pages))
            decision = negotiation.decide(
                raw, owner=owner, dm_domid=dm, current=current, domain=domain, host=host,
                policy=self.policy, limiter=self.state.limiter, now=self.clock())
            record = (decision.record if isinstance(decision, Apply | Reject) else None)
            if record is not None and record != current:
                xenstore_records.write_decision(t, domid, dm, record)
            return Round(decision, current, raw)

        return self.xs.transact(step, attempts=ROUND_ATTEMPTS)

    # Carrying out.

    def carry_out(self, domid: int, dm: int, done: Round, where: str) -> bool:
        """Finish what a round decided; False when the record moved on and it must be
        redone."""
        decision = done.decision
        try:
            lines = records.split(done.request, where=where) if done.request else {}
        except ProtocolError:
            lines = {}  # the rejection says what is wrong with it
        asked: dict[str, Any] = {"dm": dm, "path": where,
                 "pages": _raw(lines.get(records.PAGES)),
                 "reason": _raw(lines.get(records.REASON))}
        if isinstance(decision, Ignore):
            logs.event(log, "ignored", level=logging.DEBUG, domid=domid, **asked,
                       why=decision.why)
            return True
        if isinstance(decision, Reject):
            if decision.record is None:
                self.forget(domid)
            self._audit(domid, "rejected", done.current, decision.record, rule=decision.rule,
                        code=decision.code, detail=decision.detail, **asked)
            return True
        return self._apply(domid, dm, decision, done.current, asked)

    def _audit(self, domid: int, result: str, old: DecisionRecord | None,
               new: DecisionRecord | None, *, rule: str, **fields: object) -> None:
        """The audit line of a decision: who asked and why, the request, the grant and the
        limit before and after, and the rule that decided. Rejections of one domain are
        throttled (a hostile device model could ask without end); grants never are. Before
        a domain's first record, its grant was 0 and its limit the new record's base."""
        old_granted: int | None
        old_max: int | None
        if old is None and new is not None:
            old_granted, old_max = 0, new.base_pages
        else:
            old_granted = None if old is None else old.granted_pages
            old_max = None if old is None else old.grant.max_pages
        line: dict[str, Any] = {
            "domid": domid, "result": result, "rule": rule,
            "request_id": None if new is None else new.request_id,
            "old_granted_pages": old_granted,
            "new_granted_pages": None if new is None else new.granted_pages,
            "old_max_pages": old_max,
            "new_max_pages": None if new is None else new.grant.max_pages, **fields}
        if result == "rejected":
            self.throttle.event(log, "audit", key=("rejected", domid), **line)
        else:
            logs.event(log, "audit", **line)

    def _apply(self, domid: int, dm: int, decision: Apply, old: DecisionRecord | None,
               asked: dict[str, Any]) -> bool:
        record = decision.record
        _checkpoint("after-applying")
        self.hv.set_max_pages(domid, decision.target)
        _checkpoint("after-hypercall")
        done = negotiation.finish(record)
        if not self._finish(domid, record, done):
            self.follow_record(domid)  # another watcher moved on: Xen follows its record
            return False
        if decision.charge is not None:
            self.state.limiter.charge(domid, decision.charge)
        self._audit(domid, "granted", old, done, rule=decision.rule, **asked)
        # A recovery finished another watcher's decision: a newer request may stand behind
        # it (its events came in the same batch), so go round again.
        return decision.rule != "recover"

    def _finish(self, domid: int, applying: DecisionRecord, done: DecisionRecord) -> bool:
        """Write ``done`` if the record is still ``applying`` (one transaction). A record
        that moved on (another watcher's newer id, a restore's id 0, a finished state)
        differs from it. The node keeps the permissions the round gave it."""
        where = paths.decision_node(domid)

        def txn(t: XenstoreIO) -> bool:
            if xenstore_records.read_decision(t, domid) != applying:
                return False
            t.write(where, done.encode())
            return True

        return self.xs.transact(txn)

    def _swap(self, domid: int, dm: int, expected: DecisionRecord,
              record: DecisionRecord) -> bool:
        """Write ``record`` if the recorded one is still ``expected`` (one transaction)."""

        def txn(t: XenstoreIO) -> bool:
            if xenstore_records.read_decision(t, domid) != expected:
                return False
            xenstore_records.write_decision(t, domid, dm, record)
            return True

        return self.xs.transact(txn)

    def follow_record(self, domid: int) -> None:
        """Set Xen's limit to what the record in force says, until the record holds still
        (a stalled watcher's hypercall must not outlive the record that replaced it). An
        ``applying`` record is left to whoever is applying it, or to the next round."""
        for _ in range(MAX_ROUNDS):
            current = xenstore_records.read_decision(self.xs, domid)
            if current is None or current.state is DecisionState.APPLYING:
                return
            self.hv.set_max_pages(domid, current.grant.max_pages)
            if xenstore_records.read_decision(self.xs, domid) == current:
                logs.event(log, "followed", domid=domid, path=paths.decision_node(domid),
                           max_pages=current.grant.max_pages)
                return

    # Domain death.

    def collect_dead(self) -> None:
        """Remove the nodes of domains Xen no longer has (a dying domain is gone; a shut
        down one, suspended for a save, is not)."""
        alive = set(self.hv.domids())
        for domid in xenstore_records.domids_under(self.xs, paths.DECISION_ROOT):
            if domid not in alive:
                self.forget(domid)
        for dm in sorted(self.state.areas):
            self._guarded(paths.device_model_area(dm), self._collect_area, dm, alive)

    def _collect_area(self, dm: int, alive: set[int]) -> None:
        for domid in xenstore_records.domids_under(self.xs, paths.device_model_area(dm)):
            if domid not in alive:
                self._remove_request(dm, domid)

    def _remove_request(self, dm: int, domid: int) -> None:
        """Remove the request; and its parent too when the device model left nothing else
        there (no QEMU, as for PVH: the agent created it). A parent too big to list (a
        device model can fill it: E2BIG) is not empty, and is left to libxl."""
        self.xs.remove(paths.request_node(dm, domid))
        parent = paths.device_model_guest_dir(dm, domid)
        try:
            left = self.xs.children(parent)
        except XenstoreError:
            return
        if not left and self.xs.read(parent) is not None:
            self.xs.remove(parent)

    def forget(self, domid: int) -> None:
        dms = self.state.areas | {xenstore_records.dm_domid_of(self.xs, domid)}
        for dm in sorted(dms):
            self._remove_request(dm, domid)
        self.xs.remove(paths.decision_node(domid))
        self.xs.remove(paths.freeze_path(domid))
        self.state.limiter.forget(domid)
        if domid in self.state.frozen:
            self.xs.unwatch(paths.freeze_path(domid), f"{THAW_TOKEN}{domid}")
            self.state.frozen.discard(domid)
        logs.event(log, "forgotten", domid=domid, path=paths.decision_node(domid))


def load_policy(policy_file: str | None) -> Policy:
    """The policy named, or the host's (absent: the built-in defaults)."""
    return Policy.load_host(policy_file)


def check_config(policy_file: str | None) -> int:
    """``xsproto watcher --check-config``: load the policy as the watcher would, say what
    it is, change nothing."""
    try:
        policy = load_policy(policy_file)
    except PolicyError as e:
        print(f"xsproto: {e}", file=sys.stderr)
        return Exit.ERROR
    where = policy_file or (DEFAULT_PATH if Path(DEFAULT_PATH).exists()
                            else f"built-in defaults ({DEFAULT_PATH} is absent)")
    print(f"{where}: valid: domain cap {policy.domain_cap_pages} pages, host budget "
          f"{policy.host_budget_pages} pages, reserve {policy.free_reserve_pages} pages, "
          f"rate {policy.rate.burst} per {policy.rate.refill_seconds:g} s, "
          f"on drift {policy.on_drift.value}")
    return Exit.OK


def run(policy_file: str | None, *, xenstore: str | None) -> int:
    """``xsproto watcher``: serve until killed. SIGHUP reloads the policy (a bad file
    keeps the old one, and says why); systemd hears READY once the start-up reconcile is
    done."""
    policy = load_policy(policy_file)
    with Xenstore(xenstore) as xs:
        watcher = Watcher(xs, Hypervisor(), policy)

        def ask_reload(signum: int, frame: object) -> None:
            watcher.state.reload_asked = True

        def reload() -> None:
            systemd.notify("RELOADING=1")
            try:
                watcher.policy = load_policy(policy_file)
            except PolicyError as e:
                logs.event(log, "reload-refused", level=logging.ERROR,
                           path=policy_file or DEFAULT_PATH, error=e,
                           why="keeping the policy in force")
            else:
                logs.event(log, "reloaded", path=policy_file or DEFAULT_PATH,
                           cap_pages=watcher.policy.domain_cap_pages,
                           host_budget_pages=watcher.policy.host_budget_pages)
            systemd.notify("READY=1")

        signal.signal(signal.SIGHUP, ask_reload)
        logs.event(log, "starting", policy=policy_file or DEFAULT_PATH, pid=os.getpid())
        watcher.start()
        systemd.notify(f"READY=1\nSTATUS=serving; areas {sorted(watcher.state.areas)}")
        watcher.run_forever(reload=reload)
    return Exit.OK
