"""libxsproto, the device model's side in C, on the real xenstored (C and OCaml).

Its own test binary runs here in its AddressSanitizer build (leaks included): against
the Python watcher, and alone against hostile decisions it writes itself. Then Python and
the plain build take turns on the same guest's records. (The plain build is the same
code without the sanitizers; both run the unit tests on the host, tests/unit/
test_c_client.py. Running each lab suite in both builds would double their minutes in
CI for nothing the sanitizers do not already see.)
"""

from __future__ import annotations

import functools
import re

import pytest

from tests import clients
from tests.lab.conftest import GuestFactory, WatcherProcess
from xsproto import paths
from xsproto.adapters.hypervisor import Hypervisor
from xsproto.adapters.xenstore import Xenstore
from xsproto.adapters.xenstore_records import read_decision, request_in, write_decision
from xsproto.agents import device_model
from xsproto.carrying import restored
from xsproto.grant import Grant
from xsproto.records import DecisionState, Origin, Request

pytestmark = pytest.mark.lab

request_pages = functools.partial(device_model.request_pages, timeout=180)


@pytest.fixture(scope="module", autouse=True)
def _built() -> None:
    clients.require_build()


def test_c_client_against_the_python_watcher(make_guest: GuestFactory,
                                             watcher: WatcherProcess, hv: Hypervisor) -> None:
    domid = make_guest()
    base = hv.domain(domid).max_pages
    done = clients.run_test_binary("asan", "lab", domid)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lab: " in done.stdout and " 0 failed" in done.stdout
    assert hv.domain(domid).max_pages == base  # it ends by withdrawing
    assert "result=granted" in watcher.log() and "over-domain-cap" in watcher.log()


def test_hostile_decisions_are_errors_never_grants(make_guest: GuestFactory,
                                                   hv: Hypervisor) -> None:
    """No watcher: the test binary answers its own requests with malformed records, ids it
    never wrote, values that do not frame, a missing node, and one valid grant (the control)."""
    domid = make_guest()
    base = hv.domain(domid).max_pages
    done = clients.run_test_binary("asan", "hostile", domid)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 failed" in done.stdout
    assert len(re.findall(r"-> protocol-error: /libxl/\d+/extra-pages: ", done.stdout)) == 20
    assert hv.domain(domid).max_pages == base


def c_ask(domid: int, pages: int, reason: str) -> tuple[int, str]:
    done = clients.run_test_binary("static", "ask", domid, pages, reason, 180_000)
    return done.returncode, done.stdout.strip() + done.stderr.strip()


def test_python_and_c_take_turns_on_the_same_records(
        make_guest: GuestFactory, watcher: WatcherProcess, xs: Xenstore, hv: Hypervisor) -> None:
    domid = make_guest()
    base = hv.domain(domid).max_pages
    assert request_pages(xs, domid, 16, "python").request_id == 1

    # C continues Python's request-ids, and Python reads C's request as its own.
    assert c_ask(domid, 32, "c: option ROMs") == (
        0, f"granted request-id=2 base-pages={base} granted-pages=32 max-pages={base + 32}")
    raw, owner = xs.transact(lambda t: request_in(t, 0, domid))
    where = paths.request_node(0, domid)
    assert raw is not None
    assert Request.parse(raw, where=where) == Request(pages=32, reason="c: option ROMs",
                                                      request_id=2)
    assert owner == 0
    record = read_decision(xs, domid)
    assert record is not None and (record.request_id, record.granted_pages) == (2, 32)

    # Python continues C's ids; C reads a rejection the Python watcher wrote for it.
    assert request_pages(xs, domid, 48, "python again").request_id == 3
    assert c_ask(domid, 9000, "c: too much")[0] == 3
    record = read_decision(xs, domid)
    assert record is not None and record.rejection is not None
    assert (record.request_id, record.rejection[0]) == (4, "over-domain-cap")
    assert hv.domain(domid).max_pages == base + 48

    # A record republished by a restore (origin restore, request-id 0): C asks with id 1
    # for the pages it already has, and nothing changes.
    other = make_guest()
    other_base = hv.domain(other).max_pages
    carried = restored(Grant(other_base, 64))
    write_decision(xs, other, 0, carried)
    hv.set_max_pages(other, carried.max_pages)
    assert c_ask(other, 64, "c: after restore") == (
        0, f"granted request-id=1 base-pages={other_base} granted-pages=64 "
           f"max-pages={other_base + 64}")
    after = read_decision(xs, other)
    assert after is not None and after.origin is Origin.REQUEST
    assert after.state is DecisionState.GRANTED
    assert hv.domain(other).max_pages == other_base + 64
