"""A real guest attacks the negotiation from inside (issue 7), on real Xen and xenstored.

The attacker is a PV guest whose init writes with the host's xenstore client through
/dev/xen/xenbus, so xenstored sees the guest's own domid as the writer. It is given what
a stubdom device model has, an area of its own that it owns, and is named its own device
model, so that everything xenstored lets it write reaches the watcher. It writes requests
for itself and for another domain, in its area and in dom0's, and decisions under /libxl;
then it floods its area with junk keys and rewrites of its requests until told to stop.
Meanwhile a legitimate PV guest, whose device model is dom0's agent, asks for pages.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lab.conftest import GuestFactory, WatcherProcess
from tools.lab import attacker, fetch
from xsproto import paths
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.adapters.xenstore_records import domids_under, read_decision, read_request
from xsproto.agents import device_model
from xsproto.negotiation import RejectCode
from xsproto.records import DecisionRecord, DecisionState

pytestmark = pytest.mark.lab

#: The emulated lab is slow and noisy: wait long, assert nothing about time.
TIMEOUT = 300
request_pages = functools.partial(device_model.request_pages, timeout=TIMEOUT)
DURING = (32, 48, 64)
"""The legitimate guest's requests while the flood goes on (pages, in total)."""
FINAL = 80
LOWERED = 40
"""After a restart: a lowering, which no rate limit holds back."""


@pytest.fixture
def attacker_initrd(tmp_path: Path) -> Path:
    files = fetch.LabFiles.in_cache(fetch.DEFAULT_CACHE)
    return attacker.build(files.guest_initrd, tmp_path / "attacker-initrd.gz")


def wait_said(name: str, line: str) -> attacker.AttackLog:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        log = attacker.console_log(name)
        if log.saw(line):
            return log
        time.sleep(0.5)
    raise AssertionError(f"the attacker never said {line!r}; it said {log.said}")


def timed(xs: Xenstore, domid: int, pages: int) -> tuple[DecisionRecord, float]:
    started = time.monotonic()
    record = request_pages(xs, domid, pages, "legitimate")
    assert record.state is DecisionState.GRANTED and record.granted_pages == pages
    return record, time.monotonic() - started


def wait_serving(xs: Xenstore, watcher: WatcherProcess) -> None:
    """Until the watcher's start-up is over: its heartbeat, written once it reconciled,
    names its process."""
    assert watcher.proc is not None
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        beat = xs.read(paths.HEARTBEAT)
        if beat is not None and beat.split()[0] == str(watcher.proc.pid).encode():
            return
        if watcher.proc.poll() is not None:
            raise AssertionError(f"watcher exited {watcher.proc.returncode}:\n{watcher.log()}")
        time.sleep(0.2)
    raise AssertionError(f"watcher never finished starting:\n{watcher.log()}")


def nearest_perms(xs: Xenstore, path: str) -> list[str]:
    """The permissions of ``path`` or of its nearest existing ancestor: the node xenstored
    checks a write against."""
    while (perms := xs.perms(path or "/")) is None:
        path = path.rsplit("/", 1)[0]
    return perms


def test_a_guest_attacking_from_inside_changes_nothing_and_delays_nobody(
        make_guest: GuestFactory, start_watcher: Callable[..., WatcherProcess], xs: Xenstore,
        hv: Hypervisor, attacker_initrd: Path) -> None:
    legit = make_guest("legit")
    evil = make_guest("attacker", initrd=attacker_initrd)
    area = paths.device_model_area(evil)
    xs.write(area, b"")  # what libxl gives a stubdom device model: an area it owns...
    xs.set_perms(area, [f"n{evil}"])
    xs.write(paths.dm_domid_path(evil), str(evil).encode())  # ...and here, itself to serve
    watcher = start_watcher()
    assert f'areas="0,{evil}"' in watcher.log()
    first, baseline = timed(xs, legit, 16)  # a request and a record to go after
    limits = {domid: hv.domain(domid).max_pages for domid in hv.domids()}

    control = f"{paths.domain_dir(evil)}/{attacker.CONTROL}"
    xs.write(f"{control}/other", str(legit).encode())
    wait_said("attacker", "flood start")
    during = [timed(xs, legit, pages) for pages in DURING]
    flooding = attacker.console_log("attacker")
    xs.write(f"{control}/stop", b"1")
    said = wait_said("attacker", "done")
    final, after = timed(xs, legit, FINAL)
    print(f"legitimate grants: before the attack {baseline:.2f} s, during the flood "
          f"{', '.join(f'{t:.2f}' for _, t in during)} s, after it {after:.2f} s")
    print(f"the attack: {said.counts}")
    lines = watcher.log().splitlines()
    print(f"watcher log: {len(lines)} lines; level and event: "
          f"{dict(Counter(' '.join(line.split()[2:5:2]) for line in lines))}")

    # The flood went on all the while: it stopped when asked, after the grants.
    assert "rewrites" not in flooding.counts and said.counts["rewrites"]["stop"] == "asked"
    rewrites = said.counts["rewrites"]
    assert int(rewrites["own"]) == int(rewrites["other"]) == int(rewrites["rounds"]) > 0
    assert rewrites["dom0"] == "0"
    for where in (f"{area}/{evil}/extra-pages", area):
        junk = said.counts[f"junk {where}"]
        assert int(junk["ok"]) + int(junk["refused"]) == 500

    # xenstored took the writes in the attacker's own area and refused every other, where
    # the attacker may not write (EACCES: the client does not print the error's name).
    own = (f"{area}/{evil}/", f"{area}/{legit}/")
    assert said.writes and all(ok == path.startswith(own) for path, ok in said.writes.items())
    for path, ok in said.writes.items():
        assert ok == attacker.may_write(nearest_perms(xs, path), evil), path
        if ok:
            assert xs.owner(path) == evil, path
    nodes, owner = read_request(xs, 0, legit)
    assert owner == 0 and nodes["request-id"] == str(final.request_id).encode()

    # The watcher: its own request rejected as the protocol says (a domain is never its
    # own device model), the request for another domain ignored, nothing else recorded.
    evil_record = read_decision(xs, evil)
    assert evil_record is not None and evil_record.state is DecisionState.REJECTED
    assert evil_record.rejection is not None
    assert evil_record.rejection[0] == RejectCode.WRONG_WRITER
    assert evil_record.granted_pages == 0 and evil_record.max_pages == limits[evil]
    assert read_decision(xs, legit) == final and final.base_pages == first.base_pages
    recorded = {d for d in domids_under(xs, paths.DECISION_ROOT)
                if xs.children(paths.decision_dir(d))}
    assert recorded == {legit, evil}
    assert {d: hv.domain(d).max_pages for d in limits} == {
        **limits, legit: first.base_pages + FINAL}
    assert watcher.proc is not None and watcher.proc.poll() is None

    # A watcher started now, with the attacker's junk in place, serves as well.
    watcher.restart()
    wait_serving(xs, watcher)
    lowered = request_pages(xs, legit, LOWERED, "legitimate")
    assert lowered.granted_pages == LOWERED
    assert hv.domain(legit).max_pages == first.base_pages + LOWERED
