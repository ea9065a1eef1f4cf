"""The negotiation on the real hypervisor and the real xenstored (C and OCaml).

Real guests (PV, and PVH where the seed needs it); the watcher runs as a real daemon; the
device model is the agent (or raw xenstore writes, for hostile input) plus a libxenctrl
populate, as QEMU does.
"""

from __future__ import annotations

import functools
import json
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.lab.conftest import XSPROTO, GuestFactory, WatcherProcess
from tools.lab.devicemodel import PopulateError, populate
from xsproto import paths
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.adapters.xenstore_records import read_decision
from xsproto.agents import device_model
from xsproto.agents.watcher import CRASH_AT_ENV
from xsproto.errors import RequestRejected
from xsproto.negotiation import RejectCode
from xsproto.records import DecisionRecord, DecisionState

pytestmark = pytest.mark.lab

N = 2048
#: The emulated lab is slow and noisy: wait long, assert nothing about time.
request_pages = functools.partial(device_model.request_pages, timeout=180)


def wait_record(xs: Xenstore, domid: int, ok: Callable[[DecisionRecord | None], bool],
                timeout: float = 180) -> DecisionRecord | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_decision(xs, domid)
        if ok(record):
            return record
        time.sleep(0.05)
    raise AssertionError(f"domain {domid}: record never matched; last {read_decision(xs, domid)}")


def decided(xs: Xenstore, domid: int, request_id: int) -> DecisionRecord:
    record = wait_record(xs, domid, lambda r: r is not None and r.request_id == request_id
                         and r.state is not DecisionState.APPLYING)
    assert record is not None
    return record


def request_value(request_id: bytes, *, pages: bytes = b"16", reason: bytes = b"test",
                  version: bytes = b"2") -> bytes:
    """A request node's value (a hostile one's too): its lines, in the order written."""
    return (b"version=" + version + b"\npages=" + pages + b"\nreason=" + reason
            + b"\nrequest-id=" + request_id + b"\n")


def write_request(xs: Xenstore, domid: int, request_id: bytes, *, pages: bytes = b"16",
                  reason: bytes = b"test", dm: int = 0) -> str:
    where = paths.request_node(dm, domid)
    xs.write(where, request_value(request_id, pages=pages, reason=reason))
    return where


def says(problem: str, record: DecisionRecord | None) -> bool:
    """Whether ``record`` is a rejection whose reason says ``problem``."""
    return record is not None and problem in record.reason


def exists(xs: Xenstore, path: str) -> bool:
    return xs.read(path) is not None


def max_pages(hv: Hypervisor, domid: int) -> int:
    return hv.domain(domid).max_pages


def test_grant_raises_limit_by_exactly_n_and_dm_populates_no_more(
        make_guest: GuestFactory, watcher: WatcherProcess, xs: Xenstore, hv: Hypervisor) -> None:
    domid = make_guest(kind="pvh")  # the seed's case; the other tests use PV guests
    before = hv.domain(domid)
    with pytest.raises(PopulateError):  # the control: without a grant, Xen refuses
        populate(domid, N)
    record = request_pages(xs, domid, N, "option ROMs")
    assert record.state is DecisionState.GRANTED
    assert (record.base_pages, record.granted_pages) == (before.max_pages, N)
    assert max_pages(hv, domid) == before.max_pages + N == record.max_pages
    populate(domid, N)
    room = max_pages(hv, domid) - hv.domain(domid).tot_pages
    populate(domid, room, start_pfn=0x90000)  # up to the limit exactly...
    with pytest.raises(PopulateError):
        populate(domid, 1, start_pfn=0xA0000)  # ...and not one page more
    assert "result=granted" in watcher.log() and f"domid={domid}" in watcher.log()


def test_cli_exit_statuses(make_guest: GuestFactory, start_watcher: Callable[..., WatcherProcess],
                           hv: Hypervisor) -> None:
    domid = make_guest()
    base = max_pages(hv, domid)

    def request(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([XSPROTO, "request", "--domid", str(domid), *args],
                              capture_output=True, text=True)

    timed_out = request("--pages", "16", "--timeout", "2")  # no watcher yet
    assert timed_out.returncode == 4, timed_out.stderr
    assert "no decision" in timed_out.stderr
    start_watcher()
    granted = request("--pages", str(N))
    assert granted.returncode == 0, granted.stderr
    assert f"max_pages {base + N}" in granted.stdout
    rejected = request("--pages", "999999")
    assert rejected.returncode == 3
    assert "over-domain-cap" in rejected.stderr and "999999" in rejected.stderr
    missing = subprocess.run([XSPROTO, "request", "--domid", "31999", "--pages", "1"],
                             capture_output=True, text=True)
    assert missing.returncode == 3 and "no-such-domain" in missing.stderr
    assert max_pages(hv, domid) == base + N
    shown = subprocess.run([XSPROTO, "status", "--domid", str(domid), "--json"],
                           capture_output=True, text=True, check=True)
    document = json.loads(shown.stdout)
    assert document["format"] == 1 and document["watcher"]["alive"]
    (row,) = document["domains"]
    assert not row["drift"] and not row["pending"] and row["granted_pages"] == N
    assert row["xen_max_pages"] == row["recorded_max_pages"] == base + N


def test_replays_spurious_events_and_restarts_never_raise_twice(
        make_guest: GuestFactory, watcher: WatcherProcess, xs: Xenstore, hv: Hypervisor) -> None:
    domid = make_guest()
    base = max_pages(hv, domid)
    first = request_pages(xs, domid, N)
    where = write_request(xs, domid, str(first.request_id).encode(), pages=str(N).encode())
    xs.write(f"{where}/reason", b"spurious rewrite")  # a spurious watch event
    again = request_pages(xs, domid, N)  # the same ask under a new id
    assert again.request_id == first.request_id + 1
    watcher.restart()
    watcher.restart()
    third = request_pages(xs, domid, N)
    assert max_pages(hv, domid) == base + N == third.max_pages
    assert third.base_pages == base


def test_two_racing_watchers_agree(make_guest: GuestFactory,
                                   start_watcher: Callable[..., WatcherProcess],
                                   xs: Xenstore, hv: Hypervisor) -> None:
    domid = make_guest()
    base = max_pages(hv, domid)
    start_watcher(policy={"rate": {"burst": 100, "refill_seconds": 1}})
    start_watcher(policy={"rate": {"burst": 100, "refill_seconds": 1}})
    for i, pages in enumerate([100, 700, 300, 1500, 1200], start=1):
        write_request(xs, domid, str(i).encode(), pages=str(pages).encode())
    record = decided(xs, domid, 5)
    time.sleep(1)  # let a late watcher finish whatever it was doing
    assert read_decision(xs, domid) == record
    assert record.granted_pages == 1200
    assert max_pages(hv, domid) == base + 1200


@pytest.mark.parametrize("checkpoint", ["after-applying", "after-hypercall"])
def test_kill_9_mid_request_then_restart_reconciles(
        checkpoint: str, make_guest: GuestFactory, start_watcher: Callable[..., WatcherProcess],
        xs: Xenstore, hv: Hypervisor) -> None:
    domid = make_guest()
    base = max_pages(hv, domid)
    doomed = start_watcher(env={CRASH_AT_ENV: checkpoint})
    write_request(xs, domid, b"1", pages=str(N).encode())
    assert doomed.wait_exit() == -9
    pending = read_decision(xs, domid)
    assert pending is not None and pending.state is DecisionState.APPLYING
    expected_now = base + N if checkpoint == "after-hypercall" else base
    assert max_pages(hv, domid) == expected_now
    doomed.start()  # no crash point this time
    record = decided(xs, domid, 1)
    assert record.state is DecisionState.GRANTED
    assert max_pages(hv, domid) == base + N == record.max_pages


HOSTILE_PAGES = [
    (b"-1", RejectCode.BAD_VALUE), (b"0x10", RejectCode.BAD_VALUE),
    (b" 12", RejectCode.BAD_VALUE), (b"12 ", RejectCode.BAD_VALUE),
    (b"+12", RejectCode.BAD_VALUE), (b"012", RejectCode.BAD_VALUE),
    (b"1_0", RejectCode.BAD_VALUE), ("١٢".encode(), RejectCode.BAD_VALUE),
    (b"", RejectCode.BAD_VALUE), (b"1e3", RejectCode.BAD_VALUE),
    (str(2**64 + 1).encode(), RejectCode.BAD_VALUE), (b"9" * 900, RejectCode.BAD_VALUE),
    (b"9000", RejectCode.OVER_DOMAIN_CAP), (str(2**32).encode(), RejectCode.BAD_VALUE),
]


def test_hostile_values_are_rejected_and_change_nothing(
        make_guest: GuestFactory, watcher: WatcherProcess, xs: Xenstore, hv: Hypervisor) -> None:
    domid = make_guest()
    base = max_pages(hv, domid)
    where = paths.request_node(0, domid)
    for i, (value, code) in enumerate(HOSTILE_PAGES, start=1):
        # xenstore-write writes bytes pyxs would refuse (non-ASCII).
        raw = request_value(str(100 + i).encode(), pages=value, reason=b"hostile")
        subprocess.run(["xenstore-write", "--", where, raw.decode()], check=True)
        record = decided(xs, domid, 100 + i)
        assert record.state is DecisionState.REJECTED, value
        assert record.rejection is not None and record.rejection[0] == code, (value, record)
        assert max_pages(hv, domid) == base
    for bad_reason in ("x" * 200, "tab\there", "ünï"):
        raw = request_value(b"500", pages=b"1", reason=bad_reason.encode())
        subprocess.run(["xenstore-write", "--", where, raw.decode()], check=True)
        record = decided(xs, domid, 500)
        assert record.rejection is not None and record.rejection[0] == RejectCode.BAD_VALUE
        subprocess.run(["xenstore-rm", where], check=True)
        xs.remove(paths.decision_node(domid))
    # A value that does not frame has no readable request-id: its rejection carries the
    # last id decided (the device model cannot match it; the reason is for the admin).
    write_request(xs, domid, b"600", pages=b"x")
    last = decided(xs, domid, 600)
    good = request_value(b"601")
    for raw, problem in [(good[:-1], "not ended by a line feed"),
                         (good + b"pages=1\n", "pages: given twice"),
                         (good + b"x=" + b"y" * 1100 + b"\n", "longer than 1024 bytes"),
                         (good + b"Pages=1\n", "line 5 is not key=value")]:
        subprocess.run(["xenstore-write", "--", where, raw.decode()], check=True)
        found = wait_record(xs, domid, functools.partial(says, problem))
        assert found is not None and found.request_id == last.request_id == 600
        assert found.rejection is not None and found.rejection[0] == RejectCode.BAD_VALUE
    assert max_pages(hv, domid) == base


def test_wrong_writer_and_guest_own_area(make_guest: GuestFactory, watcher: WatcherProcess,
                                         xs: Xenstore, hv: Hypervisor) -> None:
    domid = make_guest()
    base = max_pages(hv, domid)
    where = write_request(xs, domid, b"7", pages=b"16")
    decided(xs, domid, 7)
    # The same request as if domain D had written the node: its owner is D, not dom0.
    def as_guest(t: Xenstore) -> None:
        t.write(where, request_value(b"8"))
        t.set_perms(where, [f"n{domid}"])

    xs.transact(as_guest)
    record = decided(xs, domid, 8)
    assert record.rejection is not None and record.rejection[0] == RejectCode.WRONG_WRITER
    # A guest writing in its own area is not a device model: nothing happens at all.
    own = paths.request_node(domid, domid)

    def guest_writes_own_area(t: Xenstore) -> None:
        t.write(own, request_value(b"99", pages=b"8000", reason=b"me"))
        t.set_perms(own, [f"n{domid}"])

    xs.transact(guest_writes_own_area)
    time.sleep(2)
    assert read_decision(xs, domid) == record
    assert max_pages(hv, domid) == base + 16


def test_requests_for_dom0_and_missing_domains_change_nothing(
        watcher: WatcherProcess, xs: Xenstore, hv: Hypervisor) -> None:
    dom0_max = max_pages(hv, 0)
    try:
        write_request(xs, 0, b"1", pages=b"16")
        record = decided(xs, 0, 1)
        assert record.rejection is not None
        assert record.rejection[0] in (RejectCode.PRIVILEGED, RejectCode.WRONG_WRITER)
        assert max_pages(hv, 0) == dom0_max
    finally:
        # Dom0 never dies: what is left here would be decided again by every later
        # watcher's start-up (test_attacks.py counts the records there are).
        xs.remove(paths.device_model_guest_dir(0, 0))
        xs.remove(paths.decision_node(0))
    where = write_request(xs, 31000, b"1", pages=b"16")
    deadline = time.monotonic() + 180
    while exists(xs, where) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not exists(xs, where) and not exists(xs, paths.decision_node(31000))


def test_request_flood_is_rate_limited(make_guest: GuestFactory,
                                       start_watcher: Callable[..., WatcherProcess],
                                       xs: Xenstore, hv: Hypervisor) -> None:
    domid = make_guest()
    start_watcher(policy={"rate": {"burst": 5, "refill_seconds": 3600}})
    base = max_pages(hv, domid)
    outcomes: list[int | str] = []
    for pages in range(10, 90, 10):
        try:
            outcomes.append(request_pages(xs, domid, pages).granted_pages)
        except RequestRejected as e:
            outcomes.append(e.code)
    assert outcomes[:5] == [10, 20, 30, 40, 50]
    assert outcomes[5:] == [RejectCode.RATE_LIMITED] * 3
    assert max_pages(hv, domid) == base + 50


def test_policy_caps_and_host_budget(make_guest: GuestFactory,
                                     start_watcher: Callable[..., WatcherProcess],
                                     xs: Xenstore, hv: Hypervisor) -> None:
    a, b = make_guest("capped"), make_guest("other")
    start_watcher(policy={"domain_cap_pages": 1 << 22, "host_budget_pages": 3000,
                          "by_name": {"capped": {"cap_pages": 100}}})
    with pytest.raises(RequestRejected) as over_cap:
        request_pages(xs, a, 101)
    assert over_cap.value.code == RejectCode.OVER_DOMAIN_CAP
    assert request_pages(xs, a, 100).granted_pages == 100
    assert request_pages(xs, b, 2900).granted_pages == 2900
    with pytest.raises(RequestRejected) as over_budget:
        request_pages(xs, b, 2901)
    assert over_budget.value.code == RejectCode.OVER_HOST_BUDGET
    assert max_pages(hv, b) == read_decision(xs, b).max_pages  # type: ignore[union-attr]


def test_request_beyond_free_memory_is_rejected(make_guest: GuestFactory,
                                                start_watcher: Callable[..., WatcherProcess],
                                                xs: Xenstore, hv: Hypervisor) -> None:
    domid = make_guest()
    base = max_pages(hv, domid)
    start_watcher(policy={"domain_cap_pages": 1 << 22, "host_budget_pages": 1 << 22})
    with pytest.raises(RequestRejected) as err:
        request_pages(xs, domid, hv.free_pages() + 1)
    assert err.value.code == RejectCode.OVER_HOST_BUDGET and "free" in err.value.detail
    assert max_pages(hv, domid) == base


def test_domain_death_cleans_up_and_mid_request_death_ends_cleanly(
        make_guest: GuestFactory, watcher: WatcherProcess, xs: Xenstore, hv: Hypervisor) -> None:
    domid = make_guest("dies")
    request_pages(xs, domid, 64)
    subprocess.run(["xl", "destroy", "dies"], check=True)
    deadline = time.monotonic() + 180
    while (exists(xs, paths.request_node(0, domid)) or exists(xs, paths.decision_node(domid))) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not exists(xs, paths.request_node(0, domid))
    assert not exists(xs, paths.decision_node(domid))
    # Dying while a request is in flight: no leftovers, and the watcher serves the next.
    doomed = make_guest("doomed")
    write_request(xs, doomed, b"1", pages=b"64")
    subprocess.run(["xl", "destroy", "doomed"], check=True)
    survivor = make_guest("survivor")
    assert request_pages(xs, survivor, 32).granted_pages == 32
    deadline = time.monotonic() + 180
    while exists(xs, paths.request_node(0, doomed)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not exists(xs, paths.request_node(0, doomed))
    assert watcher.proc is not None and watcher.proc.poll() is None
