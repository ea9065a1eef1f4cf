"""The watcher's decision function and the device model's state machine."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xsproto import paths, records
from xsproto.carrying import restored
from xsproto.errors import NegotiationTimeout, ProtocolError, RequestRejected
from xsproto.grant import Grant
from xsproto.negotiation import (
    Apply,
    Decision,
    DeviceModelSide,
    DmState,
    DomainInfo,
    HostInfo,
    Ignore,
    Reject,
    RejectCode,
    adopted,
    decide,
    drift,
    finish,
    recover,
)
from xsproto.policy import DomainOverride, Policy, RateLimit, RateLimiter
from xsproto.records import DecisionRecord, DecisionState, Origin, Request
from xsproto.values import DECISION_REASON_MAX_BYTES

D, M, BASE = 5, 0, 33024
GUEST = DomainInfo(domid=D, exists=True, max_pages=BASE, tot_pages=32768, name="web1")
HOST = HostInfo(free_pages=1_000_000, granted_elsewhere=0)
WHERE = paths.request_node(M, D)


def nodes(pages: int = 2048, rid: int = 1, **raw: bytes) -> dict[str, bytes]:
    """A request's keys and values (a hostile one's too), ``lines`` makes its node's value."""
    base = records.split(Request(pages=pages, request_id=rid, reason="option ROMs").encode(),
                         where=WHERE)
    return base | {k.replace("_", "-"): v for k, v in raw.items()}


def lines(keys: dict[str, bytes]) -> bytes:
    return b"".join(k.encode() + b"=" + v + b"\n" for k, v in keys.items())


def run(
    request: dict[str, bytes] | bytes | None,
    current: DecisionRecord | None = None,
    *,
    owner: int = M,
    dm_domid: int = M,
    domain: DomainInfo = GUEST,
    host: HostInfo = HOST,
    policy: Policy | None = None,
    limiter: RateLimiter | None = None,
    now: float = 0.0,
) -> Decision:
    return decide(
        lines(request) if isinstance(request, dict) else request,
        owner=owner,
        dm_domid=dm_domid,
        current=current,
        domain=domain,
        host=host,
        policy=policy or Policy(),
        limiter=limiter or RateLimiter(),
        now=now,
    )


def record(state: DecisionState, pages: int, rid: int, base: int = BASE) -> DecisionRecord:
    return DecisionRecord(state=state, request_id=rid, base_pages=base, granted_pages=pages,
                          max_pages=base + pages)


def granted(pages: int, rid: int = 1, base: int = BASE) -> DecisionRecord:
    return record(DecisionState.GRANTED, pages, rid, base)


def rejected_code(decision: Decision) -> RejectCode:
    assert isinstance(decision, Reject), decision
    return decision.code


# --- granting -------------------------------------------------------------------


def test_first_grant_records_base_from_xen() -> None:
    d = run(nodes(2048, 1))
    assert isinstance(d, Apply)
    assert d.target == BASE + 2048
    rec = d.record
    assert rec.state is DecisionState.APPLYING and rec.origin is Origin.REQUEST
    assert (rec.request_id, rec.base_pages, rec.granted_pages, rec.max_pages) == (
        1,
        BASE,
        2048,
        BASE + 2048,
    )
    done = finish(rec)
    assert done.state is DecisionState.GRANTED
    assert done == replace(rec, state=DecisionState.GRANTED)


def test_later_grants_use_recorded_base_not_current_limit() -> None:
    domain = replace(GUEST, max_pages=BASE + 2048)  # Xen already raised
    d = run(nodes(4096, 2), granted(2048, 1), domain=domain)
    assert isinstance(d, Apply) and d.target == BASE + 4096
    assert d.record.base_pages == BASE and d.record.granted_pages == 4096


def test_same_pages_again_is_a_harmless_reapply() -> None:
    d = run(nodes(2048, 2), granted(2048, 1), domain=replace(GUEST, max_pages=BASE + 2048))
    assert isinstance(d, Apply) and d.target == BASE + 2048


@pytest.mark.parametrize("rid", [1, 2])
def test_decided_ids_are_ignored(rid: int) -> None:
    assert isinstance(run(nodes(9999999, rid), granted(2048, 2)), Ignore)


def test_no_request_is_ignored() -> None:
    assert isinstance(run(None), Ignore)
    assert isinstance(run(b""), Ignore)  # a node made as a parent, or by a v1 peer's key


def test_a_request_without_a_request_id_is_rejected_once_with_the_last_id() -> None:
    """A node is written whole: a request without its id is malformed, not half written."""
    partial = {k: v for k, v in nodes().items() if k != "request-id"}
    d = run(partial, granted(2048, 4))
    assert rejected_code(d) is RejectCode.BAD_VALUE
    assert isinstance(d, Reject) and d.record is not None and d.record.request_id == 4
    assert f"{WHERE}: request-id: missing" in d.detail
    assert isinstance(run(partial, d.record), Ignore)


@pytest.mark.parametrize("raw", [lines(nodes())[:-1], lines(nodes()) + b"request-id=2\n",
                                 lines(nodes()) + b"\n", b"x" * 2000 + b"\n"])
def test_a_request_that_does_not_frame_is_rejected(raw: bytes) -> None:
    d = run(raw)
    assert rejected_code(d) is RejectCode.BAD_VALUE
    assert isinstance(d, Reject) and d.record is not None and d.record.request_id == 0


def test_withdraw_returns_to_base() -> None:
    d = run(nodes(0, 2), granted(2048, 1), domain=replace(GUEST, max_pages=BASE + 2048))
    assert isinstance(d, Apply) and d.target == BASE
    assert d.record.granted_pages == 0


def test_lowering_stops_at_pages_in_use() -> None:
    domain = replace(GUEST, max_pages=BASE + 2048, tot_pages=BASE + 1000)
    d = run(nodes(0, 2), granted(2048, 1), domain=domain)
    assert isinstance(d, Apply)
    assert d.target == BASE + 1000 and d.record.granted_pages == 1000


def test_lowering_is_never_rate_limited_or_budget_checked() -> None:
    limiter = RateLimiter()
    policy = Policy(rate=RateLimit(burst=1, refill_seconds=1000), host_budget_pages=0)
    limiter.charge(D, 1000.0)
    d = run(
        nodes(1024, 2),
        granted(2048, 1),
        domain=replace(GUEST, max_pages=BASE + 2048),
        policy=policy,
        limiter=limiter,
        host=HostInfo(free_pages=0, granted_elsewhere=10**6),
    )
    assert isinstance(d, Apply) and d.target == BASE + 1024


# --- validation, in order ----------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "code"), [(b"1", RejectCode.BAD_VERSION), (b"3", RejectCode.BAD_VERSION),
                          (b"2", RejectCode.BAD_VALUE)]
)
def test_bad_version_is_checked_before_values(version: bytes, code: RejectCode) -> None:
    d = run(nodes(pages=1, version=version) | {"pages": b"-1"})
    assert rejected_code(d) is code


def test_missing_version() -> None:
    n = nodes()
    del n["version"]
    assert rejected_code(run(n)) is RejectCode.BAD_VERSION


@pytest.mark.parametrize(
    ("key", "value"),
    [("pages", b"0x10"), ("pages", b"01"), ("reason", b"\x00"), ("reason", b"x" * 129)],
)
def test_bad_values(key: str, value: bytes) -> None:
    d = run(nodes() | {key: value})
    assert rejected_code(d) is RejectCode.BAD_VALUE
    assert isinstance(d, Reject) and d.record is not None
    assert f"{WHERE}: {key}: " in d.detail
    assert d.record.request_id == 1
    assert d.record.reason.startswith("bad-value: ")


def test_unreadable_request_id_is_rejected_once_with_the_last_id() -> None:
    current = granted(2048, 4)
    d = run(nodes() | {"request-id": "\u0665".encode()}, current)
    assert rejected_code(d) is RejectCode.BAD_VALUE
    assert isinstance(d, Reject) and d.record is not None
    assert d.record.request_id == 4 and d.record.granted_pages == 2048
    assert isinstance(run(nodes() | {"request-id": "\u0665".encode()}, d.record), Ignore)
    fresh = run(nodes() | {"request-id": b"-1"})
    assert isinstance(fresh, Reject) and fresh.record is not None
    assert fresh.record.request_id == 0


def test_bad_value_is_checked_before_writer() -> None:
    assert rejected_code(run(nodes() | {"pages": b"x"}, owner=9)) is RejectCode.BAD_VALUE


def test_wrong_writer() -> None:
    d = run(nodes(), owner=D)
    assert rejected_code(d) is RejectCode.WRONG_WRITER
    assert isinstance(d, Reject) and "owned by domain 5" in d.detail


def test_a_guest_cannot_be_its_own_device_model() -> None:
    assert rejected_code(run(nodes(), owner=D, dm_domid=D)) is RejectCode.WRONG_WRITER


def test_stubdom_device_model() -> None:
    assert isinstance(run(nodes(), owner=9, dm_domid=9), Apply)


def test_a_gone_domain_is_checked_before_the_writer() -> None:
    """Nothing is recorded for a domain that is gone, whoever wrote the request."""
    gone = DomainInfo(domid=D, exists=False)
    d = run(nodes(), owner=3, domain=gone)
    assert rejected_code(d) is RejectCode.NO_SUCH_DOMAIN
    assert isinstance(d, Reject) and d.record is None


@pytest.mark.parametrize(
    ("domain", "code"),
    [
        (DomainInfo(domid=D, exists=False), RejectCode.NO_SUCH_DOMAIN),
        (replace(GUEST, dying=True), RejectCode.DYING),
    ],
)
def test_gone_domains_get_no_record(domain: DomainInfo, code: RejectCode) -> None:
    d = run(nodes(), granted(10, 0), domain=domain)
    assert rejected_code(d) is code
    assert isinstance(d, Reject) and d.record is None


def test_dom0_is_privileged() -> None:
    d = run(nodes(), domain=replace(GUEST, domid=0), owner=7, dm_domid=7)
    assert rejected_code(d) is RejectCode.PRIVILEGED


def test_over_domain_cap() -> None:
    assert isinstance(run(nodes(8192)), Apply)
    d = run(nodes(8193))
    assert rejected_code(d) is RejectCode.OVER_DOMAIN_CAP
    assert isinstance(d, Reject) and "8193 > cap 8192" in d.detail


def test_cap_overrides() -> None:
    by_name = Policy(by_name={"web1": DomainOverride(cap_pages=100)})
    assert rejected_code(run(nodes(101), policy=by_name)) is RejectCode.OVER_DOMAIN_CAP
    by_id = Policy(by_domid={"5": DomainOverride(cap_pages=10**5)}, by_name=by_name.by_name)
    assert isinstance(run(nodes(10**5), policy=by_id), Apply)


def test_limit_cannot_pass_xen_maximum() -> None:
    policy = Policy(domain_cap_pages=2**32 - 1, host_budget_pages=2**32 - 1)
    d = run(nodes(2**32 - 1), policy=policy, host=HostInfo(2**40, 0))
    assert rejected_code(d) is RejectCode.OVER_DOMAIN_CAP


def test_over_host_budget() -> None:
    policy = Policy(host_budget_pages=10_000)
    assert isinstance(run(nodes(2000), policy=policy, host=HostInfo(10**6, 8000)), Apply)
    d = run(nodes(2001), policy=policy, host=HostInfo(10**6, 8000))
    assert rejected_code(d) is RejectCode.OVER_HOST_BUDGET


def test_budget_counts_only_the_increase_against_free_memory() -> None:
    host = HostInfo(free_pages=16384 + 1000, granted_elsewhere=0)
    xen = replace(GUEST, max_pages=BASE + 2000)
    assert isinstance(run(nodes(3000, 2), granted(2000, 1), host=host, domain=xen), Apply)
    d = run(nodes(3001, 2), granted(2000, 1), host=host, domain=xen)
    assert rejected_code(d) is RejectCode.OVER_HOST_BUDGET
    assert isinstance(d, Reject) and "increase 1001" in d.detail


def test_rate_limited_after_burst() -> None:
    limiter, current, xen = RateLimiter(), None, GUEST
    for rid in range(1, 6):
        d = run(nodes(rid, rid), current, limiter=limiter, now=1.0, domain=xen)
        assert isinstance(d, Apply) and d.charge is not None
        current, xen = finish(d.record), replace(xen, max_pages=d.target)
        limiter.charge(D, d.charge)
    d = run(nodes(6, 6), current, limiter=limiter, now=1.0, domain=xen)
    assert rejected_code(d) is RejectCode.RATE_LIMITED
    assert isinstance(d, Reject) and d.record is not None
    assert d.record.granted_pages == 5  # what is in force stays recorded
    assert isinstance(run(nodes(7, 7), d.record, limiter=limiter, now=11.0, domain=xen), Apply)


def test_rejections_consume_no_tokens() -> None:
    limiter = RateLimiter()
    one = Policy(rate=RateLimit(burst=1, refill_seconds=100))
    for rid in range(1, 5):
        assert rejected_code(run(nodes(10**6, rid), policy=one, limiter=limiter)) is (
            RejectCode.OVER_DOMAIN_CAP
        )
    assert isinstance(run(nodes(1, 9), policy=one, limiter=limiter), Apply)


def test_rejection_keeps_recorded_state_and_reports_xen_limit() -> None:
    current = granted(2048, 3)
    domain = replace(GUEST, max_pages=BASE + 2048)
    d = run(nodes(9000, 4), current, domain=domain)
    assert isinstance(d, Reject) and d.record is not None
    r = d.record
    assert (r.state, r.request_id, r.base_pages, r.granted_pages, r.max_pages) == (
        DecisionState.REJECTED,
        4,
        BASE,
        2048,
        BASE + 2048,
    )
    assert r.rejection == (RejectCode.OVER_DOMAIN_CAP, d.detail)
    assert DecisionRecord.parse(r.encode()) == r
    err = d.error(D)
    assert isinstance(err, RequestRejected) and err.code == "over-domain-cap"


def test_rejection_reason_is_truncated_to_fit() -> None:
    d = run(
        nodes() | {"pages": b"9" * 5000},
        dm_domid=32000,
        owner=32000,
        domain=replace(GUEST, domid=32001),
    )
    assert isinstance(d, Reject) and d.record is not None
    assert len(d.record.reason) <= DECISION_REASON_MAX_BYTES


# --- crash safety, recovery, races -----------------------------------------------


def applying(pages: int, rid: int = 2) -> DecisionRecord:
    return record(DecisionState.APPLYING, pages, rid)


def test_recover_finishes_applying() -> None:
    rec = applying(4096)
    d = recover(rec, GUEST)
    assert d == Apply(rec, BASE + 4096, rule="recover")


@pytest.mark.parametrize("current", [None, granted(5)])
def test_recover_nothing_pending(current: DecisionRecord | None) -> None:
    assert isinstance(recover(current, GUEST), Ignore)


@pytest.mark.parametrize(
    ("domain", "code"),
    [
        (DomainInfo(domid=D, exists=False), RejectCode.NO_SUCH_DOMAIN),
        (replace(GUEST, dying=True), RejectCode.DYING),
    ],
)
def test_recover_for_dead_domain(domain: DomainInfo, code: RejectCode) -> None:
    d = recover(applying(1), domain)
    assert isinstance(d, Reject) and d.code is code and d.record is None


def test_decide_finishes_pending_work_first() -> None:
    rec = applying(4096, rid=2)
    assert run(nodes(1, 3), rec) == Apply(rec, BASE + 4096, rule="recover")
    assert isinstance(run(nodes(1, 3), finish(rec)), Apply)


def test_finish_only_applying() -> None:
    with pytest.raises(ValueError):
        finish(granted(1))


def test_racing_watchers_set_the_same_absolute_limit() -> None:
    current = granted(1000, 1)
    first = run(nodes(3000, 2), current)
    second = run(nodes(3000, 2), current)
    assert first == second
    assert isinstance(first, Apply)
    assert isinstance(run(nodes(3000, 2), finish(first.record)), Ignore)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.booleans(), st.booleans(), st.integers(0, 12_000)),
        max_size=12,
    )
)
def test_replays_crashes_and_restarts_never_raise_twice(
    steps: list[tuple[int, bool, bool, int]],
) -> None:
    """Simulate Xen and xenstore; whatever happens, Xen's limit is base + granted."""
    xen_max, tot, record = BASE, 30000, None
    limiter, rid, now = RateLimiter(), 0, 0.0
    for pages, crash, replay, used in steps:
        rid, now = rid + 1, now + 3.0
        tot = min(xen_max, 30000 + used)
        request = nodes(pages, rid)
        for _ in range(2 if replay else 1):
            while True:
                domain = replace(GUEST, max_pages=xen_max, tot_pages=tot)
                d = run(request, record, domain=domain, limiter=limiter, now=now)
                if isinstance(d, Apply):
                    record = d.record
                    if crash:  # watcher dies before touching Xen; restart recovers
                        crash = False
                        continue
                    xen_max = d.target
                    record = finish(d.record)
                    if d.charge is not None:
                        limiter.charge(D, d.charge)
                    continue
                if isinstance(d, Reject):
                    assert d.record is not None
                    record = d.record
                break
        assert record is not None and record.state is not DecisionState.APPLYING
        assert xen_max == record.base_pages + record.granted_pages
        assert record.base_pages == BASE
        assert record.granted_pages <= 8192  # never past the cap, pages in use or not
        assert xen_max >= tot


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.dictionaries(st.sampled_from(["version", "pages", "reason", "request-id", "x"]),
                        st.binary(max_size=24)),
        st.binary(max_size=64)),
    st.integers(0, 40),
    st.sampled_from([None, granted(100, 3), applying(50, 3)]),
)
def test_hostile_requests_always_get_a_valid_decision(
    raw: dict[str, bytes] | bytes, owner: int, current: DecisionRecord | None
) -> None:
    d = run(raw, current, owner=owner)
    if isinstance(d, Apply):
        assert d.target == d.record.max_pages <= BASE + 8192
    if isinstance(d, Reject) and d.record is not None:
        assert DecisionRecord.parse(d.record.encode()) == d.record


# --- restore ------------------------------------------------------------------------


def test_restored_record_and_follow_up_request() -> None:
    rec = restored(Grant(base_pages=40000, granted_pages=2048))
    assert rec.state is DecisionState.GRANTED and rec.origin is Origin.RESTORE
    assert rec.request_id == 0 and rec.max_pages == 42048
    domain = replace(GUEST, max_pages=42048)
    d = run(nodes(4096, 1), rec, domain=domain)
    assert isinstance(d, Apply) and d.target == 40000 + 4096


# --- the device model's side ----------------------------------------------------------


def test_dm_happy_path_through_the_watcher() -> None:
    dm = DeviceModelSide(domid=D)
    assert dm.outcome() is None
    dm, req = dm.ask(2048, "option ROMs", now=0.0, decided=0)
    assert dm.state is DmState.REQUESTED and req.request_id == 1
    d = run(req.encode())
    assert isinstance(d, Apply)
    dm = dm.observe(d.record)
    assert dm.state is DmState.REQUESTED and dm.outcome() is None
    dm = dm.observe(finish(d.record))
    assert dm.state is DmState.GRANTED and dm.outcome() == 2048


def test_dm_rejection() -> None:
    dm, req = DeviceModelSide(domid=D).ask(10**6, now=0.0, decided=0)
    d = run(req.encode())
    assert isinstance(d, Reject) and d.record is not None
    dm = dm.observe(d.record)
    assert dm.state is DmState.REJECTED
    with pytest.raises(RequestRejected) as err:
        dm.outcome()
    assert err.value.code == RejectCode.OVER_DOMAIN_CAP and err.value.domid == D


def test_dm_ids_go_above_everything_seen() -> None:
    dm = DeviceModelSide(domid=D)
    assert dm.ask(1, now=0, decided=5)[1].request_id == 6
    assert dm.ask(1, now=0, decided=5, written=9)[1].request_id == 10
    dm, _ = dm.ask(1, now=0, decided=0)
    dm, req = dm.ask(2, now=0, decided=0)
    assert req.request_id == 2 and dm.request_id == 2


def test_dm_ignores_older_decisions_and_none() -> None:
    dm, _ = DeviceModelSide(domid=D).ask(5, now=0.0, decided=3)
    assert dm.observe(granted(1, 3)) == dm
    assert dm.observe(None) == dm


def test_dm_refuses_decisions_for_ids_never_asked() -> None:
    dm, _ = DeviceModelSide(domid=D).ask(5, now=0.0, decided=0)
    with pytest.raises(ProtocolError) as err:
        dm.observe(granted(5, 2))
    assert err.value.path == paths.decision_node(D)


def test_dm_timeout() -> None:
    dm, _ = DeviceModelSide(domid=D).ask(5, now=100.0, decided=0, timeout=5.0)
    assert dm.tick(104.9) == dm
    dm = dm.tick(105.0)
    assert dm.state is DmState.TIMED_OUT
    with pytest.raises(NegotiationTimeout):
        dm.outcome()
    assert dm.observe(granted(5, 1)).state is DmState.TIMED_OUT
    retry, req = dm.ask(5, now=106.0, decided=1)
    assert retry.state is DmState.REQUESTED and req.request_id == 2


def test_dm_tick_outside_requested_does_nothing() -> None:
    dm = DeviceModelSide(domid=D)
    assert dm.tick(1e9) == dm


def test_dm_learns_restored_pages_while_idle() -> None:
    dm = DeviceModelSide(domid=D).observe(restored(Grant(40000, 2048)))
    assert dm.state is DmState.IDLE and dm.granted_pages == 2048 and dm.outcome() is None
    dm = dm.observe(
        DecisionRecord(
            state=DecisionState.REJECTED,
            request_id=7,
            base_pages=1,
            granted_pages=2,
            max_pages=3,
            reason="dying: x",
        )
    )
    assert dm.granted_pages == 2048 and dm.request_id == 7


# --- the engine's hardening (issue 7): each of these failed before its fix -------------


def test_deciding_spends_no_token_until_the_watcher_commits_the_charge() -> None:
    """A racing watcher's lost swap must not turn a valid request into rate-limited."""
    one = Policy(rate=RateLimit(burst=1, refill_seconds=100))
    buckets = RateLimiter()
    first = run(nodes(100, 1), policy=one, limiter=buckets)
    again = run(nodes(100, 1), policy=one, limiter=buckets)  # the swap was lost: redo
    assert isinstance(first, Apply) and first == again
    assert first.charge is not None
    buckets.charge(D, first.charge)
    assert rejected_code(run(nodes(200, 2), granted(100, 1), policy=one, limiter=buckets,
                             domain=replace(GUEST, max_pages=BASE + 100))) is (
        RejectCode.RATE_LIMITED)


def test_a_lowering_carries_no_charge() -> None:
    d = run(nodes(0, 2), granted(2048, 1), domain=replace(GUEST, max_pages=BASE + 2048))
    assert isinstance(d, Apply) and d.charge is None


def test_after_an_admin_lowered_the_limit_the_same_pages_are_an_increase() -> None:
    """``xl mem-max`` took the grant back in Xen: asking again is checked like any raise."""
    lowered = replace(GUEST, max_pages=BASE)
    spent = RateLimiter()
    spent.charge(D, 1000.0)
    d = run(nodes(2048, 2), granted(2048, 1), domain=lowered, limiter=spent)
    assert rejected_code(d) is RejectCode.RATE_LIMITED
    d = run(nodes(2048, 2), granted(2048, 1), domain=lowered,
            host=HostInfo(free_pages=16384 + 100, granted_elsewhere=0))
    assert rejected_code(d) is RejectCode.OVER_HOST_BUDGET


def test_never_granted_past_the_cap_for_pages_already_in_use() -> None:
    """A guest holding pages above base + cap (limit lowered under it) is not granted
    them by asking for fewer: the record would say more than the cap allows."""
    held = replace(GUEST, max_pages=1000, tot_pages=1000 + 50000)
    d = run(nodes(0, 1), domain=held, policy=Policy(domain_cap_pages=100))
    assert rejected_code(d) is RejectCode.OVER_DOMAIN_CAP
    assert isinstance(d, Reject) and "in use" in d.detail


@pytest.mark.parametrize("domain", [DomainInfo(domid=D, exists=False),
                                    replace(GUEST, dying=True)], ids=["absent", "dying"])
def test_a_malformed_request_for_a_gone_domain_writes_no_record(domain: DomainInfo) -> None:
    """Its nodes would outlive the domain (collected only at the next release event)."""
    d = run(nodes(pages=1) | {"pages": b"-1"}, domain=domain)
    assert isinstance(d, Reject) and d.record is None


def test_a_device_model_out_of_request_ids_gets_a_protocol_error() -> None:
    """A decision (or a stale request) at request-id 2**63-1 leaves no id to ask with:
    a clear error naming the path, not a crash on the next id."""
    top = granted(10, rid=2**63 - 1)
    with pytest.raises(ProtocolError, match="no request-id left") as err:
        DeviceModelSide(domid=D).observe(top).ask(10, now=0.0, decided=top.request_id)
    assert err.value.path == paths.request_node(M, D)


# --- drift: Xen's limit changed behind the record's back (xl mem-max) -------------------


def test_drift_is_xen_differing_from_the_record_in_force() -> None:
    rec = granted(2048)
    assert drift(rec, replace(GUEST, max_pages=BASE + 2048)) is None
    assert drift(rec, replace(GUEST, max_pages=BASE + 100)) == BASE + 100
    assert drift(None, GUEST) is None
    assert drift(applying(2048, 1), GUEST) is None
    assert drift(rec, DomainInfo(domid=D, exists=False)) is None


def test_adopting_makes_xen_the_grant() -> None:
    assert adopted(granted(2048), BASE + 100).grant == Grant(BASE, 100)
    lowered = adopted(granted(2048), BASE - 1000)
    assert lowered.grant == Grant(BASE - 1000, 0) and lowered.state is DecisionState.GRANTED
    over_cap = run(nodes(9000, 2), granted(2048, 1), domain=replace(GUEST, max_pages=BASE + 2048))
    assert isinstance(over_cap, Reject) and over_cap.record is not None
    assert adopted(over_cap.record, BASE + 5).reason == ""
