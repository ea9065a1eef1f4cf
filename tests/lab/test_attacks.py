"""A real guest attacks the negotiation from inside (issue 7), on real Xen and xenstored.

The attacker is a PV guest whose init makes each attack as one raw xenstore request on
/dev/xen/xenbus, so xenstored sees the guest's own domid as the writer and the test reads
xenstored's very answer (EACCES...). It is given what a stubdom device model has, an area
of its own that it owns, and is named its own device model, so that everything xenstored
lets it write reaches the watcher. It writes requests for itself and for another domain,
in its area and in dom0's, poses as dom0 by giving its request to dom0, writes and
removes decisions under /libxl, names itself the other's device model; then it floods its
area and its guest directory (the request node's parent) with junk keys up to its quota
(directories too big to list in one message) and rewrites its requests without pause
until told to stop. Meanwhile a legitimate PV guest,
whose device model is dom0's agent, asks for pages and is answered as promptly as before.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lab.conftest import GuestFactory, WatcherProcess
from tests.sim.xenstore import Flavour
from tools.lab import attacker, fetch
from xsproto import paths
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.adapters.xenstore_records import domids_under, read_decision, request_in
from xsproto.agents import device_model
from xsproto.negotiation import RejectCode
from xsproto.records import DecisionRecord, DecisionState

pytestmark = pytest.mark.lab

#: The emulated lab is slow and noisy: wait long.
TIMEOUT = 300
request_pages = functools.partial(device_model.request_pages, timeout=TIMEOUT)
DURING = (32, 48)
"""The legitimate guest's requests while the flood goes on (pages, in total)."""
FINAL = 80
LOWERED = 40
"""After a restart: a lowering, which no rate limit holds back."""


@pytest.fixture
def flavour() -> Flavour:
    return Flavour(Path("/run/xenlab/xenstored").read_text().strip())


@pytest.fixture
def attacker_initrd(tmp_path: Path) -> Path:
    files = fetch.LabFiles.in_cache(fetch.DEFAULT_CACHE)
    return attacker.build(files.guest_initrd, tmp_path / "attacker-initrd.gz")


def wait_said(name: str, line: str, *, begins: bool = False) -> attacker.AttackLog:
    """Until guest ``name`` said ``line`` (or a line beginning so); what it said then."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        log = attacker.console_log(name)
        if log.began(line) if begins else log.saw(line):
            return log
        time.sleep(0.5)
    raise AssertionError(f"the attacker never said {line!r}; its console:\n"
                         f"{attacker.console(name)[-4000:]}")


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


def logged(watcher: WatcherProcess, *words: str) -> bool:
    """Whether one line of the watcher's log has all of ``words`` (as whole words)."""
    return any(set(words) <= set(line.split()) for line in watcher.log().splitlines())


def expected_answers(evil: int, legit: int, flavour: Flavour) -> dict[tuple[str, str], str]:
    """xenstored's answer to each attack, as the script makes them."""
    refused = "ERR EACCES"
    answers: dict[tuple[str, str], str] = {}

    # Its own area, which it owns: xenstored takes the requests; the watcher judges them.
    answers["write", paths.request_node(evil, evil)] = "OK"
    answers["write", paths.request_node(evil, legit)] = "OK"
    # Giving its node to dom0, as if dom0 had written it (the owner is who wrote).
    answers["perms", paths.request_node(evil, legit)] = (
        "ERR EPERM" if flavour is Flavour.C else refused)
    # Everything else is dom0's.
    answers["write", paths.request_node(0, evil)] = refused
    answers["write", paths.request_node(0, legit)] = refused
    answers["remove", paths.request_node(0, legit)] = refused
    for domid in (evil, legit):
        answers["write", paths.decision_node(domid)] = refused
    answers["remove", paths.decision_node(legit)] = refused
    answers["write", paths.dm_domid_path(legit)] = refused
    return answers


def test_a_guest_attacking_from_inside_changes_nothing_and_delays_nobody(
        make_guest: GuestFactory, start_watcher: Callable[..., WatcherProcess], xs: Xenstore,
        hv: Hypervisor, attacker_initrd: Path, flavour: Flavour) -> None:
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
    attacked = wait_said("attacker", "flood start")
    during = [timed(xs, legit, DURING[0])]
    # Once the request node's directory is full of junk (too big to list) and the
    # rewrites go on:
    wait_said("attacker", f"junk {paths.device_model_guest_dir(evil, evil)} ", begins=True)
    during.append(timed(xs, legit, DURING[1]))
    flooding = attacker.console_log("attacker")
    xs.write(f"{control}/stop", b"1")
    said = wait_said("attacker", "done")
    final, after = timed(xs, legit, FINAL)
    lines = watcher.log().splitlines()
    print(f"legitimate grants: before the attack {baseline:.2f} s, during the flood "
          f"{', '.join(f'{t:.2f}' for _, t in during)} s, after it {after:.2f} s")
    print(f"the flood: {said.counts}; watcher log: {len(lines)} lines; listings: "
          f"{ {k: v for k, v in said.answers.items() if k[0] == 'list'} }")

    # xenstored's answer to each attack: its own area took the requests, all else refused.
    assert attacked.answers == expected_answers(evil, legit, flavour)
    # The flood went on all the while: it stopped when asked, after the grants; every
    # rewrite was taken; the junk went in until the domain's node quota refused it.
    assert "rewrites" not in flooding.counts and said.counts["rewrites"]["stop"] == "asked"
    rewrites = said.counts["rewrites"]
    assert int(rewrites["own"]) == int(rewrites["other"]) == int(rewrites["rounds"]) > 0
    for where in (paths.device_model_guest_dir(evil, evil), area):
        junk = said.counts[f"junk {where}"]
        assert int(junk["ok"]) + int(junk["refused"]) == 500
    # Listing them: C xenstored's node quota (its record, names included, under 2048
    # bytes) kept them small; oxenstored's lets them outgrow a message (4096 bytes).
    too_big = "OK" if flavour is Flavour.C else "ERR E2BIG"
    assert {where: answer for (request, where), answer in said.answers.items()
            if request == "list"} == {paths.device_model_guest_dir(evil, evil): too_big,
                                      area: too_big}
    filled = int(said.counts[f"filled {area}"]["keys"])
    quota = "ERR ENOSPC" if flavour is Flavour.C else "ERR EQUOTA"
    assert said.answers["write", f"{area}/fill-{filled}"] == quota
    raw, owner = xs.transact(lambda t: request_in(t, 0, legit))
    assert owner == 0 and raw is not None
    assert f"request-id={final.request_id}\n".encode() in raw
    assert xs.read(paths.dm_domid_path(legit)) is None

    # The watcher: the attacker's request for itself rejected as the protocol says (a
    # domain is never its own device model), its request for another ignored; both logged
    # with the domain and the path; nothing else recorded, no limit but the legitimate
    # guest's changed; the legitimate guest answered promptly throughout.
    evil_record = read_decision(xs, evil)
    assert evil_record is not None and evil_record.state is DecisionState.REJECTED
    assert evil_record.rejection is not None
    assert evil_record.rejection[0] == RejectCode.WRONG_WRITER
    assert evil_record.granted_pages == 0 and evil_record.max_pages == limits[evil]
    assert read_decision(xs, legit) == final and final.base_pages == first.base_pages
    recorded = {d for d in domids_under(xs, paths.DECISION_ROOT)
                if xs.read(paths.decision_node(d))}
    assert recorded == {legit, evil}
    assert {d: hv.domain(d).max_pages for d in limits} == {
        **limits, legit: first.base_pages + FINAL}
    assert logged(watcher, "audit", f"domid={evil}", "result=rejected", f"dm={evil}",
                  f"path={paths.request_node(evil, evil)}", f"code={RejectCode.WRONG_WRITER}")
    assert logged(watcher, "WARNING", "ignored", f"domid={legit}", f"dm={evil}",
                  f"path={paths.request_node(evil, legit)}")
    # Nobody was delayed, shown by order, not by a time (the emulated lab's are noise):
    # the flood ran until asked to stop, after the legitimate grants (the asserts on
    # `flooding` and `stop` above); a
    # watcher the attack stalled (retrying conflicts, an unbounded queue, a failure per
    # junk key) would have answered only once the flood ended, that is never.
    assert watcher.proc is not None and watcher.proc.poll() is None

    # A watcher started now, with the attacker's junk in place, serves as well. (Where
    # the attacker's directories cannot be listed, it says so and goes on: it stopped.)
    watcher.restart()
    wait_serving(xs, watcher)
    lowered = request_pages(xs, legit, LOWERED, "legitimate")
    assert lowered.granted_pages == LOWERED
    assert hv.domain(legit).max_pages == first.base_pages + LOWERED
    if flavour is Flavour.OCAML:
        assert logged(watcher, "ERROR", "failed", f"path={area}")
