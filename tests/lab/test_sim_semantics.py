"""The simulator's rules (tests/sim) hold of the real xenstored, oxenstored and Xen 4.17.

The same scenarios and probes as tests/unit/test_sim_semantics.py, with the outcome the
running daemon's flavour gives: dom0's through the real adapter, a guest's from a PV guest
whose init speaks the wire protocol to /dev/xen/xenbus (busybox only, no xenstore client).
The rules about domains (populate, limits, death, suspension) are checked here against
Xen and against the simulator by tests/unit/test_sim_xen.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pyxs

from tests.lab.conftest import GuestFactory
from tests.sim import semantics
from tests.sim.xenstore import Flavour
from tools.lab import fetch, guests, initramfs
from tools.lab.devicemodel import DEFAULT_START_PFN, PopulateError, populate
from xsproto import paths
from xsproto.adapters.hypervisor import Hypervisor, import_xc
from xsproto.adapters.xenstore import Xenstore
from xsproto.errors import HypervisorError
from xsproto.io import XenstoreIO

pytestmark = pytest.mark.lab

WAIT = 300.0
"""Seconds to wait for a guest or xl in the emulated lab."""


@pytest.fixture
def flavour() -> Flavour:
    return Flavour(Path("/run/xenlab/xenstored").read_text().strip())


@pytest.fixture
def connect() -> Iterator[Callable[[], XenstoreIO]]:
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(Xenstore())


@pytest.mark.parametrize("name", semantics.DOM0_SCENARIOS)
def test_dom0_scenarios(name: str, flavour: Flavour, connect: Callable[[], XenstoreIO],
                        xs: Xenstore) -> None:
    top = f"/local/domain/0/sim-semantics/{name}-{uuid.uuid4().hex[:8]}"
    scenario = semantics.DOM0_SCENARIOS[name]
    try:
        assert scenario.run(connect, top) == scenario.expected(flavour, top)
    finally:
        xs.remove(top)


# A guest's raw requests.

@pytest.fixture
def probe_guest(tmp_path: Path, flavour: Flavour) -> Iterator[tuple[int, str]]:
    """A PV guest whose init runs ``guest_probes(flavour)``: the lab's guest initramfs
    with a second archive appended whose /init replaces the first's."""
    files = fetch.LabFiles.in_cache(fetch.DEFAULT_CACHE)
    init = semantics.guest_init(semantics.guest_probes(flavour))
    extra = initramfs.newc_bytes([initramfs.file("init", data=init.encode(), mode=0o755)])
    initrd = tmp_path / "probe-initrd.gz"
    initrd.write_bytes(files.guest_initrd.read_bytes() + gzip.compress(extra))
    name = f"sim-probe-{uuid.uuid4().hex[:6]}"
    config = tmp_path / f"{name}.cfg"
    config.write_text(guests.guest_config(
        name, kind="pv", memory_mb=128, files=dataclasses.replace(files, guest_initrd=initrd)))
    subprocess.run(["xl", "create", "-q", str(config)], check=True)
    try:
        yield guests.domid_of(name), name
    finally:
        subprocess.run(["xl", "destroy", name], capture_output=True)


def test_guest_probes(probe_guest: tuple[int, str], flavour: Flavour,
                      make_guest: GuestFactory, xs: Xenstore) -> None:
    """The probe guest acts as a stubdom for a second guest (its target)."""
    domid, name = probe_guest
    target = make_guest()
    results = f"/local/domain/{domid}/{semantics.RESULTS}"
    with pyxs.Client() as client:
        semantics.prepare_guest(xs, domid, target, client.set_target)
    deadline = time.monotonic() + WAIT
    while not (raw := xs.read(results)) and time.monotonic() < deadline:
        time.sleep(0.5)
    console = Path(f"/var/log/xen/console/guest-{name}.log")
    assert raw, f"the guest never answered; its console:\n{_tail(console)}"
    answers = semantics.answers(raw)
    probes = [p.at(domid, target) for p in semantics.guest_probes(flavour)]
    assert {p.name: answers.get(p.name) for p in probes} == {p.name: p.answer for p in probes}
    assert {p.name: semantics.perms_after(xs, p, domid) for p in probes} == {
        p.name: p.perms for p in probes}


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else f"({path} absent)"


# Domains: Xen and xenstored's domain events.

def _wait_event(conn: Xenstore, *wanted: tuple[str, str]) -> list[tuple[str, str]]:
    """The events that come until each of ``wanted`` has (or WAIT seconds pass)."""
    seen: list[tuple[str, str]] = []
    deadline = time.monotonic() + WAIT
    while not set(wanted) <= set(seen) and time.monotonic() < deadline:
        seen += conn.next_batch(timeout=1.0)
    return seen


INTRODUCE, RELEASE = ("@introduceDomain", "introduce"), ("@releaseDomain", "release")


def test_domain_events(make_guest: GuestFactory, hv: Hypervisor) -> None:
    """@introduceDomain fires when a guest is created, @releaseDomain when it is
    destroyed, after which Xen lists it as dying or not at all."""
    with Xenstore() as w:
        w.watch(*INTRODUCE)
        w.watch(*RELEASE)
        _wait_event(w, INTRODUCE, RELEASE)  # the registrations' events
        domid = make_guest()
        assert INTRODUCE in _wait_event(w, INTRODUCE)
        subprocess.run(["xl", "destroy", str(domid)], check=True)
        assert RELEASE in _wait_event(w, RELEASE)
    info = hv.domain(domid)
    assert not info.exists or info.dying
    assert domid not in hv.domids()


def test_a_suspended_domain_is_alive(make_guest: GuestFactory, hv: Hypervisor,
                                     scratch: Path) -> None:
    """While ``xl save -c`` holds it suspended (shut down, reason suspend) a domain is not
    dying, is listed, keeps its limit and takes a new one; xenstored fires @releaseDomain;
    afterwards it runs again."""
    xc = import_xc()  # Xen's bindings, found as xsproto finds them (no .pth)

    domid = make_guest()
    base = hv.domain(domid).max_pages
    handle = xc.xc()
    with Xenstore() as xs:  # the guest's kernel can suspend once it says so
        feature = f"/local/domain/{domid}/control/feature-suspend"
        deadline = time.monotonic() + WAIT
        while xs.read(feature) != b"1" and time.monotonic() < deadline:
            time.sleep(0.2)
    suspended = []
    with Xenstore() as w:
        w.watch(*RELEASE)
        _wait_event(w, RELEASE)  # the registration's event
        save = subprocess.Popen(["xl", "save", "-c", str(domid), str(scratch / "image")])
        while save.poll() is None:
            if handle.domain_getinfo(domid, 1)[0]["shutdown"]:
                hv.set_max_pages(domid, base + 1)
                info = hv.domain(domid)
                suspended.append((info.dying, domid in hv.domids(), info.max_pages))
                hv.set_max_pages(domid, base)
            time.sleep(0.02)
        assert save.returncode == 0
        released = w.next_batch(timeout=5.0)
    assert suspended, "never saw the domain suspended"
    assert set(suspended) == {(False, True, base + 1)}
    assert RELEASE in released
    after = handle.domain_getinfo(domid, 1)[0]
    assert (after["shutdown"], after["dying"], hv.domain(domid).max_pages) == (0, 0, base)


def test_limits_and_populate(make_guest: GuestFactory, hv: Hypervisor) -> None:
    """Xen takes any limit, below the pages held included (the domain then cannot grow);
    populate gives pages up to the limit and refuses the rest; free memory pays for them;
    there is no limit to set for a domain that does not exist."""
    domid = make_guest()
    held = hv.domain(domid).tot_pages
    hv.set_max_pages(domid, held - 16)
    assert hv.domain(domid).max_pages == held - 16
    with pytest.raises(PopulateError):
        populate(domid, 1)
    hv.set_max_pages(domid, held + 64)
    free = hv.free_pages()
    with pytest.raises(PopulateError):
        populate(domid, 65)  # what fits is given, the rest refused
    assert hv.domain(domid).tot_pages == held + 64
    assert free - hv.free_pages() >= 64
    with pytest.raises(PopulateError):
        populate(domid, 1, start_pfn=DEFAULT_START_PFN + 65)
    missing = max(hv.domids()) + 1000
    with pytest.raises(HypervisorError):
        hv.set_max_pages(missing, 1000)


def test_libxl_makes_and_removes_a_guests_nodes(make_guest: GuestFactory,
                                                xs: Xenstore) -> None:
    """libxl makes a new guest's home (n0 r<D>, its data n<D>) and a fresh /libxl/D (n0),
    removing what an earlier domain of that id left there; xl destroy removes both, and
    leaves dom0's device-model directory of a guest that has no QEMU."""
    # Xen hands ids out in turn from the last one it gave (its rover), which earlier tests
    # moved on: a first guest, destroyed, shows where the next one will be.
    probe = make_guest()
    subprocess.run(["xl", "destroy", str(probe)], check=True)
    ids = range(probe + 1, probe + 9)
    for d in ids:
        xs.write(f"/libxl/{d}/{paths.LEAF}", b"state=stale\n")
    request = ""
    try:
        domid = make_guest()
        assert domid in ids
        assert xs.perms(f"/libxl/{domid}") == ["n0"]
        assert paths.LEAF not in xs.children(f"/libxl/{domid}")
        assert xs.perms(paths.domain_dir(domid)) == ["n0", f"r{domid}"]
        assert xs.perms(f"{paths.domain_dir(domid)}/data") == [f"n{domid}"]
        request = paths.request_node(0, domid)
        xs.write(request, b"x=1\n")
        subprocess.run(["xl", "destroy", str(domid)], check=True)
        assert xs.perms(paths.domain_dir(domid)) is None
        assert xs.perms(f"/libxl/{domid}") is None
        assert xs.read(request) == b"x=1\n"
    finally:
        for d in ids:
            xs.remove(f"/libxl/{d}")
        if request:
            xs.remove(paths.device_model_guest_dir(0, domid))
