"""The Xen model follows the rules tests/lab/test_sim_semantics.py shows of Xen 4.17 and
its xenstored: the same checks, on the simulator."""

from __future__ import annotations

import pytest

from tests.sim.host import Host
from tests.sim.xen import Hypercalls, PopulateRefused
from tests.sim.xenstore import INTRODUCE_DOMAIN, RELEASE_DOMAIN, Connection
from xsproto import paths
from xsproto.errors import HypervisorError


def watching(host: Host) -> Connection:
    conn = host.store.connect(0)
    conn.watch(INTRODUCE_DOMAIN, "introduce")
    conn.watch(RELEASE_DOMAIN, "release")
    conn.next_batch()  # the registrations' events
    return conn


def test_domain_events() -> None:
    host = Host()
    hv = Hypercalls(host.xen, "test")
    events = watching(host)
    domid = host.create_guest(1000).domid
    assert events.next_batch() == [(INTRODUCE_DOMAIN, "introduce")]
    host.destroy(domid)
    assert events.next_batch() == [(RELEASE_DOMAIN, "release")]
    assert hv.domain(domid).dying and domid not in hv.domids()
    host.reap(domid)
    assert not hv.domain(domid).exists


def test_a_suspended_domain_is_alive() -> None:
    host = Host()
    hv = Hypercalls(host.xen, "test")
    domid = host.create_guest(1000).domid
    events = watching(host)
    host.xen.shutdown(domid)
    assert events.next_batch() == [(RELEASE_DOMAIN, "release")]
    hv.set_max_pages(domid, 1001)
    info = hv.domain(domid)
    assert (info.dying, domid in hv.domids(), info.max_pages) == (False, True, 1001)
    host.xen.resume(domid)
    assert not host.xen.domains[domid].shutdown and events.next_batch() == []


def test_limits_and_populate() -> None:
    host = Host()
    hv = Hypercalls(host.xen, "test")
    domid = host.create_guest(1000).domid
    held = hv.domain(domid).tot_pages
    hv.set_max_pages(domid, held - 16)
    assert hv.domain(domid).max_pages == held - 16
    with pytest.raises(PopulateRefused):
        host.xen.populate(domid, 1)
    hv.set_max_pages(domid, held + 64)
    free = hv.free_pages()
    with pytest.raises(PopulateRefused):
        host.xen.populate(domid, 65)
    assert hv.domain(domid).tot_pages == held + 64
    assert free - hv.free_pages() == 64
    with pytest.raises(PopulateRefused):
        host.xen.populate(domid, 1)
    with pytest.raises(HypervisorError):
        hv.set_max_pages(max(hv.domids()) + 1000, 1000)


@pytest.mark.parametrize("refuses", [False, True])
def test_a_dying_domains_limit_is_refused_or_discarded(refuses: bool) -> None:
    """Which one Xen does depends on how far the destruction went: the spec allows both
    (section 5), so the stateful tests try both."""
    host = Host(dying_refuses_limit=refuses)
    hv = Hypercalls(host.xen, "test")
    domid = host.create_guest(1000).domid
    host.destroy(domid)
    if refuses:
        with pytest.raises(HypervisorError):
            hv.set_max_pages(domid, 2000)
    else:
        hv.set_max_pages(domid, 2000)
    assert hv.domain(domid).max_pages == 1000


def test_domain_ids_are_reused_at_once() -> None:
    host = Host()
    domid = host.create_guest(1000).domid
    host.destroy(domid)
    assert host.create_guest(1000).domid != domid  # still dying: its id is taken
    host.reap(domid)
    assert host.create_guest(1000).domid == domid


def test_libxl_makes_and_removes_a_guests_nodes() -> None:
    host = Host()
    following = next(d for d in range(1, 100) if d not in host.xen.domains)
    host.libxl.write(f"/libxl/{following}/{paths.LEAF}/state", b"stale")
    domid = host.create_guest(1000).domid
    assert domid == following
    assert host.libxl.perms(f"/libxl/{domid}") == ["n0"]
    assert paths.LEAF not in host.libxl.children(f"/libxl/{domid}")
    assert host.libxl.perms(paths.domain_dir(domid)) == ["n0", f"r{domid}"]
    assert host.libxl.perms(f"{paths.domain_dir(domid)}/data") == [f"n{domid}"]
    request = paths.request_node(0, domid)
    host.libxl.write(f"{request}/x", b"1")
    host.destroy(domid)
    assert host.libxl.perms(paths.domain_dir(domid)) is None
    assert host.libxl.perms(f"/libxl/{domid}") is None
    assert host.libxl.read(f"{request}/x") == b"1"
